"""The no-op function of the benchmarks: a raw ASGI app on uvicorn.

The local provider runs it in http mode (`python bench/noop_function.py`)
with PORT in its environment. It reads each request body and responds 200
with the body `ok`, on every path, the health path `/_/health` included.
It runs as a script, not as `-m bench...`, because the provider starts
functions with a minimal environment and an unrelated working directory, so
it imports nothing from the harness.
"""

import os

import uvicorn
from starlette.types import Receive, Scope, Send

_RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}
_RESPONSE_BODY = {"type": "http.response.body", "body": b"ok"}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the request body and respond 200 `ok`."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send(_RESPONSE_START)
    await send(_RESPONSE_BODY)


def main() -> None:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
