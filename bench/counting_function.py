"""A no-op function that counts its POSTs: a raw ASGI app on uvicorn.

The connector benchmarks deploy it on the local provider in http mode
(`python bench/counting_function.py`, with PORT in its environment), so that
both sides of a benchmark invoke the same process and the process itself
tells when the last record arrived. Each POST is read and counted, with the
monotonic time of the first and the last one, and answered 200 `ok`. `GET
/_bench/stats` returns the counts as JSON and `POST /_bench/reset` sets them
to zero. Any other request, the health path `/_/health` included, gets 200
`ok` uncounted. Like `noop_function.py`, it runs as a script and imports
nothing from the harness, because the provider starts functions with a
minimal environment and an unrelated working directory.
"""

import json
import os
import time

import uvicorn
from starlette.types import Receive, Scope, Send

STATS_PATH = "/_bench/stats"
RESET_PATH = "/_bench/reset"

_OK_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}
_OK_BODY = {"type": "http.response.body", "body": b"ok"}


class _Counts:
    count = 0
    first_ns = 0
    last_ns = 0


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Count a POST, serve or reset the counts, and answer 200."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    path: str = scope["path"]
    if path == STATS_PATH:
        body = json.dumps(
            {
                "count": _Counts.count,
                "first_ns": _Counts.first_ns,
                "last_ns": _Counts.last_ns,
            }
        ).encode()
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
        return
    if path == RESET_PATH:
        _Counts.count = _Counts.first_ns = _Counts.last_ns = 0
    elif scope["method"] == "POST":
        now_ns = time.monotonic_ns()
        if _Counts.count == 0:
            _Counts.first_ns = now_ns
        _Counts.count += 1
        _Counts.last_ns = now_ns
    await send(_OK_START)
    await send(_OK_BODY)


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
