"""Small raw-ASGI helpers shared by the gateway's handlers.

The invocation routes skip FastAPI and Starlette requests to keep the accept
path cheap. The few framework services they need are written here instead:
splitting the invocation path, sending a whole plain-text response,
choosing which of a provider's response headers go back to the caller, and
showing a header value in an error message.
"""

from collections.abc import Iterable

from starlette.types import Scope, Send

from faashub import constants as shared
from faashub import names
from faashub.headers import wire_text

Headers = list[tuple[bytes, bytes]]

TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
INTERNAL_ERROR_MARK = (shared.OPENFAAS_INTERNAL.lower().encode(), b"gateway")

# Response headers never passed back from the provider, beside any that the
# response's Connection header names: hop-by-hop ones, and Date, which
# uvicorn writes itself.
_ALWAYS_DROPPED = frozenset(name.encode() for name in shared.HOP_BY_HOP | {"date"})


def shown_header_value(value: str) -> str:
    """Return a header value as the caller most likely wrote it, cut for a message.

    ASGI servers decode header bytes as Latin-1, so a value sent as UTF-8
    is decoded again as UTF-8 where it can be (`wire_text`).
    """
    return names.excerpt(wire_text(value))


def split_invocation_path(scope: Scope, prefix: str) -> tuple[str, str]:
    """Split `<prefix>NAME[.NS][/rest]` into the name and the raw path suffix.

    The suffix keeps its leading slash and its percent-encoding, so that it
    reaches the function exactly as the caller sent it. It is "" when absent.
    """
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        raw_path = scope["path"].encode()
    tail = raw_path[len(prefix) :]
    name, slash, rest = tail.partition(b"/")
    return name.decode("latin-1"), (slash + rest).decode("latin-1")


async def send_text(
    send: Send, status: int, text: str, *, headers: Headers | None = None
) -> None:
    """Send a complete response with a plain-text body."""
    body = text.encode()
    response_headers: Headers = [
        TEXT_PLAIN,
        (b"content-length", str(len(body)).encode()),
    ]
    if headers:
        response_headers.extend(headers)
    await send(
        {"type": "http.response.start", "status": status, "headers": response_headers}
    )
    await send({"type": "http.response.body", "body": body})


async def send_gateway_error(
    send: Send, status: int, text: str, *, headers: Headers | None = None
) -> None:
    """Send a platform failure (502, 503) marked with X-OpenFaaS-Internal.

    The mark lets a queue-worker tell a platform failure, which is worth a
    retry, from a function's own error response, as the OpenFaaS provider and
    watchdog do. Errors in the request itself (400, 404, 405, 413) are sent
    unmarked with `send_text`.
    """
    marked: Headers = [INTERNAL_ERROR_MARK]
    if headers:
        marked.extend(headers)
    await send_text(send, status, text, headers=marked)


def connection_tokens(value: str) -> list[str]:
    """Return the lowercase header names listed in a Connection header."""
    return [token.strip().lower() for token in value.split(",") if token.strip()]


def pass_response_headers(
    raw_headers: Iterable[tuple[bytes, bytes]],
    status: int,
    *,
    dropped: frozenset[bytes] = frozenset(),
) -> Headers:
    """Return the provider's response headers that go back to the caller.

    Hop-by-hop headers, the headers named in Connection (RFC 9110, section
    7.6.1), Date and the `dropped` names are removed, and names are
    lowercased as ASGI expects.
    """
    headers: Headers = []
    named_in_connection: set[bytes] = set()
    for raw_name, value in raw_headers:
        name = raw_name.lower()
        if name == b"connection":
            named_in_connection.update(
                token.encode() for token in connection_tokens(value.decode("latin-1"))
            )
        if name in _ALWAYS_DROPPED or name in dropped:
            continue
        # NB: 204 and 304 responses have no body even when Content-Length is
        # set, and uvicorn raises when a body is shorter than Content-Length.
        if name == b"content-length" and status in (204, 304):
            continue
        headers.append((name, value))
    if named_in_connection:
        headers = [item for item in headers if item[0] not in named_in_connection]
    return headers
