"""Retry policies and concurrency limits of functions.

The worker's settings give the defaults. A function overrides them with the
annotations OpenFaaS Pro reads, plus one of faashub's own:

* `com.openfaas.retry.attempts`: invocations of a call, the first included;
* `com.openfaas.retry.codes`: comma-separated HTTP statuses that are retried;
* `com.openfaas.retry.min_wait`, `com.openfaas.retry.max_wait`: durations
  such as `500ms`, `5s`, `2m`, `1m30s`, or plain seconds;
* `com.faashub.max_inflight`: the most calls of the function one worker runs
  at once.

An invalid value falls back to the default and is logged once per function,
annotation and value. The parsers live in `faashub.async_annotations`, which
the provider also uses to reject invalid values at deploy. This module only
reads annotations; the waits themselves are computed in `queue_worker.backoff`.
"""

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from faashub import constants, errors
from faashub.async_annotations import parse_codes as parse_codes
from faashub.async_annotations import parse_duration_s as parse_duration_s
from faashub.async_annotations import parse_positive_int as parse_positive_int
from faashub.names import FunctionRef
from faashub.settings import WorkerSettings, setting_name

logger = logging.getLogger(__name__)

Jitter = Literal["full", "equal", "none"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a call's invocation is retried, and how long the worker waits."""

    attempts: int
    """Invocations of a call, the first included; 429 responses do not count."""
    codes: frozenset[int]
    """HTTP statuses that are retried; every other non-2xx status is final."""
    min_wait_s: float
    max_wait_s: float
    jitter: Jitter


@dataclass(frozen=True, slots=True)
class FunctionPolicy:
    """A function's retry policy and concurrency limit."""

    retry: RetryPolicy
    max_inflight: int | None = None
    """Maximum calls of the function this worker runs at once, or None for no limit."""


def default_retry_policy(settings: WorkerSettings) -> RetryPolicy:
    """Return the retry policy of the worker's settings, or raise SettingsError."""
    try:
        codes = parse_codes(settings.retry_codes)
    except ValueError as exc:
        raise errors.SettingsError(
            f"Invalid retry codes {settings.retry_codes!r}: {exc} "
            f"Set {setting_name('retry_codes')} to a comma-separated list such as "
            "429,500,503."
        ) from exc
    if settings.retry_min_wait_s > settings.retry_max_wait_s:
        raise errors.SettingsError(
            f"The minimum retry wait {settings.retry_min_wait_s:g} s is above the "
            f"maximum {settings.retry_max_wait_s:g} s. Lower "
            f"{setting_name('retry_min_wait_s')} or raise "
            f"{setting_name('retry_max_wait_s')}."
        )
    return RetryPolicy(
        attempts=settings.retry_attempts,
        codes=codes,
        min_wait_s=settings.retry_min_wait_s,
        max_wait_s=settings.retry_max_wait_s,
        jitter=settings.retry_jitter,
    )


class PolicyReader:
    """Reads functions' annotations into policies, warning once per bad value."""

    def __init__(self, defaults: RetryPolicy) -> None:
        self._defaults = defaults
        self._reported: set[tuple[str, str, str]] = set()

    def read(self, ref: FunctionRef, annotations: Mapping[str, str]) -> FunctionPolicy:
        """Return the policy of function `ref` with these annotations."""
        defaults = self._defaults
        attempts = self._value(
            ref, annotations, constants.ANNOTATION_RETRY_ATTEMPTS, parse_positive_int
        )
        codes = self._value(
            ref, annotations, constants.ANNOTATION_RETRY_CODES, parse_codes
        )
        min_wait_s = self._value(
            ref, annotations, constants.ANNOTATION_RETRY_MIN_WAIT, parse_duration_s
        )
        max_wait_s = self._value(
            ref, annotations, constants.ANNOTATION_RETRY_MAX_WAIT, parse_duration_s
        )
        retry = RetryPolicy(
            attempts=defaults.attempts if attempts is None else attempts,
            codes=defaults.codes if codes is None else codes,
            min_wait_s=defaults.min_wait_s if min_wait_s is None else min_wait_s,
            max_wait_s=defaults.max_wait_s if max_wait_s is None else max_wait_s,
            jitter=defaults.jitter,
        )
        if retry.min_wait_s > retry.max_wait_s:
            # NB: a min_wait above the cap would make every wait the cap, which
            # is never what a short min_wait annotation means. Raise the cap.
            self._report(
                ref,
                constants.ANNOTATION_RETRY_MAX_WAIT,
                f"{retry.max_wait_s:g}s",
                f"it is below min_wait {retry.min_wait_s:g}s, so max_wait is "
                f"raised to {retry.min_wait_s:g}s",
            )
            retry = RetryPolicy(
                attempts=retry.attempts,
                codes=retry.codes,
                min_wait_s=retry.min_wait_s,
                max_wait_s=retry.min_wait_s,
                jitter=retry.jitter,
            )
        max_inflight = self._value(
            ref, annotations, constants.ANNOTATION_MAX_INFLIGHT, parse_positive_int
        )
        return FunctionPolicy(retry=retry, max_inflight=max_inflight)

    def _value(
        self,
        ref: FunctionRef,
        annotations: Mapping[str, str],
        name: str,
        parse: Callable[[str], T],
    ) -> T | None:
        text = annotations.get(name)
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self._report(ref, name, text, f"{exc} The default is used instead.")
            return None

    def _report(self, ref: FunctionRef, name: str, value: str, problem: str) -> None:
        key = (str(ref), name, value)
        if key in self._reported:
            return
        self._reported.add(key)
        logger.warning(
            "invalid annotation %s=%r: %s",
            name,
            value,
            problem,
            extra={"ctx": {"function": str(ref)}},
        )
