"""Run fetched records in the order the ordering mode demands.

Records wait in lanes. A lane runs one record at a time, in offset order,
and lanes run in parallel. The ordering mode decides the lanes:

* `partition`: one lane per partition, so a partition's records are handled
  one after another and partitions in parallel;
* `key`: one lane per partition and key, so records with the same key are
  handled in order and different keys in parallel. Parallelism is not capped
  by the partition count, and a record that keeps failing delays only the
  records with its own key. Records without a key are not ordered;
* `none`: every record is its own lane.

At most `max_inflight` records are being handled at once, whatever the mode.
A record whose lane is free waits in one ready queue, in fetch order, and
waiting records cost no task. A task that finishes a record takes the next
ready one itself, so a new task starts only when the queue had run empty.
Creating one per record took about 5 % of the connector's CPU (py-spy, the
kafka-connector benchmark).
Every partition has an `OffsetTracker` that learns when each record becomes
final, and `fetchable()` names the partitions with room for more records:
a partition with `buffer_records` records not final is left out until half
of them are.

When partitions are revoked (a rebalance, or the connector stopping), the
commit stops at the oldest record that is not final, and the partition's
next owner consumes everything from there again. So a revoke keeps running
the waiting records that lie before the partition's last finished or
running record, in their lanes, and drops only the ones after it, which no
finished record follows. Without that, in `key` and `none` mode, one record
waiting behind a busy key would send every finished record after it to the
next owner once more. Records being handled and the kept ones get up to
the drain timeout to finish; the rest are cancelled, and come back with the
dropped ones.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from aiokafka.structs import ConsumerRecord, TopicPartition

from connectors.kafka import constants
from connectors.kafka.offsets import OffsetTracker

logger = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]
RecordHandler = Callable[[Record], Awaitable[None]]

# Lane key of records that no lane orders (`none` mode, or no key in `key`).
_UNORDERED: Final = object()


@dataclass(eq=False)
class PartitionWork:
    """The records of one assigned partition that are not final yet."""

    partition: TopicPartition
    offsets: OffsetTracker = field(default_factory=OffsetTracker)
    committed: int | None = None
    """The last offset committed by this connector during this assignment."""
    lanes: dict[object, deque[Record]] = field(default_factory=dict)
    """Busy lanes, each with the records that wait behind its current one."""
    handling: dict["asyncio.Task[None]", int] = field(default_factory=dict)
    """Tasks that are handling a record of this partition now, with its offset."""
    full: bool = False
    """Whether the partition is left out of fetches until half its buffer drains."""
    revoked: bool = False
    """Set once the partition is revoked: it takes no new records."""
    run_below: int = 0
    """Of a revoked partition, only waiting records before this offset run."""
    kept: int = 0
    """Of a revoked partition, the waiting records that still run."""
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the partition is revoked and none of its kept records is left."""


@dataclass(frozen=True, slots=True)
class RevokeReport:
    """The fate of the records of revoked partitions."""

    works: list[PartitionWork]
    finished: int
    """Records whose handling finished within the drain timeout."""
    abandoned: int
    """Records cancelled while being handled, delivered again later."""
    dropped: int = 0
    """Records that never started, delivered again later."""


class Dispatcher:
    """Lanes, the in-flight bound and the offset trackers of every partition."""

    def __init__(
        self,
        *,
        ordering: Literal["partition", "key", "none"],
        max_inflight: int,
        handle: RecordHandler,
        buffer_records: int = constants.PARTITION_BUFFER_RECORDS,
    ) -> None:
        self._ordering = ordering
        self._max_inflight = max_inflight
        self._handle = handle
        self._buffer_records = buffer_records
        self._works: dict[TopicPartition, PartitionWork] = {}
        self._ready: deque[tuple[PartitionWork, object, Record]] = deque()
        self._running = 0
        self.capacity_freed = asyncio.Event()
        """Set when a full partition has drained to half its buffer; the fetch
        loop clears it to wait."""

    @property
    def works(self) -> list[PartitionWork]:
        """The partitions assigned now."""
        return list(self._works.values())

    @property
    def running(self) -> int:
        """Records being handled now."""
        return self._running

    def work_for(self, partition: TopicPartition) -> PartitionWork | None:
        """Return the work of an assigned partition, or None."""
        return self._works.get(partition)

    def fetchable(self) -> list[TopicPartition]:
        """Return the assigned partitions that have room for more records.

        A partition leaves the list when its buffer is full and comes back
        when half of it has drained, so the fetch loop wakes up once per
        half buffer rather than once per record.
        """
        return [partition for partition, work in self._works.items() if not work.full]

    def assign(self, partition: TopicPartition) -> PartitionWork:
        """Start tracking a newly assigned partition."""
        work = self._works.get(partition)
        if work is None:
            work = self._works[partition] = PartitionWork(partition)
        return work

    def submit(self, work: PartitionWork, records: Iterable[Record]) -> None:
        """Queue fetched records of one partition, in offset order."""
        ordering = self._ordering
        ready = self._ready
        for record in records:
            work.offsets.add(record.offset)
            if ordering == "none" or (ordering == "key" and record.key is None):
                ready.append((work, _UNORDERED, record))
                continue
            lane_key = record.key if ordering == "key" else None
            lane = work.lanes.get(lane_key)
            if lane is not None:
                lane.append(record)
                continue
            # A lane exists while busy. Its deque contains the records behind.
            work.lanes[lane_key] = deque()
            ready.append((work, lane_key, record))
        if work.offsets.pending >= self._buffer_records:
            work.full = True
        self._start_ready()

    async def revoke(
        self, partitions: Iterable[TopicPartition], *, timeout_s: float
    ) -> RevokeReport:
        """Stop the partitions' records, wait up to `timeout_s` for those running.

        The waiting records before each partition's last finished or running
        record run too, within the same time. Returns the revoked works,
        whose offset trackers hold the final offsets to commit.
        """
        works, dropped = self._remove(partitions, keep_gaps=True)
        started = sum(len(work.handling) + work.kept for work in works)
        # A task moves on to other partitions' records once it finishes one
        # of these, so the wait is for the partitions to drain, not the tasks.
        waits = [
            asyncio.create_task(work.drained.wait())
            for work in works
            if not work.drained.is_set()
        ]
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)
            for wait in waits:
                wait.cancel()
        never_started = sum(work.kept for work in works)
        self._stop_kept(works)
        still_running = {task for work in works for task in work.handling}
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running)
        return RevokeReport(
            works,
            finished=started - never_started - len(still_running),
            abandoned=len(still_running),
            dropped=dropped + never_started,
        )

    def cancel_all(self) -> list[PartitionWork]:
        """Cancel every record at once; return the works for a final commit."""
        works, _ = self._remove(list(self._works), keep_gaps=False)
        for work in works:
            for task in work.handling:
                task.cancel()
        return works

    def _remove(
        self, partitions: Iterable[TopicPartition], *, keep_gaps: bool
    ) -> tuple[list[PartitionWork], int]:
        """Revoke the partitions; return their works and the records dropped.

        With `keep_gaps`, waiting records before a partition's last finished
        or running one are kept, because dropping them would leave a gap.
        """
        works = [
            work
            for partition in partitions
            if (work := self._works.pop(partition, None)) is not None
        ]
        dropped = 0
        for work in works:
            work.revoked = True
            work.run_below = self._last_started(work) if keep_gaps else 0
            for lane_key, lane in list(work.lanes.items()):
                kept = deque(
                    record for record in lane if record.offset < work.run_below
                )
                dropped += len(lane) - len(kept)
                work.kept += len(kept)
                work.lanes[lane_key] = kept
        if works:
            ready: deque[tuple[PartitionWork, object, Record]] = deque()
            for item in self._ready:
                work, _, record = item
                if not work.revoked:
                    ready.append(item)
                elif record.offset < work.run_below:
                    work.kept += 1
                    ready.append(item)
                else:
                    dropped += 1
            self._ready = ready
        for work in works:
            if not work.handling and not work.kept:
                work.drained.set()
        return works, dropped

    @staticmethod
    def _last_started(work: PartitionWork) -> int:
        """Return the offset of the partition's last finished or running record."""
        offsets = list(work.handling.values())
        last_final = work.offsets.last_final()
        if last_final is not None:
            offsets.append(last_final)
        return max(offsets, default=-1)

    def _stop_kept(self, works: list[PartitionWork]) -> None:
        """Drop the kept records of `works` that have not started."""
        for work in works:
            work.run_below = 0
            work.kept = 0
            work.lanes.clear()
        self._ready = deque(item for item in self._ready if not item[0].revoked)

    def _start_ready(self) -> None:
        while (item := self._take_ready()) is not None:
            work = item[0]
            work.handling[asyncio.create_task(self._run(item))] = item[2].offset

    def _take_ready(self) -> tuple[PartitionWork, object, Record] | None:
        """Take a free slot and the next ready record, or return None without both."""
        ready = self._ready
        while self._running < self._max_inflight and ready:
            item = ready.popleft()
            work = item[0]
            if not work.revoked:
                self._running += 1
                return item
            if item[2].offset < work.run_below:
                work.kept -= 1
                self._running += 1
                return item
        return None

    async def _run(self, item: tuple[PartitionWork, object, Record]) -> None:
        """Handle `item`, then each ready record after it while there is one.

        The task is in the `handling` set of the partition whose record it
        handles now, so a revoke waits for or cancels exactly that record.
        The handler is awaited here, not in a helper coroutine, because every
        frame between the task and the HTTP request is resumed on each wait
        of each record.
        """
        task = asyncio.current_task()
        assert task is not None
        handle = self._handle
        while True:
            work, lane_key, record = item
            handled = False
            try:
                await handle(record)
                handled = True
            except Exception:
                # A bug, since the handler deals with every failure it expects.
                # The record stays pending, so its partition's commits stop
                # before it, its lane stops, and a restart delivers it again.
                logger.exception(
                    "record handler failed",
                    extra={
                        "ctx": {
                            "topic": record.topic,
                            "partition": record.partition,
                            "offset": record.offset,
                        }
                    },
                )
            finally:
                # Runs on cancellation too, which must give the slot back.
                self._running -= 1
                del work.handling[task]
                if work.revoked and not work.handling and not work.kept:
                    work.drained.set()
            if handled:
                self._finish(work, lane_key, record)
            next_item = self._take_ready()
            if next_item is None:
                return
            item = next_item
            next_item[0].handling[task] = next_item[2].offset
            # Slots that cancelled records left free get tasks of their own.
            if self._running < self._max_inflight and self._ready:
                self._start_ready()

    def _finish(self, work: PartitionWork, lane_key: object, record: Record) -> None:
        work.offsets.finish(record.offset)
        if work.full and work.offsets.pending <= self._buffer_records // 2:
            work.full = False
            self.capacity_freed.set()
        if lane_key is not _UNORDERED:
            self._next_in_lane(work, lane_key)

    def _next_in_lane(self, work: PartitionWork, lane_key: object) -> None:
        lane = work.lanes.get(lane_key)
        if lane is None:
            # The lanes of a revoked partition were cleared.
            return
        if lane:
            self._ready.append((work, lane_key, lane.popleft()))
        else:
            del work.lanes[lane_key]
