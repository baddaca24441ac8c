"""The filter of aiokafka's repeated errors, with an injected clock."""

import logging

from connectors.kafka.client_logs import RepeatedConnectionErrors

FETCH_TEMPLATE = "Failed fetch messages from %s: %s"
COORDINATOR_TEMPLATE = "Group Coordinator Request failed: %s"


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def error_record(template: str, *arguments: object) -> logging.LogRecord:
    return logging.LogRecord(
        "aiokafka.consumer.fetcher",
        logging.ERROR,
        __file__,
        1,
        template,
        arguments,
        None,
    )


def test_repeats_counted_on_next_line() -> None:
    clock = Clock()
    limiter = RepeatedConnectionErrors(interval_s=30.0, clock=clock)
    first = error_record(FETCH_TEMPLATE, 111, "NodeNotReadyError")
    repeats = [error_record(FETCH_TEMPLATE, 111, "NodeNotReadyError") for _ in range(5)]

    assert limiter.filter(first)
    for repeat in repeats:
        clock.now_s += 1.0
        assert not limiter.filter(repeat)
    clock.now_s += 30.0
    later = error_record(FETCH_TEMPLATE, 111, "NodeNotReadyError")
    assert limiter.filter(later)

    assert first.getMessage() == "Failed fetch messages from 111: NodeNotReadyError"
    assert later.getMessage() == (
        "Failed fetch messages from 111: NodeNotReadyError "
        "(5 more like this in the last 35 s, at DEBUG)"
    )


def test_kinds_and_brokers_limited_apart() -> None:
    limiter = RepeatedConnectionErrors(interval_s=30.0, clock=Clock())

    assert limiter.filter(error_record(FETCH_TEMPLATE, 111, "error"))
    assert limiter.filter(error_record(FETCH_TEMPLATE, 112, "error"))
    assert limiter.filter(error_record(COORDINATOR_TEMPLATE, "error"))
    assert not limiter.filter(error_record(COORDINATOR_TEMPLATE, "other error"))
    assert not limiter.filter(error_record(FETCH_TEMPLATE, 111, "other error"))


def test_other_lines_pass() -> None:
    limiter = RepeatedConnectionErrors(interval_s=30.0, clock=Clock())
    heartbeat = "Heartbeat send request failed: %s. Will retry."

    for _ in range(3):
        assert limiter.filter(error_record(heartbeat, "NodeNotReadyError"))


def test_reset_logs_next_line() -> None:
    limiter = RepeatedConnectionErrors(interval_s=30.0, clock=Clock())

    assert limiter.filter(error_record(COORDINATOR_TEMPLATE, "error"))
    limiter.reset()
    again = error_record(COORDINATOR_TEMPLATE, "error")

    assert limiter.filter(again)
    assert again.getMessage() == "Group Coordinator Request failed: error"
