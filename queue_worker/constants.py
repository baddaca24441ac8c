"""Tuning constants of the queue-worker, each with its unit and reason.

Settings that an operator changes live in `faashub.settings.WorkerSettings`;
the values here are internal and rarely need changing.
"""

from typing import Final

from faashub import __version__

USER_AGENT: Final = f"faashub-queue-worker/{__version__}"

# Value of X-OpenFaaS-Internal on the results the worker makes up itself (no
# response from the function, an expired call, an unknown function). OpenFaaS
# sets this header on errors that its own components produce, so that a
# callback receiver can distinguish platform failures from function failures.
INTERNAL_ERROR_SOURCE: Final = "queue-worker"

# Maximum batch size of one pull request. Larger batches do not drain
# faster: with nats-py, fetch(100) and fetch(1000) each drained about 32 k
# msg/s in one measurement on a 2-core machine.
MAX_FETCH_BATCH: Final = 100
# How long a pull request waits on the server for the rest of its batch.
# Each call starts as soon as it arrives, so this only sets how often an
# idle worker sends a pull request.
FETCH_TIMEOUT_S: Final = 5.0
# Messages fetched ahead of free slots: max_inflight divided by this, at
# least 1 and at most MAX_PREFETCH. A prefetched message starts the moment a
# slot frees instead of one fetch round trip later; its lease is renewed
# while it waits.
PREFETCH_DIVISOR: Final = 4
MAX_PREFETCH: Final = 32

# Backoff between attempts after a NATS error, doubling up to the maximum.
RETRY_MIN_S: Final = 0.5
RETRY_MAX_S: Final = 5.0
# Pause between attempts to reach a NATS server. Attempts never stop.
RECONNECT_WAIT_S: Final = 1

# Redelivery delay of a call that could not start for a reason outside the
# call (the gateway or NATS unavailable), doubling per delivery up to the
# maximum. Such a delay does not count as an attempt.
POSTPONE_MIN_S: Final = 0.5
POSTPONE_MAX_S: Final = 30.0
# Redelivery delay of a call whose function already runs its maximum number
# of calls in this worker, randomised between half and all of it so that the
# waiting calls do not return in one burst.
FUNCTION_BUSY_DELAY_S: Final = 0.25

# How long a function found through the gateway is trusted, and how long one
# lookup may take. Functions that were not found are never cached.
FUNCTION_CACHE_TTL_S: Final = 5.0
LOOKUP_TIMEOUT_S: Final = 5.0
# Seconds function lookups must keep failing before a warning is logged, so
# that a gateway starting after the worker makes no warning.
LOOKUP_WARN_AFTER_S: Final = 5.0

# Added to the time left on another delivery's lease before a call that it
# runs is delivered again.
LEASE_MARGIN_S: Final = 0.1

# `call finished` lines written for successful calls in one second; the rest
# are counted in one line (see queue_worker.finished_log).
FINISHED_LINES_PER_S: Final = 20
# `final status not stored` warnings written in one second; the rest are
# counted in one line. A full status bucket refuses the write of every call.
UNSTORED_STATUS_LINES_PER_S: Final = 5

# How long the worker keeps trying to store a dead letter or a final status
# while NATS is unavailable, before it gives up on that message.
PERSIST_TIMEOUT_S: Final = 30.0

# Attempts kept in a status record and in a dead letter; older ones are
# dropped first. The count in the record stays exact.
ATTEMPT_LOG_MAX: Final = 50
# Maximum length of the error text kept per attempt, in characters.
ERROR_TEXT_MAX: Final = 300

# Status reads that start in one event-loop turn share one batched direct get
# (`queue_worker.status_reads`), of at most this many keys. Larger turns are
# split into several requests. With the default max_inflight of 64, a turn
# has at most 64 claims.
STATUS_READ_MAX_BATCH: Final = 128
# How long a batched status read waits for its end-of-batch reply, and a status
# write for its PubAck, before the call is postponed or the write retried. The
# same as nats-py's default JetStream API timeout.
STATUS_REQUEST_TIMEOUT_S: Final = 5.0
# Final status records are stored without waiting for the PubAck, except one
# in each of these intervals and every one after a write that failed
# (`queue_worker.status_writes`). So a status bucket that stops taking writes
# is noticed, and logged, within about this long.
STATUS_CONFIRM_INTERVAL_S: Final = 1.0

# Maximum wait for the consumer's pending count when /metrics is scraped.
METRICS_REFRESH_TIMEOUT_S: Final = 1.0

# Seconds the worker waits for its own tasks to end once cancelled at close; a
# task past this is left behind so that the process can still exit.
CLOSE_TIMEOUT_S: Final = 5.0
