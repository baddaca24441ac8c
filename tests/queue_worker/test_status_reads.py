"""Batched status reads and compare-and-set writes, against a real nats-server."""

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.kv import KeyValue

from faashub import constants, jetstream
from faashub.call_status import CallState, CallStatus, status_key
from queue_worker import errors, status
from queue_worker.status import Decision, StatusStore
from queue_worker.status_reads import BatchedStatusReader
from queue_worker.status_writes import StatusWriter
from tests.conftest import subscribe_ready
from tests.queue_worker.conftest import (
    RecordingServer,
    call_status,
    log_context,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_empty_stream,
)
from tests.queue_worker.test_status import cancelled_record

pytestmark = pytest.mark.timeout(30)

STATUS_STREAM = f"KV_{constants.STATUS_BUCKET}"
KEY_PREFIX = f"$KV.{constants.STATUS_BUCKET}."
LEASE_S = 30.0


@pytest.fixture
async def bucket(js: JetStreamContext) -> KeyValue:
    return await jetstream.ensure_status_bucket(js)


@pytest.fixture
async def reader(
    nc: NatsClient, bucket: KeyValue
) -> AsyncIterator[BatchedStatusReader]:
    batched = new_reader(nc, stream=STATUS_STREAM)
    try:
        yield batched
    finally:
        await batched.close()


DirectGetCounter = Callable[[], Awaitable[int]]


@pytest.fixture
async def direct_gets(nats_url: str) -> AsyncIterator[DirectGetCounter]:
    """Count the direct gets sent to the status stream, seen by a second client."""
    watcher = await nats.connect(nats_url)
    subscription = await subscribe_ready(watcher, f"$JS.API.DIRECT.GET.{STATUS_STREAM}")

    async def count() -> int:
        # After the round trip, every earlier request is in the queue.
        await watcher.flush()
        return subscription.pending_msgs

    try:
        yield count
    finally:
        await watcher.close()


def new_reader(
    nc: NatsClient, *, stream: str, timeout_s: float = 5.0, max_batch: int = 128
) -> BatchedStatusReader:
    return BatchedStatusReader(
        nc,
        stream=stream,
        subject_prefix=KEY_PREFIX,
        timeout_s=timeout_s,
        max_batch=max_batch,
    )


def finished_record(call_id: str, *, stream_seq: int) -> CallStatus:
    return CallStatus(
        call_id=call_id,
        function="echo",
        namespace=constants.DEFAULT_NAMESPACE,
        state=CallState.SUCCEEDED,
        attempts=1,
        extra={status.EXTRA_STREAM_SEQ: stream_seq},
    )


async def test_reads_of_one_turn_share_request(
    nc: NatsClient,
    bucket: KeyValue,
    reader: BatchedStatusReader,
    direct_gets: DirectGetCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stored = cancelled_record("stored")
    revision = await bucket.create(status_key("stored"), stored.to_json())
    await bucket.create(status_key("deleted"), stored.to_json())
    await bucket.delete(status_key("deleted"))
    unreadable_revision = await bucket.create(status_key("unreadable"), b"not json")
    store = StatusStore(bucket, lease_s=LEASE_S, reader=reader)

    with caplog.at_level(logging.WARNING, logger="queue_worker.status"):
        results = await asyncio.gather(
            store.read("stored"),
            store.read("missing"),
            store.read("deleted"),
            store.read("unreadable"),
            store.read("stored"),
        )
    await nc.flush()

    assert results[0] == status.Stored(stored, revision)
    assert results[1] is None
    assert results[2] is None
    assert results[3] == status.Stored(None, unreadable_revision)
    assert results[4] == results[0]
    assert reader.requests == 1
    assert reader.reads == 5
    assert await direct_gets() == 1
    assert "unreadable status record is replaced" in caplog.text


async def test_reads_past_max_batch_split(
    nc: NatsClient, bucket: KeyValue, direct_gets: DirectGetCounter
) -> None:
    reader = new_reader(nc, stream=STATUS_STREAM, max_batch=2)
    revision = await bucket.create(status_key("k3"), cancelled_record("k3").to_json())
    try:
        values = await asyncio.gather(*(reader.read(f"k{n}") for n in range(5)))
    finally:
        await reader.close()
    await nc.flush()

    assert [value is None for value in values] == [True, True, True, False, True]
    assert values[3] is not None
    assert values[3].revision == revision
    assert reader.requests == 3
    assert await direct_gets() == 3


async def test_batch_sees_cancel_and_duplicate(
    bucket: KeyValue, reader: BatchedStatusReader
) -> None:
    store = StatusStore(bucket, lease_s=LEASE_S, reader=reader)
    cancelled, duplicate, fresh = make_call(), make_call(), make_call()
    await bucket.create(
        status_key(cancelled.call_id), cancelled_record(cancelled.call_id).to_json()
    )
    await bucket.create(
        status_key(duplicate.call_id),
        finished_record(duplicate.call_id, stream_seq=2).to_json(),
    )

    claims = await asyncio.gather(
        store.claim(cancelled, stream_seq=1, max_attempts=3, first_delivery=True),
        store.claim(duplicate, stream_seq=2, max_attempts=3, first_delivery=True),
        store.claim(fresh, stream_seq=3, max_attempts=3, first_delivery=True),
    )

    assert [claim.decision for claim in claims] == [
        Decision.CANCELLED,
        Decision.DUPLICATE,
        Decision.RUN,
    ]
    assert claims[2].revision is None
    assert reader.requests == 1


async def test_timed_out_batch_fails_only_its_reads(
    nats_url: str, nc: NatsClient, bucket: KeyValue
) -> None:
    # A relay replies for a stream name of its own. It keeps the first
    # request back and passes later ones on to the status stream.
    relay = await nats.connect(nats_url)
    kept_back: list[Msg] = []
    first_kept_back = asyncio.Event()

    async def pass_on(msg: Msg) -> None:
        if not kept_back:
            kept_back.append(msg)
            first_kept_back.set()
            return
        subject = f"$JS.API.DIRECT.GET.{STATUS_STREAM}"
        await relay.publish(subject, msg.data, reply=msg.reply)

    await subscribe_ready(relay, "$JS.API.DIRECT.GET.KV_RELAYED", cb=pass_on)
    revision = await bucket.create(status_key("later"), b"{}")
    reader = new_reader(nc, stream="KV_RELAYED", timeout_s=0.5)
    try:
        first = asyncio.create_task(reader.read("first"))
        await first_kept_back.wait()
        later = await reader.read("later")

        assert later is not None
        assert later.revision == revision
        assert not first.done()
        with pytest.raises(errors.NatsUnavailable, match="no reply within 0.5 s"):
            await first

        # The first request gets its reply after its batch timed out. The
        # reader drops that reply and goes on.
        await relay.publish(
            f"$JS.API.DIRECT.GET.{STATUS_STREAM}",
            kept_back[0].data,
            reply=kept_back[0].reply,
        )
        assert await reader.read("missing") is None
    finally:
        await reader.close()
        await relay.close()


async def test_error_reply_fails_batch(nc: NatsClient, bucket: KeyValue) -> None:
    # No stream serves direct gets under this name, so the server replies
    # 503 (no responders) to the whole batch.
    reader = new_reader(nc, stream="KV_MISSING")
    store = StatusStore(bucket, lease_s=LEASE_S, reader=reader)
    try:
        results = await asyncio.gather(
            store.claim(make_call(), stream_seq=1, max_attempts=3, first_delivery=True),
            store.claim(make_call(), stream_seq=2, max_attempts=3, first_delivery=True),
            return_exceptions=True,
        )
    finally:
        await reader.close()

    assert len(results) == 2
    for result in results:
        assert isinstance(result, errors.NatsUnavailable)
        assert "503" in str(result)


async def test_closed_reader_fails_reads(reader: BatchedStatusReader) -> None:
    pending = asyncio.create_task(reader.read("any"))
    await asyncio.sleep(0)
    await reader.close()

    with pytest.raises(errors.NatsUnavailable, match="closed"):
        await pending
    with pytest.raises(errors.NatsUnavailable, match="closed"):
        await reader.read("other")


async def test_existing_bucket_gets_direct_gets(js: JetStreamContext) -> None:
    await js.create_key_value(
        config=jsapi.KeyValueConfig(bucket=constants.STATUS_BUCKET, history=1)
    )
    before = await js.stream_info(STATUS_STREAM)

    bucket = await jetstream.ensure_status_bucket(js)

    after = await js.stream_info(STATUS_STREAM)
    assert not before.config.allow_direct
    assert after.config.allow_direct
    assert dataclasses.replace(after.config, allow_direct=False) == before.config
    assert bucket._direct  # noqa: SLF001


async def test_writer_compare_and_set(nc: NatsClient, bucket: KeyValue) -> None:
    writer = StatusWriter(nc, subject_prefix=KEY_PREFIX, timeout_s=5.0)
    try:
        created = await writer.write("key", b"one", last=0)
        conflict = await writer.write("key", b"two", last=0)
        assert created is not None
        updated = await writer.write("key", b"three", last=created)
        stale = await writer.write("key", b"four", last=created)
    finally:
        await writer.close()

    assert conflict is None
    assert updated is not None
    assert updated > created
    assert stale is None
    entry = await bucket.get("key")
    assert entry.value == b"three"
    assert entry.revision == updated


async def test_create_over_deleted_record(
    nc: NatsClient, bucket: KeyValue, reader: BatchedStatusReader
) -> None:
    writer = StatusWriter(nc, subject_prefix=KEY_PREFIX, timeout_s=5.0)
    store = StatusStore(bucket, lease_s=LEASE_S, reader=reader, writer=writer)
    record = cancelled_record("gone")
    await bucket.create(record.key, b"{}")
    await bucket.delete(record.key)
    try:
        assert await store.read("gone") is None
        revision = await store.save(record, revision=None)
        stored = await store.read("gone")
    finally:
        await writer.close()

    assert revision is not None
    assert stored == status.Stored(record, revision)


async def test_writer_failures_raise(nc: NatsClient, bucket: KeyValue) -> None:
    # The PubAck needs a round trip, so a 1 µs timer always fires first.
    hasty = StatusWriter(nc, subject_prefix=KEY_PREFIX, timeout_s=1e-6)
    unheard = StatusWriter(nc, subject_prefix="NOBODY.", timeout_s=5.0)
    try:
        with pytest.raises(errors.NatsUnavailable, match="no reply within 1e-06 s"):
            await hasty.write("key", b"data", last=0)
        with pytest.raises(errors.NatsUnavailable, match="no responders"):
            await unheard.write("key", b"data", last=0)
    finally:
        await hasty.close()
        await unheard.close()

    # The timed-out write was stored anyway, and its late PubAck was dropped.
    entry = await bucket.get("key")
    assert entry.value == b"data"


class _Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


async def _confirmations(
    nats_url: str, writer: StatusWriter, writes: Callable[[], Awaitable[None]]
) -> list[bool]:
    """Run `writes`, close `writer`, and tell of each put whether it had a reply."""
    watcher = await nats.connect(nats_url)
    try:
        subscription = await subscribe_ready(watcher, KEY_PREFIX + ">")
        await writes()
        seen: list[bool] = []
        while True:
            try:
                msg = await subscription.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return seen
            seen.append(bool(msg.reply))
    finally:
        await writer.close()
        await watcher.close()


async def test_put_confirms_one_write_per_interval(
    nats_url: str, nc: NatsClient, bucket: KeyValue
) -> None:
    clock = _Clock()
    writer = StatusWriter(
        nc,
        subject_prefix=KEY_PREFIX,
        timeout_s=5.0,
        confirm_interval_s=1.0,
        clock_s=clock,
    )
    first = await bucket.create("key", b"old")

    async def writes() -> None:
        await writer.put("key", b"confirmed")
        await writer.put("key", b"sent")
        clock.now_s += 0.99
        await writer.put("key", b"sent again")
        clock.now_s += 0.02
        await writer.put("key", b"confirmed again")
        await nc.flush()

    confirmed = await _confirmations(nats_url, writer, writes)

    assert confirmed == [True, False, False, True]
    entry = await bucket.get("key")
    assert entry.value == b"confirmed again"
    assert entry.revision == first + 4


async def test_failed_put_confirms_until_one_succeeds(
    nats_url: str, nc: NatsClient, js: JetStreamContext, bucket: KeyValue
) -> None:
    clock = _Clock()
    # Without its stream, a PubAck may never come, so the wait is short.
    writer = StatusWriter(nc, subject_prefix=KEY_PREFIX, timeout_s=0.5, clock_s=clock)

    async def writes() -> None:
        await writer.put("key", b"before")
        await js.delete_stream(STATUS_STREAM)
        clock.now_s += 1.0
        # The confirmation due finds the bucket gone, and then every put
        # waits for its PubAck, although the clock has not moved.
        for _ in range(2):
            with pytest.raises(
                errors.NatsUnavailable, match="no responders|no reply within"
            ):
                await writer.put("key", b"lost")
        await jetstream.ensure_status_bucket(js)
        await writer.put("key", b"after")
        await writer.put("key", b"unconfirmed")
        await nc.flush()

    confirmed = await _confirmations(nats_url, writer, writes)

    assert confirmed == [True, True, True, True, False]
    entry = await (await js.key_value(constants.STATUS_BUCKET)).get("key")
    assert entry.value == b"unconfirmed"


async def test_full_bucket_holds_no_call(
    nats_url: str,
    js: JetStreamContext,
    bucket: KeyValue,
    gateway: RecordingServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    info = await js.stream_info(STATUS_STREAM)
    await js.update_stream(dataclasses.replace(info.config, max_msgs=1))
    await bucket.put("filler", b"{}")
    calls = [make_call() for _ in range(12)]

    async with running_worker(make_settings(nats_url, gateway.url)):
        for call in calls:
            await publish(js, call)
        # Each refused write used to be retried for PERSIST_TIMEOUT_S (30 s)
        # while the call held its slot.
        await wait_for_empty_stream(js, timeout_s=10.0)

    # At most UNSTORED_STATUS_LINES_PER_S lines a second; the rest are counted.
    logged = [
        log_context(record)
        for record in caplog.records
        if record.getMessage() == "final status not stored"
    ]
    counted = sum(
        log_context(record)["calls"]
        for record in caplog.records
        if record.getMessage() == "final statuses not stored, not logged"
    )
    assert all("maximum messages exceeded" in line["reason"] for line in logged)
    assert {line["call_id"] for line in logged} <= {call.call_id for call in calls}
    assert len(logged) + counted == len(calls)
    assert counted > 0
    assert not any("not confirmed" in r.getMessage() for r in caplog.records)


async def test_worker_batch_skips_cancelled_and_duplicate(
    nats_url: str,
    js: JetStreamContext,
    bucket: KeyValue,
    gateway: RecordingServer,
) -> None:
    cancelled, duplicate = make_call(), make_call()
    others = [make_call() for _ in range(3)]
    await bucket.create(
        status_key(cancelled.call_id), cancelled_record(cancelled.call_id).to_json()
    )
    await publish(js, cancelled)
    ack = await js.publish(
        duplicate.subject(), duplicate.body, headers=duplicate.to_nats_headers()
    )
    finished = finished_record(duplicate.call_id, stream_seq=ack.seq)
    await bucket.create(status_key(duplicate.call_id), finished.to_json())
    for call in others:
        await publish(js, call)

    # All five calls are stored before the worker starts, so one fetch
    # returns them and their reads go out together.
    async with running_worker(make_settings(nats_url, gateway.url)) as worker:
        await gateway.wait_for_requests(len(others))
        await wait_for_empty_stream(js)
        reader = worker._status_reader  # noqa: SLF001
        assert reader is not None
        batched_reads = sum(
            size * count for size, count in enumerate(reader.batch_sizes) if size > 1
        )

    invoked = {request.header("X-Call-Id") for request in gateway.requests}
    assert invoked == {call.call_id for call in others}
    assert batched_reads >= 2
    cancelled_now = await call_status(js, cancelled.call_id)
    assert cancelled_now is not None
    assert cancelled_now.state is CallState.CANCELLED
    duplicate_now = await call_status(js, duplicate.call_id)
    assert duplicate_now == finished
