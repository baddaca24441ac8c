"""W3C Trace Context from Kafka record headers and SQS attributes to the call."""

import pytest
from aiokafka.structs import ConsumerRecord

from connectors.kafka.records import record_message
from connectors.sqs.messages import ReceivedMessage, function_message
from tests.connectors.conftest import (
    FakeGateway,
    create_topics,
    kafka_producer,
    unique,
    wait_until,
)
from tests.connectors.kafka.conftest import kafka_settings, running_connector

pytestmark = pytest.mark.timeout(60)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACESTATE = "vendor=opaque"


def record(headers: list[tuple[str, bytes]]) -> "ConsumerRecord[bytes, bytes]":
    return ConsumerRecord(
        topic="orders",
        partition=0,
        offset=5,
        timestamp=1,
        timestamp_type=0,
        key=None,
        value=b"body",
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=4,
        headers=headers,
    )


def test_record_trace_headers_passed_as_they_are() -> None:
    message = record_message(
        record(
            [
                ("TraceParent", TRACEPARENT.encode()),
                ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"),
                ("tracestate", TRACESTATE.encode()),
                ("tracestate", b"\x00binary"),
            ]
        ),
        group_id="group",
    )

    trace = [(name, value) for name, value in message.headers if "trace" in name]
    assert ("traceparent", TRACEPARENT) in trace
    assert ("tracestate", TRACESTATE) in trace
    # Only the first traceparent, and no binary tracestate, go out plain.
    assert [name for name, _ in trace].count("traceparent") == 1
    assert [name for name, _ in trace].count("tracestate") == 1
    # The X-Kafka-* copies stay, as for every record header.
    assert ("X-Kafka-TraceParent", TRACEPARENT) in message.headers


def test_sqs_trace_attributes_passed_as_they_are() -> None:
    received = ReceivedMessage(
        queue_url="http://127.0.0.1:1/queue/jobs",
        queue_name="jobs",
        message_id="m-1",
        receipt_handle="r",
        body="body",
        receive_count=1,
        message_attributes={
            "traceparent": {"DataType": "String", "StringValue": TRACEPARENT},
            "tracestate": {"DataType": "Binary", "BinaryValue": b"x"},
        },
    )

    message = function_message(received)

    assert ("traceparent", TRACEPARENT) in message.headers
    assert not [name for name, _ in message.headers if name == "tracestate"]
    assert ("X-SQS-Attr-traceparent", TRACEPARENT) in message.headers


async def test_record_traceparent_reaches_function(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("traced")
    await create_topics(kafka_brokers, topic)
    gateway.deploy("traced", topic)
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send(
            topic,
            b"event",
            headers=[
                ("traceparent", TRACEPARENT.encode()),
                ("tracestate", TRACESTATE.encode()),
            ],
        )
        await producer.flush()
    settings = kafka_settings(kafka_brokers, gateway.url, group_id=unique("group"))

    async with running_connector(settings):
        await wait_until(
            lambda: len(gateway.received("traced")) >= 1, description="one call"
        )

    [call] = gateway.received("traced")
    assert call.header("traceparent") == TRACEPARENT
    assert call.header("tracestate") == TRACESTATE
