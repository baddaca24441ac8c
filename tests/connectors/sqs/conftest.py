"""Fixtures for the SQS connector tests: a moto server and a running connector.

`moto_server` from moto[server] runs once per test session on a free
loopback port and keeps its queues in memory. Every test creates queues with
names of its own, so tests do not see each other's messages. The AWS
credentials and region are fake values that only moto receives.
"""

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from connectors.sqs.delivery import SqsConnector
from connectors.sqs.source import SqsSource
from faashub.connector_settings import SqsConnectorSettings
from tests.conftest import LOOPBACK, free_port, stop_process
from tests.connectors.conftest import settings_values, unique, wait_until

MOTO_START_TIMEOUT_S = 20.0

FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def moto_server_command() -> str:
    """Return the moto_server script of the running interpreter's environment."""
    beside_python = Path(sys.executable).with_name("moto_server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("moto_server")
    if found is None:
        pytest.fail("moto_server not found: install the test extra, moto[server]")
    return found


@contextlib.contextmanager
def moto_server(environment: dict[str, str] | None = None) -> Iterator[str]:
    """Run a moto server on a free port for the block and yield its URL."""
    port = free_port()
    process = subprocess.Popen(
        [moto_server_command(), "-H", LOOPBACK, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(environment or {})},
    )
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT_S
        while True:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"moto_server did not listen on port {port}"
                    ) from None
                time.sleep(0.05)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """URL of a moto SQS server shared by the session, with fake credentials set."""
    saved = {name: os.environ.get(name) for name in FAKE_AWS_ENVIRONMENT}
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    try:
        with moto_server() as url:
            yield url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def sqs_client(endpoint: str) -> AsyncIterator[Any]:
    """An SQS client of the moto server, closed after the block."""
    session = aioboto3.Session()
    async with session.client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1"
    ) as client:
        yield client


async def create_queue(
    endpoint: str,
    prefix: str,
    *,
    fifo: bool = False,
    redrive_to: str = "",
    max_receive_count: int = 2,
) -> str:
    """Create a queue no other test uses and return its URL.

    With `redrive_to` (a queue URL), the queue gets a redrive policy that
    moves a message there after `max_receive_count` receives.
    """
    name = unique(prefix) + (".fifo" if fifo else "")
    attributes: dict[str, str] = {}
    if fifo:
        attributes.update(FifoQueue="true", ContentBasedDeduplication="true")
    async with sqs_client(endpoint) as client:
        response = await client.create_queue(QueueName=name, Attributes=attributes)
        url: str = response["QueueUrl"]
        if redrive_to:
            target = await client.get_queue_attributes(
                QueueUrl=redrive_to, AttributeNames=["QueueArn"]
            )
            policy = (
                f'{{"deadLetterTargetArn": "{target["Attributes"]["QueueArn"]}", '
                f'"maxReceiveCount": "{max_receive_count}"}}'
            )
            await client.set_queue_attributes(
                QueueUrl=url, Attributes={"RedrivePolicy": policy}
            )
    return url


async def send_messages(
    endpoint: str,
    queue_url: str,
    bodies: list[bytes],
    *,
    groups: list[str] | None = None,
    attributes: dict[str, Any] | None = None,
) -> None:
    """Send one message per body, in order; FIFO messages get `groups`."""
    async with sqs_client(endpoint) as client:
        for index, body in enumerate(bodies):
            request: dict[str, Any] = {
                "QueueUrl": queue_url,
                "MessageBody": body.decode(),
            }
            if groups is not None:
                request["MessageGroupId"] = groups[index]
            if attributes:
                request["MessageAttributes"] = attributes
            await client.send_message(**request)


async def receive_all(
    endpoint: str, queue_url: str, *, count: int, timeout_s: float = 15.0
) -> list[dict[str, Any]]:
    """Receive `count` messages of a queue with their attributes, or fail."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    async with sqs_client(endpoint) as client:
        while len(messages) < count:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"received {len(messages)} of {count} messages from "
                    f"{queue_url} within {timeout_s:g} s"
                )
            response = await client.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages.extend(response.get("Messages", []))
    return messages


async def queue_counts(endpoint: str, queue_url: str) -> tuple[int, int]:
    """Return the messages of a queue that are visible and in flight (hidden)."""
    async with sqs_client(endpoint) as client:
        response = await client.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
    attributes = response["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def sqs_settings(
    endpoint: str, gateway_url: str, queues: list[str], **overrides: Any
) -> SqsConnectorSettings:
    """Return SQS connector settings for a test: short polls, waits and timeouts."""
    values = settings_values(
        endpoint_url=endpoint,
        region="us-east-1",
        gateway_url=gateway_url,
        sqs_queues=",".join(queues),
        wait_time_s=1,
        visibility_timeout_s=4,
        # SQS takes whole seconds, so these retries wait 1 s each.
        retry_min_wait_s=0.5,
        retry_max_wait_s=1.0,
    )
    for name in ("commit_interval_s", "session_timeout_s"):
        values.pop(name, None)
    values.update(overrides)
    return SqsConnectorSettings(**values)


@dataclass
class RunningConnector:
    settings: SqsConnectorSettings
    connector: SqsConnector
    source: SqsSource
    task: "asyncio.Task[None]"


@contextlib.asynccontextmanager
async def running_connector(
    settings: SqsConnectorSettings, *, wait_ready: bool = True
) -> AsyncIterator[RunningConnector]:
    """Run an SQS connector until the block ends, then stop it and wait.

    With `wait_ready`, the block starts once every queue is polled.
    """
    connector = SqsConnector(settings)
    await connector.start()
    source = SqsSource(settings)
    task = asyncio.create_task(source.run(connector))
    running = RunningConnector(settings, connector, source, task)
    try:
        if wait_ready:
            await wait_until(
                lambda: source.state == "ready" or task.done(),
                description="the connector to poll",
            )
        if task.done():
            task.result()
        yield running
    finally:
        source.stop()
        try:
            await asyncio.wait_for(task, timeout=settings.drain_timeout_s + 15)
        finally:
            await connector.close()


def queue_name(url: str) -> str:
    """Return the queue name at the end of a queue URL."""
    return url.rsplit("/", 1)[-1]
