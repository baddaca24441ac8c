"""`run` as its own process: signals, clean stop and no orphaned functions."""

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from provider.backend import ProviderStartError
from provider.local import server
from tests.conftest import free_port, stop_process
from tests.provider.conftest import deploy, process_gone, wait_until

pytestmark = pytest.mark.timeout(40)

RUN_PROVIDER = """
import sys
from pathlib import Path
from faashub import logs
from faashub.settings import LocalProviderSettings
from provider.local import server

logs.configure(level="INFO")
server.run(LocalProviderSettings(port=int(sys.argv[1]), state_dir=Path(sys.argv[2])))
"""


class ProviderProcess:
    """A provider started with `run` in a child process."""

    def __init__(self, state_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-c", RUN_PROVIDER, str(self.port), str(state_dir)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._healthy, what="the provider to serve /healthz")

    def _healthy(self) -> bool:
        assert self.process.poll() is None, "the provider exited during start"
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture
def provider_process(tmp_path: Path) -> Iterator[ProviderProcess]:
    running = ProviderProcess(tmp_path / "state", tmp_path / "provider.log")
    try:
        yield running
    finally:
        stop_process(running.process)


def deploy_echo_pid(url: str, command: str) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        assert (
            deploy(client, "echo", command, envVars={"mode": "http"}).status_code == 202
        )
        pid: int = client.post("/function/echo", content=b"").json()["pid"]
    return pid


@pytest.mark.parametrize(
    "signum",
    [
        pytest.param(signal.SIGTERM, id="sigterm"),
        pytest.param(signal.SIGINT, id="sigint"),
    ],
)
def test_signal_stops_provider_and_functions(
    provider_process: ProviderProcess, echo_command: str, signum: int
) -> None:
    pid = deploy_echo_pid(provider_process.url, echo_command)

    started = time.monotonic()
    provider_process.process.send_signal(signum)
    exit_code = provider_process.process.wait(timeout=15)

    assert exit_code == 0
    assert time.monotonic() - started < 6
    assert process_gone(pid)


def test_killed_provider_takes_functions(
    provider_process: ProviderProcess, echo_command: str
) -> None:
    pid = deploy_echo_pid(provider_process.url, echo_command)

    provider_process.process.kill()
    provider_process.process.wait(timeout=5)

    wait_until(lambda: process_gone(pid), timeout_s=5, what="the orphan to die")


def test_port_in_use_raises(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = LocalProviderSettings(port=port, state_dir=tmp_path / "state")

        with pytest.raises(ProviderStartError, match=f"127.0.0.1:{port}"):
            server.run(settings)


def test_unusable_state_dir_raises(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.write_text("a file where the folder should be")
    settings = LocalProviderSettings(port=0, state_dir=state_dir)

    with pytest.raises(ProviderStartError, match="functions"):
        server.run(settings)
