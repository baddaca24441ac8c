"""Waits between attempts, built on tenacity's exponential wait.

The wait before attempt n+1 grows exponentially from min_wait (after attempt
1) and is capped at max_wait. The jitter mode picks how much of it is random,
and no mode waits less than min_wait:

* `none`: exactly that wait (`wait_exponential`);
* `full`: uniformly between min_wait and that wait;
* `equal`: uniformly between half of that wait and all of it, but never
  below min_wait.

The first wait is therefore min_wait in every mode, and randomness starts
from the second retry. OpenFaaS Pro documents min_wait as the minimum wait
between retries (docs.openfaas.com/openfaas-pro/retries, section
"Retry-After header"), and a caller sets it to spare a downstream service.

A `Retry-After` header (seconds or an HTTP date) on a 429 or 503 response
replaces the computed wait, floored at min_wait. This module only computes
waits: the worker turns them into JetStream redelivery delays, and the
callback sender sleeps them.
"""

import datetime
import email.utils
import math
import random

import tenacity

from queue_worker.policy import Jitter, RetryPolicy

# Statuses whose Retry-After header is honoured, as OpenFaaS Pro does.
RETRY_AFTER_STATUSES = frozenset({429, 503})


def wait_strategy(
    *, min_wait_s: float, max_wait_s: float, jitter: Jitter
) -> tenacity.wait.wait_base:
    """Return the tenacity wait strategy for these bounds and jitter mode."""
    exponential = tenacity.wait_exponential(
        multiplier=min_wait_s, min=min_wait_s, max=max_wait_s
    )
    if jitter == "none":
        return exponential
    random_share = 1.0 if jitter == "full" else 0.5
    return JitteredWait(exponential, min_wait_s=min_wait_s, random_share=random_share)


class JitteredWait(tenacity.wait.wait_base):
    """An exponential wait of which the last `random_share` is drawn at random.

    Each wait is drawn uniformly between `ceiling * (1 - random_share)` and
    the exponential wait (the ceiling), and is never below `min_wait_s`.
    """

    def __init__(
        self,
        exponential: tenacity.wait_exponential,
        *,
        min_wait_s: float,
        random_share: float,
    ) -> None:
        self._exponential = exponential
        self._min_wait_s = min_wait_s
        self._fixed_share = 1.0 - random_share

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        ceiling_s = self._exponential(retry_state)
        # wait_exponential never returns less than min_wait_s, so floor <= ceiling.
        floor_s = max(self._min_wait_s, ceiling_s * self._fixed_share)
        return random.uniform(floor_s, ceiling_s)


def wait_after_attempt_s(
    strategy: tenacity.wait.wait_base, attempt_number: int
) -> float:
    """Return the wait `strategy` gives after attempt `attempt_number` (from 1)."""
    state = tenacity.RetryCallState(
        retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={}
    )
    state.attempt_number = max(attempt_number, 1)
    return float(strategy(state))


def retry_wait_s(policy: RetryPolicy, attempt_number: int) -> float:
    """Return the wait before the attempt after `attempt_number` under `policy`."""
    strategy = wait_strategy(
        min_wait_s=policy.min_wait_s,
        max_wait_s=policy.max_wait_s,
        jitter=policy.jitter,
    )
    return wait_after_attempt_s(strategy, attempt_number)


def retry_after_s(value: str | None, *, now_s: float) -> float | None:
    """Parse a Retry-After value into seconds from `now_s`, or None if invalid.

    The value is a number of seconds or an HTTP date (RFC 9110, section
    10.2.3). A date in the past gives 0.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        # RFC 9110 dates are in GMT; a date marked -0000 is read as GMT too.
        moment = moment.replace(tzinfo=datetime.UTC)
    seconds = moment.timestamp() - now_s
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)
