"""Delayed async calls: the X-Delay-Seconds and X-Not-Before request headers.

A caller delays a call with one of two headers on `/async-function/`:

* `X-Delay-Seconds: 90` (or `1.5`): a non-negative number of seconds from now,
  written as ASCII digits with an optional decimal point and fraction;
* `X-Not-Before: 2030-01-02T03:04:05Z`: an absolute time, as RFC 3339 with a
  `Z` or an offset, or as an HTTP date (`Wed, 02 Jan 2030 03:04:05 GMT`).

The gateway turns either into the call's `not_before_ns` and accepts the call
at once; the worker does not start it before then. A time in the past means
no delay. This module only parses and checks the values.
"""

import datetime
import email.utils
import math
import re

from faashub import constants as shared
from gateway import asgi, errors

_NS_PER_S = 1_000_000_000
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_ONE_MICROSECOND = datetime.timedelta(microseconds=1)
# The documented form of X-Delay-Seconds. `float()` alone would also take
# "1_000", "1e3", "inf", other Unicode digits and surrounding spaces.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def not_before_ns(
    delay_seconds: str | None,
    not_before: str | None,
    *,
    now_ns: int,
    max_delay_s: float,
) -> int:
    """Return the Unix time in ns before which the call must not start; 0 for none.

    Raises InvalidRequest for an unreadable value, for both headers at once,
    and for a delay beyond `max_delay_s`.
    """
    if delay_seconds is not None and not_before is not None:
        raise errors.InvalidRequest(
            f"Both {shared.DELAY_SECONDS} and {shared.NOT_BEFORE} are set; send "
            "only one of them."
        )
    if delay_seconds is not None:
        delay_s = _parse_seconds(delay_seconds)
        _check_limit(
            delay_s, max_delay_s, header=shared.DELAY_SECONDS, value=delay_seconds
        )
        return now_ns + round(delay_s * _NS_PER_S) if delay_s > 0 else 0
    if not_before is not None:
        moment = _parse_time(not_before)
        moment_ns = (moment - _EPOCH) // _ONE_MICROSECOND * 1000
        if moment_ns <= now_ns:
            return 0
        delay_s = (moment_ns - now_ns) / _NS_PER_S
        _check_limit(delay_s, max_delay_s, header=shared.NOT_BEFORE, value=not_before)
        return moment_ns
    return 0


def _parse_seconds(value: str) -> float:
    seconds = float(value) if _SECONDS.fullmatch(value) else math.nan
    if not math.isfinite(seconds):
        raise errors.InvalidRequest(
            f"Invalid {shared.DELAY_SECONDS} {asgi.shown_header_value(value)!r}: "
            "expected a non-negative number of seconds in digits 0-9, such as 30 "
            "or 1.5."
        )
    return seconds


def _parse_time(value: str) -> datetime.datetime:
    moment: datetime.datetime | None
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            moment = None
    if moment is None or moment.tzinfo is None:
        raise errors.InvalidRequest(
            f"Invalid {shared.NOT_BEFORE} {asgi.shown_header_value(value)!r}: "
            "expected a time with a zone, as RFC 3339 (2030-01-02T03:04:05Z) or "
            "an HTTP date "
            "(Wed, 02 Jan 2030 03:04:05 GMT)."
        )
    return moment


def _check_limit(
    delay_s: float, max_delay_s: float, *, header: str, value: str
) -> None:
    if delay_s > max_delay_s:
        raise errors.InvalidRequest(
            f"Invalid {header} {asgi.shown_header_value(value)!r}: the call would "
            f"start {_seconds(delay_s)} s from now, beyond the gateway's limit of "
            f"{_seconds(max_delay_s)} s (max_delay_s). Ask for a shorter delay."
        )


def _seconds(value: float) -> str:
    """Return `value` with at most 3 decimals and no exponent, as 97043123.4."""
    return f"{value:.3f}".rstrip("0").rstrip(".")
