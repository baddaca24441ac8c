"""The sync proxy `/function/...` against a real provider-like HTTP server."""

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from faashub import __version__
from tests.conftest import LOOPBACK, free_port, wait_until
from tests.gateway.conftest import (
    BIG_BODY,
    GZIP_TEXT,
    FakeProvider,
    GatewayFactory,
    RunningGateway,
)

pytestmark = pytest.mark.timeout(30)


async def test_sync_forwards_request(
    client: httpx.AsyncClient, provider: FakeProvider, gateway: RunningGateway
) -> None:
    response = await client.post(
        "/function/echo/a/b%20c?x=1&y=two",
        content=b"hello",
        headers={"X-Custom": "value", "Content-Type": "text/plain"},
    )

    assert len(provider.received) == 1
    received = provider.received[0]
    assert received.method == "POST"
    assert received.path == "/function/echo/a/b%20c"
    assert received.query == "x=1&y=two"
    assert received.body == b"hello"
    assert received.headers["X-Custom"] == "value"
    assert received.headers["Content-Type"] == "text/plain"
    assert received.headers["X-Forwarded-For"] == LOOPBACK
    assert received.headers["X-Forwarded-Host"] == gateway.url.removeprefix("http://")
    assert received.headers.getall("X-Start-Time")[0].isdigit()

    assert response.status_code == 201
    assert response.content == b"got hello"
    assert response.headers["X-Function-Header"] == "yes"
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers["X-Served-By"] == f"faashub/{__version__}"


async def test_sync_generates_call_id(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.get("/function/echo")

    call_id = response.headers["X-Call-Id"]
    assert uuid.UUID(call_id)
    assert provider.received[0].headers["X-Call-Id"] == call_id
    assert response.headers["X-Start-Time"].isdigit()


async def test_sync_keeps_caller_call_id(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.get(
        "/function/echo", headers={"X-Call-Id": "caller-id", "X-Start-Time": "1"}
    )

    received = provider.received[0]
    assert received.headers.getall("X-Call-Id") == ["caller-id"]
    assert response.headers["X-Call-Id"] == "caller-id"
    start_times = received.headers.getall("X-Start-Time")
    assert len(start_times) == 1
    assert start_times[0] != "1"
    assert response.headers["X-Start-Time"] == start_times[0]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        pytest.param("ünï".encode(), "'ünï'", id="utf-8"),
        pytest.param(b"tab\there", "'tab\\there'", id="control-character"),
    ],
)
async def test_sync_rejects_non_ascii_call_id(
    client: httpx.AsyncClient, provider: FakeProvider, value: bytes, shown: str
) -> None:
    response = await client.get("/function/echo", headers={"X-Call-Id": value})

    assert response.status_code == 400
    assert f"Invalid X-Call-Id {shown}" in response.text
    assert provider.received == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
async def test_sync_keeps_method(
    client: httpx.AsyncClient, provider: FakeProvider, method: str
) -> None:
    response = await client.request(method, "/function/echo")

    assert response.status_code == 201
    assert provider.received[0].method == method
    assert response.content == (b"" if method == "HEAD" else b"got ")


async def test_sync_keeps_namespace_in_path(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    await client.get("/function/echo.staging/x")

    assert provider.received[0].path == "/function/echo.staging/x"


async def test_sync_drops_hop_by_hop_headers(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.get(
        "/function/echo",
        headers={
            "Connection": "X-Only-This-Hop",
            "X-Only-This-Hop": "1",
            "Proxy-Authorization": "Basic abc",
            "X-Kept": "1",
        },
    )

    received = provider.received[0]
    assert "X-Only-This-Hop" not in received.headers
    assert "Proxy-Authorization" not in received.headers
    assert received.headers["X-Kept"] == "1"
    assert "Proxy-Authenticate" not in response.headers


async def test_sync_adds_no_client_headers(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    await client.post(
        "/function/echo",
        content=b"x",
        headers={"Accept-Encoding": "identity", "User-Agent": "caller/1"},
    )

    received = provider.received[0]
    assert received.headers.getall("Accept-Encoding") == ["identity"]
    assert received.headers.getall("User-Agent") == ["caller/1"]
    assert "Content-Type" not in received.headers


async def test_sync_passes_compressed_body(client: httpx.AsyncClient) -> None:
    response = await client.get("/function/gzipped")

    assert response.headers["Content-Encoding"] == "gzip"
    assert response.content == GZIP_TEXT


async def test_sync_streams_response(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    async with client.stream("GET", "/function/stream") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert "Content-Length" not in response.headers
        chunks = response.aiter_raw()
        # The first event arrives before the provider has sent the second.
        assert await anext(chunks) == b"data: one\n\n"
        provider.release.set()
        rest = b"".join([chunk async for chunk in chunks])

    assert rest == b"data: two\n\n"


async def test_sync_stops_stream_when_caller_leaves(
    gateway: RunningGateway, provider: FakeProvider
) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http_client:
        async with http_client.stream("GET", "/function/stream") as response:
            assert await anext(response.aiter_raw()) == b"data: one\n\n"

    # The gateway closes its provider connection once the caller is gone.
    await asyncio.wait_for(provider.stream_abandoned.wait(), timeout=5)


async def test_sync_large_response(client: httpx.AsyncClient) -> None:
    response = await client.get("/function/big")

    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(BIG_BODY))
    assert response.content == BIG_BODY


async def test_sync_large_upload(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    body = bytes(range(256)) * 20_000  # about 5 MB, many ASGI messages

    response = await client.put("/function/echo", content=body)

    assert response.status_code == 201
    received = provider.received[0]
    assert hashlib.sha256(received.body).digest() == hashlib.sha256(body).digest()
    assert received.headers["Content-Length"] == str(len(body))


async def test_sync_chunked_upload(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        # Spaced out, so that the gateway gets them in several messages and
        # streams them on instead of sending one body.
        for index in range(5):
            yield f"piece {index};".encode()
            await asyncio.sleep(0.05)

    response = await client.post("/function/echo", content=pieces())

    assert response.status_code == 201
    received = provider.received[0]
    assert received.body == b"piece 0;piece 1;piece 2;piece 3;piece 4;"
    assert "Content-Length" not in received.headers
    assert received.headers["Transfer-Encoding"] == "chunked"


async def test_sync_stopped_provider_503(
    nats_url: str, caplog: pytest.LogCaptureFixture, start_gateway: GatewayFactory
) -> None:
    dead_url = f"http://{LOOPBACK}:{free_port()}"
    gateway = await start_gateway(nats_url=nats_url, provider_url=dead_url)

    with caplog.at_level(logging.WARNING, logger="gateway"):
        async with httpx.AsyncClient(base_url=gateway.url) as http_client:
            response = await http_client.post(
                "/function/echo", content=b"x", headers={"X-Call-Id": "id-503"}
            )

    # Nothing reached the function, so the caller may retry.
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert response.headers["X-Call-Id"] == "id-503"
    assert "'echo'" in response.text
    assert dead_url in response.text
    assert "Nothing was sent to the function" in response.text
    warnings = [
        record for record in caplog.records if record.name == "gateway.sync_proxy"
    ]
    assert len(warnings) == 1
    context = vars(warnings[0])["ctx"]
    assert context["function"] == "echo.openfaas-fn"
    assert context["call_id"] == "id-503"


async def test_sync_debug_line_has_namespace(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="gateway.sync_proxy"):
        response = await client.post(
            "/function/echo", content=b"x", headers={"X-Call-Id": "id-debug"}
        )

    assert response.status_code == 201

    def proxied() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "proxied call"]

    # The line is written after the response went out.
    await wait_until(lambda: bool(proxied()), description="the proxied call line")
    [record] = proxied()
    context = vars(record)["ctx"]
    assert context["function"] == "echo.openfaas-fn"
    assert context["call_id"] == "id-debug"
    assert context["status"] == 201


async def test_sync_slow_provider_504(
    nats_url: str, provider: FakeProvider, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(nats_url=nats_url, upstream_timeout_s=0.5)

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.get(
            "/function/slow", headers={"X-Call-Id": "id-504"}
        )

    assert response.status_code == 504
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert response.headers["X-Call-Id"] == "id-504"
    assert "'slow'" in response.text
    assert "0.5 s" in response.text
    assert "upstream_timeout_s" in response.text
    assert len(provider.received) == 1


async def test_sync_slow_streamed_upload_504(
    nats_url: str, provider: FakeProvider, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(nats_url=nats_url, upstream_timeout_s=0.5)

    async def pieces() -> AsyncIterator[bytes]:
        yield b"piece 0;"
        yield b"piece 1;"

    async with httpx.AsyncClient(base_url=gateway.url) as http_client:
        response = await http_client.post("/function/slow", content=pieces())

    assert response.status_code == 504
    assert response.headers["X-OpenFaaS-Internal"] == "gateway"
    assert "upstream_timeout_s" in response.text


async def test_sync_provider_404_passes_through(client: httpx.AsyncClient) -> None:
    response = await client.get("/function/missing")

    assert response.status_code == 404
    assert response.text == "function not found"
    assert "X-OpenFaaS-Internal" not in response.headers


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Bad_Name", id="uppercase-underscore"),
        pytest.param("", id="empty"),
        pytest.param("echo.Bad", id="bad-namespace"),
    ],
)
async def test_sync_invalid_name_400(
    client: httpx.AsyncClient, provider: FakeProvider, name: str
) -> None:
    response = await client.get(f"/function/{name}")

    assert response.status_code == 400
    assert repr(name.rpartition(".")[2] or name) in response.text
    assert provider.received == []
