"""The gateway's NATS client: nats-py, with message headers encoded once per call.

nats-py checks and encodes message headers one at a time on every publish:
per header a strip, a regular-expression match, a newline translation and
three encodes. A queued call carries a dozen headers, and in a py-spy profile
of the accept path under wrk (2-core VM, nats-py 2.16) that encoding took
about 16 % of the gateway's CPU time, more than any other function.

`EncodedHeaders` is a dict of headers that also holds their finished NATS
header block, built by `encode_headers` with one join and one encode. It
applies nats-py's rules: names are stripped and must match `_NAME`, an empty
name is skipped, values are stripped and CR and LF become spaces. Names seen
before are checked once; values are scanned for CR or LF only, which HTTP
header values cannot contain. `NatsClient` sends that block as it is, and
treats every other publish exactly as nats-py does.

`NatsClient.publish_to_stream` does what `JetStreamContext.publish` does
with less work per call. nats-py's request makes every reply subject unique
with a NUID and two bytes from `os.urandom`, and waits with
`asyncio.wait_for`, a timer per request. Here the reply subject ends with a
counter, unique within the client, and one `SharedTimeout` times out
all the waits. `NatsClient._process_msg` resolves the waiting future as
soon as nats-py's parser delivers the reply, without the Msg object, queue
and task of nats-py's subscriptions. A PubAck of the usual shape is parsed
with a regular expression instead of the JSON parser.

NB: the overrides reach into nats-py internals (`_send_publish` and the
helpers it calls, `_process_msg`, and the reply subscription of its
requests). `fast_path_supported()` checks that they are there with the
expected shape. When they are not, the CallQueue falls back to plain
nats-py. Tests compare the stored header bytes of both paths.
"""

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.js import api as jsapi
from nats.protocol import command

from gateway.limits import SharedTimeout

logger = logging.getLogger(__name__)

# The payload and the headers of a reply to publish_to_stream.
_Reply = tuple[bytes, dict[str, str] | None]

# The header name characters nats-py accepts (an HTTP token, RFC 9110).
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES_TO_SPACES = str.maketrans({"\r": " ", "\n": " "})
# Header names already checked. Requests repeat the same few dozen names, and
# the bound keeps callers that invent names from growing the set forever.
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_MAX = 4096
_DECODER = json.JSONDecoder()
# A PubAck with only a stream name, a sequence and maybe the duplicate flag.
# A name that JSON escapes contains a backslash, so it does not match.
_PLAIN_PUB_ACK = re.compile(
    rb'\{"stream":"([^"\\]+)","seq":(\d+)(,"duplicate": ?true)?\}'
)
# The PubAck fields of a publish that is neither batched nor to a counter.
_PUB_ACK_KEYS = frozenset({"stream", "seq", "domain", "duplicate"})
_EXPECTED_PARAMETERS = [
    "self",
    "subject",
    "reply",
    "payload",
    "payload_size",
    "headers",
]
_EXPECTED_MSG_PARAMETERS = ["self", "sid", "subject", "reply", "data", "headers"]


class EncodedHeaders(dict[str, str]):
    """Message headers together with their encoded NATS header block.

    NB: the block is built once, so the dict must not change afterwards.
    """

    __slots__ = ("block",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__(headers)
        self.block = encode_headers(headers)


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Return the NATS header block of `headers`, as nats-py would write it.

    Raises nats.errors.BadHeaderError for a name nats-py would reject.
    """
    lines = ["NATS/1.0\r\n"]
    for name, value in headers.items():
        if name not in _CHECKED_NAMES:
            name = _checked_name(name)
            if not name:
                continue
        value = value.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES_TO_SPACES)
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode()


def _checked_name(name: str) -> str:
    stripped = name.strip()
    if not stripped:
        return ""
    if not _NAME.fullmatch(stripped):
        raise nats.errors.BadHeaderError(stripped)
    if stripped == name and len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
        _CHECKED_NAMES.add(name)
    return stripped


def fast_path_supported() -> bool:
    """Tell whether the installed nats-py has the internals NatsClient relies on."""
    try:
        parameters = list(inspect.signature(Client._send_publish).parameters)
        msg_parameters = list(inspect.signature(Client._process_msg).parameters)
    except (AttributeError, TypeError, ValueError):
        return False
    return (
        parameters == _EXPECTED_PARAMETERS
        and msg_parameters == _EXPECTED_MSG_PARAMETERS
        and callable(getattr(Client, "_process_headers", None))
        and callable(getattr(command, "hpub_cmd", None))
        and callable(getattr(Client, "_send_command", None))
        and callable(getattr(Client, "_flush_pending", None))
        and callable(getattr(Client, "_init_request_sub", None))
        and hasattr(Client(), "_resp_sub_prefix")
    )


class NatsClient(Client):
    """A nats-py client that sends the block of `EncodedHeaders` unchanged."""

    # Count of the reply subjects that publish_to_stream has made on this client.
    _stream_replies = 0
    # The reply subject of publish_to_stream without its counter, as text and
    # as bytes, or "" and b"" until the first call sets them.
    _stream_reply_prefix = ""
    _stream_reply_prefix_bytes = b""
    # Futures of the publish_to_stream calls that wait for a PubAck, by
    # counter token. `_process_msg` resolves each with the reply's payload and
    # headers.
    _stream_acks: dict[str, asyncio.Future[_Reply]]

    async def publish_to_stream(
        self,
        subject: str,
        payload: bytes,
        headers: EncodedHeaders,
        *,
        ack_timeout: SharedTimeout,
    ) -> jsapi.PubAck:
        """Publish to a JetStream stream and return its PubAck.

        Raises what `JetStreamContext.publish` raises: NoStreamResponseError
        when no stream stores the subject, nats.errors.TimeoutError without a
        PubAck within `ack_timeout`, and APIError when the stream rejects the
        message.
        """
        if not self._stream_reply_prefix:
            await self._init_stream_replies()
        self._stream_replies += 1
        token = f"{self._stream_replies:x}"
        future: asyncio.Future[_Reply] = asyncio.get_running_loop().create_future()
        self._stream_acks[token] = future
        ack_timeout.watch(future)
        try:
            await self.publish(
                subject,
                payload,
                reply=self._stream_reply_prefix + token,
                headers=headers,
            )
            data, reply_headers = await future
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc
        finally:
            del self._stream_acks[token]
            ack_timeout.unwatch(future)
        if (
            reply_headers
            and reply_headers.get(jsapi.Header.STATUS) == NO_RESPONDERS_STATUS
        ):
            raise nats.js.errors.NoStreamResponseError
        return _pub_ack_of(data)

    async def _init_stream_replies(self) -> None:
        # The replies arrive on nats-py's wildcard subscription for request
        # replies, after an "s" and a hexadecimal counter. A reply to one of
        # nats-py's own requests whose 26-character token starts with "s" is
        # not found in _stream_acks, so `_process_msg` passes it on to nats-py.
        if not self._resp_sub_prefix:
            await self._init_request_sub()
        assert self._resp_sub_prefix is not None
        self._stream_acks = {}
        self._stream_reply_prefix = self._resp_sub_prefix.decode() + "s"
        self._stream_reply_prefix_bytes = self._stream_reply_prefix.encode()

    async def _process_msg(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: bytes | None,
    ) -> None:
        # A PubAck of publish_to_stream resolves its future here. nats-py
        # would build a Msg and pass it through the subscription's queue and
        # task to a callback: an estimated 3 µs more per PubAck, measured with
        # AsyncAccept in-process against nats-server 2.15 on the 2-core
        # benchmark VM (nats-py 2.16).
        prefix = self._stream_reply_prefix_bytes
        if prefix and subject.startswith(prefix):
            future = self._stream_acks.get(subject[len(prefix) :].decode())
            if future is not None:
                self.stats["in_msgs"] += 1
                self.stats["in_bytes"] += len(data)
                reply_headers = None
                if headers:
                    reply_headers = await self._process_headers(headers)
                if not future.done():
                    future.set_result((data, reply_headers))
                return
        # nats-py's parser passes None for a message without headers, although
        # nats-py annotates the parameter as bytes.
        await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if not isinstance(headers, EncodedHeaders):
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        if subject == "":
            raise nats.errors.BadSubjectError
        publish = command.hpub_cmd(subject, reply, headers.block, payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(publish)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


def _pub_ack_of(data: bytes) -> jsapi.PubAck:
    """Return the PubAck in a JetStream reply, or raise its APIError.

    nats-server 2.15 writes the PubAck of a plain publish as
    `{"stream":"NAME","seq":N}`, with `,"duplicate": true` before the brace for
    a repeated Nats-Msg-Id. `_PLAIN_PUB_ACK` reads that shape with one regular
    expression. Any other reply goes through the JSON parser.
    """
    match = _PLAIN_PUB_ACK.fullmatch(data)
    if match is not None:
        stream, seq, duplicate = match.groups()
        return jsapi.PubAck(
            stream=stream.decode(),
            seq=int(seq),
            duplicate=True if duplicate else None,
        )
    response = _parse_reply(data)
    if "error" in response:
        raise nats.js.errors.APIError.from_error(response["error"])
    return _pub_ack(response)


def _parse_reply(data: bytes) -> dict[str, Any]:
    """Parse a JetStream API reply, a JSON object with nothing before or after it.

    `json.loads` on bytes first detects the encoding and then strips
    whitespace with two regular expressions. `raw_decode` skips both, at
    about a third of the cost for a PubAck (timeit, Python 3.11, 2-core VM).
    """
    try:
        response, end = _DECODER.raw_decode(data.decode())
        if end == len(data) and isinstance(response, dict):
            return response
    except ValueError:
        pass
    # Another shape, which json.loads parses or rejects as nats-py would.
    parsed: dict[str, Any] = json.loads(data)
    return parsed


def _pub_ack(response: dict[str, Any]) -> jsapi.PubAck:
    """Build a PubAck from its JSON object, as `PubAck.from_response` would.

    `from_response` looks up the dataclass fields on every call, which
    takes about 2.5 times as long as this (timeit, Python 3.11, 2-core VM).
    A PubAck for a plain publish has only the fields set here, so any other
    shape goes through `from_response`.
    """
    if "stream" in response and "seq" in response and response.keys() <= _PUB_ACK_KEYS:
        return jsapi.PubAck(
            stream=response["stream"],
            seq=response["seq"],
            domain=response.get("domain"),
            duplicate=response.get("duplicate"),
        )
    return jsapi.PubAck.from_response(response)


def new_client() -> Client:
    """Return a NatsClient, or a plain nats-py client if its internals differ."""
    if fast_path_supported():
        return NatsClient()
    logger.info("nats-py internals differ; encoding message headers the usual way")
    return Client()
