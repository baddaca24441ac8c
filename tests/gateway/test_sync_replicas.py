"""The sync proxy sends calls straight to a replica the provider reports.

The fake provider reports replica URLs on `/system/function-endpoints/NAME`
for the names in `provider.endpoints`. The replica here is a second real
HTTP server that records what it receives.
"""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from multidict import CIMultiDict

from faashub import __version__
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import FakeProvider, ReceivedRequest, RunningGateway

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
