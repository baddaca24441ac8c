"""`faashub connector sqs` as a process: crash recovery and the CLI."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faashub import errors
from faashub.cli import hub
from faashub.connector_settings import SqsConnectorSettings
from faashub.settings import HubSettings
from tests.conftest import free_port
from tests.connectors.conftest import FakeGateway, wait_until, wait_until_async
from tests.connectors.sqs.conftest import create_queue, queue_counts, send_messages

pytestmark = pytest.mark.timeout(60)


def start_connector(log_path: Path, *arguments: str) -> subprocess.Popen[bytes]:
    """Start `faashub connector sqs` with its output going to `log_path`."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "faashub", "connector", "sqs", *arguments],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


async def queue_counts_are(endpoint: str, url: str, expected: tuple[int, int]) -> bool:
    return await queue_counts(endpoint, url) == expected


async def wait_exit(process: subprocess.Popen[bytes], *, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the connector did not exit within {timeout_s:g} s")
        await asyncio.sleep(0.05)
    return process.returncode


async def test_kill_and_restart_loses_nothing(
    sqs_endpoint: str, gateway: FakeGateway, tmp_path: Path
) -> None:
    url = await create_queue(sqs_endpoint, "crash")
    gateway.deploy("count", url.rsplit("/", 1)[-1])
    gateway.respond("count", delay_s=0.3)
    bodies = [f"c{number}".encode() for number in range(12)]
    await send_messages(sqs_endpoint, url, bodies)
    arguments = [
        "--sqs-queues",
        url,
        "--endpoint-url",
        sqs_endpoint,
        "--region",
        "us-east-1",
        "--gateway-url",
        gateway.url,
        "--health-port",
        str(free_port()),
        "--rebuild-interval-s",
        "0.5",
        "--wait-time-s",
        "1",
        "--visibility-timeout-s",
        "1",
        "--max-inflight",
        "4",
        "--drain-timeout-s",
        "2",
    ]
    log = tmp_path / "connector.log"

    first = start_connector(log, *arguments)
    try:
        await wait_until(
            lambda: len(gateway.invocations) >= 5,
            timeout_s=30,
            description="a batch in flight before the kill",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert len(set(gateway.bodies("count"))) < len(bodies)

    second = start_connector(log, *arguments)
    try:
        await wait_until(
            lambda: set(gateway.bodies("count")) == set(bodies),
            timeout_s=30,
            description="every message after the restart",
        )
        # The messages in flight at the kill come back once their visibility
        # timeout passes, and are deleted after their second delivery.
        await wait_until_async(
            lambda: queue_counts_are(sqs_endpoint, url, (0, 0)),
            timeout_s=20,
            description="an empty queue",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        exit_code = await wait_exit(second, timeout_s=15)

    assert exit_code == 0
    # Only the messages in flight at the kill, max_inflight of them at most,
    # were delivered twice.
    repeats = len(gateway.bodies("count")) - len(bodies)
    assert 0 <= repeats <= 4


def test_hub_rejects_invalid_queue() -> None:
    settings = HubSettings(sqs_queues="orders, bad name")

    with pytest.raises(errors.SettingsError, match="bad name"):
        hub.run(settings)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param(
            {"sqs_queues": "orders", "sqs_endpoint_url": "notaurl"},
            "--sqs-endpoint-url",
            id="endpoint",
        ),
        pytest.param(
            {"kafka_brokers": "127.0.0.1:99999"},
            "port outside 1 to 65535",
            id="broker-port",
        ),
        pytest.param({"kafka_brokers": "nohostport"}, "--kafka-brokers", id="broker"),
    ],
)
def test_hub_rejects_bad_connector_address(
    fields: dict[str, str], message: str
) -> None:
    # Rejected before any component starts, naming the flag of `up`.
    with pytest.raises(errors.SettingsError, match=message):
        hub.run(HubSettings.model_validate(fields))


def test_standalone_connector_rejects_bad_endpoint() -> None:
    with pytest.raises(ValueError, match="not an http or https URL"):
        SqsConnectorSettings(sqs_queues="orders", endpoint_url="notaurl")
