"""The contract floor of the Kafka connector: the raw loop plus the connector's headers.

Run by the kafka-connector benchmark as a process of its own:

    python -m bench.contract_kafka --brokers HOST:PORT --topic T --group G \\
        --function-url URL --function NAME --count N

It is `bench.raw_kafka` with one difference: each POST carries the headers
that the Kafka connector's contract gives a function invoked on a replica
(docs/connectors.md). Those are `X-Topic`, `X-Connector`, the `X-Call-Id`
derived from the record and the function (`connectors.core.invoker.call_id_for`),
`X-Kafka-Partition`, `X-Kafka-Offset`, `X-Kafka-Timestamp` and
`X-Kafka-Key`, and `X-Start-Time`, `X-Forwarded-Host` and `X-Forwarded-For`
as the gateway would add them. The benchmark's keys are plain text and its
records have no headers of their own, so no value needs base64 here.

It keeps aiokafka's automatic offset commits, with no ordering, retries,
dead letters, topic map, metrics or logs. So its rate estimates the most
that a connector sending those headers reaches with aiokafka and aiohttp on
this machine. The connector's distance from it is what the connector's own
work costs: its at-least-once offset commits, retries, topic map, metrics
and logs.
"""

import asyncio
import sys
import time

import aiohttp
import uvloop
import yarl

from bench import raw_loop
from bench.raw_kafka import Record, fetch_records, start_consumer
from connectors.core.invoker import call_id_for
from faashub import constants
from faashub.names import FunctionRef

CONNECTOR = "kafka-connector"


async def consume(
    *,
    brokers: str,
    topic: str,
    group: str,
    function_url: str,
    function: FunctionRef,
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
    url = yarl.URL(function_url)
    forwarded_host = f"{url.host}:{url.port}"
    forwarded_for = url.host or ""

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
            identity = f"kafka/{record.topic}/{record.partition}/{record.offset}"
            headers = {
                "X-Topic": record.topic,
                "X-Connector": CONNECTOR,
                constants.CALL_ID: call_id_for(identity, function),
                "X-Kafka-Partition": str(record.partition),
                "X-Kafka-Offset": str(record.offset),
                "X-Kafka-Timestamp": str(record.timestamp),
                constants.START_TIME: str(time.time_ns()),
                "X-Forwarded-Host": forwarded_host,
                "X-Forwarded-For": forwarded_for,
            }
            if record.key is not None:
                headers["X-Kafka-Key"] = record.key.decode()
            try:
                async with session.post(
                    function_url, data=record.value or b"", headers=headers
                ) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError as exc:
                # No retries here either: count the loss, and the benchmark
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


def main(argv: list[str] | None = None) -> int:
    parser = raw_loop.argument_parser(
        "bench.contract_kafka", __doc__.split("\n\n")[0], count_help="records to send"
    )
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument(
        "--function", required=True, help="function name, for the call ids"
    )
    args = parser.parse_args(argv)
    outcome = uvloop.run(
        consume(
            brokers=args.brokers,
            topic=args.topic,
            group=args.group,
            function_url=args.function_url,
            function=FunctionRef(args.function, constants.DEFAULT_NAMESPACE),
            count=args.count,
            concurrency=args.concurrency,
            time_limit_s=args.time_limit_s,
        )
    )
    return raw_loop.print_outcome(outcome, done=int(outcome["sent"]), count=args.count)


if __name__ == "__main__":
    sys.exit(main())
