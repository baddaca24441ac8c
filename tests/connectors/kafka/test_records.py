"""Record headers, offset tracking and topic selection, without a broker."""

import base64
import re

import pytest
from aiokafka.structs import ConsumerRecord

from connectors.core.invoker import call_id_for
from connectors.core.runner import ConnectorService
from connectors.kafka import server as kafka_server
from connectors.kafka.offsets import OffsetTracker
from connectors.kafka.publisher import dead_letter_matcher, dead_letter_topic_for
from connectors.kafka.records import (
    header_text,
    http_header_name,
    record_identity,
    record_message,
)
from connectors.kafka.subscription import (
    is_valid_topic_name,
    select_topics,
    served_entries,
)
from faashub.cli import up_workers
from faashub.names import FunctionRef
from tests.connectors.kafka.conftest import kafka_settings


def make_record(
    *,
    key: bytes | None = b"k1",
    value: bytes | None = b"v",
    headers: tuple[tuple[str, bytes], ...] = (),
    offset: int = 7,
    timestamp: int = 1_700_000_000_000,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="orders",
        partition=2,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers,
    )


def header_pairs(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, str]]:
    return record_message(record, group_id="g").headers


def test_metadata_headers() -> None:
    message = record_message(make_record(), group_id="g")

    assert message.topic == "orders"
    assert message.body == b"v"
    assert message.headers == [
        ("X-Kafka-Partition", "2"),
        ("X-Kafka-Offset", "7"),
        ("X-Kafka-Timestamp", "1700000000000"),
        ("X-Kafka-Key", "k1"),
    ]
    assert message.context == {"partition": 2, "offset": 7}
    assert message.identity == "kafka/g/orders/2/7/1700000000000"


def test_binary_key_is_base64() -> None:
    key = b"\x00\xffkey"

    pairs = header_pairs(make_record(key=key))

    assert ("X-Kafka-Key", base64.b64encode(key).decode()) in pairs
    assert ("X-Kafka-Key-Enc", "b64") in pairs


def test_missing_key_and_value() -> None:
    message = record_message(make_record(key=None, value=None), group_id="g")

    assert message.body == b""
    assert all(name != "X-Kafka-Key" for name, _ in message.headers)


def test_empty_key_is_sent_empty() -> None:
    assert ("X-Kafka-Key", "") in header_pairs(make_record(key=b""))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(b"plain", "plain", id="ascii"),
        pytest.param(b"key-17_~!{}", "key-17_~!{}", id="ascii-punctuation"),
        pytest.param("héllo ✓".encode(), "héllo ✓", id="utf-8"),
        pytest.param(b"a b\tc", "a b\tc", id="inner-space-and-tab"),
        pytest.param(b"", "", id="empty"),
        pytest.param(b"line\nbreak", None, id="newline"),
        pytest.param(b"cr\rhere", None, id="carriage-return"),
        pytest.param(b"nul\x00", None, id="nul"),
        pytest.param(b" padded", None, id="leading-space"),
        pytest.param(b"padded ", None, id="trailing-space"),
        pytest.param(b"\xff\xfe", None, id="not-utf-8"),
        pytest.param(b"del\x7f", None, id="delete"),
    ],
)
def test_header_value_text(value: bytes, expected: str | None) -> None:
    assert header_text(value) == expected


def test_record_headers_are_encoded_not_dropped() -> None:
    headers = (
        ("trace", b"abc"),
        ("bad value", b"two\nlines"),
        ("Partition", b"forged"),
        ("trace", b"second"),
        ("ünïcode", b"x"),
    )

    pairs = header_pairs(make_record(headers=headers))

    assert ("X-Kafka-trace", "abc") in pairs
    assert ("X-Kafka-trace", "second") in pairs
    encoded = base64.b64encode(b"two\nlines").decode()
    assert ("X-Kafka-bad%20value", encoded) in pairs
    assert ("X-Kafka-bad%20value-Enc", "b64") in pairs
    assert ("X-Kafka-Header-Partition", "forged") in pairs
    assert [value for name, value in pairs if name == "X-Kafka-Partition"] == ["2"]
    assert ("X-Kafka-%C3%BCn%C3%AFcode", "x") in pairs


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("trace-id", "X-Kafka-trace-id", id="token"),
        pytest.param("a:b", "X-Kafka-a%3Ab", id="colon"),
        pytest.param("100%", "X-Kafka-100%25", id="percent"),
        pytest.param("offset", "X-Kafka-Header-offset", id="reserved-lowercase"),
        pytest.param("Key-Enc", "X-Kafka-Header-Key-Enc", id="reserved-encoding"),
    ],
)
def test_header_names(name: str, expected: str) -> None:
    assert http_header_name(name) == expected


def test_identity_changes_with_timestamp() -> None:
    first = record_identity(make_record(timestamp=1), group_id="g")
    recreated = record_identity(make_record(timestamp=2), group_id="g")

    assert first != recreated


def test_redelivered_record_keeps_call_id() -> None:
    function = FunctionRef("a", "openfaas-fn")
    first = record_message(make_record(), group_id="g")
    redelivered = record_message(make_record(), group_id="g")
    other_group = record_message(make_record(), group_id="h")
    next_record = record_message(make_record(offset=8), group_id="g")

    call_id = call_id_for(first.identity, function)
    assert call_id_for(redelivered.identity, function) == call_id
    assert call_id_for(other_group.identity, function) != call_id
    assert call_id_for(next_record.identity, function) != call_id


def test_offsets_commit_below_first_pending() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.add(offset)

    assert tracker.committable() is None
    tracker.finish(12)
    assert tracker.committable() is None
    tracker.finish(10)
    assert tracker.committable() == 11
    tracker.finish(11)
    assert tracker.committable() == 13
    assert tracker.pending == 1
    tracker.finish(13)
    assert tracker.committable() == 14
    assert tracker.pending == 0


def test_offsets_with_gaps() -> None:
    tracker = OffsetTracker()
    tracker.add(5)
    tracker.add(9)
    tracker.finish(5)

    assert tracker.committable() == 9


def test_offsets_must_increase() -> None:
    tracker = OffsetTracker()
    tracker.add(5)

    with pytest.raises(ValueError, match="must increase"):
        tracker.add(5)


@pytest.mark.parametrize(
    ("pattern", "topic", "dead_letter", "is_dead_letter"),
    [
        pytest.param("{topic}.dlq", "orders", "orders.dlq", True, id="suffix"),
        pytest.param("dlq-{topic}", "orders", "dlq-orders", True, id="prefix"),
        pytest.param("dead-letters", "orders", "dead-letters", True, id="fixed"),
        pytest.param("{topic}.dlq", "orders", "orders.dlqx", False, id="other"),
    ],
)
def test_dead_letter_names(
    pattern: str, topic: str, dead_letter: str, is_dead_letter: bool
) -> None:
    matcher = dead_letter_matcher(pattern)
    assert matcher is not None
    if is_dead_letter:
        assert dead_letter_topic_for(pattern, topic) == dead_letter
    assert bool(matcher.match(dead_letter)) is is_dead_letter


def test_selection_by_name_and_pattern() -> None:
    selection = select_topics(
        ["payments", "orders.*", "audit"],
        [
            "payments",
            "orders.created",
            "orders.paid",
            "orders.created.dlq",
            "other",
            "__consumer_offsets",
            "replies",
        ],
        dead_letter_topics=re.compile(r"(?:.+)\.dlq\Z"),
        reply_topic="replies",
    )

    assert selection.subscribed == {"payments", "orders.created", "orders.paid"}
    assert selection.missing == {"audit"}


def test_selection_keeps_named_dead_letter_topic() -> None:
    selection = select_topics(
        ["orders.dlq", "*"],
        ["orders", "orders.dlq", "__consumer_offsets"],
        dead_letter_topics=re.compile(r"(?:.+)\.dlq\Z"),
    )

    assert selection.subscribed == {"orders", "orders.dlq"}


def test_selection_leaves_out_cron_topic() -> None:
    selection = select_topics(
        ["cron-function", "cron*"],
        ["cron-function", "cron-jobs"],
        dead_letter_topics=None,
    )

    assert selection.subscribed == {"cron-jobs"}
    assert selection.reserved == {"cron-function"}
    assert selection.missing == frozenset()


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("orders", True, id="letters"),
        pytest.param("Orders_2024.v1-eu", True, id="every-allowed-character"),
        pytest.param("x" * 249, True, id="249-characters"),
        pytest.param("x" * 250, False, id="250-characters"),
        pytest.param("a b", False, id="space"),
        pytest.param("orders/eu", False, id="slash"),
        pytest.param("café", False, id="not-ascii"),
        pytest.param(".", False, id="dot"),
        pytest.param("..", False, id="two-dots"),
        pytest.param("...", True, id="three-dots"),
        pytest.param("", False, id="empty"),
    ],
)
def test_topic_name_validity(name: str, valid: bool) -> None:
    assert is_valid_topic_name(name) is valid


def test_selection_reports_invalid_names() -> None:
    selection = select_topics(
        ["a b", "orders", "..", "late"], ["orders"], dead_letter_topics=None
    )

    assert selection.subscribed == {"orders"}
    assert selection.invalid == {"a b", ".."}
    assert selection.missing == {"late"}


def test_auto_topics_serve_all_but_cron() -> None:
    serves = served_entries([])

    assert serves("orders")
    assert serves("orders.*")
    assert not serves("cron-function")


def test_explicit_topics_serve_their_entries() -> None:
    serves = served_entries(["payments", "orders.*"])

    assert serves("payments")
    assert serves("orders.eu")
    assert not serves("audit")


@pytest.mark.parametrize("build", ["command", "up"])
def test_built_connector_serves_its_topics(build: str) -> None:
    # `faashub connector kafka` and the workers process of `faashub up` build
    # the connector alike. Nothing connects until the source runs.
    settings = kafka_settings("127.0.0.1:9", "http://127.0.0.1:9", topics="payments")
    if build == "command":
        connector, _ = kafka_server.build(settings)
    else:
        service = up_workers.build_service(settings)
        assert isinstance(service, ConnectorService)
        connector = service.connector

    serves = connector.topic_maps.serves
    assert serves("payments")
    assert not serves("orders")
    assert not serves("cron-function")
