"""The cron connector that `faashub up` starts, end to end through a real hub.

One hub serves the whole test, because starting one costs several seconds.
Beside the hub's own connector (sync, claiming ticks in the hub's NATS), the
test runs three more `faashub connector cron` processes: one sync replica on
the same NATS, and two async replicas whose repeated call ids the gateway
drops. The async replicas send another Content-Type, so the function can
tell the async runs from the sync ones.
"""

import collections
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from faashub import credentials
from tests.conftest import LOOPBACK, free_port, stop_process
from tests.hub_support import RunningHub, faashub, running_hub

pytestmark = pytest.mark.timeout(120)

SYNC_CONTENT_TYPE = "text/plain"
ASYNC_CONTENT_TYPE = "application/octet-stream"
FUNCTION = "ticker.openfaas-fn"


@dataclass
class Replica:
    name: str
    process: "subprocess.Popen[bytes]"
    health_url: str
    log: Path

    def metrics(self) -> str:
        return httpx.get(f"{self.health_url}/metrics", timeout=5).text


@contextmanager
def running_replica(
    hub: RunningHub, name: str, folder: Path, *arguments: str
) -> Iterator[Replica]:
    """Run `faashub connector cron` against the hub, with the hub's credentials."""
    port = free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "faashub",
                "connector",
                "cron",
                "--gateway-url",
                hub.url,
                "--gateway-secret-mount-path",
                str(credentials.hub_credentials_dir(hub.state_dir)),
                "--rebuild-interval-s",
                "1",
                "--health-host",
                LOOPBACK,
                "--health-port",
                str(port),
                *arguments,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        yield Replica(name, process, f"http://{LOOPBACK}:{port}", log)
    finally:
        stop_process(process)


def wait_ready(replicas: list[Replica], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    for replica in replicas:
        while True:
            assert replica.process.poll() is None, replica.log.read_text()
            try:
                if httpx.get(f"{replica.health_url}/healthz", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, replica.log.read_text()
            time.sleep(0.1)


def wait_for_hub_schedule(hub: RunningHub, timeout_s: float = 30) -> None:
    """Wait until the hub's own connector logs that it scheduled the function."""
    expected = f"schedule added function={FUNCTION}"
    deadline = time.monotonic() + timeout_s
    while not any(expected in line for line in list(hub.output)):
        assert time.monotonic() < deadline, "".join(hub.output[-40:])
        time.sleep(0.1)


def invoked_count(metrics: str) -> float:
    """Sum `faashub_connector_invoked_total` over its labels."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("faashub_connector_invoked_total{")
    )


def read_runs(folder: Path) -> list[dict[str, str]]:
    """Return the headers of each finished run, one file per run."""
    runs = []
    for path in folder.glob("run.*"):
        lines = path.read_text().splitlines()
        if lines and lines[-1] == "end":
            runs.append(dict(line.split("=", 1) for line in lines[:-1]))
    return runs


def test_hub_fires_every_second(
    tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs_folder = tmp_path / "runs"
    runs_folder.mkdir()
    # The hub's connector takes its other settings from FAASHUB_* variables:
    # it reads the function list every second, not every 10 s.
    monkeypatch.setenv("FAASHUB_REBUILD_INTERVAL_S", "1")
    hub_args = ["--nats-url", nats_url]
    with running_hub(tmp_path / "state", extra_args=hub_args, auth=True) as hub:
        # The classic watchdog passes request headers as Http_* variables. Each
        # run writes a file of its own, because sync and async runs overlap.
        script = (
            f"run=$(mktemp {runs_folder}/run.XXXXXX); "
            "{ env | grep -E '^Http_(X_(Topic|Connector|Cron|Call)|Content_Type)'; "
            "echo end; } > $run"
        )
        deployed = faashub(
            "deploy",
            "--name",
            "ticker",
            "--fprocess",
            f'sh -c "{script}"',
            "--annotation",
            "topic=cron-function",
            "--annotation",
            "schedule=@every 1s",
            gateway=hub.url,
        )
        assert deployed.returncode == 0, deployed.stderr.decode()

        with ExitStack() as stack:
            replicas = [
                stack.enter_context(
                    running_replica(
                        hub,
                        "sync",
                        tmp_path,
                        "--nats-url",
                        nats_url,
                        "--replica-id",
                        "second",
                    )
                ),
                *(
                    stack.enter_context(
                        running_replica(
                            hub,
                            name,
                            tmp_path,
                            "--async-invocation",
                            "--content-type",
                            ASYNC_CONTENT_TYPE,
                        )
                    )
                    for name in ("async-1", "async-2")
                ),
            ]
            wait_ready(replicas)
            wait_for_hub_schedule(hub)

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async_runs = [
                    run
                    for run in read_runs(runs_folder)
                    if run.get("Http_Content_Type") == ASYNC_CONTENT_TYPE
                ]
                if len(async_runs) >= 3:
                    break
                time.sleep(0.2)
            # Time for a repeated run of the last ticks to arrive, if any does.
            time.sleep(1.0)
            metrics = {replica.name: replica.metrics() for replica in replicas}

    runs = read_runs(runs_folder)
    sync_runs = [run for run in runs if run["Http_Content_Type"] == SYNC_CONTENT_TYPE]
    async_runs = [run for run in runs if run["Http_Content_Type"] == ASYNC_CONTENT_TYPE]
    assert len(sync_runs) >= 3, "".join(hub.output[-40:])
    assert len(async_runs) >= 3, "".join(hub.output[-40:])
    assert all(run["Http_X_Topic"] == "cron-function" for run in runs)
    assert all(run["Http_X_Connector"] == "cron-connector" for run in runs)
    assert all(run["Http_X_Cron_Scheduled_At"].endswith(".000Z") for run in runs)

    # Sync: the hub's connector and the sync replica claim each tick in the
    # hub's NATS, so each tick runs once.
    sync_ticks = collections.Counter(
        run["Http_X_Cron_Scheduled_At"] for run in sync_runs
    )
    assert max(sync_ticks.values()) == 1, sync_ticks
    assert len({run["Http_X_Call_Id"] for run in sync_runs}) == len(sync_runs)
    assert f'function="{FUNCTION}"' in metrics["sync"]

    # Async: both async replicas send every tick with the same call id, and
    # the gateway stores it once.
    async_ticks = collections.Counter(
        run["Http_X_Cron_Scheduled_At"] for run in async_runs
    )
    assert max(async_ticks.values()) == 1, async_ticks
    assert invoked_count(metrics["async-1"]) >= 3, metrics["async-1"]
    assert invoked_count(metrics["async-2"]) >= 3, metrics["async-2"]
