"""aiohttp client sessions that send each request at most once.

The sessions that send calls to functions or results to callback receivers
come from `new_session`, and those on the data path build their requests
with `LeanRequest`: the gateway's, the provider's, the queue-worker's,
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

import functools
from collections.abc import Iterable
from typing import Any, Final

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver
from aiohttp.client_reqrep import ClientRequest
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.typedefs import LooseHeaders
from multidict import CIMultiDict

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


class LeanRequest(ClientRequest):
    """An aiohttp request without Accept or Accept-Encoding, built with fewer copies.

    Pass it as a session's `request_class`. The session's `skip_auto_headers`
    option alone would leave those two headers out too, but aiohttp 3.14
    then copies every request's headers once more to apply it. That took
    about 2 µs per request in a timeit loop, a sixth of the time to build
    one.
    """

    # NOTE: aiohttp 3.14 adds DEFAULT_HEADERS to every request whose headers
    # lack them. The attribute is not documented, so a later aiohttp may send
    # Accept and Accept-Encoding again. A test checks the headers on the wire.
    DEFAULT_HEADERS = {}

    def update_headers(self, headers: LooseHeaders | None) -> None:
        """Set the Host header, then the session's merged headers in their order.

        aiohttp 3.14 adds them one at a time in a Python loop, to let a Host
        header replace the URL's. The session always passes a CIMultiDict,
        which is added in one step when it has no Host header. That saved
        about 0.8 µs per request of a dozen headers (timeit, aiohttp 3.14.5,
        2-vCPU VM).
        """
        if isinstance(headers, CIMultiDict) and hdrs.HOST not in headers:
            super().update_headers(None)
            self.headers.extend(headers)
            return
        super().update_headers(headers)

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        """Apply `skip_auto_headers` without copying the request's headers.

        aiohttp 3.14 copies the headers and sorts the skipped names on each
        request to check them against DEFAULT_HEADERS, which is empty here.
        A session that skips Content-Type on every request, as faashub's do,
        and that copy took about 3 µs of the 15 µs to build one (timeit,
        aiohttp 3.14.5, 2-vCPU VM). The body's Content-Type is still skipped,
        because aiohttp reads the names from `_skip_auto_headers`.
        """
        if skip_auto_headers is None:
            super().update_auto_headers(None)
            return
        # NOTE: `_skip_auto_headers` and its use for the body's headers are
        # not documented in aiohttp 3.14. Tests check that a request without
        # a configured Content-Type sends none.
        skipped = _skipped_headers(frozenset(skip_auto_headers))
        self._skip_auto_headers = skipped
        if hdrs.USER_AGENT not in self.headers and hdrs.USER_AGENT not in skipped:
            self.headers[hdrs.USER_AGENT] = SERVER_SOFTWARE


@functools.lru_cache(maxsize=16)
def _skipped_headers(names: frozenset[str]) -> "CIMultiDict[None]":
    """Return the skipped names as the CIMultiDict that aiohttp keeps for them.

    Each set of names gets one, which its requests share and only read.
    """
    return CIMultiDict((name, None) for name in sorted(names))
