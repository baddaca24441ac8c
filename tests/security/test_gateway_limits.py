"""Slow clients, read timeouts and deploy checks of a real gateway under uvicorn.

The slow clients are raw sockets, because an HTTP client library sends a
request's headers in one piece. The fake provider returns 202 on /system/*,
so that status shows a request got through.
"""

import asyncio
import json
import logging

import httpx
import pytest

from faashub.settings import GatewaySettings
from gateway import limits, system
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import (
    FakeProvider,
    GatewayFactory,
    RunningGateway,
    wait_until_healthy,
)

pytestmark = pytest.mark.timeout(60)

USER = "admin"
PASSWORD = "s3cret-password"
# Short deadlines keep the tests quick, and REPLY_WAIT_S leaves a slow machine
# twenty times the deadline.
HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
REPLY_WAIT_S = 10.0


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """Read what the gateway sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), REPLY_WAIT_S)


async def open_socket(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(url.rsplit(":", 1)[1])
    return await asyncio.open_connection(LOOPBACK, port)


async def close_socket(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


async def slow_headers_reply(url: str, *, drip: bool) -> bytes:
    """Send half a request head and stall, or drip it one byte at a time."""
    reader, writer = await open_socket(url)
    try:
        writer.write(b"POST /async-function/echo HTTP/1.1\r\nHost: gateway\r\n")
        await writer.drain()
        reply = asyncio.create_task(read_reply(reader))
        if drip:
            # Each byte comes well inside the deadline, but the whole head
            # never finishes, so a timeout per read would never fire.
            for byte in b"X-Slow: " + b"a" * 200:
                await asyncio.wait([reply], timeout=HEADER_TIMEOUT_S / 5)
                if reply.done():
                    break
                writer.write(bytes([byte]))
        return await reply
    finally:
        await close_socket(writer)


async def test_system_drops_authorization(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, auth_user=USER, auth_password=PASSWORD
    )
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.post(
            "/system/functions",
            json={"service": "echo", "image": "echo:1"},
            auth=(USER, PASSWORD),
            headers={"X-Custom": "kept"},
        )
    assert response.status_code == 202
    received = provider.received[0]
    assert "Authorization" not in received.headers
    assert received.headers["X-Custom"] == "kept"


async def test_open_system_drops_authorization(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(nats_url=nats_url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.get(
            "/system/functions", headers={"Authorization": "Bearer canary-token"}
        )
    assert response.status_code == 202
    assert "Authorization" not in provider.received[0].headers


BAD_DEPLOYMENTS = [
    pytest.param({"service": "Bad_Name"}, "'Bad_Name'", id="name"),
    pytest.param({"service": "a" * 64}, "'" + "a" * 64 + "'", id="long-name"),
    pytest.param({"image": "echo:1"}, '"service"', id="no-service"),
    pytest.param({"service": "echo", "namespace": "Team A"}, "'Team A'", id="ns"),
    pytest.param({"service": "echo", "namespace": 7}, '"namespace"', id="ns-type"),
    pytest.param(
        {"service": "echo", "labels": {"bad key": "v"}}, "'bad key'", id="label-key"
    ),
    pytest.param(
        {"service": "echo", "labels": {"tier": "not ok"}}, "'not ok'", id="label-value"
    ),
    pytest.param(
        {"service": "echo", "annotations": {"-x/y": "v"}}, "'-x/y'", id="annotation"
    ),
    pytest.param(
        {"service": "echo", "annotations": {"big": "v" * 300_000}},
        "bytes",
        id="annotations-size",
    ),
    pytest.param({"service": "echo", "labels": ["tier"]}, '"labels"', id="labels-type"),
    pytest.param(
        {"service": "echo", "annotations": {"n": 1}}, '"annotations"', id="value-type"
    ),
    pytest.param([], "not a JSON object", id="array"),
]


async def test_deploy_bad_metadata_400(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(nats_url=nats_url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for case in BAD_DEPLOYMENTS:
            deployment, named = case.values
            assert isinstance(named, str)
            created = await client.post("/system/functions", json=deployment)
            updated = await client.put("/system/functions", json=deployment)
            assert created.status_code == 400, case.id
            assert named in created.text, case.id
            assert updated.status_code == 400, case.id
            assert named in updated.text, case.id
    assert provider.received == []


async def test_deploy_checks_pass_good_body(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(nats_url=nats_url)
    deployment = {
        "service": "echo",
        "image": "echo:1",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/name": "echo", "empty": ""},
        "annotations": {"com.openfaas.queue": "fast", "note": "any text at all"},
    }
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        created = await client.post("/system/functions", json=deployment)
        null_maps = await client.put(
            "/system/functions",
            json={"service": "echo", "labels": None, "annotations": None},
        )
        not_json = await client.post("/system/functions", content=b"{oops")
        # Only deploy and update bodies are checked; DELETE goes through.
        deleted = await client.request(
            "DELETE", "/system/functions", content=b'{"functionName": "echo"}'
        )
    assert created.status_code == 202
    assert null_maps.status_code == 202
    assert not_json.status_code == 400
    assert "Invalid JSON" in not_json.text
    assert deleted.status_code == 202
    assert [request.method for request in provider.received] == [
        "POST",
        "PUT",
        "DELETE",
    ]
    assert json.loads(provider.received[0].body) == deployment


async def test_slow_headers_get_408(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, header_read_timeout_s=HEADER_TIMEOUT_S
    )
    stalled = await slow_headers_reply(gateway.url, drip=False)
    dripped = await slow_headers_reply(gateway.url, drip=True)

    reader, writer = await open_socket(gateway.url)
    try:
        silent = await read_reply(reader)
    finally:
        await close_socket(writer)

    for reply in (stalled, dripped, silent):
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert b"header_read_timeout_s" in reply
        assert b"connection: close" in reply


async def test_headers_in_time_served(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(nats_url=nats_url, header_read_timeout_s=2.0)
    await wait_until_healthy(gateway.url)
    reader, writer = await open_socket(gateway.url)
    try:
        for _ in range(2):
            # Headers in two pieces, then a second request on the same
            # connection after a pause: the deadline restarts per request.
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"Host: gateway\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\nOK"), REPLY_WAIT_S)
            assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(1.5)
    finally:
        await close_socket(writer)


async def test_stall_after_whole_request_gets_408(
    nats_url: str, start_gateway: GatewayFactory
) -> None:
    gateway = await start_gateway(
        nats_url=nats_url, header_read_timeout_s=HEADER_TIMEOUT_S
    )
    await wait_until_healthy(gateway.url)
    reader, writer = await open_socket(gateway.url)
    try:
        # One write carries a whole request and the start of a second one,
        # whose head never finishes.
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n"
        )
        await writer.drain()
        reply = await read_reply(reader)
    finally:
        await close_socket(writer)

    first, _, second = reply.partition(b"\r\n\r\nOK")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert second.startswith(b"HTTP/1.1 408 ")
    assert b"header_read_timeout_s" in second


async def test_h11_slow_headers_get_408(nats_url: str, provider: FakeProvider) -> None:
    settings = GatewaySettings(
        host=LOOPBACK,
        port=free_port(),
        provider_url=provider.url,
        nats_url=nats_url,
        header_read_timeout_s=HEADER_TIMEOUT_S,
    )
    gateway = RunningGateway(settings)
    gateway.server.config.http = limits.http_protocol(
        header_read_timeout_s=HEADER_TIMEOUT_S, h11_only=True
    )
    await gateway.start()
    try:
        await wait_until_healthy(gateway.url)
        stalled = await slow_headers_reply(gateway.url, drip=False)
    finally:
        await gateway.stop()
    assert stalled.startswith(b"HTTP/1.1 408 ")
    assert b"header_read_timeout_s" in stalled


@pytest.mark.parametrize(
    "path", ["/async-function/echo", "/system/functions"], ids=["async", "system"]
)
async def test_slow_body_gets_408(
    nats_url: str,
    start_gateway: GatewayFactory,
    provider: FakeProvider,
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.async_accept")
    gateway = await start_gateway(nats_url=nats_url, body_read_timeout_s=BODY_TIMEOUT_S)
    await wait_until_healthy(gateway.url)
    reader, writer = await open_socket(gateway.url)
    try:
        writer.write(
            # A loopback gateway rejects /system requests for other hosts.
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Length: 100\r\n\r\n".encode()
            + b'{"service": '
        )
        await writer.drain()
        reply = await read_reply(reader)
    finally:
        await close_socket(writer)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"body_read_timeout_s" in reply
    assert b"FAASHUB_BODY_READ_TIMEOUT_S" in reply
    assert provider.received == []
    if path.startswith("/async-function/"):
        [record] = [r for r in caplog.records if r.message == "request body timed out"]
        assert record.levelno == logging.INFO
        assert record.ctx["function"] == "echo.openfaas-fn"
        assert record.ctx["body_read_timeout_s"] == BODY_TIMEOUT_S


async def test_system_body_over_limit_413(
    nats_url: str, start_gateway: GatewayFactory, provider: FakeProvider
) -> None:
    gateway = await start_gateway(nats_url=nats_url)
    await wait_until_healthy(gateway.url)
    limit = system.MAX_SYSTEM_BODY_BYTES
    head = "POST /system/secrets HTTP/1.1\r\nHost: localhost\r\n"

    # A declared length over the limit is refused before any body is read.
    reader, writer = await open_socket(gateway.url)
    try:
        writer.write(f"{head}Content-Length: {limit + 1}\r\n\r\n".encode())
        await writer.drain()
        declared = await read_reply(reader)
    finally:
        await close_socket(writer)

    # A chunked body is refused once it passes the limit, not at its end:
    # the gateway responds and closes while the client still sends. Closing
    # with unread data resets the connection, which can discard the response
    # on the client's side, so either outcome ends the upload early.
    reader, writer = await open_socket(gateway.url)
    sent = 0
    streamed = b""
    try:
        writer.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * (256 * 1024)
        reply = asyncio.create_task(read_reply(reader))
        while not reply.done() and sent < 8 * limit:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
        try:
            streamed = await reply
        except ConnectionError:
            pass
    finally:
        await close_socket(writer)
    assert sent < 8 * limit, "the gateway read the whole oversized body"
    assert streamed == b"" or streamed.startswith(b"HTTP/1.1 413 "), streamed[:200]

    assert declared.startswith(b"HTTP/1.1 413 "), declared[:200]
    assert b"4 MiB" in declared
    assert provider.received == []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        fits = await client.post("/system/secrets", content=b"x" * 1024)
    assert fits.status_code == 202
