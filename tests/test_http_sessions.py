"""faashub.http_sessions against a real server that drops connections.

The server counts the requests it reads and closes each connection without
a response, as a function that crashes on a request does.
"""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from faashub import http_sessions
from tests.conftest import LOOPBACK, free_port

REPOSITORY = Path(__file__).resolve().parent.parent

# Every method that aiohttp 3.14 resends after a dropped connection, and POST.
METHODS = ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", "POST"]


class DroppingServer:
    """A server that counts the request heads it reads.

    By default it closes each connection after the first request head. With
    `respond`, it answers 200 on the same connection, except to a path that
    contains `/drop`.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self, *, respond: bool = False) -> None:
        self._respond = respond
        port = free_port()
        self._server = await asyncio.start_server(self._serve, LOOPBACK, port)
        self.url = f"http://{LOOPBACK}:{port}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                if not self._respond or b"/drop" in head.split(b"\r\n", 1)[0]:
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@pytest.fixture
async def server() -> AsyncIterator[DroppingServer]:
    dropping = DroppingServer()
    await dropping.start()
    yield dropping
    await dropping.close()


@pytest.fixture
async def keep_alive_server() -> AsyncIterator[DroppingServer]:
    responding = DroppingServer()
    await responding.start(respond=True)
    yield responding
    await responding.close()


@pytest.mark.parametrize("method", METHODS)
async def test_dropped_request_sent_once(server: DroppingServer, method: str) -> None:
    async with http_sessions.new_session() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.request(method, server.url + "/drop")

    assert server.requests == 1
    assert server.connections == 1


async def test_reused_connection_drop_sent_once(
    keep_alive_server: DroppingServer,
) -> None:
    async with http_sessions.new_session() as session:
        async with session.get(keep_alive_server.url + "/ok") as response:
            assert await response.read() == b"ok"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.put(keep_alive_server.url + "/drop")

    assert keep_alive_server.requests == 2
    assert keep_alive_server.connections == 1


async def test_plain_aiohttp_session_resends(server: DroppingServer) -> None:
    """Show that the server above detects a resend.

    If this fails, aiohttp no longer resends on its own, and the setting in
    `faashub.http_sessions` may go.
    """
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.get(server.url + "/drop")

    assert server.requests == 2


async def test_idle_connection_not_reused(keep_alive_server: DroppingServer) -> None:
    async with http_sessions.new_session() as session:
        for _ in range(2):
            async with session.get(keep_alive_server.url + "/ok") as response:
                assert await response.read() == b"ok"
        await asyncio.sleep(http_sessions.IDLE_CONNECTION_TIMEOUT_S + 0.2)
        async with session.get(keep_alive_server.url + "/ok") as response:
            assert await response.read() == b"ok"

    assert keep_alive_server.requests == 3
    assert keep_alive_server.connections == 2


# Modules that send calls to functions or callback receivers.
CALLING_MODULES = [
    "faashub/callback_guard.py",
    "gateway/app.py",
    "gateway/sync_proxy.py",
    "provider/local/backend.py",
    "provider/local/http_mode.py",
    "provider/kubernetes/proxy.py",
    "queue_worker/worker.py",
    "connectors/core/invoker.py",
]


@pytest.mark.parametrize("module", CALLING_MODULES)
def test_calling_module_builds_no_plain_session(module: str) -> None:
    source = (REPOSITORY / module).read_text(encoding="utf-8")

    assert "ClientSession(" not in source
    assert "TCPConnector(" not in source
