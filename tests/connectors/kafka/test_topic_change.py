"""A change of the subscribed topic set while records run, on Tansu."""

import asyncio
import logging

import pytest

from tests.connectors.conftest import (
    FakeGateway,
    committed_offsets,
    create_topics,
    kafka_producer,
    unique,
    wait_until,
    wait_until_async,
)
from tests.connectors.kafka.conftest import kafka_settings, running_connector

pytestmark = pytest.mark.timeout(60)


def source_lines(
    caplog: pytest.LogCaptureFixture, message: str
) -> list[logging.LogRecord]:
    """Return the source's log lines with this exact message."""
    return [
        record
        for record in caplog.records
        if record.name == "connectors.kafka.source" and record.getMessage() == message
    ]


async def test_topic_change_commits_running_record(
    kafka_brokers: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    first, second = unique("first"), unique("second")
    await create_topics(kafka_brokers, first, second, partitions=1)
    gateway.deploy("slow", first)
    gateway.respond("slow", delay_s=1.5)
    group = unique("group")
    settings = kafka_settings(kafka_brokers, gateway.url, group_id=group)
    bodies = [b"r0", b"r1", b"r2"]
    async with kafka_producer(kafka_brokers) as producer:
        for body in bodies:
            await producer.send(first, body)
        await producer.flush()

    async with running_connector(settings):
        await wait_until(
            lambda: gateway.bodies("slow") == [b"r0"], description="r0 running"
        )
        # A function on another topic changes the subscribed set while r0 runs.
        gateway.deploy("other", second)
        await wait_until(
            lambda: len(source_lines(caplog, "partitions assigned")) >= 2,
            description="the assignment after the change",
        )
        await wait_until(
            lambda: len(gateway.bodies("slow")) >= 3,
            timeout_s=30,
            description="every record",
        )
        await wait_until_async(
            lambda: _committed_is(kafka_brokers, group, first, {0: 3}),
            description="offset 3 committed",
        )
        await asyncio.sleep(1.0)

    # Each record ran once: r0 finished in the drain and its offset was
    # committed before the partitions went.
    assert gateway.bodies("slow") == bodies
    aiokafka_errors = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("aiokafka") and r.levelno >= logging.ERROR
    ]
    assert aiokafka_errors == []
    commit_warnings = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("kafka offset commit unavailable")
    ]
    assert commit_warnings == []
    revoked = [r.__dict__["ctx"] for r in source_lines(caplog, "partitions revoked")]
    assert revoked[0]["finished"] == 1
    assert revoked[0]["abandoned"] == 0


async def _committed_is(
    brokers: str, group: str, topic: str, expected: dict[int, int]
) -> bool:
    return await committed_offsets(brokers, group, topic) == expected
