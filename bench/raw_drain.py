"""The baseline of the queue drain: a raw pull, invoke, callback, ack loop.

Run by the queue-drain benchmark as a process of its own, as the
queue-worker is:

    python -m bench.raw_drain --nats-url URL --stream S --consumer C \\
        --function-url URL --callback-url URL --count N

One task fetches batches of up to 100 messages from a durable pull consumer
that the benchmark created. `--concurrency` tasks each POST a message's body
to the function, POST the function's response to the callback URL with
X-Function-Status, and acknowledge the message. There are no retries, no
status records and no dead letters: it is the least work that drains a
queue with callbacks, so it measures what this machine allows. The loop
stops after `--count` messages or `--time-limit-s`, whichever comes first,
and prints one JSON line with what it did.
"""

import asyncio
import sys
import time

import aiohttp
import nats
import nats.errors
import uvloop
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench import raw_loop

FETCH_BATCH = 100
FETCH_TIMEOUT_S = 1.0


async def drain(
    *,
    nats_url: str,
    stream: str,
    consumer: str,
    function_url: str,
    callback_url: str,
    count: int,
    concurrency: int,
    time_limit_s: float,
) -> dict[str, int | float]:
    """Drain up to `count` messages and return the processed and failed counts."""
    nc = await nats.connect(nats_url, name="bench-raw-drain")
    subscription = await nc.jetstream().pull_subscribe_bind(consumer, stream)
    pending: asyncio.Queue[Msg | None] = asyncio.Queue(maxsize=2 * concurrency)
    processed = failed = 0
    started = time.monotonic()
    deadline = started + time_limit_s

    async def fetch() -> None:
        await fetch_messages(
            subscription,
            pending,
            count=count,
            deadline=deadline,
            concurrency=concurrency,
        )

    async def work(session: aiohttp.ClientSession) -> None:
        nonlocal processed, failed
        while (message := await pending.get()) is not None:
            try:
                async with session.post(function_url, data=message.data) as response:
                    result = await response.read()
                    status = response.status
                headers = {"X-Function-Status": str(status)}
                async with session.post(
                    callback_url, data=result, headers=headers
                ) as sent:
                    await sent.read()
            except aiohttp.ClientError as exc:
                # A baseline has no retries: count the loss, and the benchmark
                # reports the missing callback.
                print(f"call failed: {exc!r}", file=sys.stderr)
                status = 0
            await message.ack()
            processed += 1
            if not 200 <= status < 300:
                failed += 1

    try:
        await raw_loop.run_workers(fetch, work, concurrency=concurrency)
    finally:
        await nc.close()
    return {
        "processed": processed,
        "failed": failed,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


async def fetch_messages(
    subscription: JetStreamContext.PullSubscription,
    pending: "asyncio.Queue[Msg | None]",
    *,
    count: int,
    deadline: float,
    concurrency: int,
) -> None:
    """Put up to `count` pulled messages in `pending`, then stop the workers.

    It stops pulling at `deadline` (time.monotonic()), and puts one None per
    worker. `bench.contract_drain` pulls the same way.
    """
    fetched = 0
    while fetched < count and time.monotonic() < deadline:
        try:
            messages = await subscription.fetch(
                min(FETCH_BATCH, count - fetched), timeout=FETCH_TIMEOUT_S
            )
        except nats.errors.TimeoutError:
            continue
        for message in messages:
            await pending.put(message)
        fetched += len(messages)
    await raw_loop.stop_workers(pending, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = raw_loop.argument_parser(
        "bench.raw_drain", __doc__.split("\n\n")[0], count_help="messages to drain"
    )
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--consumer", required=True, help="durable pull consumer")
    parser.add_argument("--callback-url", required=True)
    args = parser.parse_args(argv)
    outcome = uvloop.run(
        drain(
            nats_url=args.nats_url,
            stream=args.stream,
            consumer=args.consumer,
            function_url=args.function_url,
            callback_url=args.callback_url,
            count=args.count,
            concurrency=args.concurrency,
            time_limit_s=args.time_limit_s,
        )
    )
    return raw_loop.print_outcome(
        outcome, done=int(outcome["processed"]), count=args.count
    )


if __name__ == "__main__":
    sys.exit(main())
