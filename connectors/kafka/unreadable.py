"""Step past records that aiokafka cannot decode, and dead-letter them.

aiokafka (0.14) decodes every record header name as UTF-8 while it unpacks a
fetch, and a name that is not valid UTF-8 makes `getmany` raise
UnicodeDecodeError for the whole fetch. The records it had unpacked before
the bad one, of that partition and of others, are then lost from the fetch,
and the consumer's position has moved past some of them. Fetching again
would raise again.

`UnreadableRecords.recover` handles that failure. It moves every partition
of the failed fetch back to the first offset the dispatcher has not seen,
then reads each partition one record at a time until the bad record raises
again. The position is then the bad record's offset. It dispatches the
records read on the way and a stand-in record for the bad one. The source
turns the stand-in into one dead letter per subscribed function, with an
empty value, no key or headers of the record, status 400 and the reason.
Then `recover` seeks past the bad record, and normal fetching goes on.

NOTE: in a compacted partition, a gap just before the bad record makes the
position lower than its offset. The stand-in then takes the gap's offset,
and the next fetch fails and recovers again one offset further on.
"""

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import IllegalStateError
from aiokafka.structs import ConsumerRecord, TopicPartition

from connectors.core.invoker import InvocationResult, call_id_for
from connectors.kafka import constants
from connectors.kafka.dispatch import Dispatcher, PartitionWork, Record
from connectors.kafka.records import record_identity
from faashub import names

logger = logging.getLogger(__name__)

UNREADABLE_STATUS = 400


class UnreadableRecords:
    """Records that could not be decoded, by partition and offset, until handled."""

    def __init__(self, *, group_id: str) -> None:
        self._group_id = group_id
        self._reasons: dict[tuple[TopicPartition, int], str] = {}
        self.next_offsets: dict[TopicPartition, int] = {}
        """The offset after the last record dispatched, per partition."""

    def __bool__(self) -> bool:
        return bool(self._reasons)

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what is known about partitions that were revoked."""
        for partition in partitions:
            self.next_offsets.pop(partition, None)

    def pop_reason(self, record: Record) -> str | None:
        """Return why `record` is a stand-in for an unreadable one, or None."""
        key = (TopicPartition(record.topic, record.partition), record.offset)
        return self._reasons.pop(key, None)

    def results(
        self, record: Record, reason: str, functions: Iterable[names.FunctionRef]
    ) -> list[InvocationResult]:
        """Return one failed result per function, for the dead letters."""
        identity = record_identity(record, group_id=self._group_id)
        return [
            InvocationResult(
                function=function,
                topic=record.topic,
                call_id=call_id_for(identity, function),
                status=UNREADABLE_STATUS,
                attempts=0,
                duration_s=0.0,
                error=reason,
            )
            for function in functions
        ]

    async def recover(
        self,
        consumer: AIOKafkaConsumer,
        dispatcher: Dispatcher,
        partitions: Iterable[TopicPartition],
        error: UnicodeDecodeError,
    ) -> int:
        """Re-read `partitions` after a fetch failed with `error`, as the module says.

        Returns the records dispatched, the stand-in included.
        """
        works = [
            work
            for partition in partitions
            if (work := dispatcher.work_for(partition)) is not None
        ]
        dispatched = 0
        try:
            for work in works:
                offset = await self._next_offset(consumer, work.partition)
                consumer.seek(work.partition, offset)
            for work in works:
                if not work.revoked:
                    dispatched += await self._step(consumer, dispatcher, work, error)
        except IllegalStateError:
            # A partition was revoked meanwhile. Its next owner reads it again.
            pass
        return dispatched

    async def _step(
        self,
        consumer: AIOKafkaConsumer,
        dispatcher: Dispatcher,
        work: PartitionWork,
        error: UnicodeDecodeError,
    ) -> int:
        """Dispatch one partition's records one at a time, up to the bad one."""
        partition = work.partition
        dispatched = 0
        # Each step reads one record from the fetch aiokafka buffered, so the
        # position names the bad record when a step raises.
        for _ in range(constants.FETCH_MAX_RECORDS):
            try:
                batches = await consumer.getmany(
                    partition, timeout_ms=constants.FETCH_TIMEOUT_MS, max_records=1
                )
            except UnicodeDecodeError:
                offset = await consumer.position(partition)
                self._dispatch_stand_in(dispatcher, work, offset, error)
                consumer.seek(partition, offset + 1)
                return dispatched + 1
            records = batches.get(partition, [])
            if not records:
                break
            dispatcher.submit(work, records)
            self.next_offsets[partition] = records[-1].offset + 1
            dispatched += len(records)
        return dispatched

    async def _next_offset(
        self, consumer: AIOKafkaConsumer, partition: TopicPartition
    ) -> int:
        known = self.next_offsets.get(partition)
        if known is not None:
            return known
        # Nothing was dispatched since the assignment, so the fetch began at the
        # committed offset, or at the start as auto_offset_reset="earliest" does.
        committed = await consumer.committed(partition)
        if committed is not None:
            return int(committed)
        beginning = await consumer.beginning_offsets([partition])
        return int(beginning[partition])

    def _dispatch_stand_in(
        self,
        dispatcher: Dispatcher,
        work: PartitionWork,
        offset: int,
        error: UnicodeDecodeError,
    ) -> None:
        partition = work.partition
        reason = (
            f"The record at offset {offset} of partition {partition.partition} "
            f"could not be decoded ({error.reason} in a header name, which must be "
            "UTF-8), so it was not delivered."
        )
        logger.warning(
            "record cannot be decoded, dead-lettering it",
            extra={
                "ctx": {
                    "topic": partition.topic,
                    "partition": partition.partition,
                    "offset": offset,
                    "error": str(error),
                }
            },
        )
        self._reasons[(partition, offset)] = reason
        stand_in: Record = ConsumerRecord(
            topic=partition.topic,
            partition=partition.partition,
            offset=offset,
            timestamp=-1,
            timestamp_type=0,
            key=None,
            # A dead letter needs a key or a value, so the value is empty.
            value=b"",
            checksum=None,
            serialized_key_size=-1,
            serialized_value_size=-1,
            headers=[],
        )
        dispatcher.submit(work, [stand_in])
        self.next_offsets[partition] = offset + 1
