"""The gateway's NATS client: the header bytes of plain nats-py, and cheap PubAcks."""

import asyncio
import base64
import json

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api as jsapi

from gateway import limits
from gateway.nats_client import (
    _PLAIN_PUB_ACK,
    EncodedHeaders,
    NatsClient,
    _parse_reply,
    _pub_ack,
    _pub_ack_of,
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


async def test_publish_to_stream_acks(nats_url: str) -> None:
    client = NatsClient()
    await client.connect(nats_url)
    timeout = limits.SharedTimeout(5.0)
    try:
        js = client.jetstream()
        await js.add_stream(jsapi.StreamConfig(name="ACKS", subjects=["a.>"]))
        headers = EncodedHeaders({"Nats-Msg-Id": "one", "X-Call-Id": "one"})
        first = await client.publish_to_stream(
            "a.first", b"body", headers, ack_timeout=timeout
        )
        repeat = await client.publish_to_stream(
            "a.first", b"body", headers, ack_timeout=timeout
        )
        # Concurrent publishes each get their own PubAck.
        acks = await asyncio.gather(
            *(
                client.publish_to_stream(
                    f"a.{index}", b"x", EncodedHeaders({}), ack_timeout=timeout
                )
                for index in range(20)
            )
        )
        stored = await js.get_msg("ACKS", first.seq)
    finally:
        await client.close()

    assert first.stream == "ACKS"
    assert first.domain is None
    assert not first.duplicate
    assert repeat.duplicate
    assert repeat.seq == first.seq
    assert sorted(ack.seq for ack in acks) == list(range(2, 22))
    assert stored.data == b"body"
    assert stored.headers is not None
    assert stored.headers["X-Call-Id"] == "one"


async def test_publish_to_stream_beside_requests(nats_url: str) -> None:
    # PubAcks and the replies of nats-py's own requests share one reply
    # subscription, and each must reach its own waiter.
    client = NatsClient()
    await client.connect(nats_url)
    timeout = limits.SharedTimeout(5.0)
    try:
        js = client.jetstream()
        await js.add_stream(jsapi.StreamConfig(name="MIXED", subjects=["m.>"]))
        results = await asyncio.gather(
            *(
                client.publish_to_stream(
                    f"m.{index}", b"x", EncodedHeaders({}), ack_timeout=timeout
                )
                for index in range(10)
            ),
            *(js.stream_info("MIXED") for _ in range(10)),
        )
        pending = dict(client._stream_acks)
    finally:
        await client.close()

    acks = [result for result in results if isinstance(result, jsapi.PubAck)]
    infos = [result for result in results if isinstance(result, jsapi.StreamInfo)]
    assert sorted(ack.seq for ack in acks) == list(range(1, 11))
    assert len(infos) == 10
    assert all(info.config.name == "MIXED" for info in infos)
    assert pending == {}


async def test_publish_to_stream_errors(nats_url: str) -> None:
    client = NatsClient()
    await client.connect(nats_url)
    try:
        js = client.jetstream()
        await js.add_stream(jsapi.StreamConfig(name="ERRORS", subjects=["e.>"]))
        # A plain subscriber receives the message but never sends a PubAck.
        await client.subscribe("silent")

        with pytest.raises(nats.js.errors.NoStreamResponseError):
            await client.publish_to_stream(
                "nowhere", b"x", EncodedHeaders({}), ack_timeout=limits.SharedTimeout(5)
            )
        with pytest.raises(nats.errors.TimeoutError):
            await client.publish_to_stream(
                "silent",
                b"x",
                EncodedHeaders({}),
                ack_timeout=limits.SharedTimeout(0.2),
            )
        with pytest.raises(nats.js.errors.APIError):
            await client.publish_to_stream(
                "e.wrong",
                b"x",
                EncodedHeaders({"Nats-Expected-Stream": "OTHER"}),
                ack_timeout=limits.SharedTimeout(5),
            )
    finally:
        await client.close()


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b'{"stream":"S","seq":7}', id="plain"),
        pytest.param(b'{"stream":"S","seq":7,"duplicate":true}', id="duplicate"),
        pytest.param(b'{"stream":"S","seq":7,"domain":"hub"}', id="domain"),
        pytest.param(b'{"stream":"S","seq":7,"val":"12"}', id="counter"),
        pytest.param(b'{"stream":"S","seq":7,"batch":"b1","count":3}', id="batch"),
        pytest.param(b' {"stream":"S","seq":7}\r\n', id="whitespace"),
        pytest.param('{"stream":"Ström","seq":7}'.encode(), id="non-ascii"),
    ],
)
def test_pub_ack_same_as_nats_py(reply: bytes) -> None:
    expected = jsapi.PubAck.from_response(json.loads(reply))

    assert _pub_ack(_parse_reply(reply)) == expected


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b'{"stream":"S","seq":7}', id="plain"),
        pytest.param(b'{"stream":"S","seq":7,"duplicate":true}', id="duplicate"),
        pytest.param(b'{"stream":"S","seq":7,"duplicate": true}', id="spaced"),
        pytest.param(b'{"stream":"S","seq":7,"duplicate":false}', id="not-duplicate"),
        pytest.param(b'{"stream":"S","seq":7,"domain":"hub"}', id="domain"),
        pytest.param(b'{"stream":"S","seq":7,"val":"12"}', id="counter"),
        pytest.param(b' {"stream":"S","seq":7}\r\n', id="whitespace"),
        pytest.param('{"stream":"Ström","seq":7}'.encode(), id="non-ascii"),
        pytest.param(b'{"stream":"a\\u0026b","seq":7}', id="escaped-name"),
        pytest.param(b'{"stream":"a\\"b","seq":7}', id="escaped-quote"),
    ],
)
def test_pub_ack_of_same_as_nats_py(reply: bytes) -> None:
    expected = jsapi.PubAck.from_response(json.loads(reply))

    assert _pub_ack_of(reply) == expected


async def test_server_pub_ack_has_plain_shape(nats_url: str) -> None:
    # The regular expression reads the PubAcks that this nats-server writes,
    # first and repeated, so the JSON parser is only a fallback.
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await js.add_stream(jsapi.StreamConfig(name="SHAPE", subjects=["p.>"]))
        headers = {"Nats-Msg-Id": "one"}
        first = await client.request("p.one", b"x", timeout=5, headers=headers)
        repeat = await client.request("p.one", b"x", timeout=5, headers=headers)
    finally:
        await client.close()

    assert _PLAIN_PUB_ACK.fullmatch(first.data) is not None
    assert _PLAIN_PUB_ACK.fullmatch(repeat.data) is not None
    assert _pub_ack_of(first.data) == jsapi.PubAck(stream="SHAPE", seq=1)
    assert _pub_ack_of(repeat.data) == jsapi.PubAck(
        stream="SHAPE", seq=1, duplicate=True
    )


def test_pub_ack_of_error_raises_api_error() -> None:
    reply = (
        b'{"error":{"code":400,"err_code":10060,'
        b'"description":"expected stream does not match"}}'
    )

    with pytest.raises(nats.js.errors.APIError) as raised:
        _pub_ack_of(reply)

    assert raised.value.err_code == 10060
    assert raised.value.code == 400


def test_parse_reply_invalid_json_raises() -> None:
    with pytest.raises(json.JSONDecodeError):
        _parse_reply(b'{"stream":')
    with pytest.raises(json.JSONDecodeError):
        _parse_reply(b'{"stream":"S"} trailing')
