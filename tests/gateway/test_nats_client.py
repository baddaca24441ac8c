"""The gateway's NATS client writes the same header bytes as plain nats-py."""

import base64

import nats
import nats.errors
import pytest
from nats.js import api as jsapi

from gateway.nats_client import (
    EncodedHeaders,
    NatsClient,
    encode_headers,
    fast_path_supported,
)

pytestmark = pytest.mark.timeout(30)

HEADER_CASES = [
    pytest.param({"X-Call-Id": "abc", "Faashub-Format": "1"}, id="plain"),
    pytest.param({"Content-Type": "text/plain; charset=utf-8"}, id="parameters"),
    pytest.param({" X-Padded ": "  value  "}, id="whitespace"),
    pytest.param({"X-Lines": "one\r\ntwo\nthree"}, id="newlines"),
    pytest.param({"X-Text": "caf\u00e9 \u00fc"}, id="latin-1-text"),
    pytest.param({"": "dropped", "X-Kept": "yes"}, id="empty-name"),
    pytest.param({"X-Empty": ""}, id="empty-value"),
]


def test_fast_path_supported_here() -> None:
    # The pinned nats-py has the internals the fast path needs; a new
    # version that changes them makes this fail, not the gateway.
    assert fast_path_supported()


@pytest.mark.parametrize("headers", HEADER_CASES)
async def test_same_stored_headers(nats_url: str, headers: dict[str, str]) -> None:
    plain = await nats.connect(nats_url)
    fast = NatsClient()
    await fast.connect(nats_url)
    try:
        js = plain.jetstream()
        await js.add_stream(jsapi.StreamConfig(name="HEADERS", subjects=["h.>"]))
        plain_ack = await js.publish("h.plain", b"body", headers=dict(headers))
        fast_ack = await fast.jetstream().publish(
            "h.fast", b"body", headers=EncodedHeaders(headers)
        )
        plain_raw = await js.get_msg("HEADERS", plain_ack.seq)
        fast_raw = await js.get_msg("HEADERS", fast_ack.seq)
    finally:
        await plain.close()
        await fast.close()

    assert fast_raw.hdrs is not None
    assert base64.b64decode(fast_raw.hdrs) == base64.b64decode(plain_raw.hdrs or "")
    assert fast_raw.headers == plain_raw.headers
    assert fast_raw.data == b"body"


def test_invalid_name_rejected() -> None:
    with pytest.raises(nats.errors.BadHeaderError):
        encode_headers({"X Bad": "value"})


async def test_plain_dict_takes_usual_path(nats_url: str) -> None:
    fast = NatsClient()
    await fast.connect(nats_url)
    try:
        js = fast.jetstream()
        await js.add_stream(jsapi.StreamConfig(name="HEADERS", subjects=["h.>"]))
        ack = await js.publish("h.dict", b"x", headers={"X-Plain": "yes"})
        raw = await js.get_msg("HEADERS", ack.seq)
    finally:
        await fast.close()

    assert raw.headers is not None
    assert raw.headers["X-Plain"] == "yes"
