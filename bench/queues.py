"""JetStream chores of the benchmarks: count and purge streams, prefill queues.

Each function opens its own short-lived NATS connection and is synchronous
for the runner, which calls it between measurements, never during one.
"""

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from bench.errors import BenchmarkError
from faashub import constants, jetstream
from faashub.queued_call import QueuedCall

T = TypeVar("T")

# Publishes in flight at once while prefilling: JetStream acknowledges
# concurrent publishes far faster than one at a time.
PREFILL_WINDOW = 500
# The stream behind the key-value bucket of faashub's call status records.
STATUS_STREAM = f"KV_{constants.STATUS_BUCKET}"


async def _with_jetstream(
    nats_url: str, action: Callable[[JetStreamContext], Awaitable[T]]
) -> T:
    try:
        nc: NatsClient = await nats.connect(
            nats_url, name="bench-harness", connect_timeout=5, max_reconnect_attempts=0
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise BenchmarkError(f"Cannot connect to NATS at {nats_url}: {exc!r}") from exc
    try:
        return await action(nc.jetstream(timeout=30))
    finally:
        await nc.close()


def purge(nats_url: str, stream: str) -> int:
    """Purge `stream` and return how many messages it had, 0 if it does not exist."""

    async def action(js: JetStreamContext) -> int:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return 0
        await js.purge_stream(stream)
        return info.state.messages

    return asyncio.run(_with_jetstream(nats_url, action))


def purge_calls(nats_url: str) -> None:
    """Purge faashub's calls stream and its status records, so a run starts empty."""
    purge(nats_url, constants.CALLS_STREAM)
    purge(nats_url, STATUS_STREAM)


@dataclass(frozen=True, slots=True)
class StreamState:
    """The message count and size of a stream."""

    messages: int
    bytes: int


def stream_state(nats_url: str, stream: str) -> StreamState:
    """Return the message count and size of `stream`, zeros if it does not exist."""

    async def action(js: JetStreamContext) -> StreamState:
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return StreamState(0, 0)
        return StreamState(info.state.messages, info.state.bytes)

    return asyncio.run(_with_jetstream(nats_url, action))


async def _publish_all(
    js: JetStreamContext,
    messages: Callable[[int], tuple[str, bytes, dict[str, str] | None]],
    count: int,
) -> None:
    for start in range(0, count, PREFILL_WINDOW):
        batch = [
            messages(index)
            for index in range(start, min(start + PREFILL_WINDOW, count))
        ]
        await asyncio.gather(
            *(
                js.publish(subject, body, headers=headers)
                for subject, body, headers in batch
            )
        )


def prefill_calls(
    nats_url: str, *, function: str, count: int, body: bytes, callback_url: str
) -> None:
    """Store `count` queued calls to `function` in faashub's calls stream.

    The calls are what the gateway would store for `POST /async-function/NAME`
    with an X-Callback-Url, so the worker treats them as accepted calls.
    """

    def call(index: int) -> tuple[str, bytes, dict[str, str] | None]:
        queued = QueuedCall(
            function=function,
            namespace=constants.DEFAULT_NAMESPACE,
            call_id=str(uuid.uuid4()),
            method="POST",
            callback_url=callback_url,
            accepted_at_ns=time.time_ns(),
            headers={"Content-Type": "application/octet-stream"},
            body=body,
        )
        return queued.subject(), queued.body, queued.to_nats_headers()

    async def action(js: JetStreamContext) -> None:
        await jetstream.ensure_calls_stream(js)
        await _publish_all(js, call, count)

    asyncio.run(_with_jetstream(nats_url, action))


def prefill_plain(
    nats_url: str, *, stream: str, consumer: str, count: int, body: bytes
) -> None:
    """Create `stream` and its pull consumer if missing, then add `count` bodies.

    The stream has the storage and retention of faashub's calls stream, so
    both sides of the queue drain read from the same kind of stream.
    """
    subject_prefix = f"bench.{stream.lower()}"

    async def action(js: JetStreamContext) -> None:
        try:
            await js.stream_info(stream)
        except NotFoundError:
            await js.add_stream(
                jsapi.StreamConfig(
                    name=stream,
                    subjects=[f"{subject_prefix}.>"],
                    retention=jsapi.RetentionPolicy.WORK_QUEUE,
                    storage=jsapi.StorageType.FILE,
                )
            )
        await js.add_consumer(
            stream,
            jsapi.ConsumerConfig(
                durable_name=consumer,
                ack_policy=jsapi.AckPolicy.EXPLICIT,
                max_ack_pending=-1,
            ),
        )
        await _publish_all(
            js, lambda index: (f"{subject_prefix}.noop", body, None), count
        )

    asyncio.run(_with_jetstream(nats_url, action))
