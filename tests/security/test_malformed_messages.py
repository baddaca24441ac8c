"""Malformed messages written straight into the calls stream.

The messages go through a raw NATS connection, because nats-py only sends
headers that are valid text. Each one must be dead-lettered with the reason
`invalid-message` while the worker keeps running calls.
"""

import asyncio
import json

import pytest
from nats.js import JetStreamContext

from faashub import constants
from tests.queue_worker.conftest import (
    RecordingServer,
    make_call,
    make_settings,
    publish,
    running_worker,
    wait_for_dead_letters,
    wait_for_empty_stream,
)

pytestmark = pytest.mark.timeout(30)

HUGE_VALUE = b"a" * 60_000


def raw_headers(*, without: str = "", **replaced: bytes) -> bytes:
    """Return a NATS header block of a valid call with some fields replaced."""
    fields = {
        name: value.encode()
        for name, value in make_call().to_nats_headers().items()
        if name != without
    }
    for key, value in replaced.items():
        fields[getattr(constants, key)] = value
    lines = b"".join(
        name.encode() + b": " + value + b"\r\n" for name, value in fields.items()
    )
    return b"NATS/1.0\r\n" + lines + b"\r\n"


async def publish_raw(nats_url: str, messages: list[tuple[bytes, bytes]]) -> None:
    """Publish (headers, body) pairs with the NATS protocol's HPUB command."""
    host, port = nats_url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        await reader.readline()  # INFO
        connect = {"verbose": False, "pedantic": False, "headers": True}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\n")
        for headers, body in messages:
            subject = make_call().subject()
            size = len(headers) + len(body)
            command = f"HPUB {subject} {len(headers)} {size}\r\n".encode()
            writer.write(command + headers + body + b"\r\n")
        writer.write(b"PING\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readline(), 10)
        assert reply == b"PONG\r\n", reply
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_calls_dead_lettered(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    malformed = [
        raw_headers(META_FUNCTION=b"ech\xff\xfe"),
        raw_headers(META_FUNCTION=HUGE_VALUE),
        raw_headers(META_ACCEPTED_AT_NS=b"\xc3\x28"),
        raw_headers(without=constants.META_FUNCTION),
        raw_headers(META_FORMAT=b"\xff"),
    ]
    good = make_call(callback_url=f"{receiver.url}/done")

    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish_raw(nats_url, [(headers, b"body") for headers in malformed])
        await publish(js, good)
        await receiver.wait_for_requests(1)
        letters = await wait_for_dead_letters(js, len(malformed))
        await wait_for_empty_stream(js)

    assert [r.header("X-Call-Id") for r in gateway.requests] == [good.call_id]
    assert [letter.reason for letter in letters] == ["invalid-message"] * len(malformed)
    for letter in letters:
        assert letter.detail
        assert letter.call.body == b"body"
