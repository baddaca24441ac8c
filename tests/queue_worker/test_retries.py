"""Retries, dead letters and delays, against a real nats-server.

Each test checks the end of the call at the callback (exactly one callback
per call) and in JetStream (the calls stream drained, the dead letters
stored). Waits are short: retry_min_wait_s is 0.05 s unless a test needs a
longer one to observe a state.
"""

import asyncio
import logging
import time

import aiohttp
import pytest
from nats.js import JetStreamContext

from faashub.call_status import CallState
from faashub.names import FunctionRef
from queue_worker.errors import GatewayUnavailable
from queue_worker.functions import FunctionLookup
from queue_worker.policy import PolicyReader, RetryPolicy
from tests.conftest import LOOPBACK, free_port
from tests.queue_worker.conftest import (
    RecordingServer,
    call_status,
    dead_letters,
    log_context,
    make_call,
    make_settings,
    publish,
    recording_server,
    running_worker,
    wait_for_dead_letters,
    wait_for_empty_stream,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(30)

HOUR_NS = 3600 * 1_000_000_000


async def test_fails_twice_then_succeeds(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.replies = [(500, {}), (502, {})]
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)
        await asyncio.sleep(0.2)

    assert len(gateway.requests) == 3
    assert len(receiver.requests) == 1
    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "200"
    assert callback.header("X-Retry") == "3"
    assert callback.header("X-Retry-Max") == "10"
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.attempts == 3
    assert record.last_status == 200
    assert record.callback_status == 200
    assert await dead_letters(js) == []


async def test_retry_waits_grow(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.replies = [(503, {}), (503, {}), (503, {})]
    settings = make_settings(
        nats_url, gateway.url, retry_min_wait_s=0.2, retry_max_wait_s=0.4
    )

    async with running_worker(settings):
        await publish(js, make_call())
        await gateway.wait_for_requests(4)

    times = [request.received_at_s for request in gateway.requests]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # Waits of 0.2, 0.4 and 0.4 s (capped), plus delivery latency.
    assert 0.18 <= gaps[0] < 0.35
    assert 0.38 <= gaps[1] < 0.6
    assert 0.38 <= gaps[2] < 0.6


@pytest.mark.parametrize("jitter", ["full", "equal"])
async def test_jittered_waits_keep_min_wait(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer, jitter: str
) -> None:
    gateway.replies = [(503, {})] * 4
    settings = make_settings(
        nats_url,
        gateway.url,
        retry_min_wait_s=0.3,
        retry_max_wait_s=2.0,
        retry_jitter=jitter,
    )

    async with running_worker(settings):
        await publish(js, make_call())
        await gateway.wait_for_requests(5)

    times = [request.received_at_s for request in gateway.requests]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert len(gaps) == 4
    for gap in gaps:
        assert gap >= 0.3, gaps


async def test_retry_after_is_honoured_without_using_attempts(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.replies = [(429, {"Retry-After": "1"})]
    call = make_call(callback_url=f"{receiver.url}/done")
    # One attempt in all: a 429 must not use it up.
    settings = make_settings(nats_url, gateway.url, retry_attempts=1)

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    first, second = gateway.requests
    assert 0.95 <= second.received_at_s - first.received_at_s < 2.0
    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "200"
    assert callback.header("X-Retry") == "1"
    assert callback.header("X-Retry-Max") == "1"
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.attempts == 2
    assert record.throttled_attempts == 1
    assert record.to_api()["throttled_attempts"] == 1


async def test_gateway_503_uses_no_attempt(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    # The gateway's response when it cannot reach the provider: nothing ran.
    refused = (503, {"X-OpenFaaS-Internal": "gateway", "Retry-After": "1"})
    gateway.replies = [refused, refused]
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(nats_url, gateway.url, retry_attempts=1)

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 3
    assert receiver.requests[0].header("X-Function-Status") == "200"
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.attempts == 3
    assert record.throttled_attempts == 2
    assert await dead_letters(js) == []


async def test_platform_error_names_its_reason(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.status = 502
    gateway.reply_headers = {"X-OpenFaaS-Internal": "gateway"}
    gateway.reply_body = b"Function 'echo' closed the connection early.\nmore\n"
    call = make_call()
    settings = make_settings(nats_url, gateway.url, retry_attempts=1)

    async with running_worker(settings):
        await publish(js, call)
        record = await wait_for_state(js, call.call_id, CallState.DEAD_LETTERED)

    assert record.last_error == (
        "The gateway returned status 502: Function 'echo' closed the connection early."
    )


async def test_permanent_400_is_rejected(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.status = 400
    gateway.reply_body = b"bad input"
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 1
    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "400"
    assert callback.body == b"bad input"
    assert callback.header("X-Retry") == "1"
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.kind == "call"
    assert letter.reason == "rejected"
    assert letter.call.call_id == call.call_id
    assert letter.call.body == call.body
    assert [attempt.status for attempt in letter.attempts] == [400]
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.FAILED
    assert record.dead_letter_reason == "rejected"


async def test_exhausted_attempts_are_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.status = 503
    call = make_call(
        callback_url=f"{receiver.url}/done", path="/p", query="q=1", method="PUT"
    )
    settings = make_settings(nats_url, gateway.url, retry_attempts=3)

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 3
    assert len(receiver.requests) == 1
    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "503"
    assert callback.header("X-Retry") == "3"
    assert callback.header("X-Retry-Max") == "3"
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.reason == "attempts-exhausted"
    assert (letter.call.method, letter.call.path, letter.call.query) == (
        "PUT",
        "/p",
        "q=1",
    )
    assert letter.call.headers == call.headers
    assert [attempt.status for attempt in letter.attempts] == [503, 503, 503]
    assert all(attempt.error for attempt in letter.attempts)
    times = [attempt.at_ns for attempt in letter.attempts]
    assert times == sorted(times)
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.DEAD_LETTERED
    assert record.attempts == 3


async def test_internal_error_is_retried(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    # 400 is not a retry code, but X-OpenFaaS-Internal marks a platform error.
    gateway.replies = [(400, {"X-OpenFaaS-Internal": "proxy"})]

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, make_call())
        await gateway.wait_for_requests(2)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 2
    assert await dead_letters(js) == []


async def test_retrying_state_is_recorded(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.replies = [(500, {})]
    call = make_call()
    settings = make_settings(
        nats_url, gateway.url, retry_min_wait_s=1.5, retry_max_wait_s=1.5
    )

    async with running_worker(settings):
        before_ns = time.time_ns()
        await publish(js, call)
        retrying = await wait_for_state(js, call.call_id, CallState.RETRYING)
        done = await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    assert retrying.attempts == 1
    assert retrying.last_status == 500
    assert "500" in retrying.last_error
    assert retrying.next_attempt_at_ns is not None
    assert retrying.next_attempt_at_ns - before_ns >= 1_500_000_000
    assert done.attempts == 2
    assert done.next_attempt_at_ns is None
    assert done.finished_at_ns is not None


async def test_annotations_override_retry_policy(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.functions = {
        "echo.openfaas-fn": {
            "com.openfaas.retry.attempts": "2",
            "com.openfaas.retry.codes": "418",
            "com.openfaas.retry.min_wait": "50ms",
        }
    }
    gateway.status = 418
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(
        nats_url, gateway.url, retry_min_wait_s=5.0, retry_max_wait_s=5.0
    )

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)

    assert len(gateway.requests) == 2
    assert receiver.requests[0].header("X-Retry-Max") == "2"
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.reason == "attempts-exhausted"


async def test_invalid_annotation_falls_back_once(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway.functions = {
        "echo.openfaas-fn": {
            "com.openfaas.retry.attempts": "many",
            "com.openfaas.retry.min_wait": "soon",
        }
    }
    gateway.status = 500
    settings = make_settings(nats_url, gateway.url, retry_attempts=2)

    async with running_worker(settings):
        for _ in range(3):
            await publish(js, make_call())
        await wait_for_dead_letters(js, 3)
        await wait_for_empty_stream(js)

    # The default of two attempts applied to each of the three calls.
    assert len(gateway.requests) == 6
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("invalid annotation")
    ]
    assert len(warnings) == 2
    assert any("com.openfaas.retry.attempts='many'" in w for w in warnings)
    assert any("com.openfaas.retry.min_wait='soon'" in w for w in warnings)


async def test_expired_call_is_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    call = make_call(
        callback_url=f"{receiver.url}/done", accepted_at_ns=time.time_ns() - 7 * HOUR_NS
    )

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert gateway.requests == []
    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "504"
    assert callback.header("X-OpenFaaS-Internal") == "queue-worker"
    assert callback.header("X-Retry") == "0"
    assert callback.header("X-Retry-Max") == "0"
    assert b"max event age" in callback.body
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.reason == "expired"
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.DEAD_LETTERED
    assert record.dead_letter_reason == "expired"


async def test_retry_beyond_max_age_is_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.status = 500
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(
        nats_url,
        gateway.url,
        max_event_age_s=1.0,
        retry_min_wait_s=2.0,
        retry_max_wait_s=2.0,
    )

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)

    assert len(gateway.requests) == 1
    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "500"
    # The worker gave up after the first of its attempts.
    assert settings.retry_attempts > 1
    assert callback.header("X-Retry") == "1"
    assert callback.header("X-Retry-Max") == "1"
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.reason == "expired"
    assert [attempt.status for attempt in letter.attempts] == [500]


async def test_unknown_function_is_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.functions = {}
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert gateway.requests == []
    assert gateway.lookups == ["echo.openfaas-fn"]
    assert receiver.requests[0].header("X-Function-Status") == "404"
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.reason == "function-not-found"
    assert letter.call.body == call.body


async def test_failed_lookup_delays_without_attempt(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    gateway.lookup_failures = 2
    call = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await gateway.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert len(gateway.lookups) == 3
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.attempts == 1
    # Failures shorter than LOOKUP_WARN_AFTER_S, as when the gateway starts
    # after the worker, make no warning.
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []


async def test_lookups_failing_long_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="queue_worker.functions")
    now = [100.0]
    gateway_url = f"http://127.0.0.1:{free_port()}"
    async with aiohttp.ClientSession() as session:
        lookup = FunctionLookup(
            session,
            gateway_url,
            policies=PolicyReader(
                RetryPolicy(
                    attempts=1,
                    codes=frozenset(),
                    min_wait_s=1.0,
                    max_wait_s=1.0,
                    jitter="none",
                )
            ),
            clock=lambda: now[0],
        )
        for advance_s in (0.0, 2.0, 3.0, 1.0):
            now[0] += advance_s
            with pytest.raises(GatewayUnavailable):
                await lookup.get(FunctionRef("echo", "openfaas-fn"))

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("function lookups failing for 5.0 s")
    assert gateway_url in warnings[0]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 2


async def test_gateway_outage_uses_no_attempt(
    nats_url: str, js: JetStreamContext, receiver: RecordingServer
) -> None:
    port = free_port()
    first, second = make_call(), make_call(callback_url=f"{receiver.url}/done")
    # One attempt in all: a gateway that refuses connections must not use it.
    settings = make_settings(nats_url, f"http://{LOOPBACK}:{port}", retry_attempts=1)

    async with running_worker(settings):
        # The first call puts the function in the worker's lookup cache.
        async with recording_server(port) as gateway:
            await publish(js, first)
            await gateway.wait_for_requests(1)
            await wait_for_empty_stream(js)
        await publish(js, second)
        await wait_for_state(js, second.call_id, CallState.RETRYING)
        await asyncio.sleep(0.3)
        async with recording_server(port) as restarted:
            await receiver.wait_for_requests(1)
            await wait_for_empty_stream(js)

    assert len(restarted.requests) == 1
    assert receiver.requests[0].header("X-Function-Status") == "200"
    record = await call_status(js, second.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.attempts >= 2
    refused = record.extra["attempt_log"][0]
    assert refused["status"] == 503
    assert "could not reach the gateway" in refused["error"]
    assert await dead_letters(js) == []


async def test_delayed_call_starts_no_earlier(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    not_before_ns = time.time_ns() + 1_000_000_000
    call = make_call(callback_url=f"{receiver.url}/done", not_before_ns=not_before_ns)

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        started_ns = time.time_ns()

    assert len(gateway.requests) == 1
    assert started_ns >= not_before_ns
    # The wait did not count as an attempt.
    assert receiver.requests[0].header("X-Retry") == "1"


async def test_retry_is_logged_once_per_attempt(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    gateway.replies = [(502, {})]
    call = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await gateway.wait_for_requests(2)
        await wait_for_empty_stream(js)

    retrying = [r for r in caplog.records if r.getMessage() == "call retrying"]
    finished = [r for r in caplog.records if r.getMessage() == "call finished"]
    assert len(retrying) == 1
    assert log_context(retrying[0])["status"] == 502
    assert log_context(retrying[0])["call_id"] == call.call_id
    assert len(finished) == 1
    assert log_context(finished[0])["state"] == "succeeded"
    assert log_context(finished[0])["attempts"] == 2
