"""The Kafka connector in front of a real hub: real gateway, provider, functions."""

import asyncio
import shlex
from pathlib import Path

import pytest

from tests.connectors.conftest import (
    create_topics,
    kafka_producer,
    unique,
    wait_until,
)
from tests.connectors.kafka.conftest import kafka_settings, running_connector
from tests.hub_support import faashub, start_hub, stop_hub

pytestmark = pytest.mark.timeout(120)


def deploy_recorder(gateway: str, name: str, topic: str, output: Path) -> None:
    """Deploy a classic function that appends its topic header and body to a file."""
    script = f'printf "%s %s\\n" "$Http_X_Topic" "$(cat)" >> {shlex.quote(str(output))}'
    result = faashub(
        "deploy",
        "--name",
        name,
        "--fprocess",
        f"sh -c {shlex.quote(script)}",
        "--annotation",
        f"topic={topic}",
        gateway=gateway,
    )
    assert result.returncode == 0, result.stderr.decode()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_hub_functions_receive_records(
    kafka_brokers: str, tmp_path: Path
) -> None:
    topic = unique("hub")
    await create_topics(kafka_brokers, topic, partitions=2)
    first_output, second_output = tmp_path / "first.txt", tmp_path / "second.txt"
    hub = await asyncio.to_thread(start_hub, tmp_path / "state")
    try:
        await asyncio.to_thread(deploy_recorder, hub.url, "first", topic, first_output)
        settings = kafka_settings(
            kafka_brokers,
            hub.url,
            group_id=unique("group"),
            gateway_secret_mount_path=str(hub.state_dir / "credentials"),
        )
        async with (
            running_connector(settings),
            kafka_producer(kafka_brokers) as producer,
        ):
            for body in (b"one", b"two"):
                await producer.send_and_wait(topic, body)
            await wait_until(
                lambda: len(lines(first_output)) == 2,
                timeout_s=30,
                description="two records at the first function",
            )

            await asyncio.to_thread(
                deploy_recorder, hub.url, "second", f"other, {topic}", second_output
            )
            # Two refreshes of the topic map, at 0.5 s each in these tests.
            await asyncio.sleep(1.2)
            await producer.send_and_wait(topic, b"three")
            await wait_until(
                lambda: (
                    len(lines(first_output)) == 3 and len(lines(second_output)) == 1
                ),
                timeout_s=30,
                description="the third record at both functions",
            )
    finally:
        await asyncio.to_thread(stop_hub, hub)

    assert sorted(lines(first_output)) == [
        f"{topic} one",
        f"{topic} three",
        f"{topic} two",
    ]
    assert lines(second_output) == [f"{topic} three"]


async def test_up_runs_connector_when_brokers_given(
    kafka_brokers: str, tmp_path: Path
) -> None:
    topic = unique("up")
    await create_topics(kafka_brokers, topic)
    output = tmp_path / "out.txt"
    hub = await asyncio.to_thread(
        start_hub,
        tmp_path / "state",
        extra_args=["--kafka-brokers", kafka_brokers],
    )
    try:
        await asyncio.to_thread(deploy_recorder, hub.url, "recorder", topic, output)
        async with kafka_producer(kafka_brokers) as producer:
            await producer.send_and_wait(topic, b"from-up")
            await wait_until(
                lambda: lines(output) == [f"{topic} from-up"],
                # Topic map refresh and the consumer-group join take seconds.
                timeout_s=60,
                description="the record at the function deployed after up",
            )
    finally:
        await asyncio.to_thread(stop_hub, hub)
