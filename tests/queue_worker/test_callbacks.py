"""Callback retries and signatures, with a real receiver and nats-server."""

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from faashub import callback_request
from faashub.call_status import CallState
from faashub.dead_letter import Attempt
from queue_worker.callback import Delivery
from tests.conftest import free_port
from tests.queue_worker.conftest import (
    RecordedRequest,
    RecordingServer,
    call_status,
    dead_letters,
    make_call,
    make_settings,
    publish,
    recording_server,
    running_worker,
    wait_for_empty_stream,
)

pytestmark = pytest.mark.timeout(30)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"


def signatures(request: RecordedRequest) -> tuple[int, list[str]]:
    """Return the timestamp and the v1 entries of a callback's signature."""
    header = request.header("X-Faashub-Signature")
    assert header is not None
    timestamp, entries = None, []
    for part in header.split(","):
        key, _, value = part.partition("=")
        if key == "t":
            timestamp = int(value)
        elif key == "v1":
            entries.append(value)
    assert timestamp is not None
    return timestamp, entries


def expected_signature(secret: str, timestamp: int, body: bytes) -> str:
    # Written out from the documented scheme rather than with the worker's code.
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def test_signature_verifies_with_either_secret(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    gateway.reply_body = b'{"result": 42}'
    settings = make_settings(
        nats_url,
        gateway.url,
        callback_signing_secret="new-secret",
        callback_signing_secret_previous="old-secret",
    )

    async with running_worker(settings):
        await publish(js, make_call(callback_url=f"{receiver.url}/done"))
        await receiver.wait_for_requests(1)

    callback = receiver.requests[0]
    timestamp, entries = signatures(callback)
    assert abs(time.time() - timestamp) < 10
    assert entries == [
        expected_signature("new-secret", timestamp, callback.body),
        expected_signature("old-secret", timestamp, callback.body),
    ]
    assert expected_signature("other", timestamp, callback.body) not in entries


async def test_no_secret_sends_no_signature(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    async with running_worker(make_settings(nats_url, gateway.url)):
        await publish(js, make_call(callback_url=f"{receiver.url}/done"))
        await receiver.wait_for_requests(1)

    assert receiver.requests[0].header("X-Faashub-Signature") is None


def test_signature_header_layout() -> None:
    header = callback_request.signature_header(b"body", ["k1"], timestamp_s=1700000000)

    assert header == "t=1700000000,v1=" + expected_signature("k1", 1700000000, b"body")


async def test_receiver_down_for_a_while(
    nats_url: str, js: JetStreamContext, gateway: RecordingServer
) -> None:
    port = free_port()
    call = make_call(callback_url=f"http://127.0.0.1:{port}/done")
    settings = make_settings(
        nats_url, gateway.url, callback_attempts=8, callback_max_wait_s=0.4
    )

    async with running_worker(settings):
        await publish(js, call)
        await gateway.wait_for_requests(1)
        # Several deliveries fail before the receiver starts listening.
        await asyncio.sleep(0.5)
        async with recording_server(port) as receiver:
            await receiver.wait_for_requests(1)
            await wait_for_empty_stream(js)
            await asyncio.sleep(0.3)

    assert len(gateway.requests) == 1
    assert len(receiver.requests) == 1
    assert receiver.requests[0].header("X-Call-Id") == call.call_id
    assert await dead_letters(js) == []
    record = await call_status(js, call.call_id)
    assert record is not None
    assert record.state is CallState.SUCCEEDED
    assert record.callback_status == 200


async def test_failed_callback_retries_each_sign_afresh(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
) -> None:
    receiver.replies = [(503, {}), (502, {})]
    settings = make_settings(nats_url, gateway.url, callback_signing_secret="k")

    async with running_worker(settings):
        await publish(js, make_call(callback_url=f"{receiver.url}/done"))
        await receiver.wait_for_requests(3)
        await wait_for_empty_stream(js)

    assert len(gateway.requests) == 1
    assert len(receiver.requests) == 3
    for request in receiver.requests:
        timestamp, [entry] = signatures(request)
        assert entry == expected_signature("k", timestamp, request.body)
    assert await dead_letters(js) == []


def documented_verify() -> Callable[..., bool]:
    """Return the `verify` function of the receiver example in docs/callbacks.md."""
    text = DOCS.read_text(encoding="utf-8")
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "callbacks_doc"}
    exec(compile(block, str(DOCS), "exec"), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


@pytest.mark.parametrize(
    ("secret", "previous"),
    [
        pytest.param("new-secret", "old-secret", id="during-rotation"),
        pytest.param("old-secret", "", id="before-rotation"),
        pytest.param("new-secret", "", id="after-rotation"),
    ],
)
async def test_documented_receiver_accepts_callback(
    nats_url: str,
    js: JetStreamContext,
    gateway: RecordingServer,
    receiver: RecordingServer,
    secret: str,
    previous: str,
) -> None:
    verify = documented_verify()
    settings = make_settings(
        nats_url,
        gateway.url,
        callback_signing_secret=secret,
        callback_signing_secret_previous=previous,
    )

    async with running_worker(settings):
        await publish(js, make_call(callback_url=f"{receiver.url}/done"))
        await receiver.wait_for_requests(1)

    callback = receiver.requests[0]
    header = callback.header("X-Faashub-Signature")
    timestamp, _ = signatures(callback)
    assert verify(header, callback.body)
    assert not verify(header, callback.body + b"!")
    assert not verify(header, callback.body, now_s=timestamp + 301)
    assert not verify(None, callback.body)
    forged = callback_request.signature_header(
        callback.body, ["guess"], timestamp_s=timestamp
    )
    assert not verify(forged, callback.body)


@pytest.mark.parametrize(
    ("error", "stopped", "expected"),
    [
        (
            "timed out after 30 s",
            True,
            "The last error was: timed out after 30 s. The worker stopped before "
            "it tried again",
        ),
        ("status 500", False, "The last error was: status 500."),
        ("Connection reset by peer.", False, "The last error was: Connection reset "),
    ],
)
def test_dead_letter_detail_ends_each_sentence(
    error: str, stopped: bool, expected: str
) -> None:
    delivery = Delivery(delivered=False, status=None, error=error, stopped=stopped)
    delivery.tries.append(Attempt(None, error, 0))

    detail = delivery.dead_letter_detail("http://127.0.0.1:9/hook?token=secret")

    assert expected in detail
    assert ".." not in detail
    assert "token" not in detail
