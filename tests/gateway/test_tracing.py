"""W3C Trace Context through the gateway, the queue and the worker.

A real gateway, nats-server and queue-worker run in front of the fake
provider, which plays the function and the callback receiver, so each test
checks the `traceparent` at the far end of every hop.
"""

import uuid

import httpx
import pytest

from faashub.callback_request import callback_headers
from queue_worker.invoke import FunctionResult
from tests.conftest import wait_until_async
from tests.gateway.conftest import FakeProvider, RunningGateway
from tests.queue_worker.conftest import make_call, make_settings, running_worker

pytestmark = pytest.mark.timeout(30)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACESTATE = "vendor=opaque,other=1"


def trace_id(traceparent: str | None) -> str:
    assert traceparent is not None
    return traceparent.split("-")[1]


async def test_sync_call_carries_trace_context(
    client: httpx.AsyncClient, provider: FakeProvider
) -> None:
    response = await client.post(
        "/function/echo",
        content=b"x",
        headers={"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
    )

    assert response.status_code == 201
    [received] = provider.received
    assert received.headers["traceparent"] == TRACEPARENT
    assert received.headers["tracestate"] == TRACESTATE


async def test_async_call_keeps_trace_to_callback(
    nats_url: str,
    gateway: RunningGateway,
    client: httpx.AsyncClient,
    provider: FakeProvider,
) -> None:
    call_id = f"trace-{uuid.uuid4()}"
    response = await client.post(
        "/async-function/echo",
        content=b"queued",
        headers={
            "traceparent": TRACEPARENT,
            "tracestate": TRACESTATE,
            "X-Call-Id": call_id,
            "X-Callback-Url": f"{provider.url}/callback",
        },
    )
    assert response.status_code == 202

    settings = make_settings(nats_url, gateway.url, invoke_replicas=False)
    async with running_worker(settings):

        async def called_back() -> bool:
            return bool(provider.callbacks)

        await wait_until_async(
            called_back, timeout_s=10, description="the callback POST"
        )

    [invocation] = [r for r in provider.received if r.path.startswith("/function/")]
    assert invocation.headers["X-Call-Id"] == call_id
    assert trace_id(invocation.headers.get("traceparent")) == TRACE_ID
    assert invocation.headers["tracestate"] == TRACESTATE
    [callback] = provider.callbacks
    assert callback.headers["X-Call-Id"] == call_id
    assert callback.headers["X-Function-Status"] == "201"
    assert trace_id(callback.headers.get("traceparent")) == TRACE_ID
    assert callback.headers["tracestate"] == TRACESTATE


def test_callback_replaces_function_trace_headers() -> None:
    call = make_call(headers={"Traceparent": TRACEPARENT, "tracestate": TRACESTATE})
    result = FunctionResult(
        status=200,
        headers=[("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")],
    )

    headers = callback_headers(
        call, result.status, result.headers, duration_s=0.1, retry=1, retry_max=3
    )

    trace = [(name, value) for name, value in headers if name.startswith("trace")]
    assert trace == [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)]


def test_callback_without_trace_context() -> None:
    headers = callback_headers(
        make_call(), 200, [], duration_s=0.1, retry=1, retry_max=3
    )

    assert not [name for name, _ in headers if name.lower().startswith("trace")]
