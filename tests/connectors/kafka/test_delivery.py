"""The Kafka connector against Tansu: fan-out, ordering, headers, dead letters."""

import asyncio
import base64
import logging
from collections import Counter, defaultdict

import pytest

from tests.connectors.conftest import (
    FakeGateway,
    committed_offsets,
    create_topics,
    group_by_key,
    kafka_producer,
    read_topic,
    unique,
    wait_until,
    wait_until_async,
)
from tests.connectors.kafka.conftest import kafka_settings, running_connector

pytestmark = pytest.mark.timeout(60)


async def test_two_topics_reach_every_subscriber_in_partition_order(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    orders, payments = unique("orders"), unique("payments")
    await create_topics(kafka_brokers, orders, payments, partitions=3)
    gateway.deploy("ship", orders)
    gateway.deploy("bill", payments)
    gateway.deploy("audit", f"{orders},{payments}")
    sent: dict[str, list[bytes]] = {orders: [], payments: []}
    async with kafka_producer(kafka_brokers) as producer:
        for topic in (orders, payments):
            for number in range(30):
                body = f"{topic}-{number}".encode()
                sent[topic].append(body)
                await producer.send(topic, body, key=f"k{number % 7}".encode())
        await producer.flush()
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), ordering="partition"
    )

    async with running_connector(settings):
        await wait_until(
            lambda: len(gateway.invocations) >= 120, description="120 invocations"
        )
        await asyncio.sleep(0.5)

    assert sorted(gateway.bodies("ship")) == sorted(sent[orders])
    assert sorted(gateway.bodies("bill")) == sorted(sent[payments])
    assert sorted(gateway.bodies("audit")) == sorted(sent[orders] + sent[payments])
    for function in ("ship", "bill", "audit"):
        offsets_seen: dict[tuple[str, str], list[int]] = defaultdict(list)
        for call in gateway.received(function):
            partition = (
                call.header("X-Topic") or "",
                call.header("X-Kafka-Partition") or "",
            )
            offsets_seen[partition].append(int(call.header("X-Kafka-Offset") or -1))
        for offsets in offsets_seen.values():
            assert offsets == sorted(offsets), f"{function} got {offsets}"
    assert len(offsets_seen) == 6


async def test_key_mode_keeps_key_order_beyond_partitions(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("keyed")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("slow", topic)
    gateway.respond("slow", delay_s=0.05)
    async with kafka_producer(kafka_brokers) as producer:
        for number in range(40):
            key = f"key-{number % 8}".encode()
            await producer.send(topic, f"{key.decode()}/{number}".encode(), key=key)
        await producer.flush()
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), ordering="key"
    )

    async with running_connector(settings):
        await wait_until(lambda: len(gateway.invocations) >= 40, description="40 calls")

    for group, bodies in group_by_key(gateway.received("slow")).items():
        numbers = [int(body.split(b"/")[1]) for body in bodies]
        assert numbers == sorted(numbers), f"{group}: {numbers}"
        assert len(numbers) == 5
    # One partition, yet several keys ran at the same time.
    assert gateway.max_active > 1


async def test_none_mode_stays_within_max_inflight(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("bulk")
    await create_topics(kafka_brokers, topic, partitions=3)
    gateway.deploy("work", topic)
    gateway.respond("work", delay_s=0.05)
    bodies = [f"b{number}".encode() for number in range(60)]
    async with kafka_producer(kafka_brokers) as producer:
        for body in bodies:
            await producer.send(topic, body)
        await producer.flush()
    settings = kafka_settings(
        kafka_brokers,
        gateway.url,
        group_id=unique("group"),
        ordering="none",
        max_inflight=4,
    )

    async with running_connector(settings):
        await wait_until(lambda: len(gateway.invocations) >= 60, description="60 calls")

    assert sorted(gateway.bodies("work")) == sorted(bodies)
    assert gateway.max_active == 4


async def test_newest_offset_skips_earlier_records(
    kafka_brokers: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.kafka.source")
    topic = unique("fresh")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("fresh", topic)
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), initial_offset="newest"
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send_and_wait(topic, b"before")
        async with running_connector(settings):
            await wait_until(
                lambda: any(
                    r.getMessage() == "partitions assigned" for r in caplog.records
                ),
                description="the assignment",
            )
            # The start offset is looked up at the first fetch after assignment.
            await asyncio.sleep(1.0)
            await producer.send_and_wait(topic, b"after")
            await wait_until(
                lambda: gateway.bodies("fresh") != [], description="the new record"
            )
            await asyncio.sleep(0.3)

    assert gateway.bodies("fresh") == [b"after"]


async def test_record_metadata_reaches_function(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("meta")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("inspect", topic)
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send_and_wait(
            topic,
            b"with-headers",
            key=b"text-key",
            headers=[("trace", b"t-1"), ("raw", b"\x00\x01\n"), ("Offset", b"fake")],
            timestamp_ms=1_700_000_000_123,
        )
        await producer.send_and_wait(topic, None, key=b"\xff\xfe")
    settings = kafka_settings(kafka_brokers, gateway.url, group_id=unique("group"))

    async with running_connector(settings):
        await wait_until(lambda: len(gateway.invocations) >= 2, description="2 calls")

    first, second = gateway.received("inspect")
    assert first.body == b"with-headers"
    assert first.header("X-Topic") == topic
    assert first.header("X-Kafka-Partition") == "0"
    assert first.header("X-Kafka-Offset") == "0"
    assert first.header("X-Kafka-Timestamp") == "1700000000123"
    assert first.header("X-Kafka-Key") == "text-key"
    assert first.header("X-Kafka-Key-Enc") is None
    assert first.header("X-Kafka-trace") == "t-1"
    assert first.header("X-Kafka-raw") == base64.b64encode(b"\x00\x01\n").decode()
    assert first.header("X-Kafka-raw-Enc") == "b64"
    assert first.header_values("X-Kafka-Offset") == ["0"]
    assert first.header("X-Kafka-Header-Offset") == "fake"
    assert second.body == b""
    assert second.header("X-Kafka-Key") == base64.b64encode(b"\xff\xfe").decode()
    assert second.header("X-Kafka-Key-Enc") == "b64"


async def test_failures_retry_then_dead_letter_and_flow_on(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("pay")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("charge", topic)
    behaviour = gateway.respond("charge", status_for_body={b"broken": 500})
    behaviour.statuses = [502, 503]
    group = unique("group")
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=group, retry_attempts=3
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send_and_wait(topic, b"flaky", key=b"a")
        await producer.send_and_wait(
            topic, b"broken", key=b"b", headers=[("trace", b"t-9")]
        )
        await producer.send_and_wait(topic, b"later", key=b"c")

    async with running_connector(settings) as running:
        [dead] = await read_topic(kafka_brokers, f"{topic}.dlq", count=1)
        await wait_until(
            lambda: b"later" in gateway.bodies("charge"), description="the later record"
        )
        await wait_until_async(
            lambda: _committed_is(kafka_brokers, group, topic, {0: 3}),
            description="offset 3 committed",
        )
        await asyncio.sleep(2 * settings.commit_interval_s)
        metrics = running.connector.metrics.render().decode()

    assert gateway.bodies("charge") == [b"flaky"] * 3 + [b"broken"] * 3 + [b"later"]
    assert dead.value == b"broken"
    assert dead.key == b"b"
    headers = dict(dead.headers)
    assert headers["trace"] == b"t-9"
    assert headers["faashub-function"] == b"charge.openfaas-fn"
    assert headers["faashub-status"] == b"500"
    assert headers["faashub-attempts"] == b"3"
    assert b"HTTP 500" in headers["faashub-error"]
    assert headers["faashub-source-topic"] == topic.encode()
    assert headers["faashub-source-offset"] == b"1"
    for line in (
        f'faashub_connector_consumed_total{{connector="kafka",topic="{topic}"}} 3.0',
        "faashub_connector_dead_lettered_total"
        f'{{connector="kafka",topic="{topic}"}} 1.0',
        'faashub_connector_retried_total{connector="kafka",'
        'function="charge.openfaas-fn"} 4.0',
        'faashub_connector_failed_total{connector="kafka",'
        'function="charge.openfaas-fn"} 1.0',
        f'faashub_connector_lag{{connector="kafka",partition="0",topic="{topic}"}} 0.0',
    ):
        assert line in metrics


async def _committed_is(
    brokers: str, group: str, topic: str, expected: dict[int, int]
) -> bool:
    return await committed_offsets(brokers, group, topic) == expected


async def test_key_mode_poison_record_spares_other_keys(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("poison")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("handle", topic)
    gateway.respond("handle", status_for_body={b"bad-1": 503})
    settings = kafka_settings(
        kafka_brokers,
        gateway.url,
        group_id=unique("group"),
        ordering="key",
        retry_attempts=4,
        retry_min_wait_s=0.5,
        retry_max_wait_s=0.5,
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send(topic, b"bad-1", key=b"bad")
        await producer.send(topic, b"bad-2", key=b"bad")
        for number in range(5):
            await producer.send(topic, f"good-{number}".encode(), key=b"good")
        await producer.flush()

    async with running_connector(settings):
        await wait_until(
            lambda: (
                len([b for b in gateway.bodies("handle") if b.startswith(b"good")]) == 5
            ),
            description="every good record",
        )
        # The poison record is still being retried when the good key is done.
        assert b"bad-2" not in gateway.bodies("handle")
        await read_topic(kafka_brokers, f"{topic}.dlq", count=1)
        await wait_until(
            lambda: b"bad-2" in gateway.bodies("handle"), description="bad-2"
        )

    bad = [body for body in gateway.bodies("handle") if body.startswith(b"bad")]
    assert bad == [b"bad-1"] * 4 + [b"bad-2"]


async def test_oversized_records_are_dead_lettered(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("big")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("small", topic)
    gateway.respond("small", status_for_body={b"y" * 50: 413})
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), max_body_bytes=100
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send_and_wait(topic, b"x" * 101)
        await producer.send_and_wait(topic, b"y" * 50)
        await producer.send_and_wait(topic, b"ok")

    async with running_connector(settings):
        letters = await read_topic(kafka_brokers, f"{topic}.dlq", count=2)
        await wait_until(lambda: b"ok" in gateway.bodies("small"), description="ok")

    assert gateway.bodies("small") == [b"y" * 50, b"ok"]
    # Dead letters without a key may land on any partition: order by source.
    letters.sort(key=lambda letter: dict(letter.headers)["faashub-source-offset"])
    too_big, rejected = (dict(letter.headers) for letter in letters)
    assert letters[0].value == b"x" * 101
    assert too_big["faashub-status"] == b"413"
    assert too_big["faashub-attempts"] == b"0"
    assert b"101 bytes exceeds" in too_big["faashub-error"]
    assert rejected["faashub-status"] == b"413"
    assert rejected["faashub-attempts"] == b"1"


async def test_removed_function_in_flight_is_dead_lettered(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("gone")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("vanish", topic)
    gateway.respond("vanish", delay_s=1.0)
    # A long refresh interval keeps the removed function in the map.
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), rebuild_interval_s=60
    )
    async with kafka_producer(kafka_brokers) as producer:
        for body in (b"r1", b"r2"):
            await producer.send(topic, body)
        await producer.flush()

    async with running_connector(settings):
        await wait_until(lambda: gateway.received("vanish") != [], description="r1")
        gateway.remove("vanish")
        [dead] = await read_topic(kafka_brokers, f"{topic}.dlq", count=1)

    assert dead.value == b"r2"
    assert dict(dead.headers)["faashub-status"] == b"404"


async def test_replies_go_to_configured_or_requested_topic(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic, replies, custom = unique("ask"), unique("replies"), unique("custom")
    await create_topics(kafka_brokers, topic, replies, custom, partitions=1)
    gateway.deploy("answer", topic)
    gateway.respond(
        "answer", reply_body=b"42", reply_headers={"Content-Type": "application/json"}
    )
    settings = kafka_settings(
        kafka_brokers, gateway.url, group_id=unique("group"), reply_topic=replies
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send_and_wait(topic, b"q1", key=b"k1")
        await producer.send_and_wait(
            topic, b"q2", key=b"k2", headers=[("reply-topic", custom.encode())]
        )

    async with running_connector(settings):
        [reply] = await read_topic(kafka_brokers, replies, count=1)
        [redirected] = await read_topic(kafka_brokers, custom, count=1)

    calls = gateway.received("answer")
    assert reply.value == b"42"
    assert reply.key == b"k1"
    headers = dict(reply.headers)
    assert headers["X-Call-Id"].decode() == calls[0].header("X-Call-Id")
    assert headers["X-Function-Name"] == b"answer.openfaas-fn"
    assert headers["X-Function-Status"] == b"200"
    assert headers["Content-Type"] == b"application/json"
    assert headers["X-Topic"] == topic.encode()
    assert headers["X-Kafka-Offset"] == b"0"
    assert redirected.key == b"k2"
    assert dict(redirected.headers)["X-Kafka-Offset"] == b"1"


async def test_commit_waits_for_unfinished_record(
    kafka_brokers: str, gateway: FakeGateway
) -> None:
    topic = unique("hold")
    await create_topics(kafka_brokers, topic, partitions=1)
    gateway.deploy("mixed", topic)
    behaviour = gateway.respond("mixed")
    group = unique("group")
    settings = kafka_settings(
        kafka_brokers,
        gateway.url,
        group_id=group,
        ordering="key",
        retry_attempts=100,
        retry_min_wait_s=0.2,
    )
    async with kafka_producer(kafka_brokers) as producer:
        await producer.send(topic, b"quick-0", key=b"q")
        await producer.send(topic, b"slow", key=b"s")
        for number in range(1, 4):
            await producer.send(topic, f"quick-{number}".encode(), key=b"q")
        await producer.flush()
    behaviour.status_for_body[b"slow"] = 503

    async with running_connector(settings):
        await wait_until(
            lambda: gateway.bodies("mixed").count(b"quick-3") == 1,
            description="the quick records",
        )
        await asyncio.sleep(3 * settings.commit_interval_s)
        # Offset 1 (slow) is still retrying, so nothing past it is committed.
        assert await committed_offsets(kafka_brokers, group, topic) == {0: 1}
        del behaviour.status_for_body[b"slow"]
        await wait_until_async(
            lambda: _committed_is(kafka_brokers, group, topic, {0: 5}),
            description="offset 5 committed",
        )


async def test_new_pattern_topic_is_consumed(
    kafka_brokers: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique("events")
    named = unique("named")
    gateway.deploy("watch", f"{prefix}.*, {named}")
    settings = kafka_settings(kafka_brokers, gateway.url, group_id=unique("group"))
    # A missing topic from the annotations is an INFO line.
    caplog.set_level(logging.INFO, logger="connectors.kafka.source")

    async with running_connector(settings):
        await wait_until(
            lambda: any("topic not found" in r.getMessage() for r in caplog.records),
            description="the missing-topic line",
        )
        await create_topics(kafka_brokers, f"{prefix}.created", named, partitions=1)
        async with kafka_producer(kafka_brokers) as producer:
            await producer.send_and_wait(f"{prefix}.created", b"by-pattern")
            await producer.send_and_wait(named, b"by-name")
            # A dead-letter topic matches the pattern but must not be consumed.
            await producer.send_and_wait(f"{prefix}.created.dlq", b"dead")
        await wait_until(
            lambda: len(gateway.received("watch")) >= 2,
            timeout_s=30,
            description="records from the new topics",
        )
        await asyncio.sleep(1.0)

    assert sorted(gateway.bodies("watch")) == [b"by-name", b"by-pattern"]
    missing = [r for r in caplog.records if "topic not found" in r.getMessage()]
    assert [r.__dict__["ctx"]["topic"] for r in missing] == [named]


async def test_rebalance_hands_partitions_over(
    kafka_brokers: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.kafka.source")
    topic = unique("shared")
    await create_topics(kafka_brokers, topic, partitions=4)
    gateway.deploy("steady", topic)
    gateway.respond("steady", delay_s=0.02)
    group = unique("group")
    bodies = [f"r{number}".encode() for number in range(400)]

    async def produce() -> None:
        async with kafka_producer(kafka_brokers) as producer:
            for body in bodies:
                await producer.send(topic, body)
                await asyncio.sleep(0.01)
            await producer.flush()

    def assignments() -> int:
        return sum(r.getMessage() == "partitions assigned" for r in caplog.records)

    first = kafka_settings(kafka_brokers, gateway.url, group_id=group)
    second = kafka_settings(kafka_brokers, gateway.url, group_id=group)
    async with running_connector(first):
        producing = asyncio.create_task(produce())
        await wait_until(
            lambda: len(gateway.invocations) >= 30, description="the first records"
        )
        async with running_connector(second):
            # The first connector gets its share again, the second its own.
            await wait_until(
                lambda: assignments() >= 3, timeout_s=30, description="the rebalance"
            )
            await producing
            await wait_until(
                lambda: set(gateway.bodies("steady")) == set(bodies),
                timeout_s=30,
                description="every record",
            )

    counts = Counter(gateway.bodies("steady"))
    repeats = sum(count - 1 for count in counts.values())
    revoked = [r for r in caplog.records if r.getMessage() == "partitions revoked"]
    # The rebalance revoked all four partitions of the first connector.
    assert revoked[0].__dict__["ctx"]["partitions"].count(topic) == 4
    # Partition ordering runs one record per partition, so at most 4 were in
    # flight, and the drain lets them finish before the commit.
    assert repeats <= 4
