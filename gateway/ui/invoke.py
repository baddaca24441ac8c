"""Invocations made by the console, sent through the gateway's own routes in process.

The console's script posts the invocation as JSON to the console, which
checks it against forgery (`gateway.ui.guard`) and then calls the gateway's
ASGI app with a request built here, for `/function/NAME.NS[/path]` or
`/async-function/NAME.NS[/path]`. So the call takes the same path as any
caller's: header limits, invoke auth, the sync proxy and its metrics, or
the async accept path. No socket is opened for it. The response is
collected up to `MAX_SHOWN_BODY_BYTES`; the rest is counted, not kept.
"""

import asyncio
import base64
import dataclasses
import re
import urllib.parse
from typing import Any

from starlette.types import ASGIApp, Message, Scope

from gateway import constants, errors
from gateway.ui import guard

# Response bytes kept for display; a longer body is counted and cut.
MAX_SHOWN_BODY_BYTES = 256 * 1024
# Request body bytes the console sends at most.
MAX_REQUEST_BODY_BYTES = 1024 * 1024
# Request headers a caller may not set: the gateway or the HTTP layer sets
# them, and a wrong value would break the in-process request.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "authorization"}
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


@dataclasses.dataclass(frozen=True, slots=True)
class InvokeRequest:
    """One invocation requested by the console, checked by `parse_request`."""

    mode: str
    """"sync" or "async"."""
    method: str
    path: str
    """Extra path after the function name, with its leading slash, or ""."""
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclasses.dataclass(slots=True)
class InvokeResult:
    """The gateway's response to an invocation, its body cut for display."""

    status: int = 0
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytearray = dataclasses.field(default_factory=bytearray)
    body_size: int = 0

    def to_api(self) -> dict[str, Any]:
        """Return the JSON the console's script shows, the body in base64."""
        return {
            "status": self.status,
            "headers": [[name, value] for name, value in self.headers],
            "body_base64": base64.b64encode(bytes(self.body)).decode("ascii"),
            "body_size": self.body_size,
            "body_truncated": self.body_size > len(self.body),
        }


def parse_request(document: Any) -> InvokeRequest:
    """Check an invocation request of the console; raise InvalidRequest."""
    if not isinstance(document, dict):
        raise errors.InvalidRequest("The request body must be a JSON object.")
    mode = document.get("mode", "sync")
    if mode not in ("sync", "async"):
        raise errors.InvalidRequest(f"Invalid mode {mode!r}: use 'sync' or 'async'.")
    method = document.get("method", "POST")
    allowed = _METHODS if mode == "sync" else frozenset(constants.ASYNC_METHODS)
    if method not in allowed:
        raise errors.InvalidRequest(
            f"Invalid method {method!r} for a {mode} call; use one of "
            f"{', '.join(sorted(allowed))}."
        )
    path, query = _split_path(document.get("path", ""))

    body = document.get("body", "")
    if not isinstance(body, str):
        raise errors.InvalidRequest("body must be a string.")
    encoded = body.encode("utf-8")
    if len(encoded) > MAX_REQUEST_BODY_BYTES:
        raise errors.InvalidRequest(
            f"The body has {len(encoded)} bytes; the console sends at most "
            f"{MAX_REQUEST_BODY_BYTES}. For a larger body, call the function's "
            "/function/NAME or /async-function/NAME route directly (faashub "
            "invoke, faas-cli invoke or curl)."
        )

    return InvokeRequest(
        mode=mode,
        method=method,
        path=path,
        query=query,
        headers=_headers(document.get("headers", [])),
        body=encoded,
    )


def _split_path(value: Any) -> tuple[str, str]:
    if not isinstance(value, str):
        raise errors.InvalidRequest("path must be a string.")
    if value and not value.startswith(("/", "?")):
        value = "/" + value
    if any(not 0x21 <= ord(char) <= 0x7E for char in value):
        raise errors.InvalidRequest(
            f"Invalid path {value!r}: use printable ASCII without spaces, "
            "percent-encoding the rest."
        )
    path, _, query = value.partition("?")
    return path, query


def _headers(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(item, list)
        and len(item) == 2
        and all(isinstance(part, str) for part in item)
        for item in value
    ):
        raise errors.InvalidRequest(
            'headers must be a list of [name, value] pairs, such as [["X-A", "1"]].'
        )
    headers: list[tuple[str, str]] = []
    for name, text in value:
        if not _HEADER_NAME.match(name):
            raise errors.InvalidRequest(f"Invalid header name {name!r}.")
        if name.lower() in _RESERVED_HEADERS:
            raise errors.InvalidRequest(
                f"The console sets header {name!r} itself; remove it."
            )
        if any(char in text for char in "\r\n\0"):
            raise errors.InvalidRequest(
                f"The value of header {name!r} contains a line break or NUL."
            )
        headers.append((name, text))
    return headers


async def call_gateway(
    gateway: ASGIApp,
    request: InvokeRequest,
    *,
    function: str,
    outer_scope: Scope,
    authorization: str | None,
    timeout_s: float,
) -> InvokeResult:
    """Send `request` for `function` (NAME.NAMESPACE) through the gateway's app.

    `authorization` is passed on for a gateway that requires credentials on
    invocations. Raises TimeoutError after `timeout_s`.
    """
    prefix = (
        constants.FUNCTION_PREFIX
        if request.mode == "sync"
        else constants.ASYNC_FUNCTION_PREFIX
    )
    raw_path = f"{prefix}{function}{request.path}"
    # Values go out as UTF-8 bytes, as curl sends what a terminal gives it.
    headers = [
        (name.lower().encode("ascii"), value.encode("utf-8"))
        for name, value in request.headers
    ]
    host = guard.header(outer_scope["headers"], b"host") or ""
    headers.append((b"host", host.encode("latin-1")))
    headers.append((b"content-length", str(len(request.body)).encode()))
    if authorization is not None:
        headers.append((b"authorization", authorization.encode("latin-1")))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": outer_scope.get("scheme", "http"),
        "path": urllib.parse.unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "query_string": request.query.encode("ascii"),
        "root_path": "",
        "headers": headers,
        "client": outer_scope.get("client"),
        "server": outer_scope.get("server"),
    }
    result = InvokeResult()
    finished = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        # The handlers wait here to notice a caller that went away; this
        # caller stays until the response is complete.
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in message.get("headers", [])
            ]
        elif message["type"] == "http.response.body":
            chunk: bytes = message.get("body", b"")
            result.body_size += len(chunk)
            room = MAX_SHOWN_BODY_BYTES - len(result.body)
            if room > 0:
                result.body.extend(chunk[:room])
            if not message.get("more_body", False):
                finished.set()

    try:
        async with asyncio.timeout(timeout_s):
            await gateway(scope, receive, send)
    finally:
        finished.set()
    return result
