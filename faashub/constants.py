"""Names and limits shared by every faashub component.

Header names follow the OpenFaaS wire contract so that existing callers,
callback receivers and functions work unchanged. The NATS subject and stream
names are faashub's own: the gateway writes them and the queue-worker reads
them, so both import them from here and nowhere else.
"""

from typing import Final

# HTTP headers of the OpenFaaS contract.
CALL_ID: Final = "X-Call-Id"
START_TIME: Final = "X-Start-Time"  # decimal Unix nanoseconds
CALLBACK_URL: Final = "X-Callback-Url"
FUNCTION_STATUS: Final = "X-Function-Status"
FUNCTION_NAME: Final = "X-Function-Name"
DURATION_SECONDS: Final = "X-Duration-Seconds"
SERVED_BY: Final = "X-Served-By"
OPENFAAS_INTERNAL: Final = "X-OpenFaaS-Internal"  # marks errors made by the platform
FORWARDED_HOST: Final = "X-Forwarded-Host"
FORWARDED_FOR: Final = "X-Forwarded-For"

# Headers that describe one connection and are never forwarded (RFC 9110,
# section 7.6.1), plus the ones a proxy recomputes itself.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Request headers that a server which has read the whole body must not pass
# on: the hop-by-hop ones, and Expect, whose 100-continue it has handled. A
# function's server that never sends 100 Continue (Python's http.server on
# HTTP/1.0) would otherwise wait for a body that aiohttp holds back until it
# gets one.
NOT_REPLAYED: Final = HOP_BY_HOP | {"expect"}

# The default namespace for functions, the same as OpenFaaS's `openfaas-fn`.
DEFAULT_NAMESPACE: Final = "openfaas-fn"

# JetStream layout of the async queue. One stream contains every queued call.
# The subject is `faashub.calls.<queue>.<namespace>.<function>.<call key>`, so a
# worker can filter one named queue, and later one function, without another
# stream, and the gateway can find one call by its id.
CALLS_STREAM: Final = "FAASHUB_CALLS"
CALLS_SUBJECT_PREFIX: Final = "faashub.calls"
DEFAULT_QUEUE: Final = "default"
WORKER_DURABLE_PREFIX: Final = "faashub-worker"

# Message headers that carry the call's metadata beside the caller's own HTTP
# headers. Callers cannot set them: the gateway drops any request header that
# starts with one of RESERVED_HEADER_PREFIXES before it stores the call.
META_PREFIX: Final = "Faashub-"
RESERVED_HEADER_PREFIXES: Final = ("faashub-", "nats-")
META_FORMAT: Final = "Faashub-Format"
META_FUNCTION: Final = "Faashub-Function"
META_NAMESPACE: Final = "Faashub-Namespace"
META_METHOD: Final = "Faashub-Method"
META_PATH: Final = "Faashub-Path"
META_QUERY: Final = "Faashub-Query"
META_CALLBACK_URL: Final = "Faashub-Callback-Url"
META_CALL_ID: Final = "Faashub-Call-Id"
META_ACCEPTED_AT_NS: Final = "Faashub-Accepted-At-Ns"
NATS_MSG_ID: Final = "Nats-Msg-Id"  # JetStream's de-duplication key

# Optional metadata of a queued call.
META_QUEUE: Final = "Faashub-Queue"
META_NOT_BEFORE_NS: Final = "Faashub-Not-Before-Ns"  # delayed call: start no earlier
META_ORIGINAL_CALL_ID: Final = "Faashub-Original-Call-Id"  # set by a redrive
# A body too large for one NATS message is stored in the BODIES_BUCKET object
# store; the message then has an empty body and names the object here.
META_BODY_REF: Final = "Faashub-Body-Ref"
META_BODY_SIZE: Final = "Faashub-Body-Size"

# Version of the message layout above; a worker rejects a version it does not
# know instead of guessing.
QUEUED_CALL_FORMAT: Final = "1"

# Status of async calls: a JetStream key-value bucket, one key per call
# (`faashub.call_status.status_key`), written by the worker and by cancels.
STATUS_BUCKET: Final = "FAASHUB_CALL_STATUS"

# Dead letters: calls and callbacks that could not complete, with their reason.
# Subject `faashub.dlq.<queue>.<namespace>.<function>.<call key>`.
DEAD_LETTER_STREAM: Final = "FAASHUB_DEAD_LETTERS"
DEAD_LETTER_SUBJECT_PREFIX: Final = "faashub.dlq"
META_DLQ_KIND: Final = "Faashub-Dlq-Kind"  # "call" or "callback"
META_DLQ_REASON: Final = "Faashub-Dlq-Reason"
META_DLQ_DETAIL: Final = "Faashub-Dlq-Detail"
META_DLQ_ATTEMPTS: Final = "Faashub-Dlq-Attempts"  # JSON list, see dead_letter.py
META_DLQ_AT_NS: Final = "Faashub-Dlq-At-Ns"
META_DLQ_RESULT_STATUS: Final = "Faashub-Dlq-Result-Status"
META_DLQ_RESULT_HEADERS: Final = "Faashub-Dlq-Result-Headers"  # JSON object
# For a callback: the call's X-Duration-Seconds, X-Retry and X-Retry-Max, so
# that a redrive sends the same values.
META_DLQ_DURATION_SECONDS: Final = "Faashub-Dlq-Duration-Seconds"
META_DLQ_RETRY: Final = "Faashub-Dlq-Retry"
META_DLQ_RETRY_MAX: Final = "Faashub-Dlq-Retry-Max"

# Bodies above the NATS message limit, one object per call key.
BODIES_BUCKET: Final = "FAASHUB_BODIES"

# Cron connector replicas claim each tick of a sync schedule in this key-value
# bucket (key `<namespace>.<function>.<tick in Unix ms>`); the first claim wins.
CRON_LEASE_BUCKET: Final = "FAASHUB_CRON_LEASES"

# The last tick each cron function with the `once` missed-run policy fired
# (key `<namespace>.<function>`), so that a restarted connector can catch up.
CRON_LAST_FIRED_BUCKET: Final = "FAASHUB_CRON_LAST_FIRED"

# Seconds a first delivery runs before the worker writes its RUNNING record
# (or a third of the lease, if shorter). A shorter call costs no write. A
# cancel that finds a taken call with no record waits this long and a margin.
RUNNING_RECORD_AFTER_S: Final = 1.0

# Request headers a caller sets on /async-function/ to delay a call: a number
# of seconds, or an absolute time (RFC 3339, or an HTTP date).
DELAY_SECONDS: Final = "X-Delay-Seconds"
NOT_BEFORE: Final = "X-Not-Before"

# Callback headers added by the worker, as OpenFaaS Pro sends them.
RETRY: Final = "X-Retry"  # attempts made so far
RETRY_MAX: Final = "X-Retry-Max"  # the effective maximum; equal means it gave up
CALLBACK_SIGNATURE: Final = "X-Faashub-Signature"

# Function annotations and environment variables read by faashub.
ANNOTATION_TOPIC: Final = "topic"
ANNOTATION_QUEUE: Final = "com.openfaas.queue"
ANNOTATION_RETRY_ATTEMPTS: Final = "com.openfaas.retry.attempts"
ANNOTATION_RETRY_CODES: Final = "com.openfaas.retry.codes"
ANNOTATION_RETRY_MIN_WAIT: Final = "com.openfaas.retry.min_wait"
ANNOTATION_RETRY_MAX_WAIT: Final = "com.openfaas.retry.max_wait"
# faashub's own: the most calls of one function the async path runs at once.
ANNOTATION_MAX_INFLIGHT: Final = "com.faashub.max_inflight"
ENV_MODE: Final = "mode"  # of-watchdog's variable: "http" runs a long-lived server
ENV_UPSTREAM_URL: Final = "upstream_url"
ENV_EXEC_TIMEOUT: Final = "exec_timeout"
ENV_CONTENT_TYPE: Final = "content_type"

DEFAULT_GATEWAY_URL: Final = "http://127.0.0.1:8080"
