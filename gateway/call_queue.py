"""The gateway's NATS connection, and publishing queued calls to JetStream.

This module sits between the async accept handler and JetStream. It connects
in the background with unlimited reconnects. So the gateway starts and serves
sync calls while NATS is down, and it recovers by itself when NATS comes
back. Once connected, and again after every reconnect, it makes sure that the
calls stream exists. It neither builds calls nor speaks HTTP, because
`gateway.async_accept` does that.
"""

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js import api as jsapi

from faashub import jetstream
from faashub.queued_call import QueuedCall
from gateway import constants, errors

logger = logging.getLogger(__name__)

# Fixed bytes of a NATS header block: "NATS/1.0\r\n" before the headers and
# "\r\n" after them. Each header adds "Name: value\r\n".
_HEADER_BLOCK_OVERHEAD_BYTES = len(b"NATS/1.0\r\n\r\n")
_HEADER_LINE_OVERHEAD_BYTES = len(b": \r\n")


def message_size(headers: dict[str, str], body: bytes) -> int:
    """Return the bytes a message takes against the server's max_payload.

    The server counts the header block and the body together, and closes the
    connection of a client that exceeds the limit, so the gateway checks the
    size itself before it publishes.
    """
    size = _HEADER_BLOCK_OVERHEAD_BYTES + len(body)
    for name, value in headers.items():
        size += len(name) + len(value.encode()) + _HEADER_LINE_OVERHEAD_BYTES
    return size


def _fits_for_sure(headers: dict[str, str], body: bytes, limit: int) -> bool:
    # Header values come from latin-1 text, so each character takes at most
    # two bytes in UTF-8. Counting characters is cheaper than encoding, and
    # settles almost every call without the exact count.
    bound = _HEADER_BLOCK_OVERHEAD_BYTES + len(body)
    for name, value in headers.items():
        bound += len(name) + 2 * len(value) + _HEADER_LINE_OVERHEAD_BYTES
    return bound <= limit


class CallQueue:
    """The NATS connection of the gateway and the calls stream behind it."""

    def __init__(self, nats_url: str, *, duplicate_window_s: float) -> None:
        self._nats_url = nats_url
        self._duplicate_window_s = duplicate_window_s
        self._nc = Client()
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._stream_error = "the calls stream has not been created yet"
        self._stream_check = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed_attempts = 0

    @property
    def max_payload_bytes(self) -> int:
        """Maximum message size in bytes, headers included, that NATS accepts."""
        return self._nc.max_payload

    def unavailable_reason(self) -> str | None:
        """Return why a call cannot be stored now, or None if it can."""
        if not self._nc.is_connected:
            return f"the gateway is not connected to NATS at {self._nats_url}"
        if not self._stream_ready:
            return self._stream_error
        return None

    def check_available(self) -> None:
        """Raise QueueUnavailable unless a call can be stored now."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise self._unavailable(reason)

    async def start(self) -> None:
        """Start connecting in the background, and return at once."""
        self._js = self._nc.jetstream(timeout=constants.PUBLISH_TIMEOUT_S)
        self._tasks = [
            asyncio.create_task(self._connect(), name="nats-connect"),
            asyncio.create_task(self._keep_stream(), name="calls-stream"),
        ]

    async def close(self) -> None:
        """Stop connecting or reconnecting, and close the connection."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._nc.close()
        logger.info("closed nats connection")

    async def publish(self, call: QueuedCall) -> jsapi.PubAck:
        """Store one call in the stream and return the PubAck.

        Raises QueueUnavailable when the call could not be stored, or when the
        outcome is unknown, and PayloadTooLarge when the call does not fit in
        one message.
        """
        # NB: nats-py buffers publishes while it reconnects. Checking the state
        # first makes a disconnected gateway respond 503 at once instead.
        reason = self.unavailable_reason()
        if reason is not None or self._js is None:
            raise self._unavailable(reason or "the gateway has not started")
        headers = call.to_nats_headers()
        limit = self._nc.max_payload
        if not _fits_for_sure(headers, call.body, limit) and (
            (size := message_size(headers, call.body)) > limit
        ):
            raise errors.PayloadTooLarge(
                f"The call takes {size} bytes with its headers, more than the "
                f"queue's limit of {limit} bytes (the NATS server's max_payload). "
                "Send a smaller body, or raise max_payload on the NATS server.",
                limit_bytes=limit,
            )
        try:
            return await self._js.publish(
                call.subject(),
                call.body,
                timeout=constants.PUBLISH_TIMEOUT_S,
                headers=headers,
            )
        except nats.js.errors.NoStreamResponseError as exc:
            # Nothing listens on the subject: the stream is gone, for example
            # because NATS restarted with an empty store. Create it again.
            self._mark_stream_missing("the calls stream does not exist")
            raise self._unavailable("the calls stream does not exist") from exc
        except nats.errors.TimeoutError as exc:
            # NB: without a PubAck the call may or may not be stored. The call
            # id is the message's Nats-Msg-Id, so JetStream drops a retry with
            # the same X-Call-Id inside the stream's duplicate window.
            raise self._unavailable(
                "NATS did not acknowledge the call within "
                f"{constants.PUBLISH_TIMEOUT_S:g} s",
                outcome_unknown=True,
            ) from exc
        except nats.errors.MaxPayloadError as exc:
            raise errors.PayloadTooLarge(
                f"The call is larger than the queue's limit of {limit} bytes "
                "(the NATS server's max_payload).",
                limit_bytes=limit,
            ) from exc
        except nats.errors.Error as exc:
            raise self._unavailable(f"publishing failed: {exc!r}") from exc

    async def _connect(self) -> None:
        # With max_reconnect_attempts=-1 the first connect retries until NATS
        # accepts the connection, so this task may run as long as the gateway.
        # pending_size=0 turns off nats-py's buffering while disconnected.
        try:
            await self._connect_until_up()
        except Exception:
            logger.exception(
                "nats connect failed; async calls stay unavailable",
                extra={"ctx": {"url": self._nats_url}},
            )
            return
        logger.info(
            "connected to nats",
            extra={
                "ctx": {"url": self._nats_url, "failed_attempts": self._failed_attempts}
            },
        )
        self._failed_attempts = 0
        self._stream_check.set()

    async def _connect_until_up(self) -> None:
        await self._nc.connect(
            self._nats_url,
            name="faashub-gateway",
            max_reconnect_attempts=-1,
            reconnect_time_wait=constants.NATS_RECONNECT_WAIT_S,
            connect_timeout=constants.NATS_CONNECT_TIMEOUT_S,
            pending_size=0,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    async def _keep_stream(self) -> None:
        # Runs until the gateway stops. Each time the event is set (connected,
        # reconnected, or the stream went missing), make sure the stream exists.
        while True:
            await self._stream_check.wait()
            self._stream_check.clear()
            if not self._nc.is_connected or self._js is None:
                continue  # the reconnected callback sets the event again
            try:
                await jetstream.ensure_calls_stream(
                    self._js, duplicate_window_s=self._duplicate_window_s
                )
            except nats.errors.Error as exc:
                reason = f"the calls stream cannot be created: {exc!r}"
                # A lasting cause (JetStream off, a conflicting stream) fails
                # the same way every time: only a new error is a WARNING.
                level = (
                    logging.DEBUG if reason == self._stream_error else logging.WARNING
                )
                self._mark_stream_missing(reason)
                logger.log(
                    level,
                    "cannot create calls stream; retrying every %g s",
                    constants.STREAM_RETRY_S,
                    extra={"ctx": {"url": self._nats_url, "error": repr(exc)}},
                )
                await asyncio.sleep(constants.STREAM_RETRY_S)
                self._stream_check.set()
            else:
                if not self._stream_ready:
                    logger.info("calls stream is ready")
                self._stream_ready = True

    def _unavailable(
        self, reason: str, *, outcome_unknown: bool = False
    ) -> errors.QueueUnavailable:
        stored = (
            "The call may or may not be stored."
            if outcome_unknown
            else "Nothing was stored."
        )
        return errors.QueueUnavailable(
            f"The async queue is unavailable: {reason}. {stored} Retry later with "
            "the same X-Call-Id: JetStream stores a call id only once within "
            f"{self._duplicate_window_s:g} s, so the call runs once."
        )

    def _mark_stream_missing(self, reason: str) -> None:
        self._stream_ready = False
        self._stream_error = reason
        self._stream_check.set()

    async def _on_error(self, exc: Exception) -> None:
        # nats-py reports every failed connection attempt, once a second while
        # NATS is down. Log the first error of a series at WARNING, count the
        # rest, and start a new series after each successful connect.
        self._failed_attempts += 1
        level = logging.WARNING if self._failed_attempts == 1 else logging.DEBUG
        logger.log(
            level,
            "nats connection error; reconnecting every %d s",
            constants.NATS_RECONNECT_WAIT_S,
            extra={"ctx": {"url": self._nats_url, "error": repr(exc)}},
        )

    async def _on_disconnected(self) -> None:
        if not self._nc.is_closed:
            logger.warning(
                "disconnected from nats", extra={"ctx": {"url": self._nats_url}}
            )

    async def _on_reconnected(self) -> None:
        logger.info(
            "reconnected to nats",
            extra={
                "ctx": {"url": self._nats_url, "failed_attempts": self._failed_attempts}
            },
        )
        self._failed_attempts = 0
        self._stream_check.set()
