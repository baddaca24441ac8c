"""The ordering modes, the in-flight bound and revocation, without a broker."""

import asyncio
from collections import defaultdict

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from connectors.kafka.dispatch import Dispatcher, Record

pytestmark = pytest.mark.timeout(10)

P0 = TopicPartition("orders", 0)
P1 = TopicPartition("orders", 1)


def make_record(partition: int, offset: int, key: bytes | None = None) -> Record:
    return ConsumerRecord(
        topic="orders",
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=f"{partition}/{offset}".encode(),
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=0,
        headers=(),
    )


class Handler:
    """Records handling order and concurrency, and blocks the keys in `blocked_keys`."""

    def __init__(self, *, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.handled: list[Record] = []
        self.active: dict[object, int] = defaultdict(int)
        self.max_active: dict[object, int] = defaultdict(int)
        self.blocked_keys: set[bytes] = set()
        self.release = asyncio.Event()

    async def __call__(self, record: Record) -> None:
        for group in ("all", record.partition, (record.partition, record.key)):
            self.active[group] += 1
            self.max_active[group] = max(self.max_active[group], self.active[group])
        try:
            if record.key in self.blocked_keys:
                await self.release.wait()
            await asyncio.sleep(self.delay_s)
            self.handled.append(record)
        finally:
            for group in ("all", record.partition, (record.partition, record.key)):
                self.active[group] -= 1


def dispatcher(
    handler: Handler,
    *,
    ordering: str,
    max_inflight: int = 64,
    buffer_records: int = 1000,
) -> Dispatcher:
    return Dispatcher(
        ordering=ordering,  # type: ignore[arg-type]
        max_inflight=max_inflight,
        handle=handler,
        buffer_records=buffer_records,
    )


async def settle(handler: Handler, count: int) -> None:
    for _ in range(500):
        if len(handler.handled) >= count:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"handled {len(handler.handled)} of {count} records")


async def test_partition_mode_runs_one_per_partition() -> None:
    handler = Handler()
    lanes = dispatcher(handler, ordering="partition")
    for partition in (P0, P1):
        work = lanes.assign(partition)
        lanes.submit(work, [make_record(partition.partition, n) for n in range(5)])

    await settle(handler, 10)

    assert handler.max_active[0] == 1
    assert handler.max_active[1] == 1
    assert handler.max_active["all"] == 2
    for partition in (0, 1):
        offsets = [r.offset for r in handler.handled if r.partition == partition]
        assert offsets == [0, 1, 2, 3, 4]
    assert lanes.work_for(P0) is not None
    assert lanes.work_for(P0).offsets.committable() == 5  # type: ignore[union-attr]


async def test_key_mode_orders_each_key_only() -> None:
    handler = Handler()
    lanes = dispatcher(handler, ordering="key")
    keys = [b"a", b"b", b"a", b"c", b"b", b"a"]
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, n, key) for n, key in enumerate(keys)])

    await settle(handler, len(keys))

    for key in (b"a", b"b", b"c"):
        offsets = [r.offset for r in handler.handled if r.key == key]
        assert offsets == [n for n, k in enumerate(keys) if k == key]
        assert handler.max_active[(0, key)] == 1
    assert handler.max_active["all"] == 3


async def test_key_mode_poison_blocks_only_its_key() -> None:
    handler = Handler()
    handler.blocked_keys.add(b"bad")
    lanes = dispatcher(handler, ordering="key")
    keys = [b"good", b"bad", b"good", b"bad", b"other"]
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, n, key) for n, key in enumerate(keys)])

    await settle(handler, 3)
    assert sorted(r.offset for r in handler.handled) == [0, 2, 4]
    assert work.offsets.committable() == 1

    handler.release.set()
    await settle(handler, 5)
    assert [r.offset for r in handler.handled if r.key == b"bad"] == [1, 3]
    assert work.offsets.committable() == 5


async def test_none_mode_respects_max_inflight() -> None:
    handler = Handler(delay_s=0.05)
    lanes = dispatcher(handler, ordering="none", max_inflight=3)
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, n) for n in range(12)])

    await settle(handler, 12)

    assert handler.max_active["all"] == 3
    assert work.offsets.committable() == 12


async def test_full_partition_is_not_fetchable() -> None:
    handler = Handler(delay_s=0.01)
    lanes = dispatcher(handler, ordering="partition", buffer_records=4)
    full, spare = lanes.assign(P0), lanes.assign(P1)
    lanes.submit(full, [make_record(0, n) for n in range(4)])
    lanes.submit(spare, [make_record(1, 0)])

    assert lanes.fetchable() == [P1]
    lanes.capacity_freed.clear()
    await asyncio.wait_for(lanes.capacity_freed.wait(), 1)
    await settle(handler, 5)
    assert lanes.fetchable() == [P0, P1]


async def test_waiting_records_hold_no_task() -> None:
    handler = Handler(delay_s=0.05)
    lanes = dispatcher(handler, ordering="none", max_inflight=2)
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, n) for n in range(50)])

    assert lanes.running == 2
    assert len(work.handling) == 2
    await settle(handler, 50)
    assert lanes.running == 0


async def test_revoke_finishes_running_and_drops_waiting() -> None:
    handler = Handler(delay_s=0.2)
    lanes = dispatcher(handler, ordering="partition")
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, n) for n in range(5)])
    await asyncio.sleep(0.05)

    report = await lanes.revoke({P0}, timeout_s=2.0)

    assert report.finished == 1
    assert report.abandoned == 0
    assert report.dropped == 4
    assert [r.offset for r in handler.handled] == [0]
    assert report.works[0].offsets.committable() == 1
    assert lanes.work_for(P0) is None
    await asyncio.sleep(0.3)
    assert len(handler.handled) == 1
    assert lanes.running == 0


async def test_revoke_runs_waiting_records_before_finished_ones() -> None:
    handler = Handler(delay_s=0.2)
    lanes = dispatcher(handler, ordering="key")
    work = lanes.assign(P0)
    keys = [b"a", b"a", b"b", b"b"]
    lanes.submit(work, [make_record(0, n, key) for n, key in enumerate(keys)])
    await asyncio.sleep(0.05)

    # Offsets 0 and 2 run. 1 waits behind 0 and would leave a gap before 2,
    # so it runs too; 3 has no finished record after it and is dropped.
    report = await lanes.revoke({P0}, timeout_s=2.0)

    assert sorted(r.offset for r in handler.handled) == [0, 1, 2]
    assert report.finished == 3
    assert report.abandoned == 0
    assert report.dropped == 1
    assert report.works[0].offsets.committable() == 3
    await asyncio.sleep(0.3)
    assert len(handler.handled) == 3
    assert lanes.running == 0


async def test_revoke_drops_kept_records_at_timeout() -> None:
    handler = Handler(delay_s=0.01)
    handler.blocked_keys.add(b"stuck")
    lanes = dispatcher(handler, ordering="key")
    work = lanes.assign(P0)
    keys = [b"stuck", b"stuck", b"b"]
    lanes.submit(work, [make_record(0, n, key) for n, key in enumerate(keys)])
    await settle(handler, 1)

    report = await lanes.revoke({P0}, timeout_s=0.1)

    assert [r.offset for r in handler.handled] == [2]
    assert report.finished == 0
    assert report.abandoned == 1
    assert report.dropped == 1
    assert report.works[0].offsets.committable() is None
    handler.release.set()
    await asyncio.sleep(0.05)
    assert [r.offset for r in handler.handled] == [2]
    assert lanes.running == 0


async def test_revoke_abandons_after_timeout() -> None:
    handler = Handler()
    handler.blocked_keys.add(b"stuck")
    lanes = dispatcher(handler, ordering="none")
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, 0, b"stuck"), make_record(0, 1)])
    await settle(handler, 1)

    report = await lanes.revoke({P0}, timeout_s=0.1)

    assert report.finished == 0
    assert report.abandoned == 1
    assert report.works[0].offsets.committable() is None
    assert not work.handling
    assert lanes.running == 0


async def test_tasks_take_next_ready_record() -> None:
    handler = Handler(delay_s=0.01)
    tasks: set[asyncio.Task[object] | None] = set()

    async def handle(record: Record) -> None:
        tasks.add(asyncio.current_task())
        await handler(record)

    lanes = Dispatcher(ordering="none", max_inflight=2, handle=handle)
    work = lanes.assign(P0)
    lanes.submit(work, [make_record(0, n) for n in range(20)])

    await settle(handler, 20)

    assert len(tasks) == 2
    assert work.offsets.committable() == 20


async def test_revoke_spares_other_partitions_records() -> None:
    handler = Handler(delay_s=0.05)
    handler.blocked_keys.add(b"held")
    lanes = dispatcher(handler, ordering="none", max_inflight=1)
    first, other = lanes.assign(P0), lanes.assign(P1)
    lanes.submit(first, [make_record(0, 0)])
    lanes.submit(other, [make_record(1, 0, b"held")])
    await asyncio.sleep(0.02)

    # The one task handles P0's record, and P1's record waits behind it.
    report = await asyncio.wait_for(lanes.revoke({P0}, timeout_s=5.0), 2.0)

    assert report.finished == 1
    assert report.abandoned == 0
    await asyncio.sleep(0.02)
    assert lanes.running == 1
    assert len(other.handling) == 1
    handler.release.set()
    await settle(handler, 2)
    assert other.offsets.committable() == 1
    assert lanes.running == 0


async def test_revoke_waits_for_record_not_task() -> None:
    handler = Handler(delay_s=0.01)
    handler.blocked_keys.add(b"held")
    lanes = dispatcher(handler, ordering="none", max_inflight=1)
    first, other = lanes.assign(P0), lanes.assign(P1)
    lanes.submit(first, [make_record(0, 0)])
    lanes.submit(other, [make_record(1, 0, b"held")])
    await settle(handler, 1)

    # The task that handled P0's record now holds P1's blocked one.
    report = await asyncio.wait_for(lanes.revoke({P0}, timeout_s=5.0), 1.0)

    assert report.finished == 0
    assert report.abandoned == 0
    assert len(other.handling) == 1
    handler.release.set()
    await settle(handler, 2)
    assert other.offsets.committable() == 1
