"""`run` as its own process: signals, clean stop and no orphaned functions."""

import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from provider import http_server
from provider.backend import ProviderStartError
from provider.local import guardian, server
from tests.conftest import free_port, stop_process
from tests.hub_support import descendants
from tests.provider.conftest import deploy, process_gone, wait_until

pytestmark = pytest.mark.timeout(40)

RUN_PROVIDER = """
import gc
import sys
from pathlib import Path
from faashub import logs
from faashub.settings import LocalProviderSettings
from provider.local import server

logs.configure(level="INFO")
server.run(LocalProviderSettings(port=int(sys.argv[1]), state_dir=Path(sys.argv[2])))
print(f"run returned, gc frozen: {gc.get_freeze_count() > 0}", flush=True)
"""


class ProviderProcess:
    """A provider started with `run` in a child process."""

    def __init__(self, state_dir: Path, log_path: Path) -> None:
        self.log_path = log_path
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


def guardian_pid(provider_pid: int) -> int:
    """Return the pid of the provider's guardian process."""
    [pid] = [
        pid
        for pid in descendants(provider_pid)
        if b"guardian.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return pid


def read_pid_file(path: Path) -> int:
    """Wait until a shell wrote its line to `path`, and return the pid in it."""
    wait_until(
        lambda: path.exists() and path.read_text().endswith("\n"),
        what=f"the pid in {path.name}",
    )
    return int(path.read_text())


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
    guardian = guardian_pid(provider_process.process.pid)
    # The provider tunes the garbage collector this long after its start.
    time.sleep(http_server.GC_TUNE_DELAY_S + 0.5)

    started = time.monotonic()
    provider_process.process.send_signal(signum)
    exit_code = provider_process.process.wait(timeout=15)

    assert exit_code == 0
    assert time.monotonic() - started < 6
    assert process_gone(pid)
    assert "run returned, gc frozen: True" in provider_process.log_path.read_text()
    wait_until(lambda: process_gone(guardian), timeout_s=5, what="the guardian")


def test_killed_provider_takes_functions(
    provider_process: ProviderProcess, echo_command: str
) -> None:
    pid = deploy_echo_pid(provider_process.url, echo_command)

    provider_process.process.kill()
    provider_process.process.wait(timeout=5)

    wait_until(lambda: process_gone(pid), timeout_s=5, what="the orphan to die")


def test_killed_provider_takes_grandchildren(
    provider_process: ProviderProcess, echo_script: Path, tmp_path: Path
) -> None:
    sleep_pid_file = tmp_path / "sleep.pid"
    server_pid_file = tmp_path / "server.pid"
    classic = f"sh -c 'sleep 60 & echo $! > {sleep_pid_file}; wait'"
    wrapped = (
        f"sh -c '{sys.executable} {echo_script} & echo $! > {server_pid_file}; wait'"
    )
    with httpx.Client(base_url=provider_process.url, timeout=30) as client:
        assert deploy(client, "sleeper", classic).status_code == 202
        deployed = deploy(client, "wrapped", wrapped, envVars={"mode": "http"})
        assert deployed.status_code == 202
        assert client.post("/function/wrapped", content=b"").status_code == 200

        # The classic call runs until the provider dies, so it fails then.
        caller = threading.Thread(
            target=lambda: pytest.raises(
                httpx.TransportError, client.post, "/function/sleeper", content=b""
            )
        )
        caller.start()
        sleep_pid = read_pid_file(sleep_pid_file)
        server_pid = read_pid_file(server_pid_file)

        provider_process.process.kill()
        provider_process.process.wait(timeout=5)
        caller.join(timeout=10)

    wait_until(lambda: process_gone(sleep_pid), timeout_s=5, what="the sleep")
    wait_until(lambda: process_gone(server_pid), timeout_s=5, what="the server")


def test_guardian_reads_groups() -> None:
    lines = [b"add 10\n", b"add 11\n", b"remove 10\n", b"add x\n", b"add -3\n", b"?"]

    assert guardian.read_groups(lines) == {11}


def test_guardian_kills_listed_group() -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        killed = guardian.kill_groups([child.pid])
        exit_code = child.wait(timeout=5)
    finally:
        stop_process(child)

    assert killed == 1
    assert exit_code == -signal.SIGKILL
    assert guardian.kill_groups([child.pid]) == 0


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
