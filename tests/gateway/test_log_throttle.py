"""`WarningThrottle`: repeated failures reach WARNING at most once per interval."""

import logging

import pytest

from gateway.log_throttle import WarningThrottle

LOGGER_NAME = "tests.gateway.throttled"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_throttle_holds_back_repeats(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    throttle = WarningThrottle(
        logging.getLogger(LOGGER_NAME), interval_s=10.0, clock=clock
    )

    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        throttle.warning("failed %s", "first", ctx={"call_id": "1"})
        clock.now_s += 5.0
        throttle.warning("failed %s", "second", ctx={"call_id": "2"})
        throttle.warning("failed %s", "third", ctx={"call_id": "3"})
        clock.now_s += 5.0
        throttle.warning("failed %s", "fourth", ctx={"call_id": "4"})

    levels = [(record.levelno, record.getMessage()) for record in caplog.records]
    assert levels == [
        (logging.WARNING, "failed first"),
        (logging.DEBUG, "failed second"),
        (logging.DEBUG, "failed third"),
        (logging.WARNING, "failed fourth"),
    ]
    assert vars(caplog.records[1])["ctx"] == {"call_id": "2"}
    assert vars(caplog.records[3])["ctx"] == {"call_id": "4", "repeats_held_back": 2}
