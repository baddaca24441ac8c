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

When partitions are revoked (a rebalance, or the connector stopping), their
records that have not started are dropped. They are not committed, so the
partition's next owner consumes them again. Records being handled get up
to the drain timeout to finish; the rest are cancelled and come back too.
The commit stops at the oldest record that is not final, so in `key` and
`none` mode records that finished after it are delivered twice as well: up
to the partition's buffer, not only the in-flight window.
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
    handling: set["asyncio.Task[None]"] = field(default_factory=set)
    """Tasks that are handling a record of this partition now, one record each."""
    full: bool = False
    """Whether the partition is left out of fetches until half its buffer drains."""
    revoked: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the partition is revoked and none of its records is being handled."""


@dataclass(frozen=True, slots=True)
class RevokeReport:
    """The fate of the records of revoked partitions."""

    works: list[PartitionWork]
    finished: int
    """Records whose handling finished within the drain timeout."""
    abandoned: int
    """Records cancelled while being handled, delivered again later."""


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

        Returns the revoked works, whose offset trackers hold the final
        offsets to commit.
        """
        works = self._remove(partitions)
        handled = sum(len(work.handling) for work in works)
        # A task moves on to other partitions' records once it finishes one
        # of these, so the wait is for the partitions to drain, not the tasks.
        waits = [
            asyncio.create_task(work.drained.wait()) for work in works if work.handling
        ]
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)
            for wait in waits:
                wait.cancel()
        still_running = {task for work in works for task in work.handling}
        for task in still_running:
            task.cancel()
        if still_running:
            await asyncio.wait(still_running)
        return RevokeReport(
            works,
            finished=handled - len(still_running),
            abandoned=len(still_running),
        )

    def cancel_all(self) -> list[PartitionWork]:
        """Cancel every record at once; return the works for a final commit."""
        works = self._remove(list(self._works))
        for work in works:
            for task in work.handling:
                task.cancel()
        return works

    def _remove(self, partitions: Iterable[TopicPartition]) -> list[PartitionWork]:
        works = [
            work
            for partition in partitions
            if (work := self._works.pop(partition, None)) is not None
        ]
        for work in works:
            work.revoked = True
            work.lanes.clear()
            if not work.handling:
                work.drained.set()
        if works:
            self._ready = deque(item for item in self._ready if not item[0].revoked)
        return works

    def _start_ready(self) -> None:
        while (item := self._take_ready()) is not None:
            work = item[0]
            work.handling.add(asyncio.create_task(self._run(item)))

    def _take_ready(self) -> tuple[PartitionWork, object, Record] | None:
        """Take a free slot and the next ready record, or return None without both."""
        ready = self._ready
        while self._running < self._max_inflight and ready:
            item = ready.popleft()
            if not item[0].revoked:
                self._running += 1
                return item
        return None

    async def _run(self, item: tuple[PartitionWork, object, Record]) -> None:
        """Handle `item`, then each ready record after it while there is one.

        The task is in the `handling` set of the partition whose record it
        handles now, so a revoke waits for or cancels exactly that record.
        """
        task = asyncio.current_task()
        assert task is not None
        while True:
            work, lane_key, record = item
            if await self._handle_one(task, work, record):
                self._finish(work, lane_key, record)
            next_item = self._take_ready()
            if next_item is None:
                return
            item = next_item
            next_item[0].handling.add(task)
            # Slots that cancelled records left free get tasks of their own.
            self._start_ready()

    async def _handle_one(
        self, task: "asyncio.Task[None]", work: PartitionWork, record: Record
    ) -> bool:
        """Run the handler on `record` and return whether it ended without a bug."""
        try:
            await self._handle(record)
            return True
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
            return False
        finally:
            # Runs on cancellation too, which must give the slot back.
            self._running -= 1
            work.handling.discard(task)
            if work.revoked and not work.handling:
                work.drained.set()

    def _finish(self, work: PartitionWork, lane_key: object, record: Record) -> None:
        work.offsets.finish(record.offset)
        if work.full and work.offsets.pending <= self._buffer_records // 2:
            work.full = False
            self.capacity_freed.set()
        if lane_key is not _UNORDERED and not work.revoked:
            self._next_in_lane(work, lane_key)

    def _next_in_lane(self, work: PartitionWork, lane_key: object) -> None:
        lane = work.lanes[lane_key]
        if lane:
            self._ready.append((work, lane_key, lane.popleft()))
        else:
            del work.lanes[lane_key]
