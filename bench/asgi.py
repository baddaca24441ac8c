"""ASGI plumbing of the raw apps that the harness serves with uvicorn.

`bench.apps` and the cron benchmark's fake gateway speak ASGI directly,
with no framework, so that they add as little work as possible to what
they stand in for. This module contains the messages and steps they share.
It imports nothing but the standard library and starlette's type names,
because every process that serves one of those apps loads it.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Send

OK_EMPTY: dict[str, Any] = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-length", b"0")],
}
"""The start of a 200 response with an empty body."""
EMPTY_BODY: dict[str, Any] = {"type": "http.response.body", "body": b""}


async def read_body(receive: Receive) -> bytes:
    """Read the whole request body."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def serve_lifespan(
    receive: Receive,
    send: Send,
    *,
    on_startup: Callable[[], Awaitable[None]] | None = None,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run `on_startup` and `on_shutdown` on the lifespan messages, and confirm each."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if on_startup is not None:
                await on_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if on_shutdown is not None:
                await on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def send_json(send: Send, body: bytes) -> None:
    """Send a 200 response with `body`, an encoded JSON document."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
