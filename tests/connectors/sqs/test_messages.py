"""Headers of an SQS message, dead-letter attributes and queue settings, without SQS."""

import base64
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.core.invoker import InvocationResult
from connectors.sqs.dead_letters import dead_letter_request
from connectors.sqs.delivery import OutcomeMemory, Outcomes, SqsConnector
from connectors.sqs.messages import function_message, received_message
from connectors.sqs.queues import Queue
from faashub.connector_settings import SqsConnectorSettings, sqs_queue_list
from faashub.names import FunctionRef
from tests.connectors.sqs.conftest import sqs_settings

QUEUE_URL = "http://127.0.0.1:9324/123456789012/orders"


def raw_message(**attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "MessageId": "m-1",
        "ReceiptHandle": "handle",
        "Body": "héllo",
        "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1700"},
        "MessageAttributes": attributes,
    }


def test_headers_carry_message_metadata() -> None:
    received = received_message(
        raw_message(), queue_url=QUEUE_URL, queue_name="orders", now_s=0.0
    )

    message = function_message(received)

    headers = dict(message.headers)
    assert message.topic == "orders"
    assert message.body == "héllo".encode()
    assert headers["X-SQS-Message-ID"] == "m-1"
    assert headers["X-SQS-Queue-URL"] == QUEUE_URL
    assert headers["X-SQS-Receive-Count"] == "3"
    assert headers["X-SQS-Sent-Timestamp"] == "1700"
    assert "X-SQS-Message-Group-ID" not in headers
    assert message.identity == f"sqs/{QUEUE_URL}/m-1"


@pytest.mark.parametrize(
    ("attribute", "expected_value", "encoded"),
    [
        pytest.param(
            {"DataType": "String", "StringValue": "plain"}, "plain", False, id="text"
        ),
        pytest.param(
            {"DataType": "Number", "StringValue": "-1.5"}, "-1.5", False, id="number"
        ),
        pytest.param(
            {"DataType": "String", "StringValue": "ünïcode"},
            "ünïcode",
            False,
            id="utf8",
        ),
        pytest.param(
            {"DataType": "String", "StringValue": "two\nlines"},
            base64.b64encode(b"two\nlines").decode(),
            True,
            id="newline",
        ),
        pytest.param(
            {"DataType": "String", "StringValue": " padded"},
            base64.b64encode(b" padded").decode(),
            True,
            id="space-at-start",
        ),
        pytest.param(
            {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
            "AAE=",
            True,
            id="binary",
        ),
    ],
)
def test_attribute_header_encoding(
    attribute: dict[str, object], expected_value: str, encoded: bool
) -> None:
    received = received_message(
        raw_message(note=attribute), queue_url=QUEUE_URL, queue_name="orders", now_s=0
    )

    headers = dict(function_message(received).headers)

    assert headers["X-SQS-Attr-note"] == expected_value
    assert ("X-SQS-Attr-note-Enc" in headers) is encoded
    if encoded:
        assert headers["X-SQS-Attr-note-Enc"] == "b64"


def failed_result(status: int = 500) -> InvocationResult:
    return InvocationResult(
        function=FunctionRef("broken", "openfaas-fn"),
        topic="orders",
        call_id="c-1",
        status=status,
        attempts=1,
        duration_s=0.1,
        error="The gateway returned HTTP 500 for broken.openfaas-fn.",
    )


def test_dead_letter_keeps_attributes_within_limit() -> None:
    originals = {
        f"a{number}": {"DataType": "String", "StringValue": str(number)}
        for number in range(6)
    }
    received = received_message(
        raw_message(**originals), queue_url=QUEUE_URL, queue_name="orders", now_s=0
    )
    queue = Queue(url="http://dlq", name="dlq", fifo=False, max_receive_count=None)

    request = dead_letter_request(received, failed_result(), queue=queue)

    attributes = request["MessageAttributes"]
    assert len(attributes) == 10
    assert attributes["faashub-function"]["StringValue"] == "broken.openfaas-fn"
    assert attributes["faashub-status"] == {"DataType": "Number", "StringValue": "500"}
    assert attributes["faashub-attempts"]["StringValue"] == "3"
    assert attributes["faashub-attributes-omitted"]["StringValue"] == "3"
    assert [name for name in attributes if name.startswith("a")] == ["a0", "a1", "a2"]
    assert "MessageGroupId" not in request


def test_dead_letter_to_fifo_queue_is_deduplicated() -> None:
    raw = raw_message()
    raw["Attributes"] = {"ApproximateReceiveCount": "1", "MessageGroupId": "g"}
    received = received_message(
        raw, queue_url=QUEUE_URL, queue_name="orders.fifo", now_s=0
    )
    queue = Queue(
        url="http://dlq.fifo", name="dlq.fifo", fifo=True, max_receive_count=1
    )

    first = dead_letter_request(received, failed_result(), queue=queue)
    again = dead_letter_request(received, failed_result(), queue=queue)

    assert first["MessageGroupId"] == "g"
    assert first["MessageDeduplicationId"] == again["MessageDeduplicationId"]


def test_outcome_memory_forgets_oldest() -> None:
    memory = OutcomeMemory(max_messages=2)
    kept = {message_id: Outcomes() for message_id in ("m1", "m2", "m3")}
    for message_id, outcomes in kept.items():
        memory.keep(QUEUE_URL, message_id, outcomes)

    assert len(memory) == 2
    assert memory.get(QUEUE_URL, "m1") is not kept["m1"]
    assert memory.get(QUEUE_URL, "m2") is kept["m2"]
    assert memory.get(QUEUE_URL, "m3") is kept["m3"]
    memory.forget(QUEUE_URL, "m3")
    assert len(memory) == 1


def test_outcomes_pending_skips_final_functions() -> None:
    done, failed, new = (FunctionRef(name, "ns") for name in ("a", "b", "c"))
    outcomes = Outcomes(succeeded={done}, failed={failed: failed_result()})

    assert outcomes.pending((done, failed, new)) == (new,)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"sqs_queues": "bad name"}, id="queue-name"),
        pytest.param({"sqs_queues": "https://example.com/1/bad name"}, id="queue-url"),
        pytest.param({"dead_letter_queue": "a" * 81}, id="long-dlq-name"),
        pytest.param({"batch_size": 11}, id="batch-size"),
        pytest.param({"wait_time_s": 21}, id="wait-time"),
        pytest.param({"visibility_timeout_s": 43201}, id="visibility"),
        pytest.param({"retry_max_wait_s": 43201}, id="retry-wait"),
    ],
)
def test_invalid_settings_rejected(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SqsConnectorSettings(**values)


def test_queue_entries_accepted() -> None:
    settings = SqsConnectorSettings(
        sqs_queues="orders, https://sqs.eu-west-1.amazonaws.com/1/jobs.fifo, orders"
    )

    assert sqs_queue_list(settings.sqs_queues) == [
        "orders",
        "https://sqs.eu-west-1.amazonaws.com/1/jobs.fifo",
    ]


def test_connector_serves_its_queues() -> None:
    # No server is contacted: the connector only reads its settings here.
    settings = sqs_settings(
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        ["orders", "http://127.0.0.1:1/000000000000/payments"],
    )
    serves = SqsConnector(settings).topic_maps.serves

    assert serves("orders")
    assert serves("payments")
    assert serves("http://127.0.0.1:1/000000000000/payments")
    assert serves("pay*")
    assert not serves("audit")
