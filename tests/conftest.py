"""Fixtures that start real servers on free loopback ports."""

import asyncio
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from faashub import embedded_nats

LOOPBACK = "127.0.0.1"

# Test servers listen on the ports from FIRST_TEST_PORT to LAST_PORT that lie
# outside the kernel's ephemeral range. Linux takes ports for a bind() to port
# 0 and for the local end of an outgoing connection only inside that range.
# So no hub component, HTTP-mode function or client connection takes them.
FIRST_TEST_PORT = 10_000
LAST_PORT = 65_535
EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Linux's default ip_local_port_range, for a system without that file.
DEFAULT_EPHEMERAL_RANGE = (32_768, 60_999)
MIN_PORTS_PER_WORKER = 1_000


def ephemeral_port_range() -> tuple[int, int]:
    """Return the first and last port of the kernel's ephemeral range."""
    try:
        first, last = EPHEMERAL_RANGE_PATH.read_text().split()
        return int(first), int(last)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_RANGE


class PortChooser:
    """Test server ports that no other worker takes and Linux never picks itself.

    Each pytest-xdist worker gets its own block of the ports outside the
    ephemeral range, so two workers never choose the same port. Within its
    block, a worker hands the ports out in turn, so a port comes back only
    after the whole block. The turn starts at a random port, so that a second
    pytest run on the same machine rarely takes the same ports at the same
    time. A port is returned only if a bind without SO_REUSEADDR succeeds on
    it. That bind fails while a socket listens on the port, is connected from
    it or has it in TIME_WAIT.
    """

    def __init__(self, *, worker_index: int, worker_count: int) -> None:
        ephemeral_first, ephemeral_last = ephemeral_port_range()
        ports = [
            port
            for port in range(FIRST_TEST_PORT, LAST_PORT + 1)
            if not ephemeral_first <= port <= ephemeral_last
        ]
        block_size = len(ports) // worker_count
        if block_size < MIN_PORTS_PER_WORKER:
            raise RuntimeError(
                f"The ephemeral port range {ephemeral_first}-{ephemeral_last} "
                f"({EPHEMERAL_RANGE_PATH}) leaves {len(ports)} ports from "
                f"{FIRST_TEST_PORT} up for {worker_count} test workers, fewer "
                f"than {MIN_PORTS_PER_WORKER} each. Narrow the range with "
                "sysctl net.ipv4.ip_local_port_range, or run fewer workers (-n)."
            )
        start = worker_index * block_size
        self._ports = ports[start : start + block_size]
        self._next = random.randrange(block_size)
        self._lock = threading.Lock()

    def take(self) -> int:
        """Return the next port of this worker's block that a bind accepts."""
        with self._lock:
            for _ in range(len(self._ports)):
                port = self._ports[self._next]
                self._next = (self._next + 1) % len(self._ports)
                if _can_bind(port):
                    return port
        raise RuntimeError(
            f"Every port from {self._ports[0]} to {self._ports[-1]} is in use on "
            f"{LOOPBACK}; stop the processes that hold them."
        )


def _can_bind(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _xdist_worker() -> tuple[int, int]:
    """Return this process's pytest-xdist worker index and the worker count."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not name.startswith("gw"):
        return 0, 1
    return int(name[2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])


_worker_index, _worker_count = _xdist_worker()
_ports = PortChooser(worker_index=_worker_index, worker_count=_worker_count)


def free_port() -> int:
    """Return a loopback TCP port for a test server to listen on.

    Every test and test helper takes its ports here. PortChooser explains why
    no other worker, hub component or outgoing connection takes the same one.
    """
    return _ports.take()


async def subscribe_ready(
    client: NatsClient,
    subject: str,
    *,
    cb: Callable[[Msg], Awaitable[None]] | None = None,
) -> Subscription:
    """Subscribe to `subject` and return once nats-server applies the subscription.

    `client.flush()` does not ensure that. nats-py 2.16 writes the PING of a
    flush to the socket at once, ahead of a SUB that still waits in its send
    buffer, so the PONG can come back before the server has the SUB. The server
    handles the commands of one connection in order. So a message that the
    client publishes to itself after the SUB arrives only after the server has
    processed the SUB. `client` must not be connected with no_echo.
    """
    subscription = await client.subscribe(subject, cb=cb)
    probe_subject = client.new_inbox()
    probe = await client.subscribe(probe_subject, max_msgs=1)
    await client.publish(probe_subject, b"")
    await probe.next_msg(timeout=10)
    return subscription


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream, new for each test."""
    port = free_port()
    process = embedded_nats.start(
        host=LOOPBACK,
        port=port,
        store_dir=tmp_path / "nats",
        log_path=tmp_path / "nats.log",
    )
    try:
        yield f"nats://{LOOPBACK}:{port}"
    finally:
        stop_process(process)


async def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.01,
    description: str = "condition",
) -> None:
    """Poll `condition` every `interval_s`, and fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {description}")
        await asyncio.sleep(interval_s)


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    description: str = "condition",
) -> None:
    """Poll the coroutine `condition` every `interval_s`, and fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {description}")
        await asyncio.sleep(interval_s)
