"""Fixtures for queue-worker tests: a fake gateway, a callback receiver, NATS.

The fake gateway and the callback receiver are small aiohttp.web servers on
free loopback ports that record every request and reply with what the test
sets. The fake gateway also serves the worker's function lookups
(`GET /system/function/NAME`) from its `functions` table, and its replica
URL lookups (`GET /system/function-endpoints/NAME`) from `replica_urls`, and
records both apart from the invocations.
"""

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from faashub import constants, jetstream
from faashub.call_status import CallState, CallStatus, status_key
from faashub.dead_letter import DeadLetter
from faashub.queued_call import QueuedCall
from faashub.replica_urls import DIRECT_INVOCATIONS_PATH
from faashub.settings import WorkerSettings
from queue_worker.worker import Worker
from tests.conftest import (
    LOOPBACK,
    free_port,
)
from tests.conftest import (
    wait_until as shared_wait_until,
)
from tests.conftest import (
    wait_until_async as shared_wait_until_async,
)


@dataclass
class RecordedRequest:
    """One request as the recording server saw it on the wire."""

    method: str
    raw_path: str
    query: str
    raw_headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    received_at_s: float = field(default_factory=time.monotonic)
    """When the request arrived, on the monotonic clock."""

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
    functions: dict[str, dict[str, str]] | None = None
    """Annotations by `name.namespace`; None means every function exists."""
    lookups: list[str] = field(default_factory=list)
    active_by_function: dict[str, int] = field(default_factory=dict)
    max_active_by_function: dict[str, int] = field(default_factory=dict)
    replies: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Status and headers of the next replies, used up before `status`."""
    drop_connections: bool = False
    """Close each connection instead of replying, as a crashed server would."""
    delay_by_function: dict[str, float] = field(default_factory=dict)
    """Seconds to wait before replying, by function name, over `delay_s`."""
    lookup_failures: int = 0
    """How many more lookups get a 503 response before the table is used."""
    replica_urls: list[str] = field(default_factory=list)
    """Replica URLs reported for every function; none by default."""
    endpoint_lookups: list[str] = field(default_factory=list)
    exec_timeout_s: float | None = None
    """The exec timeout reported with the replica URLs."""
    direct_calls: list[dict[str, int]] = field(default_factory=list)
    """Bodies of the reports of direct calls that the worker posted."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/system/function/"):
            return self.lookup(request)
        if request.path.startswith("/system/function-endpoints/"):
            name = request.path.removeprefix("/system/function-endpoints/")
            self.endpoint_lookups.append(name)
            return web.json_response(
                {
                    "name": name,
                    "urls": self.replica_urls,
                    "ttl_s": 0.5,
                    "exec_timeout_s": self.exec_timeout_s,
                }
            )
        if request.path == DIRECT_INVOCATIONS_PATH:
            self.direct_calls.append(await request.json())
            return web.Response(status=204)
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
        function = request.path.removeprefix("/function/").split("/")[0]
        name = function.rpartition(".")[0]
        delay_s = self.delay_by_function.get(name, self.delay_s)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.active_by_function[name] = self.active_by_function.get(name, 0) + 1
        self.max_active_by_function[name] = max(
            self.max_active_by_function.get(name, 0), self.active_by_function[name]
        )
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
        finally:
            self.active -= 1
            self.active_by_function[name] -= 1
        self.completed += 1
        if self.drop_connections:
            assert request.transport is not None
            request.transport.close()
        status, headers = self.status, self.reply_headers
        if self.replies:
            status, headers = self.replies.pop(0)
        return web.Response(status=status, body=self.reply_body, headers=headers)

    def lookup(self, request: web.Request) -> web.Response:
        name = request.match_info["tail"].removeprefix("system/function/")
        ref = f"{name}.{request.query.get('namespace', '')}"
        self.lookups.append(ref)
        if self.lookup_failures > 0:
            self.lookup_failures -= 1
            return web.Response(status=503)
        if self.functions is None:
            annotations: dict[str, str] = {}
        elif ref in self.functions:
            annotations = self.functions[ref]
        else:
            return web.Response(status=404)
        return web.json_response({"name": name, "annotations": annotations})

    async def wait_for_requests(self, count: int, *, timeout_s: float = 10.0) -> None:
        """Wait until at least `count` requests arrived."""
        await wait_until(
            lambda: len(self.requests) >= count,
            timeout_s=timeout_s,
            description=f"{count} requests at {self.url} (got {len(self.requests)})",
        )


@contextlib.asynccontextmanager
async def recording_server(port: int | None = None) -> AsyncIterator[RecordingServer]:
    """Serve a RecordingServer on loopback (a free port by default) for the block."""
    server = RecordingServer()
    # Large enough for the 5 MiB bodies of the object-store tests.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    # Cancelling handlers whose client left keeps a slow fake function from
    # holding up the shutdown after a 504.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    port = port or free_port()
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
    """Return worker settings for a test, with a free health port and short waits."""
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "gateway_url": gateway_url,
        "health_port": free_port(),
        "ack_wait_s": 5.0,
        "upstream_timeout_s": 5.0,
        "callback_timeout_s": 5.0,
        "retry_min_wait_s": 0.05,
        "retry_max_wait_s": 0.2,
        "retry_jitter": "none",
        "callback_max_wait_s": 0.2,
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


async def dead_letters(js: JetStreamContext) -> list[DeadLetter]:
    """Return every dead letter stored so far, oldest first."""
    try:
        info = await js.stream_info(constants.DEAD_LETTER_STREAM)
    except NotFoundError:
        return []
    if not info.state.messages:
        return []
    letters = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            message = await js.get_msg(constants.DEAD_LETTER_STREAM, sequence)
        except NotFoundError:
            continue
        letters.append(DeadLetter.from_nats(message.headers, message.data or b""))
    return letters


async def wait_for_dead_letters(
    js: JetStreamContext, count: int, *, timeout_s: float = 10.0
) -> list[DeadLetter]:
    """Wait until at least `count` dead letters are stored, and return them."""
    found: list[DeadLetter] = []

    async def enough() -> bool:
        nonlocal found
        found = await dead_letters(js)
        return len(found) >= count

    await wait_until_async(
        enough, timeout_s=timeout_s, description=f"{count} dead letters"
    )
    return found


async def call_status(js: JetStreamContext, call_id: str) -> CallStatus | None:
    """Return the status record of a call, or None if it has none."""
    bucket = await jetstream.ensure_status_bucket(js)
    try:
        entry = await bucket.get(status_key(call_id))
    except KeyNotFoundError:
        return None
    return CallStatus.from_json(entry.value or b"")


async def wait_for_state(
    js: JetStreamContext, call_id: str, state: CallState, *, timeout_s: float = 10.0
) -> CallStatus:
    """Wait until the call's status record is in `state`, and return it."""
    found: CallStatus | None = None

    async def reached() -> bool:
        nonlocal found
        found = await call_status(js, call_id)
        return found is not None and found.state is state

    await wait_until_async(
        reached, timeout_s=timeout_s, description=f"call {call_id} {state.value}"
    )
    assert found is not None
    return found


async def stored_messages(js: JetStreamContext) -> int:
    """Return how many messages the calls stream still holds."""
    info = await js.stream_info(constants.CALLS_STREAM)
    return info.state.messages


wait_until = functools.partial(shared_wait_until, timeout_s=10.0, interval_s=0.01)
wait_until_async = functools.partial(
    shared_wait_until_async, timeout_s=10.0, interval_s=0.05
)


async def wait_for_stored(
    js: JetStreamContext, count: int, *, timeout_s: float = 10.0
) -> None:
    """Wait until the calls stream contains `count` messages.

    The server removes an acknowledged message a moment after the ack, so a
    single read right after a worker stops can still count it.
    """

    async def reached() -> bool:
        return await stored_messages(js) == count

    await wait_until_async(
        reached, timeout_s=timeout_s, description=f"{count} stored calls"
    )


async def wait_for_empty_stream(
    js: JetStreamContext, *, timeout_s: float = 10.0
) -> None:
    """Wait until every stored call was acknowledged or terminated."""
    await wait_for_stored(js, 0, timeout_s=timeout_s)


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
        await asyncio.wait_for(task, timeout=settings.shutdown_grace_s + 5)
