"""Paths, header values and limits of the gateway.

Header names and the NATS layout shared with other components live in
`faashub.constants`. This module contains what only the gateway uses.
"""

from typing import Final

from faashub import __version__

# Route prefixes served by the lean ASGI handlers instead of FastAPI.
FUNCTION_PREFIX: Final = "/function/"
ASYNC_FUNCTION_PREFIX: Final = "/async-function/"
HEALTH_PATH: Final = "/healthz"

# Value of X-Served-By on every invocation response.
SERVED_BY: Final = f"faashub/{__version__}"

# Methods an async call may use. The queued call keeps the method. DELETE is
# kept free for cancelling a queued call by its X-Call-Id.
ASYNC_METHODS: Final = ("GET", "POST", "PUT", "PATCH")

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
# `gateway.log_throttle`). Repeats in between are logged at DEBUG.
WARNING_INTERVAL_S: Final = 10.0
