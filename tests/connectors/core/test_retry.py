"""Retry classification and waits, computed without sleeping."""

import email.utils

import pytest

from connectors.core.retry import (
    RetryPolicy,
    is_retryable,
    is_success,
    parse_retry_after,
)


@pytest.mark.parametrize(
    ("status", "success", "retryable"),
    [
        pytest.param(200, True, False, id="200"),
        pytest.param(202, True, False, id="202"),
        pytest.param(302, False, False, id="302-final"),
        pytest.param(400, False, False, id="400-final"),
        pytest.param(404, False, False, id="404-final"),
        pytest.param(413, False, False, id="413-final"),
        pytest.param(429, False, True, id="429-retried"),
        pytest.param(500, False, True, id="500-retried"),
        pytest.param(502, False, True, id="502-retried"),
        pytest.param(504, False, True, id="504-retried"),
    ],
)
def test_status_classification(status: int, success: bool, retryable: bool) -> None:
    assert is_success(status) is success
    assert is_retryable(status) is retryable


def test_waits_double_within_bounds() -> None:
    policy = RetryPolicy(attempts=10, min_wait_s=1.0, max_wait_s=10.0)

    waits = [policy.wait_s(number) for number in range(1, 8)]

    # Each wait is the doubled base plus up to half the minimum of jitter.
    for number, wait_s in enumerate(waits[:4], start=1):
        base_s = 2 ** (number - 1)
        assert base_s <= wait_s <= base_s + 0.5
    assert waits[4:] == [10.0, 10.0, 10.0]


def test_retry_after_raises_wait_up_to_maximum() -> None:
    policy = RetryPolicy(attempts=3, min_wait_s=0.1, max_wait_s=5.0)

    assert policy.wait_s(1, retry_after_s=3.0) == 3.0
    assert policy.wait_s(1, retry_after_s=60.0) == 5.0
    assert policy.wait_s(1, retry_after_s=0.0) < 1.0


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        pytest.param(429, "7", 7.0, id="429-seconds"),
        pytest.param(503, "2", 2.0, id="503-seconds"),
        pytest.param(500, "7", None, id="500-ignored"),
        pytest.param(429, None, None, id="absent"),
        pytest.param(429, "soon", None, id="garbage"),
    ],
)
def test_retry_after_header(
    status: int, header: str | None, expected: float | None
) -> None:
    policy = RetryPolicy(attempts=3, min_wait_s=0.1, max_wait_s=5.0)

    assert policy.retry_after_s(status, header) == expected


def test_retry_after_http_date() -> None:
    now_s = 1_700_000_000.0
    header = email.utils.formatdate(now_s + 30, usegmt=True)

    assert parse_retry_after(header, now_s=now_s) == pytest.approx(30.0)
    assert (
        parse_retry_after(email.utils.formatdate(now_s - 30, usegmt=True), now_s=now_s)
        == 0.0
    )
