"""GET `/system/logs`: parse the `logs.Request` query and stream ndjson lines.

`parse_log_request` reads the query (`name`, `namespace`, `instance`,
`since`, `tail`, `follow`) and raises InvalidRequest naming a bad value.
`stream_logs` sends a backend's `LogStream` as a chunked
`application/x-ndjson` response. It ends the response when the stream ends,
when the client disconnects, or when the provider begins to shut down, so a
`follow` request never holds up a stop. `api` routes the request here. How
a backend stores its logs is the backend's concern.
"""

import asyncio
import logging
import re
from datetime import datetime
from typing import Final
from urllib.parse import parse_qs

from starlette.types import Receive, Send

from provider.backend import InvalidRequest, LogStream
from provider.types import LogRequest

logger = logging.getLogger(__name__)

NDJSON_CONTENT_TYPE: Final = "application/x-ndjson"

# RFC 3339 date-time. Python's datetime keeps microseconds, so a longer
# fraction (Go's RFC3339Nano has up to nine digits) is cut to six.
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
# The spellings Go's strconv.ParseBool accepts, as faas-provider parses `follow`.
_TRUE_VALUES: Final = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE_VALUES: Final = frozenset({"0", "f", "F", "false", "FALSE", "False"})


def parse_log_request(query: str) -> LogRequest:
    """Return the LogRequest of a raw query string, or raise InvalidRequest."""
    params = parse_qs(query, keep_blank_values=True)

    def first(key: str) -> str:
        values = params.get(key)
        return values[0] if values else ""

    name = first("name")
    if not name:
        raise InvalidRequest(
            "The log request names no function: add the query parameter name, "
            "as in /system/logs?name=NAME."
        )
    return LogRequest(
        name=name,
        namespace=first("namespace"),
        instance=first("instance"),
        since=_parse_since(first("since")),
        tail=_parse_tail(first("tail")),
        follow=_parse_follow(first("follow")),
    )


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 time that has an offset, or raise ValueError."""
    match = _RFC3339.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an RFC 3339 time")
    seconds, fraction, offset = match.groups()
    normalized = seconds.replace("t", "T").replace(" ", "T")
    if fraction:
        normalized += "." + fraction[:6].ljust(6, "0")
    normalized += "+00:00" if offset in ("Z", "z") else offset
    return datetime.fromisoformat(normalized)


def _parse_since(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise InvalidRequest(
            f"Invalid since {value!r}: use an RFC 3339 time with its offset, "
            "such as 2024-05-01T12:00:00Z."
        ) from None


def _parse_tail(value: str) -> int:
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest(
            f"Invalid tail {value!r}: use a whole number of lines, or 0 or less "
            "for every stored line."
        ) from None


def _parse_follow(value: str) -> bool:
    if value in _TRUE_VALUES:
        return True
    if not value or value in _FALSE_VALUES:
        return False
    raise InvalidRequest(f"Invalid follow {value!r}: use true or false.")


async def stream_logs(
    stream: LogStream, receive: Receive, send: Send, *, closing: asyncio.Event
) -> int:
    """Send `stream` as the ndjson response and return the bytes of log sent.

    The response ends without error when the stream ends or `closing` is set.
    When the client disconnects, the stream is closed and nothing more is sent.
    """
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", NDJSON_CONTENT_TYPE.encode()),
                (b"cache-control", b"no-cache"),
            ],
        }
    )
    sent = _SentBytes()
    pump = asyncio.create_task(_pump(stream, send, sent))
    disconnect = asyncio.create_task(_wait_for_disconnect(receive))
    shutdown = asyncio.create_task(closing.wait())
    tasks = (pump, disconnect, shutdown)
    done: set[asyncio.Task[None] | asyncio.Task[bool]] = set()
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await stream.aclose()

    pump_error = results[0]
    if isinstance(pump_error, Exception) and not isinstance(
        pump_error, asyncio.CancelledError
    ):
        # The status line is already sent, so the response just ends early.
        logger.warning("log stream broken off: %s", pump_error)
    if disconnect not in done:
        await send({"type": "http.response.body", "body": b""})
    return sent.count


class _SentBytes:
    def __init__(self) -> None:
        self.count = 0


async def _pump(stream: LogStream, send: Send, sent: _SentBytes) -> None:
    async for chunk in stream:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        sent.count += len(chunk)


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
