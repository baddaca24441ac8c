"""Cron expressions with the meaning that cron(8) gives them.

An expression has five fields (minute, hour, day of month, month, day of
week) or six with a leading seconds field. Each field is `*` or a
comma-separated list of values, ranges (`1-5`) and steps (`*/15`, `0-30/10`,
and `5/15` for `5-59/15`). Months and days of the week take names (`JAN`,
`mon`), day of week 0 and 7 are both Sunday, and `?` means `*` in the two day
fields. The descriptors `@yearly` (`@annually`), `@monthly`, `@weekly`,
`@daily` (`@midnight`) and `@hourly` stand for their usual expressions.

Day of month and day of week combine as in crontab(5). When both fields are
restricted (neither starts with `*` or `?`), a day matches if either field
matches. Otherwise a day must match both, which for a field
starting with `*` (`*/2` too) leaves the other one to decide.

APScheduler's `CronTrigger` is not used because its meaning differs: its day
of week counts from Monday as 0, and it requires both day fields to match.

This module works on naive wall-clock times only; `connectors.cron.schedule`
maps them onto instants in a time zone.
"""

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from connectors.cron.errors import InvalidSchedule

DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN"]
        + ["JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
        start=1,
    )
}
_WEEKDAY_NAMES = {
    name: number
    for number, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])
}
# The maximum number of days of each month, February in a leap year.
_MAX_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: dict[str, int]


_SECOND = _FieldSpec("second", 0, 59, {})
_MINUTE = _FieldSpec("minute", 0, 59, {})
_HOUR = _FieldSpec("hour", 0, 23, {})
_DAY = _FieldSpec("day of month", 1, 31, {})
_MONTH = _FieldSpec("month", 1, 12, _MONTH_NAMES)
_WEEKDAY = _FieldSpec("day of week", 0, 7, _WEEKDAY_NAMES)


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron expression; `next_match()` finds its wall-clock times."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: tuple[int, ...]
    weekdays: frozenset[int]
    """0 is Sunday; a 7 in the expression is stored as 0."""
    days_restricted: bool
    weekdays_restricted: bool

    @property
    def every_hour(self) -> bool:
        """Whether the expression matches in every hour of a matching day."""
        return len(self.hours) == 24

    def matches_day(self, day: date) -> bool:
        """Tell whether `day` matches the month and the two day fields."""
        if day.month not in self.months:
            return False
        # date.weekday() counts from Monday as 0; cron counts from Sunday.
        weekday = (day.weekday() + 1) % 7
        day_matches = day.day in self.days
        weekday_matches = weekday in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_matches or weekday_matches
        return day_matches and weekday_matches

    def next_match(self, start: datetime, end: datetime) -> datetime | None:
        """Return the first matching wall time in [start, end), or None.

        Both bounds are naive; `start` should be a whole second.
        """
        current = start.replace(microsecond=0)
        if current < start:
            current += timedelta(seconds=1)
        while current < end:
            if not self.matches_day(current.date()):
                current = self._next_day(current)
                continue
            hour = _first_at_least(self.hours, current.hour)
            if hour is None:
                current = self._next_day(current)
                continue
            if hour != current.hour:
                current = current.replace(hour=hour, minute=0, second=0)
            minute = _first_at_least(self.minutes, current.minute)
            if minute is None:
                current = current.replace(minute=0, second=0) + timedelta(hours=1)
                continue
            if minute != current.minute:
                current = current.replace(minute=minute, second=0)
            second = _first_at_least(self.seconds, current.second)
            if second is None:
                current = current.replace(second=0) + timedelta(minutes=1)
                continue
            found = current.replace(second=second)
            return found if found < end else None
        return None

    def _next_day(self, current: datetime) -> datetime:
        midnight = datetime.combine(current.date(), datetime.min.time())
        following = midnight + timedelta(days=1)
        if following.month in self.months:
            return following
        # Jump to the first day of the next matching month.
        month = _first_at_least(self.months, following.month)
        if month is None:
            return following.replace(
                year=following.year + 1, month=self.months[0], day=1
            )
        return following.replace(month=month, day=1)


def parse_expression(text: str) -> CronExpression:
    """Parse a cron expression or descriptor; raise InvalidSchedule if invalid.

    `@every` is not an expression: `connectors.cron.schedule` handles it.
    """
    stripped = text.strip()
    expanded = DESCRIPTORS.get(stripped.lower(), stripped)
    if expanded.startswith("@"):
        raise InvalidSchedule(
            f"Unknown descriptor {stripped!r}: use @yearly, @annually, @monthly, "
            "@weekly, @daily, @midnight, @hourly or @every <duration>."
        )
    fields = expanded.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    elif len(fields) != 6:
        raise InvalidSchedule(
            f"Invalid cron expression {stripped!r}: it has {len(fields)} fields; "
            "use five (minute hour day-of-month month day-of-week) or six with "
            "a leading seconds field."
        )
    second, minute, hour, day, month, weekday = fields
    weekdays = frozenset(value % 7 for value in _parse_field(weekday, _WEEKDAY, text))
    expression = CronExpression(
        text=stripped,
        seconds=tuple(sorted(_parse_field(second, _SECOND, text))),
        minutes=tuple(sorted(_parse_field(minute, _MINUTE, text))),
        hours=tuple(sorted(_parse_field(hour, _HOUR, text))),
        days=frozenset(_parse_field(day, _DAY, text)),
        months=tuple(sorted(_parse_field(month, _MONTH, text))),
        weekdays=weekdays,
        days_restricted=not day.startswith(("*", "?")),
        weekdays_restricted=not weekday.startswith(("*", "?")),
    )
    _check_some_day_matches(expression)
    return expression


def _check_some_day_matches(expression: CronExpression) -> None:
    # Only the day of month can rule out every day (30 February), and only
    # when the day of week does not offer an alternative.
    if expression.days_restricted and expression.weekdays_restricted:
        return
    if any(
        day <= _MAX_MONTH_DAYS[month - 1]
        for month in expression.months
        for day in expression.days
    ):
        return
    raise InvalidSchedule(
        f"The cron expression {expression.text!r} never matches: none of its "
        "months has any of its days of the month."
    )


def _parse_field(field: str, spec: _FieldSpec, expression: str) -> set[int]:
    values: set[int] = set()
    for item in field.split(","):
        values.update(_parse_item(item, spec, expression))
    return values


def _parse_item(item: str, spec: _FieldSpec, expression: str) -> range:
    def invalid(reason: str) -> InvalidSchedule:
        return InvalidSchedule(
            f"Invalid {spec.name} field {item!r} in {expression!r}: {reason}."
        )

    if not item:
        raise invalid("an empty list entry")
    span, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or int(step_text) == 0:
            raise invalid("the step after '/' must be a positive whole number")
        step = int(step_text)

    wildcard = "*?" if spec in (_DAY, _WEEKDAY) else "*"
    if span in wildcard:
        # The day-of-week wildcard covers 0-6 only, so 7 never doubles Sunday.
        high = 6 if spec is _WEEKDAY else spec.high
        return range(spec.low, high + 1, step)
    low_text, dash, high_text = span.partition("-")
    low = _parse_value(low_text, spec, invalid)
    if dash:
        high = _parse_value(high_text, spec, invalid)
        if high < low:
            raise invalid(f"the range ends ({high}) before it starts ({low})")
    elif slash:
        # `5/15` runs from 5 to the field's maximum, as in `5-59/15`.
        high = 6 if spec is _WEEKDAY else spec.high
    else:
        high = low
    return range(low, high + 1, step)


def _parse_value(
    text: str, spec: _FieldSpec, invalid: Callable[[str], InvalidSchedule]
) -> int:
    named = spec.names.get(text.upper())
    if named is not None:
        return named
    if not text.isdigit():
        if spec.names:
            choices = ", ".join(spec.names)
            raise invalid(f"{text!r} is neither a number nor one of {choices}")
        raise invalid(f"{text!r} is not a whole number")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise invalid(f"{value} is outside {spec.low}-{spec.high}")
    return value


def _first_at_least(values: tuple[int, ...], minimum: int) -> int | None:
    index = bisect.bisect_left(values, minimum)
    return values[index] if index < len(values) else None
