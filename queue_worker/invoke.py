"""Invoke one queued call through the gateway's synchronous `/function/` route.

The worker replays the caller's request as the gateway stored it: the original
method, the path and raw query after the function name, the caller's headers
and the raw body, plus `X-Call-Id` and `X-Start-Time`. The request goes to
`{gateway_url}/function/{name}.{namespace}{path}?{query}`, so the gateway's
routing, metrics and provider lookup apply to async calls as they do to sync
ones. The result is the function's status, headers and body. When no response
arrives, the worker makes one up, as OpenFaaS does: 503 when the gateway
cannot be reached and 504 when the upstream timeout passes.

`invoke_replica` sends the same request straight to a replica that the
provider reported (`faashub.replica_urls`), skipping both proxy hops. It
applies the function's exec timeout from the report, because the provider,
which would apply it, is skipped. It returns None when the replica refused
the connection, so that the call goes through the gateway instead, because
the request never reached the function then. The session sends each request
once (`faashub.http_sessions`), so no other failure leads to a second
attempt.

This module does not retry, post callbacks or acknowledge messages; see
`queue_worker.handling` and `queue_worker.callback`.
"""

import io
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
import yarl

from faashub import constants
from faashub.headers import wire_text
from faashub.queued_call import QueuedCall
from faashub.replica_urls import (
    ExecTimeouts,
    Replica,
    exec_timeout_message,
    shorter_exec_timeout_s,
)
from queue_worker.constants import INTERNAL_ERROR_SOURCE

# Caller headers the worker never forwards: hop-by-hop ones and Expect, which
# calls stored by older gateways may carry, the ones aiohttp computes for the
# new request, and the ones the worker sets itself.
_NOT_FORWARDED = constants.NOT_REPLAYED | {
    "host",
    "content-length",
    constants.CALL_ID.lower(),
    constants.START_TIME.lower(),
}

# Bodies above this size are sent from a BytesIO (see `request_body`), the
# size above which aiohttp 3.x warns that bytes may block the event loop.
LARGE_BODY_BYTES = 1024 * 1024

# Characters kept as they are when the path and the query are put on the
# wire: everything RFC 3986 allows, '%' included so that existing escapes stay
# intact. Anything else (spaces, non-ASCII, '#', and '?' inside the path) is
# percent-encoded.
_PATH_SAFE = "/%!$&'()*+,;=:@-._~"
_QUERY_SAFE = _PATH_SAFE + "?"

# Timeouts of replica calls, by exec timeout in seconds, kept for reuse.
_exec_timeouts = ExecTimeouts()


@dataclass(slots=True)
class FunctionResult:
    """The function's response, or the one the worker made up without it."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Response headers in arrival order; repeated names stay separate."""
    body: bytes = b""
    error: str = ""
    """Reason that no function response arrived, or "" when one did."""
    gateway_unreachable: bool = False
    """The worker could not connect to the gateway, so no function saw the call."""


async def invoke_function(
    session: aiohttp.ClientSession,
    call: QueuedCall,
    *,
    function_base_url: str,
    http_timeout: aiohttp.ClientTimeout,
    body: bytes | None = None,
    authorization: str = "",
) -> FunctionResult:
    """Send `call` to the function and return its response.

    `function_base_url` is the gateway's `/function/` URL with a trailing
    slash. `body` replaces the call's inline body, for a body read from the
    object store. `authorization`, the gateway's credentials, replaces the
    caller's Authorization header. Transport errors and timeouts become 503
    and 504 results, so this coroutine raises only when it is cancelled.
    """
    url = function_url(function_base_url, call)
    return await _send(
        session,
        call,
        url,
        http_timeout=http_timeout,
        body=body,
        authorization=authorization,
    )


async def invoke_replica(
    session: aiohttp.ClientSession,
    call: QueuedCall,
    *,
    replica: Replica,
    http_timeout: aiohttp.ClientTimeout,
    body: bytes | None = None,
) -> FunctionResult | None:
    """Send `call` to `replica` and return its response.

    Returns None when the replica refused the connection, and otherwise
    behaves as `invoke_function`. The replica's exec timeout bounds the
    whole call when it is shorter than `http_timeout`'s total, and a call
    that exceeds it gets a 504 with the provider's text.
    """
    url = replica_request_url(replica.url, call)
    exec_timeout_s = shorter_exec_timeout_s(replica, http_timeout.total)
    if exec_timeout_s is not None:
        http_timeout = _exec_timeouts.get(exec_timeout_s)
    try:
        return await _send(
            session,
            call,
            url,
            http_timeout=http_timeout,
            body=body,
            refused=True,
            exec_timeout_s=exec_timeout_s,
        )
    except aiohttp.ClientConnectorError:
        return None


def replica_request_url(replica_url: str, call: QueuedCall) -> yarl.URL:
    """Return the replica URL of `call`, path and query kept verbatim."""
    url = replica_url + (_percent_encode(call.path, safe=_PATH_SAFE) or "/")
    if call.query:
        url += "?" + _percent_encode(call.query, safe=_QUERY_SAFE)
    return yarl.URL(url, encoded=True)


async def _send(
    session: aiohttp.ClientSession,
    call: QueuedCall,
    url: yarl.URL,
    *,
    http_timeout: aiohttp.ClientTimeout,
    body: bytes | None,
    refused: bool = False,
    authorization: str = "",
    exec_timeout_s: float | None = None,
) -> FunctionResult:
    """Send the request; with `refused`, raise ClientConnectorError as it is.

    `exec_timeout_s` is set when `http_timeout` is the function's exec
    timeout, for the message of a call that exceeds it.
    """
    headers = request_headers(call)
    if authorization:
        headers = {
            name: value
            for name, value in headers.items()
            if name.lower() != "authorization"
        }
        headers["Authorization"] = authorization
    try:
        async with session.request(
            call.method,
            url,
            headers=headers,
            data=request_body(call.body if body is None else body),
            timeout=http_timeout,
            allow_redirects=False,
        ) as response:
            body = await response.read()
            return FunctionResult(
                status=response.status,
                headers=response_headers(response.raw_headers),
                body=body,
            )
    except TimeoutError:
        if exec_timeout_s is not None:
            return internal_error(
                504, exec_timeout_message(str(call.ref), exec_timeout_s)
            )
        reason = (
            f"The queue-worker timed out after {http_timeout.total:g} s "
            f"waiting for {call.ref}."
        )
        return internal_error(504, reason)
    except aiohttp.ClientConnectorError as exc:
        if refused:
            raise
        # Only the gateway's URL gets here, so the gateway is down or
        # restarting: an outage of the platform, not a failure of the call.
        result = internal_error(
            503,
            f"The queue-worker could not reach the gateway to invoke {call.ref}: {exc}",
        )
        result.gateway_unreachable = True
        return result
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        # ValueError covers a request that aiohttp refuses to build, such as a
        # method that is not an HTTP token. The URL stays out of the reason
        # because the caller's query string may hold a secret.
        detail = "invalid URL" if isinstance(exc, aiohttp.InvalidURL) else str(exc)
        reason = f"The queue-worker could not invoke {call.ref}: {detail}"
        return internal_error(503, reason)


def function_url(function_base_url: str, call: QueuedCall) -> yarl.URL:
    """Return the gateway URL that runs `call`, path and query kept verbatim.

    The URL is built pre-encoded so that yarl does not resolve dot segments:
    a caller's `/../` must reach the gateway as sent instead of turning
    `/function/NAME/../../system/...` into a management route.
    """
    path = _percent_encode(call.path, safe=_PATH_SAFE)
    url = f"{function_base_url}{call.function}.{call.namespace}{path}"
    if call.query:
        url += "?" + _percent_encode(call.query, safe=_QUERY_SAFE)
    return yarl.URL(url, encoded=True)


def request_headers(call: QueuedCall) -> dict[str, str]:
    """Return the caller's headers for the function, plus the call's ids."""
    headers = {
        name: wire_text(value)
        for name, value in call.headers.items()
        if name.lower() not in _NOT_FORWARDED
    }
    headers[constants.CALL_ID] = wire_text(call.call_id)
    if call.accepted_at_ns:
        headers[constants.START_TIME] = str(call.accepted_at_ns)
    return headers


def request_body(body: bytes) -> bytes | io.BytesIO:
    """Return `body` in the form aiohttp sends without blocking the event loop.

    aiohttp writes a bytes body in one piece and warns above 1 MiB; a
    BytesIO of the same bytes is written in chunks, with the same
    Content-Length.
    """
    if len(body) > LARGE_BODY_BYTES:
        return io.BytesIO(body)
    return body


def response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
) -> list[tuple[str, str]]:
    """Decode response header bytes into text that aiohttp writes back unchanged."""
    headers = []
    for raw_name, raw_value in raw_headers:
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            # NOTE: aiohttp writes header text as UTF-8, so bytes that are not
            # UTF-8 reach the callback re-encoded rather than byte for byte.
            value = raw_value.decode("latin-1")
        headers.append((raw_name.decode("latin-1"), value))
    return headers


def _percent_encode(text: str, *, safe: str) -> str:
    # The gateway stores the raw path and query read as latin-1, so encoding
    # back to latin-1 restores the bytes that the caller sent. Text beyond
    # latin-1 cannot come from those bytes and is encoded as UTF-8.
    try:
        return urllib.parse.quote(text, safe=safe, encoding="latin-1")
    except UnicodeEncodeError:
        return urllib.parse.quote(text, safe=safe)


def internal_error(status: int, reason: str) -> FunctionResult:
    """Return a result made up by the worker, marked with X-OpenFaaS-Internal."""
    return FunctionResult(
        status=status,
        headers=[
            ("Content-Type", "text/plain; charset=utf-8"),
            (constants.OPENFAAS_INTERNAL, INTERNAL_ERROR_SOURCE),
        ],
        body=reason.encode(),
        error=reason,
    )
