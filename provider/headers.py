"""HTTP helpers of the provider backends that forward invocations.

Header names arrive lowercase from the ASGI server. Functions behind OpenFaaS
see them in Go's canonical spelling (`X-Call-Id`), so the backends spell
them that way. The local backend passes them as CGI variables in classic
mode and on the wire in http mode. The Kubernetes backend sends them to the
function's Service. `upstream_headers` and `upstream_body` build the request
that both HTTP backends send with aiohttp, and `upstream_failure_message`
describes a request that failed after it connected.

Header values arrive as Latin-1 text, one character per byte, so that the
classic mode can pass the bytes on unchanged. aiohttp 3.14 encodes header
values as UTF-8, so `upstream_headers` decodes each non-ASCII value as UTF-8
first, and the function gets the caller's bytes.
"""

import logging
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict

from faashub import constants
from faashub.headers import canonical_header_name, non_utf8_value_message
from provider.backend import InvalidRequest, Invocation

logger = logging.getLogger(__name__)


def end_to_end_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers, including those that `Connection` names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in constants.HOP_BY_HOP and name.lower() not in named
    ]


def upstream_headers(invocation: Invocation) -> CIMultiDict[str]:
    """Return the caller's headers for the function, minus per-hop ones.

    aiohttp writes Host, and Content-Length for a body it has whole. A
    streamed body keeps the caller's Content-Length, so that the function
    reads a body of known length. Without one, aiohttp sends it chunked.
    Raise InvalidRequest for a header value that is not valid UTF-8, because
    aiohttp cannot send its bytes unchanged.
    """
    headers: CIMultiDict[str] = CIMultiDict()
    keep_length = invocation.body_stream is not None
    for name, value in end_to_end_headers(invocation.headers):
        if name in ("host", "expect") or (name == "content-length" and not keep_length):
            continue
        headers.add(canonical_header_name(name), _utf8_header_value(name, value))
    original_host = dict(invocation.headers).get("host", "")
    if original_host and constants.FORWARDED_HOST not in headers:
        headers[constants.FORWARDED_HOST] = original_host
    if invocation.client_host and constants.FORWARDED_FOR not in headers:
        headers[constants.FORWARDED_FOR] = invocation.client_host
    return headers


def _utf8_header_value(name: str, value: str) -> str:
    """Return the text that aiohttp encodes back to the caller's bytes of `value`."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        # The value is not echoed, because a header can carry a credential.
        raise InvalidRequest(non_utf8_value_message(name, "provider")) from None


def upstream_body(invocation: Invocation) -> bytes | AsyncIterator[bytes]:
    """Return the request body as aiohttp's `data`: bytes, or the caller's stream."""
    if invocation.body_stream is not None:
        return invocation.body_stream
    return invocation.body


def upstream_failure_message(invocation: Invocation, exc: aiohttp.ClientError) -> str:
    """Log a request that failed after it connected, and return the caller's message.

    The message names the function and what it did, but not its address or
    aiohttp's wording, which only the provider's log gets. A reset or a
    failed write of a request with a body means that the function closed the
    connection with part of the body unread.
    """
    ref = invocation.function
    logger.warning(
        "function request failed: %s: %s",
        type(exc).__name__,
        exc,
        extra={"ctx": {"function": str(ref), "call_id": invocation.call_id}},
    )
    has_body = invocation.body_stream is not None or bool(invocation.body)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return (
            f"Function {ref} closed the connection without sending a response. "
            "Read its log to see whether it crashed."
        )
    if isinstance(exc, aiohttp.ClientOSError) and has_body:
        return (
            f"Function {ref} closed the connection before it read the whole "
            "request body, so it sent no response. Read its log to see whether "
            "it crashed or exited during the upload."
        )
    if isinstance(exc, aiohttp.ClientOSError):
        return (
            f"Function {ref} reset the connection without sending a response. "
            "Read its log to see whether it crashed."
        )
    return (
        f"Function {ref} sent no valid response ({type(exc).__name__}). Read "
        "its log to see whether it crashed."
    )
