"""Per-function concurrency limits and fairness between functions."""

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from tests.queue_worker.conftest import (
    RecordingServer,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_empty_stream,
    wait_for_stored,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

LIMIT_TWO = {"com.faashub.max_inflight": "2"}


async def test_function_limit_is_respected(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.functions = {"slow.openfaas-fn": LIMIT_TWO}
    gateway.delay_s = 0.3
    settings = make_settings(nats_url, gateway.url, max_inflight=8)

    async with running_worker(settings):
        for _ in range(6):
            await publish(js, make_call(function="slow"))
        await wait_for_empty_stream(js)

    assert gateway.completed == 6
    assert gateway.max_active_by_function["slow"] == 2


async def test_invalid_limit_is_ignored(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.functions = {"slow.openfaas-fn": {"com.faashub.max_inflight": "0"}}
    gateway.delay_s = 0.3
    settings = make_settings(nats_url, gateway.url, max_inflight=4)

    async with running_worker(settings):
        for _ in range(4):
            await publish(js, make_call(function="slow"))
        await wait_for_empty_stream(js)

    assert gateway.max_active_by_function["slow"] == 4


async def test_slow_backlog_does_not_delay_others(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.functions = {"fn-a.openfaas-fn": LIMIT_TWO, "fn-b.openfaas-fn": {}}
    gateway.delay_by_function = {"fn-a": 1.0}
    settings = make_settings(nats_url, gateway.url, max_inflight=16)
    slow = [make_call(function="fn-a") for _ in range(50)]
    fast = [make_call(function="fn-b") for _ in range(20)]

    async with running_worker(settings):
        await asyncio.gather(*(publish(js, call) for call in slow))
        queued_s = time.monotonic()
        for call in fast:
            await publish(js, call)

        def fast_done() -> bool:
            calls = [r for r in gateway.requests if "/fn-b." in r.raw_path]
            return len(calls) == len(fast) and gateway.active_by_function["fn-b"] == 0

        await wait_until(fast_done, timeout_s=10, description="the 20 calls to B")
        fast_elapsed_s = time.monotonic() - queued_s

    assert fast_elapsed_s < 3.0
    assert gateway.max_active_by_function["fn-a"] == 2
    b_ids = [
        r.header("X-Call-Id") or "" for r in gateway.requests if "/fn-b." in r.raw_path
    ]
    assert sorted(b_ids) == sorted(call.call_id for call in fast)
    # Nothing lost: every call to A ran (the stopping worker lets it finish)
    # or is still stored.
    a_started = len([r for r in gateway.requests if "/fn-a." in r.raw_path])
    await wait_for_stored(js, len(slow) - a_started, timeout_s=5)
