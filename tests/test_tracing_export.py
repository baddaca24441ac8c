"""OpenTelemetry export: the switch, the missing extra, spans and their flush.

The spans go to the OTLP/HTTP receiver of `tests.test_trace_e2e` on
loopback. The connector tests run the invoker in this process against the
fake gateway of the connector tests; the gateway test runs `faashub up`.
"""

import asyncio
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from connectors.core.invoker import Invoker, Message, new_session
from connectors.core.metrics import ConnectorMetrics
from connectors.core.retry import RetryPolicy
from faashub import names, tracing
from tests.conftest import LOOPBACK, free_port
from tests.connectors.conftest import FakeGateway
from tests.hub_support import running_hub
from tests.test_trace_e2e import (
    OTEL_VARIABLES,
    TRACE_ID,
    TRACEPARENT,
    TRACESTATE,
    OtlpReceiver,
    deploy_recorder,
    parent_id,
    trace_id,
    wait_for_lines,
)

pytestmark = pytest.mark.timeout(60)

FUNCTION = names.FunctionRef("orders", "openfaas-fn")


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean OTEL_* environment, and export stopped after the test."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    try:
        yield monkeypatch
    finally:
        tracing.shutdown()


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """The connector tests' fake gateway, on a free loopback port."""
    fake = FakeGateway(port=free_port())
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        pytest.param({}, False, id="nothing-set"),
        pytest.param({"OTEL_TRACES_EXPORTER": "otlp"}, True, id="exporter-otlp"),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
            True,
            id="endpoint",
        ),
        pytest.param(
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
            True,
            id="traces-endpoint",
        ),
        pytest.param(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"},
            False,
            id="exporter-none",
        ),
        pytest.param(
            {"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "otlp"},
            False,
            id="sdk-disabled",
        ),
        pytest.param({"OTEL_TRACES_EXPORTER": "console"}, False, id="other-exporter"),
    ],
)
def test_export_switch(variables: dict[str, str], expected: bool) -> None:
    assert tracing.export_requested(variables) is expected


def test_export_off_by_default(otel_env: pytest.MonkeyPatch) -> None:
    assert tracing.setup(default_service_name="faashub-test") is False
    assert tracing.enabled is False


def test_missing_packages_warn_once(
    otel_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    # A None entry makes the import raise ImportError, as without the extra.
    otel_env.setitem(sys.modules, "opentelemetry.sdk.trace", None)

    with caplog.at_level(logging.WARNING, logger="faashub.tracing"):
        started = tracing.setup(default_service_name="faashub-test")

    assert started is False
    assert tracing.enabled is False
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "pip install 'faashub[otel]'" in warning.getMessage()


def test_grpc_protocol_warns(
    otel_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")

    with caplog.at_level(logging.WARNING, logger="faashub.tracing"):
        started = tracing.setup(default_service_name="faashub-test")

    assert started is False
    [warning] = caplog.records
    assert "http/protobuf" in warning.getMessage()


async def invoke_once(gateway: FakeGateway, message: Message, connector: str) -> int:
    metrics = ConnectorMetrics(connector)
    async with new_session(user_agent="faashub-test") as session:
        invoker = Invoker(
            session,
            gateway_url=gateway.url,
            connector=connector,
            retry=RetryPolicy(attempts=1, min_wait_s=0.01, max_wait_s=0.01),
            metrics=metrics,
            timeout_s=5.0,
        )
        result = await invoker.invoke(FUNCTION, message)
    return result.status


def sqs_message() -> Message:
    return Message(
        topic="orders-queue",
        body=b"order 1",
        headers=[("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)],
        identity="orders-queue/m-1",
        context={"queue": "orders-queue", "message_id": "m-1", "receive_count": 1},
    )


async def test_sqs_invoke_span_exported(
    otel_env: pytest.MonkeyPatch, gateway: FakeGateway
) -> None:
    gateway.deploy("orders", "orders-queue")
    with OtlpReceiver() as collector:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        otel_env.setenv("OTEL_SERVICE_NAME", "orders-connector")
        assert tracing.setup(default_service_name="faashub-connector-sqs")

        status = await invoke_once(gateway, sqs_message(), "sqs")
        await asyncio.to_thread(tracing.shutdown)
        spans = collector.wait_for({"sqs invoke"}, timeout_s=5.0)

    assert status == 200
    span = spans["sqs invoke"]
    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == TRACEPARENT.split("-")[2]
    assert span.service == "orders-connector"
    assert span.attributes["messaging.system"] == "sqs"
    assert span.attributes["messaging.destination.name"] == "orders-queue"
    assert span.attributes["messaging.message.id"] == "m-1"
    assert span.attributes["faas.invoked_name"] == "orders"
    assert span.attributes["faashub.namespace"] == "openfaas-fn"
    assert span.attributes["http.response.status_code"] == 200
    assert "body" not in json.dumps(span.attributes, default=str)

    [call] = gateway.received("orders")
    assert call.header_values("traceparent") == [f"00-{TRACE_ID}-{span.span_id}-01"]
    assert call.header_values("tracestate") == [TRACESTATE]
    assert call.header("X-Call-Id") == span.attributes["faashub.call_id"]


# A tracestate of 40 list members, 8 more than W3C Trace Context allows.
LONG_TRACESTATE = ",".join(f"k{index}=v{index}" for index in range(40))


# Each case is a list of tracestate header values.
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["vendor=opaque"], True, id="one-member"),
        pytest.param(["a=1,b=2", " c=3 ,,"], True, id="two-headers-empty-members"),
        pytest.param(["t1@sys=x"], True, id="tenant-key"),
        pytest.param([",".join(f"k{i}=v" for i in range(32))], True, id="32-members"),
        pytest.param([",".join(f"k{i}=v" for i in range(33))], False, id="33-members"),
        pytest.param(["a=1", "a=2"], False, id="repeated-key"),
        pytest.param(["Upper=1"], False, id="uppercase-key"),
        pytest.param(["a=1=2"], False, id="equals-in-value"),
        pytest.param(["novalue"], False, id="no-equals"),
        pytest.param(["a=" + "x" * 9000], False, id="over-8192-chars"),
    ],
)
def test_tracestate_validation(values: list[str], expected: bool) -> None:
    assert tracing.valid_tracestate(values) is expected


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("tracestate", LONG_TRACESTATE)], id="40-members"),
        pytest.param([("tracestate", "a=1,a=2")], id="repeated-key"),
        pytest.param([("tracestate", "Bad Member")], id="invalid-member"),
        pytest.param([("traceparent", "00-" + "a" * 600)], id="long-traceparent"),
    ],
)
async def test_invalid_trace_headers_not_logged(
    otel_env: pytest.MonkeyPatch,
    gateway: FakeGateway,
    caplog: pytest.LogCaptureFixture,
    headers: list[tuple[str, str]],
) -> None:
    gateway.deploy("orders", "orders-queue")
    with OtlpReceiver() as collector:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        assert tracing.setup(default_service_name="faashub-connector-sqs")
        message = sqs_message()
        if headers[0][0] == "tracestate":
            headers = [("traceparent", TRACEPARENT), *headers]
        message = Message(
            topic=message.topic,
            body=message.body,
            headers=headers,
            identity=message.identity,
            context=message.context,
        )

        with caplog.at_level(logging.WARNING):
            statuses = [await invoke_once(gateway, message, "sqs") for _ in range(3)]
        await asyncio.to_thread(tracing.shutdown)

    assert statuses == [200, 200, 200]
    opentelemetry_records = [
        record for record in caplog.records if record.name.startswith("opentelemetry")
    ]
    assert opentelemetry_records == []
    for call in gateway.received("orders"):
        assert call.header_values("tracestate") == []
        [traceparent] = call.header_values("traceparent")
        if headers[0][1] == TRACEPARENT:
            assert traceparent.split("-")[1] == TRACE_ID


async def test_unreachable_collector_keeps_calls(
    otel_env: pytest.MonkeyPatch, gateway: FakeGateway
) -> None:
    gateway.deploy("orders", "orders-queue")
    # Nothing listens on this port, so every export fails.
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{LOOPBACK}:{free_port()}")
    otel_env.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "30")
    assert tracing.setup(default_service_name="faashub-connector-sqs")

    statuses = [await invoke_once(gateway, sqs_message(), "sqs") for _ in range(3)]
    # Give the batch processor time to start its failing export.
    await asyncio.sleep(0.3)
    started_s = time.monotonic()
    await asyncio.to_thread(tracing.shutdown, timeout_s=1.0)
    shutdown_s = time.monotonic() - started_s

    assert statuses == [200, 200, 200]
    assert len(gateway.received("orders")) == 3
    assert tracing.enabled is False
    # The exporter would retry for 30 s; shutdown gives up after its timeout.
    assert shutdown_s < 15.0


def test_gateway_span_flushed_on_stop(
    otel_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with OtlpReceiver() as collector:
        otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
        # Far beyond the test, so only the flush at stop exports the spans.
        otel_env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
        with running_hub(tmp_path / "state") as hub:
            record_path = deploy_recorder(hub, "traced", "unused-topic", tmp_path)
            response = httpx.post(
                f"{hub.url}/function/traced",
                content=b"sync body",
                headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
                auth=hub.auth,
                timeout=30,
            )
            [line] = wait_for_lines(record_path, 1)
            assert collector.requests == 0
        spans = collector.wait_for({"POST /function/{name}"}, timeout_s=5.0)

    assert response.status_code == 200
    span = spans["POST /function/{name}"]
    assert span.service == "faashub-gateway"
    assert span.trace_id == TRACE_ID
    assert span.parent_span_id == TRACEPARENT.split("-")[2]
    assert span.attributes["faashub.call_id"] == response.headers["X-Call-Id"]
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["http.response.status_code"] == 200
    received = json.loads(line)
    assert trace_id(received["traceparent"]) == TRACE_ID
    assert parent_id(received["traceparent"]) == span.span_id
    assert received["tracestate"] == TRACESTATE
