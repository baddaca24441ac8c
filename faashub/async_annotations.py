"""Parsing of the function annotations that steer async calls.

The queue-worker reads the retry annotations and `com.faashub.max_inflight`
(`queue_worker.policy`), and the gateway reads `com.openfaas.queue`, each
time a call runs. There an invalid value falls back to the default with a
warning, so a function deployed before these checks keeps working. The
provider rejects the same invalid values at deploy with
`check_async_annotations`, which uses the parsers below, so a value passes
at deploy exactly when the worker and the gateway can use it.
"""

import re
from collections.abc import Callable, Mapping
from typing import Final

from faashub import constants
from faashub.queued_call import is_valid_token

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m|h)")
# Plain seconds; float() alone would also take 1_000, 1e3, inf and other digits.
_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# The accepted form of each annotation, quoted when a value is rejected.
_EXPECTED: Final = {
    constants.ANNOTATION_RETRY_ATTEMPTS: "a whole number of attempts, 1 or more",
    constants.ANNOTATION_RETRY_CODES: (
        "comma-separated HTTP statuses from 100 to 599, such as 429,500,503"
    ),
    constants.ANNOTATION_RETRY_MIN_WAIT: (
        "a duration above zero, such as 500ms, 5s, 2m or 1m30s, or seconds"
    ),
    constants.ANNOTATION_RETRY_MAX_WAIT: (
        "a duration above zero, such as 500ms, 5s, 2m or 1m30s, or seconds"
    ),
    constants.ANNOTATION_MAX_INFLIGHT: "a whole number of calls, 1 or more",
    constants.ANNOTATION_QUEUE: (
        "a queue name of letters, digits, '-' or '_', at most 128 characters"
    ),
}


def parse_positive_int(text: str) -> int:
    """Parse a positive integer, or raise ValueError."""
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < 1:
        raise ValueError("Expected a positive integer.")
    return int(stripped)


def parse_codes(text: str) -> frozenset[int]:
    """Parse statuses such as `429,500,503`, or raise ValueError."""
    codes = set()
    for part in text.split(","):
        item = part.strip()
        if not (item.isascii() and item.isdigit()) or not 100 <= int(item) <= 599:
            raise ValueError(
                f"{item!r} is not an HTTP status; expected numbers from 100 to 599."
            )
        codes.add(int(item))
    return frozenset(codes)


def parse_duration_s(text: str) -> float:
    """Parse `500ms`, `5s`, `2m`, `1h`, `1m30s` or plain seconds; raise ValueError."""
    stripped = text.strip()
    if _SECONDS.fullmatch(stripped):
        seconds = float(stripped)
    else:
        parts = _DURATION_PART.findall(stripped)
        if not parts or "".join(n + u for n, u in parts) != stripped:
            raise ValueError(
                "Expected a duration such as 500ms, 5s, 2m or 1m30s, or seconds."
            )
        seconds = sum(float(number) * _UNIT_S[unit] for number, unit in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("Expected a duration above zero.")
    return seconds


def parse_queue(text: str) -> str:
    """Parse a queue name, where "" means the default queue, or raise ValueError.

    The name becomes one token of a NATS subject, so it is checked with the
    rule of `faashub.queued_call.is_valid_token`, as the gateway checks it.
    """
    if text and not is_valid_token(text):
        raise ValueError(
            "Expected letters, digits, '-' or '_', at most 128 characters."
        )
    return text


_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    constants.ANNOTATION_RETRY_ATTEMPTS: parse_positive_int,
    constants.ANNOTATION_RETRY_CODES: parse_codes,
    constants.ANNOTATION_RETRY_MIN_WAIT: parse_duration_s,
    constants.ANNOTATION_RETRY_MAX_WAIT: parse_duration_s,
    constants.ANNOTATION_MAX_INFLIGHT: parse_positive_int,
    constants.ANNOTATION_QUEUE: parse_queue,
}


def check_async_annotations(function: str, annotations: Mapping[str, str]) -> None:
    """Check the async annotations of `function`, raising ValueError for an invalid one.

    The annotations checked are the retry ones, `com.faashub.max_inflight`
    and `com.openfaas.queue`, and the message names the first invalid one.
    A min_wait above max_wait is invalid too when both are set, because the
    worker would then raise max_wait to min_wait. An annotation that is not
    set is valid.
    """
    for name, parse in _PARSERS.items():
        value = annotations.get(name)
        if value is None:
            continue
        try:
            parse(value)
        except ValueError:
            raise ValueError(
                f"Function {function!r} has annotation {name}={value!r}, which is "
                f"not valid. Use {_EXPECTED[name]}, or remove the annotation to "
                "use the default."
            ) from None
    min_wait = annotations.get(constants.ANNOTATION_RETRY_MIN_WAIT)
    max_wait = annotations.get(constants.ANNOTATION_RETRY_MAX_WAIT)
    if min_wait is None or max_wait is None:
        return
    if parse_duration_s(min_wait) > parse_duration_s(max_wait):
        raise ValueError(
            f"Function {function!r} has annotation "
            f"{constants.ANNOTATION_RETRY_MIN_WAIT}={min_wait!r} above "
            f"{constants.ANNOTATION_RETRY_MAX_WAIT}={max_wait!r}. Make min_wait "
            "at most max_wait."
        )
