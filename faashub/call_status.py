"""The status record of an async call, shared by the worker and the gateway.

The worker writes a record into the `FAASHUB_CALL_STATUS` key-value bucket
each time a call changes state; the gateway reads it for status requests and
writes `cancelled` when a caller cancels. Records expire with the bucket's
max age, after which a status request for the call is a 404.

A call that is stored but has no record yet is `queued`: the gateway tells
that from the calls stream itself (its subject ends with the call key), so
accepting a call costs no second write.

State changes that can race (a worker starting a call while a caller cancels
it) use the key-value revision: `create` when there is no record, `update`
with the last revision read otherwise, and whoever loses reads again.
"""

import datetime
import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from faashub import errors
from faashub.queued_call import call_key


class CallState(enum.StrEnum):
    """State of an async call."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The function's final response had an error status that is not retried."""
    DEAD_LETTERED = "dead-lettered"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATES


# Key in `extra` of how many attempts the retry budget leaves out: those
# that got a 429, and those that the gateway did not pass on to the function.
# The queue-worker writes it (`queue_worker.status`).
EXTRA_THROTTLED = "throttled"

_FINAL_STATES = frozenset(
    {
        CallState.SUCCEEDED,
        CallState.FAILED,
        CallState.DEAD_LETTERED,
        CallState.CANCELLED,
    }
)


@dataclass
class CallStatus:
    """One call's status as stored in the key-value bucket and returned by the API."""

    call_id: str
    function: str
    namespace: str
    state: CallState
    queue: str = "default"
    attempts: int = 0
    """Invocations started so far, throttled ones included."""
    max_attempts: int = 0
    last_status: int | None = None
    """HTTP status of the last invocation, if any."""
    last_error: str = ""
    """Reason the last attempt failed, if it did."""
    next_attempt_at_ns: int | None = None
    """When a retrying call runs again, in Unix nanoseconds."""
    accepted_at_ns: int = 0
    started_at_ns: int | None = None
    """When the first attempt started."""
    finished_at_ns: int | None = None
    updated_at_ns: int = 0
    dead_letter_reason: str = ""
    callback_status: int | None = None
    """HTTP status the callback receiver returned, if a callback was posted."""
    original_call_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Room for fields added later, kept when a record is rewritten."""

    @property
    def key(self) -> str:
        return status_key(self.call_id)

    @property
    def throttled_attempts(self) -> int:
        """Attempts that the retry budget does not count (see EXTRA_THROTTLED)."""
        value = self.extra.get(EXTRA_THROTTLED, 0)
        return value if isinstance(value, int) else 0

    def to_json(self) -> bytes:
        # A shallow dict: asdict() would deep-copy `extra` on every write.
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["state"] = self.state.value
        return json.dumps(record, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "CallStatus":
        """Parse a stored record; raise InvalidQueuedCall if it is not one."""
        try:
            record = json.loads(data)
            record["state"] = CallState(record["state"])
            known = {
                name: record[name]
                for name in cls.__dataclass_fields__
                if name in record
            }
            return cls(**known)
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.InvalidQueuedCall(
                f"Stored call status is not valid: {exc}"
            ) from exc

    def to_api(self) -> dict[str, Any]:
        """Return the JSON object of the status API, with times in RFC 3339."""
        record = asdict(self)
        record["state"] = self.state.value
        record.pop("extra")
        record["throttled_attempts"] = self.throttled_attempts
        for name in list(record):
            if name.endswith("_at_ns"):
                value = record.pop(name)
                record[name.removesuffix("_ns")] = (
                    None if not value else _rfc3339(value)
                )
        return record


def status_key(call_id: str) -> str:
    """Return the key-value key of a call's status record."""
    return call_key(call_id)


def _rfc3339(unix_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(unix_ns / 1e9, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
