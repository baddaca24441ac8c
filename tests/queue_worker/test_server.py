"""The queue-worker process: `/healthz`, signals and graceful stop."""

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from nats.js import JetStreamContext

from faashub import errors
from faashub.settings import WorkerSettings
from queue_worker import server
from queue_worker.worker import Worker
from tests.conftest import LOOPBACK, free_port
from tests.queue_worker.conftest import (
    RecordingServer,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_dead_letters,
    wait_for_empty_stream,
)

pytestmark = pytest.mark.timeout(30)

RUN_WORKER = (
    "import gc, sys; "
    "from faashub import logs; from faashub.settings import WorkerSettings; "
    "from queue_worker import server; logs.configure(level='INFO'); "
    "server.run(WorkerSettings()); "
    "print(f'run returned, gc frozen: {gc.get_freeze_count() > 0}', file=sys.stderr)"
)


class WorkerProcess:
    """A queue-worker subprocess configured through FAASHUB_* variables."""

    def __init__(self, process: asyncio.subprocess.Process, health_url: str) -> None:
        self.process = process
        self.health_url = health_url

    async def health(self) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(self.health_url, timeout=2.0)

    async def wait_for_health(self, status: int, *, timeout_s: float = 15.0) -> None:
        async def reached() -> bool:
            try:
                return (await self.health()).status_code == status
            except httpx.TransportError:
                return False

        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await reached():
            if self.process.returncode is not None:
                pytest.fail(f"the worker exited with {self.process.returncode}")
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"/healthz did not answer {status} within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def terminate(self, *, timeout_s: float = 10.0) -> tuple[int, str]:
        """Send SIGTERM, then return the exit code and what went to stderr."""
        self.process.send_signal(signal.SIGTERM)
        return await self.wait_for_exit(timeout_s=timeout_s)

    async def wait_for_exit(self, *, timeout_s: float = 10.0) -> tuple[int, str]:
        """Return the exit code and what went to stderr, once the process ends."""
        _, stderr = await asyncio.wait_for(
            self.process.communicate(), timeout=timeout_s
        )
        assert self.process.returncode is not None
        return self.process.returncode, stderr.decode()


StartWorker = Callable[..., Awaitable[WorkerProcess]]


@pytest.fixture
async def start_worker() -> AsyncIterator[StartWorker]:
    """Return a starter of worker processes. Processes left running are killed."""
    started: list[WorkerProcess] = []

    async def start(**env: str) -> WorkerProcess:
        health_port = free_port()
        variables = {
            **os.environ,
            "FAASHUB_HEALTH_HOST": LOOPBACK,
            "FAASHUB_HEALTH_PORT": str(health_port),
            **env,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            RUN_WORKER,
            env=variables,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        worker = WorkerProcess(process, f"http://{LOOPBACK}:{health_port}/healthz")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.process.wait()


async def test_sigterm_lets_running_call_finish(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    start_worker: StartWorker,
) -> None:
    gateway.delay_s = 1.5
    call = make_call(callback_url=f"{receiver.url}/done")
    worker = await start_worker(
        FAASHUB_NATS_URL=nats_url, FAASHUB_GATEWAY_URL=gateway.url
    )
    await worker.wait_for_health(200)
    assert (await worker.health()).text == "OK"

    await publish(js, call)
    await gateway.wait_for_requests(1)
    worker.process.send_signal(signal.SIGTERM)
    await worker.wait_for_health(503)
    draining = await worker.health()
    exit_code, log = await worker.wait_for_exit()

    assert draining.text == "stopping"
    assert exit_code == 0, log
    assert "received SIGTERM, stopping" in log
    assert "call finished" in log
    assert "run returned, gc frozen: True" in log
    assert gateway.completed == 1
    assert [r.header("X-Call-Id") for r in receiver.requests] == [call.call_id]
    await wait_for_empty_stream(js, timeout_s=2.0)


def process_with_argument(argument: str) -> int:
    """Return the pid of the one process whose command line contains `argument`."""
    found = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _cmdline_contains(entry, argument)
    ]
    assert len(found) == 1, f"processes with {argument!r}: {found}"
    return found[0]


def _cmdline_contains(entry: Path, argument: str) -> bool:
    try:
        return argument.encode() in (entry / "cmdline").read_bytes()
    except OSError:
        return False


async def test_drain_names_calls_nats_did_not_ack(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    nats_pid = process_with_argument(str(tmp_path / "nats"))
    gateway.delay_s = 1.0
    call = make_call(callback_url=f"{receiver.url}/done")
    worker = await start_worker(
        FAASHUB_NATS_URL=nats_url,
        FAASHUB_GATEWAY_URL=gateway.url,
        FAASHUB_SHUTDOWN_GRACE_S="1",
    )
    await worker.wait_for_health(200)
    await publish(js, call)
    await gateway.wait_for_requests(1)

    # The callback is posted while nats-server is frozen, so the final status
    # and the ack cannot be stored before the drain ends.
    os.kill(nats_pid, signal.SIGSTOP)
    try:
        await receiver.wait_for_requests(1)
        worker.process.send_signal(signal.SIGTERM)
        exit_code, log = await worker.wait_for_exit(timeout_s=20.0)
    finally:
        os.kill(nats_pid, signal.SIGCONT)

    assert exit_code == 0, log
    assert "1 calls finished but not acknowledged after 1 s" in log
    assert "abandoning" not in log
    assert "Traceback" not in log


async def test_health_is_503_without_nats(start_worker: StartWorker) -> None:
    unreachable = f"nats://{LOOPBACK}:{free_port()}"
    worker = await start_worker(FAASHUB_NATS_URL=unreachable)

    await worker.wait_for_health(503)
    await asyncio.sleep(1.5)
    response = await worker.health()
    exit_code, log = await worker.terminate(timeout_s=5.0)

    assert response.status_code == 503
    assert response.text == "not connected to nats"
    assert exit_code == 0, log
    assert log.count("nats unavailable") == 1


async def test_invalid_queue_name_is_rejected() -> None:
    settings = WorkerSettings(queue="a.b", health_port=free_port())

    with pytest.raises(errors.SettingsError, match="queue name 'a.b'"):
        Worker(settings)


async def test_busy_health_port_is_reported() -> None:
    worker = Worker(WorkerSettings())
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(errors.SettingsError, match=f"{LOOPBACK}:{port}"):
            await server.start_health_listener(worker, host=LOOPBACK, port=port)


def metric_value(text: str, sample: str) -> float:
    """Return the value of the sample line that starts with `sample`."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {sample!r} in:\n{text}")


async def test_metrics_count_calls(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.replies = [(500, {}), (200, {}), (400, {})]
    receiver.status = 500
    settings = make_settings(nats_url, gateway.url, callback_attempts=2)
    health_port = free_port()

    async with running_worker(settings) as worker:
        listener = await server.start_health_listener(
            worker, host=LOOPBACK, port=health_port
        )
        try:
            # Retried once, then succeeds; its callback is dead-lettered.
            await publish(js, make_call(callback_url=f"{receiver.url}/done"))
            await wait_for_dead_letters(js, 1)
            # Rejected with 400.
            await publish(js, make_call())
            await wait_for_dead_letters(js, 2)
            await wait_for_empty_stream(js)
            async with httpx.AsyncClient() as client:
                response = await client.get(
                    f"http://{LOOPBACK}:{health_port}/metrics", timeout=5.0
                )
        finally:
            await listener.cleanup()

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    function = 'function="echo.openfaas-fn"'
    assert metric_value(text, f"faashub_worker_attempts_total{{{function}}}") == 3
    assert metric_value(text, f"faashub_worker_retries_total{{{function}}}") == 1
    assert (
        metric_value(
            text,
            f'faashub_worker_calls_total{{{function},state="succeeded"}}',
        )
        == 1
    )
    assert (
        metric_value(text, f'faashub_worker_calls_total{{{function},state="failed"}}')
        == 1
    )
    assert (
        metric_value(
            text,
            'faashub_worker_dead_letters_total{kind="call",reason="rejected"}',
        )
        == 1
    )
    assert (
        metric_value(
            text,
            'faashub_worker_dead_letters_total{kind="callback",'
            'reason="callback-failed"}',
        )
        == 1
    )
    assert metric_value(text, "faashub_worker_callback_failures_total") == 2
    assert metric_value(text, "faashub_worker_calls_in_flight") == 0
    assert metric_value(text, 'faashub_worker_queue_depth{queue="default"}') == 0
    assert metric_value(text, "faashub_worker_start_delay_seconds_count") == 2
