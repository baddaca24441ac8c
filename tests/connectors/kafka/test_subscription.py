"""Topics the Kafka connector leaves out, and aiokafka's repeated errors, on Tansu."""

import asyncio
import logging

import pytest

from connectors.kafka.client_logs import AIOKAFKA_LOGGER
from tests.conftest import LOOPBACK, free_port
from tests.connectors.conftest import (
    FakeGateway,
    create_topics,
    kafka_producer,
    unique,
    wait_until,
)
from tests.connectors.kafka.conftest import kafka_settings, running_connector

pytestmark = pytest.mark.timeout(60)

CRON_TOPIC = "cron-function"


def invalid_name_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.getMessage().startswith("invalid Kafka topic name")
    ]


async def test_cron_and_invalid_topics_left_out(
    kafka_brokers: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    named = unique("named")
    await create_topics(kafka_brokers, named, CRON_TOPIC)
    gateway.deploy("scheduled", CRON_TOPIC)
    gateway.deploy("spaced", f"a b, {named}")
    settings = kafka_settings(kafka_brokers, gateway.url, group_id=unique("group"))

    async with running_connector(settings) as running:
        await wait_until(
            lambda: bool(invalid_name_lines(caplog)),
            description="the invalid-name warning",
        )
        async with kafka_producer(kafka_brokers) as producer:
            await producer.send_and_wait(CRON_TOPIC, b"not-a-tick")
            await producer.send_and_wait(named, b"by-name")
        await wait_until(
            lambda: gateway.bodies("spaced") == [b"by-name"],
            timeout_s=30,
            description="the record of the valid topic",
        )

        # A map change subscribes again: the same warning is not repeated,
        # but a new function that names the invalid topic gets its own.
        version = running.connector.topic_maps.version
        gateway.deploy("another", "a b")
        await asyncio.wait_for(
            running.connector.topic_maps.wait_for_change(version), 15
        )
        await wait_until(
            lambda: len(invalid_name_lines(caplog)) == 2,
            description="the warning for the second function",
        )
        await asyncio.sleep(1.0)

    assert gateway.bodies("scheduled") == []
    lines = invalid_name_lines(caplog)
    assert [line.__dict__["ctx"]["topic"] for line in lines] == ["a b", "a b"]
    assert [line.__dict__["ctx"]["function"] for line in lines] == [
        "spaced.openfaas-fn",
        "another.openfaas-fn",
    ]
    missing = [r for r in caplog.records if "topic not found" in r.getMessage()]
    assert missing == []
    subscriptions = [r for r in caplog.records if r.getMessage() == "subscribed"]
    for record in subscriptions:
        assert CRON_TOPIC not in record.__dict__["ctx"]["topics"].split(",")


async def test_explicit_cron_topic_is_reported(
    kafka_brokers: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    named = unique("listed")
    await create_topics(kafka_brokers, named)
    gateway.deploy("listed", named)
    settings = kafka_settings(
        kafka_brokers,
        gateway.url,
        group_id=unique("group"),
        topics=f"{named},{CRON_TOPIC}",
    )

    async with running_connector(settings):
        await wait_until(
            lambda: any(r.getMessage() == "subscribed" for r in caplog.records),
            description="the subscription",
        )

    reserved = [
        r for r in caplog.records if r.getMessage().startswith("topic reserved")
    ]
    assert len(reserved) == 1
    assert reserved[0].__dict__["ctx"]["topic"] == CRON_TOPIC


@pytest.mark.parametrize("explicit", [False, True], ids=["annotations", "listed"])
async def test_missing_topic_level_follows_source(
    kafka_brokers: str,
    gateway: FakeGateway,
    caplog: pytest.LogCaptureFixture,
    explicit: bool,
) -> None:
    caplog.set_level(logging.INFO)
    named = unique("present")
    absent = unique("sqs-queue")
    await create_topics(kafka_brokers, named)
    gateway.deploy("listed", f"{named},{absent}")
    overrides = {"topics": f"{named},{absent}"} if explicit else {}
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), **overrides
    )

    async with running_connector(settings):
        await wait_until(
            lambda: any(r.getMessage() == "subscribed" for r in caplog.records),
            description="the subscription",
        )

    [missing] = [r for r in caplog.records if "topic not found" in r.getMessage()]
    assert missing.__dict__["ctx"]["topic"] == absent
    # A topic from the annotations may be another connector's, such as an
    # SQS queue; only a --topics entry that does not exist is a warning.
    assert missing.levelno == (logging.WARNING if explicit else logging.INFO)


async def test_repeated_client_errors_limited(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    brokers = f"{LOOPBACK}:{free_port()}"
    gateway.deploy("unreached", unique("nowhere"))
    settings = kafka_settings(brokers, gateway.url, group_id=unique("group"))

    async with running_connector(settings, wait_ready=False):
        await wait_until(
            lambda: (
                sum(r.name == "connectors.kafka.client_logs" for r in caplog.records)
                >= 2
            ),
            timeout_s=20,
            description="two repeated aiokafka errors",
        )
        # Other aiokafka errors still reach the log.
        logging.getLogger(AIOKAFKA_LOGGER).error("an unrelated client error")

    client_errors = [
        r.getMessage()
        for r in caplog.records
        if r.name == AIOKAFKA_LOGGER and r.levelno >= logging.ERROR
    ]
    connect_errors = [m for m in client_errors if m.startswith("Unable connect to")]
    assert len(connect_errors) == 1
    assert brokers in connect_errors[0]
    assert "an unrelated client error" in client_errors

    # The filter goes with the source.
    caplog.clear()
    logging.getLogger(AIOKAFKA_LOGGER).error(
        'Unable connect to "%s:%s": %s', LOOPBACK, 1, "refused"
    )
    assert len(caplog.records) == 1
