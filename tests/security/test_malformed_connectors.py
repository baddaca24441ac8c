"""Hostile records on a Kafka topic and hostile messages on an SQS queue.

Header values that are not valid UTF-8 and header names with bytes that HTTP
forbids are passed on, encoded, because the function can decode them. A
Kafka header name that is not valid UTF-8, a header too large for the
gateway and a body over the connector's `max_body_bytes` are dead-lettered
with the status and a reason. In each case a normal message sent after them
must still be delivered.
"""

import base64
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

# The broker and fake gateway fixtures are imported, not redefined, so this
# module uses the same session-wide Tansu broker and moto server.
from tests.connectors.conftest import (
    FakeGateway,
    create_topics,
    kafka_brokers,  # noqa: F401
    kafka_producer,
    read_topic,
    unique,
    wait_until,
)
from tests.connectors.conftest import gateway as fake_gateway  # noqa: F401
from tests.connectors.kafka.conftest import kafka_settings, running_connector
from tests.connectors.sqs.conftest import (
    create_queue,
    receive_all,
    send_messages,
    sqs_endpoint,  # noqa: F401
    sqs_settings,
)
from tests.connectors.sqs.conftest import running_connector as running_sqs_connector

MAX_BODY_BYTES = 1000
# Larger than any HTTP server's default header limit (8 KiB in aiohttp, which
# the fake gateway runs, and 16 KiB in all on faashub's gateway).
HUGE_HEADER_VALUE = "v" * 70_000
INVALID_UTF_8_NAME = b"name-\xff\xfe"


class _InvalidUtf8Name(str):
    """A header name whose UTF-8 encoding is replaced by invalid bytes."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return INVALID_UTF_8_NAME


async def send_invalid_header_name(
    producer: AIOKafkaProducer, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write a record whose header name is not valid UTF-8 to partition 0.

    aiokafka encodes header names itself, so the record is built by its pure
    Python batch builder, which takes the name's bytes from `encode`.
    """
    with monkeypatch.context() as patch:
        patch.setattr(
            message_accumulator,
            "DefaultRecordBatchBuilder",
            _DefaultRecordBatchBuilderPy,
        )
        batch = producer.create_batch()
    batch.append(
        key=None,
        value=b"bad-name-bytes",
        timestamp=None,
        headers=[(_InvalidUtf8Name("x"), b"v")],
    )
    batch.close()
    await (await producer.send_batch(batch, topic, partition=0))


@pytest.mark.timeout(40)
async def test_kafka_hostile_records(
    kafka_brokers: str,  # noqa: F811
    fake_gateway: FakeGateway,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = unique("hostile")
    await create_topics(kafka_brokers, topic, partitions=1)
    fake_gateway.deploy("sink", topic)
    settings = kafka_settings(
        kafka_brokers,
        fake_gateway.url,
        group_id=unique("group"),
        max_body_bytes=MAX_BODY_BYTES,
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send_and_wait(
            topic, b"bad-utf-8", headers=[("trace", b"\xc3\x28\xff")]
        )
        await producer.send_and_wait(
            topic, b"bad-name", headers=[("a\r\nInjected: 1\r\nb:c", b"x")]
        )
        await send_invalid_header_name(producer, topic, monkeypatch)
        await producer.send_and_wait(
            topic, b"huge-header", headers=[("big", HUGE_HEADER_VALUE.encode())]
        )
        await producer.send_and_wait(topic, b"x" * (MAX_BODY_BYTES + 1))
        await producer.send_and_wait(topic, b"normal")

    async with running_connector(settings):
        await wait_until(
            lambda: b"normal" in fake_gateway.bodies("sink"), description="normal"
        )
        letters = await read_topic(kafka_brokers, f"{topic}.dlq", count=3)

    assert fake_gateway.bodies("sink") == [b"bad-utf-8", b"bad-name", b"normal"]
    bad_utf_8, bad_name, _ = fake_gateway.received("sink")
    assert bad_utf_8.header("X-Kafka-trace") == base64.b64encode(
        b"\xc3\x28\xff"
    ).decode("ascii")
    assert bad_utf_8.header("X-Kafka-trace-Enc") == "b64"
    assert bad_name.header("X-Kafka-a%0D%0AInjected%3A%201%0D%0Ab%3Ac") == "x"
    assert bad_name.header("Injected") is None

    letters.sort(key=lambda letter: int(dict(letter.headers)["faashub-source-offset"]))
    undecodable, huge, too_big = (dict(letter.headers) for letter in letters)
    assert undecodable["faashub-source-offset"] == b"2"
    assert undecodable["faashub-status"] == b"400"
    assert undecodable["faashub-function"] == b"sink.openfaas-fn"
    assert b"could not be decoded" in undecodable["faashub-error"]
    assert letters[0].value == b""
    assert huge["faashub-source-offset"] == b"3"
    assert huge["big"] == HUGE_HEADER_VALUE.encode()
    assert huge["faashub-status"] == b"400"
    assert b"HTTP 400" in huge["faashub-error"]
    assert too_big["faashub-source-offset"] == b"4"
    assert too_big["faashub-status"] == b"413"
    assert b"max_body_bytes" in too_big["faashub-error"]


@pytest.mark.timeout(40)
async def test_sqs_hostile_messages(
    sqs_endpoint: str,  # noqa: F811
    fake_gateway: FakeGateway,  # noqa: F811
) -> None:
    dead = await create_queue(sqs_endpoint, "hostile-dlq")
    url = await create_queue(sqs_endpoint, "hostile")
    fake_gateway.deploy("sink", url.rsplit("/", 1)[-1])
    settings = sqs_settings(
        sqs_endpoint,
        fake_gateway.url,
        [url],
        dead_letter_queue=dead,
        max_body_bytes=MAX_BODY_BYTES,
        max_inflight=1,
    )
    odd: dict[str, Any] = {
        "odd.Name-_9": {"DataType": "String", "StringValue": "a\r\nInjected: 1"},
        "spaced": {"DataType": "String", "StringValue": " padded\t"},
        "unicode": {"DataType": "String.custom", "StringValue": "héllo ✓ 𝄞"},
    }
    huge: dict[str, Any] = {
        "big": {"DataType": "String", "StringValue": HUGE_HEADER_VALUE}
    }

    async with running_sqs_connector(settings):
        await send_messages(sqs_endpoint, url, [b"odd"], attributes=odd)
        await send_messages(sqs_endpoint, url, [b"huge-attribute"], attributes=huge)
        await send_messages(sqs_endpoint, url, [b"x" * (MAX_BODY_BYTES + 1)])
        await send_messages(sqs_endpoint, url, [b"normal"])
        await wait_until(
            lambda: b"normal" in fake_gateway.bodies("sink"), description="normal"
        )
        copies = await receive_all(sqs_endpoint, dead, count=2)

    assert sorted(fake_gateway.bodies("sink")) == [b"normal", b"odd"]
    [odd_call] = [call for call in fake_gateway.received("sink") if call.body == b"odd"]
    assert odd_call.header("X-SQS-Attr-odd.Name-_9") == base64.b64encode(
        b"a\r\nInjected: 1"
    ).decode("ascii")
    assert odd_call.header("X-SQS-Attr-odd.Name-_9-Enc") == "b64"
    assert odd_call.header("Injected") is None
    assert odd_call.header("X-SQS-Attr-spaced-Enc") == "b64"
    assert odd_call.header("X-SQS-Attr-unicode") == "héllo ✓ 𝄞"

    by_body = {copy["Body"][:20]: copy["MessageAttributes"] for copy in copies}
    huge_copy = by_body["huge-attribute"]
    assert huge_copy["faashub-status"]["StringValue"] == "400"
    assert "HTTP 400" in huge_copy["faashub-error"]["StringValue"]
    assert huge_copy["big"]["StringValue"] == HUGE_HEADER_VALUE
    too_big = by_body["x" * 20]
    assert too_big["faashub-status"]["StringValue"] == "413"
    assert "max_body_bytes" in too_big["faashub-error"]["StringValue"]
