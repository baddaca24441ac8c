"""The topic map and its builder, against a fake gateway."""

import asyncio
import logging

import pytest

from connectors.core.topic_map import (
    TopicMap,
    TopicMapBuilder,
    is_pattern,
    parse_topic_annotation,
    serves_names,
)
from faashub.names import FunctionRef
from tests.connectors.conftest import FakeGateway, wait_until

pytestmark = pytest.mark.timeout(20)

A = FunctionRef("a", "openfaas-fn")
B = FunctionRef("b", "openfaas-fn")
C = FunctionRef("c", "team")


@pytest.mark.parametrize(
    ("annotation", "entries"),
    [
        pytest.param("orders", ["orders"], id="one"),
        pytest.param("orders,payments", ["orders", "payments"], id="two"),
        pytest.param(" orders ,  payments ", ["orders", "payments"], id="spaces"),
        pytest.param("orders,,payments,", ["orders", "payments"], id="empty-entries"),
        pytest.param("orders,orders", ["orders"], id="repeated"),
        pytest.param("", [], id="empty"),
        pytest.param(" , ", [], id="only-separators"),
    ],
)
def test_annotation_split(annotation: str, entries: list[str]) -> None:
    assert parse_topic_annotation(annotation) == entries


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("orders", False, id="name"),
        pytest.param("orders.*", True, id="star"),
        pytest.param("orders.?", True, id="question-mark"),
        pytest.param("orders.[ab]", True, id="class"),
    ],
)
def test_pattern_detection(entry: str, expected: bool) -> None:
    assert is_pattern(entry) is expected


def test_map_routes_names_and_patterns() -> None:
    topic_map = TopicMap.from_functions(
        {A: "orders,payments", B: "orders.*", C: "payments"}
    )

    assert topic_map.functions_for("orders") == (A,)
    assert topic_map.functions_for("payments") == (A, C)
    assert topic_map.functions_for("orders.created") == (B,)
    assert topic_map.functions_for("ordersx") == ()
    assert topic_map.functions_for("unknown") == ()
    assert topic_map.topic_names == {"orders", "payments"}
    assert topic_map.patterns == {"orders.*"}


def test_map_lists_a_function_once_per_topic() -> None:
    topic_map = TopicMap.from_functions({A: "orders.created,orders.*"})

    assert topic_map.functions_for("orders.created") == (A,)


def test_map_changes_name_each_difference() -> None:
    before = TopicMap.from_functions({A: "orders", B: "orders"})
    after = TopicMap.from_functions({A: "orders,payments", C: "orders"})

    assert after.changes_since(before) == [
        ("added", "orders", C),
        ("removed", "orders", B),
        ("added", "payments", A),
    ]


async def test_builder_reads_every_namespace(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders, payments")
    gateway.deploy("c", "payments", namespace="team")
    gateway.functions["plain.openfaas-fn"] = {}
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.1)
    task = asyncio.create_task(builder.run())
    try:
        topic_map = await asyncio.wait_for(builder.wait_until_built(), 5)
    finally:
        task.cancel()

    assert topic_map.functions_for("orders") == (A,)
    assert topic_map.functions_for("payments") == (A, C)
    assert set(topic_map.entries) == {"orders", "payments"}


async def test_builder_logs_added_and_removed(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.core.topic_map")
    gateway.deploy("a", "orders")
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.05)
    task = asyncio.create_task(builder.run())
    try:
        await asyncio.wait_for(builder.wait_until_built(), 5)
        version = builder.version
        gateway.remove("a")
        gateway.deploy("b", "orders")
        await asyncio.wait_for(builder.wait_for_change(version), 5)
    finally:
        task.cancel()

    changes = [
        (record.getMessage(), record.__dict__["ctx"]["function"])
        for record in caplog.records
        if record.getMessage().startswith("function ")
    ]
    assert changes == [
        ("function added to topic", "a.openfaas-fn"),
        ("function added to topic", "b.openfaas-fn"),
        ("function removed from topic", "a.openfaas-fn"),
    ]


async def test_builder_logs_other_entries_at_debug(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="connectors.core.topic_map")
    gateway.deploy("a", "orders,payments")
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.05)
    builder.serves = serves_names(["orders"])
    task = asyncio.create_task(builder.run())
    try:
        await asyncio.wait_for(builder.wait_until_built(), 5)
    finally:
        task.cancel()

    levels = {
        record.__dict__["ctx"]["topic"]: record.levelno
        for record in caplog.records
        if record.getMessage() == "function added to topic"
    }
    assert levels == {"orders": logging.INFO, "payments": logging.DEBUG}


@pytest.mark.parametrize(
    ("consumed", "entry", "expected"),
    [
        pytest.param(["orders"], "orders", True, id="same-name"),
        pytest.param(["orders"], "payments", False, id="other-name"),
        pytest.param(["orders.*"], "orders.eu", True, id="name-matched-by-pattern"),
        pytest.param(["orders.*"], "orders.*", True, id="same-pattern"),
        pytest.param(["orders.eu"], "orders.*", True, id="pattern-matching-name"),
        pytest.param(["payments"], "orders.*", False, id="pattern-matching-none"),
        pytest.param(["orders.*"], "payments.*", False, id="other-pattern"),
    ],
)
def test_serves_names_cases(consumed: list[str], entry: str, expected: bool) -> None:
    assert serves_names(consumed)(entry) is expected


async def test_builder_keeps_last_map_while_gateway_down(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gateway.deploy("a", "orders")
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.05)
    task = asyncio.create_task(builder.run())
    try:
        built = await asyncio.wait_for(builder.wait_until_built(), 5)
        await gateway.stop()
        requests_before = gateway.system_requests
        await asyncio.sleep(0.3)
        assert builder.current == built
        assert any(
            record.levelno == logging.WARNING
            and record.getMessage().startswith("gateway unavailable")
            for record in caplog.records
        )
        assert not task.done()

        gateway.deploy("b", "orders")
        await gateway.start()
        await wait_until(
            lambda: (
                builder.current is not None
                and builder.current.functions_for("orders") == (A, B)
            ),
            timeout_s=5,
            description="the map to pick up b after the outage",
        )
    finally:
        task.cancel()
    assert gateway.system_requests > requests_before
    assert any(
        record.getMessage().startswith("gateway available again")
        for record in caplog.records
    )


@pytest.mark.parametrize("status", [401, 403])
async def test_builder_names_connector_credential_flags(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    gateway.system_status = status
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.05)
    task = asyncio.create_task(builder.run())
    try:
        # Within the start grace that hides a gateway still starting.
        await wait_until(
            lambda: any(r.levelno == logging.WARNING for r in caplog.records),
            timeout_s=3,
            description="a warning about the rejected credentials",
        )
    finally:
        task.cancel()

    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert message.startswith("the gateway rejected the connector's credentials")
    assert f"returned HTTP {status}" in message
    assert "--gateway-secret-mount-path" in message
    assert "no topic map yet, so no function is invoked, retrying" in message
    assert "faashub login" not in message
    assert "unavailable" not in message


async def test_builder_waits_for_first_map(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    await gateway.stop()
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.2)
    task = asyncio.create_task(builder.run())
    try:
        waiting = asyncio.create_task(builder.wait_until_built())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        assert builder.current is None

        await gateway.start()
        topic_map = await asyncio.wait_for(waiting, 5)
    finally:
        task.cancel()
    assert topic_map.functions_for("orders") == (A,)


async def test_builder_rejects_unusable_listing(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.functions["Bad_Name.openfaas-fn"] = {"topic": "orders"}
    gateway.deploy("a", "orders")
    builder = TopicMapBuilder(gateway.url, rebuild_interval_s=0.05)
    task = asyncio.create_task(builder.run())
    try:
        topic_map = await asyncio.wait_for(builder.wait_until_built(), 5)
        await asyncio.sleep(0.2)
    finally:
        task.cancel()

    assert topic_map.functions_for("orders") == (A,)
    skipped = [
        r for r in caplog.records if r.getMessage().startswith("function skipped")
    ]
    assert len(skipped) == 1
    assert "Bad_Name" in skipped[0].getMessage()
