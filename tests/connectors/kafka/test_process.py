"""`faashub connector kafka` as a process: crash recovery, signals, the CLI."""

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOPBACK, free_port
from tests.connectors.conftest import (
    FakeGateway,
    committed_offsets,
    create_topics,
    kafka_producer,
    unique,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

logger = logging.getLogger(__name__)


def start_connector(
    log_path: Path, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `faashub connector kafka` with its output going to `log_path`."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "faashub", "connector", "kafka", *arguments],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


def run_connector_command(
    *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "faashub", "connector", "kafka", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    async with httpx.AsyncClient(timeout=1.0) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output = await asyncio.to_thread(log.read_text)
                pytest.fail("the connector exited:\n" + output)
            try:
                response = await client.get(f"http://{LOOPBACK}:{port}/healthz")
                if response.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    output = await asyncio.to_thread(log.read_text)
    pytest.fail("the connector did not become healthy:\n" + output)


async def wait_exit(process: subprocess.Popen[bytes], *, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the connector did not exit within {timeout_s:g} s")
        await asyncio.sleep(0.05)
    return process.returncode


def common_arguments(brokers: str, gateway: FakeGateway, health_port: int) -> list[str]:
    return [
        "--brokers",
        brokers,
        "--gateway-url",
        gateway.url,
        "--health-port",
        str(health_port),
        "--rebuild-interval-s",
        "0.5",
        "--session-timeout-s",
        "6",
        "--drain-timeout-s",
        "2",
    ]


async def test_kill_and_restart_loses_nothing(
    kafka_brokers: str,
    gateway: FakeGateway,
    tmp_path: Path,
) -> None:
    topic, group = unique("crash"), unique("group")
    await create_topics(kafka_brokers, topic, partitions=3)
    gateway.deploy("count", topic)
    gateway.respond("count", delay_s=0.05)
    bodies = [f"c{number}".encode() for number in range(300)]
    async with kafka_producer(kafka_brokers) as producer:
        for body in bodies:
            await producer.send(topic, body)
        await producer.flush()
    max_inflight, commit_interval_s = 4, 0.2
    arguments = [
        *common_arguments(kafka_brokers, gateway, free_port()),
        "--group-id",
        group,
        "--ordering",
        "none",
        "--max-inflight",
        str(max_inflight),
        "--commit-interval-s",
        str(commit_interval_s),
    ]
    log = tmp_path / "connector.log"

    first = start_connector(log, *arguments)
    try:
        await wait_until(
            lambda: len(gateway.invocations) >= 80,
            timeout_s=30,
            description="80 records before the kill",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed_s = time.monotonic()
    before_kill = list(gateway.invocations)
    committed = await committed_offsets(kafka_brokers, group, topic)

    second = start_connector(log, *arguments)
    try:
        await wait_until(
            lambda: set(gateway.bodies("count")) == set(bodies),
            timeout_s=45,
            description="every record after the restart",
        )
        await asyncio.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        await wait_exit(second, timeout_s=15)

    # The in-flight window: records sent to the function before the kill at
    # or after their partition's committed offset.
    window = {
        (call.header("X-Kafka-Partition"), call.header("X-Kafka-Offset"))
        for call in before_kill
        if int(call.header("X-Kafka-Offset") or 0)
        >= (committed[int(call.header("X-Kafka-Partition") or 0)] or 0)
    }
    deliveries = Counter(
        (call.header("X-Kafka-Partition"), call.header("X-Kafka-Offset"))
        for call in gateway.received("count")
    )
    repeated = {record for record, count in deliveries.items() if count > 1}
    # Records that finished after the last commit arrived in the last commit
    # interval, plus scheduling slack; the rest of the window is in flight.
    recent = sum(
        1
        for call in before_kill
        if call.received_s >= killed_s - commit_interval_s - 0.3
    )
    logger.info(
        "crash measured: %d records in the in-flight window, %d delivered twice, "
        "%d delivered in the last commit interval",
        len(window),
        len(repeated),
        recent,
    )
    assert sorted(set(gateway.bodies("count"))) == sorted(bodies)
    assert repeated <= window
    assert len(window) <= max_inflight + recent


async def test_sigterm_drains_and_exits(
    kafka_brokers: str, gateway: FakeGateway, tmp_path: Path
) -> None:
    topic = unique("term")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("slow", topic)
    gateway.respond("slow", delay_s=1.0)
    health_port = free_port()
    log = tmp_path / "connector.log"
    process = start_connector(
        log,
        *common_arguments(kafka_brokers, gateway, health_port),
        "--group-id",
        unique("group"),
    )
    try:
        await wait_healthy(health_port, process, log)
        async with kafka_producer(kafka_brokers) as producer:
            await producer.send_and_wait(topic, b"in-flight")
        await wait_until(
            lambda: gateway.received("slow") != [],
            timeout_s=30,
            description="the record in flight",
        )
        process.send_signal(signal.SIGTERM)
        code = await wait_exit(process, timeout_s=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    output = log.read_text()
    assert code == 0, output
    assert "draining" in output
    assert "finished=1 abandoned=0" in output
    assert "kafka connector stopped" in output


async def test_second_signal_abandons_at_once(
    kafka_brokers: str, gateway: FakeGateway, tmp_path: Path
) -> None:
    topic = unique("abandon")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("stuck", topic)
    gateway.respond("stuck", delay_s=30.0)
    health_port = free_port()
    log = tmp_path / "connector.log"
    arguments = common_arguments(kafka_brokers, gateway, health_port)
    arguments[arguments.index("--drain-timeout-s") + 1] = "30"
    process = start_connector(log, *arguments, "--group-id", unique("group"))
    try:
        await wait_healthy(health_port, process, log)
        async with kafka_producer(kafka_brokers) as producer:
            await producer.send_and_wait(topic, b"never-ends")
        await wait_until(
            lambda: gateway.received("stuck") != [],
            timeout_s=30,
            description="the record in flight",
        )
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        code = await wait_exit(process, timeout_s=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    output = await asyncio.to_thread(log.read_text)
    assert code == 0, output
    assert "abandoning deliveries in flight" in output
    assert "kafka connector stopped" in output


async def test_dev_broker_runs_and_stops(gateway: FakeGateway, tmp_path: Path) -> None:
    topic = unique("dev")
    gateway.deploy("dev", topic)
    health_port = free_port()
    log = tmp_path / "connector.log"
    process = start_connector(
        log,
        "--dev-broker",
        "--gateway-url",
        gateway.url,
        "--health-port",
        str(health_port),
        "--rebuild-interval-s",
        "0.5",
    )
    try:
        await wait_healthy(health_port, process, log)
        address = _dev_broker_address(log.read_text())
        await create_topics(address, topic, partitions=1)
        async with kafka_producer(address) as producer:
            await producer.send_and_wait(topic, b"local")
        await wait_until(
            lambda: gateway.bodies("dev") == [b"local"],
            timeout_s=30,
            description="the record through the dev broker",
        )
        process.send_signal(signal.SIGTERM)
        code = await wait_exit(process, timeout_s=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert code == 0, log.read_text()
    host, port = address.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def _dev_broker_address(output: str) -> str:
    for line in output.splitlines():
        if "development broker started" in line:
            return line.split("address=")[1].split()[0]
    raise AssertionError("no 'development broker started' line:\n" + output)


def test_dev_broker_without_tansu_explains() -> None:
    result = run_connector_command(
        "--dev-broker", env={"CALF_TANSU_BIN": "/nonexistent/tansu"}
    )

    assert result.returncode == 2
    assert "Tansu broker cannot be used" in result.stderr
    assert "CALF_TANSU_BIN" in result.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["--brokers", "no-port"], "is not HOST:PORT", id="broker"),
        pytest.param(["--topics", "a b"], "not a Kafka topic name", id="topic"),
        pytest.param(["--ordering", "random"], "invalid choice", id="ordering"),
        pytest.param(
            ["--dead-letter-topic", "{partition}.dlq"],
            "only the '{topic}' placeholder",
            id="dead-letter",
        ),
        pytest.param(
            ["--tls-ca-file", "/nonexistent/ca.pem"], "does not exist", id="tls-file"
        ),
        pytest.param(
            ["--sasl-mechanism", "PLAIN"], "needs --sasl-username", id="sasl-user"
        ),
    ],
)
def test_invalid_settings_fail_fast(arguments: list[str], message: str) -> None:
    result = run_connector_command(*arguments, "--health-port", str(free_port()))

    assert result.returncode == 2
    assert message in result.stderr


def test_help_lists_settings() -> None:
    result = run_connector_command("--help")

    assert result.returncode == 0
    for flag in (
        "--brokers",
        "--topics",
        "--group-id",
        "--initial-offset",
        "--ordering",
        "--dead-letter-topic",
        "--reply-topic",
        "--sasl-password-file",
        "--tls-ca-file",
        "--dev-broker",
        "--max-inflight",
        "--async-invocation",
    ):
        assert flag in result.stdout
    assert "FAASHUB_BROKERS" in result.stdout
