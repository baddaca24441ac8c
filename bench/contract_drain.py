"""The contract floor of the queue drain: the raw loop plus what the contract needs.

Run by the queue-drain benchmark as a process of its own:

    python -m bench.contract_drain --nats-url URL --function-url URL \\
        --count N

It drains the queued calls that the benchmark stored in faashub's calls
stream through the queue-worker's own durable pull consumer (the stream's
work-queue retention allows one consumer per queue). For each call it does
only what faashub's contract requires of any worker, with faashub's own
code for each step:

* parse the queued call from the message's headers (`QueuedCall.from_nats`);
* read the call's status record before the run, in batches as the worker
  does (`BatchedStatusReader`), so that a cancelled call never runs;
* POST the body to the function with the caller's headers, `X-Call-Id` and
  `X-Start-Time` (`queue_worker.invoke.request_headers`);
* POST the result to the call's callback URL with the OpenFaaS callback
  headers (`faashub.callback_request.callback_headers`);
* publish the call's final status record without waiting for its PubAck
  (`queue_worker.status.record_json`);
* acknowledge the message.

It has none of the worker's retries, limits, deadlines, metrics or logs,
and it takes each call as succeeded. So its rate is the most that a worker
keeping faashub's contract can reach with aiohttp and nats-py on this
machine, and the queue-worker's distance from it is what the worker's own
decisions cost. The loop stops after `--count` calls or `--time-limit-s`,
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
from nats.js import api as jsapi

from bench import raw_loop
from bench.raw_drain import fetch_messages
from faashub import call_status, callback_request, constants
from faashub.jetstream import worker_durable_name
from faashub.queued_call import QueuedCall, queue_filter_subject
from faashub.settings import WorkerSettings
from queue_worker.invoke import request_headers, response_headers
from queue_worker.status import record_json
from queue_worker.status_reads import BatchedStatusReader

STATUS_READ_TIMEOUT_S = 5.0
STATUS_READ_MAX_BATCH = 64
MAX_ATTEMPTS = 3
STATUS_SUBJECT_PREFIX = f"$KV.{constants.STATUS_BUCKET}."


async def drain(
    *,
    nats_url: str,
    function_url: str,
    count: int,
    concurrency: int,
    time_limit_s: float,
) -> dict[str, int | float]:
    """Drain up to `count` queued calls, and return what happened to them."""
    nc = await nats.connect(nats_url, name="bench-contract-drain")
    js = nc.jetstream()
    durable = worker_durable_name(constants.DEFAULT_QUEUE)
    # The queue-worker's configuration, so that the worker finds it as its own.
    await js.add_consumer(
        constants.CALLS_STREAM,
        jsapi.ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=queue_filter_subject(constants.DEFAULT_QUEUE),
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=WorkerSettings.model_fields["ack_wait_s"].default,
            max_deliver=-1,
            max_ack_pending=-1,
        ),
    )
    subscription = await js.pull_subscribe_bind(durable, constants.CALLS_STREAM)
    reader = BatchedStatusReader(
        nc,
        stream=f"KV_{constants.STATUS_BUCKET}",
        subject_prefix=STATUS_SUBJECT_PREFIX,
        timeout_s=STATUS_READ_TIMEOUT_S,
        max_batch=STATUS_READ_MAX_BATCH,
    )
    pending: asyncio.Queue[Msg | None] = asyncio.Queue(maxsize=2 * concurrency)
    processed = failed = skipped = 0
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
        nonlocal processed, failed, skipped
        while (message := await pending.get()) is not None:
            call = QueuedCall.from_nats(message.headers, message.data)
            key = call_status.status_key(call.call_id)
            if await reader.read(key) is not None:
                # A record exists, so the call was cancelled or has finished, and
                # the contract forbids running it.
                skipped += 1
                await message.ack()
                continue
            started_ns = time.time_ns()
            started_s = time.monotonic()
            callback_status = None
            try:
                async with session.post(
                    function_url, data=call.body, headers=request_headers(call)
                ) as response:
                    result = await response.read()
                    status = response.status
                    result_headers = response_headers(response.raw_headers)
                duration_s = time.monotonic() - started_s
                headers = callback_request.callback_headers(
                    call,
                    status,
                    result_headers,
                    duration_s=duration_s,
                    retry=1,
                    retry_max=MAX_ATTEMPTS,
                )
                async with session.post(
                    call.callback_url, data=result, headers=headers
                ) as sent:
                    await sent.read()
                    callback_status = sent.status
            except aiohttp.ClientError as exc:
                # No retries here either: count the loss, and the benchmark
                # reports the missing callback.
                print(f"call failed: {exc!r}", file=sys.stderr)
                status = 0
            now_ns = time.time_ns()
            record = call_status.CallStatus(
                call_id=call.call_id,
                function=call.function,
                namespace=call.namespace,
                state=call_status.CallState.SUCCEEDED,
                queue=call.queue,
                attempts=1,
                max_attempts=MAX_ATTEMPTS,
                last_status=status,
                accepted_at_ns=call.accepted_at_ns,
                started_at_ns=started_ns,
                finished_at_ns=now_ns,
                updated_at_ns=now_ns,
                callback_status=callback_status,
            )
            await nc.publish(STATUS_SUBJECT_PREFIX + key, record_json(record))
            await message.ack()
            processed += 1
            if not 200 <= status < 300:
                failed += 1

    try:
        await raw_loop.run_workers(fetch, work, concurrency=concurrency)
    finally:
        await reader.close()
        await nc.close()
    return {
        "processed": processed,
        "failed": failed,
        "skipped": skipped,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = raw_loop.argument_parser(
        "bench.contract_drain",
        __doc__.split("\n\n")[0],
        count_help="queued calls to drain",
    )
    parser.add_argument("--nats-url", required=True)
    args = parser.parse_args(argv)
    outcome = uvloop.run(
        drain(
            nats_url=args.nats_url,
            function_url=args.function_url,
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
