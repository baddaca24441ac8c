"""Async calls survive worker crashes and NATS restarts: real processes throughout.

Each test runs queue-workers as separate processes (`queue_worker.server.run`
configured through FAASHUB_* variables) and a nats-server of its own, on a
fixed port with its own store folder. In-process HTTP servers play the
gateway (function lookups and invocations) and the callback receiver. Calls
are queued the way the gateway stores them. Every test asserts that each call
reached the callback exactly once and that the calls stream ends empty.
"""

import asyncio
import collections
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import nats
import pytest
from nats.aio.client import Client as NatsClient

from faashub import embedded_nats, jetstream
from faashub.call_status import CallState
from tests.conftest import LOOPBACK, free_port, stop_process
from tests.queue_worker.conftest import (
    RecordingServer,
    call_status,
    make_call,
    publish,
    recording_server,
    wait_for_empty_stream,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(90)

RUN_WORKER = (
    "from faashub import logs; from faashub.settings import WorkerSettings; "
    "from queue_worker import server; settings = WorkerSettings(); "
    "logs.configure(level=settings.log_level); server.run(settings)"
)


class NatsServer:
    """A nats-server on a fixed port and store folder, stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.url = f"nats://{LOOPBACK}:{self.port}"
        self._folder = folder
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = embedded_nats.start(
            host=LOOPBACK,
            port=self.port,
            store_dir=self._folder / "store",
            log_path=self._folder / "nats.log",
        )

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None


class WorkerProcess:
    """A queue-worker process whose log goes to a file."""

    def __init__(
        self, process: asyncio.subprocess.Process, health_url: str, log: Path
    ) -> None:
        self.process = process
        self.health_url = health_url
        self.log = log

    async def stop(self) -> None:
        """Stop the process with SIGTERM, or SIGKILL after 10 s."""
        if self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    async def wait_until_healthy(self, *, timeout_s: float = 20.0) -> None:
        async with httpx.AsyncClient() as client:
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:
                if self.process.returncode is not None:
                    pytest.fail(f"the worker exited:\n{self.log.read_text()}")
                try:
                    response = await client.get(self.health_url, timeout=1.0)
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(
                        f"the worker did not become healthy within {timeout_s} s"
                    )
                await asyncio.sleep(0.1)


StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    """A client of the test's nats-server that reconnects through restarts."""
    connection = await nats.connect(
        nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    await jetstream.ensure_calls_stream(connection.jetstream())
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def gateway() -> AsyncIterator[RecordingServer]:
    async with recording_server() as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingServer]:
    async with recording_server() as server:
        server.reply_body = b""
        yield server


@pytest.fixture
async def start_worker(
    tmp_path: Path, nats_server: NatsServer, gateway: RecordingServer
) -> AsyncIterator[StartWorker]:
    """Return a starter of worker processes; all are stopped at the end."""
    started: list[WorkerProcess] = []

    async def start(**settings: str) -> WorkerProcess:
        health_port = free_port()
        log = tmp_path / f"worker-{len(started)}.log"
        variables = {
            **os.environ,
            "FAASHUB_NATS_URL": nats_server.url,
            "FAASHUB_GATEWAY_URL": gateway.url,
            "FAASHUB_HEALTH_HOST": LOOPBACK,
            "FAASHUB_HEALTH_PORT": str(health_port),
            "FAASHUB_RETRY_MIN_WAIT_S": "0.05",
            "FAASHUB_RETRY_MAX_WAIT_S": "0.2",
            "FAASHUB_LOG_LEVEL": os.environ.get("TEST_WORKER_LOG_LEVEL", "INFO"),
            **{f"FAASHUB_{name.upper()}": value for name, value in settings.items()},
        }
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                RUN_WORKER,
                env=variables,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=output,
            )
        worker = WorkerProcess(process, f"http://{LOOPBACK}:{health_port}/healthz", log)
        started.append(worker)
        await worker.wait_until_healthy()
        return worker

    yield start
    for worker in started:
        await worker.stop()


def callbacks_by_call(receiver: RecordingServer) -> collections.Counter[str | None]:
    return collections.Counter(r.header("X-Call-Id") for r in receiver.requests)


async def test_worker_killed_mid_call_completes_once(
    client: NatsClient,
    gateway: RecordingServer,
    receiver: RecordingServer,
    start_worker: StartWorker,
) -> None:
    js = client.jetstream()
    gateway.delay_s = 5.0
    call = make_call(callback_url=f"{receiver.url}/done")
    first = await start_worker(ACK_WAIT_S="1.5")

    await publish(js, call)
    await gateway.wait_for_requests(1)
    # A first delivery writes its RUNNING record only once the call has run
    # for a third of ack_wait. An attempt killed before that is not counted.
    await wait_for_state(js, call.call_id, CallState.RUNNING)
    first.process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(first.process.wait(), timeout=5)
    gateway.delay_s = 0.0
    await start_worker(ACK_WAIT_S="1.5")
    await receiver.wait_for_requests(1, timeout_s=15.0)
    await wait_for_empty_stream(js)
    # Long enough for a second delivery to show.
    await asyncio.sleep(2.0)

    assert len(gateway.requests) == 2
    assert callbacks_by_call(receiver) == {call.call_id: 1}
    assert receiver.requests[0].header("X-Function-Status") == "200"
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    # The attempt that died counts.
    assert record.attempts == 2


async def test_nats_restart_loses_no_call(
    nats_server: NatsServer,
    client: NatsClient,
    gateway: RecordingServer,
    receiver: RecordingServer,
    start_worker: StartWorker,
) -> None:
    js = client.jetstream()
    gateway.delay_s = 0.2
    calls = [make_call(callback_url=f"{receiver.url}/done") for _ in range(12)]
    worker = await start_worker(MAX_INFLIGHT="2", ACK_WAIT_S="3")

    for call in calls:
        await publish(js, call)
    await receiver.wait_for_requests(2)
    nats_server.stop()
    await asyncio.sleep(1.5)
    nats_server.start()
    await worker.wait_until_healthy()
    await receiver.wait_for_requests(len(calls), timeout_s=30.0)
    await wait_for_empty_stream(js, timeout_s=15.0)
    await asyncio.sleep(1.0)

    assert worker.process.returncode is None, "the worker restarted"
    assert callbacks_by_call(receiver) == {call.call_id: 1 for call in calls}
    log = worker.log.read_text()
    assert "nats unavailable" in log
    assert "nats available again" in log


async def test_delayed_calls_survive_nats_restart(
    nats_server: NatsServer,
    client: NatsClient,
    gateway: RecordingServer,
    receiver: RecordingServer,
    start_worker: StartWorker,
) -> None:
    js = client.jetstream()
    worker = await start_worker()
    # The delay counts from after the worker's start, which can take seconds
    # on a busy machine.
    not_before_ns = make_call().accepted_at_ns + 3_000_000_000
    calls = [
        make_call(callback_url=f"{receiver.url}/done", not_before_ns=not_before_ns)
        for _ in range(5)
    ]

    for call in calls:
        await publish(js, call)
    # The worker received them and handed them back to wait for their time.
    await asyncio.sleep(0.5)
    assert gateway.requests == []
    nats_server.stop()
    await asyncio.sleep(1.0)
    nats_server.start()
    await worker.wait_until_healthy()
    await receiver.wait_for_requests(len(calls), timeout_s=20.0)
    await wait_for_empty_stream(js)

    assert callbacks_by_call(receiver) == {call.call_id: 1 for call in calls}
    assert all(r.received_at_s for r in gateway.requests)


async def test_call_longer_than_ack_wait_runs_once(
    client: NatsClient,
    gateway: RecordingServer,
    receiver: RecordingServer,
    start_worker: StartWorker,
) -> None:
    js = client.jetstream()
    gateway.delay_s = 3.5
    call = make_call(callback_url=f"{receiver.url}/done")
    # Two workers on the queue: a lapsed lease would hand the call to the other.
    await start_worker(ACK_WAIT_S="1")
    await start_worker(ACK_WAIT_S="1")

    await publish(js, call)
    await receiver.wait_for_requests(1, timeout_s=15.0)
    await wait_for_empty_stream(js)
    await asyncio.sleep(1.5)

    assert len(gateway.requests) == 1
    assert callbacks_by_call(receiver) == {call.call_id: 1}
