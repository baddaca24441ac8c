"""The ports that `faashub up` chooses for its components stay taken until it stops."""

import errno
import socket
from pathlib import Path

import pytest

from faashub import embedded_nats
from faashub.cli import hub
from tests.conftest import LOOPBACK, stop_process

pytestmark = pytest.mark.timeout(30)


def test_reserved_port_rejects_other_bind() -> None:
    supervisor = hub.Hub()
    port = hub._reserve_port(supervisor)
    try:
        with socket.socket() as other:
            with pytest.raises(OSError) as raised:
                other.bind((LOOPBACK, port))
    finally:
        hub._stop_all(supervisor)

    assert raised.value.errno == errno.EADDRINUSE


def test_component_listens_on_reserved_port(tmp_path: Path) -> None:
    supervisor = hub.Hub()
    port = hub._reserve_port(supervisor)
    try:
        process = embedded_nats.start(
            host=LOOPBACK,
            port=port,
            store_dir=tmp_path / "nats",
            log_path=tmp_path / "nats.log",
        )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=5) as client:
                greeting = client.recv(1024)
        finally:
            stop_process(process)
    finally:
        hub._stop_all(supervisor)

    assert greeting.startswith(b"INFO ")


def test_stop_releases_reserved_ports() -> None:
    supervisor = hub.Hub()
    port = hub._reserve_port(supervisor)
    hub._stop_all(supervisor)

    assert supervisor.reserved_ports == []
    with socket.socket() as other:
        other.bind((LOOPBACK, port))
