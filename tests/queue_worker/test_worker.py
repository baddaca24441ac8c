"""The worker against a real nats-server, a fake gateway and a callback receiver."""

import asyncio
import collections
import dataclasses
import logging
import re
import subprocess
import time
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from faashub import constants, embedded_nats, jetstream
from faashub.call_status import CallState, CallStatus, status_key
from faashub.queued_call import merge_request_headers
from queue_worker.worker import Worker
from tests.conftest import LOOPBACK, free_port, stop_process, wait_until_async
from tests.queue_worker.conftest import (
    RecordingServer,
    call_status,
    dead_letters,
    log_context,
    make_call,
    make_settings,
    publish,
    running_worker,
    stored_messages,
    wait_for_dead_letters,
    wait_for_empty_stream,
    wait_for_state,
    wait_for_stored,
    wait_until,
)

pytestmark = pytest.mark.timeout(30)

# "héllo ✓" as UTF-8 bytes, read as latin-1 the way the gateway reads headers.
GREETING = "héllo ✓"
GREETING_AS_STORED = GREETING.encode().decode("latin-1")


async def test_request_reaches_function_unchanged(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    headers = merge_request_headers(
        [
            (b"Content-Type", b"application/octet-stream"),
            (b"X-Greeting", GREETING.encode()),
            (b"Authorization", b"Bearer abc"),
        ]
    )
    body = bytes(range(256))
    call = make_call(
        method="PUT", path="/a/b%20c", query="x=1&y=%C3%A9", headers=headers, body=body
    )

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await gateway.wait_for_requests(1)

    request = gateway.requests[0]
    assert request.method == "PUT"
    assert request.raw_path == "/function/echo.openfaas-fn/a/b%20c"
    assert request.query == "x=1&y=%C3%A9"
    assert request.body == body
    assert request.header_bytes("X-Greeting") == GREETING.encode()
    assert request.header("Content-Type") == "application/octet-stream"
    assert request.header("Authorization") == "Bearer abc"
    assert request.header("X-Call-Id") == call.call_id
    assert request.header("X-Start-Time") == str(call.accepted_at_ns)
    assert request.header("Accept-Encoding") is None


async def test_dot_segments_reach_gateway_verbatim(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    call = make_call(path="/../../system/functions", method="GET", body=b"")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await gateway.wait_for_requests(1)

    request = gateway.requests[0]
    assert request.raw_path == "/function/echo.openfaas-fn/../../system/functions"
    assert request.query == ""


@pytest.mark.parametrize(
    ("namespace", "function_name"),
    [
        pytest.param(constants.DEFAULT_NAMESPACE, "echo", id="default-namespace"),
        pytest.param("team-a", "echo.team-a", id="other-namespace"),
    ],
)
async def test_callback_carries_function_result(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    namespace: str,
    function_name: str,
) -> None:
    gateway.status = 201
    gateway.reply_body = b'{"ok": true}'
    gateway.reply_headers = {"Content-Type": "application/json", "X-Fn": GREETING}
    call = make_call(namespace=namespace, callback_url=f"{receiver.url}/done?k=1")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)

    assert gateway.requests[0].raw_path == f"/function/echo.{namespace}"
    callback = receiver.requests[0]
    assert callback.method == "POST"
    assert callback.raw_path == "/done"
    assert callback.query == "k=1"
    assert callback.body == b'{"ok": true}'
    assert callback.header("X-Call-Id") == call.call_id
    assert callback.header("X-Function-Status") == "201"
    assert callback.header("X-Function-Name") == function_name
    duration = callback.header("X-Duration-Seconds")
    assert duration is not None
    assert re.fullmatch(r"\d+\.\d{6}", duration)
    assert callback.header("Content-Type") == "application/json"
    assert callback.header_bytes("X-Fn") == GREETING.encode()


async def test_function_headers_do_not_override_call_headers(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.reply_headers = {"X-Duration-Seconds": "99", "X-Function-Status": "418"}
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)

    callback = receiver.requests[0]
    statuses = [v for n, v in callback.raw_headers if n.lower() == b"x-function-status"]
    assert statuses == [b"200"]
    assert callback.header("X-Duration-Seconds") != "99"


async def test_credentials_sent_after_401(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    # The gateway checks credentials on invocations (auth_invoke) and rejects
    # the first request, which carries none, with 401.
    gateway.replies = [(401, {})]
    calls = [make_call(), make_call()]
    settings = make_settings(
        nats_url, gateway.url, gateway_user="admin", gateway_password="pw"
    )

    async with running_worker(settings):
        await publish(js, calls[0])
        await wait_for_empty_stream(js)
        await publish(js, calls[1])
        await wait_for_empty_stream(js)

    sent = [request.header("Authorization") for request in gateway.requests]
    assert sent == [None, "Basic YWRtaW46cHc=", "Basic YWRtaW46cHc="]
    for call in calls:
        record = await call_status(js, call.call_id)
        assert record is not None
        assert record.state is CallState.SUCCEEDED


async def test_no_credentials_without_401(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    settings = make_settings(
        nats_url, gateway.url, gateway_user="admin", gateway_password="pw"
    )

    async with running_worker(settings):
        await publish(js, make_call())
        await wait_for_empty_stream(js)

    assert [request.header("Authorization") for request in gateway.requests] == [None]


async def test_call_without_callback_is_acked(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    call = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 1
    finished = [r for r in caplog.records if r.getMessage() == "call finished"]
    assert len(finished) == 1
    context = log_context(finished[0])
    assert context["function"] == "echo.openfaas-fn"
    assert context["call_id"] == call.call_id
    assert context["status"] == 200
    assert "callback_status" not in context
    assert "callback_delivered" not in context
    assert isinstance(context["duration_s"], float)
    assert context["duration_s"] >= 0


async def test_finished_line_callback_fields(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    receiver.status = 202
    delivered = make_call(callback_url=receiver.url + "/done")
    unreachable = make_call(callback_url=f"http://127.0.0.1:{free_port()}/done")
    settings = make_settings(nats_url, gateway.url, callback_attempts=1)

    async with running_worker(settings):
        await publish(js, delivered)
        await publish(js, unreachable)
        await wait_for_empty_stream(js)

    finished = {
        log_context(record)["call_id"]: log_context(record)
        for record in caplog.records
        if record.getMessage() == "call finished"
    }
    assert finished[delivered.call_id]["callback_status"] == 202
    assert finished[delivered.call_id]["callback_delivered"] is True
    assert "callback_status" not in finished[unreachable.call_id]
    assert finished[unreachable.call_id]["callback_delivered"] is False


async def test_finished_line_source_numbers(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    # The headers a Kafka connector sets on a call it queues.
    call = make_call(
        headers={"X-Topic": "orders", "X-Kafka-Partition": "3", "X-Kafka-Offset": "17"}
    )

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await wait_for_empty_stream(js)

    [finished] = [r for r in caplog.records if r.getMessage() == "call finished"]
    context = log_context(finished)
    assert context["topic"] == "orders"
    assert context["partition"] == 3
    assert context["offset"] == 17


async def test_worker_lines_name_queue(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    settings = make_settings(nats_url, gateway.url, queue="reports")

    async with running_worker(settings):
        await publish(js, make_call(queue="reports"))
        await wait_for_empty_stream(js)

    worker_lines = [r for r in caplog.records if r.name == "queue_worker.worker"]
    messages = [record.getMessage() for record in worker_lines]
    assert "queue-worker stopped" in messages
    assert "connected to nats" in messages
    for record in worker_lines:
        assert log_context(record).get("queue") == "reports", record.getMessage()


async def test_unreachable_function_reports_503(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    # The gateway serves lookups but drops invocations without a response.
    gateway.drop_connections = True
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(nats_url, gateway.url, retry_attempts=1)

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "503"
    assert callback.header("X-OpenFaaS-Internal") == "queue-worker"
    assert callback.header("X-Retry") == "1"
    assert callback.header("X-Retry-Max") == "1"
    assert b"could not invoke echo.openfaas-fn" in callback.body


async def test_slow_function_reports_504(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.delay_s = 3.0
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(
        nats_url, gateway.url, upstream_timeout_s=0.5, retry_attempts=1
    )

    async with running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)

    callback = receiver.requests[0]
    assert callback.header("X-Function-Status") == "504"
    assert b"timed out after 0.5 s" in callback.body


async def test_invalid_messages_are_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    subject = make_call().subject()
    good = make_call(callback_url=f"{receiver.url}/done")
    bad_version = make_call(callback_url=f"{receiver.url}/bad").to_nats_headers()
    bad_version[constants.META_FORMAT] = "99"

    async with running_worker(make_settings(nats_url, gateway.url)):
        await js.publish(subject, b"secret-body-1")
        await js.publish(subject, b"secret-body-2", headers=bad_version)
        await publish(js, good)
        await receiver.wait_for_requests(2)
        await wait_for_empty_stream(js)

    assert [r.header("X-Call-Id") for r in gateway.requests] == [good.call_id]
    letters = await wait_for_dead_letters(js, 2)
    assert [letter.reason for letter in letters] == ["invalid-message"] * 2
    assert [letter.call.body for letter in letters] == [
        b"secret-body-1",
        b"secret-body-2",
    ]
    assert letters[0].call.call_id == subject.rsplit(".", 1)[1]
    assert "'99'" in letters[1].detail
    bad_callback = next(r for r in receiver.requests if r.raw_path == "/bad")
    assert bad_callback.header("X-Function-Status") == "400"
    durable = jetstream.worker_durable_name(constants.DEFAULT_QUEUE)

    # nats-server applies acks on the consumer's own queue, so poll.
    async def all_acked() -> bool:
        info = await js.consumer_info(constants.CALLS_STREAM, durable)
        return info.num_ack_pending == 0

    await wait_until_async(all_acked, timeout_s=5.0, description="every ack")
    assert not any("secret-body" in r.getMessage() for r in caplog.records)


async def test_unreadable_subject_is_terminated(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await js.publish("faashub.calls.default.Not_A_Name", b"secret-body")
        await publish(js, good)
        await gateway.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert await dead_letters(js) == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].getMessage().startswith("invalid queued call terminated")
    assert log_context(errors[0])["stream_seq"] == 1
    assert log_context(errors[0])["subject"] == "faashub.calls.default.Not_A_Name"
    assert not any("secret-body" in r.getMessage() for r in caplog.records)


async def test_long_call_runs_once(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.delay_s = 3.0
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(nats_url, gateway.url, ack_wait_s=1.0)

    # Two workers share the consumer: a lapsed lease would hand the call to
    # the idle one.
    async with running_worker(settings), running_worker(settings):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)
        # One more ack_wait and a half, so that a redelivery would show.
        await asyncio.sleep(1.5)

    assert len(gateway.requests) == 1
    assert len(receiver.requests) == 1


async def test_max_inflight_is_respected(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.delay_s = 0.2
    settings = make_settings(nats_url, gateway.url, max_inflight=3)

    async with running_worker(settings):
        for _ in range(12):
            await publish(js, make_call())
        await wait_for_empty_stream(js)

    assert gateway.completed == 12
    assert gateway.max_active == 3


async def test_burst_is_called_back_once_each(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    calls = [make_call(callback_url=f"{receiver.url}/done") for _ in range(200)]
    settings = make_settings(nats_url, gateway.url, max_inflight=32)

    async with running_worker(settings):
        await asyncio.gather(*(publish(js, call) for call in calls))
        await receiver.wait_for_requests(200)
        await wait_for_empty_stream(js)

    seen = collections.Counter(r.header("X-Call-Id") for r in receiver.requests)
    assert set(seen) == {call.call_id for call in calls}
    assert set(seen.values()) == {1}
    assert len(gateway.requests) == 200


@pytest.mark.parametrize("stop_method", ["stop", "cancel"])
async def test_stopping_lets_running_call_finish(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    stop_method: str,
) -> None:
    gateway.delay_s = 1.0
    call = make_call(callback_url=f"{receiver.url}/done")
    worker = Worker(make_settings(nats_url, gateway.url))
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.ready, description="the worker to become ready")
    await publish(js, call)
    await gateway.wait_for_requests(1)

    if stop_method == "stop":
        worker.stop()
        await asyncio.wait_for(task, timeout=10)
    else:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)

    assert gateway.completed == 1
    assert [r.header("X-Call-Id") for r in receiver.requests] == [call.call_id]
    # The ack left before the worker closed; JetStream applies it shortly.
    await wait_for_empty_stream(js, timeout_s=2.0)


async def test_stop_dead_letters_failing_callback(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    # The callback keeps failing, with long waits between tries: a stop must
    # not leave the call to be run again after a restart.
    receiver.status = 503
    call = make_call(callback_url=f"{receiver.url}/done")
    settings = make_settings(
        nats_url,
        gateway.url,
        callback_attempts=5,
        retry_min_wait_s=20.0,
        retry_max_wait_s=20.0,
        callback_max_wait_s=20.0,
    )
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.ready, description="the worker to become ready")
    await publish(js, call)
    await receiver.wait_for_requests(1)

    worker.stop()
    await asyncio.wait_for(task, timeout=10)

    assert len(gateway.requests) == 1
    assert len(receiver.requests) == 1
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.kind == "callback"
    assert letter.reason == "callback-failed"
    assert "The worker stopped before it tried again" in letter.detail
    await wait_for_empty_stream(js, timeout_s=2.0)
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.dead_letter_reason == "callback-failed"


@pytest.mark.parametrize("calls", [1, 23])
async def test_abandon_warning_names_calls(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
    calls: int,
) -> None:
    gateway.delay_s = 5.0
    settings = make_settings(
        nats_url, gateway.url, shutdown_grace_s=0.5, ack_wait_s=10.0, max_inflight=32
    )
    queued = [make_call(body=b"payload-not-logged") for _ in range(calls)]
    worker = Worker(settings)
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.ready, description="the worker to become ready")
    for call in queued:
        await publish(js, call)
    await gateway.wait_for_requests(calls)

    worker.stop()
    await asyncio.wait_for(task, timeout=10)

    [warning] = [r for r in caplog.records if r.getMessage().startswith("abandoning")]
    message = warning.getMessage()
    assert message.startswith(f"abandoning {calls} calls still running after 0.5 s")
    named = [call for call in queued if call.call_id in message]
    assert len(named) == min(calls, 20)
    assert "echo.openfaas-fn call " in message
    if calls > 20:
        assert message.endswith(f" and {calls - 20} more")
    assert "payload-not-logged" not in message


async def test_late_cancel_rejected_while_running(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A cancel in a first delivery's first second finds no record and
    # creates a CANCELLED one, as the gateway does. The call runs on, so
    # its lease replaces that record, and its final record follows.
    gateway.delay_s = 2.5
    call = make_call(callback_url=f"{receiver.url}/done")
    caplog.set_level(logging.INFO, logger="queue_worker.status")
    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await gateway.wait_for_requests(1)
        bucket = await jetstream.ensure_status_bucket(js)
        now_ns = time.time_ns()
        cancelled = CallStatus(
            call_id=call.call_id,
            function=call.function,
            namespace=call.namespace,
            state=CallState.CANCELLED,
            accepted_at_ns=call.accepted_at_ns,
            updated_at_ns=now_ns,
            finished_at_ns=now_ns,
        )
        await bucket.create(status_key(call.call_id), cancelled.to_json())

        running = await wait_for_state(js, call.call_id, CallState.RUNNING)
        assert running.attempts == 1
        await receiver.wait_for_requests(1)
        finished = await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    assert finished.attempts == 1
    [late] = [
        r for r in caplog.records if r.getMessage().startswith("call was cancelled")
    ]
    assert log_context(late)["call_id"] == call.call_id


async def test_second_cancel_abandons_running_call(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.delay_s = 5.0
    worker = Worker(make_settings(nats_url, gateway.url, ack_wait_s=10.0))
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: worker.ready, description="the worker to become ready")
    await publish(js, make_call())
    await gateway.wait_for_requests(1)

    task.cancel()
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=3)

    # Unacknowledged, so JetStream keeps the call for the next worker.
    assert await stored_messages(js) == 1


@pytest.mark.parametrize(
    ("failure", "reason", "tries"),
    [
        pytest.param("status-500", "status 500", 3, id="status-500"),
        pytest.param("status-404", "status 404", 1, id="status-404"),
        pytest.param("unreachable", "Cannot connect", 3, id="unreachable"),
        pytest.param("slow", "timed out after 0.5 s", 3, id="timeout"),
    ],
)
async def test_failed_callback_is_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    caplog: pytest.LogCaptureFixture,
    failure: str,
    reason: str,
    tries: int,
) -> None:
    callback_url = f"{receiver.url}/done?token=s3cret"
    if failure.startswith("status-"):
        receiver.status = int(failure.removeprefix("status-"))
    elif failure == "unreachable":
        callback_url = f"http://{LOOPBACK}:{free_port()}/done?token=s3cret"
    else:
        receiver.delay_s = 3.0
    gateway.reply_headers = {"X-Fn": "yes"}
    call = make_call(callback_url=callback_url)
    settings = make_settings(
        nats_url, gateway.url, callback_timeout_s=0.5, callback_attempts=3
    )

    async with running_worker(settings):
        await publish(js, call)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 1
    [letter] = await wait_for_dead_letters(js, 1)
    assert letter.kind == "callback"
    assert letter.reason == "callback-failed"
    assert letter.result_status == 200
    assert letter.result_body == b"done"
    assert letter.result_headers["X-Fn"] == "yes"
    # Kept for a redrive, which sends them again.
    assert letter.retry == 1
    assert letter.retry_max == settings.retry_attempts
    assert letter.duration_s is not None
    assert 0 <= letter.duration_s < 5
    if receiver.requests:
        sent = receiver.requests[0]
        assert sent.header("X-Duration-Seconds") == f"{letter.duration_s:.6f}"
        assert sent.header("X-Retry-Max") == str(letter.retry_max)
    assert len(letter.attempts) == tries
    assert f"failed after {tries} {'try' if tries == 1 else 'tries'}." in letter.detail
    assert "s3cret" not in letter.detail
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.dead_letter_reason == "callback-failed"
    warnings = [
        r for r in caplog.records if r.getMessage().startswith("callback failed")
    ]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert reason in warnings[0].getMessage()
    assert log_context(warnings[0])["call_id"] == call.call_id
    assert "s3cret" not in log_context(warnings[0])["callback_url"]


async def test_callback_redirect_is_not_followed(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    receiver.status = 307
    receiver.reply_headers = {"Location": "/elsewhere"}
    call = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await wait_for_empty_stream(js)

    assert [r.raw_path for r in receiver.requests] == ["/done"]


async def test_other_queue_is_left_alone(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    other = make_call()
    mine = dataclasses.replace(make_call(), queue="slow")
    settings = make_settings(nats_url, gateway.url, queue="slow")

    async with running_worker(settings):
        await js.publish(other.subject(), other.body, headers=other.to_nats_headers())
        await js.publish(mine.subject(), mine.body, headers=mine.to_nats_headers())
        await gateway.wait_for_requests(1)
        await asyncio.sleep(0.3)

    assert [r.header("X-Call-Id") for r in gateway.requests] == [mine.call_id]
    await wait_for_stored(js, 1)


async def test_deleted_consumer_is_recreated(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    durable = jetstream.worker_durable_name(constants.DEFAULT_QUEUE)

    async with running_worker(make_settings(nats_url, gateway.url)):
        await js.delete_consumer(constants.CALLS_STREAM, durable)
        await publish(js, make_call())
        await gateway.wait_for_requests(1)
        await wait_for_empty_stream(js)


def start_nats(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    """Start a nats-server on `port` that keeps its data under `tmp_path`."""
    return embedded_nats.start(
        host=LOOPBACK,
        port=port,
        store_dir=tmp_path / "nats",
        log_path=tmp_path / "nats.log",
    )


@pytest.mark.timeout(40)
async def test_nats_outage_is_logged_once(
    tmp_path: Path,
    gateway: RecordingServer,
    receiver: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queue_worker")
    port = free_port()
    nats_url = f"nats://{LOOPBACK}:{port}"
    nats_server = start_nats(tmp_path, port)
    try:
        async with running_worker(make_settings(nats_url, gateway.url)) as worker:
            stop_process(nats_server)
            await wait_until(
                lambda: not worker.ready, description="the worker to notice"
            )
            # Let several reconnect attempts fail.
            await asyncio.sleep(2.5)
            nats_server = start_nats(tmp_path, port)
            await wait_until(
                lambda: worker.ready, description="the worker to reconnect"
            )

            client = await nats.connect(nats_url)
            try:
                call = make_call(callback_url=f"{receiver.url}/done")
                await publish(client.jetstream(), call)
                await receiver.wait_for_requests(1)
            finally:
                await client.close()
    finally:
        stop_process(nats_server)

    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("nats unavailable")]) == 1
    assert any(m.startswith("nats available again") for m in messages)
    [outage] = [r for r in caplog.records if r.getMessage().startswith("nats unav")]
    assert outage.__dict__["ctx"]["nats_url"] == nats_url


async def test_idle_worker_starts_a_lone_call_at_once(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    # A batch fetch on an empty queue can keep the first call that arrives
    # until its batch fills or its 5 s wait ends, so a lone call would wait.
    async with running_worker(make_settings(nats_url, gateway.url)):
        for number in range(3):
            await asyncio.sleep(0.7)
            started_s = asyncio.get_running_loop().time()
            await publish(js, make_call())
            await gateway.wait_for_requests(number + 1, timeout_s=1.5)
            assert asyncio.get_running_loop().time() - started_s < 1.5
