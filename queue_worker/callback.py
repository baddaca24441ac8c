"""Deliver a finished call's result to the caller's `X-Callback-Url`.

The callback request follows the OpenFaaS queue-worker contract: `POST` with
the function's response body and headers, with `X-Call-Id`,
`X-Function-Status`, `X-Function-Name`, `X-Duration-Seconds` (seconds, with
6 decimals, from the moment the worker started the last attempt to the
function's response), `X-Retry` and `X-Retry-Max` (attempts made and the
effective maximum, as OpenFaaS Pro sends them) set on top.
`faashub.callback_request` builds the headers and the `X-Faashub-Signature`,
and lists which of the function's headers are left out. `X-Function-Status`
is the worker's own status when there was no response (see
`queue_worker.invoke`). With trace export on (`faashub.tracing`), the
`traceparent` is that of the callback's own span, in the caller's trace.

Only the final outcome of a call is posted. A delivery that gets no response
or a 5xx status is tried again, up to callback_attempts tries in all, after
waits that grow from retry_min_wait_s to callback_max_wait_s. Each try is
signed afresh. Redirects are not followed, and any other status below 200
or from 300 up ends the delivery at once. The caller of `deliver` stores an
undelivered callback as a dead letter; the function never runs again
because of it.

The callback URL is chosen by the caller of the gateway, so the worker
connects only to addresses that its `CallbackGuard` allows, through a
session from `new_callback_session` (both in `faashub.callback_guard`, which
describes the rules). A refused callback is not retried: it is
dead-lettered with the reason `callback-refused`.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import aiohttp
import yarl

from faashub import callback_request, dead_letter, tracing
from faashub.callback_guard import (
    CallbackGuard,
    CallbackRefused,
    is_guarded,
    literal_refusal,
    new_callback_session,
)
from faashub.dead_letter import Attempt
from faashub.queued_call import QueuedCall
from queue_worker import backoff
from queue_worker.invoke import FunctionResult, request_body
from queue_worker.policy import Jitter

logger = logging.getLogger(__name__)

# Callback URLs whose guard check a `CallbackSender` keeps. The cache starts
# over when it is full.
_REFUSALS_MAX = 1024

# Headers set by the connectors that name a call's source, by the log field
# they fill.
_SOURCE_HEADERS = {
    "x-topic": "topic",
    "x-kafka-partition": "partition",
    "x-kafka-offset": "offset",
    "x-sqs-message-id": "message_id",
}
# Source fields logged as numbers, as the Kafka connector logs them.
_NUMERIC_SOURCE_FIELDS = frozenset({"partition", "offset"})


@dataclass(slots=True)
class Delivery:
    """The outcome of delivering one callback, after every try."""

    delivered: bool
    status: int | None
    """HTTP status of the last try, or None when it got no response."""
    tries: list[Attempt] = field(default_factory=list)
    error: str = ""
    """The reason the delivery failed, or "" when it succeeded."""
    refused: bool = False
    """True when the callback guard rejected the URL's address, so nothing was sent."""
    stopped: bool = False
    """True when the worker stopped before the delivery used all its tries."""

    @property
    def failed_tries(self) -> int:
        return sum(1 for attempt in self.tries if attempt.error)

    @property
    def dead_letter_reason(self) -> str:
        """Dead-letter reason of an undelivered callback."""
        if self.refused:
            return dead_letter.REASON_CALLBACK_REFUSED
        return dead_letter.REASON_CALLBACK_FAILED

    def dead_letter_detail(self, callback_url: str) -> str:
        """Return a sentence for people on why the callback was not delivered.

        It shows `callback_url` without credentials, query and fragment.
        """
        url = loggable_url(callback_url)
        if self.refused:
            return (
                f"The callback to {url} was not sent, because the worker's callback "
                f"guard rejects its address: {self.error}."
            )
        tries = len(self.tries)
        noun = "try" if tries == 1 else "tries"
        stopped = (
            " The worker stopped before it tried again; redrive the dead letter "
            "to post the callback."
            if self.stopped
            else ""
        )
        # Errors such as "timed out after 30 s" or "status 500" have no
        # final period of their own.
        error = self.error if self.error.endswith(".") else f"{self.error}."
        return (
            f"The callback to {url} failed after {tries} {noun}. "
            f"The last error was: {error}{stopped}"
        )


class _Try(NamedTuple):
    """The outcome of one callback post."""

    status: int | None
    """HTTP status, or None without a response."""
    error: str
    final: bool
    """True when trying again cannot help."""
    refused: bool = False
    """True when the callback guard rejected the address."""


@dataclass(frozen=True, slots=True)
class CallbackOptions:
    """Options for posting, retrying and signing callbacks."""

    timeout_s: float
    attempts: int
    min_wait_s: float
    max_wait_s: float
    jitter: Jitter
    secrets: Sequence[str] = ()
    """Signing secrets, the current one first; empty sends no signature."""
    guard: CallbackGuard = CallbackGuard()
    """Where callbacks may connect; the default denies only ALWAYS_DENIED."""


class CallbackSender:
    """Posts callbacks with retries; shared by every call of a worker.

    `session` should come from `new_callback_session` with the same guard as
    `options.guard`, so that connections are reused between callbacks. Any
    other session is not used for callbacks: each delivery then opens a
    guarded session of its own, because a session without the guard would
    connect to addresses that were never checked.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        options: CallbackOptions,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._session = session if is_guarded(session) else None
        self._options = options
        self._timeout = aiohttp.ClientTimeout(total=options.timeout_s)
        self._wait = backoff.wait_strategy(
            min_wait_s=options.min_wait_s,
            max_wait_s=options.max_wait_s,
            jitter=options.jitter,
        )
        self._sleep = sleep
        self._clock_s = clock_s
        # Set by `stop`: failed deliveries end instead of trying again.
        self._stopping = asyncio.Event()
        # Refusals by callback URL. The guard does not change, and parsing
        # the URL and its address for every callback took about 2 % of the
        # worker's samples in a py-spy profile of `bench run queue-drain`.
        self._refusals: dict[str, str] = {}

    def stop(self) -> None:
        """End every delivery at its next failed try, without waiting to retry.

        The worker calls this when it stops. The function has already run,
        so a callback that is not delivered is dead-lettered with its result,
        and can be redriven, rather than left to a redelivery that would run
        the function again.
        """
        self._stopping.set()

    async def deliver(
        self,
        call: QueuedCall,
        result: FunctionResult,
        *,
        duration_s: float,
        retry: int,
        retry_max: int,
    ) -> Delivery:
        """Post `result` to `call.callback_url`, trying again on failures.

        Raises only when cancelled. Failures are logged here.
        """
        headers = callback_request.callback_headers(
            call,
            result.status,
            result.headers,
            duration_s=duration_s,
            retry=retry,
            retry_max=retry_max,
        )
        if tracing.enabled:
            return await self._deliver_traced(call, result.body, headers)
        return await self._deliver_in_session(call, result.body, headers)

    async def _deliver_traced(
        self, call: QueuedCall, body: bytes, headers: list[tuple[str, str]]
    ) -> Delivery:
        """Deliver inside a span that is a child of the call's trace context."""
        span = tracing.start_span(
            "queue-worker callback",
            kind="client",
            parent_headers=call.headers.items(),
            attributes={
                **tracing.function_attributes(str(call.ref)),
                "faashub.call_id": call.call_id,
                "url.full": loggable_url(call.callback_url),
            },
        )
        try:
            delivery = await self._deliver_in_session(
                call, body, tracing.with_trace_headers(headers, span)
            )
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        span.set_attribute("faashub.callback.tries", len(delivery.tries))
        span.set_http_status(delivery.status if delivery.delivered else None)
        span.end()
        return delivery

    async def _deliver_in_session(
        self, call: QueuedCall, body: bytes, headers: list[tuple[str, str]]
    ) -> Delivery:
        if self._session is not None:
            return await self._deliver(call, body, headers, self._session)
        # TODO: a worker that passes new_callback_session()'s session avoids
        # one new connection per delivery here.
        async with new_callback_session(self._options.guard, limit=1) as session:
            return await self._deliver(call, body, headers, session)

    async def _deliver(
        self,
        call: QueuedCall,
        body: bytes,
        headers: list[tuple[str, str]],
        session: aiohttp.ClientSession,
    ) -> Delivery:
        delivery = Delivery(delivered=False, status=None)
        for number in range(1, self._options.attempts + 1):
            outcome = await self._post(call, body, headers, session)
            status, error = outcome.status, outcome.error
            delivery.status = status
            delivery.tries.append(Attempt(status, error, time.time_ns()))
            if not error:
                delivery.delivered = True
                return delivery
            retried = not outcome.final and (status is None or status >= 500)
            if not retried or number == self._options.attempts:
                delivery.error = error
                delivery.refused = outcome.refused
                break
            if self._stopping.is_set():
                delivery.error = error
                delivery.stopped = True
                break
            wait_s = backoff.wait_after_attempt_s(self._wait, number)
            logger.info(
                "callback retrying: %s",
                error,
                extra={
                    "ctx": {**_context(call), "try": number, "wait_s": round(wait_s, 3)}
                },
            )
            if await self._wait_unless_stopped(wait_s):
                delivery.error = error
                delivery.stopped = True
                break
        logger.warning(
            "callback failed: %s",
            delivery.error,
            extra={"ctx": {**_context(call), "tries": len(delivery.tries)}},
        )
        return delivery

    async def _wait_unless_stopped(self, wait_s: float) -> bool:
        """Wait `wait_s` before the next try; return True if `stop` ended the wait."""
        sleeping = asyncio.ensure_future(self._sleep(wait_s))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {sleeping, stopping}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            sleeping.cancel()
            stopping.cancel()
        return self._stopping.is_set()

    async def _post(
        self,
        call: QueuedCall,
        body: bytes,
        headers: list[tuple[str, str]],
        session: aiohttp.ClientSession,
    ) -> _Try:
        """Post once. A refused address and an invalid URL are final."""
        refusal = self._refusal_of_literal(call.callback_url)
        if refusal:
            return _Try(None, refusal, final=True, refused=True)
        headers = callback_request.signed_headers(
            headers, body, self._options.secrets, timestamp_s=int(self._clock_s())
        )
        try:
            async with session.post(
                call.callback_url,
                data=request_body(body),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return _Try(None, f"timed out after {self._options.timeout_s:g} s", False)
        except aiohttp.InvalidURL:
            # The message of InvalidURL repeats the URL, query string included.
            return _Try(None, "invalid callback URL", final=True)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, CallbackRefused):
                return _Try(None, str(exc.os_error), final=True, refused=True)
            return _Try(None, str(exc) or type(exc).__name__, False)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError covers a header value that aiohttp refuses to send.
            return _Try(None, str(exc) or type(exc).__name__, False)
        if 200 <= status < 300:
            return _Try(status, "", False)
        return _Try(status, f"status {status}", False)

    def _refusal_of_literal(self, url: str) -> str:
        refusal = self._refusals.get(url)
        if refusal is None:
            if len(self._refusals) >= _REFUSALS_MAX:
                self._refusals.clear()
            refusal = self._refusals[url] = literal_refusal(self._options.guard, url)
        return refusal


def loggable_url(url: str) -> str:
    """Return `url` without credentials, query and fragment, which may hold secrets."""
    try:
        parsed = yarl.URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (TypeError, ValueError):
        # Cut by hand what could be credentials, a query or a fragment.
        scheme, separator, rest = url.rpartition("://")
        rest = rest.rpartition("@")[2].partition("?")[0].partition("#")[0]
        return scheme + separator + rest


def call_source(call: QueuedCall) -> dict[str, object]:
    """Return the log fields of a call's event source, from the connector headers.

    A call that a connector queued carries its source in headers: the topic
    (or SQS queue) in X-Topic, and X-Kafka-Partition and X-Kafka-Offset or
    X-SQS-Message-ID. A call from any other caller has none of them.
    """
    source: dict[str, object] = {}
    for name, value in call.headers.items():
        field_name = _SOURCE_HEADERS.get(name.lower())
        if field_name is None:
            continue
        if field_name in _NUMERIC_SOURCE_FIELDS and value.isascii() and value.isdigit():
            source[field_name] = int(value)
        else:
            source[field_name] = value
    return source


def _context(call: QueuedCall) -> dict[str, object]:
    return {
        "function": str(call.ref),
        "call_id": call.call_id,
        **call_source(call),
        "callback_url": loggable_url(call.callback_url),
    }
