"""The async calls of one function: `GET /system/async-calls`, a bounded read.

`GET /system/async-calls?function=NAME&namespace=NS&limit=N` returns the
newest calls of one function, newest accepted first, each in the shape of
`GET /async-calls/{call_id}`. `function` may also be `NAME.NAMESPACE`;
`namespace` defaults to `openfaas-fn` and `limit` to 50 (at most 500).

No index by function exists, so the listing reads two sources, each at most
`SCAN_LIMIT` records deep, counted back from its last sequence:

* the status bucket's stream (`KV_FAASHUB_CALL_STATUS`), read with an
  ephemeral consumer from the start of that window. It contains a record for
  every call a worker has touched or a caller cancelled. The newest record of
  each call counts, and the function is compared after the read, because the
  key is the call id alone;
* the calls stream, for calls no worker has touched yet (`queued`), read
  with direct gets by the subject filter of the function. A work-queue
  stream rejects a second consumer whose filter overlaps the worker's.

`scan_limit_reached` in the response is true when either source contains
older records than the window, so older calls may be missing from the list.
The listing never iterates the bucket's keys. It sits beside the status
route of `gateway.async_calls` and changes nothing.
"""

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import nats.js.errors
from fastapi import APIRouter, HTTPException, Query, Request
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from starlette.datastructures import QueryParams

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import names
from faashub.call_status import CallState, CallStatus
from faashub.queued_call import QueuedCall, function_filter_subject
from gateway import errors
from gateway.call_queue import CallQueue
from gateway.ui import guard

logger = logging.getLogger(__name__)

LIST_PATH = "/system/async-calls"
# Records read at most from each source per request.
SCAN_LIMIT = 2000
DEFAULT_LIMIT = 50
MAX_LIMIT = 500

STATUS_STREAM = f"KV_{shared.STATUS_BUCKET}"
_STATUS_SUBJECT_PREFIX = f"$KV.{shared.STATUS_BUCKET}."
# Messages per fetch from the status stream.
_FETCH_BATCH = 500
# Seconds a fetch waits; JetStream returns at once when messages are there.
_FETCH_TIMEOUT_S = 2.0
# Seconds the scan consumer outlives a gateway that crashed during a scan.
_SCAN_INACTIVE_S = 30.0
_KNOWN_PARAMETERS = frozenset({"function", "namespace", "limit"})


@dataclasses.dataclass(frozen=True, slots=True)
class CallListing:
    """The newest calls of one function, and whether the read was cut short."""

    calls: list[CallStatus]
    truncated: bool
    """More calls matched than the limit returned."""
    scan_limit_reached: bool
    """Older records than the scan window exist, so calls may be missing."""


@dataclasses.dataclass(slots=True)
class _Scan:
    records: dict[str, CallStatus]
    cut: bool


class AsyncCallLister:
    """Reads the newest async calls of a function from JetStream."""

    def __init__(self, queue: CallQueue, *, scan_limit: int = SCAN_LIMIT) -> None:
        self._queue = queue
        self._scan_limit = scan_limit

    @property
    def scan_limit(self) -> int:
        return self._scan_limit

    async def list_calls(self, ref: names.FunctionRef, *, limit: int) -> CallListing:
        """Return the newest `limit` calls of `ref`; raise QueueUnavailable."""
        js = self._queue.layout().js
        with self._queue.translate_errors(f"list the async calls of {ref}"):
            touched = await self._scan_status(js)
            queued = await self._scan_queued(js, ref)

        # A status record is newer than the queued message of the same call.
        by_call = dict(queued.records)
        for status in touched.records.values():
            if status.function == ref.name and status.namespace == ref.namespace:
                by_call[status.call_id] = status
        calls = sorted(
            by_call.values(),
            key=lambda status: (status.accepted_at_ns, status.updated_at_ns),
            reverse=True,
        )
        return CallListing(
            calls=calls[:limit],
            truncated=len(calls) > limit,
            scan_limit_reached=touched.cut or queued.cut,
        )

    async def _scan_status(self, js: JetStreamContext) -> _Scan:
        """Read the newest status records, keyed by status key."""
        state = (await js.stream_info(STATUS_STREAM)).state
        scan = _Scan(records={}, cut=False)
        if state.messages == 0:
            return scan
        start_seq = max(state.first_seq, state.last_seq - self._scan_limit + 1)
        scan.cut = start_seq > state.first_seq
        async with status_scan(js, start_seq) as consumer:
            if consumer.num_pending:
                await self._read_status(
                    js, consumer.name, scan, last_seq=state.last_seq
                )
        return scan

    async def _read_status(
        self, js: JetStreamContext, consumer: str, scan: _Scan, *, last_seq: int
    ) -> None:
        subscription = await js.pull_subscribe_bind(
            consumer=consumer, stream=STATUS_STREAM
        )
        read = 0
        try:
            while read < self._scan_limit:
                batch = min(_FETCH_BATCH, self._scan_limit - read)
                try:
                    messages = await subscription.fetch(batch, timeout=_FETCH_TIMEOUT_S)
                except nats.errors.TimeoutError:
                    return  # the rest expired or was deleted meanwhile
                for message in messages:
                    read += 1
                    metadata = message.metadata
                    if metadata.sequence.stream > last_seq:
                        return  # stored after the scan began
                    _keep_newest(scan.records, message)
                    if metadata.num_pending == 0:
                        return
        finally:
            await subscription.unsubscribe()

    async def _scan_queued(self, js: JetStreamContext, ref: names.FunctionRef) -> _Scan:
        """Read the calls of `ref` still in the calls stream, keyed by call id."""
        state = (await js.stream_info(shared.CALLS_STREAM)).state
        scan = _Scan(records={}, cut=False)
        if state.messages == 0:
            return scan
        start_seq = max(state.first_seq, state.last_seq - self._scan_limit + 1)
        scan.cut = start_seq > state.first_seq

        subject = function_filter_subject(ref.namespace, ref.name)
        # NOTE: a direct get returns the body too, up to the server's
        # max_payload per call; a headers-only batch read would avoid that.
        seq = start_seq
        for _ in range(self._scan_limit):
            try:
                message = await js.get_msg(
                    shared.CALLS_STREAM,
                    seq=seq,
                    subject=subject,
                    direct=True,
                    next=True,
                )
            except nats.js.errors.NotFoundError:
                return scan
            if message.seq is None or message.seq > state.last_seq:
                return scan
            seq = message.seq + 1

            try:
                call = QueuedCall.from_nats(message.headers, b"")
            except shared_errors.InvalidQueuedCall:
                # Not written by a gateway; the worker dead-letters it.
                continue
            scan.records[call.call_id] = _queued_status(call)
        # Every read of the limit was used before the end of the window.
        scan.cut = scan.cut or seq <= state.last_seq
        return scan


def _keep_newest(records: dict[str, CallStatus], message: Msg) -> None:
    """Store the record of `message` under its key, or drop a deleted key."""
    key = message.subject.removeprefix(_STATUS_SUBJECT_PREFIX)
    operation = (message.headers or {}).get("KV-Operation")
    if operation in ("DEL", "PURGE"):
        records.pop(key, None)
        return
    try:
        records[key] = CallStatus.from_json(message.data or b"")
    except shared_errors.InvalidQueuedCall as exc:
        logger.debug(
            "skipped unreadable status record",
            extra={"ctx": {"key": key, "error": str(exc)}},
        )


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


@contextlib.asynccontextmanager
async def status_scan(
    js: JetStreamContext, start_seq: int
) -> AsyncIterator[jsapi.ConsumerInfo]:
    """Yield an unacknowledged consumer of the status stream from `start_seq`.

    The consumer is deleted on exit, and expires by itself after
    _SCAN_INACTIVE_S if the gateway stops first.
    """
    config = jsapi.ConsumerConfig(
        deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq,
        ack_policy=jsapi.AckPolicy.NONE,
        inactive_threshold=_SCAN_INACTIVE_S,
        mem_storage=True,
        num_replicas=1,
    )
    consumer = await js.add_consumer(STATUS_STREAM, config)
    try:
        yield consumer
    finally:
        try:
            await js.delete_consumer(STATUS_STREAM, consumer.name)
        except nats.errors.Error as exc:
            logger.debug(
                "cannot delete scan consumer; it expires by itself",
                extra={"ctx": {"consumer": consumer.name, "error": repr(exc)}},
            )


def parse_query(values: QueryParams) -> tuple[names.FunctionRef, int]:
    """Return the function and limit of a listing query; raise InvalidRequest."""
    unknown = sorted(set(values.keys()) - _KNOWN_PARAMETERS)
    if unknown:
        raise errors.InvalidRequest(
            f"Unknown parameter {', '.join(map(repr, unknown))}; known ones are "
            f"{', '.join(sorted(_KNOWN_PARAMETERS))}."
        )
    for name in sorted(_KNOWN_PARAMETERS):
        if len(values.getlist(name)) > 1:
            raise errors.InvalidRequest(
                f"Parameter {name} is given more than once; give it once."
            )

    function = values.get("function")
    if not function:
        raise errors.InvalidRequest(
            "Missing parameter function: name the function, as NAME or NAME.NAMESPACE."
        )
    namespace = values.get("namespace") or None
    try:
        ref = names.parse_function_ref(
            function, default_namespace=namespace or shared.DEFAULT_NAMESPACE
        )
    except shared_errors.InvalidFunctionName as exc:
        raise errors.InvalidRequest(f"Invalid function: {exc}") from exc
    if namespace is not None and ref.namespace != namespace:
        raise errors.InvalidRequest(
            f"The function {function!r} names namespace {ref.namespace!r} but "
            f"namespace is {namespace!r}; give one."
        )

    limit_text = values.get("limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        ascii_digits = limit_text.isascii() and limit_text.isdigit()
        limit = int(limit_text) if ascii_digits and len(limit_text) <= 9 else 0
        if not 1 <= limit <= MAX_LIMIT:
            raise errors.InvalidRequest(
                f"Invalid limit {limit_text!r}: expected a whole number from 1 "
                f"to {MAX_LIMIT}."
            )
    return ref, limit


def create_router(lister: AsyncCallLister) -> APIRouter:
    """Return the listing route, bound to `lister`."""
    router = APIRouter(prefix=LIST_PATH, tags=["async calls"])

    @router.get("", summary="List the newest async calls of one function")
    async def list_async_calls(
        request: Request,
        function: str | None = Query(None, description="NAME or NAME.NAMESPACE."),
        namespace: str | None = Query(None, description="Function namespace."),
        limit: str | None = Query(None, description=f"1 to {MAX_LIMIT}; default 50."),
    ) -> dict[str, Any]:
        # The parameters above document the route; parse_query reads the query
        # itself, so that it can reject names it does not know.
        problem = guard.cross_origin_problem(request.scope["headers"])
        if problem is not None:
            raise HTTPException(status_code=403, detail=problem)
        try:
            ref, count = parse_query(request.query_params)
            listing = await lister.list_calls(ref, limit=count)
        except errors.InvalidRequest as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except errors.QueueUnavailable as exc:
            logger.warning("async call listing failed: %s", exc)
            raise HTTPException(
                status_code=503,
                detail=str(exc),
                headers={shared.OPENFAAS_INTERNAL: "gateway"},
            ) from exc
        return {
            "function": ref.name,
            "namespace": ref.namespace,
            "calls": [status.to_api() for status in listing.calls],
            "count": len(listing.calls),
            "order": "newest-first",
            "truncated": listing.truncated,
            "scan_limit": lister.scan_limit,
            "scan_limit_reached": listing.scan_limit_reached,
        }

    return router
