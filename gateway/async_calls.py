"""Status and cancel of async calls: `/async-calls/{call_id}` and DELETE
`/async-function/{call_id}`.

* `GET /async-calls/{call_id}` returns the call's status as JSON
  (`CallStatus.to_api()`). The worker writes a status record in the
  `FAASHUB_CALL_STATUS` bucket at every change of state. A call that has no
  record yet but whose message is in the calls stream is `queued`, so the
  accept path writes nothing besides the message. Unknown calls, and calls
  whose record expired (`status_ttl_s`), are 404.
* `DELETE /async-calls/{call_id}`, and `DELETE /async-function/{call_id}` as
  in OpenFaaS Pro, cancel a queued or retrying call: 202 with the cancelled
  status, 404 when the call is unknown, 409 when it runs or has finished.

A cancel races with the worker that may start the call at the same moment.
Both sides write the record with compare-and-set: create when there is no
record, and update with the revision read otherwise. A worker that loses
reads `cancelled` and drops the call, and a cancel that loses reads again
and decides again. After the record, the cancel deletes the queued message,
and its large body if it has one.

A first delivery writes no record before it has run for
RUNNING_RECORD_AFTER_S, so a cancel that finds no record cannot tell a call
that runs from one that waits. When the queue's consumer has delivered the
message, and the call is not delayed, the cancel therefore reads the record
again after that time and a margin (`LATE_CANCEL_CHECK_S`). A worker that
runs the call has replaced the cancelled record by then (see
`queue_worker.status`), and the cancel becomes a 409. The answer then takes
about 1.5 s. A worker whose write comes later than that margin, or cannot
reach NATS, leaves the 202 standing for a call that runs.

These are lean routes like the other invocation routes, because callers, not
operators, use them.
"""

import asyncio
import dataclasses
import json
import logging
import time
import urllib.parse

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue
from starlette.types import Receive, Scope, Send

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub.call_status import CallState, CallStatus, status_key
from faashub.jetstream import worker_durable_name
from faashub.names import FunctionRef
from faashub.queued_call import QueuedCall, call_key, call_subject
from gateway import asgi, constants, errors, large_bodies
from gateway.call_queue import CallQueue

logger = logging.getLogger(__name__)

_JSON = (b"content-type", b"application/json")
_ALLOW_HEADER = (b"allow", b"GET, DELETE")
# Stream states from which a cancel is possible.
_CANCELLABLE = frozenset({CallState.QUEUED, CallState.RETRYING})


@dataclasses.dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A call found in the calls stream, with its stream sequence."""

    seq: int
    call: QueuedCall


@dataclasses.dataclass(frozen=True, slots=True)
class _Cancel:
    """A cancelled record as written, and whether its call may have started."""

    record: CallStatus
    revision: int
    delivered: bool
    """True when a worker has the message and no record shows what it does with it."""


class AsyncCalls:
    """The ASGI handler of `/async-calls/...` and of DELETE `/async-function/...`."""

    def __init__(self, queue: CallQueue) -> None:
        self._queue = queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        if method == "GET":
            await self.status(scope, send, prefix=constants.ASYNC_CALLS_PREFIX)
        elif method == "DELETE":
            await self.cancel(scope, send, prefix=constants.ASYNC_CALLS_PREFIX)
        else:
            await asgi.send_text(
                send,
                405,
                f"Method {method} is not allowed on {constants.ASYNC_CALLS_PREFIX}: "
                "GET returns a call's status and DELETE cancels it.\n",
                headers=[_ALLOW_HEADER],
            )

    async def status(self, scope: Scope, send: Send, *, prefix: str) -> None:
        """Send the status of the call named in the path."""
        call_id = _call_id_from_path(scope, prefix)
        try:
            status = await self.read_status(call_id)
        except errors.GatewayError as exc:
            await _send_error(send, exc)
            return
        logger.debug(
            "sent call status",
            extra={
                "ctx": {
                    "function": f"{status.function}.{status.namespace}",
                    "call_id": call_id,
                    "state": status.state.value,
                }
            },
        )
        await _send_json(send, 200, status.to_api())

    async def cancel(self, scope: Scope, send: Send, *, prefix: str) -> None:
        """Cancel the call named in the path, and send its cancelled status."""
        call_id = _call_id_from_path(scope, prefix)
        try:
            status = await self.cancel_call(call_id)
        except errors.GatewayError as exc:
            await _send_error(send, exc)
            return
        await _send_json(send, 202, status.to_api())

    async def read_status(self, call_id: str) -> CallStatus:
        """Return the call's status; raise CallNotFound, QueueUnavailable."""
        _check_call_id(call_id)
        layout = self._queue.layout()
        with self._queue.translate_errors(f"read the status of call {call_id!r}"):
            record = await _read_record(layout.status, call_id)
            if record is not None:
                return record[0]
            queued = await find_queued(self._queue, call_id)
            if queued is None:
                record = await _record_after_finish(layout.status, call_id)
                if record is not None:
                    return record[0]
        if queued is None:
            raise _not_found(call_id)
        return _queued_status(queued.call)

    async def cancel_call(self, call_id: str) -> CallStatus:
        """Mark the call cancelled and delete its queued message.

        Raises CallNotFound, CallConflict (running or finished) and
        QueueUnavailable.
        """
        _check_call_id(call_id)
        layout = self._queue.layout()
        with self._queue.translate_errors(f"cancel call {call_id!r}"):
            for _ in range(constants.CANCEL_MAX_TRIES):
                cancel = await self._try_cancel(layout.status, call_id)
                if cancel is not None:
                    break
            else:
                raise errors.QueueUnavailable(
                    f"Cannot cancel call {call_id!r}: its status changed "
                    f"{constants.CANCEL_MAX_TRIES} times while the gateway tried. "
                    "Retry in a moment."
                )
            if cancel.delivered:
                await self._check_not_started(layout.status, cancel)
        cancelled = cancel.record
        await self._drop_queued(call_id)
        logger.info(
            "cancelled call",
            extra={
                "ctx": {
                    "function": f"{cancelled.function}.{cancelled.namespace}",
                    "call_id": call_id,
                }
            },
        )
        return cancelled

    async def _try_cancel(self, bucket: KeyValue, call_id: str) -> _Cancel | None:
        """Write the cancelled record once; None when another writer came first."""
        now_ns = time.time_ns()
        key = status_key(call_id)
        record = await _read_record(bucket, call_id)
        try:
            queued = None
            if record is None:
                queued = await find_queued(self._queue, call_id)
                if queued is None:
                    record = await _record_after_finish(bucket, call_id)
                    if record is None:
                        raise _not_found(call_id)
            if queued is not None:
                cancelled = _cancelled(_queued_status(queued.call), now_ns=now_ns)
                revision = await bucket.create(key, cancelled.to_json())
                # Asked after the write: a worker that takes the message
                # later reads the cancelled record before it runs the call.
                delivered = await self._delivered(queued, now_ns=now_ns)
                return _Cancel(cancelled, revision, delivered)
            assert record is not None
            status, revision = record
            if status.state not in _CANCELLABLE:
                raise _conflict(call_id, status.state)
            cancelled = _cancelled(status, now_ns=now_ns)
            revision = await bucket.update(key, cancelled.to_json(), last=revision)
            return _Cancel(cancelled, revision, delivered=False)
        except nats.js.errors.KeyWrongLastSequenceError:
            logger.debug(
                "status changed during cancel; reading again",
                extra={"ctx": {"call_id": call_id}},
            )
            return None

    async def _delivered(self, queued: QueuedMessage, *, now_ns: int) -> bool:
        """Return whether a worker may be running the call, which had no record.

        A call delayed past now does not run before its time. Otherwise the
        queue's consumer reports whether it delivered the message. With no
        consumer yet, no worker has the call.
        """
        if queued.call.not_before_ns > now_ns:
            return False
        js = self._queue.layout().js
        try:
            info = await js.consumer_info(
                shared.CALLS_STREAM, worker_durable_name(queued.call.queue)
            )
        except nats.js.errors.NotFoundError:
            return False
        delivered = info.delivered.stream_seq if info.delivered else None
        return delivered is not None and delivered >= queued.seq

    async def _check_not_started(self, bucket: KeyValue, cancel: _Cancel) -> None:
        """Raise CallConflict if the call started before its cancel was written.

        A worker that runs the call replaces the cancelled record within
        RUNNING_RECORD_AFTER_S of its start, so the record is read again
        after that time and a margin.
        """
        record = cancel.record
        logger.debug(
            "a worker has the call; reading its record again to check whether "
            "it started",
            extra={"ctx": {"call_id": record.call_id}},
        )
        await asyncio.sleep(constants.LATE_CANCEL_CHECK_S)
        stored = await _read_record(bucket, record.call_id)
        if stored is None or stored[1] == cancel.revision:
            return
        state = stored[0].state
        logger.info(
            "cancel rejected: the call had started before it",
            extra={
                "ctx": {
                    "function": f"{record.function}.{record.namespace}",
                    "call_id": record.call_id,
                    "state": state.value,
                }
            },
        )
        raise errors.CallConflict(
            f"Call {record.call_id!r} had started before the cancel arrived and "
            f"is now {state.value!r}; only a queued or retrying call can be "
            "cancelled.",
            state=state.value,
        )

    async def _drop_queued(self, call_id: str) -> None:
        # The record is already cancelled, and a worker that gets the message
        # drops it, so failures here are logged, not returned.
        try:
            layout = self._queue.layout()
            queued = await find_queued(self._queue, call_id)
            if queued is None:
                return
            try:
                await layout.js.delete_msg(shared.CALLS_STREAM, queued.seq)
            except nats.js.errors.APIError:
                # A worker acknowledged the message in the meantime.
                return
            if queued.call.body_ref:
                await large_bodies.delete_body(layout.bodies, queued.call.body_ref)
        except (nats.errors.Error, errors.GatewayError) as exc:
            logger.warning(
                "cannot delete cancelled call from the stream; a worker drops it",
                extra={"ctx": {"call_id": call_id, "error": str(exc)}},
            )


async def _record_after_finish(
    bucket: KeyValue, call_id: str
) -> tuple[CallStatus, int] | None:
    """Read the record of a call that may have finished between two reads.

    A call shorter than the worker's RUNNING_RECORD_AFTER_S has no record
    until its final one. The worker stores that record and then acknowledges
    the message, and it does not wait for nats-server to confirm the write.
    So a read of the record before the call finished and a look for the
    message after it can both find nothing, and the record can become
    readable shortly after the message is gone. The record is read again a
    few times, over STATUS_SETTLE_WAITS_S, before the id counts as unknown.
    """
    for wait_s in constants.STATUS_SETTLE_WAITS_S:
        await asyncio.sleep(wait_s)
        record = await _read_record(bucket, call_id)
        if record is not None:
            return record
    return None


async def find_queued(queue: CallQueue, call_id: str) -> QueuedMessage | None:
    """Return the call's message in the calls stream, or None if it is not there.

    Raises nats errors as they come; callers translate them.
    """
    js = queue.layout().js
    subject = call_subject("*", "*", "*", call_key(call_id))
    try:
        message = await js.get_last_msg(shared.CALLS_STREAM, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None
    try:
        call = QueuedCall.from_nats(message.headers, message.data or b"")
    except shared_errors.InvalidQueuedCall:
        # Not written by a gateway; the worker dead-letters it.
        logger.debug(
            "unreadable message under a call key", extra={"ctx": {"call_id": call_id}}
        )
        return None
    if call.call_id != call_id or message.seq is None:
        return None
    return QueuedMessage(seq=message.seq, call=call)


async def stored_function(queue: CallQueue, call_id: str) -> FunctionRef | None:
    """Return the function of the call already stored under `call_id`, if known.

    Looks in the calls stream first and then in the status records; None
    means neither contains the call any more. Raises nats errors as they come.
    """
    queued = await find_queued(queue, call_id)
    if queued is not None:
        return queued.call.ref
    status = await read_status(queue, call_id)
    if status is None:
        return None
    return FunctionRef(status.function, status.namespace)


async def read_status(queue: CallQueue, call_id: str) -> CallStatus | None:
    """Return the status record of `call_id`, or None when there is none.

    Raises QueueUnavailable, and nats errors as they come.
    """
    record = await _read_record(queue.layout().status, call_id)
    return None if record is None else record[0]


async def _read_record(bucket: KeyValue, call_id: str) -> tuple[CallStatus, int] | None:
    """Return the call's status record and its revision, or None."""
    try:
        entry = await bucket.get(status_key(call_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        status = CallStatus.from_json(entry.value or b"")
    except shared_errors.InvalidQueuedCall as exc:
        raise errors.QueueUnavailable(
            f"The stored status of call {call_id!r} cannot be read: {exc}"
        ) from exc
    if status.call_id != call_id or entry.revision is None:
        return None
    return status, entry.revision


def _queued_status(call: QueuedCall) -> CallStatus:
    return CallStatus(
        call_id=call.call_id,
        function=call.function,
        namespace=call.namespace,
        state=CallState.QUEUED,
        queue=call.queue,
        accepted_at_ns=call.accepted_at_ns,
        updated_at_ns=call.accepted_at_ns,
        next_attempt_at_ns=call.not_before_ns or None,
        original_call_id=call.original_call_id,
    )


def _cancelled(status: CallStatus, *, now_ns: int) -> CallStatus:
    return dataclasses.replace(
        status,
        state=CallState.CANCELLED,
        next_attempt_at_ns=None,
        finished_at_ns=now_ns,
        updated_at_ns=now_ns,
    )


def _call_id_from_path(scope: Scope, prefix: str) -> str:
    """Return the percent-decoded rest of the path after `prefix`."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        raw_path = scope["path"].encode("latin-1")
    return urllib.parse.unquote(raw_path[len(prefix) :].decode("latin-1"), "latin-1")


def _check_call_id(call_id: str) -> None:
    if not call_id:
        raise errors.InvalidRequest(
            "The path names no call id; use /async-calls/CALL_ID with the X-Call-Id "
            "of the 202 response."
        )


def _not_found(call_id: str) -> errors.CallNotFound:
    return errors.CallNotFound(
        f"No async call with id {call_id!r}: the id is unknown, or its status "
        "expired after the gateway's status_ttl_s."
    )


def _conflict(call_id: str, state: CallState) -> errors.CallConflict:
    return errors.CallConflict(
        f"Call {call_id!r} cannot be cancelled in state {state.value!r}; only a "
        "queued or retrying call can be.",
        state=state.value,
    )


_ERROR_STATUS: dict[type[errors.GatewayError], int] = {
    errors.InvalidRequest: 400,
    errors.CallNotFound: 404,
    errors.CallConflict: 409,
}


async def _send_error(send: Send, exc: errors.GatewayError) -> None:
    status = _ERROR_STATUS.get(type(exc))
    if status is None:
        # QueueUnavailable, or a stored record that cannot be read.
        await asgi.send_gateway_error(send, 503, f"{exc}\n")
        return
    await asgi.send_text(send, status, f"{exc}\n")


async def _send_json(send: Send, status: int, document: object) -> None:
    body = json.dumps(document, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
