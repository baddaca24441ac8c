"""Bodies stored in the JetStream object store, referenced from queued calls.

The gateway stores a body too large for one NATS message as an object named
after the call key and queues the call with an empty body and `body_ref`.
These tests put the object and publish the call the same way.
"""

import dataclasses
import os

import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from faashub import jetstream
from faashub.call_status import CallState
from faashub.queued_call import QueuedCall
from tests.queue_worker.conftest import (
    RecordingServer,
    call_status,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_dead_letters,
    wait_for_empty_stream,
    wait_until_async,
)

pytestmark = pytest.mark.timeout(60)

FIVE_MIB = 5 * 1024 * 1024


@pytest.fixture
async def bodies(js: JetStreamContext) -> ObjectStore:
    return await jetstream.ensure_bodies_bucket(js)


async def store_large_call(
    bodies: ObjectStore, body: bytes, **fields: object
) -> QueuedCall:
    """Put `body` in the object store and return a call that refers to it."""
    call = make_call(**fields)
    await bodies.put(call.key, body)
    return dataclasses.replace(call, body=b"", body_ref=call.key, body_size=len(body))


async def object_exists(bodies: ObjectStore, name: str) -> bool:
    try:
        await bodies.get_info(name)
    except NotFoundError:
        return False
    return True


async def test_five_mib_body_reaches_function(
    nats_url: str,
    js: JetStreamContext,
    bodies: ObjectStore,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    body = os.urandom(FIVE_MIB)
    call = await store_large_call(bodies, body, callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

        async def deleted() -> bool:
            return not await object_exists(bodies, call.key)

        # Deleted after the ack, since no dead letter refers to it.
        await wait_until_async(deleted, description="the stored body to go")

    assert len(gateway.requests) == 1
    assert gateway.requests[0].body == body
    assert len(receiver.requests) == 1
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED


async def test_dead_lettered_call_keeps_its_body(
    nats_url: str,
    js: JetStreamContext,
    bodies: ObjectStore,
    gateway: RecordingServer,
) -> None:
    gateway.status = 400
    call = await store_large_call(bodies, b"x" * 4096)

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        [letter] = await wait_for_dead_letters(js, 1)
        await wait_for_empty_stream(js)

    assert letter.reason == "rejected"
    assert letter.call.body_ref == call.key
    assert letter.call.body_size == 4096
    assert await object_exists(bodies, call.key)


async def test_missing_body_is_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    call = dataclasses.replace(
        make_call(callback_url=f"{receiver.url}/done"),
        body=b"",
        body_ref="gone",
        body_size=10,
    )

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        [letter] = await wait_for_dead_letters(js, 1)
        await receiver.wait_for_requests(1)
        await wait_for_empty_stream(js)

    assert gateway.requests == []
    assert letter.reason == "invalid-message"
    assert "'gone'" in letter.detail
    assert receiver.requests[0].header("X-Function-Status") == "400"


async def test_oversized_dead_letter_moves_body_to_store(
    nats_url: str,
    nc: NatsClient,
    js: JetStreamContext,
    bodies: ObjectStore,
    gateway: RecordingServer,
) -> None:
    gateway.status = 400
    # Fits in a call message, but not with the dead-letter headers added.
    headers = make_call().to_nats_headers()
    header_bytes = sum(len(name) + len(value) + 4 for name, value in headers.items())
    max_payload = nc.max_payload
    call = make_call(body=b"y" * (max_payload - header_bytes - 64))

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, call)
        [letter] = await wait_for_dead_letters(js, 1)

    assert letter.call.body == b""
    assert letter.call.body_ref == call.key
    stored = await bodies.get(call.key)
    assert stored.data == call.body
