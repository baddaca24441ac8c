"""Delivery through the core: headers, fan-out, retries, outages, results."""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from connectors.core.connector import Connector
from connectors.core.health import start_health_listener
from connectors.core.invoker import CALL_ID_NAMESPACE, Message, call_id_for
from faashub import __version__
from faashub.connector_settings import ConnectorSettings
from faashub.names import FunctionRef
from tests.conftest import LOOPBACK, free_port
from tests.connectors.conftest import FakeGateway, settings_values

pytestmark = pytest.mark.timeout(20)

A = FunctionRef("a", "openfaas-fn")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class RecordedSleeps:
    """A sleep function that records each wait and sleeps only briefly."""

    def __init__(self, *, real_s: float = 0.0) -> None:
        self.waits: list[float] = []
        self._real_s = real_s

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(self._real_s)


def connector_settings(gateway: FakeGateway, **overrides: Any) -> ConnectorSettings:
    values = settings_values(gateway_url=gateway.url, **overrides)
    for kafka_only in ("commit_interval_s", "session_timeout_s"):
        values.pop(kafka_only)
    return ConnectorSettings(**values)


@contextlib.asynccontextmanager
async def started(
    settings: ConnectorSettings, *, sleep: RecordedSleeps | None = None
) -> AsyncIterator[Connector]:
    connector = Connector(settings, name="test", sleep=sleep or RecordedSleeps())
    await connector.start()
    try:
        await asyncio.wait_for(connector.wait_until_ready(), 5)
        yield connector
    finally:
        await connector.close()


def message(body: bytes = b"hello", **fields: Any) -> Message:
    values: dict[str, Any] = {"topic": "orders", "body": body, "identity": "orders/1"}
    values.update(fields)
    return Message(**values)


async def test_request_carries_connector_headers(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    sent = message(headers=[("X-Kafka-Key", "k1")], context={"offset": 1})

    async with started(connector_settings(gateway)) as connector:
        report = await connector.deliver(sent)

    [call] = gateway.received("a")
    assert call.route == "function"
    assert call.body == b"hello"
    assert call.header("X-Topic") == "orders"
    assert call.header("X-Connector") == "test-connector"
    assert call.header("Content-Type") == "text/plain"
    assert call.header("X-Kafka-Key") == "k1"
    assert call.header("X-Call-Id") == call_id_for("orders/1", A)
    assert call.header("X-Callback-Url") is None
    [result] = report.results
    assert result.succeeded
    assert result.status == 200
    assert result.body == b"hello"
    assert result.attempts == 1


def test_call_ids_are_stable_per_message_and_function() -> None:
    other = FunctionRef("b", "openfaas-fn")

    assert call_id_for("orders/1", A) == str(
        uuid.uuid5(CALL_ID_NAMESPACE, "orders/1\na.openfaas-fn")
    )
    assert call_id_for("orders/1", A) == call_id_for("orders/1", A)
    assert call_id_for("orders/1", A) != call_id_for("orders/1", other)
    assert call_id_for("orders/1", A) != call_id_for("orders/2", A)
    assert call_id_for("", A) != call_id_for("", A)


async def test_async_invocation_sends_callback(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    settings = connector_settings(
        gateway,
        async_invocation=True,
        callback_url="http://127.0.0.1:9/done",
        content_type="application/json",
    )

    async with started(settings) as connector:
        report = await connector.deliver(message(b"{}"))

    [call] = gateway.received("a")
    assert call.route == "async-function"
    assert call.header("X-Callback-Url") == "http://127.0.0.1:9/done"
    assert call.header("Content-Type") == "application/json"
    assert report.results[0].status == 202
    assert report.results[0].succeeded


async def test_empty_content_type_sends_none(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")

    async with started(connector_settings(gateway, content_type="")) as connector:
        await connector.deliver(message())

    assert gateway.received("a")[0].header("Content-Type") is None


@pytest.mark.parametrize(
    "content_type",
    [pytest.param("text/plain", id="content-type"), pytest.param("", id="none")],
)
async def test_gateway_request_headers_exact(
    gateway: FakeGateway, content_type: str
) -> None:
    gateway.deploy("a", "orders")
    source_headers = [
        ("X-Kafka-Offset", "7"),
        ("x-kafka-tag", "a"),
        ("x-kafka-tag", "b"),
        ("traceparent", TRACEPARENT),
    ]
    settings = connector_settings(
        gateway,
        content_type=content_type,
        gateway_user="admin",
        gateway_password="pw",
    )

    async with started(settings) as connector:
        # The second delivery repeats the message, as a redelivery does.
        for _ in range(2):
            await connector.deliver(message(headers=source_headers))

    expected = [
        ("Host", f"{LOOPBACK}:{gateway.port}"),
        ("User-Agent", f"faashub-test/{__version__}"),
        *source_headers,
        ("X-Topic", "orders"),
        ("X-Connector", "test-connector"),
        ("X-Call-Id", call_id_for("orders/1", A)),
        ("Content-Length", "5"),
    ]
    if content_type:
        expected.append(("Content-Type", content_type))
    first, second = gateway.received("a")
    assert sorted(first.headers) == sorted(expected)
    assert first.header_values("X-Kafka-Tag") == ["a", "b"]
    assert second.headers == first.headers


async def test_credentials_sent_after_401(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.required_authorization = "Basic YWRtaW46cHc="
    settings = connector_settings(gateway, gateway_user="admin", gateway_password="pw")

    async with started(settings) as connector:
        first = await connector.deliver(message())
        second = await connector.deliver(message())

    assert [result.status for result in first.results] == [200]
    assert [result.status for result in second.results] == [200]
    sent = [call.header("Authorization") for call in gateway.received("a")]
    assert sent == [None, "Basic YWRtaW46cHc=", "Basic YWRtaW46cHc="]


async def test_no_credentials_without_401(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    settings = connector_settings(gateway, gateway_user="admin", gateway_password="pw")

    async with started(settings) as connector:
        for _ in range(2):
            await connector.deliver(message())

    sent = [call.header("Authorization") for call in gateway.received("a")]
    assert sent == [None, None]


async def test_fan_out_runs_concurrently(gateway: FakeGateway) -> None:
    for name in ("a", "b", "c"):
        gateway.deploy(name, "orders")
        gateway.respond(name, delay_s=0.4)

    async with started(connector_settings(gateway)) as connector:
        started_s = time.monotonic()
        report = await connector.deliver(message())
        elapsed_s = time.monotonic() - started_s

    assert [str(result.function) for result in report.results] == [
        "a.openfaas-fn",
        "b.openfaas-fn",
        "c.openfaas-fn",
    ]
    assert all(result.succeeded for result in report.results)
    assert gateway.max_active == 3
    assert elapsed_s < 0.8


async def test_temporary_failures_are_retried(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.respond("a", statuses=[500, 503])
    sleeps = RecordedSleeps()
    settings = connector_settings(gateway, retry_min_wait_s=1.0, retry_max_wait_s=8.0)

    async with started(settings, sleep=sleeps) as connector:
        report = await connector.deliver(message())
        metrics = connector.metrics.render().decode()

    [result] = report.results
    assert result.succeeded
    assert result.attempts == 3
    assert len(gateway.received("a")) == 3
    assert len(sleeps.waits) == 2
    assert 1.0 <= sleeps.waits[0] <= 1.5
    assert 2.0 <= sleeps.waits[1] <= 2.5
    call_ids = {call.header("X-Call-Id") for call in gateway.received("a")}
    assert len(call_ids) == 1
    assert (
        'faashub_connector_retried_total{connector="test",function="a.openfaas-fn"} 2.0'
        in metrics
    )


async def test_client_error_is_final(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.respond("a", status=400)
    sleeps = RecordedSleeps()

    async with started(connector_settings(gateway), sleep=sleeps) as connector:
        report = await connector.deliver(message())

    [result] = report.failures
    assert result.status == 400
    assert result.attempts == 1
    assert "HTTP 400" in result.error
    assert sleeps.waits == []


async def test_attempts_run_out(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.respond("a", status=500)

    async with started(connector_settings(gateway, retry_attempts=3)) as connector:
        report = await connector.deliver(message())

    [result] = report.failures
    assert result.status == 500
    assert result.attempts == 3
    assert len(gateway.received("a")) == 3


async def test_retry_after_is_honoured(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="connectors.core.invoker")
    gateway.deploy("a", "orders")
    gateway.respond("a", statuses=[429], reply_headers={"Retry-After": "3"})
    sleeps = RecordedSleeps()
    settings = connector_settings(gateway, retry_min_wait_s=0.1, retry_max_wait_s=5.0)

    async with started(settings, sleep=sleeps) as connector:
        report = await connector.deliver(message())

    assert report.results[0].succeeded
    assert sleeps.waits == [3.0]
    [retrying] = [
        r for r in caplog.records if r.getMessage() == "invocation failed, retrying"
    ]
    assert retrying.__dict__["ctx"]["wait_s"] == 3.0
    assert retrying.__dict__["ctx"]["status"] == 429


async def test_timeout_counts_as_attempt(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.respond("a", delay_s=2.0)
    settings = connector_settings(gateway, upstream_timeout_s=0.2, retry_attempts=2)

    async with started(settings) as connector:
        report = await connector.deliver(message())

    [result] = report.failures
    assert result.status == 504
    assert result.attempts == 2
    assert "within 0.2 s" in result.error


async def test_gateway_outage_pauses_without_attempts(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gateway.deploy("a", "orders")
    sleeps = RecordedSleeps(real_s=0.02)
    settings = connector_settings(gateway, retry_attempts=2)

    async with started(settings, sleep=sleeps) as connector:
        await gateway.stop()
        delivery = asyncio.create_task(connector.deliver(message()))
        await asyncio.sleep(0.5)
        assert not delivery.done()
        await gateway.start()
        report = await asyncio.wait_for(delivery, 10)

    [result] = report.results
    assert result.succeeded
    assert result.attempts == 1
    assert len(sleeps.waits) > 2
    outage_lines = [
        r for r in caplog.records if "pausing invocations" in r.getMessage()
    ]
    assert len(outage_lines) == 1
    assert any(
        r.getMessage().startswith("gateway available again") for r in caplog.records
    )


async def test_body_over_limit_is_not_sent(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")

    async with started(connector_settings(gateway, max_body_bytes=4)) as connector:
        report = await connector.deliver(message(b"12345"))

    [result] = report.failures
    assert result.status == 413
    assert result.attempts == 0
    assert "5 bytes exceeds" in result.error
    assert gateway.received("a") == []


async def test_topic_without_function_is_skipped(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.deploy("a", "orders")

    async with started(connector_settings(gateway)) as connector:
        first = await connector.deliver(message(topic="nobody"))
        second = await connector.deliver(message(topic="nobody"))

    assert first.results == []
    assert second.results == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "no function subscribes to the topic, message skipped"
    ]


async def test_one_result_line_per_invocation(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.core.connector")
    gateway.deploy("a", "orders")
    gateway.deploy("b", "orders")
    gateway.respond("b", status=404)

    async with started(connector_settings(gateway)) as connector:
        await connector.deliver(message(context={"partition": 2, "offset": 7}))

    lines = {
        record.__dict__["ctx"]["function"]: record
        for record in caplog.records
        if record.name == "connectors.core.connector"
    }
    assert set(lines) == {"a.openfaas-fn", "b.openfaas-fn"}
    success = lines["a.openfaas-fn"]
    assert success.levelno == logging.INFO
    assert success.getMessage() == "function invoked"
    assert success.__dict__["ctx"]["topic"] == "orders"
    assert success.__dict__["ctx"]["status"] == 200
    assert success.__dict__["ctx"]["partition"] == 2
    assert isinstance(success.__dict__["ctx"]["duration_s"], float)
    assert success.__dict__["ctx"]["duration_s"] >= 0
    failure = lines["b.openfaas-fn"]
    assert failure.levelno == logging.WARNING
    assert failure.getMessage() == "function invocation failed"
    assert failure.__dict__["ctx"]["status"] == 404
    assert "HTTP 404" in failure.__dict__["ctx"]["error"]


async def test_metrics_count_outcomes(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.deploy("b", "orders")
    gateway.respond("b", status=400)

    async with started(connector_settings(gateway)) as connector:
        await connector.deliver(message())
        connector.metrics.consumed("orders", 1)
        connector.metrics.dead_lettered("orders")
        connector.metrics.set_lag("orders", 5, partition="0")
        text = connector.metrics.render().decode()

    for line in (
        'faashub_connector_consumed_total{connector="test",topic="orders"} 1.0',
        'faashub_connector_invoked_total{code="200",connector="test",'
        'function="a.openfaas-fn"} 1.0',
        'faashub_connector_invoked_total{code="400",connector="test",'
        'function="b.openfaas-fn"} 1.0',
        'faashub_connector_failed_total{connector="test",function="b.openfaas-fn"} 1.0',
        'faashub_connector_dead_lettered_total{connector="test",topic="orders"} 1.0',
        'faashub_connector_lag{connector="test",partition="0",topic="orders"} 5.0',
    ):
        assert line in text
    assert "faashub_connector_invocation_seconds_bucket" in text


class FixedSource:
    """A source whose state the test sets."""

    def __init__(self) -> None:
        self.state = "connecting"

    async def run(self, connector: Connector) -> None:
        return

    def stop(self) -> None:
        return


async def test_health_follows_map_and_source(gateway: FakeGateway) -> None:
    gateway.deploy("a", "orders")
    await gateway.stop()
    settings = connector_settings(gateway)
    connector = Connector(settings, name="test")
    source = FixedSource()
    port = free_port()
    await connector.start()
    health = await start_health_listener(connector, source, host=LOOPBACK, port=port)
    try:
        async with httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{port}") as client:
            before_map = await client.get("/healthz")
            await gateway.start()
            await asyncio.wait_for(connector.wait_until_ready(), 5)
            before_source = await client.get("/healthz")
            source.state = "ready"
            ready = await client.get("/healthz")
            metrics = await client.get("/metrics")
    finally:
        await health.cleanup()
        await connector.close()

    assert before_map.status_code == 503
    assert "topic map" in before_map.text
    assert before_source.status_code == 503
    assert before_source.text == "connecting"
    assert ready.status_code == 200
    assert ready.text == "OK"
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")


async def test_topic_map_lines_name_connector(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.core.topic_map")
    gateway.deploy("a", "orders")

    async with started(connector_settings(gateway)):
        pass

    lines = [
        record
        for record in caplog.records
        if record.getMessage() in ("topic map built", "function added to topic")
    ]
    assert [record.getMessage() for record in lines] == [
        "topic map built",
        "function added to topic",
    ]
    for record in lines:
        assert record.__dict__["ctx"]["connector"] == "test"
