"""Dead letters and replies written by a real producer to Tansu."""

import logging

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from connectors.core.invoker import InvocationResult
from connectors.core.metrics import ConnectorMetrics
from connectors.kafka.publisher import RecordPublisher
from faashub.names import FunctionRef
from tests.connectors.conftest import create_topics, read_topic, unique

pytestmark = pytest.mark.timeout(30)


def failed_record(topic: str, value: bytes) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=3,
        timestamp=1_700_000_000_000,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=(("trace", b"t"),),
    )


def failure(topic: str) -> InvocationResult:
    return InvocationResult(
        function=FunctionRef("f", "openfaas-fn"),
        topic=topic,
        call_id="call-1",
        status=500,
        attempts=5,
        duration_s=1.0,
        error="The gateway returned HTTP 500 for f.openfaas-fn.",
    )


async def test_oversized_dead_letter_drops_value(
    kafka_brokers: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = unique("huge")
    await create_topics(kafka_brokers, f"{topic}.dlq", partitions=1)
    # A small request limit makes the producer reject the full dead letter.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_brokers, max_request_size=600)
    await producer.start()
    metrics = ConnectorMetrics("kafka")
    publisher = RecordPublisher(
        producer,
        dead_letter_topic="{topic}.dlq",
        reply_topic="",
        reply_topic_header="",
        metrics=metrics,
    )
    try:
        await publisher.dead_letter(failed_record(topic, b"v" * 1000), failure(topic))
    finally:
        await producer.stop()

    [letter] = await read_topic(kafka_brokers, f"{topic}.dlq", count=1)
    headers = dict(letter.headers)
    assert letter.value is None
    assert letter.key == b"k"
    assert headers["faashub-value-omitted"] == b"1000 bytes"
    assert headers["trace"] == b"t"
    assert headers["faashub-status"] == b"500"
    assert any("without its value" in r.getMessage() for r in caplog.records)
    line = f'dead_lettered_total{{connector="kafka",topic="{topic}"}} 1.0'
    assert line in metrics.render().decode()


async def test_disabled_dead_letters_log_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = RecordPublisher(
        None,
        dead_letter_topic="",
        reply_topic="",
        reply_topic_header="",
        metrics=ConnectorMetrics("kafka"),
    )

    await publisher.dead_letter(failed_record("orders", b"v"), failure("orders"))

    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "no dead-letter topic is set" in line.getMessage()
    assert line.__dict__["ctx"]["offset"] == 3
    assert "HTTP 500" in line.__dict__["ctx"]["error"]


async def test_reply_needs_topic_or_header(kafka_brokers: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_brokers)
    await producer.start()
    try:
        by_header = RecordPublisher(
            producer,
            dead_letter_topic="",
            reply_topic="",
            reply_topic_header="reply-topic",
            metrics=ConnectorMetrics("kafka"),
        )
        configured = RecordPublisher(
            producer,
            dead_letter_topic="",
            reply_topic="replies",
            reply_topic_header="",
            metrics=ConnectorMetrics("kafka"),
        )
        without_producer = RecordPublisher(
            None,
            dead_letter_topic="",
            reply_topic="replies",
            reply_topic_header="",
            metrics=ConnectorMetrics("kafka"),
        )
        with_headers = failed_record("orders", b"v")
        bare = failed_record("orders", b"v")
        bare.headers = ()

        assert by_header.may_reply(with_headers)
        assert not by_header.may_reply(bare)
        assert configured.may_reply(bare)
        assert not without_producer.may_reply(bare)
    finally:
        await producer.stop()
