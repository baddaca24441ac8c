"""Starting the embedded nats-server: the server that responds is the one started."""

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from faashub import embedded_nats, errors
from tests.conftest import LOOPBACK, free_port, stop_process

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def foreign_server() -> Iterator[int]:
    """Listen on a free port and greet each client as another NATS server would."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen()

    def greet() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.sendall(b'INFO {"server_name":"someone-else"}\r\n')
            client.close()

    threading.Thread(target=greet, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def test_port_taken_by_another_server(foreign_server: int, tmp_path: Path) -> None:
    with pytest.raises(errors.HubStartError, match="exited with code"):
        embedded_nats.start(
            host=LOOPBACK,
            port=foreign_server,
            store_dir=tmp_path / "store",
            log_path=tmp_path / "nats.log",
            timeout_s=10,
        )

    assert "address already in use" in (tmp_path / "nats.log").read_text()


def test_started_server_names_itself(tmp_path: Path) -> None:
    port = free_port()
    store_dir = tmp_path / "store"

    process = embedded_nats.start(
        host=LOOPBACK, port=port, store_dir=store_dir, log_path=tmp_path / "nats.log"
    )
    try:
        with socket.create_connection((LOOPBACK, port), timeout=5) as connection:
            info = connection.makefile("rb").readline()
    finally:
        stop_process(process)

    assert embedded_nats.server_name(store_dir).encode() in info
    assert (tmp_path / "nats.log").stat().st_mode & 0o777 == 0o600
