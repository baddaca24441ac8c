"""`faashub.logs.LimitedLines`: the summary line of the lines it did not write."""

import json
import logging

import pytest

from faashub import logs

LOGGER_NAME = "tests.limited_lines"


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_summary_fields_are_numbers_in_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = FakeClock()
    lines = logs.LimitedLines(
        logging.getLogger(LOGGER_NAME),
        "function invoked",
        per_second=2,
        summary="function invocations not logged",
        count_field="invocations",
        clock=clock,
    )
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.configure(level="INFO", log_format="json")
        for _ in range(5):
            lines.write(dict)
        clock.now_s += 1.26
        lines.flush()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    [summary] = [
        entry
        for entry in entries
        if entry["message"] == "function invocations not logged"
    ]
    assert summary["invocations"] == 3
    assert summary["over_s"] == 1.3
    assert summary["max_lines_per_s"] == 2
