"""The limit on `call finished` lines for successful calls."""

import logging

import pytest

from queue_worker import constants
from queue_worker.finished_log import FinishedLog
from tests.queue_worker.conftest import log_context


class StepClock:
    """Monotonic seconds that a test sets by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_successes_over_limit_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = StepClock()
    log = FinishedLog(clock=clock)
    over = 5

    for number in range(constants.FINISHED_LINES_PER_S + over):
        log.succeeded(lambda number=number: {"call_id": str(number)})
    clock.now_s += 1.0
    log.succeeded(lambda: {"call_id": "next"})

    lines = messages(caplog)
    assert lines.count("call finished") == constants.FINISHED_LINES_PER_S + 1
    assert lines.count("calls finished, not logged") == 1
    summary = next(
        record
        for record in caplog.records
        if record.getMessage() == "calls finished, not logged"
    )
    assert log_context(summary)["calls"] == over
    assert log_context(caplog.records[-1])["call_id"] == "next"


def test_flush_writes_pending_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = FinishedLog(clock=StepClock())
    for _ in range(constants.FINISHED_LINES_PER_S + 2):
        log.succeeded(dict)

    log.flush()
    log.flush()

    assert messages(caplog).count("calls finished, not logged") == 1
    assert log_context(caplog.records[-1])["calls"] == 2


def test_context_built_only_when_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log = FinishedLog(clock=StepClock())
    built = 0

    def context() -> dict[str, str]:
        nonlocal built
        built += 1
        return {}

    for _ in range(constants.FINISHED_LINES_PER_S * 3):
        log.succeeded(context)

    assert built == constants.FINISHED_LINES_PER_S
