"""`faashub.logs.LimitedWarning`: one WARNING per interval, repeats at DEBUG.

The gateway and the Kubernetes provider share this class. The tests drive it
with an injected clock. The last one calls it from several threads at once,
as the provider's pod log readers and API threads do.
"""

import logging
import threading

import pytest

from faashub.logs import LimitedWarning

LOGGER_NAME = "tests.limited_warning"
COUNT_FIELD = "repeats_held_back"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def make_warning(clock: FakeClock, interval_s: float = 10.0) -> LimitedWarning:
    return LimitedWarning(
        logging.getLogger(LOGGER_NAME), interval_s=interval_s, clock=clock
    )


def test_repeats_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    warning = make_warning(clock)

    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        warning.warning("failed %s", "first", ctx={"call_id": "1"})
        clock.now_s += 5.0
        warning.warning("failed %s", "second", ctx={"call_id": "2"})
        warning.warning("failed %s", "third", ctx={"call_id": "3"})
        clock.now_s += 5.0
        warning.warning("failed %s", "fourth", ctx={"call_id": "4"})

    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert levels == [
        (logging.WARNING, "failed first"),
        (logging.DEBUG, "failed second"),
        (logging.DEBUG, "failed third"),
        (logging.WARNING, "failed fourth"),
    ]
    assert vars(caplog.records[0])["ctx"] == {"call_id": "1"}
    assert vars(caplog.records[1])["ctx"] == {"call_id": "2"}
    assert vars(caplog.records[3])["ctx"] == {"call_id": "4", COUNT_FIELD: 2}


def test_warning_level_sees_one_line(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    warning = make_warning(clock, interval_s=30.0)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        warning.warning("call failed: %s", "first", ctx={"function": "fn"})
        clock.now_s += 10.0
        warning.warning("call failed: %s", "second", ctx={"function": "fn"})
        clock.now_s += 19.9
        warning.warning("call failed: %s", "third", ctx={"function": "fn"})

    assert [record.getMessage() for record in caplog.records] == ["call failed: first"]
    assert caplog.records[0].levelno == logging.WARNING


def test_count_resets_after_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    warning = make_warning(clock, interval_s=30.0)

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        warning.warning("call failed: %s", "first", ctx={"function": "fn"})
        for _ in range(3):
            clock.now_s += 5.0
            warning.warning("call failed: %s", "again", ctx={"function": "fn"})
        clock.now_s += 15.0
        warning.warning("call failed: %s", "late", ctx={"function": "fn"})
        clock.now_s += 30.0
        warning.warning("call failed: %s", "later", ctx={"function": "fn"})

    records = caplog.records
    assert [record.getMessage() for record in records] == [
        "call failed: first",
        "call failed: late",
        "call failed: later",
    ]
    assert vars(records[0])["ctx"] == {"function": "fn"}
    assert vars(records[1])["ctx"] == {"function": "fn", COUNT_FIELD: 3}
    assert vars(records[2])["ctx"] == {"function": "fn"}


def test_record_names_caller(caplog: pytest.LogCaptureFixture) -> None:
    warning = make_warning(FakeClock())

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        warning.warning("failed", ctx={})

    assert caplog.records[0].pathname == __file__


def test_threads_count_every_repeat(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    warning = make_warning(clock)
    threads_count = 8
    calls_per_thread = 500
    start = threading.Barrier(threads_count)

    def repeat() -> None:
        start.wait()
        for _ in range(calls_per_thread):
            warning.warning("failed", ctx={})

    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        threads = [threading.Thread(target=repeat) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        clock.now_s += 10.0
        warning.warning("failed", ctx={})

    assert len(caplog.records) == 2
    total = threads_count * calls_per_thread
    assert vars(caplog.records[1])["ctx"] == {COUNT_FIELD: total - 1}
