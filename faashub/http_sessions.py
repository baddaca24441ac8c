"""aiohttp client sessions that send each request at most once.

The sessions that send calls to functions or results to callback receivers
come from `new_session`: the gateway's, the provider's, the queue-worker's,
the connectors' and the callback sessions. A test checks that their modules
build no other session.

aiohttp 3.14's `ClientSession` sends a GET, HEAD, OPTIONS, TRACE, PUT or
DELETE request a second time, on a new connection, when the first attempt
fails with ServerDisconnectedError or ClientOSError. It does so on fresh
connections too, so a function that crashes on a request, or closes the
connection before it responds, gets that request twice with the same call
id. The session's private `_retry_connection` attribute turns the resend
off; aiohttp's own test client sets it the same way, and aiohttp has no
public option for it. A test (tests/test_http_sessions.py) fails if a later
aiohttp ignores it.

Go's `http.Transport`, which OpenFaaS's gateway uses, resends only on a
reused connection, only a replayable request (GET, HEAD, OPTIONS, TRACE, or
one with an Idempotency-Key header), and only when nothing was written or
the server closed the connection before the first response byte. That last
case can still deliver a request twice. faashub resends nothing, because a
function call is not idempotent in general. A caller that must try another
route does so only after a refused connection or a connect timeout
(`ClientConnectorError`), when nothing reached the server.

Without the resend, a request sent on a pooled connection that the server
is closing for idleness at that moment fails with ServerDisconnectedError.
Sessions here drop connections that have been idle for
IDLE_CONNECTION_TIMEOUT_S, below the keep-alive timeout of common servers,
so that the server never closes a connection that the client may still
reuse.
"""

from typing import Any, Final

import aiohttp
from aiohttp.abc import AbstractResolver

# Seconds a pooled connection may stay idle before the client closes it.
# Well below the idle keep-alive timeout of uvicorn 0.55 (timeout_keep_alive,
# 5 s by default, which faashub's own servers keep), so that servers with a
# keep-alive timeout of 2 s or more are covered too. Against uvicorn, 200
# clients that reused a connection after 5 s of idleness, with aiohttp's
# default of 15 s and the resend off, failed 9 and 59 of 1,000 requests in
# two runs. With this value, none of 1,000 failed, idle for 5 s or 1.4 s
# (2-core VM shared with other work, loopback).
# NOTE: a function server that closes idle connections sooner than this can
# still close one while a request is on its way. That call fails with 502
# and is not sent again.
IDLE_CONNECTION_TIMEOUT_S: Final = 1.5


def new_session(
    *,
    limit: int = 100,
    resolver: AbstractResolver | None = None,
    **options: Any,
) -> aiohttp.ClientSession:
    """Create a session that never sends a request twice.

    `limit` is the connector's maximum of open connections (0 for no
    limit), `resolver` its DNS resolver (aiohttp's default when None), and
    `options` go to `aiohttp.ClientSession` unchanged. Call it inside a
    running event loop.
    """
    connector = aiohttp.TCPConnector(
        limit=limit,
        resolver=resolver,
        keepalive_timeout=IDLE_CONNECTION_TIMEOUT_S,
    )
    session = aiohttp.ClientSession(connector=connector, **options)
    # NB: private in aiohttp 3.14, see the module docstring.
    session._retry_connection = False
    return session
