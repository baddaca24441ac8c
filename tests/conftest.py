"""Fixtures that start real servers on free loopback ports."""

import socket
import subprocess
from collections.abc import Iterator
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
