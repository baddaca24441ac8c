"""How `faashub up` stops: killed with SIGKILL, stopped mid-call, or started again.

Each test runs the whole hub as a user would (`python -m faashub up`) with its
own state folder on free ports, a slow classic function deployed through the
local provider, and a callback receiver of its own on 127.0.0.1. Every
process that a test starts is checked, by pid, to be gone at its end.
"""

import asyncio
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from faashub import constants, jetstream
from faashub.cli.hub import PIDS_FILE_NAME
from tests.hub_support import (
    CallbackReceiver,
    RunningHub,
    descendants,
    faashub,
    is_alive,
    run_up,
    start_hub,
    stop_hub,
)

pytestmark = pytest.mark.timeout(120)

# A classic function that marks its start with a file named after its body,
# then sleeps, then echoes the body.
SLOW_FUNCTION_SOURCE = """
import sys, time
from pathlib import Path

body = sys.stdin.read()
Path(sys.argv[1], body).touch()
time.sleep(float(sys.argv[2]))
print(body)
"""


def deploy_slow(hub: RunningHub, folder: Path, *, sleep_s: float) -> Path:
    """Deploy `slow`; return the folder where each call marks its start."""
    script = folder / "slow.py"
    script.write_text(SLOW_FUNCTION_SOURCE)
    started = folder / "started"
    started.mkdir()
    command = shlex.join([sys.executable, str(script), str(started), str(sleep_s)])
    deployed = faashub(
        "deploy", "--name", "slow", "--fprocess", command, gateway=hub.url
    )
    assert deployed.returncode == 0, deployed.stderr.decode()
    return started


def queue_calls(hub: RunningHub, receiver: CallbackReceiver, count: int) -> None:
    for index in range(count):
        response = httpx.post(
            f"{hub.url}/async-function/slow",
            content=f"call-{index}".encode(),
            headers={"X-Callback-Url": receiver.url},
            auth=hub.auth,
        )
        assert response.status_code == 202


def start_slow_calls(
    hub: RunningHub,
    receiver: CallbackReceiver,
    folder: Path,
    *,
    count: int,
    sleep_s: float,
) -> None:
    """Deploy `slow`, queue `count` calls of it, and wait until all have started."""
    started = deploy_slow(hub, folder, sleep_s=sleep_s)
    queue_calls(hub, receiver, count)
    wait_until(
        lambda: len(list(started.iterdir())) == count,
        timeout_s=30,
        message=f"the {count} calls did not start",
    )


def wait_until(condition: object, *, timeout_s: float, message: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def hub_processes(hub: RunningHub) -> dict[str, int]:
    """Return the pids of the hub's components by role, as in its pids file."""
    lines = (hub.state_dir / PIDS_FILE_NAME).read_text().splitlines()
    return {role: int(pid) for role, pid in (line.split() for line in lines)}


async def unacknowledged_calls(hub: RunningHub) -> tuple[int, int]:
    """Return the default queue's pending and unacknowledged call counts."""
    client = await nats.connect(hub.nats_url(), token=hub.nats_token())
    try:
        info = await client.jetstream().consumer_info(
            constants.CALLS_STREAM,
            jetstream.worker_durable_name(constants.DEFAULT_QUEUE),
        )
    finally:
        await client.close()
    return info.num_pending or 0, info.num_ack_pending or 0


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    """Pids the test started; any still alive at the end are killed and fail it."""
    pids: list[int] = []
    yield pids
    left = [pid for pid in pids if is_alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], [command_line(pid) for pid in left]


@pytest.mark.timeout(150)
def test_killed_supervisor_acknowledges_calls_in_flight(
    tmp_path: Path, started_pids: list[int]
) -> None:
    hub = start_hub(tmp_path / "state")
    started_pids.extend([hub.process.pid, *descendants(hub.process.pid)])
    with CallbackReceiver() as receiver:
        try:
            start_slow_calls(hub, receiver, tmp_path, count=3, sleep_s=3)
            children = descendants(hub.process.pid)
            [workers_pid] = [
                pid for pid in children if " up-workers " in command_line(pid)
            ]
            started_pids.extend(children)
            killed_at = time.monotonic()
        finally:
            stop_hub(hub, signal.SIGKILL)

        # The workers process drains the calls, which finish and are
        # acknowledged: well before its 30 s grace would end.
        wait_until(
            lambda: not is_alive(workers_pid),
            timeout_s=60,
            message="the workers process did not exit",
        )
        workers_exit_s = time.monotonic() - killed_at
        assert workers_exit_s < 20, "".join(hub.output[-40:])
        wait_until(
            lambda: not any(is_alive(pid) for pid in children),
            timeout_s=60,
            message="the hub's processes did not all exit",
        )
        output = "".join(hub.output)
        assert "abandoning" not in output
        assert "the hub supervisor is gone" in output
        assert len(receiver.received) == 3

        # The next start finds every call acknowledged, and runs none again.
        again = start_hub(tmp_path / "state")
        started_pids.extend([again.process.pid, *descendants(again.process.pid)])
        try:
            pending, unacknowledged = asyncio.run(unacknowledged_calls(again))
            time.sleep(1.0)  # a call run again would post its callback by now
        finally:
            stop_hub(again)
    assert pending == 0
    assert unacknowledged == 0
    assert len(receiver.received) == 3


def test_start_stops_components_left_running(
    tmp_path: Path, started_pids: list[int]
) -> None:
    first = start_hub(tmp_path / "state")
    started_pids.extend([first.process.pid, *descendants(first.process.pid)])
    left = hub_processes(first)
    leftovers = [left["gateway"], left["provider"], left["nats-server"]]
    try:
        # Without the supervisor and its watcher, only the workers process
        # stops by itself (PR_SET_PDEATHSIG).
        os.kill(left["watcher"], signal.SIGKILL)
        first.process.kill()
        first.process.wait()
        wait_until(
            lambda: not is_alive(left["workers"]),
            timeout_s=30,
            message="the workers process outlived the supervisor",
        )
        assert all(is_alive(pid) for pid in leftovers)

        second = start_hub(tmp_path / "state")
        started_pids.extend([second.process.pid, *descendants(second.process.pid)])
        try:
            assert [pid for pid in leftovers if is_alive(pid)] == []
            output = "".join(second.output)
            for role in ("gateway", "provider", "nats-server"):
                assert f"stopping the {role} (pid {left[role]})" in output
            health = httpx.get(f"{second.url}/healthz")
            assert health.status_code == 200
        finally:
            assert stop_hub(second) == 0
    finally:
        # The leftovers hold the first hub's output pipe open, and stop_hub
        # reads it to the end.
        for pid in leftovers:
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)
        stop_hub(first)


def test_stop_during_long_calls_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_pids: list[int]
) -> None:
    # The queue-worker gives up on calls in flight after 1 s rather than 30 s.
    monkeypatch.setenv("FAASHUB_SHUTDOWN_GRACE_S", "1")
    hub = start_hub(tmp_path / "state")
    started_pids.extend([hub.process.pid, *descendants(hub.process.pid)])
    with CallbackReceiver() as receiver:
        try:
            start_slow_calls(hub, receiver, tmp_path, count=2, sleep_s=30)
            started_pids.extend(descendants(hub.process.pid))
        finally:
            code = stop_hub(hub, signal.SIGTERM)
    output = "".join(hub.output)
    assert code == 0, output
    assert "Traceback" not in output
    assert " ERROR " not in output
    assert "abandoning 2 calls still running" in output
    assert "JetStream redelivers" in output


@pytest.mark.timeout(150)
def test_second_ctrl_c_hurries_the_stop(
    tmp_path: Path, started_pids: list[int]
) -> None:
    # The default shutdown grace: a first Ctrl-C would wait 30 s for the calls.
    hub = start_hub(tmp_path / "state")
    started_pids.extend([hub.process.pid, *descendants(hub.process.pid)])
    with CallbackReceiver() as receiver:
        try:
            start_slow_calls(hub, receiver, tmp_path, count=1, sleep_s=60)
            started_pids.extend(descendants(hub.process.pid))
            hub.process.send_signal(signal.SIGINT)
            wait_until(
                lambda: "waiting up to 30 s for 1 calls" in "".join(hub.output),
                timeout_s=20,
                message="the workers process did not start draining",
            )
            second_at = time.monotonic()
            hub.process.send_signal(signal.SIGINT)
            hub.process.wait(timeout=20)
            stop_s = time.monotonic() - second_at
        finally:
            code = stop_hub(hub, signal.SIGTERM)
    output = "".join(hub.output)
    assert code == 0, output
    assert "second stop signal: hurrying workers process" in output
    assert stop_s < 15, output


@pytest.mark.timeout(150)
def test_retry_after_unconfirmed_accept_runs_once(
    tmp_path: Path, started_pids: list[int]
) -> None:
    hub = start_hub(tmp_path / "state")
    started_pids.extend([hub.process.pid, *descendants(hub.process.pid)])
    with CallbackReceiver() as receiver:
        try:
            started = deploy_slow(hub, tmp_path, sleep_s=0)
            nats_pid = hub_processes(hub)["nats-server"]
            # A stopped server keeps the connection open but sends no PubAck,
            # so the gateway cannot tell whether it stored the call.
            os.kill(nats_pid, signal.SIGSTOP)
            try:
                unknown = httpx.post(
                    f"{hub.url}/async-function/slow",
                    content=b"once",
                    headers={"X-Callback-Url": receiver.url},
                    auth=hub.auth,
                    timeout=30,
                )
            finally:
                os.kill(nats_pid, signal.SIGCONT)
            assert unknown.status_code == 503, unknown.text
            call_id = unknown.headers["X-Call-Id"]
            # The first call was stored after all, and runs.
            receiver.wait_for(1)
            retry = httpx.post(
                f"{hub.url}/async-function/slow",
                content=b"once",
                headers={"X-Callback-Url": receiver.url, "X-Call-Id": call_id},
                auth=hub.auth,
            )
            assert retry.status_code == 202
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                pending, unacknowledged = asyncio.run(unacknowledged_calls(hub))
                if pending == unacknowledged == 0:
                    break
                time.sleep(0.1)
            status = httpx.get(f"{hub.url}/async-calls/{call_id}", auth=hub.auth)
        finally:
            code = stop_hub(hub, signal.SIGTERM)
    assert code == 0
    assert status.status_code == 200
    assert status.json()["state"] == "succeeded"
    # The function ran once, and the caller got one callback.
    assert [path.name for path in started.iterdir()] == ["once"]
    assert len(receiver.received) == 1
    assert receiver.received[0].headers["X-Call-Id"] == call_id


@pytest.mark.parametrize(
    ("region_arguments", "expected"),
    [
        pytest.param(
            ["--sqs-region", "us east 1"],
            "Invalid --sqs-region (FAASHUB_SQS_REGION): 'us east 1'",
            id="invalid",
        ),
        pytest.param([], "set --sqs-region (FAASHUB_SQS_REGION)", id="missing"),
    ],
)
def test_up_rejects_bad_sqs_region(
    tmp_path: Path, region_arguments: list[str], expected: str
) -> None:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AWS_REGION", "AWS_DEFAULT_REGION", "FAASHUB_SQS_REGION")
    }
    environment["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    result = run_up(
        tmp_path / "state",
        "--sqs-queues",
        "orders",
        *region_arguments,
        env=environment,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    assert "--region " not in result.stderr
    assert not (tmp_path / "state").exists()
