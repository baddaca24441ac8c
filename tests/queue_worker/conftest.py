"""Fixtures for queue-worker tests: a fake gateway, a callback receiver, NATS.

The fake gateway and the callback receiver are small aiohttp.web servers on
free loopback ports that record every request and reply with what the test
sets.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from faashub import constants, jetstream
from faashub.queued_call import QueuedCall
from faashub.settings import WorkerSettings
from queue_worker.worker import Worker
from tests.conftest import LOOPBACK, free_port


@dataclass
class RecordedRequest:
    """One request as the recording server saw it on the wire."""

    method: str
    raw_path: str
    query: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """Return the first value of header `name` as UTF-8 text, or None."""
        raw = self.header_bytes(name)
        return None if raw is None else raw.decode()

    def header_bytes(self, name: str) -> bytes | None:
        """Return the first value of header `name` as sent, or None."""
        expected_name = name.lower().encode()
        for raw_name, raw_value in self.raw_headers:
            if raw_name.lower() == expected_name:
                return raw_value
        return None


@dataclass
class RecordingServer:
    """An HTTP server that records requests and replies as configured."""

    status: int = 200
    reply_headers: dict[str, str] = field(default_factory=dict)
    reply_body: bytes = b"done"
    delay_s: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    completed: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path, _, raw_query = request.raw_path.partition("?")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                raw_path=raw_path,
                query=raw_query,
                raw_headers=tuple(request.raw_headers),
                body=await request.read(),
            )
        )
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.active -= 1
        self.completed += 1
        return web.Response(
            status=self.status, body=self.reply_body, headers=self.reply_headers
        )

    async def wait_for_requests(self, count: int, *, timeout_s: float = 10.0) -> None:
        """Wait until at least `count` requests arrived."""
        await wait_until(
            lambda: len(self.requests) >= count,
            timeout_s=timeout_s,
            description=f"{count} requests at {self.url} (got {len(self.requests)})",
        )


@contextlib.asynccontextmanager
async def recording_server() -> AsyncIterator[RecordingServer]:
    """Serve a RecordingServer on a free loopback port for the block's duration."""
    server = RecordingServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    # Cancelling handlers whose client left keeps a slow fake function from
    # holding up the shutdown after a 504.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    server.url = f"http://{LOOPBACK}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway() -> AsyncIterator[RecordingServer]:
    """A fake gateway: records `/function/...` requests and plays the function."""
    async with recording_server() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingServer]:
    """A callback receiver that records each callback POST."""
    async with recording_server() as server:
        server.reply_body = b""
        yield server


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NatsClient]:
    """A client of the test's nats-server, with the calls stream in place."""
    client = await nats.connect(nats_url)
    await jetstream.ensure_calls_stream(client.jetstream())
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def js(nc: NatsClient) -> JetStreamContext:
    return nc.jetstream()


def make_settings(nats_url: str, gateway_url: str, **overrides: Any) -> WorkerSettings:
    """Return worker settings for a test, with a free health port."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "gateway_url": gateway_url,
        "health_port": free_port(),
        "ack_wait_s": 5.0,
        "upstream_timeout_s": 5.0,
        "callback_timeout_s": 5.0,
    }
    values.update(overrides)
    return WorkerSettings(**values)


def make_call(**fields: Any) -> QueuedCall:
    """Return a call to `echo` in the default namespace, with a fresh call id."""
    values: dict[str, Any] = {
        "function": "echo",
        "namespace": constants.DEFAULT_NAMESPACE,
        "call_id": str(uuid.uuid4()),
        "accepted_at_ns": time.time_ns(),
        "headers": {"Content-Type": "text/plain"},
        "body": b"hello",
    }
    values.update(fields)
    return QueuedCall(**values)


async def publish(js: JetStreamContext, call: QueuedCall) -> None:
    """Store `call` on the calls stream as the gateway does."""
    await js.publish(call.subject(), call.body, headers=call.to_nats_headers())


async def stored_messages(js: JetStreamContext) -> int:
    """Return how many messages the calls stream still holds."""
    info = await js.stream_info(constants.CALLS_STREAM)
    return info.state.messages


async def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float = 10.0,
    description: str = "condition",
) -> None:
    """Poll `condition` every 10 ms, and fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {description}")
        await asyncio.sleep(0.01)


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float = 10.0,
    description: str = "condition",
) -> None:
    """Poll the coroutine `condition` every 50 ms, and fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {description}")
        await asyncio.sleep(0.05)


async def wait_for_empty_stream(
    js: JetStreamContext, *, timeout_s: float = 10.0
) -> None:
    """Wait until every stored call was acknowledged or terminated."""

    async def empty() -> bool:
        return await stored_messages(js) == 0

    await wait_until_async(
        empty, timeout_s=timeout_s, description="an empty calls stream"
    )


def log_context(record: logging.LogRecord) -> dict[str, Any]:
    """Return the `ctx` mapping a log record carries."""
    context = record.__dict__.get("ctx")
    assert isinstance(context, dict), f"log record {record.getMessage()!r} has no ctx"
    return context


@contextlib.asynccontextmanager
async def running_worker(settings: WorkerSettings) -> AsyncIterator[Worker]:
    """Run a Worker in a task until the block ends, then stop it."""
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(
            lambda: worker.ready or task.done(),
            description="the worker to become ready",
        )
        if task.done():
            task.result()
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=settings.ack_wait_s + 5)
