"""The baseline of the Kafka connector: a raw aiokafka consume-and-POST loop.

Run by the kafka-connector benchmark as a process of its own, as the
connector is:

    python -m bench.raw_kafka --brokers HOST:PORT --topic T --group G \\
        --function-url URL --count N

One task reads batches of records with `getmany` as a member of consumer
group G, from the oldest offset, with aiokafka's automatic offset commits.
`--concurrency` tasks each POST a record's value to the function. There is
no ordering, no retry, no dead-letter topic and no topic map: it is the
least work that moves records to a function, so it measures what this
machine allows. The loop stops after `--count` records or `--time-limit-s`,
whichever comes first, and prints one JSON line with what it did.
"""

import asyncio
import sys
import time
from typing import TypeAlias

import aiohttp
import uvloop
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from bench import raw_loop

FETCH_TIMEOUT_MS = 500
FETCH_MAX_RECORDS = 500

# A record as the consumer returns it, key and value as bytes.
Record: TypeAlias = ConsumerRecord[bytes, bytes]


async def consume(
    *,
    brokers: str,
    topic: str,
    group: str,
    function_url: str,
    count: int,
    concurrency: int,
    time_limit_s: float,
) -> dict[str, int | float]:
    """Send up to `count` records to the function; return the sent and failed counts."""
    consumer = await start_consumer(brokers=brokers, topic=topic, group=group)
    pending: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=2 * concurrency)
    sent = failed = 0
    started = time.monotonic()
    deadline = started + time_limit_s

    async def fetch() -> None:
        await fetch_records(
            consumer,
            pending,
            count=count,
            deadline=deadline,
            concurrency=concurrency,
        )

    async def work(session: aiohttp.ClientSession) -> None:
        nonlocal sent, failed
        while (record := await pending.get()) is not None:
            try:
                async with session.post(
                    function_url, data=record.value or b""
                ) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError as exc:
                # A baseline has no retries: count the loss, and the benchmark
                # reports the missing invocation.
                print(f"invocation failed: {exc!r}", file=sys.stderr)
                status = 0
            sent += 1
            if not 200 <= status < 300:
                failed += 1

    try:
        await raw_loop.run_workers(fetch, work, concurrency=concurrency)
    finally:
        await consumer.stop()
    return {
        "sent": sent,
        "failed": failed,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


async def start_consumer(*, brokers: str, topic: str, group: str) -> AIOKafkaConsumer:
    """Start a consumer of `topic` in `group`, from the oldest offset."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=brokers,
        group_id=group,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    return consumer


async def fetch_records(
    consumer: AIOKafkaConsumer,
    pending: "asyncio.Queue[Record | None]",
    *,
    count: int,
    deadline: float,
    concurrency: int,
) -> None:
    """Put up to `count` records in `pending`, then stop the workers.

    It stops reading at `deadline` (time.monotonic()), and puts one None per
    worker. `bench.contract_kafka` reads the same way.
    """
    fetched = 0
    while fetched < count and time.monotonic() < deadline:
        batches = await consumer.getmany(
            timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS
        )
        for records in batches.values():
            for record in records:
                await pending.put(record)
            fetched += len(records)
    await raw_loop.stop_workers(pending, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = raw_loop.argument_parser(
        "bench.raw_kafka", __doc__.split("\n\n")[0], count_help="records to send"
    )
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="consumer group id")
    args = parser.parse_args(argv)
    outcome = uvloop.run(
        consume(
            brokers=args.brokers,
            topic=args.topic,
            group=args.group,
            function_url=args.function_url,
            count=args.count,
            concurrency=args.concurrency,
            time_limit_s=args.time_limit_s,
        )
    )
    return raw_loop.print_outcome(outcome, done=int(outcome["sent"]), count=args.count)


if __name__ == "__main__":
    sys.exit(main())
