"""The body read timeout of `/function/...`, driven by a raw socket.

An HTTP client library sends a body as fast as it can, so a raw socket plays
the slow client: it sends the request head and part of the body, then stalls.
The sync proxy runs alone under uvicorn, with the gateway's HTTP protocol,
so that the test sets its body read timeout directly.
"""

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
import uvicorn

from gateway import limits
from gateway.sync_proxy import SyncProxy
from tests.conftest import LOOPBACK, free_port
from tests.gateway.conftest import FakeProvider

pytestmark = pytest.mark.timeout(30)

BODY_TIMEOUT_S = 0.5
# A slow machine gets twenty times the deadline to send the 408.
REPLY_WAIT_S = 10.0


async def stalled_upload_reply(url: str, body_start: bytes) -> bytes:
    """Send a head announcing 100 body bytes and `body_start`, then stall."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(
            b"POST /function/echo HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Length: 100\r\n\r\n" + body_start
        )
        await writer.drain()
        return await asyncio.wait_for(reader.read(), REPLY_WAIT_S)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def proxy_url(provider: FakeProvider) -> AsyncIterator[str]:
    """Serve a SyncProxy in front of the fake provider; return its base URL."""
    async with aiohttp.ClientSession() as session:
        proxy = SyncProxy(
            session,
            provider.url,
            upstream_timeout_s=REPLY_WAIT_S,
            body_read_timeout_s=BODY_TIMEOUT_S,
        )
        port = free_port()
        config = uvicorn.Config(
            proxy,
            host=LOOPBACK,
            port=port,
            http=limits.http_protocol(header_read_timeout_s=REPLY_WAIT_S),
            lifespan="off",
            access_log=False,
            log_config=None,
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:
                assert not serving.done(), "the proxy did not start"
                await asyncio.sleep(0.02)
            yield f"http://{LOOPBACK}:{port}"
        finally:
            provider.release.set()
            server.should_exit = True
            await asyncio.wait_for(serving, REPLY_WAIT_S)


@pytest.mark.parametrize(
    "body_start", [b"", b'{"partial": '], ids=["no-body", "part-of-body"]
)
async def test_sync_slow_body_gets_408(
    proxy_url: str,
    provider: FakeProvider,
    body_start: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sync_proxy")

    reply = await stalled_upload_reply(proxy_url, body_start)

    assert reply.startswith(b"HTTP/1.1 408 ")
    assert b"body_read_timeout_s" in reply
    assert b"0.5 s" in reply
    assert b"connection: close" in reply.lower()
    # The message names a setting that both 'faashub gateway' and
    # 'faashub up' accept.
    assert b"--body-read-timeout-s of 'faashub gateway'" in reply
    assert b"FAASHUB_BODY_READ_TIMEOUT_S" in reply
    [record] = [r for r in caplog.records if r.message == "request body timed out"]
    assert record.levelno == logging.INFO
    assert record.ctx["function"] == "echo.openfaas-fn"
    assert record.ctx["body_read_timeout_s"] == BODY_TIMEOUT_S
    if not body_start:
        assert provider.received == []


async def test_sync_prompt_body_served(proxy_url: str, provider: FakeProvider) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy_url}/function/echo", data=b"quick") as reply:
            body = await reply.read()

    assert reply.status == 201
    assert body == b"got quick"
    assert provider.received[0].body == b"quick"
