"""Prometheus metrics of the cron connector, beside the shared connector ones.

They are registered in the connector's own registry, so `/metrics` serves
them with the shared `faashub_connector_*` families:

* `faashub_cron_ticks_skipped_total` (function, reason): ticks that fired no
  run, because the previous run was still going (`overlap`) or the tick was
  missed under the `skip` policy or replaced by a catch-up run (`missed`);
* `faashub_cron_schedule_invalid` (function): 1 while the function's
  schedule annotations cannot be used, with the reason in the log;
* `faashub_cron_next_fire_timestamp_seconds` (function): the next tick, in
  Unix seconds;
* `faashub_cron_schedule_info` (function, schedule, timezone, error): always
  1, one series per function that has a `schedule` annotation. It is the
  status listing: the schedule as written, its zone, and why it is invalid
  ("" when it is valid).

The label children of the per-tick metrics (skips and next tick) are cached
per function, because a connector with thousands of schedules updates them
thousands of times a second, and each `labels()` call validates and looks up
the label values again.
"""

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge


class CronMetrics:
    """The cron-specific metrics of one connector process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._skipped = Counter(
            "faashub_cron_ticks_skipped",
            "Ticks that fired no run, by reason (overlap or missed).",
            ["function", "reason"],
            registry=registry,
        )
        self._invalid = Gauge(
            "faashub_cron_schedule_invalid",
            "1 while a function's schedule annotations cannot be used.",
            ["function"],
            registry=registry,
        )
        self._next_fire = Gauge(
            "faashub_cron_next_fire_timestamp_seconds",
            "The next tick of a function's schedule, in Unix seconds.",
            ["function"],
            registry=registry,
        )

        self._info = Gauge(
            "faashub_cron_schedule_info",
            "Always 1: the schedule of each function, and its error if invalid.",
            ["function", "schedule", "timezone", "error"],
            registry=registry,
        )
        self._info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._skipped_children: dict[tuple[str, str], Counter] = {}
        self._next_fire_children: dict[str, Gauge] = {}

    def skipped(self, function: str, reason: str, *, count: int = 1) -> None:
        """Count ticks of `function` that fired no run."""
        key = (function, reason)
        child = self._skipped_children.get(key)
        if child is None:
            child = self._skipped_children[key] = self._skipped.labels(*key)
        child.inc(count)

    def set_status(
        self, function: str, *, schedule: str, timezone: str, error: str
    ) -> None:
        """Publish a function's schedule and its error ("" when valid)."""
        self._invalid.labels(function).set(1 if error else 0)
        labels = (function, schedule, timezone, error)
        previous = self._info_labels.get(function)
        if previous == labels:
            return
        if previous is not None:
            self._info.remove(*previous)
        self._info.labels(*labels).set(1)
        self._info_labels[function] = labels

    def forget_status(self, function: str) -> None:
        """Drop the status of a function that no longer has a schedule."""
        _remove(self._invalid, function)
        previous = self._info_labels.pop(function, None)
        if previous is not None:
            self._info.remove(*previous)

    def set_next_fire(self, function: str, instant: datetime | None) -> None:
        """Set the next tick of `function`; None drops the gauge."""
        if instant is None:
            self._next_fire_children.pop(function, None)
            _remove(self._next_fire, function)
            return
        child = self._next_fire_children.get(function)
        if child is None:
            child = self._next_fire_children[function] = self._next_fire.labels(
                function
            )
        child.set(instant.timestamp())

    def forget(self, function: str) -> None:
        """Drop the gauges of a function that is no longer scheduled."""
        self._next_fire_children.pop(function, None)
        _remove(self._next_fire, function)


def _remove(gauge: Gauge, function: str) -> None:
    try:
        gauge.remove(function)
    except KeyError:
        pass
