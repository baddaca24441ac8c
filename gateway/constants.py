"""Paths, header values and limits of the gateway.

Header names and the NATS layout shared with other components live in
`faashub.constants`. This module contains what only the gateway uses.
"""

from typing import Final

from faashub import __version__
from faashub import constants as shared

# Route prefixes served by the lean ASGI handlers instead of FastAPI.
FUNCTION_PREFIX: Final = "/function/"
ASYNC_FUNCTION_PREFIX: Final = "/async-function/"
ASYNC_CALLS_PREFIX: Final = "/async-calls/"
HEALTH_PATH: Final = "/healthz"

# The dead-letter API, served by the gateway itself and never forwarded to
# the provider like the rest of /system/.
DEAD_LETTERS_PATH: Final = "/system/dead-letters"

# Value of X-Served-By on every invocation response.
SERVED_BY: Final = f"faashub/{__version__}"

# Methods an async call may use. The queued call keeps the method. DELETE
# cancels a queued call by its X-Call-Id, as in OpenFaaS Pro.
ASYNC_METHODS: Final = ("GET", "POST", "PUT", "PATCH")

# Attempts at a cancel that loses a race with a worker writing the same status
# record. Each lost race means the record changed, and a record changes a few
# times per call at most, so a handful always settles it.
CANCEL_MAX_TRIES: Final = 5

# The wait before a cancel reads the record again, when it found none and a
# worker has taken the call. It is the time after which a running call's
# first write is due, plus a margin for a busy worker.
LATE_CANCEL_CHECK_S: Final = shared.RUNNING_RECORD_AFTER_S + 0.5

# Upper bound on the wait for a JetStream PubAck. A healthy local server
# acknowledges in milliseconds; past this the caller gets 503 and may retry.
PUBLISH_TIMEOUT_S: Final = 5.0

# Upper bound on one function lookup (`GET /system/function/NAME`) made by
# the async accept path. The OpenFaaS gateway uses 3 s for the same query.
LOOKUP_TIMEOUT_S: Final = 5.0

# Seconds between attempts to reach NATS, and between attempts to create the
# calls stream while connected.
NATS_RECONNECT_WAIT_S: Final = 1
NATS_CONNECT_TIMEOUT_S: Final = 2
STREAM_RETRY_S: Final = 2.0

# Maximum number of open connections from the gateway to the provider. The
# OpenFaaS gateway keeps up to 1024 idle connections (`max_idle_conns`).
UPSTREAM_CONNECTION_LIMIT: Final = 1024

# Responses with a Content-Length up to this size are read whole and sent in
# one ASGI message. Larger responses, and those without a length, are
# streamed chunk by chunk.
SMALL_RESPONSE_BYTES: Final = 64 * 1024

# Connect and pool timeouts of the management API client. Reads use the
# gateway's upstream_timeout_s, except the log stream, which has no limit.
SYSTEM_CONNECT_TIMEOUT_S: Final = 5.0

# Seconds uvicorn waits for open requests (streams included) after SIGTERM
# before it cancels them.
GRACEFUL_SHUTDOWN_S: Final = 3

# Seconds between two WARNING lines about the same kind of failure (see
# `faashub.logs.LimitedWarning`). Repeats in between are logged at DEBUG.
WARNING_INTERVAL_S: Final = 10.0
# Seconds between two WARNING lines about a provider that rejects the
# gateway's provider token. That is a configuration error, which lasts until
# someone restarts the gateway or the provider, so one line a minute suffices.
PROVIDER_TOKEN_WARNING_INTERVAL_S: Final = 60.0

# The dead-letter API. `limit` of a listing: the default and the maximum.
DEAD_LETTER_LIST_LIMIT: Final = 100
DEAD_LETTER_LIST_MAX_LIMIT: Final = 1000
# Messages fetched per request while a scan walks the dead-letter stream, so
# a scan keeps at most this many in memory.
DEAD_LETTER_SCAN_BATCH: Final = 100
# Seconds an idle scan consumer lives on the server after a gateway crash.
DEAD_LETTER_SCAN_INACTIVE_S: Final = 30.0
# Call ids per scan consumer when a selection names call ids; each id becomes
# one filter subject of the consumer.
DEAD_LETTER_IDS_PER_SCAN: Final = 50
# A time filter (since, until) compares with the time the worker wrote into
# the dead letter, while a scan starts and stops by the time NATS stored it.
# The scan reads this much further on both sides, for the clocks of the two
# machines and for a worker that could store a dead letter only later, while
# NATS was unavailable.
DEAD_LETTER_TIME_SLACK_S: Final = 3600.0
# Upper bound on one callback POST made by a redrive of a callback dead letter.
CALLBACK_REDRIVE_TIMEOUT_S: Final = 30.0
# Connections open at once for redriven callbacks.
CALLBACK_REDRIVE_CONNECTION_LIMIT: Final = 8
# Request and response headers whose values the dead-letter API never shows.
REDACTED_HEADERS: Final = frozenset(
    {"authorization", "cookie", "proxy-authorization", "set-cookie"}
)

# Waits before each extra read of the status record of a call that is neither
# recorded nor queued, before the gateway returns 404: the call may have
# finished between the two reads (see `async_calls._record_after_finish`).
# Together 0.17 s, spent only on ids that are unknown or just finished.
STATUS_SETTLE_WAITS_S: Final = (0.0, 0.02, 0.05, 0.1)
