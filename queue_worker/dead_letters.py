"""Store dead letters (`faashub.dead_letter`) in the dead-letter stream.

The worker writes a dead letter before it acknowledges the call, so a call
is never both gone from the calls stream and missing from the dead letters.
A worker that dies in between makes JetStream deliver the call again. The
dead letter's `Nats-Msg-Id` (kind, call key and stream sequence) then makes
JetStream drop the second copy inside the stream's duplicate window.

A NATS message must fit in the server's max_payload, headers included. A
call dead letter whose inline body would not fit moves the body into the
bodies object store, as the gateway does for large calls. A callback dead
letter has no such reference in its format, so an oversized function
response is cut to fit, and the detail states the cut.
"""

import dataclasses
import logging
from collections.abc import Callable, Mapping

import nats.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from faashub import constants as shared
from faashub.dead_letter import DeadLetter
from queue_worker import errors

logger = logging.getLogger(__name__)

# Bytes kept free below max_payload for the protocol line and rounding.
PAYLOAD_MARGIN_BYTES = 1024


class DeadLetterWriter:
    """Publishes dead letters to the dead-letter stream."""

    def __init__(
        self,
        js: JetStreamContext,
        bodies: ObjectStore,
        *,
        max_payload_bytes: Callable[[], int],
    ) -> None:
        self._js = js
        self._bodies = bodies
        self._max_payload_bytes = max_payload_bytes

    async def publish(self, letter: DeadLetter, *, stream_seq: int | None) -> None:
        """Store `letter`; raise NatsUnavailable if JetStream does not confirm it."""
        letter = await self._fitted(letter)
        message_headers, body = letter.to_nats()
        if stream_seq is not None:
            message_headers[shared.NATS_MSG_ID] = (
                f"{letter.kind}-{letter.call.key}-{stream_seq}"
            )
        try:
            await self._js.publish(letter.subject(), body, headers=message_headers)
        except (nats.errors.Error, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise errors.NatsUnavailable(
                f"Cannot store the dead letter of call {letter.call.call_id!r} in "
                f"the stream {shared.DEAD_LETTER_STREAM}: {reason}."
            ) from exc

    async def _fitted(self, letter: DeadLetter) -> DeadLetter:
        """Return `letter`, changed if needed so that it fits in one message."""
        message_headers, body = letter.to_nats()
        budget = self._max_payload_bytes() - PAYLOAD_MARGIN_BYTES
        excess = _header_bytes(message_headers) + len(body) - budget
        if excess <= 0:
            return letter
        if letter.kind == "call":
            return await self._with_stored_body(letter)
        keep = max(len(letter.result_body) - excess, 0)
        logger.warning(
            "function response cut to fit the callback dead letter",
            extra={
                "ctx": {
                    "function": str(letter.call.ref),
                    "call_id": letter.call.call_id,
                    "response_bytes": len(letter.result_body),
                    "kept_bytes": keep,
                }
            },
        )
        note = (
            f"The function response was cut from {len(letter.result_body)} to "
            f"{keep} bytes to fit in one NATS message."
        )
        return dataclasses.replace(
            letter,
            result_body=letter.result_body[:keep],
            detail=f"{letter.detail} {note}".strip(),
        )

    async def _with_stored_body(self, letter: DeadLetter) -> DeadLetter:
        call = letter.call
        try:
            await self._bodies.put(call.key, call.body)
        except (nats.errors.Error, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise errors.NatsUnavailable(
                f"Cannot store the body of dead-lettered call {call.call_id!r} in "
                f"the object store {shared.BODIES_BUCKET}: {reason}."
            ) from exc
        stored = dataclasses.replace(
            call, body=b"", body_ref=call.key, body_size=len(call.body)
        )
        return dataclasses.replace(letter, call=stored)


def _header_bytes(message_headers: Mapping[str, str]) -> int:
    # "NATS/1.0\r\n", one "Name: value\r\n" line per header, then "\r\n".
    lines = sum(
        len(name.encode()) + len(value.encode()) + 4
        for name, value in message_headers.items()
    )
    return 12 + lines
