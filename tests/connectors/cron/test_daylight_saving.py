"""Schedules across daylight-saving changes in Europe/Berlin and America/New_York.

Berlin springs forward at 01:00 UTC on 2024-03-31 (02:00 CET becomes 03:00
CEST) and falls back at 01:00 UTC on 2024-10-27 (03:00 CEST becomes 02:00
CET). New York springs forward at 07:00 UTC on 2024-03-10 and falls back at
06:00 UTC on 2024-11-03.
"""

from datetime import datetime

import pytest

from connectors.cron.schedule import parse_schedule


def utc_fire_times(expression: str, zone: str, start: str, count: int) -> list[str]:
    schedule = parse_schedule(
        {"schedule": expression, "com.faashub.cron.timezone": zone}
    )
    instant = datetime.fromisoformat(start + "+00:00")
    found: list[str] = []
    for _ in range(count):
        following = schedule.next_fire(instant)
        assert following is not None
        found.append(following.strftime("%m-%dT%H:%M"))
        instant = following
    return found


@pytest.mark.parametrize(
    ("expression", "zone", "start", "expected"),
    [
        pytest.param(
            "30 2 * * *",
            "Europe/Berlin",
            "2024-03-30T00:00:00",
            # 02:30 CET, then the skipped 02:30 fires at 03:00 CEST, then CEST.
            ["03-30T01:30", "03-31T01:00", "04-01T00:30"],
            id="Berlin skipped time fires at the end of the gap",
        ),
        pytest.param(
            "0 2,3 * * *",
            "Europe/Berlin",
            "2024-03-30T12:00:00",
            # 02:00 is skipped and 03:00 is the end of the gap: one run.
            ["03-31T01:00", "04-01T00:00", "04-01T01:00"],
            id="Berlin skipped and following time fire once",
        ),
        pytest.param(
            "0 9 * * *",
            "Europe/Berlin",
            "2024-03-30T00:00:00",
            ["03-30T08:00", "03-31T07:00"],
            id="Berlin morning time follows the offset",
        ),
        pytest.param(
            "30 2 * * *",
            "Europe/Berlin",
            "2024-10-26T12:00:00",
            # 02:30 happens twice on 10-27; only the first (CEST) fires.
            ["10-27T00:30", "10-28T01:30"],
            id="Berlin repeated time fires once",
        ),
        pytest.param(
            "0,30 * * * *",
            "Europe/Berlin",
            "2024-10-26T23:45:00",
            # Every half hour of elapsed time, through both 02:xx passes.
            ["10-27T00:00", "10-27T00:30", "10-27T01:00", "10-27T01:30"],
            id="Berlin hourly schedule runs through both passes",
        ),
        pytest.param(
            "30 2 * * *",
            "America/New_York",
            "2024-03-09T12:00:00",
            ["03-10T07:00", "03-11T06:30"],
            id="New York skipped time fires at the end of the gap",
        ),
        pytest.param(
            "30 1 * * *",
            "America/New_York",
            "2024-11-02T12:00:00",
            # 01:30 EDT (05:30 UTC) fires; 01:30 EST (06:30 UTC) does not.
            ["11-03T05:30", "11-04T06:30"],
            id="New York repeated time fires once",
        ),
        pytest.param(
            "*/30 * * * *",
            "America/New_York",
            "2024-11-03T05:15:00",
            ["11-03T05:30", "11-03T06:00", "11-03T06:30", "11-03T07:00"],
            id="New York hourly schedule runs through both passes",
        ),
        pytest.param(
            "*/30 * * * *",
            "America/New_York",
            "2024-03-10T06:15:00",
            # 01:30 EST, then 03:00 EDT: the gap has no extra run.
            ["03-10T06:30", "03-10T07:00", "03-10T07:30"],
            id="New York hourly schedule across the gap",
        ),
    ],
)
def test_daylight_saving_fire_times(
    expression: str, zone: str, start: str, expected: list[str]
) -> None:
    assert utc_fire_times(expression, zone, start, len(expected)) == expected
