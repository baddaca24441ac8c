"""A function's schedule: its annotations turned into fire instants.

`parse_schedule(annotations)` reads the `schedule` annotation and the
`com.faashub.cron.*` ones (time zone, body, missed-run policy, overlap) and
returns a `Schedule`, or raises `InvalidSchedule` naming the bad value.

The `schedule` annotation contains one or more entries separated by `;`. Each
entry is a cron expression or descriptor (see `connectors.cron.expression`),
optionally prefixed by `CRON_TZ=<IANA zone> ` (or `TZ=`), or `@every
<duration>` such as `@every 90s` or `@every 1h30m`. An entry without a prefix
uses the zone of the `com.faashub.cron.timezone` annotation, UTC by default.
`@every` ticks are whole multiples of the interval since the Unix epoch, so
every replica computes the same ticks and no zone applies to them.

Each entry is an APScheduler 3 trigger: `CronTrigger` below for
expressions and APScheduler's `IntervalTrigger` for `@every`, combined with
its `OrTrigger` when there are several. Triggers are called with
`previous_fire_time=None` and return the first instant at or after `now`.

Daylight-saving time, for expressions in a zone that has it:

* a wall-clock time that a spring-forward skips (02:30 on the last Sunday of
  March in Europe/Berlin) fires once, at the end of the gap (03:00 CEST).
  Several skipped times of one night fire that single run together;
* a wall-clock time that the autumn change repeats fires once, at its first
  occurrence, unless the expression matches every hour (`*/15 * * * *`);
  such expressions follow elapsed time and fire in both passes, as cron(8)
  does for jobs with `*` in the hour field.
"""

import functools
import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.interval import IntervalTrigger

from connectors.cron import constants
from connectors.cron.errors import InvalidSchedule
from connectors.cron.expression import CronExpression, parse_expression

logger = logging.getLogger(__name__)

MissedRunPolicy = Literal["skip", "once"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)
_UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Zulu", "Zulu"})
# ASCII digits only: `\d` and float() also take other Unicode digits.
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_DURATION_UNITS_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Annotations that define a schedule; a change to any of them replaces it.
SCHEDULE_ANNOTATIONS = (
    constants.ANNOTATION_SCHEDULE,
    constants.ANNOTATION_TIMEZONE,
    constants.ANNOTATION_BODY,
    constants.ANNOTATION_MISSED_RUNS,
    constants.ANNOTATION_OVERLAP,
)


class CronTrigger(BaseTrigger):  # type: ignore[misc]
    """An APScheduler trigger for a cron expression in a time zone."""

    __slots__ = ("expression", "zone")

    def __init__(self, expression: CronExpression, zone: ZoneInfo) -> None:
        self.expression = expression
        self.zone = zone

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        """Return the first fire instant at or after `now`, in UTC.

        With `previous_fire_time`, the result is also later than it. None
        means that the expression never matches again within the search span.
        """
        start = _ceil_second(now.astimezone(UTC))
        if previous_fire_time is not None:
            start = max(
                start, _ceil_second(previous_fire_time.astimezone(UTC)) + _ONE_SECOND
            )
        horizon = start + timedelta(days=366 * constants.SEARCH_YEARS)
        if self.zone.key in _UTC_KEYS:
            wall = self.expression.next_match(_naive(start), _naive(horizon))
            return None if wall is None else wall.replace(tzinfo=UTC)
        return self._next_in_zone(start, horizon)

    def _next_in_zone(self, start: datetime, horizon: datetime) -> datetime | None:
        # Walk the segments between the zone's offset changes. Inside one,
        # wall time and UTC differ by a fixed offset.
        expression = self.expression
        segment_start = start
        while segment_start < horizon:
            offset = _offset_at(self.zone, segment_start)
            previous = _previous_transition(self.zone, segment_start)
            lower_wall = _naive(segment_start + offset)
            if previous is not None:
                offset_before = _offset_at(self.zone, previous - _ONE_SECOND)
                if previous == segment_start and offset > offset_before:
                    # Wall times skipped by this spring-forward fire now.
                    gap = expression.next_match(
                        _naive(previous + offset_before), _naive(previous + offset)
                    )
                    if gap is not None:
                        return segment_start
                if offset < offset_before and not expression.every_hour:
                    # The autumn change repeats these wall times; they fired
                    # in the first pass.
                    lower_wall = max(lower_wall, _naive(previous + offset_before))
            segment_end = _next_transition(self.zone, segment_start) or horizon
            wall = expression.next_match(lower_wall, _naive(segment_end + offset))
            if wall is not None:
                return wall.replace(tzinfo=UTC) - offset
            segment_start = segment_end
        return None

    def __str__(self) -> str:
        return f"cron[{self.expression.text}, {self.zone.key}]"


@dataclass(frozen=True, slots=True)
class Schedule:
    """Everything the connector needs to run one function on time."""

    text: str
    """The `schedule` annotation as written."""
    trigger: BaseTrigger
    zone: str
    """The default zone of the entries: the annotation's, or UTC."""
    body: bytes
    missed_runs: MissedRunPolicy
    allow_overlap: bool
    annotations: tuple[tuple[str, str], ...]
    """The annotations it was parsed from; equal values give an equal schedule."""

    def next_fire(self, after: datetime) -> datetime | None:
        """Return the first tick strictly later than `after`, in UTC."""
        lower_bound = after.astimezone(UTC) + timedelta(microseconds=1)
        try:
            next_fire: datetime | None = self.trigger.get_next_fire_time(
                None, lower_bound
            )
        except (OverflowError, ValueError):
            # The next tick would fall after the year 9999, so none comes.
            logger.warning(
                "schedule has no tick before the year 9999 after %s; it stops",
                after.isoformat(),
                extra={"ctx": {"schedule": self.text}},
            )
            return None
        return None if next_fire is None else next_fire.astimezone(UTC)

    def fingerprint(self) -> str:
        """Return a digest of the schedule annotations, equal for equal schedules."""
        encoded = json.dumps(self.annotations, ensure_ascii=False).encode()
        return hashlib.sha256(encoded).hexdigest()


def schedule_annotations(annotations: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Return the annotations that define a schedule, in a fixed order."""
    return tuple(
        (name, annotations[name])
        for name in SCHEDULE_ANNOTATIONS
        if name in annotations
    )


def parse_schedule(annotations: Mapping[str, str]) -> Schedule:
    """Build a function's `Schedule` from its annotations; raise InvalidSchedule."""
    text = annotations.get(constants.ANNOTATION_SCHEDULE, "").strip()
    if not text:
        raise InvalidSchedule(
            f"The {constants.ANNOTATION_SCHEDULE!r} annotation is missing or empty: "
            "set a cron expression such as '*/5 * * * *'."
        )
    zone_name = annotations.get(constants.ANNOTATION_TIMEZONE, "").strip() or "UTC"
    zone = load_zone(zone_name, source=constants.ANNOTATION_TIMEZONE)
    triggers = [
        parse_entry(entry, default_zone=zone)
        for entry in text.split(constants.SCHEDULE_DELIMITER)
        if entry.strip()
    ]
    if not triggers:
        raise InvalidSchedule(
            f"The schedule {text!r} has no entry between its ';' separators."
        )
    return Schedule(
        text=text,
        trigger=triggers[0] if len(triggers) == 1 else OrTrigger(triggers),
        zone=zone.key,
        body=annotations.get(constants.ANNOTATION_BODY, "").encode(),
        missed_runs=_missed_run_policy(annotations),
        allow_overlap=_allow_overlap(annotations),
        annotations=schedule_annotations(annotations),
    )


def parse_entry(entry: str, *, default_zone: ZoneInfo) -> BaseTrigger:
    """Parse one `;`-separated schedule entry into a trigger."""
    entry = entry.strip()
    zone = default_zone
    for prefix in constants.ZONE_PREFIXES:
        if entry.startswith(prefix):
            zone_name, _, entry = entry[len(prefix) :].partition(" ")
            zone = load_zone(zone_name, source=prefix.rstrip("="))
            entry = entry.strip()
            break
    if entry.lower().startswith("@every"):
        interval_s = parse_duration_s(entry[len("@every") :].strip())
        return IntervalTrigger(seconds=interval_s, start_date=EPOCH, timezone=UTC)
    return CronTrigger(parse_expression(entry), zone)


def parse_duration_s(text: str) -> float:
    """Parse an `@every` duration such as `90s` or `1h30m` into seconds."""
    position = 0
    total_s = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total_s += float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise InvalidSchedule(
            f"Invalid @every duration {text!r}: write numbers with the units h, m, "
            "s or ms, such as '90s', '1m30s' or '2h'."
        )
    if total_s < constants.MIN_EVERY_S:
        raise InvalidSchedule(
            f"The @every duration {text!r} is shorter than "
            f"{constants.MIN_EVERY_S:g} s; use at least '1s'."
        )
    # Also catches a sum that float() made infinite.
    if not total_s <= constants.MAX_EVERY_S:
        raise InvalidSchedule(
            f"The @every duration {text!r} is longer than 100 years; use at most "
            f"'{constants.MAX_EVERY_TEXT}', or a cron expression such as "
            "'0 0 1 1 *' for a yearly run."
        )
    return total_s


def load_zone(name: str, *, source: str) -> ZoneInfo:
    """Return the IANA time zone `name`; raise InvalidSchedule if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSchedule(
            f"Unknown time zone {name!r} in {source}: use an IANA name such as "
            "'Europe/Berlin' or 'UTC'."
        ) from exc


def _missed_run_policy(annotations: Mapping[str, str]) -> MissedRunPolicy:
    value = annotations.get(constants.ANNOTATION_MISSED_RUNS, "skip").strip().lower()
    if value == "skip":
        return "skip"
    if value == "once":
        return "once"
    raise InvalidSchedule(
        f"Invalid {constants.ANNOTATION_MISSED_RUNS} value {value!r}: use 'skip' "
        "(the default) or 'once'."
    )


def _allow_overlap(annotations: Mapping[str, str]) -> bool:
    value = annotations.get(constants.ANNOTATION_OVERLAP, "forbid").strip().lower()
    if value in ("forbid", "allow"):
        return value == "allow"
    raise InvalidSchedule(
        f"Invalid {constants.ANNOTATION_OVERLAP} value {value!r}: use 'forbid' "
        "(the default) or 'allow'."
    )


def _ceil_second(instant: datetime) -> datetime:
    if instant.microsecond == 0:
        return instant
    return instant.replace(microsecond=0) + _ONE_SECOND


def _naive(instant: datetime) -> datetime:
    return instant.replace(tzinfo=None)


def _offset_at(zone: tzinfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


@functools.lru_cache(maxsize=512)
def _transitions(zone: ZoneInfo, year: int) -> tuple[datetime, ...]:
    """Return the UTC instants in `year` at which the zone's offset changes.

    zoneinfo has no public list of transitions, so the offset is probed once
    a day and each change is narrowed down to the second.
    """
    # NOTE: two offset changes within one UTC day that cancel out are not
    # seen. This was not checked against every zone of the IANA database.
    found: list[datetime] = []
    day = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    offset = _offset_at(zone, day)
    while day < end:
        following = day + timedelta(days=1)
        following_offset = _offset_at(zone, following)
        if following_offset != offset:
            found.append(_narrow_transition(zone, day, following, offset))
            offset = following_offset
        day = following
    return tuple(found)


def _narrow_transition(
    zone: ZoneInfo, low: datetime, high: datetime, offset: timedelta
) -> datetime:
    # The offset at `low` is `offset` and differs at `high`: bisect to the
    # first second with the new offset.
    while high - low > _ONE_SECOND:
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if _offset_at(zone, middle) == offset:
            low = middle
        else:
            high = middle
    return high


def _next_transition(zone: ZoneInfo, after: datetime) -> datetime | None:
    for year in range(after.year, after.year + constants.SEARCH_YEARS + 1):
        for transition in _transitions(zone, year):
            if transition > after:
                return transition
    return None


def _previous_transition(zone: ZoneInfo, instant: datetime) -> datetime | None:
    for year in (instant.year, instant.year - 1):
        for transition in reversed(_transitions(zone, year)):
            if transition <= instant:
                return transition
    return None
