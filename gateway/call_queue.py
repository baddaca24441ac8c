"""The gateway's NATS connection, and publishing queued calls to JetStream.

This module sits between the gateway's handlers and JetStream. It connects
in the background with unlimited reconnects. So the gateway starts and serves
sync calls while NATS is down, and it recovers by itself when NATS comes
back. Once connected, and again after every reconnect, it makes sure that
the JetStream layout exists with the gateway's limits. The layout is the
calls stream (with its duplicate window), the dead-letter stream (its max
age), the call-status bucket (its TTL) and the large-body object store.
Until all four are ready, the async routes respond 503.

Publishing puts a body that does not fit in one NATS message into the object
store first (`gateway.large_bodies`). This module neither builds calls nor
speaks HTTP, because `gateway.async_accept` does that.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from faashub import constants as shared
from faashub import jetstream
from faashub.queued_call import QueuedCall
from faashub.tasks import cancel_and_wait
from gateway import constants, errors, large_bodies, limits
from gateway.nats_client import (
    EncodedHeaders,
    NatsClient,
    encode_headers,
    new_client,
)

logger = logging.getLogger(__name__)


def message_size(headers: dict[str, str], body: bytes) -> int:
    """Return the bytes a message takes against the server's max_payload.

    The server counts the header block and the body together, and closes the
    connection of a client that exceeds the limit, so the gateway checks the
    size itself before it publishes.
    """
    return len(encode_headers(headers)) + len(body)


# JetStream's header that makes a publish conditional on the last sequence
# stored under its subject, and the API error code that the server returns
# when the condition fails (checked against nats-server 2.15 by
# tests/gateway/test_async.py).
_EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE_ERR_CODE = 10071


def _message_headers(call: QueuedCall, *, deduplicate: bool) -> dict[str, str]:
    headers = call.to_nats_headers()
    if not deduplicate:
        del headers[shared.NATS_MSG_ID]
        return headers
    # Each call id has a subject of its own, so "0" lets the server store
    # the call only while no call with this id waits in the stream. That
    # also catches a retry of a generated id, which was stored without
    # Nats-Msg-Id after a PubAck timeout.
    headers[_EXPECTED_LAST_SUBJECT_SEQUENCE] = "0"
    return headers


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    """Handles on the JetStream layout, valid while the connection is up."""

    js: JetStreamContext
    status: KeyValue
    bodies: ObjectStore


class CallQueue:
    """The NATS connection of the gateway and the JetStream layout behind it."""

    def __init__(
        self,
        nats_url: str,
        *,
        duplicate_window_s: float,
        status_ttl_s: float | None = None,
        dead_letter_max_age_s: float | None = None,
        nats_token: str | None = None,
    ) -> None:
        self._nats_url = nats_url
        self._nats_token = nats_token
        self._duplicate_window_s = duplicate_window_s
        self._status_ttl_s = status_ttl_s
        self._dead_letter_max_age_s = dead_letter_max_age_s
        self._nc = new_client()
        # The PubAck wait of every publish, on one timer (see SharedTimeout).
        self._ack_timeout = limits.SharedTimeout(constants.PUBLISH_TIMEOUT_S)
        self._js: JetStreamContext | None = None
        self._layout: _Layout | None = None
        self._layout_error = "the JetStream streams have not been created yet"
        self._layout_check = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failed_attempts = 0
        # Monotonic time until which JetStream may lack the ids of calls
        # stored before a NATS restart (see `ids_may_be_forgotten`).
        self._ids_unsure_until = 0.0

    @property
    def max_payload_bytes(self) -> int:
        """Maximum message size in bytes, headers included, that NATS accepts."""
        return self._nc.max_payload

    @property
    def duplicate_window_s(self) -> float:
        return self._duplicate_window_s

    @property
    def ids_may_be_forgotten(self) -> bool:
        """Tell whether JetStream may have dropped call ids inside the duplicate window.

        nats-server rebuilds its duplicate ids from the messages still in a
        stream when it restarts, so the ids of calls that a worker already
        removed are gone (checked with nats-server 2.15). The gateway cannot
        tell a NATS restart from a lost connection, so this is true for one
        duplicate window after each connect and reconnect, and after each
        check of the streams, which follows both.
        """
        return time.monotonic() < self._ids_unsure_until

    def _mark_ids_unsure(self) -> None:
        self._ids_unsure_until = time.monotonic() + self._duplicate_window_s

    def unavailable_reason(self) -> str | None:
        """Return why a call cannot be stored now, or None if it can."""
        if not self._nc.is_connected:
            return f"the gateway is not connected to NATS at {self._nats_url}"
        if self._layout is None:
            return self._layout_error
        return None

    def check_available(self) -> None:
        """Raise QueueUnavailable unless a call can be stored now."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise self._unavailable(reason)

    def layout(self) -> _Layout:
        """Return the JetStream handles, or raise QueueUnavailable."""
        # NB: nats-py buffers requests while it reconnects. Checking the state
        # first makes a disconnected gateway respond 503 at once instead.
        reason = self.unavailable_reason()
        if reason is not None or self._layout is None:
            raise self._unavailable(reason or "the gateway has not started")
        return self._layout

    async def start(self) -> None:
        """Start connecting in the background, and return at once."""
        self._js = self._nc.jetstream(timeout=constants.PUBLISH_TIMEOUT_S)
        self._tasks = [
            asyncio.create_task(self._connect(), name="nats-connect"),
            asyncio.create_task(self._keep_layout(), name="jetstream-layout"),
        ]

    async def close(self) -> None:
        """Stop connecting or reconnecting, and close the connection."""
        await cancel_and_wait(self._tasks)
        for task in self._tasks:
            if not task.cancelled():
                # Read the exception, so that asyncio does not log it as unread.
                task.exception()
        await self._nc.close()
        logger.info("closed nats connection")

    async def publish(
        self, call: QueuedCall, *, deduplicate: bool = True
    ) -> jsapi.PubAck:
        """Store one call in the stream and return the PubAck.

        With `deduplicate`, the call id is the message's Nats-Msg-Id, so
        JetStream stores a repeat within the duplicate window once, and it
        rejects the message while a call with the same id waits in the
        stream. Both cases return a PubAck with `duplicate` set. Without
        `deduplicate`, the server skips that bookkeeping, which suits an id
        that the gateway has just generated.

        A body that does not fit in one message beside the headers goes to
        the object store first, and the message refers to it. Raises
        QueueUnavailable when the call could not be stored, or when the
        outcome is unknown, and PayloadTooLarge when even the headers alone
        do not fit in one message.
        """
        layout = self.layout()
        headers = EncodedHeaders(_message_headers(call, deduplicate=deduplicate))
        limit = self._nc.max_payload
        if len(headers.block) + len(call.body) <= limit:
            return await self._publish(layout.js, call.subject(), call.body, headers)
        return await self._publish_stored_body(
            layout, call, limit, deduplicate=deduplicate
        )

    async def _publish_stored_body(
        self, layout: _Layout, call: QueuedCall, limit: int, *, deduplicate: bool
    ) -> jsapi.PubAck:
        stored = dataclasses.replace(
            call, body=b"", body_ref=call.key, body_size=len(call.body)
        )
        headers = EncodedHeaders(_message_headers(stored, deduplicate=deduplicate))
        size = len(headers.block)
        if size > limit:
            raise errors.PayloadTooLarge(
                f"The call's headers take {size} bytes, more than the queue's limit "
                f"of {limit} bytes per message (the NATS server's max_payload). "
                "Send fewer or shorter headers, or raise max_payload on the NATS "
                "server.",
                limit_bytes=limit,
            )
        created = await large_bodies.store_body(
            layout.bodies, stored.body_ref, call.body, max_payload_bytes=limit
        )
        try:
            return await self._publish(layout.js, stored.subject(), b"", headers)
        except errors.QueueUnavailable as exc:
            # A call that may be stored may need its body: keep it then. The
            # caller retries with the same id, which finds and keeps it.
            if created and not exc.outcome_unknown:
                await large_bodies.delete_body(layout.bodies, stored.body_ref)
            raise

    async def _publish(
        self,
        js: JetStreamContext,
        subject: str,
        body: bytes,
        headers: EncodedHeaders,
    ) -> jsapi.PubAck:
        limit = self._nc.max_payload
        try:
            if isinstance(self._nc, NatsClient):
                return await self._nc.publish_to_stream(
                    subject, body, headers, ack_timeout=self._ack_timeout
                )
            return await js.publish(
                subject,
                body,
                timeout=constants.PUBLISH_TIMEOUT_S,
                headers=headers,
            )
        except nats.js.errors.NoStreamResponseError as exc:
            # Nothing listens on the subject: the stream is gone, for example
            # because NATS restarted with an empty store. Create it again.
            self._mark_layout_missing("the calls stream does not exist")
            raise self._unavailable("the calls stream does not exist") from exc
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE_ERR_CODE:
                # The subject already contains this call id: a retry of a
                # call that is stored and has not run yet.
                return jsapi.PubAck(stream=shared.CALLS_STREAM, seq=0, duplicate=True)
            raise self._unavailable(f"publishing failed: {exc!r}") from exc
        except nats.errors.TimeoutError as exc:
            # NB: without a PubAck the call may or may not be stored. The 503
            # carries the call id, and a retry with it is published with
            # Nats-Msg-Id and Nats-Expected-Last-Subject-Sequence, so
            # JetStream drops it while the first call waits in the stream.
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

    @contextmanager
    def translate_errors(self, action: str) -> Iterator[None]:
        """Turn a NATS error inside the block into QueueUnavailable.

        `action` completes "Cannot ..." in the message, e.g. "read the status".
        Errors a caller handles itself (NotFoundError and the like) must be
        caught inside the block.
        """
        try:
            yield
        except nats.errors.Error as exc:
            raise errors.QueueUnavailable(
                f"Cannot {action}: NATS failed ({exc!r}). Retry later."
            ) from exc

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
        self._mark_ids_unsure()
        self._layout_check.set()

    async def _connect_until_up(self) -> None:
        await self._nc.connect(
            self._nats_url,
            name="faashub-gateway",
            token=self._nats_token,
            max_reconnect_attempts=-1,
            reconnect_time_wait=constants.NATS_RECONNECT_WAIT_S,
            connect_timeout=constants.NATS_CONNECT_TIMEOUT_S,
            pending_size=0,
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )

    async def _keep_layout(self) -> None:
        # Runs until the gateway stops. Each time the event is set (connected,
        # reconnected, or a stream went missing), make sure the layout exists.
        while True:
            await self._layout_check.wait()
            self._layout_check.clear()
            if not self._nc.is_connected or self._js is None:
                continue  # the reconnected callback sets the event again
            try:
                layout = await self._ensure_layout(self._js)
            except nats.errors.Error as exc:
                reason = f"the JetStream streams cannot be created: {exc!r}"
                # A lasting cause (JetStream off, a conflicting stream) fails
                # the same way every time: only a new error is a WARNING.
                level = (
                    logging.DEBUG if reason == self._layout_error else logging.WARNING
                )
                self._mark_layout_missing(reason)
                logger.log(
                    level,
                    "cannot create jetstream streams; retrying every %g s",
                    constants.STREAM_RETRY_S,
                    extra={"ctx": {"url": self._nats_url, "error": repr(exc)}},
                )
                await asyncio.sleep(constants.STREAM_RETRY_S)
                self._layout_check.set()
            else:
                if self._layout is None:
                    logger.info("jetstream streams are ready")
                self._mark_ids_unsure()
                self._layout = layout

    async def _ensure_layout(self, js: JetStreamContext) -> _Layout:
        await jetstream.ensure_calls_stream(
            js, duplicate_window_s=self._duplicate_window_s
        )
        await jetstream.ensure_dead_letter_stream(
            js, max_age_s=self._dead_letter_max_age_s
        )
        status = await jetstream.ensure_status_bucket(js, ttl_s=self._status_ttl_s)
        bodies = await jetstream.ensure_bodies_bucket(js)
        return _Layout(js=js, status=status, bodies=bodies)

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
            "the X-Call-Id of this response. JetStream does not store that id "
            "again while a call with it waits in the queue, nor within "
            f"{self._duplicate_window_s:g} s of a call that the caller sent "
            "with that X-Call-Id.",
            outcome_unknown=outcome_unknown,
        )

    def _mark_layout_missing(self, reason: str) -> None:
        self._layout = None
        self._layout_error = reason
        self._layout_check.set()

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
            extra={
                "ctx": {
                    "url": self._nats_url,
                    "error": jetstream.describe_nats_error(exc),
                }
            },
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
        self._mark_ids_unsure()
        self._layout_check.set()
