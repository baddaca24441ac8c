"""Direct invocation of the replicas that the provider reports."""

import time

import pytest
from nats.js import JetStreamContext

from faashub.call_status import CallState
from tests.conftest import LOOPBACK, free_port, wait_until
from tests.queue_worker.conftest import (
    RecordingServer,
    make_call,
    make_settings,
    publish,
    recording_server,
    running_worker,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(30)


async def test_call_goes_to_reported_replica(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    call = make_call(method="PUT", path="/a/b%20c", query="x=1", body=b"payload")

    async with recording_server() as replica:
        gateway.replica_urls = [replica.url]
        async with running_worker(make_settings(nats_url, gateway.url)):
            await publish(js, call)
            await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    assert gateway.requests == []
    assert gateway.endpoint_lookups == ["echo"]
    [request] = replica.requests
    assert request.method == "PUT"
    assert request.raw_path == "/a/b%20c"
    assert request.query == "x=1"
    assert request.body == b"payload"
    assert request.header("X-Call-Id") == call.call_id
    assert request.header("X-Start-Time") == str(call.accepted_at_ns)


async def test_refused_replica_falls_back_to_gateway(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.replica_urls = [f"http://{LOOPBACK}:{free_port()}"]
    call = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        record = await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    [request] = gateway.requests
    assert request.raw_path == "/function/echo.openfaas-fn"
    assert record.attempts == 1


async def test_replicas_off_uses_gateway(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    call = make_call()

    async with recording_server() as replica:
        gateway.replica_urls = [replica.url]
        settings = make_settings(nats_url, gateway.url, invoke_replicas=False)
        async with running_worker(settings):
            await publish(js, call)
            await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    assert replica.requests == []
    assert gateway.endpoint_lookups == []
    assert len(gateway.requests) == 1


async def test_replica_exec_timeout_ends_call(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    call = make_call()
    gateway.exec_timeout_s = 0.3

    async with recording_server() as replica:
        replica.delay_s = 3.0
        gateway.replica_urls = [replica.url]
        settings = make_settings(nats_url, gateway.url, retry_attempts=1)
        async with running_worker(settings):
            started_s = time.monotonic()
            await publish(js, call)
            record = await wait_for_state(js, call.call_id, CallState.DEAD_LETTERED)
            elapsed_s = time.monotonic() - started_s

    assert record.last_status == 504
    assert record.last_error == (
        "Function echo.openfaas-fn did not respond within its exec timeout of "
        "0.3 s. Raise exec_timeout in its envVars if it needs longer, or set it "
        "to 0 for no timeout."
    )
    assert elapsed_s < 2.5
    assert gateway.requests == []


async def test_direct_calls_reported_to_gateway(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    calls = [make_call() for _ in range(3)]

    async with recording_server() as replica:
        gateway.replica_urls = [replica.url]
        async with running_worker(make_settings(nats_url, gateway.url)):
            for call in calls:
                await publish(js, call)
            for call in calls:
                await wait_for_state(js, call.call_id, CallState.SUCCEEDED)
            await wait_until(
                lambda: (
                    sum(
                        report.get("echo.openfaas-fn", 0)
                        for report in gateway.direct_calls
                    )
                    == 3
                ),
                timeout_s=5.0,
                description="3 direct calls reported",
            )

    assert len(replica.requests) == 3
    assert gateway.requests == []


async def test_stopping_worker_reports_last_direct_calls(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    call = make_call()

    async with recording_server() as replica:
        gateway.replica_urls = [replica.url]
        async with running_worker(make_settings(nats_url, gateway.url)):
            await publish(js, call)
            await wait_for_state(js, call.call_id, CallState.SUCCEEDED)
        # The worker stopped well within its 2 s report interval.

    assert gateway.direct_calls == [{"echo.openfaas-fn": 1}]
