"""The life of one delivered call in the worker, from receipt to acknowledgement.

`CallHandler.handle` takes a message that the pull loop fetched to exactly
one end. An ack means the call finished, was cancelled, or was delivered
twice. A nak with a delay means the call runs later. A term drops a message
that is not a call at all. In order:

1. Read the call. An invalid message is dead-lettered (`invalid-message`)
   when its subject still names a function, and terminated otherwise.
2. A call delayed to a later time goes back with that delay.
3. Look the function up through the gateway. An unknown function is
   dead-lettered (`function-not-found`); a failed lookup delivers the call
   again later without counting an attempt.
4. A call older than max_event_age_s (counted from its delay, if any) is
   dead-lettered (`expired`).
5. A function already running its `com.faashub.max_inflight` calls sends
   the call back with a short delay; no attempt is counted and no slot held.
6. Wait for one of the worker's slots, then claim the call in its status
   record (`queue_worker.status`): a cancelled call is acknowledged without
   running, and so is a duplicate delivery of a finished one. A first
   delivery only reads the record, so a call that succeeds at once writes
   its status once, at the end.
7. Invoke the function. A 2xx response succeeds. A retried outcome (no
   response, X-OpenFaaS-Internal, or a status in the retry codes) records
   RETRYING and goes back to JetStream with the backoff delay, so no slot
   is held while it waits. 429 is back-pressure and does not use up an
   attempt, and neither does a gateway that refuses the connection or
   returns 503 marked `X-OpenFaaS-Internal: gateway`, because then the
   function did not run. Out of
   attempts, the call is dead-lettered
   (`attempts-exhausted`), and so is a call whose next attempt would pass
   its max event age (`expired`). Any other status is final: FAILED, and
   dead-lettered as `rejected` so that it can be inspected and redriven.
8. On a final outcome, store the dead letter, if any. Then post the
   callback (`queue_worker.callback`), whose failure becomes a `callback`
   dead letter. Then store the final status and acknowledge. Last, delete a
   large body from the object store unless a dead letter still refers to it.

Failures of NATS itself while storing a dead letter or a status are retried
for PERSIST_TIMEOUT_S. The pull loop, leases and reconnects are in
`queue_worker.worker`.
"""

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import aiohttp
import nats.errors
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from faashub import constants as shared
from faashub import dead_letter, tracing
from faashub import errors as shared_errors
from faashub.call_status import CallState, CallStatus
from faashub.credentials import InvocationCredentials
from faashub.dead_letter import Attempt, DeadLetter
from faashub.logs import LimitedLines
from faashub.names import FunctionRef
from faashub.queued_call import QueuedCall
from faashub.replica_urls import ReplicaUrls
from faashub.settings import WorkerSettings
from queue_worker import backoff, constants, errors, invoke, status
from queue_worker.callback import (
    CallbackSender,
    Delivery,
    call_source,
)
from queue_worker.dead_letters import DeadLetterWriter
from queue_worker.finished_log import FinishedLog
from queue_worker.functions import FunctionLookup
from queue_worker.invoke import FunctionResult
from queue_worker.messages import DeliveryInfo, HeldMessage, salvage_call
from queue_worker.metrics import WorkerMetrics
from queue_worker.policy import FunctionPolicy, RetryPolicy
from queue_worker.slots import Slots
from queue_worker.status import Decision, RunningLease, StatusStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

_NS_PER_S: Final = 1_000_000_000
_SUCCEEDED: Final = "succeeded"
_RETRIED: Final = "retried"
_THROTTLED: Final = "throttled"
_REJECTED: Final = "rejected"
# The X-OpenFaaS-Internal value of the gateway's own error responses.
_GATEWAY: Final = "gateway"


@dataclass(slots=True)
class _Job:
    """One delivery of a readable call."""

    held: HeldMessage
    call: QueuedCall
    delivery: DeliveryInfo
    ref: FunctionRef = dataclasses.field(init=False)
    """The call's function, built and validated once per delivery."""
    function: str = dataclasses.field(init=False)
    """The function as `name.namespace`, for logs and metrics."""
    _context: dict[str, object] | None = dataclasses.field(init=False, default=None)

    def __post_init__(self) -> None:
        self.ref = self.call.ref
        self.function = str(self.ref)

    @property
    def context(self) -> dict[str, object]:
        """The fields of every log line about this call, built on first use."""
        if self._context is None:
            self._context = {
                "function": self.function,
                "call_id": self.call.call_id,
                **call_source(self.call),
            }
        return self._context

    @property
    def message(self) -> Msg:
        """The latest delivery of the message, which acks and naks go through."""
        return self.held.message


@dataclass(slots=True)
class _Outcome:
    """A finished call, as stored and reported."""

    state: CallState
    result: FunctionResult
    duration_s: float
    reason: str = ""
    """The dead-letter reason of the call, or "" when it was not dead-lettered."""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HandlerServices:
    """The connections and stores a handler works with."""

    session: aiohttp.ClientSession
    functions: FunctionLookup
    status: StatusStore
    dead_letters: DeadLetterWriter
    bodies: ObjectStore
    callbacks: CallbackSender
    slots: Slots
    metrics: WorkerMetrics
    replicas: ReplicaUrls | None = None
    """The replica URL cache; None sends every call through the gateway."""


class CallHandler:
    """Runs delivered calls to one of their end states (see the module docstring)."""

    def __init__(
        self,
        settings: WorkerSettings,
        services: HandlerServices,
        *,
        default_policy: RetryPolicy,
        function_base_url: str,
        gateway_authorization: str = "",
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._services = services
        self._credentials = InvocationCredentials(gateway_authorization)
        self._default_policy = default_policy
        self._function_base_url = function_base_url
        self._invoke_timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout_s)
        self._max_event_age_ns = int(settings.max_event_age_s * _NS_PER_S)
        self._clock_ns = clock_ns
        self._postpone_wait = backoff.wait_strategy(
            min_wait_s=constants.POSTPONE_MIN_S,
            max_wait_s=constants.POSTPONE_MAX_S,
            jitter="equal",
        )
        self._persist_wait = backoff.wait_strategy(
            min_wait_s=constants.RETRY_MIN_S,
            max_wait_s=constants.RETRY_MAX_S,
            jitter="none",
        )
        self._cleanups: set[asyncio.Task[None]] = set()
        self._finished_log = FinishedLog()
        self._unstored_log = LimitedLines(
            logger,
            "final status not stored",
            per_second=constants.UNSTORED_STATUS_LINES_PER_S,
            summary="final statuses not stored, not logged",
            count_field="calls",
            level=logging.WARNING,
        )

    @property
    def status_store(self) -> StatusStore:
        """The store of the call-status records."""
        return self._services.status

    def stop_callbacks(self) -> None:
        """End failing callback deliveries without retrying (`CallbackSender.stop`)."""
        self._services.callbacks.stop()

    async def handle(self, held: HeldMessage) -> None:
        """Take one delivered message to an ack, a nak or a term."""
        message = held.message
        delivery = held.delivery
        try:
            call = QueuedCall.from_nats(message.headers, message.data)
        except shared_errors.InvalidQueuedCall as exc:
            await self._handle_invalid(held, delivery, exc)
            return
        job = _Job(held, call, delivery)

        now_ns = self._clock_ns()
        if call.not_before_ns > now_ns:
            await self._nak(job, delay_s=(call.not_before_ns - now_ns) / _NS_PER_S)
            return

        try:
            function = await self._services.functions.get(job.ref)
        except errors.TemporaryError as exc:
            await self._postpone(job, exc)
            return
        if function is None:
            await self._dead_letter_unrun(
                job,
                reason=dead_letter.REASON_FUNCTION_NOT_FOUND,
                detail=f"Function {job.ref} was not found when the call was due.",
                status_code=404,
                policy=self._default_policy,
            )
            return
        policy = function.policy
        if now_ns >= self._deadline_ns(job):
            await self._dead_letter_unrun(
                job,
                reason=dead_letter.REASON_EXPIRED,
                detail=f"The call passed its max event age of {self._max_age_text()}.",
                status_code=504,
                policy=policy.retry,
            )
            return

        # The per-function limit first, so that a busy function's calls go
        # back at once instead of queueing for the worker's slots.
        slots = self._services.slots
        if not slots.reserve(job.ref, policy.max_inflight):
            await self._nak(job, delay_s=_busy_delay_s())
            return
        try:
            if not await slots.acquire():
                # The worker is stopping: leave the call to another worker.
                # NOTE: nats-server 2.15.1 did not keep this nak across its own
                # restart in a test, so when NATS restarts too (faashub up),
                # the call comes back only after ack_wait.
                await self._nak(job, delay_s=None)
                return
            try:
                await self._run(job, policy)
            finally:
                slots.release()
        finally:
            slots.unreserve(job.ref)

    async def close(self) -> None:
        """Report direct calls, wait briefly for cleanups, then cancel what remains."""
        self._finished_log.flush()
        self._unstored_log.flush()
        if self._services.replicas is not None:
            await self._services.replicas.close()
        if not self._cleanups:
            return
        _, pending = await asyncio.wait(set(self._cleanups), timeout=2.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _run(self, job: _Job, policy: FunctionPolicy) -> None:
        call = job.call
        try:
            body = await self._read_body(call)
        except errors.TemporaryError as exc:
            await self._postpone(job, exc)
            return
        except errors.BodyNotFound as exc:
            await self._dead_letter_unrun(
                job,
                reason=dead_letter.REASON_INVALID_MESSAGE,
                detail=str(exc),
                status_code=400,
                policy=policy.retry,
            )
            return

        try:
            claim = await self._services.status.claim(
                call,
                stream_seq=job.delivery.stream_seq,
                max_attempts=policy.retry.attempts,
                first_delivery=job.delivery.num_delivered == 1,
            )
        except errors.TemporaryError as exc:
            await self._postpone(job, exc)
            return
        if claim.decision is Decision.CANCELLED:
            await self._finish_cancelled(job)
            return
        if claim.decision is Decision.DUPLICATE:
            # INFO, so that an operator finds why an accepted call did not run.
            logger.info(
                "a call with this id already finished, so this copy is acknowledged "
                "without running",
                extra={"ctx": job.context},
            )
            await self._ack(job)
            return
        if claim.decision is Decision.BUSY:
            await self._wait_for_lease(job, claim.record)
            return
        lease = RunningLease(self._services.status, claim.record, claim.revision)
        try:
            await self._attempt(job, policy, lease, body)
        finally:
            await lease.stop()

    async def _attempt(
        self, job: _Job, policy: FunctionPolicy, lease: RunningLease, body: bytes
    ) -> None:
        """Invoke the function once, and act on the result."""
        call = job.call
        record = lease.record
        metrics = self._services.metrics
        if record.attempts == 1:
            start_delay_s = (
                self._clock_ns() - self._start_reference_ns(job)
            ) / _NS_PER_S
            metrics.start_delay.observe(max(start_delay_s, 0.0))
        metrics.attempt_started(job.function)
        started_s = time.monotonic()
        try:
            result = await self._invoke(call, body)
        finally:
            metrics.attempt_ended()
        duration_s = time.monotonic() - started_s
        await self._conclude(job, policy.retry, record, lease, result, duration_s)

    async def _conclude(
        self,
        job: _Job,
        policy: RetryPolicy,
        record: CallStatus,
        lease: RunningLease,
        result: FunctionResult,
        duration_s: float,
    ) -> None:
        """Decide what the attempt's result means for the call, and act on it."""
        now_ns = self._clock_ns()
        kind = classify(result, policy)
        attempt = Attempt(result.status, _attempt_error(result), now_ns)
        record = status.with_attempt(record, attempt, throttled=kind == _THROTTLED)

        if kind == _SUCCEEDED:
            outcome = _Outcome(CallState.SUCCEEDED, result, duration_s)
        elif kind == _REJECTED:
            outcome = _Outcome(
                CallState.FAILED,
                result,
                duration_s,
                reason=dead_letter.REASON_REJECTED,
                detail=f"The function returned status {result.status}, which is "
                "not retried.",
            )
        elif kind == _RETRIED and status.counted_attempts(record) >= policy.attempts:
            outcome = _Outcome(
                CallState.DEAD_LETTERED,
                result,
                duration_s,
                reason=dead_letter.REASON_ATTEMPTS_EXHAUSTED,
                detail=f"All {policy.attempts} attempts failed; the last one "
                f"returned status {result.status}.",
            )
        else:
            delay_s = self._retry_delay_s(
                result, policy, attempt_number=record.attempts
            )
            if now_ns + int(delay_s * _NS_PER_S) < self._deadline_ns(job):
                revision = await lease.stop()
                await self._schedule_retry(job, record, revision, result, delay_s)
                return
            outcome = _Outcome(
                CallState.DEAD_LETTERED,
                result,
                duration_s,
                reason=dead_letter.REASON_EXPIRED,
                detail=f"The next attempt, due in {delay_s:.3g} s, would pass the "
                f"call's max event age of {self._max_age_text()}.",
            )
        await self._finish(job, policy, record, lease, outcome)

    async def _invoke(self, call: QueuedCall, body: bytes) -> FunctionResult:
        """Invoke the function, inside a span when trace export is on."""
        if not tracing.enabled:
            return await self._invoke_untraced(call, body)
        span = tracing.start_span(
            "queue-worker invoke",
            kind="client",
            parent_headers=call.headers.items(),
            attributes={
                **tracing.function_attributes(str(call.ref)),
                "faashub.call_id": call.call_id,
                "faashub.queue": call.queue,
            },
        )
        try:
            headers = dict(tracing.with_trace_headers(call.headers.items(), span))
            result = await self._invoke_untraced(
                dataclasses.replace(call, headers=headers), body
            )
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        span.set_http_status(result.status)
        span.end()
        return result

    async def _invoke_untraced(self, call: QueuedCall, body: bytes) -> FunctionResult:
        """Invoke a replica directly if one is known, else through the gateway."""
        replicas = self._services.replicas
        replica = None if replicas is None else await replicas.pick(call.ref)
        if replica is not None:
            assert replicas is not None
            result = await invoke.invoke_replica(
                self._services.session,
                call,
                replica=replica,
                http_timeout=self._invoke_timeout,
                body=body,
            )
            if result is not None:
                replicas.record_call(call.ref)
                return result
            # The replica is gone, for example scaled down: the gateway's
            # route finds the function's current replicas.
            replicas.forget(call.ref, replica.url)
            logger.debug(
                "replica refused the connection; invoking through the gateway",
                extra={"ctx": {"function": str(call.ref), "call_id": call.call_id}},
            )
        result = await self._invoke_through_gateway(call, body)
        if result.status == 401 and self._credentials.require_after(
            result.status, context={"function": str(call.ref), "call_id": call.call_id}
        ):
            result = await self._invoke_through_gateway(call, body)
        return result

    async def _invoke_through_gateway(
        self, call: QueuedCall, body: bytes
    ) -> FunctionResult:
        return await invoke.invoke_function(
            self._services.session,
            call,
            function_base_url=self._function_base_url,
            http_timeout=self._invoke_timeout,
            body=body,
            authorization=self._credentials.header,
        )

    def _retry_delay_s(
        self, result: FunctionResult, policy: RetryPolicy, *, attempt_number: int
    ) -> float:
        if result.status in backoff.RETRY_AFTER_STATUSES:
            retry_after = backoff.retry_after_s(
                _header(result, "Retry-After"), now_s=self._clock_ns() / _NS_PER_S
            )
            if retry_after is not None:
                return max(retry_after, policy.min_wait_s)
        return backoff.retry_wait_s(policy, attempt_number)

    async def _schedule_retry(
        self,
        job: _Job,
        record: CallStatus,
        revision: int | None,
        result: FunctionResult,
        delay_s: float,
    ) -> None:
        now_ns = self._clock_ns()
        record = status.replaced(
            record,
            state=CallState.RETRYING,
            next_attempt_at_ns=now_ns + int(delay_s * _NS_PER_S),
            updated_at_ns=now_ns,
            extra=status.without_lease(record),
        )
        # Stored before the nak, so that the next delivery reads RETRYING.
        # If it is not stored, the next delivery finds RUNNING instead and
        # counts on from it once the lease has run out.
        try:
            saved = await self._services.status.save(record, revision=revision)
        except errors.TemporaryError as exc:
            logger.warning("retry not recorded: %s", exc, extra={"ctx": job.context})
        else:
            if saved is None:
                logger.warning(
                    "retry not recorded: the status record changed meanwhile",
                    extra={"ctx": job.context},
                )
        await self._nak(job, delay_s=delay_s)
        self._services.metrics.retry_scheduled(job.function)
        logger.info(
            "call retrying",
            extra={
                "ctx": {
                    **job.context,
                    "status": result.status,
                    "attempts": record.attempts,
                    "delay_s": round(delay_s, 3),
                    **({"error": result.error} if result.error else {}),
                }
            },
        )

    async def _finish(
        self,
        job: _Job,
        policy: RetryPolicy,
        record: CallStatus | None,
        lease: RunningLease | None,
        outcome: _Outcome,
    ) -> None:
        """Store the dead letter, post the callback, store the status, ack.

        `lease` is the running call's lease, None for a call that did not run.
        """
        call = job.call
        metrics = self._services.metrics
        now_ns = self._clock_ns()
        if outcome.reason:
            letter = DeadLetter(
                kind="call",
                reason=outcome.reason,
                call=call,
                detail=outcome.detail,
                attempts=status.attempt_log(record),
                dead_lettered_at_ns=now_ns,
            )
            if not await self._store_dead_letter(job, letter):
                return
            metrics.dead_lettered("call", outcome.reason)

        delivery: Delivery | None = None
        if call.callback_url:
            retry = status.counted_attempts(record)
            # X-Retry-Max is the effective maximum, so a dead-lettered call,
            # which gets no further attempt, posts it equal to X-Retry.
            retry_max = retry if outcome.reason else policy.attempts
            delivery = await self._services.callbacks.deliver(
                call,
                outcome.result,
                duration_s=outcome.duration_s,
                retry=retry,
                retry_max=retry_max,
            )
            metrics.callback_failed(delivery.failed_tries)
            if not delivery.delivered:
                letter = _callback_dead_letter(
                    call,
                    outcome,
                    delivery,
                    retry=retry,
                    retry_max=retry_max,
                    now_ns=self._clock_ns(),
                )
                if not await self._store_dead_letter(job, letter):
                    return
                metrics.dead_lettered("callback", letter.reason)
        callback_dead = delivery is not None and not delivery.delivered

        # The lease holds until here: the call counts as running until its
        # callback is delivered or dead-lettered.
        job.held.recording = True
        if lease is not None:
            await lease.stop()
        await self._store_final(job, record, outcome, policy, delivery)
        await self._ack(job)
        if call.body_ref and not outcome.reason and not callback_dead:
            self._delete_body_later(call)
        metrics.call_finished(job.function, outcome.state.value)
        self._log_finished(job, record, outcome, delivery)

    async def _store_final(
        self,
        job: _Job,
        record: CallStatus | None,
        outcome: _Outcome,
        policy: RetryPolicy,
        delivery: Delivery | None,
    ) -> None:
        now_ns = self._clock_ns()
        if record is None:
            record = CallStatus(
                call_id=job.call.call_id,
                function=job.call.function,
                namespace=job.call.namespace,
                state=outcome.state,
                queue=job.call.queue,
                accepted_at_ns=job.call.accepted_at_ns,
                original_call_id=job.call.original_call_id,
            )
        reason = outcome.reason
        if not reason and delivery is not None and not delivery.delivered:
            reason = delivery.dead_letter_reason
        final = status.replaced(
            record,
            state=outcome.state,
            max_attempts=policy.attempts,
            next_attempt_at_ns=None,
            finished_at_ns=now_ns,
            updated_at_ns=now_ns,
            dead_letter_reason=reason,
            callback_status=None if delivery is None else delivery.status,
            last_error=record.last_error or outcome.detail,
            extra={
                **status.without_lease(record),
                status.EXTRA_STREAM_SEQ: job.delivery.stream_seq,
            },
        )
        # The call is done and its callback posted: whatever happens to the
        # record, acknowledging the call is better than running it again.
        try:
            await self._persist(lambda: self._services.status.store_final(final))
        except errors.StatusRefused as exc:
            reason = str(exc)
            self._unstored_log.write(lambda: {**job.context, "reason": reason})
        except errors.TemporaryError as exc:
            # No answer, or no connection: the record may have been stored
            # all the same, for example once NATS came back.
            logger.warning(
                "final status not confirmed, so it may be missing: %s",
                exc,
                extra={"ctx": job.context},
            )

    async def _dead_letter_unrun(
        self,
        job: _Job,
        *,
        reason: str,
        detail: str,
        status_code: int,
        policy: RetryPolicy,
    ) -> None:
        """Dead-letter a call that will not run, unless it was cancelled or done."""
        try:
            stored = await self._services.status.read(job.call.call_id)
        except errors.TemporaryError as exc:
            await self._postpone(job, exc)
            return
        record = None
        if stored is not None:
            decision = status.decide(
                stored.record,
                stream_seq=job.delivery.stream_seq,
                now_ns=self._clock_ns(),
                call=job.call,
                duplicate_window_ns=self._services.status.duplicate_window_ns,
            )
            if decision is Decision.CANCELLED:
                await self._finish_cancelled(job)
                return
            if decision is Decision.DUPLICATE:
                await self._ack(job)
                return
            if decision is Decision.BUSY:
                assert stored.record is not None
                await self._wait_for_lease(job, stored.record)
                return
            if stored.record is not None and status.belongs_to(
                stored.record, stream_seq=job.delivery.stream_seq
            ):
                record = stored.record
        outcome = _Outcome(
            CallState.DEAD_LETTERED,
            invoke.internal_error(status_code, detail),
            duration_s=0.0,
            reason=reason,
            detail=detail,
        )
        await self._finish(job, policy, record, None, outcome)

    async def _handle_invalid(
        self,
        held: HeldMessage,
        delivery: DeliveryInfo,
        exc: shared_errors.InvalidQueuedCall,
    ) -> None:
        message = held.message
        call = salvage_call(message.subject, message.headers, message.data)
        if call is None:
            logger.error(
                "invalid queued call terminated: %s",
                exc,
                extra={
                    "ctx": {
                        "subject": message.subject,
                        "stream_seq": delivery.stream_seq,
                    }
                },
            )
            try:
                await message.term()
            except nats.errors.Error as term_exc:
                logger.warning(
                    "terminating an invalid queued call failed: %s", _describe(term_exc)
                )
            return
        await self._dead_letter_unrun(
            _Job(held, call, delivery),
            reason=dead_letter.REASON_INVALID_MESSAGE,
            detail=f"The queued call is invalid: {exc}",
            status_code=400,
            policy=self._default_policy,
        )

    async def _wait_for_lease(self, job: _Job, record: CallStatus) -> None:
        # Another delivery of this call runs now: come back when its lease
        # ends, which a live worker keeps extending.
        left_s = status.lease_left_s(record, now_ns=self._clock_ns())
        logger.info(
            "call runs elsewhere, delivery postponed",
            extra={"ctx": {**job.context, "delay_s": round(left_s, 3)}},
        )
        await self._nak(job, delay_s=left_s + constants.LEASE_MARGIN_S)

    async def _finish_cancelled(self, job: _Job) -> None:
        await self._ack(job)
        if job.call.body_ref:
            self._delete_body_later(job.call)
        self._services.metrics.call_finished(job.function, CallState.CANCELLED.value)
        logger.info(
            "call finished",
            extra={"ctx": {**job.context, "state": CallState.CANCELLED.value}},
        )

    async def _read_body(self, call: QueuedCall) -> bytes:
        if not call.body_ref:
            return call.body
        try:
            stored = await self._services.bodies.get(call.body_ref)
        except NotFoundError as exc:
            raise errors.BodyNotFound(
                f"The body of call {call.call_id!r} is missing from the object store "
                f"{shared.BODIES_BUCKET} (object {call.body_ref!r})."
            ) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise errors.NatsUnavailable(
                f"Cannot read the body of call {call.call_id!r} from the object store "
                f"{shared.BODIES_BUCKET}: {_describe(exc)}."
            ) from exc
        return stored.data or b""

    def _delete_body_later(self, call: QueuedCall) -> None:
        # Nothing waits for the cleanup, so it runs after the ack.
        task = asyncio.create_task(self._delete_body(call))
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _delete_body(self, call: QueuedCall) -> None:
        try:
            await self._services.bodies.delete(call.body_ref)
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning(
                "stored body not deleted: %s",
                _describe(exc),
                extra={
                    "ctx": {
                        "function": str(call.ref),
                        "call_id": call.call_id,
                        "object": call.body_ref,
                    }
                },
            )

    async def _store_dead_letter(self, job: _Job, letter: DeadLetter) -> bool:
        """Store `letter`; on failure hand the call back and return False."""
        try:
            await self._persist(
                lambda: self._services.dead_letters.publish(
                    letter, stream_seq=job.delivery.stream_seq
                )
            )
        except errors.TemporaryError as exc:
            await self._postpone(job, exc)
            return False
        logger.debug(
            "dead letter stored",
            extra={
                "ctx": {**job.context, "kind": letter.kind, "reason": letter.reason}
            },
        )
        return True

    async def _persist(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run a NATS operation, retrying it for up to PERSIST_TIMEOUT_S.

        A write that the status stream refused (StatusRefused, for example a
        full bucket) is not retried: it would hold the call's slot in vain.
        """
        deadline_s = time.monotonic() + constants.PERSIST_TIMEOUT_S
        number = 0
        while True:
            number += 1
            try:
                return await operation()
            except errors.StatusRefused:
                raise
            except errors.TemporaryError:
                if time.monotonic() >= deadline_s:
                    raise
            await asyncio.sleep(
                backoff.wait_after_attempt_s(self._persist_wait, number)
            )

    async def _postpone(self, job: _Job, exc: errors.TemporaryError) -> None:
        delay_s = backoff.wait_after_attempt_s(
            self._postpone_wait, job.delivery.num_delivered
        )
        logger.debug(
            "call postponed: %s",
            exc,
            extra={"ctx": {**job.context, "delay_s": round(delay_s, 3)}},
        )
        await self._nak(job, delay_s=delay_s)

    async def _nak(self, job: _Job, *, delay_s: float | None) -> None:
        # A zero delay would mean "at once" to nats-py; keep a small one.
        delay = None if delay_s is None else max(delay_s, 0.001)
        try:
            await job.message.nak(delay=delay)
        except nats.errors.Error as exc:
            # JetStream delivers the call again after ack_wait anyway.
            logger.debug("nak failed: %s", _describe(exc), extra={"ctx": job.context})

    async def _ack(self, job: _Job) -> None:
        try:
            await job.message.ack()
        except nats.errors.Error as exc:
            logger.warning(
                "ack failed, JetStream redelivers the call after ack_wait: %s",
                _describe(exc),
                extra={"ctx": job.context},
            )

    def _log_finished(
        self,
        job: _Job,
        record: CallStatus | None,
        outcome: _Outcome,
        delivery: Delivery | None,
    ) -> None:
        if outcome.state is CallState.SUCCEEDED:
            self._finished_log.succeeded(
                lambda: _finished_context(job, record, outcome, delivery)
            )
            return
        if logger.isEnabledFor(logging.WARNING):
            context = _finished_context(job, record, outcome, delivery)
            logger.warning("call finished", extra={"ctx": context})

    def _start_reference_ns(self, job: _Job) -> int:
        """Return when the call became due: its delay, acceptance, or storage."""
        accepted_ns = job.call.accepted_at_ns or job.delivery.stored_at_ns or 0
        return max(accepted_ns, job.call.not_before_ns)

    def _deadline_ns(self, job: _Job) -> int:
        return self._start_reference_ns(job) + self._max_event_age_ns

    def _max_age_text(self) -> str:
        return (
            f"{self._max_event_age_ns / _NS_PER_S:g} s, counted from its acceptance "
            "or from the time it was delayed to"
        )


def classify(result: FunctionResult, policy: RetryPolicy) -> str:
    """Return whether `result` succeeded, is retried, throttled or rejected."""
    if 200 <= result.status < 300:
        return _SUCCEEDED
    if result.status == 429 or result.gateway_unreachable:
        # Back-pressure, or a gateway that is down: retried with backoff
        # within the max event age, without using up an attempt.
        return _THROTTLED
    internal = _header(result, shared.OPENFAAS_INTERNAL)
    if result.status == 503 and internal == _GATEWAY:
        # The gateway passed nothing on: it is starting or stopping, or
        # cannot reach the provider. The function did not run.
        return _THROTTLED
    if result.error or internal is not None:
        return _RETRIED
    if result.status in policy.codes:
        return _RETRIED
    return _REJECTED


def _header(result: FunctionResult, name: str) -> str | None:
    wanted = name.lower()
    for header_name, value in result.headers:
        if header_name.lower() == wanted:
            return value
    return None


def _attempt_error(result: FunctionResult) -> str:
    if result.error:
        text = result.error
    elif 200 <= result.status < 300:
        return ""
    elif (internal := _header(result, shared.OPENFAAS_INTERNAL)) is not None:
        # The gateway or the provider responded in place of the function, and
        # the first line of its body gives the reason.
        reason = result.body.decode("utf-8", "replace").strip().split("\n", 1)[0]
        text = f"The {internal} returned status {result.status}: {reason}"
    else:
        text = f"The function returned status {result.status}."
    return text[: constants.ERROR_TEXT_MAX]


def _busy_delay_s() -> float:
    return constants.FUNCTION_BUSY_DELAY_S * random.uniform(0.5, 1.0)


def _callback_dead_letter(
    call: QueuedCall,
    outcome: _Outcome,
    delivery: Delivery,
    *,
    retry: int,
    retry_max: int,
    now_ns: int,
) -> DeadLetter:
    result = outcome.result
    headers: dict[str, str] = {}
    for name, value in result.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return DeadLetter(
        kind="callback",
        reason=delivery.dead_letter_reason,
        call=call,
        detail=delivery.dead_letter_detail(call.callback_url),
        attempts=delivery.tries,
        dead_lettered_at_ns=now_ns,
        result_status=result.status,
        result_headers=headers,
        result_body=result.body,
        duration_s=outcome.duration_s,
        retry=retry,
        retry_max=retry_max,
    )


def _finished_context(
    job: _Job,
    record: CallStatus | None,
    outcome: _Outcome,
    delivery: Delivery | None,
) -> dict[str, Any]:
    context: dict[str, Any] = {
        **job.context,
        "state": outcome.state.value,
        "status": outcome.result.status,
        "attempts": 0 if record is None else record.attempts,
        "duration_s": round(outcome.duration_s, 3),
        **_callback_fields(job.call, delivery),
    }
    if outcome.reason:
        context["reason"] = outcome.reason
    if outcome.result.error:
        context["error"] = outcome.result.error
    return context


def _callback_fields(call: QueuedCall, delivery: Delivery | None) -> dict[str, Any]:
    """Return the log fields of a call's callback: none without a callback.

    `callback_delivered` is true or false, and `callback_status` is the
    receiver's last HTTP status as a number, absent when no response came.
    """
    if not call.callback_url or delivery is None:
        return {}
    fields: dict[str, Any] = {"callback_delivered": delivery.delivered}
    if delivery.status is not None:
        fields["callback_status"] = delivery.status
    return fields


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
