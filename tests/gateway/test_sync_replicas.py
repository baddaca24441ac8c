"""The sync proxy sends calls straight to a replica the provider reports.

The fake provider reports replica URLs on `/system/function-endpoints/NAME`
for the names in `provider.endpoints`. The replica here is a second real
HTTP server that records what it receives.
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

from faashub import __version__, incomplete_response
from faashub.incomplete_response import (
    UVICORN_INCOMPLETE_RESPONSE,
    IncompleteResponseFilter,
)
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import (
    FakeProvider,
    GatewayFactory,
    ReceivedRequest,
    RunningGateway,
    wait_until_healthy,
)

pytestmark = pytest.mark.timeout(30)


class Replica:
    """A function replica: responds 200 with `replica <body>` and records requests."""

    def __init__(self) -> None:
        self.url = ""
        self.received: list[ReceivedRequest] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            ReceivedRequest(
                method=request.method,
                path=request.rel_url.raw_path,
                query=request.rel_url.raw_query_string,
                headers=CIMultiDict(request.headers),
                body=body,
                raw_headers=request.raw_headers,
            )
        )
        return web.Response(
            body=b"replica " + body, headers={"X-Replica": "yes", "Date": "old"}
        )


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    served = Replica()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", served.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    served.url = f"http://{LOOPBACK}:{port}"
    try:
        yield served
    finally:
        await runner.cleanup()


def function_calls(provider: FakeProvider) -> list[ReceivedRequest]:
    return [item for item in provider.received if item.path.startswith("/function/")]


async def test_reported_replica_gets_call(
    client: httpx.AsyncClient,
    provider: FakeProvider,
    replica: Replica,
    gateway: RunningGateway,
) -> None:
    provider.endpoints["echo"] = [replica.url + "/"]

    response = await client.post(
        "/function/echo/a/b%20c?x=1&y=two",
        content=b"hello",
        headers={"X-Custom": "value", "Connection": "keep-alive, X-Hop"},
    )

    assert response.status_code == 200
    assert response.content == b"replica hello"
    assert response.headers["X-Replica"] == "yes"
    assert response.headers["X-Served-By"] == f"faashub/{__version__}"
    assert response.headers["Date"] != "old"
    call_id = response.headers["X-Call-Id"]
    assert function_calls(provider) == []
    assert provider.endpoint_queries == [("echo", "")]

    assert len(replica.received) == 1
    received = replica.received[0]
    assert received.method == "POST"
    assert received.path == "/a/b%20c"
    assert received.query == "x=1&y=two"
    assert received.body == b"hello"
    assert received.headers["X-Custom"] == "value"
    assert received.headers["X-Call-Id"] == call_id
    assert received.headers["X-Start-Time"] == response.headers["X-Start-Time"]
    assert received.headers["X-Forwarded-For"] == LOOPBACK
    assert received.headers["X-Forwarded-Host"] == gateway.url.removeprefix("http://")
    assert "X-Hop" not in received.headers


async def test_replica_header_names_canonical(
    client: httpx.AsyncClient, provider: FakeProvider, replica: Replica
) -> None:
    provider.endpoints["echo"] = [replica.url]

    await client.get("/function/echo", headers={"x-custom-thing": "1"})

    raw_names = [name for name in replica.received[0].headers]
    assert "X-Custom-Thing" in raw_names
    assert "X-Call-Id" in raw_names
    assert replica.received[0].path == "/"


async def test_report_cached_across_calls(
    client: httpx.AsyncClient, provider: FakeProvider, replica: Replica
) -> None:
    provider.endpoints["echo"] = [replica.url]

    for _ in range(3):
        response = await client.get("/function/echo.team-a")
        assert response.status_code == 200

    assert provider.endpoint_queries == [("echo", "team-a")]
    assert len(replica.received) == 3


async def test_refused_replica_falls_back(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    provider.endpoints["echo"] = [dead_url]

    first = await client.post("/function/echo", content=b"one")
    second = await client.post("/function/echo", content=b"two")

    assert first.status_code == 201
    assert first.content == b"got one"
    assert second.content == b"got two"
    assert [item.body for item in function_calls(provider)] == [b"one", b"two"]
    # The refusal dropped the report, so the second call asked again.
    assert provider.endpoint_queries == [("echo", ""), ("echo", "")]


async def test_refused_replica_chunked_upload(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    provider.endpoints["echo"] = [f"http://{LOOPBACK}:{free_port()}"]

    async def pieces() -> AsyncIterator[bytes]:
        for index in range(3):
            yield f"piece {index};".encode()

    response = await client.post("/function/echo", content=pieces())

    assert response.status_code == 201
    assert response.content == b"got piece 0;piece 1;piece 2;"


async def test_no_report_falls_back(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.post("/function/echo", content=b"hi")

    assert response.status_code == 201
    assert response.content == b"got hi"
    assert provider.endpoint_queries == [("echo", "")]
    assert len(function_calls(provider)) == 1


async def test_zero_replicas_falls_back(
    client: httpx.AsyncClient, provider: FakeProvider, replica: Replica
) -> None:
    provider.endpoints["echo"] = []

    response = await client.post("/function/echo", content=b"cold")

    assert response.status_code == 201
    assert response.content == b"got cold"
    assert len(function_calls(provider)) == 1
    assert replica.received == []


async def test_non_http_report_falls_back(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    provider.endpoints["echo"] = ["file:///etc/passwd"]

    response = await client.get("/function/echo")

    assert response.status_code == 201
    assert len(function_calls(provider)) == 1


def raw_header(received: ReceivedRequest, name: bytes) -> bytes:
    """Return the bytes of the one header called `name`, in any case."""
    [value] = [
        value for key, value in received.raw_headers if key.lower() == name.lower()
    ]
    return value


# Each header the caller sends, and the bytes the function must receive.
HEADER_BYTES = [
    (b"X-Ascii", b"plain value", b"plain value"),
    (b"X-Utf8", b"h\xc3\xa9llo \xe2\x82\xac", b"h\xc3\xa9llo \xe2\x82\xac"),
]


@pytest.mark.parametrize("route", ["replica", "provider"])
async def test_header_bytes_reach_function(
    client: httpx.AsyncClient,
    provider: FakeProvider,
    replica: Replica,
    route: str,
) -> None:
    if route == "replica":
        provider.endpoints["echo"] = [replica.url]
    headers = [(name, sent) for name, sent, _ in HEADER_BYTES]

    response = await client.post("/function/echo", content=b"x", headers=headers)

    assert response.status_code in (200, 201)
    if route == "replica":
        [received] = replica.received
    else:
        [received] = function_calls(provider)
        assert replica.received == []
    for name, _, expected in HEADER_BYTES:
        assert raw_header(received, name) == expected, name


@pytest.mark.parametrize("route", ["replica", "provider"])
async def test_non_utf8_header_rejected(
    client: httpx.AsyncClient,
    provider: FakeProvider,
    replica: Replica,
    route: str,
) -> None:
    if route == "replica":
        provider.endpoints["echo"] = [replica.url]

    response = await client.post(
        "/function/echo",
        content=b"x",
        headers=[(b"X-Latin1", b"secret h\xe9llo")],
    )

    assert response.status_code == 400
    assert "header X-Latin1 is not valid UTF-8" in response.text
    assert "Send it as UTF-8" in response.text
    assert "secret" not in response.text
    assert replica.received == []
    assert function_calls(provider) == []


async def test_replica_closing_early_is_named(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    async def hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    provider.endpoints["echo"] = [f"http://{LOOPBACK}:{port}"]
    try:
        response = await client.post("/function/echo", content=b"x" * 100_000)
    finally:
        server.close()
        await server.wait_closed()

    assert response.status_code == 502
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert "closed the connection before it sent a whole response" in response.text
    assert "stopped by a scale-down or an update" in response.text
    assert LOOPBACK not in response.text
    assert function_calls(provider) == []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "POST"])
async def test_replica_hanging_up_gets_call_once(
    client: httpx.AsyncClient, provider: FakeProvider, method: str
) -> None:
    call_ids: list[bytes] = []

    async def hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        call_ids.extend(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"x-call-id:")
        )
        writer.close()

    server = await asyncio.start_server(hang_up, LOOPBACK, free_port())
    port = server.sockets[0].getsockname()[1]
    provider.endpoints["echo"] = [f"http://{LOOPBACK}:{port}"]
    try:
        response = await client.request(method, "/function/echo/crash")
    finally:
        server.close()
        await server.wait_closed()

    assert response.status_code == 502
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert "Retry-After" not in response.headers
    assert call_ids == [response.headers["X-Call-Id"].encode()]
    assert function_calls(provider) == []


class SlowReplica:
    """A replica whose `/hang` never responds and whose `/trickle` stops midway."""

    def __init__(self) -> None:
        self.url = ""
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/trickle":
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(b"first piece;")
            await self.release.wait()
            return response
        if request.path == "/hang":
            await self.release.wait()
        return web.Response(text="quick")


@pytest.fixture
async def slow_replica() -> AsyncIterator[SlowReplica]:
    served = SlowReplica()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", served.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    served.url = f"http://{LOOPBACK}:{port}"
    try:
        yield served
    finally:
        served.release.set()
        await runner.cleanup()


async def test_replica_exec_timeout_gives_504(
    client: httpx.AsyncClient, provider: FakeProvider, slow_replica: SlowReplica
) -> None:
    provider.endpoints["echo"] = [slow_replica.url]
    provider.exec_timeouts["echo"] = 0.5

    started_s = time.monotonic()
    response = await client.get("/function/echo/hang")
    elapsed_s = time.monotonic() - started_s
    quick = await client.get("/function/echo/fast")

    assert response.status_code == 504
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert response.text == (
        "Function echo did not respond within its exec timeout of 0.5 s. Raise "
        "exec_timeout in its envVars if it needs longer, or set it to 0 for no "
        "timeout.\n"
    )
    assert 0.5 <= elapsed_s < 3.0
    assert quick.status_code == 200
    assert function_calls(provider) == []


async def test_replica_exec_timeout_ends_body(
    client: httpx.AsyncClient,
    provider: FakeProvider,
    slow_replica: SlowReplica,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider.endpoints["echo"] = [slow_replica.url]
    provider.exec_timeouts["echo"] = 0.5
    received = b""

    with caplog.at_level(logging.WARNING):
        async with client.stream("GET", "/function/echo/trickle") as response:
            with pytest.raises(httpx.RemoteProtocolError):
                async for chunk in response.aiter_raw():
                    received += chunk
        # uvicorn logs after the handler returns, in the gateway's thread.
        await asyncio.sleep(0.2)

    assert response.status_code == 200
    assert received == b"first piece;"
    messages = [record.getMessage() for record in caplog.records]
    assert "provider response broke off" in messages
    [warning] = [
        record
        for record in caplog.records
        if record.getMessage() == "provider response broke off"
    ]
    assert warning.__dict__["ctx"]["error"] == "exceeded its exec timeout of 0.5 s"
    assert warning.__dict__["ctx"]["call_id"] == response.headers["X-Call-Id"]
    assert UVICORN_INCOMPLETE_RESPONSE not in messages


async def test_upstream_timeout_without_exec_timeout(
    provider: FakeProvider,
    slow_replica: SlowReplica,
    start_gateway: GatewayFactory,
    nats_url: str,
) -> None:
    provider.endpoints["echo"] = [slow_replica.url]
    gateway = await start_gateway(nats_url=nats_url, upstream_timeout_s=0.5)
    await wait_until_healthy(gateway.url)

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.get("/function/echo/hang")

    assert response.status_code == 504
    assert "(upstream_timeout_s)" in response.text


def test_log_filter_drops_marked_line() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord(
            "uvicorn.error", logging.ERROR, __file__, 1, message, None, None
        )

    log_filter = IncompleteResponseFilter()
    unmarked = log_filter.filter(record(UVICORN_INCOMPLETE_RESPONSE))
    context = contextvars.copy_context()
    context.run(incomplete_response.mark_broken_off)
    marked = context.run(log_filter.filter, record(UVICORN_INCOMPLETE_RESPONSE))
    other = context.run(log_filter.filter, record("Exception in ASGI application"))

    assert unmarked is True
    assert marked is False
    assert other is True
