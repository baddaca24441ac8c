"""Fixtures of the gateway tests: a fake provider, NATS and the gateway itself.

The gateway runs under uvicorn in a thread with its own event loop, as
`faashub gateway` runs it. The fake provider is an aiohttp server in the
test's loop. It records every request it receives, and it plays a few
functions whose behaviour the tests choose by name.
"""

import asyncio
import gzip
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import pytest
from aiohttp import web
from multidict import CIMultiDict
from nats.js.api import ObjectMeta, ObjectMetaOptions

from faashub import constants as shared
from faashub import embedded_nats, jetstream
from faashub.call_status import CallStatus
from faashub.dead_letter import DeadLetter
from faashub.settings import GatewaySettings
from gateway.server import GatewayServer, create_app, uvicorn_config
from tests.conftest import LOOPBACK, free_port, stop_process

# Body of the `big` function: larger than the gateway reads in one piece.
BIG_BODY = bytes(range(256)) * 4096  # 1 MiB
GZIP_TEXT = b"compressed hello " * 100
PROVIDER_INFO = {
    "provider": "fake-provider",
    "orchestration": "test",
    "version": {"release": "9.9.9", "sha": "abc123", "commit_message": "test"},
}


@dataclass
class ReceivedRequest:
    """One request as the fake provider saw it."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes
    raw_headers: tuple[tuple[bytes, bytes], ...] = ()
    """The header lines as bytes, for checks of their exact encoding."""


@dataclass
class FakeProvider:
    """An aiohttp server that plays a faas-provider for the gateway.

    `POST /callback` plays a callback receiver: it records the request and
    responds with `callback_status`.

    Functions under `/function/NAME`:

    * any name in `functions`: responds 201 with `got <body>` and two headers,
      and its lookup returns the annotations given to `deploy`;
    * `missing`: responds with the provider's own 404;
    * `slow`: responds only after `release` is set;
    * `stream`: sends one event, then a second after `release` is set; if
      the gateway closes the connection first, sets `stream_abandoned`;
    * `big`: responds with BIG_BODY and its Content-Length;
    * `gzipped`: responds with a gzip-encoded body.
    """

    url: str = ""
    functions: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    received: list[ReceivedRequest] = field(default_factory=list)
    callbacks: list[ReceivedRequest] = field(default_factory=list)
    callback_status: int = 200
    lookups: list[tuple[str, str]] = field(default_factory=list)
    # Replica URLs that `GET /system/function-endpoints/NAME` reports, by
    # name; any other name gets 404, so its calls go to `/function/`.
    endpoints: dict[str, list[str]] = field(default_factory=dict)
    endpoint_queries: list[tuple[str, str]] = field(default_factory=list)
    # The exec_timeout_s that those reports carry, by name; none by default.
    exec_timeouts: dict[str, float] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stream_abandoned: asyncio.Event = field(default_factory=asyncio.Event)

    def deploy(
        self,
        name: str,
        namespace: str = shared.DEFAULT_NAMESPACE,
        *,
        annotations: dict[str, str] | None = None,
    ) -> None:
        self.functions[(name, namespace)] = annotations or {}

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/system/info", self._info)
        app.router.add_get("/system/function/{name}", self._lookup)
        app.router.add_get("/system/logs", self._logs)
        app.router.add_get("/system/function-endpoints/{name}", self._endpoints)
        app.router.add_route("*", "/system/{tail:.*}", self._system)
        app.router.add_route("*", "/function/{tail:.*}", self._function)
        app.router.add_post("/callback", self._callback)
        return app

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        self.callbacks.append(
            ReceivedRequest(
                method=request.method,
                path=request.rel_url.raw_path,
                query=request.rel_url.raw_query_string,
                headers=CIMultiDict(request.headers),
                body=await request.read(),
            )
        )
        return web.Response(status=self.callback_status)

    async def _record(self, request: web.Request) -> ReceivedRequest:
        received = ReceivedRequest(
            method=request.method,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            headers=CIMultiDict(request.headers),
            body=await request.read(),
            raw_headers=request.raw_headers,
        )
        self.received.append(received)
        return received

    async def _info(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(PROVIDER_INFO)

    async def _lookup(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        namespace = request.query.get("namespace", shared.DEFAULT_NAMESPACE)
        self.lookups.append((name, namespace))
        if (name, namespace) in self.functions:
            return web.json_response(
                {
                    "name": name,
                    "namespace": namespace,
                    "annotations": self.functions[(name, namespace)],
                }
            )
        return web.Response(status=404)

    async def _endpoints(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        namespace = request.query.get("namespace", "")
        self.endpoint_queries.append((name, namespace))
        if name not in self.endpoints:
            return web.Response(status=404)
        report: dict[str, Any] = {"urls": self.endpoints[name], "ttl_s": 30}
        if name in self.exec_timeouts:
            report["exec_timeout_s"] = self.exec_timeouts[name]
        return web.json_response(report)

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"text": "first"}\n')
        await self.release.wait()
        await response.write(b'{"text": "second"}\n')
        await response.write_eof()
        return response

    async def _system(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        echo = {
            "method": received.method,
            "path": received.path,
            "query": received.query,
            "body": received.body.decode(),
        }
        return web.json_response(echo, status=202, headers={"X-Provider": "fake"})

    async def _function(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        name = request.match_info["tail"].split("/")[0].split(".")[0]
        if name == "missing":
            return web.Response(status=404, text="function not found")
        if name == "slow":
            await self.release.wait()
            return web.Response(text="finally")
        if name == "stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: one\n\n")
            while not self.release.is_set():
                if request.transport is None or request.transport.is_closing():
                    self.stream_abandoned.set()
                    return response
                await asyncio.sleep(0.02)
            await response.write(b"data: two\n\n")
            await response.write_eof()
            return response
        if name == "big":
            return web.Response(body=BIG_BODY, content_type="application/octet-stream")
        if name == "gzipped":
            return web.Response(
                body=gzip.compress(GZIP_TEXT),
                headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            )
        return web.Response(
            status=201,
            body=b"got " + received.body,
            headers={
                "Content-Type": "text/plain",
                "X-Function-Header": "yes",
                "Proxy-Authenticate": "Basic",
            },
        )


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider()
    fake.deploy("echo")
    runner = web.AppRunner(fake.build_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    fake.url = f"http://{LOOPBACK}:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@dataclass
class NatsServer:
    """A nats-server that a test can stop and start again on the same store."""

    port: int
    store_dir: Path
    log_path: Path
    max_payload_bytes: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self.process = embedded_nats.start(
            host=LOOPBACK,
            port=self.port,
            store_dir=self.store_dir,
            log_path=self.log_path,
            max_payload_bytes=self.max_payload_bytes,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def nats_server_factory(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Make NATS servers that are not started yet; all are stopped at the end."""
    servers: list[NatsServer] = []

    def make(*, max_payload_bytes: int = 1024 * 1024) -> NatsServer:
        index = len(servers)
        server = NatsServer(
            port=free_port(),
            store_dir=tmp_path / f"nats-{index}",
            log_path=tmp_path / f"nats-{index}.log",
            max_payload_bytes=max_payload_bytes,
        )
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


class RunningGateway:
    """The gateway served by uvicorn in a thread, as `faashub gateway` runs it."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.url = f"http://{settings.host}:{settings.port}"
        self.server = GatewayServer(uvicorn_config(settings, create_app(settings)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def start(self, *, timeout_s: float = 10.0) -> None:
        self.thread.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or loop.time() > deadline:
                raise AssertionError(f"the gateway did not start on {self.url}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.to_thread(self.thread.join, 15)
        assert not self.thread.is_alive(), "the gateway did not stop"


GatewayFactory = Callable[..., Awaitable[RunningGateway]]


@pytest.fixture
async def start_gateway(provider: FakeProvider) -> AsyncIterator[GatewayFactory]:
    """Start gateways with chosen settings; the fake provider is the default."""
    running: list[RunningGateway] = []

    async def start(**overrides: Any) -> RunningGateway:
        values: dict[str, Any] = {
            "host": LOOPBACK,
            "port": free_port(),
            "provider_url": provider.url,
        }
        values.update(overrides)
        gateway = RunningGateway(GatewaySettings(**values))
        running.append(gateway)
        await gateway.start()
        return gateway

    try:
        yield start
    finally:
        # Let the provider finish open responses first, so that the gateway
        # has no request left to wait for.
        provider.release.set()
        for gateway in running:
            await gateway.stop()


@pytest.fixture
async def gateway(nats_url: str, start_gateway: GatewayFactory) -> RunningGateway:
    """A gateway in front of the fake provider and a fresh NATS server."""
    running = await start_gateway(nats_url=nats_url)
    await wait_until_healthy(running.url)
    return running


@pytest.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http_client:
        yield http_client


async def wait_until_healthy(url: str, *, timeout_s: float = 10.0) -> None:
    """Poll the gateway's /healthz until it returns 200."""
    await _wait_for_health(url, 200, timeout_s=timeout_s)


async def wait_until_unhealthy(url: str, *, timeout_s: float = 5.0) -> None:
    """Poll the gateway's /healthz until it returns 503."""
    await _wait_for_health(url, 503, timeout_s=timeout_s)


async def _wait_for_health(url: str, status: int, *, timeout_s: float) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as http_client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            response = await http_client.get("/healthz")
            if response.status_code == status:
                return
            if loop.time() > deadline:
                raise AssertionError(
                    f"/healthz still returns {response.status_code}, not {status}: "
                    f"{response.text}"
                )
            await asyncio.sleep(0.05)


@dataclass
class StoredMessage:
    subject: str
    headers: dict[str, str]
    data: bytes


async def stored_messages(nats_url: str) -> list[StoredMessage]:
    """Read every message of the calls stream with a pull subscription.

    The messages are not acknowledged, and the consumer is deleted again, so
    the stream keeps them and a later read returns them too.
    """
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        info = await js.stream_info(shared.CALLS_STREAM)
        count = info.state.messages
        if count == 0:
            return []
        durable = "gateway-test-reader"
        subscription = await js.pull_subscribe(
            f"{shared.CALLS_SUBJECT_PREFIX}.>", durable, stream=shared.CALLS_STREAM
        )
        try:
            messages = await subscription.fetch(count, timeout=5)
        finally:
            await subscription.unsubscribe()
            await js.delete_consumer(shared.CALLS_STREAM, durable)
        return [
            StoredMessage(message.subject, dict(message.headers or {}), message.data)
            for message in messages
        ]
    finally:
        await connection.close()


async def read_object(nats_url: str, name: str) -> bytes:
    """Return one object of the large-body store."""
    connection = await nats.connect(nats_url)
    try:
        bodies = await connection.jetstream().object_store(shared.BODIES_BUCKET)
        result = await bodies.get(name)
        return bytes(result.data or b"")
    finally:
        await connection.close()


async def object_exists(nats_url: str, name: str) -> bool:
    """Tell whether the large-body store has an object called `name`."""
    connection = await nats.connect(nats_url)
    try:
        bodies = await connection.jetstream().object_store(shared.BODIES_BUCKET)
        try:
            await bodies.get_info(name)
        except nats.js.errors.NotFoundError:
            return False
        return True
    finally:
        await connection.close()


async def publish_dead_letter(nats_url: str, letter: DeadLetter) -> int:
    """Store a dead letter as the worker would, and return its stream sequence."""
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        await jetstream.ensure_dead_letter_stream(js)
        headers, body = letter.to_nats()
        ack = await js.publish(letter.subject(), body, headers=headers)
        return ack.seq
    finally:
        await connection.close()


async def write_status(nats_url: str, status: CallStatus) -> None:
    """Write a call's status record as the worker would."""
    connection = await nats.connect(nats_url)
    try:
        bucket = await jetstream.ensure_status_bucket(connection.jetstream())
        await bucket.put(status.key, status.to_json())
    finally:
        await connection.close()


async def put_object(nats_url: str, name: str, data: bytes) -> None:
    """Store an object in the large-body store, as the gateway does for a body."""
    connection = await nats.connect(nats_url)
    try:
        bodies = await jetstream.ensure_bodies_bucket(connection.jetstream())
        # Chunks well below the max_payload of every test server.
        options = ObjectMetaOptions(max_chunk_size=16 * 1024)
        await bodies.put(name, data, meta=ObjectMeta(name=name, options=options))
    finally:
        await connection.close()


async def dead_letter_count(nats_url: str) -> int:
    connection = await nats.connect(nats_url)
    try:
        info = await connection.jetstream().stream_info(shared.DEAD_LETTER_STREAM)
        return info.state.messages
    finally:
        await connection.close()
