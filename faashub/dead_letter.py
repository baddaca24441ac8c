"""Dead letters: what could not complete, stored with its reason.

A dead letter is one message in the `FAASHUB_DEAD_LETTERS` stream, of one of
two kinds:

* `call`: an async call that will not run again by itself (attempts
  exhausted, too old, function not found, unreadable message, or a final
  error status). The message is the queued call as it was stored, plus the
  dead-letter headers. Redriving it queues a new call with a new id.
* `callback`: a call that ran, whose result could not be delivered to its
  callback URL. The message body is the function's response body, and the
  function's status and headers are in the dead-letter headers, with the
  duration and the retry counts that the callback carried. Redriving it
  posts the callback again; the function does not run again.

Each attempt is recorded as `{"status": int | null, "error": str, "at_ns": int}`
in the `Faashub-Dlq-Attempts` header (JSON).
"""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from faashub import constants, errors
from faashub.queued_call import QueuedCall

DeadLetterKind = Literal["call", "callback"]
T = TypeVar("T")

# Reasons a call is dead-lettered; the API filters on these words.
REASON_ATTEMPTS_EXHAUSTED = "attempts-exhausted"
REASON_EXPIRED = "expired"
REASON_FUNCTION_NOT_FOUND = "function-not-found"
REASON_INVALID_MESSAGE = "invalid-message"
REASON_REJECTED = "rejected"  # the function's final response was a non-retried error
REASON_CALLBACK_FAILED = "callback-failed"
REASON_CALLBACK_REFUSED = "callback-refused"  # the callback URL is not allowed


@dataclass
class Attempt:
    """One invocation of a call, or one callback delivery."""

    status: int | None
    error: str
    at_ns: int

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "at_ns": self.at_ns}


@dataclass
class DeadLetter:
    """A dead-lettered call or callback."""

    kind: DeadLetterKind
    reason: str
    call: QueuedCall
    detail: str = ""
    """A sentence on what went wrong, for people; never a secret or a body."""
    attempts: list[Attempt] = field(default_factory=list)
    dead_lettered_at_ns: int = 0
    result_status: int | None = None
    """For `callback`: the function's status."""
    result_headers: dict[str, str] = field(default_factory=dict)
    """For `callback`: the function's response headers."""
    result_body: bytes = b""
    """For `callback`: the function's response body."""
    duration_s: float | None = None
    """For `callback`: the `X-Duration-Seconds` value, how long the function ran."""
    retry: int | None = None
    """For `callback`: the `X-Retry` value, the attempts made."""
    retry_max: int | None = None
    """For `callback`: the `X-Retry-Max` value, the attempts allowed."""

    def subject(self) -> str:
        call = self.call
        return (
            f"{constants.DEAD_LETTER_SUBJECT_PREFIX}.{call.queue}.{call.namespace}."
            f"{call.function}.{call.key}"
        )

    def to_nats(self) -> tuple[dict[str, str], bytes]:
        """Return the message headers and body of this dead letter."""
        message_headers = self.call.to_nats_headers()
        # The dead-letter stream keeps every copy: no de-duplication by call id.
        message_headers.pop(constants.NATS_MSG_ID, None)
        message_headers[constants.META_DLQ_KIND] = self.kind
        message_headers[constants.META_DLQ_REASON] = self.reason
        message_headers[constants.META_DLQ_AT_NS] = str(self.dead_lettered_at_ns)
        message_headers[constants.META_DLQ_ATTEMPTS] = json.dumps(
            [attempt.to_dict() for attempt in self.attempts], separators=(",", ":")
        )
        if self.detail:
            message_headers[constants.META_DLQ_DETAIL] = _one_line(self.detail)
        if self.kind == "callback":
            message_headers[constants.META_DLQ_RESULT_STATUS] = str(self.result_status)
            message_headers[constants.META_DLQ_RESULT_HEADERS] = json.dumps(
                self.result_headers, separators=(",", ":")
            )
            if self.duration_s is not None:
                message_headers[constants.META_DLQ_DURATION_SECONDS] = (
                    f"{self.duration_s:.6f}"
                )
            if self.retry is not None:
                message_headers[constants.META_DLQ_RETRY] = str(self.retry)
            if self.retry_max is not None:
                message_headers[constants.META_DLQ_RETRY_MAX] = str(self.retry_max)
            return message_headers, self.result_body
        return message_headers, self.call.body

    @classmethod
    def from_nats(
        cls, message_headers: Mapping[str, str] | None, body: bytes
    ) -> "DeadLetter":
        """Rebuild a dead letter from its message, or raise InvalidQueuedCall."""
        if not message_headers:
            raise errors.InvalidQueuedCall("The dead-letter message has no headers.")
        kind_text = message_headers.get(constants.META_DLQ_KIND)
        kind: DeadLetterKind
        if kind_text == "call":
            kind = "call"
        elif kind_text == "callback":
            kind = "callback"
        else:
            raise errors.InvalidQueuedCall(f"Unknown dead-letter kind {kind_text!r}.")
        try:
            attempts = [
                Attempt(
                    item.get("status"), str(item.get("error", "")), int(item["at_ns"])
                )
                for item in json.loads(
                    message_headers.get(constants.META_DLQ_ATTEMPTS, "[]")
                )
            ]
            at_ns = int(message_headers.get(constants.META_DLQ_AT_NS, "0"))
            result_headers = json.loads(
                message_headers.get(constants.META_DLQ_RESULT_HEADERS, "{}")
            )
            result_status_text = message_headers.get(constants.META_DLQ_RESULT_STATUS)
            result_status = int(result_status_text) if result_status_text else None
            duration_s = _optional(
                message_headers, constants.META_DLQ_DURATION_SECONDS, float
            )
            retry = _optional(message_headers, constants.META_DLQ_RETRY, int)
            retry_max = _optional(message_headers, constants.META_DLQ_RETRY_MAX, int)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise errors.InvalidQueuedCall(
                f"Invalid dead-letter headers: {exc}"
            ) from exc
        call_body = body if kind == "call" else b""
        return cls(
            kind=kind,
            reason=message_headers.get(constants.META_DLQ_REASON, ""),
            call=QueuedCall.from_nats(message_headers, call_body),
            detail=message_headers.get(constants.META_DLQ_DETAIL, ""),
            attempts=attempts,
            dead_lettered_at_ns=at_ns,
            result_status=result_status,
            result_headers=result_headers,
            result_body=body if kind == "callback" else b"",
            duration_s=duration_s,
            retry=retry,
            retry_max=retry_max,
        )


def dead_letter_filter_subject(
    *, queue: str = "*", namespace: str = "*", function: str = "*", key: str = "*"
) -> str:
    """Return a subject filter over the dead-letter stream; `*` matches any."""
    return (
        f"{constants.DEAD_LETTER_SUBJECT_PREFIX}.{queue}.{namespace}.{function}.{key}"
    )


def _optional(
    message_headers: Mapping[str, str], name: str, parse: Callable[[str], T]
) -> T | None:
    """Parse header `name` with `parse`, or return None when the message lacks it.

    Dead letters stored by an older worker lack the newer headers.
    """
    text = message_headers.get(name)
    return None if text is None else parse(text)


def _one_line(text: str) -> str:
    # NATS header values cannot hold line breaks.
    return " ".join(text.split())[:1000]
