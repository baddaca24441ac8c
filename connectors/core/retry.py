"""When an invocation is tried again, and after how long.

Outcomes fall in three kinds:

* success: a 2xx response;
* temporary failure: 429, any 5xx, or a response that never came (the
  connection broke, or the upstream timeout passed). It is retried with
  exponential backoff and jitter, up to the configured number of attempts;
* final failure: any other status (3xx, or a 4xx other than 429). It is
  never retried, because the same request would fail the same way.

The waits come from tenacity's strategies: the first retry waits about
`min_wait_s`, each next one twice as long, plus up to half of `min_wait_s`
of random jitter, never more than `max_wait_s`. A `Retry-After` header on a
429 or 503 raises the wait to what the function asked for, within the same
maximum, as the OpenFaaS Pro queue-worker does.

A gateway that cannot be reached at all is not a failure of the function,
so the invoker waits for it without counting attempts (see
`connectors.core.invoker`). It takes its pauses from `wait_s` here.
"""

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable

import tenacity

SleepFunction = Callable[[float], Awaitable[None]]

# Statuses that may carry a Retry-After header worth honouring.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


def is_success(status: int) -> bool:
    """Tell whether an HTTP status means the function handled the message."""
    return 200 <= status < 300


def is_retryable(status: int) -> bool:
    """Tell whether a failed status is temporary: 429 or any 5xx."""
    return status == 429 or status >= 500


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Return the seconds a Retry-After value requests, or None if it is unusable.

    The value is either decimal seconds or an HTTP date (RFC 9110, 10.2.3).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current_s = time.time() if now_s is None else now_s
    return max(0.0, moment.timestamp() - current_s)


class RetryPolicy:
    """Attempts and waits for temporary failures.

    `sleep` is awaited for every pause, so tests can pass a function that
    records the waits instead of sleeping.
    """

    def __init__(
        self,
        *,
        attempts: int,
        min_wait_s: float,
        max_wait_s: float,
        sleep: SleepFunction = asyncio.sleep,
    ) -> None:
        self.attempts = attempts
        self.min_wait_s = min_wait_s
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self._strategy = tenacity.wait_exponential(
            multiplier=min_wait_s, min=min_wait_s, max=max_wait_s
        ) + tenacity.wait_random(0, min_wait_s / 2)
        # tenacity's strategies read the attempt number from a call state,
        # which needs an owner; this one is never run.
        self._state_owner = tenacity.Retrying()

    def wait_s(self, retry_number: int, *, retry_after_s: float | None = None) -> float:
        """Return the pause before retry number `retry_number` (1 for the first)."""
        state = tenacity.RetryCallState(self._state_owner, None, (), {})
        state.attempt_number = retry_number
        wait_s = self._strategy(state)
        if retry_after_s is not None:
            wait_s = max(wait_s, retry_after_s)
        return min(wait_s, self.max_wait_s)

    def retry_after_s(self, status: int, header_value: str | None) -> float | None:
        """Return the Retry-After wait for a response, when its status allows one."""
        if status not in _RETRY_AFTER_STATUSES:
            return None
        return parse_retry_after(header_value)
