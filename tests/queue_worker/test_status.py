"""Status records and their compare-and-set rules, in a real key-value bucket."""

import asyncio
import dataclasses
import logging
import time

import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from faashub import constants, jetstream
from faashub.call_status import CallState, CallStatus, status_key
from queue_worker import status
from queue_worker.status import Decision, StatusStore
from tests.queue_worker.conftest import (
    RecordingServer,
    call_status,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_empty_stream,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(30)

LEASE_S = 30.0


class FakeClock:
    """Wall-clock nanoseconds that a test moves by hand."""

    def __init__(self) -> None:
        self.now_ns = time.time_ns()

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


@pytest.fixture
async def bucket(js: JetStreamContext) -> KeyValue:
    return await jetstream.ensure_status_bucket(js)


def cancelled_record(call_id: str) -> CallStatus:
    """Return the record a gateway writes when it cancels a queued call."""
    now_ns = time.time_ns()
    return CallStatus(
        call_id=call_id,
        function="echo",
        namespace=constants.DEFAULT_NAMESPACE,
        state=CallState.CANCELLED,
        updated_at_ns=now_ns,
        finished_at_ns=now_ns,
    )


async def test_first_claim_creates_running(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    call = make_call()

    claim = await store.claim(call, stream_seq=7, max_attempts=3)

    assert claim.decision is Decision.RUN
    stored = await store.read(call.call_id)
    assert stored is not None
    assert stored.revision == claim.revision
    assert stored.record == claim.record
    assert claim.record.state is CallState.RUNNING
    assert claim.record.attempts == 1
    assert claim.record.max_attempts == 3
    assert claim.record.accepted_at_ns == call.accepted_at_ns
    assert claim.record.started_at_ns is not None


async def test_delivery_during_lease_is_busy(bucket: KeyValue) -> None:
    clock = FakeClock()
    store = StatusStore(bucket, lease_s=LEASE_S, clock_ns=clock)
    call = make_call()
    first = await store.claim(call, stream_seq=7, max_attempts=3)
    clock.advance(LEASE_S - 1)

    second = await store.claim(call, stream_seq=7, max_attempts=3)

    assert second.decision is Decision.BUSY
    assert second.revision == first.revision
    assert status.lease_left_s(second.record, now_ns=clock()) == pytest.approx(1.0)


async def test_redelivery_after_lease_counts_attempt(bucket: KeyValue) -> None:
    clock = FakeClock()
    store = StatusStore(bucket, lease_s=LEASE_S, clock_ns=clock)
    call = make_call()
    first = await store.claim(call, stream_seq=7, max_attempts=3)
    # The worker that ran it died, so nothing extended its lease.
    clock.advance(LEASE_S + 1)

    second = await store.claim(call, stream_seq=7, max_attempts=3)

    assert second.decision is Decision.RUN
    assert second.record.attempts == 2
    assert second.record.started_at_ns == first.record.started_at_ns
    assert second.revision > first.revision


async def test_running_lease_extends_record(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=0.3)
    call = make_call()
    claim = await store.claim(call, stream_seq=7, max_attempts=3)
    first_until = claim.record.extra["lease_until_ns"]

    lease = status.RunningLease(store, claim.record, claim.revision)
    await asyncio.sleep(0.5)
    revision = await lease.stop()

    stored = await store.read(call.call_id)
    assert stored is not None
    assert stored.revision == revision
    assert revision > claim.revision
    assert stored.record is not None
    assert stored.record.extra["lease_until_ns"] > first_until


async def test_cancelled_call_is_not_claimed(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    call = make_call()
    await bucket.create(
        status_key(call.call_id), cancelled_record(call.call_id).to_json()
    )

    claim = await store.claim(call, stream_seq=7, max_attempts=3)

    assert claim.decision is Decision.CANCELLED
    stored = await store.read(call.call_id)
    assert stored is not None
    assert stored.record is not None
    assert stored.record.state is CallState.CANCELLED


WINDOW_NS = 120 * 1_000_000_000


@pytest.mark.parametrize(
    ("stream_seq", "later_ns", "function", "decision"),
    [
        pytest.param(7, 0, "echo", Decision.DUPLICATE, id="same-message"),
        pytest.param(
            9, 5 * 10**9, "echo", Decision.DUPLICATE, id="id-reused-in-window"
        ),
        pytest.param(9, -5 * 10**9, "echo", Decision.DUPLICATE, id="clock-behind"),
        pytest.param(9, WINDOW_NS + 1, "echo", Decision.RUN, id="id-reused-later"),
        pytest.param(9, 5 * 10**9, "other", Decision.RUN, id="other-function"),
    ],
)
async def test_finished_call_claim(
    bucket: KeyValue, stream_seq: int, later_ns: int, function: str, decision: Decision
) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    store.duplicate_window_ns = WINDOW_NS
    call = make_call()
    claim = await store.claim(call, stream_seq=7, max_attempts=3)
    done = dataclasses.replace(claim.record, state=CallState.SUCCEEDED)
    await store.save(done, revision=claim.revision)
    repeat = dataclasses.replace(
        call, function=function, accepted_at_ns=call.accepted_at_ns + later_ns
    )

    again = await store.claim(repeat, stream_seq=stream_seq, max_attempts=3)

    assert again.decision is decision
    assert again.record.attempts == 1


async def test_cancel_between_read_and_write_wins(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    call = make_call()
    first = await store.claim(call, stream_seq=7, max_attempts=3)
    retrying = dataclasses.replace(first.record, state=CallState.RETRYING)
    revision = await store.save(retrying, revision=first.revision)
    assert revision is not None
    # A cancel lands after the worker read RETRYING: the worker's stale
    # revision loses, and the claim reads again.
    cancelled = dataclasses.replace(retrying, state=CallState.CANCELLED)
    await bucket.update(status_key(call.call_id), cancelled.to_json(), last=revision)

    assert await store.save(first.record, revision=revision) is None
    claim = await store.claim(call, stream_seq=7, max_attempts=3)
    assert claim.decision is Decision.CANCELLED


async def test_lost_reply_write_is_recognised(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    claim = await store.claim(make_call(), stream_seq=7, max_attempts=3)
    done = dataclasses.replace(claim.record, state=CallState.SUCCEEDED)
    written = await store.save(done, revision=claim.revision)

    # The same write again, as after a reply that never arrived.
    assert await store.save(done, revision=claim.revision) == written


async def test_unreadable_record_is_replaced(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    call = make_call()
    await bucket.create(status_key(call.call_id), b"not json")

    claim = await store.claim(call, stream_seq=7, max_attempts=3)

    assert claim.decision is Decision.RUN
    assert claim.record.attempts == 1


async def test_cancelled_call_is_acked_unrun(
    nats_url: str,
    js: JetStreamContext,
    bucket: KeyValue,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    cancelled = make_call(callback_url=f"{receiver.url}/done")
    other = make_call(callback_url=f"{receiver.url}/done")
    await bucket.create(
        status_key(cancelled.call_id), cancelled_record(cancelled.call_id).to_json()
    )

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, cancelled)
        await publish(js, other)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)
        await asyncio.sleep(0.2)

    assert [r.header("X-Call-Id") for r in gateway.requests] == [other.call_id]
    assert [r.header("X-Call-Id") for r in receiver.requests] == [other.call_id]
    record = await call_status(js, cancelled.call_id)
    assert record is not None
    assert record.state is CallState.CANCELLED


async def test_reused_call_id_runs_again(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    call = make_call()
    # A repeat accepted after the duplicate window: JetStream stores it again.
    window_ns = int(jetstream.DEFAULT_DUPLICATE_WINDOW_S * 1e9)
    later = dataclasses.replace(
        call, accepted_at_ns=call.accepted_at_ns + window_ns + 1
    )
    headers = later.to_nats_headers()
    del headers[constants.NATS_MSG_ID]

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await wait_for_state(js, call.call_id, CallState.SUCCEEDED)
        await js.publish(later.subject(), later.body, headers=headers)
        await gateway.wait_for_requests(2)
        await wait_for_empty_stream(js)

    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.attempts == 1
    assert record.extra["stream_seq"] == 2


async def test_repeated_call_id_in_window_runs_once(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # JetStream stores a repeat with the same id again when it has forgotten
    # the first message's id (after a restart), or when the first had none
    # (an id the gateway generated, reused by a retry after a 503).
    call = make_call()
    repeat = dataclasses.replace(call, accepted_at_ns=call.accepted_at_ns + 10**9)
    headers = repeat.to_nats_headers()
    del headers[constants.NATS_MSG_ID]

    with caplog.at_level(logging.INFO, logger="queue_worker.handling"):
        async with running_worker(make_settings(nats_url, gateway.url)):
            await publish(js, call)
            await wait_for_state(js, call.call_id, CallState.SUCCEEDED)
            await js.publish(repeat.subject(), repeat.body, headers=headers)
            await wait_for_empty_stream(js)

    assert len(gateway.requests) == 1
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.extra["stream_seq"] == 1
    [skipped] = [
        entry
        for entry in caplog.records
        if entry.getMessage().startswith("a call with this id already finished")
    ]
    assert skipped.levelno == logging.INFO
    assert skipped.ctx["call_id"] == call.call_id


async def test_call_past_one_second_reads_running(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    gateway.delay_s = 2.0
    call = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await gateway.wait_for_requests(1)
        # Still within the first second: nothing is written yet.
        assert await call_status(js, call.call_id) is None
        running = await wait_for_state(
            js, call.call_id, CallState.RUNNING, timeout_s=1.5
        )
        await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    assert running.attempts == 1
    assert running.extra["lease_until_ns"] > running.updated_at_ns


async def test_success_record_is_complete(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    receiver.status = 202
    call = make_call(callback_url=f"{receiver.url}/done", queue="default")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        record = await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    await wait_for_empty_stream(js)
    assert record.function == "echo"
    assert record.namespace == constants.DEFAULT_NAMESPACE
    assert record.queue == "default"
    assert record.attempts == 1
    assert record.max_attempts == 10
    assert record.last_status == 200
    assert record.last_error == ""
    assert record.callback_status == 202
    assert record.dead_letter_reason == ""
    assert record.accepted_at_ns == call.accepted_at_ns
    assert record.started_at_ns is not None
    assert record.finished_at_ns is not None
    assert record.started_at_ns <= record.finished_at_ns
    assert record.to_api()["state"] == "succeeded"


def test_record_json_matches_to_json() -> None:
    record = CallStatus(
        call_id="c-1",
        function="echo",
        namespace=constants.DEFAULT_NAMESPACE,
        state=CallState.RETRYING,
        attempts=2,
        last_status=503,
        next_attempt_at_ns=5,
        extra={"attempt_log": [{"status": 503, "error": "x", "at_ns": 1}]},
    )

    assert status.record_json(record) == record.to_json()


def test_replaced_matches_dataclasses_replace() -> None:
    record = CallStatus(
        call_id="c-1",
        function="echo",
        namespace=constants.DEFAULT_NAMESPACE,
        state=CallState.RUNNING,
        attempts=1,
        extra={"stream_seq": 3},
    )
    changes = {"state": CallState.SUCCEEDED, "finished_at_ns": 9, "extra": {}}

    copy = status.replaced(record, **changes)

    assert copy == dataclasses.replace(record, **changes)
    assert status.record_json(copy) == copy.to_json()
    assert copy is not record
    assert record.state is CallState.RUNNING
    assert record.extra == {"stream_seq": 3}


def test_replaced_rejects_unknown_field() -> None:
    record = CallStatus(
        call_id="c-1", function="echo", namespace="ns", state=CallState.RUNNING
    )

    with pytest.raises(TypeError, match="no field 'stat'"):
        status.replaced(record, stat=CallState.SUCCEEDED)


async def test_call_running_elsewhere_waits_for_lease(
    nats_url: str,
    js: JetStreamContext,
    bucket: KeyValue,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    call = make_call(callback_url=f"{receiver.url}/done")
    # Another worker claimed the first (and only) message of the stream and
    # holds a lease of one second that nobody extends.
    other_worker = StatusStore(bucket, lease_s=1.0)
    claimed = await other_worker.claim(call, stream_seq=1, max_attempts=10)
    lease_ends_s = time.monotonic() + 1.0

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert claimed.decision is Decision.RUN
    assert len(gateway.requests) == 1
    assert gateway.requests[0].received_at_s >= lease_ends_s
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.attempts == 2


async def test_first_delivery_claim_writes_nothing(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    call = make_call()

    claim = await store.claim(call, stream_seq=7, max_attempts=3, first_delivery=True)

    assert claim.decision is Decision.RUN
    assert claim.revision is None
    assert claim.record.state is CallState.RUNNING
    assert claim.record.attempts == 1
    assert await store.read(call.call_id) is None


async def test_first_delivery_claim_sees_cancel(bucket: KeyValue) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S)
    call = make_call()
    await bucket.create(
        status_key(call.call_id), cancelled_record(call.call_id).to_json()
    )

    claim = await store.claim(call, stream_seq=7, max_attempts=3, first_delivery=True)

    assert claim.decision is Decision.CANCELLED


async def test_first_delivery_writes_status_once(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    await jetstream.ensure_status_bucket(js)
    status_stream = f"KV_{constants.STATUS_BUCKET}"
    before = (await js.stream_info(status_stream)).state.last_seq
    call = make_call()

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        record = await wait_for_state(js, call.call_id, CallState.SUCCEEDED)

    after = (await js.stream_info(status_stream)).state.last_seq
    assert after - before == 1
    assert record.attempts == 1
    assert record.started_at_ns is not None
