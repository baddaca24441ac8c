"""Cron expressions and schedules: next fire times from fixed instants."""

from datetime import UTC, datetime

import pytest

from connectors.cron.errors import InvalidSchedule
from connectors.cron.schedule import parse_schedule


def fire_times(annotations: dict[str, str], start: str, count: int) -> list[str]:
    schedule = parse_schedule(annotations)
    instant = datetime.fromisoformat(start)
    found: list[str] = []
    for _ in range(count):
        following = schedule.next_fire(instant)
        assert following is not None
        found.append(following.strftime("%Y-%m-%dT%H:%M:%S"))
        instant = following
    return found


# Start instants and results are UTC. 2024-01-01 is a Monday.
EXPRESSION_CASES = [
    pytest.param(
        "*/5 * * * *",
        "2024-01-01T00:03:00",
        ["2024-01-01T00:05:00", "2024-01-01T00:10:00", "2024-01-01T00:15:00"],
        id="minute step",
    ),
    pytest.param(
        "0 9 * * 0",
        "2024-01-01T00:00:00",
        ["2024-01-07T09:00:00", "2024-01-14T09:00:00"],
        id="day of week 0 is Sunday",
    ),
    pytest.param(
        "0 9 * * 7",
        "2024-01-01T00:00:00",
        ["2024-01-07T09:00:00", "2024-01-14T09:00:00"],
        id="day of week 7 is Sunday",
    ),
    pytest.param(
        "0 9 * * 5-7",
        "2024-01-01T00:00:00",
        ["2024-01-05T09:00:00", "2024-01-06T09:00:00", "2024-01-07T09:00:00"],
        id="range ending in 7",
    ),
    pytest.param(
        "30 8 * * 1-5",
        "2024-01-05T09:00:00",
        ["2024-01-08T08:30:00", "2024-01-09T08:30:00"],
        id="weekday range skips the weekend",
    ),
    pytest.param(
        "0 12 * JAN,mar MON-FRI",
        "2024-01-31T13:00:00",
        ["2024-03-01T12:00:00", "2024-03-04T12:00:00"],
        id="names for months and days",
    ),
    pytest.param(
        "0 0 13 * 5",
        "2024-01-01T00:00:00",
        ["2024-01-05T00:00:00", "2024-01-12T00:00:00", "2024-01-13T00:00:00"],
        id="day of month or day of week",
    ),
    pytest.param(
        "0 0 */10 * 1",
        "2024-01-01T00:00:00",
        # `*/10` starts with `*`, so both fields must match: the 1st, 11th,
        # 21st or 31st that is a Monday.
        ["2024-03-11T00:00:00", "2024-04-01T00:00:00"],
        id="starred day of month and day of week",
    ),
    pytest.param(
        "0 0 29 2 *",
        "2024-03-01T00:00:00",
        ["2028-02-29T00:00:00"],
        id="leap day",
    ),
    pytest.param(
        "10-40/15 3 * * *",
        "2024-01-01T00:00:00",
        ["2024-01-01T03:10:00", "2024-01-01T03:25:00", "2024-01-01T03:40:00"],
        id="range with step",
    ),
    pytest.param(
        "5/20 * * * *",
        "2024-01-01T00:00:00",
        ["2024-01-01T00:05:00", "2024-01-01T00:25:00", "2024-01-01T00:45:00"],
        id="start with step",
    ),
    pytest.param(
        "*/20 * * * * *",
        "2024-01-01T00:00:30",
        ["2024-01-01T00:00:40", "2024-01-01T00:01:00", "2024-01-01T00:01:20"],
        id="six fields with seconds",
    ),
    pytest.param(
        "@every 90s",
        "2024-01-01T00:00:00",
        ["2024-01-01T00:01:30", "2024-01-01T00:03:00", "2024-01-01T00:04:30"],
        id="every 90s",
    ),
    pytest.param(
        "@every 1h30m",
        "2024-01-01T00:10:00",
        ["2024-01-01T01:30:00", "2024-01-01T03:00:00"],
        id="every with two units",
    ),
    pytest.param(
        "0 6 * * *; 30 18 * * *",
        "2024-01-01T07:00:00",
        ["2024-01-01T18:30:00", "2024-01-02T06:00:00", "2024-01-02T18:30:00"],
        id="two entries",
    ),
    pytest.param(
        "@hourly; 0 0 * * *",
        "2024-01-01T22:30:00",
        ["2024-01-01T23:00:00", "2024-01-02T00:00:00", "2024-01-02T01:00:00"],
        id="entries firing at the same instant",
    ),
    pytest.param(
        "@daily",
        "2024-01-01T00:00:00",
        ["2024-01-02T00:00:00", "2024-01-03T00:00:00"],
        id="daily",
    ),
    pytest.param(
        "@weekly",
        "2024-01-01T00:00:00",
        ["2024-01-07T00:00:00", "2024-01-14T00:00:00"],
        id="weekly on Sunday",
    ),
    pytest.param(
        "@monthly",
        "2024-01-15T00:00:00",
        ["2024-02-01T00:00:00", "2024-03-01T00:00:00"],
        id="monthly",
    ),
    pytest.param(
        "@yearly",
        "2024-06-01T00:00:00",
        ["2025-01-01T00:00:00", "2026-01-01T00:00:00"],
        id="yearly",
    ),
    pytest.param(
        "CRON_TZ=Asia/Tokyo 0 9 * * *",
        "2024-01-01T00:00:00",
        ["2024-01-02T00:00:00", "2024-01-03T00:00:00"],
        id="CRON_TZ prefix",
    ),
]


@pytest.mark.parametrize(("expression", "start", "expected"), EXPRESSION_CASES)
def test_next_fire_times(expression: str, start: str, expected: list[str]) -> None:
    found = fire_times({"schedule": expression}, start + "+00:00", len(expected))
    assert found == expected


def test_zone_annotation_applies() -> None:
    annotations = {"schedule": "0 9 * * *", "com.faashub.cron.timezone": "Asia/Tokyo"}
    found = fire_times(annotations, "2024-01-01T00:00:00+00:00", 1)
    assert found == ["2024-01-02T00:00:00"]


def test_prefix_overrides_zone_annotation() -> None:
    annotations = {
        "schedule": "CRON_TZ=UTC 0 9 * * *; 0 9 * * *",
        "com.faashub.cron.timezone": "Asia/Tokyo",
    }
    found = fire_times(annotations, "2024-01-01T01:00:00+00:00", 2)
    assert found == ["2024-01-01T09:00:00", "2024-01-02T00:00:00"]


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        pytest.param({"schedule": ""}, "missing or empty", id="empty"),
        pytest.param({"schedule": "* * * *"}, "it has 4 fields", id="four fields"),
        pytest.param({"schedule": "61 * * * *"}, "61 is outside 0-59", id="minute"),
        pytest.param({"schedule": "0 0 * * MOO"}, "'MOO' is neither", id="day name"),
        pytest.param({"schedule": "0 0 * * 5-2"}, "the range ends", id="reversed"),
        pytest.param({"schedule": "*/0 * * * *"}, "step after", id="zero step"),
        pytest.param({"schedule": "0 0 30 2 *"}, "never matches", id="30 February"),
        pytest.param({"schedule": "@fortnightly"}, "Unknown descriptor", id="descr"),
        pytest.param({"schedule": "@every 500ms"}, "shorter than 1 s", id="short"),
        pytest.param({"schedule": "@every 5 minutes"}, "Invalid @every", id="every"),
        pytest.param(
            {"schedule": "@every 876001h"}, "longer than 100 years", id="long"
        ),
        pytest.param(
            {"schedule": "@every 99999999999999999999h"},
            "at most '876000h'",
            id="huge",
        ),
        pytest.param(
            {"schedule": "@every 80000000h; * * * * *"},
            "longer than 100 years",
            id="long among entries",
        ),
        pytest.param({"schedule": "@every \u0663s"}, "Invalid @every", id="digit"),
        pytest.param({"schedule": " ; "}, "no entry", id="only separators"),
        pytest.param(
            {"schedule": "CRON_TZ=Mars/Olympus 0 9 * * *"},
            "Unknown time zone 'Mars/Olympus' in CRON_TZ",
            id="prefix zone",
        ),
        pytest.param(
            {"schedule": "0 9 * * *", "com.faashub.cron.timezone": "Europe/Nowhere"},
            "Unknown time zone 'Europe/Nowhere'",
            id="zone annotation",
        ),
        pytest.param(
            {"schedule": "0 9 * * *", "com.faashub.cron.missed-runs": "all"},
            "use 'skip'",
            id="missed-run policy",
        ),
        pytest.param(
            {"schedule": "0 9 * * *", "com.faashub.cron.overlap": "yes"},
            "use 'forbid'",
            id="overlap",
        ),
    ],
)
def test_invalid_schedule_rejected(annotations: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message.replace("(", r"\(")):
        parse_schedule(annotations)


def test_longest_every_accepted() -> None:
    schedule = parse_schedule({"schedule": "@every 876000h"})

    assert schedule.next_fire(datetime(2024, 1, 1, tzinfo=UTC)) == datetime(
        2069, 12, 7, tzinfo=UTC
    )


def test_no_tick_before_9999_is_none(caplog: pytest.LogCaptureFixture) -> None:
    schedule = parse_schedule({"schedule": "@every 876000h"})

    assert schedule.next_fire(datetime(9970, 1, 1, tzinfo=UTC)) is None
    assert "no tick before the year 9999" in caplog.text


def test_schedule_options_parsed() -> None:
    schedule = parse_schedule(
        {
            "schedule": "@hourly",
            "com.faashub.cron.body": '{"report": "daily"}',
            "com.faashub.cron.missed-runs": "once",
            "com.faashub.cron.overlap": "allow",
        }
    )
    assert schedule.body == b'{"report": "daily"}'
    assert schedule.missed_runs == "once"
    assert schedule.allow_overlap
    assert schedule.next_fire(datetime(2024, 1, 1, tzinfo=UTC)) == datetime(
        2024, 1, 1, 1, tzinfo=UTC
    )
