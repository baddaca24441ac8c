"""The async accept path: `/async-function/NAME[.NS][/path]`.

The handler turns a request into a `QueuedCall` and stores it in JetStream.
It responds 202 with an empty body only after JetStream has acknowledged the
message, so an accepted call survives a restart of the gateway or of NATS.
The queue-worker runs the call later through the sync proxy.

Before storing, it checks what a caller can fix at once:

* the method: GET, POST, PUT or PATCH (DELETE cancels, see
  `gateway.async_calls`);
* the function name, the X-Callback-Url and a delay (`gateway.delays`);
* the body size against `max_body_bytes` (413 above it);
* through a small cache, that the function exists on the provider, and which
  queue its `com.openfaas.queue` annotation names.

A body too large for one NATS message goes to the object store
(`gateway.call_queue`). The caller's X-Call-Id is the de-duplication key, so
a retried accept inside the stream's duplicate window stores the call once.
A call without one gets a new random id and no de-duplication key, which
spares nats-server the duplicate window's bookkeeping. A 503 after a PubAck
timeout carries the id, and a retry with it is not stored again while the
first call waits in the stream (`gateway.call_queue`).

This is the hot path of the gateway: it uses no framework and logs each call
at DEBUG only.
"""

import asyncio
import logging
import time
import urllib.parse
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerInfo
from starlette.types import Receive, Scope, Send

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import jetstream, names
from faashub.headers import is_utf8, non_utf8_value_message
from faashub.logs import LimitedWarning
from faashub.queued_call import QueuedCall
from gateway import asgi, async_calls, constants, delays, errors, limits
from gateway.auth import Authenticator
from gateway.call_ids import check_call_id, new_call_id
from gateway.call_queue import CallQueue
from gateway.function_lookup import FunctionLookup

logger = logging.getLogger(__name__)

_ALLOWED_METHODS = ", ".join(constants.ASYNC_METHODS)
# Seconds between two checks that a queue has a worker (see
# AsyncAccept._check_queue_served).
UNSERVED_CHECK_INTERVAL_S = 60.0
# Seconds between the two reads of a queue's consumer that must both show no
# consumer activity before the gateway warns. A running queue-worker that is
# idle keeps a pull request waiting, except for the moment between two pull
# requests, and a busy one has unacknowledged calls, so either read shows it.
UNCONSUMED_RECHECK_S = 2.0
_REQUEST_ERROR_STATUS: dict[type[errors.GatewayError], int] = {
    errors.InvalidRequest: 400,
    errors.FunctionNotFound: 404,
    errors.CallConflict: 409,
    errors.PayloadTooLarge: 413,
}
_ALLOW_HEADER = (b"allow", _ALLOWED_METHODS.encode())
_SERVED_BY_HEADER = (shared.SERVED_BY.lower().encode(), constants.SERVED_BY.encode())
_EMPTY_BODY = (b"content-length", b"0")
# Retry-After of a 503 while the queue is unavailable, in seconds. NOTE: a
# guess at how long NATS takes to come back, while the gateway itself
# reconnects every second.
_QUEUE_RETRY_AFTER = (b"retry-after", b"5")
_ACCEPTED_BODY = {"type": "http.response.body", "body": b""}
# Request headers that are not stored with the call: hop-by-hop ones and
# Expect (shared.NOT_REPLAYED), Host and Content-Length (the worker's HTTP
# client sets both), and X-Call-Id and
# X-Start-Time. The worker sends the function those two from the call's
# Faashub-Call-Id and Faashub-Accepted-At-Ns, so storing them would only
# repeat those values in every message.
_NOT_STORED = frozenset(
    name.encode()
    for name in shared.NOT_REPLAYED
    | {"host", "content-length", "x-call-id", "x-start-time"}
)
_RESERVED_PREFIXES = tuple(
    prefix.encode() for prefix in shared.RESERVED_HEADER_PREFIXES
)
# Bound of AsyncAccept's cache of parsed function names. Callers repeat a few
# names, and the bound keeps callers that invent names from growing it.
_PARSED_NAMES_MAX = 4096


class _ClientDisconnected(Exception):
    """The caller went away before its request body was read."""


class _BodyReadTimedOut(Exception):
    """The caller did not send its request body within body_read_timeout_s."""


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# which made building this one per request more than twice as slow.
@dataclass(slots=True)
class _CallHeaders:
    """The few request headers the handler reads itself, and the stored ones."""

    call_id: str
    caller_call_id: bool
    """Whether the caller sent the call id, rather than the gateway making it."""
    callback_url: str
    content_length: int
    delay_seconds: str | None
    not_before: str | None
    stored: dict[str, str]
    """The headers stored with the call, without X-Call-Id and X-Start-Time."""
    invalid_header: str = ""
    """The first stored header whose value is not UTF-8, or "" if none."""


class AsyncAccept:
    """The ASGI handler of `/async-function/...`.

    An Authorization header that `authenticator` accepts carries the
    gateway's own credentials, so it is not stored with the call.
    """

    def __init__(
        self,
        queue: CallQueue,
        lookup: FunctionLookup,
        *,
        max_body_bytes: int,
        max_delay_s: float,
        body_read_timeout_s: float = 30.0,
        authenticator: Authenticator | None = None,
        accepted: dict[names.FunctionRef, int] | None = None,
    ) -> None:
        self._queue = queue
        # Calls stored per function since the gateway started, duplicates not
        # counted; the console's chart reads it. One dict update per call.
        self.accepted: dict[names.FunctionRef, int] = (
            {} if accepted is None else accepted
        )
        self._authenticator = authenticator
        self._body_read_timeout_s = body_read_timeout_s
        self._body_deadlines = limits.SharedTimeout(body_read_timeout_s)
        self._lookup = lookup
        self._max_body_bytes = max_body_bytes
        self._max_delay_s = max_delay_s
        self._queue_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        self._provider_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        # Queue name -> monotonic time of its last check for a worker.
        self._served_checked_at: dict[str, float] = {}
        self._checks: set[asyncio.Task[None]] = set()
        # Path segment -> its function, for names that passed validation.
        self._parsed_names: dict[str, names.FunctionRef] = {}

    def _check_queue_served(self, queue: str, ref: names.FunctionRef) -> None:
        """Warn in the background when no queue-worker consumes `queue`.

        A call to such a queue is stored and gets 202, then waits until a
        worker for the queue starts, which a user who deployed with a new
        `com.openfaas.queue` annotation, or who dropped the queue from
        `faashub up --queues`, may not know to do. Each queue is
        checked at most once per UNSERVED_CHECK_INTERVAL_S, so the accept path
        pays one dictionary lookup per call.
        """
        now = time.monotonic()
        checked_at = self._served_checked_at.get(queue)
        if checked_at is not None and now - checked_at < UNSERVED_CHECK_INTERVAL_S:
            return
        self._served_checked_at[queue] = now
        task = asyncio.create_task(self._warn_if_unserved(queue, ref))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _warn_if_unserved(self, queue: str, ref: names.FunctionRef) -> None:
        """Warn when no queue-worker has consumed `queue` or none consumes it now.

        A queue whose durable consumer exists once had a worker, which may have
        stopped or been dropped from `--queues`. That consumer counts as
        unconsumed when two reads UNCONSUMED_RECHECK_S apart both show calls
        waiting, no pull request waiting, no call delivered and not yet
        acknowledged, and no delivery in between.
        """
        context = {"function": str(ref), "queue": queue}
        try:
            first = await self._read_consumer(queue)
            if not _is_unconsumed(first):
                return
            await asyncio.sleep(UNCONSUMED_RECHECK_S)
            second = await self._read_consumer(queue)
        except nats.js.errors.NotFoundError:
            logger.warning(
                "no queue-worker has consumed queue %r yet: its calls wait until "
                "one starts (%s)",
                queue,
                _start_worker_hint(queue),
                extra={"ctx": context},
            )
            return
        except Exception as exc:
            # Only a hint: a failed check must not disturb the accept path.
            logger.debug("queue check failed: %s", exc, extra={"ctx": context})
            return
        if _is_unconsumed(second) and _delivered(second) == _delivered(first):
            logger.warning(
                "no queue-worker consumes queue %r now: %d calls wait until one "
                "starts (%s)",
                queue,
                second.num_pending or 0,
                _start_worker_hint(queue),
                extra={"ctx": context},
            )

    async def _read_consumer(self, queue: str) -> ConsumerInfo:
        info: ConsumerInfo = await self._queue.layout().js.consumer_info(
            shared.CALLS_STREAM, jetstream.worker_durable_name(queue)
        )
        return info

    def _parse_name(self, name: str) -> names.FunctionRef:
        """Parse and validate `NAME[.NS]`, then cache the result."""
        ref = names.parse_function_ref(name)
        if len(self._parsed_names) >= _PARSED_NAMES_MAX:
            self._parsed_names.clear()
        self._parsed_names[name] = ref
        return ref

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        if method not in constants.ASYNC_METHODS:
            await _reject_method(method, send)
            return
        name, path_suffix = asgi.split_invocation_path(
            scope, constants.ASYNC_FUNCTION_PREFIX
        )
        ref = self._parsed_names.get(name)
        if ref is None:
            try:
                ref = self._parse_name(name)
            except shared_errors.InvalidFunctionName as exc:
                await asgi.send_text(send, 400, f"{exc}\n")
                return
        request = _read_call_headers(scope, self._authenticator)
        if request.invalid_header:
            message = non_utf8_value_message(request.invalid_header, "gateway")
            await asgi.send_text(send, 400, f"{message}\n")
            return
        if request.callback_url:
            problem = _callback_url_problem(request.callback_url)
            if problem is not None:
                await asgi.send_text(
                    send,
                    400,
                    "Invalid X-Callback-Url "
                    f"{asgi.shown_header_value(request.callback_url)!r}: {problem}. "
                    "Use an absolute http or https URL, such as "
                    "http://host:8000/path.\n",
                )
                return

        try:
            accepted_at_ns = await self._store(
                scope, receive, ref, request, path_suffix=path_suffix
            )
        except (
            errors.InvalidRequest,
            errors.FunctionNotFound,
            errors.CallConflict,
            errors.PayloadTooLarge,
        ) as exc:
            status = _REQUEST_ERROR_STATUS[type(exc)]
            logger.debug(
                "rejected call", extra=_context(ref, request.call_id, status=status)
            )
            await asgi.send_text(send, status, f"{exc}\n")
            return
        except (errors.QueueUnavailable, errors.ProviderUnavailable) as exc:
            # The call id lets the caller retry a call that may be stored
            # without storing it twice.
            headers = [(b"x-call-id", request.call_id.encode("latin-1"))]
            if isinstance(exc, errors.QueueUnavailable):
                status, throttle = 503, self._queue_warnings
                headers.append(_QUEUE_RETRY_AFTER)
            else:
                status, throttle = 502, self._provider_warnings
            context: dict[str, object] = {
                "function": str(ref),
                "call_id": request.call_id,
                "status": status,
            }
            if isinstance(exc, errors.ProviderTokenRejected):
                # Logged at WARNING where it was raised, once a minute at most.
                logger.debug("cannot accept call: %s", exc, extra={"ctx": context})
            else:
                throttle.warning("cannot accept call: %s", exc, ctx=context)
            await asgi.send_gateway_error(send, status, f"{exc}\n", headers=headers)
            return
        except _BodyReadTimedOut:
            logger.info(
                "request body timed out",
                extra=_context(
                    ref,
                    request.call_id,
                    body_read_timeout_s=self._body_read_timeout_s,
                ),
            )
            await limits.send_body_read_timeout(
                send, timeout_s=self._body_read_timeout_s
            )
            return
        except _ClientDisconnected:
            logger.debug(
                "caller went away before the body arrived",
                extra=_context(ref, request.call_id),
            )
            return
        await _send_accepted(
            send, call_id=request.call_id, accepted_at_ns=accepted_at_ns
        )

    async def _store(
        self,
        scope: Scope,
        receive: Receive,
        ref: names.FunctionRef,
        request: _CallHeaders,
        *,
        path_suffix: str,
    ) -> int:
        """Check the call, store it in JetStream and return its accept time in ns.

        Raises InvalidRequest, FunctionNotFound, PayloadTooLarge,
        QueueUnavailable or ProviderUnavailable, _ClientDisconnected when
        the caller leaves and _BodyReadTimedOut when its body is too slow.
        """
        # The cheap checks first, before the lookup and before reading a body
        # that could not be stored anyway.
        if request.caller_call_id:
            check_call_id(request.call_id)
        self._queue.check_available()
        limit = self._max_body_bytes
        if request.content_length > limit:
            raise _too_large(request.content_length, limit)
        accepted_at_ns = time.time_ns()
        not_before_ns = 0
        if request.delay_seconds is not None or request.not_before is not None:
            not_before_ns = delays.not_before_ns(
                request.delay_seconds,
                request.not_before,
                now_ns=accepted_at_ns,
                max_delay_s=self._max_delay_s,
            )
        # The cache returns most functions without creating a coroutine.
        function = self._lookup.cached(ref) or await self._lookup.find(ref)
        if function is None:
            raise errors.FunctionNotFound(
                f"Function {ref.name!r} not found in namespace {ref.namespace!r}. "
                "Deploy it first, or check the name and namespace."
            )
        try:
            body = await self._body_deadlines.run(
                _read_body(receive, limit_bytes=limit)
            )
        except TimeoutError:
            raise _BodyReadTimedOut from None

        call = QueuedCall(
            function=ref.name,
            namespace=ref.namespace,
            call_id=request.call_id,
            method=scope["method"],
            path=path_suffix,
            query=scope.get("query_string", b"").decode("latin-1"),
            callback_url=request.callback_url,
            accepted_at_ns=accepted_at_ns,
            headers=request.stored,
            body=body,
            queue=function.queue,
            not_before_ns=not_before_ns,
        )
        if request.caller_call_id and self._queue.ids_may_be_forgotten:
            await self._check_id_unused_after_restart(call)
        ack = await self._queue.publish(call, deduplicate=request.caller_call_id)
        self._check_queue_served(function.queue, ref)

        # A duplicate PubAck means that JetStream already stored this call id,
        # so the call runs once. The caller still gets a 202 with that id,
        # unless the id was used for another function: then this call would
        # be lost silently, so the response asks for a new id.
        if ack.duplicate:
            await self._check_duplicate_is_same_function(call)
        else:
            self.accepted[ref] = self.accepted.get(ref, 0) + 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "queued call",
                extra=_context(ref, request.call_id, duplicate=bool(ack.duplicate)),
            )
        return accepted_at_ns

    async def _check_duplicate_is_same_function(self, call: QueuedCall) -> None:
        try:
            owner = await async_calls.stored_function(self._queue, call.call_id)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            # The first call is stored; not knowing its function is no reason
            # to refuse what is most likely a plain retry.
            logger.debug(
                "cannot check a duplicate call id",
                extra=_context(call.ref, call.call_id, error=str(exc)),
            )
            return
        if owner is not None and owner != call.ref:
            raise self._id_used(call, owner)

    async def _check_id_unused_after_restart(self, call: QueuedCall) -> None:
        """Raise CallConflict if a recent call of another function has this id.

        JetStream reports such a repeat by itself while it keeps the id. After
        a NATS restart it keeps only the ids of calls still queued, so the
        status record of a finished call is checked here instead.
        """
        try:
            record = await async_calls.read_status(self._queue, call.call_id)
        except (nats.errors.Error, errors.QueueUnavailable) as exc:
            # If NATS is gone, the publish that follows fails too. Otherwise
            # the call is stored unchecked, as JetStream alone would store it.
            logger.debug(
                "reading the status record of a repeated call id failed",
                extra=_context(call.ref, call.call_id, error=str(exc)),
            )
            return
        if record is None:
            return
        owner = names.FunctionRef(record.function, record.namespace)
        window_ns = round(self._queue.duplicate_window_s * 1e9)
        recent = call.accepted_at_ns - record.accepted_at_ns <= window_ns
        if owner != call.ref and recent:
            raise self._id_used(call, owner)

    def _id_used(
        self, call: QueuedCall, owner: names.FunctionRef
    ) -> errors.CallConflict:
        return errors.CallConflict(
            f"X-Call-Id {call.call_id!r} is already used by a call to {owner} "
            f"within the last {self._queue.duplicate_window_s:g} s, so this call "
            f"to {call.ref} was not stored. Send it with a new X-Call-Id.",
            state="duplicate",
        )


def _is_unconsumed(info: ConsumerInfo) -> bool:
    """Tell whether calls wait on a consumer that nothing pulls from or runs.

    NOTE: calls that a stopped worker held stay in `num_ack_pending` after
    their ack wait ends (checked with nats-server 2.15), until a worker takes
    them again. Such a queue never counts as unconsumed, because the consumer
    state looks the same as that of a worker busy with long calls.
    """
    return bool(info.num_pending) and not info.num_waiting and not info.num_ack_pending


def _delivered(info: ConsumerInfo) -> int:
    return 0 if info.delivered is None else info.delivered.consumer_seq


def _start_worker_hint(queue: str) -> str:
    return f"faashub up --queues {queue}, or faashub queue-worker --queue {queue}"


def _read_call_headers(
    scope: Scope, authenticator: Authenticator | None
) -> _CallHeaders:
    """Read the call's own headers and the ones to store, in one pass.

    Repeated headers are joined with ", ", or "; " for Cookie, as RFC 9110
    allows. Hop-by-hop headers and the reserved `Faashub-*` and `Nats-*`
    names are not stored. X-Forwarded-Host and X-Forwarded-For are added
    unless the caller sent them. X-Callback-Url stays, as in OpenFaaS. An
    Authorization header that `authenticator` accepts is not stored, but any
    other Authorization header is. The first stored header whose value is not
    UTF-8 is named in `invalid_header`, because the worker could not send it
    to the function unchanged.
    """
    # NB: ASGI servers pass header names in lowercase.
    call_id = callback_url = host = invalid_header = ""
    delay_seconds = not_before = None
    content_length = 0
    stored: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        if raw_name in _NOT_STORED:
            if raw_name == b"x-call-id":
                call_id = call_id or raw_value.decode("latin-1")
            elif raw_name == b"host":
                host = raw_value.decode("latin-1")
            elif raw_name == b"content-length" and raw_value.isdigit():
                content_length = int(raw_value)
            continue
        if raw_name.startswith(_RESERVED_PREFIXES):
            continue
        if raw_name == b"authorization" and authenticator is not None:
            if authenticator.is_valid(raw_value):
                continue
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        if not raw_value.isascii() and not is_utf8(raw_value):
            invalid_header = invalid_header or name
        if name in stored:
            separator = "; " if name == "cookie" else ", "
            stored[name] += separator + value
            continue
        stored[name] = value
        if name == "x-callback-url":
            callback_url = value
        elif name == "x-delay-seconds":
            delay_seconds = value
        elif name == "x-not-before":
            not_before = value
    if host and "x-forwarded-host" not in stored:
        stored[shared.FORWARDED_HOST] = host
    client = scope.get("client")
    if client and "x-forwarded-for" not in stored:
        stored[shared.FORWARDED_FOR] = client[0]
    return _CallHeaders(
        call_id=call_id or new_call_id(),
        caller_call_id=bool(call_id),
        callback_url=callback_url,
        content_length=content_length,
        delay_seconds=delay_seconds,
        not_before=not_before,
        stored=stored,
        invalid_header=invalid_header,
    )


async def _send_accepted(send: Send, *, call_id: str, accepted_at_ns: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [
                _EMPTY_BODY,
                (b"x-call-id", call_id.encode("latin-1")),
                (b"x-start-time", str(accepted_at_ns).encode()),
                _SERVED_BY_HEADER,
            ],
        }
    )
    await send(_ACCEPTED_BODY)


def _context(
    ref: names.FunctionRef, call_id: str, **fields: object
) -> dict[str, dict[str, object]]:
    """Return the `extra` of a log record about one call."""
    return {"ctx": {"function": str(ref), "call_id": call_id, **fields}}


async def _reject_method(method: str, send: Send) -> None:
    text = (
        f"Method {method} is not allowed on /async-function/. Queue a call with "
        f"one of {_ALLOWED_METHODS}, or cancel one with DELETE "
        "/async-function/CALL_ID.\n"
    )
    await asgi.send_text(send, 405, text, headers=[_ALLOW_HEADER])


def _callback_url_problem(value: str) -> str | None:
    """Return what is wrong with a callback URL, or None if it is usable."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http or https"
    if not parts.hostname:
        return "the URL has no host"
    return None


def _too_large(size: int, limit: int) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(
        f"The request body has {size} bytes or more, above the gateway's limit of "
        f"{limit} bytes for async calls (max_body_bytes). Send a smaller body, or "
        "raise the gateway's --max-body-bytes.",
        limit_bytes=limit,
    )


async def _read_body(receive: Receive, *, limit_bytes: int) -> bytes:
    """Read the whole request body, but stop as soon as it exceeds the limit."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientDisconnected
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise _too_large(size, limit_bytes)
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
