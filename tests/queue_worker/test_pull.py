"""Pull requests with messages passed to a callback, against a real nats-server."""

import asyncio
import time

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from queue_worker.pull import PullConsumer
from tests.conftest import wait_until, wait_until_async

pytestmark = pytest.mark.timeout(30)

STREAM = "PULL_TEST"
DURABLE = "pull-test"


@pytest.fixture
async def stream(js: JetStreamContext) -> None:
    await js.add_stream(name=STREAM, subjects=[f"{STREAM}.>"])
    await js.add_consumer(
        STREAM,
        jsapi.ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            max_ack_pending=-1,
        ),
    )


async def store(js: JetStreamContext, count: int) -> None:
    for index in range(count):
        await js.publish(f"{STREAM}.call.{index}", str(index).encode())


async def subscribed(nc: NatsClient, received: list[Msg]) -> PullConsumer:
    consumer = PullConsumer(
        nc, stream=STREAM, durable=DURABLE, on_message=received.append
    )
    await consumer.subscribe()
    return consumer


@pytest.mark.usefixtures("stream")
async def test_pull_ends_when_batch_arrived(
    nc: NatsClient, js: JetStreamContext
) -> None:
    await store(js, 5)
    received: list[Msg] = []
    consumer = await subscribed(nc, received)

    started = time.monotonic()
    delivered = await consumer.pull(3, expires_s=10.0)

    assert delivered == 3
    assert time.monotonic() - started < 5.0
    assert [message.data for message in received] == [b"0", b"1", b"2"]
    assert received[0].subject == f"{STREAM}.call.0"
    await consumer.unsubscribe()


@pytest.mark.usefixtures("stream")
async def test_pull_ends_at_expiry_with_fewer(
    nc: NatsClient, js: JetStreamContext
) -> None:
    await store(js, 2)
    received: list[Msg] = []
    consumer = await subscribed(nc, received)

    started = time.monotonic()
    delivered = await consumer.pull(10, expires_s=0.5)

    assert delivered == 2
    # JetStream ends the request with a 408 at its expiry, before the margin.
    assert time.monotonic() - started < 1.4
    assert len(received) == 2
    await consumer.unsubscribe()


@pytest.mark.usefixtures("stream")
async def test_pull_delivers_calls_stored_while_waiting(
    nc: NatsClient, js: JetStreamContext
) -> None:
    received: list[Msg] = []
    consumer = await subscribed(nc, received)
    pulling = asyncio.create_task(consumer.pull(2, expires_s=10.0))
    await asyncio.sleep(0.2)

    await store(js, 1)
    await wait_until(lambda: bool(received), description="the first message")

    # The first message reached the callback while the request still waits
    # for the second.
    assert not pulling.done()
    await store(js, 1)
    assert await pulling == 2
    await consumer.unsubscribe()


@pytest.mark.usefixtures("stream")
async def test_acks_go_through_delivered_messages(
    nc: NatsClient, js: JetStreamContext
) -> None:
    await store(js, 2)
    received: list[Msg] = []
    consumer = await subscribed(nc, received)
    await consumer.pull(2, expires_s=5.0)

    for message in received:
        await message.ack()
    await nc.flush()

    # nats-server applies acks on the consumer's own queue, after the flush's
    # PONG, so the count can lag by a moment.
    async def all_acked() -> bool:
        info = await js.consumer_info(STREAM, DURABLE)
        return info.num_ack_pending == 0 and info.num_pending == 0

    await wait_until_async(all_acked, timeout_s=5.0, description="both acks")
    await consumer.unsubscribe()


@pytest.mark.usefixtures("stream")
async def test_pull_from_missing_consumer_raises(
    nc: NatsClient, js: JetStreamContext
) -> None:
    await js.delete_consumer(STREAM, DURABLE)
    consumer = await subscribed(nc, [])

    with pytest.raises(nats.errors.Error, match="does not exist"):
        await consumer.pull(1, expires_s=5.0)
    await consumer.unsubscribe()


@pytest.mark.usefixtures("stream")
async def test_deleted_consumer_ends_open_pull(
    nc: NatsClient, js: JetStreamContext
) -> None:
    consumer = await subscribed(nc, [])
    pulling = asyncio.create_task(consumer.pull(1, expires_s=10.0))
    await asyncio.sleep(0.2)

    await js.delete_consumer(STREAM, DURABLE)

    # JetStream ends the waiting request with a 409 status.
    assert await asyncio.wait_for(pulling, 5.0) == 0
    await consumer.unsubscribe()


async def test_pull_before_subscribe_raises(nc: NatsClient) -> None:
    consumer = PullConsumer(nc, stream=STREAM, durable=DURABLE, on_message=print)

    with pytest.raises(nats.errors.Error, match="not subscribed"):
        await consumer.pull(1, expires_s=1.0)
