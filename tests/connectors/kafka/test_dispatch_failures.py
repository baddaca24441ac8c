"""A record handler that raises leaves its record pending and frees its slot."""

import asyncio
import logging

import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from connectors.kafka.dispatch import Dispatcher, Record

pytestmark = pytest.mark.timeout(10)

P0 = TopicPartition("orders", 0)
FAILING_OFFSET = 1


def make_record(offset: int) -> Record:
    return ConsumerRecord(
        topic="orders",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=b"v",
        checksum=None,
        serialized_key_size=0,
        serialized_value_size=1,
        headers=(),
    )


class FailingHandler:
    """Raise RuntimeError for the record at FAILING_OFFSET, handle every other one."""

    def __init__(self) -> None:
        self.handled: list[int] = []

    async def __call__(self, record: Record) -> None:
        await asyncio.sleep(0)
        if record.offset == FAILING_OFFSET:
            raise RuntimeError("handler bug")
        self.handled.append(record.offset)


async def test_handler_bug_keeps_record_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = FailingHandler()
    # With one slot, the records after the failing one run only if it is freed.
    lanes = Dispatcher(ordering="none", max_inflight=1, handle=handler)
    work = lanes.assign(P0)

    with caplog.at_level(logging.ERROR, logger="connectors.kafka.dispatch"):
        lanes.submit(work, [make_record(offset) for offset in range(4)])
        for _ in range(200):
            if len(handler.handled) == 3 and not work.handling:
                break
            await asyncio.sleep(0.01)

    assert handler.handled == [0, 2, 3]
    assert lanes.running == 0
    assert not work.handling
    assert work.offsets.pending == 1
    assert work.offsets.committable() == FAILING_OFFSET
    failures = [
        line for line in caplog.records if line.getMessage() == "record handler failed"
    ]
    assert len(failures) == 1
    context = vars(failures[0])["ctx"]
    assert context == {"topic": "orders", "partition": 0, "offset": FAILING_OFFSET}
    assert failures[0].exc_info is not None
