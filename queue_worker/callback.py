"""Deliver a finished call's result to the caller's `X-Callback-Url`.

The callback request follows the OpenFaaS queue-worker contract: `POST` with
the function's response body and the function's response headers (minus
hop-by-hop ones, `Content-Length` and `Host`), with these set on top:

* `X-Call-Id`: the call id;
* `X-Function-Status`: the function's HTTP status, or the worker's own
  status when there was no response (see `queue_worker.invoke`);
* `X-Function-Name`: `name`, or `name.namespace` outside `openfaas-fn`;
* `X-Duration-Seconds`: seconds, with 6 decimals, from the moment the worker
  started the last attempt to the function's response;
* `X-Retry` and `X-Retry-Max`: attempts made and the effective maximum, as
  OpenFaaS Pro sends them;
* `X-Faashub-Signature`, when a signing secret is set (`queue_worker.signing`).

Only the final outcome of a call is posted. A delivery that gets no response
or a 5xx status is tried again, up to callback_attempts tries in all, after
waits that grow from retry_min_wait_s to callback_max_wait_s. Each try is
signed afresh. Redirects are not followed, and any other status below 200
or from 300 up ends the delivery at once. The caller of `deliver` stores an
undelivered callback as a dead letter; the function never runs again
because of it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import yarl

from faashub import constants
from faashub.dead_letter import Attempt
from faashub.queued_call import QueuedCall
from queue_worker import backoff, signing
from queue_worker.invoke import FunctionResult, request_body, wire_text
from queue_worker.policy import Jitter

logger = logging.getLogger(__name__)

# Function response headers that the callback request does not repeat:
# hop-by-hop ones, the ones aiohttp computes, and the ones set below.
_NOT_FORWARDED = constants.HOP_BY_HOP | {
    "host",
    "content-length",
    constants.CALL_ID.lower(),
    constants.FUNCTION_STATUS.lower(),
    constants.FUNCTION_NAME.lower(),
    constants.DURATION_SECONDS.lower(),
    constants.RETRY.lower(),
    constants.RETRY_MAX.lower(),
    constants.CALLBACK_SIGNATURE.lower(),
}


@dataclass(slots=True)
class Delivery:
    """The outcome of delivering one callback, after every try."""

    delivered: bool
    status: int | None
    """HTTP status of the last try, or None when it got no response."""
    tries: list[Attempt] = field(default_factory=list)
    error: str = ""
    """The reason the delivery failed, or "" when it succeeded."""

    @property
    def failed_tries(self) -> int:
        return sum(1 for attempt in self.tries if attempt.error)


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


class CallbackSender:
    """Posts callbacks with retries; shared by every call of a worker."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        options: CallbackOptions,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._options = options
        self._timeout = aiohttp.ClientTimeout(total=options.timeout_s)
        self._wait = backoff.wait_strategy(
            min_wait_s=options.min_wait_s,
            max_wait_s=options.max_wait_s,
            jitter=options.jitter,
        )
        self._sleep = sleep
        self._clock_s = clock_s

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
        headers = callback_headers(
            call, result, duration_s=duration_s, retry=retry, retry_max=retry_max
        )
        delivery = Delivery(delivered=False, status=None)
        for number in range(1, self._options.attempts + 1):
            status, error = await self._post(call, result.body, headers)
            delivery.status = status
            delivery.tries.append(Attempt(status, error, time.time_ns()))
            if not error:
                delivery.delivered = True
                return delivery
            retried = status is None or status >= 500
            if not retried or number == self._options.attempts:
                delivery.error = error
                break
            wait_s = backoff.wait_after_attempt_s(self._wait, number)
            logger.info(
                "callback retrying: %s",
                error,
                extra={
                    "ctx": {**_context(call), "try": number, "wait_s": round(wait_s, 3)}
                },
            )
            await self._sleep(wait_s)
        logger.warning(
            "callback failed: %s",
            delivery.error,
            extra={"ctx": {**_context(call), "tries": len(delivery.tries)}},
        )
        return delivery

    async def _post(
        self, call: QueuedCall, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int | None, str]:
        """Post once; return the status (None without a response) and an error."""
        if self._options.secrets:
            signature = signing.signature_header(
                body, self._options.secrets, timestamp_s=int(self._clock_s())
            )
            headers = [*headers, (constants.CALLBACK_SIGNATURE, signature)]
        try:
            async with self._session.post(
                call.callback_url,
                data=request_body(body),
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                await response.read()
                status = response.status
        except TimeoutError:
            return None, f"timed out after {self._options.timeout_s:g} s"
        except aiohttp.InvalidURL:
            # The message of InvalidURL repeats the URL, query string included.
            return None, "invalid callback URL"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError covers a header value that aiohttp refuses to send.
            return None, str(exc) or type(exc).__name__
        if 200 <= status < 300:
            return status, ""
        return status, f"status {status}"


def callback_headers(
    call: QueuedCall,
    result: FunctionResult,
    *,
    duration_s: float,
    retry: int,
    retry_max: int,
) -> list[tuple[str, str]]:
    """Return the callback request's headers, repeated names kept apart."""
    headers = [
        (name, value)
        for name, value in result.headers
        if name.lower() not in _NOT_FORWARDED
    ]
    headers.append((constants.CALL_ID, wire_text(call.call_id)))
    headers.append((constants.FUNCTION_STATUS, str(result.status)))
    headers.append((constants.FUNCTION_NAME, function_name(call)))
    headers.append((constants.DURATION_SECONDS, f"{duration_s:.6f}"))
    headers.append((constants.RETRY, str(retry)))
    headers.append((constants.RETRY_MAX, str(retry_max)))
    return headers


def function_name(call: QueuedCall) -> str:
    """Return the function as OpenFaaS names it in `X-Function-Name`."""
    if call.namespace == constants.DEFAULT_NAMESPACE:
        return call.function
    return f"{call.function}.{call.namespace}"


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


def _context(call: QueuedCall) -> dict[str, object]:
    return {
        "function": str(call.ref),
        "call_id": call.call_id,
        "callback_url": loggable_url(call.callback_url),
    }
