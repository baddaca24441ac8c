"""HTTP header helpers of the provider backends that forward invocations.

Header names arrive lowercase from the ASGI server. Functions behind OpenFaaS
see them in Go's canonical spelling (`X-Call-Id`), so the backends spell
them that way. The local backend passes them as CGI variables in classic
mode and on the wire in http mode. The Kubernetes backend sends them to the
function's Service. `upstream_headers` and `upstream_body` build the request
that both HTTP backends send with aiohttp.
"""

from collections.abc import AsyncIterator

from multidict import CIMultiDict

from faashub import constants
from provider.backend import Invocation


def canonical_header_name(name: str) -> str:
    """Spell a header name as Go does: `x-call-id` becomes `X-Call-Id`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


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
    """
    headers: CIMultiDict[str] = CIMultiDict()
    keep_length = invocation.body_stream is not None
    for name, value in end_to_end_headers(invocation.headers):
        if name in ("host", "expect") or (name == "content-length" and not keep_length):
            continue
        headers.add(canonical_header_name(name), value)
    original_host = dict(invocation.headers).get("host", "")
    if original_host and constants.FORWARDED_HOST not in headers:
        headers[constants.FORWARDED_HOST] = original_host
    if invocation.client_host and constants.FORWARDED_FOR not in headers:
        headers[constants.FORWARDED_FOR] = invocation.client_host
    return headers


def upstream_body(invocation: Invocation) -> bytes | AsyncIterator[bytes]:
    """Return the request body as aiohttp's `data`: bytes, or the caller's stream."""
    if invocation.body_stream is not None:
        return invocation.body_stream
    return invocation.body
