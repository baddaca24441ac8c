"""The invoker's HTTP connections to a real aiohttp server on loopback.

The invoker reads each response and releases it itself, without aiohttp's
response context manager. These tests check that every outcome gives the
connection back to the pool, so that calls keep reusing one connection, and
that a response cut short fails the call without breaking the next one.
"""

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from connectors.core.invoker import Invoker, Message, new_session
from connectors.core.metrics import ConnectorMetrics
from connectors.core.retry import RetryPolicy
from faashub.names import FunctionRef
from tests.conftest import LOOPBACK, free_port

pytestmark = pytest.mark.timeout(20)

FUNCTION = FunctionRef("echo", "openfaas-fn")
CALLS = 5


class PeerRecorder:
    """An aiohttp server that records each request's client port and responds.

    The response has the status in the request's X-Test-Status header (200
    without it) and a 4 KiB body, so that each response has a body to read.
    With X-Test-Truncate, the body is cut short and the connection closed.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.client_ports: list[int] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/function/{name}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        assert request.transport is not None
        self.client_ports.append(request.transport.get_extra_info("peername")[1])
        if "X-Test-Truncate" in request.headers:
            # Promise 4 KiB, send 100 bytes and close the connection.
            response = web.StreamResponse(status=200)
            response.content_length = 4096
            await response.prepare(request)
            await response.write(b"r" * 100)
            request.transport.close()
            return response
        status = int(request.headers.get("X-Test-Status", "200"))
        return web.Response(status=status, body=b"r" * 4096)


@pytest.fixture
async def server() -> AsyncIterator[PeerRecorder]:
    recorder = PeerRecorder()
    await recorder.start()
    yield recorder
    await recorder.stop()


async def invoke_in_turn(server: PeerRecorder, status: int) -> list[int]:
    """Invoke the function CALLS times in sequence and return the statuses."""
    statuses = []
    async with new_session(user_agent="faashub-test") as session:
        invoker = Invoker(
            session,
            gateway_url=server.url,
            connector="test",
            retry=RetryPolicy(attempts=1, min_wait_s=0.01, max_wait_s=0.01),
            metrics=ConnectorMetrics("test"),
            timeout_s=5.0,
        )
        for number in range(CALLS):
            message = Message(
                topic="orders",
                body=b"order",
                headers=[("X-Test-Status", str(status))],
                identity=f"orders/{number}",
            )
            result = await invoker.invoke(FUNCTION, message)
            assert len(result.body) == 4096
            statuses.append(result.status)
    return statuses


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(200, id="success"),
        pytest.param(404, id="final-failure"),
        pytest.param(503, id="retryable-failure"),
    ],
)
async def test_calls_reuse_one_connection(server: PeerRecorder, status: int) -> None:
    statuses = await invoke_in_turn(server, status)

    assert statuses == [status] * CALLS
    assert len(server.client_ports) == CALLS
    assert len(set(server.client_ports)) == 1


async def test_truncated_response_fails_call(server: PeerRecorder) -> None:
    async with new_session(user_agent="faashub-test") as session:
        invoker = Invoker(
            session,
            gateway_url=server.url,
            connector="test",
            retry=RetryPolicy(attempts=1, min_wait_s=0.01, max_wait_s=0.01),
            metrics=ConnectorMetrics("test"),
            timeout_s=5.0,
        )
        cut = Message(
            topic="orders",
            body=b"order",
            headers=[("X-Test-Truncate", "1")],
            identity="orders/1",
        )
        whole = Message(topic="orders", body=b"order", identity="orders/2")

        failed = await invoker.invoke(FUNCTION, cut)
        succeeded = await invoker.invoke(FUNCTION, whole)

    assert failed.status == 503
    assert failed.error.startswith("The request to echo.openfaas-fn failed: ")
    assert "ClientPayloadError" in failed.error
    assert succeeded.status == 200
    assert len(succeeded.body) == 4096
    assert len(set(server.client_ports)) == 2
