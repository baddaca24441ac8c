"""Retry policies, backoff waits and outcome classes, checked without servers."""

import asyncio
import email.utils
import logging
import random

import pytest

from faashub import errors
from faashub.names import FunctionRef
from faashub.settings import WorkerSettings
from queue_worker import backoff, handling, policy
from queue_worker.invoke import FunctionResult, internal_error
from queue_worker.policy import PolicyReader, RetryPolicy
from queue_worker.slots import Slots

REF = FunctionRef("echo", "openfaas-fn")
DEFAULTS = RetryPolicy(
    attempts=10,
    codes=frozenset({408, 429, 500, 502, 503, 504}),
    min_wait_s=1.0,
    max_wait_s=120.0,
    jitter="none",
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("5s", 5.0, id="seconds"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("2m", 120.0, id="minutes"),
        pytest.param("1h", 3600.0, id="hours"),
        pytest.param("1m30s", 90.0, id="compound"),
        pytest.param("1.5s", 1.5, id="decimal"),
        pytest.param("30", 30.0, id="plain-seconds"),
        pytest.param(" 10s ", 10.0, id="spaces"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert policy.parse_duration_s(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "soon", "5 s", "5x", "-1s", "0", "0s", "s", "1s2", "inf", "nan"],
)
def test_invalid_duration(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        policy.parse_duration_s(text)


def test_parse_codes() -> None:
    assert policy.parse_codes(" 429, 500,503") == frozenset({429, 500, 503})


@pytest.mark.parametrize("text", ["", "500,", "abc", "600", "99"])
def test_invalid_codes(text: str) -> None:
    with pytest.raises(ValueError, match="HTTP status"):
        policy.parse_codes(text)


def test_annotations_override_defaults() -> None:
    reader = PolicyReader(DEFAULTS)

    read = reader.read(
        REF,
        {
            "com.openfaas.retry.attempts": "3",
            "com.openfaas.retry.codes": "418,500",
            "com.openfaas.retry.min_wait": "200ms",
            "com.openfaas.retry.max_wait": "2s",
            "com.faashub.max_inflight": "4",
        },
    )

    assert read.retry == RetryPolicy(
        attempts=3,
        codes=frozenset({418, 500}),
        min_wait_s=0.2,
        max_wait_s=2.0,
        jitter="none",
    )
    assert read.max_inflight == 4


def test_no_annotations_keep_defaults() -> None:
    read = PolicyReader(DEFAULTS).read(REF, {"topic": "orders"})

    assert read.retry == DEFAULTS
    assert read.max_inflight is None


def test_invalid_annotations_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    reader = PolicyReader(DEFAULTS)
    annotations = {
        "com.openfaas.retry.attempts": "0",
        "com.openfaas.retry.codes": "many",
        "com.faashub.max_inflight": "-2",
    }

    for _ in range(3):
        read = reader.read(REF, annotations)
    reader.read(FunctionRef("other", "openfaas-fn"), annotations)

    assert read.retry == DEFAULTS
    assert read.max_inflight is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # Three bad values, for each of two functions.
    assert len(warnings) == 6
    assert "com.openfaas.retry.codes='many'" in warnings[1].getMessage()


def test_min_wait_above_max_raises_max(caplog: pytest.LogCaptureFixture) -> None:
    read = PolicyReader(DEFAULTS).read(REF, {"com.openfaas.retry.min_wait": "5m"})

    assert read.retry.min_wait_s == 300.0
    assert read.retry.max_wait_s == 300.0
    assert "raised to 300s" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"retry_codes": "500,x"}, "retry codes '500,x'", id="codes"),
        pytest.param(
            {"retry_min_wait_s": 5.0, "retry_max_wait_s": 1.0},
            "minimum retry wait 5 s",
            id="waits",
        ),
    ],
)
def test_invalid_retry_settings(overrides: dict[str, object], message: str) -> None:
    settings = WorkerSettings.model_validate(overrides)

    with pytest.raises(errors.SettingsError, match=message):
        policy.default_retry_policy(settings)


def test_waits_without_jitter() -> None:
    retry = RetryPolicy(5, frozenset(), 0.5, 4.0, "none")

    waits = [backoff.retry_wait_s(retry, attempt) for attempt in range(1, 7)]

    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@pytest.mark.parametrize(
    ("jitter", "low_share"),
    [pytest.param("full", 0.0, id="full"), pytest.param("equal", 0.5, id="equal")],
)
def test_jittered_waits_stay_in_range(jitter: policy.Jitter, low_share: float) -> None:
    random.seed(7)
    retry = RetryPolicy(5, frozenset(), 0.5, 4.0, jitter)

    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        floor = max(0.5, ceiling * low_share)
        waits = [backoff.retry_wait_s(retry, attempt) for _ in range(300)]
        assert min(waits) >= floor
        assert max(waits) <= ceiling
        if ceiling > floor:
            # Spread over the range, not stuck at one end.
            assert max(waits) - min(waits) > (ceiling - floor) * 0.8


@pytest.mark.parametrize("jitter", ["none", "full", "equal"])
@pytest.mark.parametrize(
    ("min_wait_s", "max_wait_s"),
    [
        pytest.param(1.0, 120.0, id="1s-120s"),
        pytest.param(4.0, 8.0, id="4s-8s"),
        pytest.param(20.0, 120.0, id="20s-120s"),
        pytest.param(5.0, 5.0, id="equal-bounds"),
    ],
)
def test_waits_never_below_min_wait(
    jitter: policy.Jitter, min_wait_s: float, max_wait_s: float
) -> None:
    random.seed(11)
    retry = RetryPolicy(5, frozenset(), min_wait_s, max_wait_s, jitter)

    for attempt in range(1, 12):
        waits = [backoff.retry_wait_s(retry, attempt) for _ in range(2000)]
        assert min(waits) >= min_wait_s, f"attempt {attempt}"
        assert max(waits) <= max_wait_s, f"attempt {attempt}"


def test_first_wait_is_min_wait() -> None:
    for jitter in ("none", "full", "equal"):
        retry = RetryPolicy(5, frozenset(), 3.0, 60.0, jitter)

        assert backoff.retry_wait_s(retry, 1) == 3.0, jitter


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("3", 3.0, id="seconds"),
        pytest.param(email.utils.formatdate(1_000_060, usegmt=True), 60.0, id="date"),
        pytest.param(email.utils.formatdate(999_000, usegmt=True), 0.0, id="past"),
        pytest.param("soon", None, id="invalid"),
        pytest.param("-5", None, id="negative"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert backoff.retry_after_s(value, now_s=1_000_000.0) == seconds


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(FunctionResult(204), "succeeded", id="2xx"),
        pytest.param(FunctionResult(429), "throttled", id="429"),
        pytest.param(FunctionResult(500), "retried", id="retry-code"),
        pytest.param(FunctionResult(418), "rejected", id="other-status"),
        pytest.param(FunctionResult(302), "rejected", id="redirect"),
        pytest.param(internal_error(503, "no response"), "retried", id="transport"),
        pytest.param(
            FunctionResult(400, headers=[("x-openfaas-internal", "proxy")]),
            "retried",
            id="internal",
        ),
    ],
)
def test_classify(result: FunctionResult, expected: str) -> None:
    assert handling.classify(result, DEFAULTS) == expected


async def test_slots_limit_and_close() -> None:
    slots = Slots(1)
    assert slots.reserve(REF, 2)
    assert slots.reserve(REF, 2)
    assert not slots.reserve(REF, 2)
    slots.unreserve(REF)
    assert slots.reserve(REF, 2)

    assert await slots.acquire()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)
    slots.release()
    assert await first
    slots.close()
    assert not await second
    assert not await slots.acquire()
