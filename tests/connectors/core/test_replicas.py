"""Direct calls to function replicas, and the rate-limited success lines."""

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from connectors.core import connector as connector_module
from connectors.core.connector import Connector
from connectors.core.constants import RESULT_LINES_PER_S
from connectors.core.invoker import Message, call_id_for
from faashub import __version__
from faashub.connector_settings import ConnectorSettings
from faashub.names import FunctionRef
from faashub.replica_urls import DIRECT_INVOCATIONS_PATH
from tests.conftest import LOOPBACK, free_port, wait_until
from tests.connectors.conftest import FakeGateway, settings_values

pytestmark = pytest.mark.timeout(20)


@dataclass
class ReportingGateway(FakeGateway):
    """A fake gateway that also reports replica URLs per function."""

    replica_urls: dict[str, list[str]] = field(default_factory=dict)
    """NAME -> the URLs that /system/function-endpoints/NAME lists."""
    report_requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path and query, Authorization header) of each report request."""
    exec_timeouts: dict[str, float] = field(default_factory=dict)
    """NAME -> the exec_timeout_s that its report carries; none by default."""
    direct_calls: list[dict[str, int]] = field(default_factory=list)
    """Bodies of the reports of direct calls that the connector posted."""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/system/namespaces", self._namespaces)
        app.router.add_get("/system/functions", self._list_functions)
        app.router.add_get("/system/function-endpoints/{name}", self._report)
        app.router.add_post(DIRECT_INVOCATIONS_PATH, self._count_direct_calls)
        app.router.add_post("/function/{name}", self._invoke)
        app.router.add_post("/async-function/{name}", self._invoke)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def _report(self, request: web.Request) -> web.Response:
        self.report_requests.append(
            (request.path_qs, request.headers.get("Authorization"))
        )
        name = request.match_info["name"]
        urls = self.replica_urls.get(name, [])
        return web.json_response(
            {"urls": urls, "ttl_s": 30, "exec_timeout_s": self.exec_timeouts.get(name)}
        )

    async def _count_direct_calls(self, request: web.Request) -> web.Response:
        self.direct_calls.append(await request.json())
        return web.Response(status=204)


@dataclass
class Replica:
    """A function replica that records each request and echoes its body."""

    port: int
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    header_lists: list[list[tuple[str, str]]] = field(default_factory=list)
    """Each request's headers as sent, repeats and order kept."""
    delay_s: float = 0.0
    """Seconds to wait before each response."""
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._invoke)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _invoke(self, request: web.Request) -> web.Response:
        body = await request.read()
        header_list = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in request.raw_headers
        ]
        self.header_lists.append(header_list)
        self.requests.append((request.path_qs, dict(header_list), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(body=body)


@pytest.fixture
async def gateway() -> AsyncIterator[ReportingGateway]:
    fake = ReportingGateway(port=free_port())
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    server = Replica(port=free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def started(gateway: FakeGateway, **overrides: Any) -> AsyncIterator[Connector]:
    values = settings_values(gateway_url=gateway.url, **overrides)
    for kafka_only in ("commit_interval_s", "session_timeout_s"):
        values.pop(kafka_only)
    connector = Connector(ConnectorSettings(**values), name="test")
    await connector.start()
    try:
        await asyncio.wait_for(connector.wait_until_ready(), 5)
        yield connector
    finally:
        await connector.close()


def message(body: bytes = b"hello") -> Message:
    return Message(
        topic="orders",
        body=body,
        headers=[("x-kafka-key", "k1")],
        identity="orders/1",
    )


async def test_sync_call_goes_to_replica(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]

    async with started(gateway, gateway_user="admin", gateway_password="pw") as hub:
        report = await hub.deliver(message())

    [result] = report.results
    assert result.status == 200
    assert result.body == b"hello"
    assert gateway.invocations == []
    [(path, headers, body)] = replica.requests
    assert path == "/"
    assert body == b"hello"
    assert headers["X-Kafka-Key"] == "k1"
    assert headers["X-Topic"] == "orders"
    assert headers["X-Connector"] == "test-connector"
    assert headers["X-Call-Id"] == result.call_id
    assert headers["Content-Type"] == "text/plain"
    assert abs(int(headers["X-Start-Time"]) - time.time_ns()) < 60 * 10**9
    assert headers["X-Forwarded-Host"] == f"{LOOPBACK}:{gateway.port}"
    assert headers["X-Forwarded-For"] == LOOPBACK
    assert "Authorization" not in headers
    credentials = "Basic " + base64.b64encode(b"admin:pw").decode()
    assert gateway.report_requests == [
        ("/system/function-endpoints/a?namespace=openfaas-fn", credentials)
    ]


@pytest.mark.parametrize(
    "content_type",
    [pytest.param("text/plain", id="content-type"), pytest.param("", id="none")],
)
async def test_replica_request_headers_exact(
    gateway: ReportingGateway, replica: Replica, content_type: str
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    sent = Message(
        topic="orders",
        body=b"hello",
        headers=[
            ("X-Kafka-Offset", "7"),
            ("x-kafka-tag", "a"),
            ("x-kafka-tag", "b"),
            ("traceparent", traceparent),
        ],
        identity="orders/1",
    )

    async with started(
        gateway,
        gateway_user="admin",
        gateway_password="pw",
        content_type=content_type,
    ) as hub:
        # The second delivery repeats the message, as a redelivery does.
        for _ in range(2):
            await hub.deliver(sent)

    expected = [
        ("Host", f"{LOOPBACK}:{replica.port}"),
        ("User-Agent", f"faashub-test/{__version__}"),
        ("X-Kafka-Offset", "7"),
        ("X-Kafka-Tag", "a"),
        ("X-Kafka-Tag", "b"),
        ("Traceparent", traceparent),
        ("X-Topic", "orders"),
        ("X-Connector", "test-connector"),
        ("X-Forwarded-Host", f"{LOOPBACK}:{gateway.port}"),
        ("X-Forwarded-For", LOOPBACK),
        ("X-Call-Id", call_id_for("orders/1", FunctionRef("a", "openfaas-fn"))),
        ("Content-Length", "5"),
    ]
    if content_type:
        expected.append(("Content-Type", content_type))
    first, second = replica.header_lists
    for headers in (first, second):
        start_times = [value for name, value in headers if name == "X-Start-Time"]
        assert len(start_times) == 1
        assert start_times[0].isdigit()
        rest = [item for item in headers if item[0] != "X-Start-Time"]
        assert sorted(rest) == sorted(expected)
        assert [value for name, value in headers if name == "X-Kafka-Tag"] == [
            "a",
            "b",
        ]


async def test_report_cached_between_calls(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]

    async with started(gateway) as hub:
        for _ in range(3):
            await hub.deliver(message())

    assert len(replica.requests) == 3
    assert len(gateway.report_requests) == 1


async def test_no_replica_urls_uses_gateway(gateway: ReportingGateway) -> None:
    gateway.deploy("a", "orders")

    async with started(gateway) as hub:
        report = await hub.deliver(message())

    assert report.results[0].status == 200
    [call] = gateway.received("a")
    assert call.route == "function"
    assert call.header("X-Start-Time") is None
    assert len(gateway.report_requests) == 1


async def test_refused_replica_falls_back(gateway: ReportingGateway) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [f"http://{LOOPBACK}:{free_port()}"]

    async with started(gateway) as hub:
        first = await hub.deliver(message())
        second = await hub.deliver(message())

    assert first.results[0].status == 200
    assert first.results[0].attempts == 1
    assert second.results[0].status == 200
    assert len(gateway.received("a")) == 2
    # The refusal dropped the cached report, so the second call asked again.
    assert len(gateway.report_requests) == 2


async def test_report_failure_uses_gateway(gateway: FakeGateway) -> None:
    # The plain fake gateway has no report route, so it returns 404.
    gateway.deploy("a", "orders")

    async with started(gateway) as hub:
        report = await hub.deliver(message())

    assert report.results[0].status == 200
    assert len(gateway.received("a")) == 1


async def test_async_invocation_skips_replicas(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]

    async with started(gateway, async_invocation=True) as hub:
        report = await hub.deliver(message())

    assert report.results[0].status == 202
    assert [call.route for call in gateway.received("a")] == ["async-function"]
    assert replica.requests == []
    assert gateway.report_requests == []


async def test_invoke_replicas_off_uses_gateway(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]

    async with started(gateway, invoke_replicas=False) as hub:
        await hub.deliver(message())

    assert len(gateway.received("a")) == 1
    assert replica.requests == []
    assert gateway.report_requests == []


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def success_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[Any]:
    return [record for record in caplog.records if record.getMessage() == text]


async def test_success_lines_limited_per_second(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.core.connector")
    gateway.deploy("a", "orders")
    extra = 7

    async with started(gateway) as hub:
        clock = FakeClock()
        hub._success_log = connector_module._SuccessLog(clock=clock)
        for _ in range(RESULT_LINES_PER_S + extra):
            await hub.deliver(message())
        assert len(success_lines(caplog, "function invoked")) == RESULT_LINES_PER_S
        assert success_lines(caplog, "function invocations not logged") == []

        clock.now_s += 1.5
        await hub.deliver(message())
        [summary] = success_lines(caplog, "function invocations not logged")
        assert summary.__dict__["ctx"]["invocations"] == extra
        assert summary.__dict__["ctx"]["over_s"] == 1.5
        assert len(success_lines(caplog, "function invoked")) == RESULT_LINES_PER_S + 1


async def test_summary_written_at_close(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.core.connector")
    gateway.deploy("a", "orders")

    async with started(gateway) as hub:
        hub._success_log = connector_module._SuccessLog(clock=FakeClock())
        for _ in range(RESULT_LINES_PER_S + 3):
            await hub.deliver(message())

    [summary] = success_lines(caplog, "function invocations not logged")
    assert summary.__dict__["ctx"]["invocations"] == 3


async def test_failures_always_logged(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.core.connector")
    gateway.deploy("a", "orders")
    gateway.respond("a", status=404)
    count = RESULT_LINES_PER_S + 5

    async with started(gateway) as hub:
        hub._success_log = connector_module._SuccessLog(clock=FakeClock())
        for _ in range(count):
            await hub.deliver(message())

    assert len(success_lines(caplog, "function invocation failed")) == count


async def test_replica_exec_timeout_ends_call(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]
    gateway.exec_timeouts["a"] = 0.3
    replica.delay_s = 3.0

    async with started(gateway, retry_attempts=1) as hub:
        started_s = time.monotonic()
        report = await hub.deliver(message())
        elapsed_s = time.monotonic() - started_s

    [result] = report.results
    assert result.status == 504
    assert result.error == (
        "Function a.openfaas-fn did not respond within its exec timeout of 0.3 s. "
        "Raise exec_timeout in its envVars if it needs longer, or set it to 0 for "
        "no timeout."
    )
    assert elapsed_s < 2.5
    assert gateway.invocations == []


async def test_direct_calls_reported_to_gateway(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]

    async with started(gateway) as hub:
        for _ in range(2):
            await hub.deliver(message())
        await wait_until(
            lambda: (
                sum(report.get("a.openfaas-fn", 0) for report in gateway.direct_calls)
                == 2
            ),
            timeout_s=5.0,
            description="2 direct calls reported",
        )

    assert len(replica.requests) == 2
    assert gateway.invocations == []


async def test_provider_failure_reason_through_gateway(
    gateway: ReportingGateway,
) -> None:
    gateway.deploy("a", "orders")
    text = "Function a.openfaas-fn did not respond within its exec timeout of 2 s."
    gateway.respond(
        "a",
        status=504,
        reply_body=text.encode(),
        reply_headers={"X-OpenFaaS-Internal": "proxy"},
    )

    async with started(gateway, retry_attempts=1) as hub:
        report = await hub.deliver(message())

    [result] = report.results
    assert result.status == 504
    assert result.error == f"The provider returned HTTP 504 for a.openfaas-fn: {text}"


async def test_closing_connector_reports_last_direct_calls(
    gateway: ReportingGateway, replica: Replica
) -> None:
    gateway.deploy("a", "orders")
    gateway.replica_urls["a"] = [replica.url]

    async with started(gateway) as hub:
        await hub.deliver(message())
    # The connector closed well within its 2 s report interval.

    assert gateway.direct_calls == [{"a.openfaas-fn": 1}]
