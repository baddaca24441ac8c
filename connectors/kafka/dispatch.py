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
A record whose lane is free waits in one ready queue, in fetch order, and a
task is created only when a slot frees up, so records waiting cost no task.
Every partition has an `OffsetTracker` that learns when each record becomes
final, and `fetchable()` names the partitions with room for more records:
a partition with `buffer_records` records not final is left out until half
of them are.

When partitions are revoked (a rebalance, or the connector stopping), their
records that have not started are dropped. They are not committed, so the
partition's next owner consumes them again. Records being handled get up
to the drain timeout to finish; the rest are cancelled and come back too.
That bounds what a rebalance delivers twice by the in-flight window.
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
    """Tasks that are handling a record of this partition now."""
    full: bool = False
    """Whether the partition is left out of fetches until half its buffer drains."""
    revoked: bool = False


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
        handling = {task for work in works for task in work.handling}
        finished = len(handling)
        if handling:
            _, still_running = await asyncio.wait(handling, timeout=timeout_s)
            finished -= len(still_running)
            for task in still_running:
                task.cancel()
            if still_running:
                await asyncio.wait(still_running)
        return RevokeReport(
            works, finished=finished, abandoned=len(handling) - finished
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
        if works:
            self._ready = deque(item for item in self._ready if not item[0].revoked)
        return works

    def _start_ready(self) -> None:
        ready = self._ready
        while self._running < self._max_inflight and ready:
            work, lane_key, record = ready.popleft()
            if work.revoked:
                continue
            self._running += 1
            task = asyncio.create_task(self._run(work, lane_key, record))
            work.handling.add(task)

    async def _run(self, work: PartitionWork, lane_key: object, record: Record) -> None:
        task = asyncio.current_task()
        finished = False
        try:
            await self._handle(record)
            finished = True
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
            if task is not None:
                work.handling.discard(task)
        if finished:
            work.offsets.finish(record.offset)
            if work.full and work.offsets.pending <= self._buffer_records // 2:
                work.full = False
                self.capacity_freed.set()
            if lane_key is not _UNORDERED and not work.revoked:
                self._next_in_lane(work, lane_key)
        self._start_ready()

    def _next_in_lane(self, work: PartitionWork, lane_key: object) -> None:
        lane = work.lanes[lane_key]
        if lane:
            self._ready.append((work, lane_key, lane.popleft()))
        else:
            del work.lanes[lane_key]
