"""The worker's side of the call-status records (`faashub.call_status`).

The worker writes one record per state change of a call, keyed by the call
id, in the `FAASHUB_CALL_STATUS` bucket. Writes that can race use the
key-value revision:

* `claim` starts an attempt. On a first delivery it only reads the record:
  with none stored, the call runs and its first write is the final record
  (or a lease extension, see below), so a common call costs one write. On
  a redelivery it `create`s a RUNNING record when there is none, otherwise
  it reads the record and decides. A CANCELLED record means the call must not
  run. A final one (succeeded, failed, dead-lettered) written for the same
  message means this delivery is a duplicate. Any other record is updated
  to RUNNING with one more attempt, with the revision read. A revision
  conflict means someone else (a cancel) wrote in between, so the worker
  reads again and decides again.
* `save` writes a later state with the revision of the worker's last write.

A RUNNING record carries a lease (`lease_until_ns`, one ack_wait long),
which `RunningLease` extends while the call runs. A first delivery's lease
is written only when the call outlasts RUNNING_RECORD_AFTER_S (1 s) or a third
of it, whichever is shorter. A second delivery of a
call whose lease is current finds it BUSY and comes back when the lease
ends. That happens when NATS redelivers a message that a live worker is
still running, for example after a NATS restart lost the consumer's latest
delivery state. After a crash the lease runs out, and the next delivery
takes over.

The record's `extra` field carries what only the worker reads:

* `stream_seq`: the stream sequence of the message the record belongs to,
  so that a message reusing a finished call's id after the gateway's
  duplicate window runs as a new call;
* `attempt_log`: every attempt's status, error and time, because a retried
  call comes back as a new delivery;
* `throttled`: how many attempts got a 429 response or did not reach the
  function (a gateway that was down or passed nothing on), since those do not use
  up the retry budget;
* `lease_until_ns`: the lease.

A cancel that comes before a first delivery's first write finds no record
and creates a CANCELLED one. If the call had already started, its first
write replaces that record: the lease (`replace_late_cancel`) or the final
record. The gateway reads the record again once that write is due, and
rejects the cancel when the record changed (`gateway.async_calls`).

NOTE: until a first delivery writes a record, which takes up to
RUNNING_RECORD_AFTER_S, the status API reports the call as queued. A worker
that dies then leaves no count of that attempt, and a second delivery of
the same message runs the call again. The last needs NATS to lose the
consumer's delivery state.

NOTE: the lease compares wall-clock times written by different workers, so
clocks that drift apart by more than ack_wait can let a second delivery run
while the first one still runs.
"""

import asyncio
import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from faashub import call_status
from faashub import constants as shared
from faashub import errors as shared_errors
from faashub.call_status import CallState, CallStatus, status_key
from faashub.dead_letter import Attempt
from faashub.jetstream import DEFAULT_DUPLICATE_WINDOW_S
from faashub.queued_call import QueuedCall
from faashub.tasks import cancel_and_wait
from queue_worker import constants, errors
from queue_worker.deadlines import Deadlines
from queue_worker.status_reads import BatchedStatusReader
from queue_worker.status_writes import StatusWriter

logger = logging.getLogger(__name__)

# Reads and writes in one claim or save before the worker gives up and
# delivers the call again later. Each conflict needs a concurrent writer.
MAX_CONFLICTS = 5

EXTRA_STREAM_SEQ = "stream_seq"
EXTRA_ATTEMPT_LOG = "attempt_log"
EXTRA_THROTTLED = call_status.EXTRA_THROTTLED
EXTRA_LEASE_UNTIL_NS = "lease_until_ns"


class Decision(enum.Enum):
    """The action for a delivered call, given its status record."""

    RUN = "run"
    CANCELLED = "cancelled"
    DUPLICATE = "duplicate"
    BUSY = "busy"
    """Another delivery of the call runs now, and its lease is current."""


@dataclass(slots=True)
class Claim:
    """The result of `StatusStore.claim`."""

    decision: Decision
    record: CallStatus
    revision: int | None
    """The stored revision, or None when the record has not been written."""


@dataclass(slots=True)
class Stored:
    """A record as read from the bucket; `record` is None if it was unreadable."""

    record: CallStatus | None
    revision: int


class StatusStore:
    """Reads and writes call-status records with compare-and-set."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        lease_s: float,
        clock_ns: Callable[[], int] = time.time_ns,
        reader: BatchedStatusReader | None = None,
        writer: StatusWriter | None = None,
    ) -> None:
        """With `reader`, reads go through it, so concurrent reads share requests.

        With both `reader` and `writer`, writes go through `writer`.
        """
        self._kv = kv
        self._reader = reader
        self._writer = writer if reader is not None else None
        self.lease_s = lease_s
        self._lease_ns = int(lease_s * 1e9)
        self._clock_ns = clock_ns
        # The calls stream's duplicate window; the worker sets the stream's
        # own value when it binds.
        self.duplicate_window_ns = int(DEFAULT_DUPLICATE_WINDOW_S * 1e9)
        # Running leases not written yet: the first write comes after
        # RUNNING_RECORD_AFTER_S, or a third of the lease if that is shorter.
        self.lease_starts: Deadlines[RunningLease] = Deadlines(
            min(lease_s / 3, shared.RUNNING_RECORD_AFTER_S),
            RunningLease.start_extending,
        )

    async def read(self, call_id: str) -> Stored | None:
        """Return the call's record and revision, or None if there is none."""
        if self._reader is not None:
            return await self._read_batched(call_id)
        key = status_key(call_id)
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise _unavailable("read the status of", call_id, exc) from exc
        assert entry.revision is not None
        return _stored(call_id, entry.value or b"", entry.revision)

    async def _read_batched(self, call_id: str) -> Stored | None:
        assert self._reader is not None
        try:
            value = await self._reader.read(status_key(call_id))
        except errors.NatsUnavailable as exc:
            raise errors.NatsUnavailable(
                f"Cannot read the status of call {call_id!r}: {exc}"
            ) from exc
        if value is None or value.deleted:
            return None
        return _stored(call_id, value.data, value.revision)

    async def claim(
        self,
        call: QueuedCall,
        *,
        stream_seq: int | None,
        max_attempts: int,
        first_delivery: bool = False,
    ) -> Claim:
        """Decide whether this delivery of `call` runs, and if so record it.

        On a first delivery with no stored record, nothing is written and
        the claim's revision is None: the next write creates the record.
        Raises NatsUnavailable when the bucket cannot be used, or when the
        record keeps changing under the worker.
        """
        fresh = self._started(
            None, call, stream_seq=stream_seq, max_attempts=max_attempts
        )
        stored: Stored | None
        if first_delivery:
            stored = await self.read(call.call_id)
            if stored is None:
                return Claim(Decision.RUN, fresh, None)
        else:
            # Most calls have no record yet, so try the one-round-trip create
            # first.
            revision = await self._write(fresh, revision=None)
            if revision is not None:
                return Claim(Decision.RUN, fresh, revision)
            stored = await self.read(call.call_id)
        for _ in range(MAX_CONFLICTS):
            if stored is None:
                # Deleted or expired since the create failed.
                record = fresh
                revision = await self._write(record, revision=None)
            else:
                decision = decide(
                    stored.record,
                    stream_seq=stream_seq,
                    now_ns=self._clock_ns(),
                    call=call,
                    duplicate_window_ns=self.duplicate_window_ns,
                )
                if decision is not Decision.RUN:
                    assert stored.record is not None
                    return Claim(decision, stored.record, stored.revision)
                previous = stored.record
                if previous is not None and not belongs_to(
                    previous, stream_seq=stream_seq
                ):
                    # A new message that reuses a finished call's id.
                    previous = None
                record = self._started(
                    previous, call, stream_seq=stream_seq, max_attempts=max_attempts
                )
                revision = await self._write(record, revision=stored.revision)
            if revision is not None:
                return Claim(Decision.RUN, record, revision)
            stored = await self.read(call.call_id)
        raise errors.NatsUnavailable(
            f"The status record of call {call.call_id!r} changed {MAX_CONFLICTS} "
            "times while the worker tried to start it."
        )

    async def save(self, record: CallStatus, *, revision: int | None) -> int | None:
        """Write `record` if the stored revision is still `revision`.

        With revision None, write it only if there is no record. Return the
        new revision, or None if someone else wrote first. A write whose
        reply was lost is recognised on the next try, when the stored
        record equals `record`.
        """
        written = await self._write(record, revision=revision)
        if written is not None:
            return written
        stored = await self.read(record.call_id)
        if stored is not None and stored.record == record:
            return stored.revision
        return None

    async def store_final(self, record: CallStatus) -> None:
        """Store a final `record` over whatever was written meanwhile.

        The worker that ran the call has the last word, so there is no
        compare-and-set. Through the writer, most of these writes do not wait
        for the server's confirmation (`StatusWriter.put`).
        """
        data = record_json(record)
        if self._writer is not None:
            await self._writer.put(record.key, data)
            return
        try:
            await self._kv.put(record.key, data)
        except (nats.errors.Error, TimeoutError) as exc:
            raise _unavailable("store the status of", record.call_id, exc) from exc

    async def extend_lease(
        self, record: CallStatus, *, revision: int | None
    ) -> tuple[CallStatus, int] | None:
        """Extend a RUNNING record's lease; return it and its revision, or None.

        With revision None the record is created. None means someone else
        wrote the record since `revision`.
        """
        extended = replaced(
            record,
            extra={
                **record.extra,
                EXTRA_LEASE_UNTIL_NS: self._clock_ns() + self._lease_ns,
            },
        )
        written = await self.save(extended, revision=revision)
        return None if written is None else (extended, written)

    async def replace_late_cancel(
        self, record: CallStatus
    ) -> tuple[CallStatus, int] | None:
        """Replace a cancel that came after `record`'s call started running.

        A first delivery writes no record until it has run for
        RUNNING_RECORD_AFTER_S, so a cancel in that time finds none and
        creates a CANCELLED one. The call runs to its end anyway, so its
        RUNNING record takes the cancelled one's place, and the gateway,
        which reads the record again before it responds, rejects the cancel.
        Return the running record and its revision, or None when the stored
        record is not such a cancel.
        """
        stored = await self.read(record.call_id)
        stream_seq = record.extra.get(EXTRA_STREAM_SEQ)
        if (
            stored is None
            or stored.record is None
            or stored.record.state is not CallState.CANCELLED
            or not belongs_to(
                stored.record,
                stream_seq=stream_seq if isinstance(stream_seq, int) else None,
            )
        ):
            return None
        return await self.extend_lease(record, revision=stored.revision)

    async def _write(self, record: CallStatus, *, revision: int | None) -> int | None:
        data = record_json(record)
        if self._writer is not None:
            return await self._write_through_writer(record.key, data, revision)
        try:
            if revision is None:
                return await self._kv.create(record.key, data)
            return await self._kv.update(record.key, data, last=revision)
        except KeyWrongLastSequenceError:
            return None
        except (nats.errors.Error, TimeoutError) as exc:
            raise _unavailable("store the status of", record.call_id, exc) from exc

    async def _write_through_writer(
        self, key: str, data: bytes, revision: int | None
    ) -> int | None:
        assert self._writer is not None
        assert self._reader is not None
        written = await self._writer.write(key, data, last=revision or 0)
        if written is not None or revision is not None:
            return written
        # A key whose latest entry is a delete marker has no value, but a
        # create expecting no entry at all fails on it. nats-py's
        # KeyValue.create retries with the marker's revision, and so does this.
        latest = await self._reader.read(key)
        if latest is None or not latest.deleted:
            return None
        return await self._writer.write(key, data, last=latest.revision)

    def _started(
        self,
        previous: CallStatus | None,
        call: QueuedCall,
        *,
        stream_seq: int | None,
        max_attempts: int,
    ) -> CallStatus:
        now_ns = self._clock_ns()
        if previous is None:
            return CallStatus(
                call_id=call.call_id,
                function=call.function,
                namespace=call.namespace,
                state=CallState.RUNNING,
                queue=call.queue,
                attempts=1,
                max_attempts=max_attempts,
                accepted_at_ns=call.accepted_at_ns,
                started_at_ns=now_ns,
                updated_at_ns=now_ns,
                original_call_id=call.original_call_id,
                extra={
                    EXTRA_STREAM_SEQ: stream_seq,
                    EXTRA_LEASE_UNTIL_NS: now_ns + self._lease_ns,
                },
            )
        return replaced(
            previous,
            state=CallState.RUNNING,
            attempts=previous.attempts + 1,
            max_attempts=max_attempts,
            next_attempt_at_ns=None,
            started_at_ns=previous.started_at_ns or now_ns,
            updated_at_ns=now_ns,
            extra={
                **previous.extra,
                EXTRA_STREAM_SEQ: stream_seq,
                EXTRA_LEASE_UNTIL_NS: now_ns + self._lease_ns,
            },
        )


def _stored(call_id: str, data: bytes, revision: int) -> Stored:
    try:
        record: CallStatus | None = CallStatus.from_json(data)
    except shared_errors.InvalidQueuedCall as exc:
        logger.warning(
            "unreadable status record is replaced: %s",
            exc,
            extra={"ctx": {"call_id": call_id}},
        )
        record = None
    return Stored(record, revision)


def record_json(record: CallStatus) -> bytes:
    """Return the same JSON as `record.to_json()`, with one shared encoder.

    `to_json` calls `json.dumps` with separators, which builds a new encoder
    on every call.
    """
    values = vars(record)
    fields = {name: values[name] for name in _FIELD_NAMES}
    fields["state"] = record.state.value
    return _JSON_ENCODER.encode(fields).encode()


def replaced(record: CallStatus, **changes: Any) -> CallStatus:
    """Return a copy of `record` with `changes`, as `dataclasses.replace` does.

    CallStatus has neither `__post_init__` nor fields left out of `__init__`,
    so copying the instance's attributes gives the same record as
    `dataclasses.replace`, without building keyword arguments for every
    field and calling `__init__`. The worker copies a record two or three
    times per call.
    """
    unknown = changes.keys() - _FIELD_NAME_SET
    if unknown:
        raise TypeError(f"CallStatus has no field {sorted(unknown)[0]!r}.")
    copy = object.__new__(CallStatus)
    attributes = vars(copy)
    attributes.update(vars(record))
    attributes.update(changes)
    return copy


# In declaration order, which is the key order of the stored JSON.
_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(CallStatus))
_FIELD_NAME_SET = frozenset(_FIELD_NAMES)
# `json.dumps` with any option builds a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"))


def decide(
    record: CallStatus | None,
    *,
    stream_seq: int | None,
    now_ns: int,
    call: QueuedCall | None = None,
    duplicate_window_ns: int = 0,
) -> Decision:
    """Decide from a stored record whether a delivery of its call runs now.

    With `call`, a record of an earlier message of the same function,
    accepted within `duplicate_window_ns` of `call`, makes the delivery a
    DUPLICATE (see `repeats_earlier`).
    """
    if record is None:
        return Decision.RUN
    if not belongs_to(record, stream_seq=stream_seq):
        # The record is about an earlier message with the same call id.
        if call is not None and repeats_earlier(record, call, duplicate_window_ns):
            return Decision.DUPLICATE
        return Decision.RUN
    if record.state is CallState.CANCELLED:
        return Decision.CANCELLED
    if record.state.is_final:
        return Decision.DUPLICATE
    if record.state is CallState.RUNNING and lease_left_s(record, now_ns=now_ns) > 0:
        return Decision.BUSY
    return Decision.RUN


def repeats_earlier(record: CallStatus, call: QueuedCall, window_ns: int) -> bool:
    """Tell whether `call` repeats the earlier call that `record` is about.

    It does when both are calls of the same function accepted within the
    calls stream's duplicate window of each other. JetStream rejects such a
    repeat by its Nats-Msg-Id only while it keeps the id. It drops the ids
    of removed messages when it restarts. And a call id that the gateway
    generated is stored without one, so a retry after a 503 that reuses it
    would otherwise run a second time.
    """
    return (
        record.function == call.function
        and record.namespace == call.namespace
        and abs(call.accepted_at_ns - record.accepted_at_ns) <= window_ns
    )


def without_lease(record: CallStatus) -> dict[str, Any]:
    """Return the record's `extra` without the lease, for states other than RUNNING."""
    return {
        name: value
        for name, value in record.extra.items()
        if name != EXTRA_LEASE_UNTIL_NS
    }


def lease_left_s(record: CallStatus, *, now_ns: int) -> float:
    """Return the seconds left on a record's lease, 0 when it has none or ended."""
    until_ns = record.extra.get(EXTRA_LEASE_UNTIL_NS)
    if not isinstance(until_ns, int):
        return 0.0
    return max(until_ns - now_ns, 0) / 1e9


class RunningLease:
    """Extends a RUNNING record's lease every third of it while a call runs.

    A call shorter than RUNNING_RECORD_AFTER_S costs no write and no task,
    because the store's shared timer (`StatusStore.lease_starts`) starts the
    extending task only when that time has passed. `stop()` ends the extensions
    and returns the record's latest revision, for the next write.
    """

    def __init__(
        self, store: StatusStore, record: CallStatus, revision: int | None
    ) -> None:
        self._store = store
        self.record = record
        self.revision = revision
        self._interval_s = store.lease_s / 3
        self._task: asyncio.Task[None] | None = None
        store.lease_starts.add(self)

    async def stop(self) -> int | None:
        """Stop extending and return the latest revision (None: not written)."""
        self._store.lease_starts.discard(self)
        if self._task is not None:
            await cancel_and_wait([self._task])
        return self.revision

    def start_extending(self) -> None:
        """Start the task that writes and extends the lease, once the call ran."""
        self._task = asyncio.create_task(self._extend())

    async def _extend(self) -> None:
        context = {"function": self.record.function, "call_id": self.record.call_id}
        while True:
            try:
                extended = await self._store.extend_lease(
                    self.record, revision=self.revision
                )
            except errors.TemporaryError as exc:
                logger.debug("lease not extended: %s", exc, extra={"ctx": context})
            else:
                if extended is None and self.revision is None:
                    extended = await self._store.replace_late_cancel(self.record)
                    if extended is not None:
                        logger.info(
                            "call was cancelled after it started, so it runs to "
                            "its end and the cancel is rejected",
                            extra={"ctx": context},
                        )
                if extended is None:
                    logger.warning(
                        "status record changed by another delivery while the "
                        "call runs; the lease is no longer extended",
                        extra={"ctx": context},
                    )
                    return
                self.record, self.revision = extended
            await asyncio.sleep(self._interval_s)


def belongs_to(record: CallStatus, *, stream_seq: int | None) -> bool:
    """Tell whether `record` is about the message at `stream_seq`.

    A record without a sequence (a cancel stored before any delivery) is
    taken to be about the call's current message.
    """
    recorded = record.extra.get(EXTRA_STREAM_SEQ)
    return recorded is None or stream_seq is None or recorded == stream_seq


def with_attempt(
    record: CallStatus, attempt: Attempt, *, throttled: bool
) -> CallStatus:
    """Return `record` with the outcome of its latest attempt added."""
    log = [*record.extra.get(EXTRA_ATTEMPT_LOG, []), attempt.to_dict()]
    extra: dict[str, Any] = {
        **record.extra,
        EXTRA_ATTEMPT_LOG: log[-constants.ATTEMPT_LOG_MAX :],
    }
    if throttled:
        extra[EXTRA_THROTTLED] = record.throttled_attempts + 1
    return replaced(
        record,
        last_status=attempt.status,
        last_error=attempt.error,
        updated_at_ns=attempt.at_ns,
        extra=extra,
    )


def attempt_log(record: CallStatus | None) -> list[Attempt]:
    """Return the attempts stored in `record`, oldest first."""
    if record is None:
        return []
    attempts = []
    for item in record.extra.get(EXTRA_ATTEMPT_LOG, []):
        try:
            attempts.append(
                Attempt(
                    item.get("status"), str(item.get("error", "")), int(item["at_ns"])
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return attempts


def counted_attempts(record: CallStatus | None) -> int:
    """Return the attempts that count against the retry budget (429s excluded)."""
    if record is None:
        return 0
    return record.attempts - record.throttled_attempts


def _unavailable(
    action: str, call_id: str, exc: BaseException
) -> errors.NatsUnavailable:
    reason = str(exc) or type(exc).__name__
    return errors.NatsUnavailable(
        f"Cannot {action} call {call_id!r} in the bucket FAASHUB_CALL_STATUS: {reason}."
    )
