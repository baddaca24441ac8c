"""Raw ASGI apps that the benchmarks serve with uvicorn beside faashub.

* `publish_app`: the baseline of the async accept path. It reads the body,
  publishes it to JetStream, waits for the PubAck and responds 202, with no
  framework, no header handling and no function lookup. Settings:
  BENCH_NATS_URL, and the stream BENCH_ACCEPT, which it creates with the
  storage and retention of faashub's calls stream.
* `proxy_app`: the baseline of the sync proxy. It forwards method, path,
  query, headers and body to BENCH_UPSTREAM_URL with one aiohttp session and
  returns the upstream's status, headers and body.
* `callback_app`: the callback receiver of the queue drain. It responds 200
  to every POST and counts them. GET /_bench/stats returns the count and the
  times of the first and last callback, and POST /_bench/reset clears them.

Each runs as `python -m uvicorn bench.apps:NAME` from the repository root,
as `bench.stack.start_asgi_app` does. They exist only to be measured against
and have none of faashub's checks.
"""

import json
import os
import time

import aiohttp
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError
from starlette.types import Receive, Scope, Send

from bench.asgi import EMPTY_BODY, OK_EMPTY, read_body, send_json, serve_lifespan

ACCEPT_STREAM = "BENCH_ACCEPT"
ACCEPT_SUBJECT_PREFIX = "bench.accept"
STATS_PATH = "/_bench/stats"
RESET_PATH = "/_bench/reset"

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"date",
        b"server",
    }
)
_ACCEPTED = {
    "type": "http.response.start",
    "status": 202,
    "headers": [(b"content-length", b"0")],
}


class _PublishState:
    nc: NatsClient | None = None
    js: JetStreamContext | None = None


_publish = _PublishState()


async def _connect_nats() -> None:
    nc = await nats.connect(os.environ["BENCH_NATS_URL"], name="bench-publish-app")
    js = nc.jetstream()
    config = jsapi.StreamConfig(
        name=ACCEPT_STREAM,
        subjects=[f"{ACCEPT_SUBJECT_PREFIX}.>"],
        retention=jsapi.RetentionPolicy.WORK_QUEUE,
        storage=jsapi.StorageType.FILE,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        pass  # it exists already
    _publish.nc, _publish.js = nc, js


async def _close_nats() -> None:
    if _publish.nc is not None:
        await _publish.nc.close()


async def publish_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Publish the body to JetStream, wait for the PubAck, respond 202."""
    if scope["type"] == "lifespan":
        await serve_lifespan(
            receive, send, on_startup=_connect_nats, on_shutdown=_close_nats
        )
        return
    body = await read_body(receive)
    assert _publish.js is not None
    function = scope["path"].rsplit("/", 1)[-1] or "unnamed"
    await _publish.js.publish(f"{ACCEPT_SUBJECT_PREFIX}.{function}", body)
    await send(_ACCEPTED)
    await send(EMPTY_BODY)


class _ProxyState:
    session: aiohttp.ClientSession | None = None
    upstream_url = ""


_proxy = _ProxyState()


async def _open_session() -> None:
    _proxy.upstream_url = os.environ["BENCH_UPSTREAM_URL"].rstrip("/")
    _proxy.session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024),
        auto_decompress=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    )


async def _close_session() -> None:
    if _proxy.session is not None:
        await _proxy.session.close()


async def proxy_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Forward the request to the upstream and relay its response."""
    if scope["type"] == "lifespan":
        await serve_lifespan(
            receive, send, on_startup=_open_session, on_shutdown=_close_session
        )
        return
    assert _proxy.session is not None
    body = await read_body(receive)
    url = _proxy.upstream_url + scope["raw_path"].decode("latin-1")
    query: bytes = scope["query_string"]
    if query:
        url += "?" + query.decode("latin-1")
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in scope["headers"]
        if name not in _HOP_BY_HOP
    ]
    async with _proxy.session.request(
        scope["method"], url, headers=headers, data=body, allow_redirects=False
    ) as response:
        response_body = await response.read()
        response_headers = [
            (name.lower(), value)
            for name, value in response.raw_headers
            if name.lower() not in _HOP_BY_HOP
        ]
        response_headers.append((b"content-length", str(len(response_body)).encode()))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": response_headers,
            }
        )
    await send({"type": "http.response.body", "body": response_body})


class _CallbackStats:
    count = 0
    failed = 0
    """Callbacks whose X-Function-Status is missing or outside 2xx."""
    first_ns = 0
    last_ns = 0


_callbacks = _CallbackStats()


async def callback_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Count every POST as one callback, and serve the counts on STATS_PATH."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send)
        return
    path: str = scope["path"]
    await read_body(receive)
    if path == STATS_PATH:
        body = json.dumps(
            {
                "count": _callbacks.count,
                "failed": _callbacks.failed,
                "first_ns": _callbacks.first_ns,
                "last_ns": _callbacks.last_ns,
            }
        ).encode()
        await send_json(send, body)
        return
    if path == RESET_PATH:
        _callbacks.count = _callbacks.failed = 0
        _callbacks.first_ns = _callbacks.last_ns = 0
    elif scope["method"] == "POST":
        now_ns = time.monotonic_ns()
        if _callbacks.count == 0:
            _callbacks.first_ns = now_ns
        _callbacks.count += 1
        _callbacks.last_ns = now_ns
        if not _succeeded(scope["headers"]):
            _callbacks.failed += 1
    await send(OK_EMPTY)
    await send(EMPTY_BODY)


def _succeeded(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"x-function-status":
            return value.startswith(b"2")
    return False
