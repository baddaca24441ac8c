"""Fixtures that start real servers on free loopback ports."""

import asyncio
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from faashub import embedded_nats

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


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
