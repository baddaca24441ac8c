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
all the waits.

NB: the overrides reach into nats-py internals (`_send_publish` and the
helpers it calls, and the reply map of its requests). `fast_path_supported()`
checks that they are there with the expected shape. When they are not, the
CallQueue falls back to plain nats-py. Tests compare the stored header bytes
of both paths.
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

# The header name characters nats-py accepts (an HTTP token, RFC 9110).
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES_TO_SPACES = str.maketrans({"\r": " ", "\n": " "})
# Header names already checked. Requests repeat the same few dozen names, and
# the bound keeps callers that invent names from growing the set forever.
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_MAX = 4096
_DECODER = json.JSONDecoder()
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
    except (AttributeError, TypeError, ValueError):
        return False
    return (
        parameters == _EXPECTED_PARAMETERS
        and callable(getattr(command, "hpub_cmd", None))
        and callable(getattr(Client, "_send_command", None))
        and callable(getattr(Client, "_flush_pending", None))
        and callable(getattr(Client, "_init_request_sub", None))
        and callable(getattr(Client, "_request_sub_callback", None))
        and isinstance(getattr(Client(), "_resp_map", None), dict)
    )


class NatsClient(Client):
    """A nats-py client that sends the block of `EncodedHeaders` unchanged."""

    # Count of the reply subjects that publish_to_stream has made on this client.
    _stream_replies = 0

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
        if not self._resp_sub_prefix:
            await self._init_request_sub()
        assert self._resp_sub_prefix is not None
        # nats-py's reply subscription routes a reply by the subject's last
        # token. Its own tokens are 26 characters long, and these shorter ones
        # start with "s", so the two never collide.
        self._stream_replies += 1
        token = f"s{self._stream_replies:x}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._resp_map[token] = future
        ack_timeout.watch(future)
        try:
            await self.publish(
                subject,
                payload,
                reply=self._resp_sub_prefix.decode() + token,
                headers=headers,
            )
            reply = await future
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc
        finally:
            self._resp_map.pop(token, None)
            ack_timeout.unwatch(future)
        if (
            reply.headers
            and reply.headers.get(jsapi.Header.STATUS) == NO_RESPONDERS_STATUS
        ):
            raise nats.js.errors.NoStreamResponseError
        response = _parse_reply(reply.data)
        if "error" in response:
            raise nats.js.errors.APIError.from_error(response["error"])
        return _pub_ack(response)

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
