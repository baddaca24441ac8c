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

The values live in plain dicts, and a collector turns them into metric
families when `/metrics` is read. A connector with thousands of schedules
updates them thousands of times a second. Each prometheus_client 0.26 child
takes a lock on every update and costs about 0.8 KiB, while a dict update is
a store. The connector reads and writes them on its event loop thread only.
"""

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector


class CronMetrics(Collector):
    """The cron-specific metrics of one connector process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._skipped: dict[tuple[str, str], int] = {}
        self._status: dict[str, tuple[str, str, str]] = {}
        """Function -> (schedule, timezone, error)."""
        self._next_fire_s: dict[str, float] = {}
        registry.register(self)

    def skipped(self, function: str, reason: str, *, count: int = 1) -> None:
        """Count ticks of `function` that fired no run."""
        key = (function, reason)
        self._skipped[key] = self._skipped.get(key, 0) + count

    def set_status(
        self, function: str, *, schedule: str, timezone: str, error: str
    ) -> None:
        """Publish a function's schedule and its error ("" when valid)."""
        self._status[function] = (schedule, timezone, error)

    def forget_status(self, function: str) -> None:
        """Drop the status of a function that no longer has a schedule."""
        self._status.pop(function, None)

    def set_next_fire(self, function: str, instant: datetime | None) -> None:
        """Set the next tick of `function`; None drops the gauge."""
        if instant is None:
            self._next_fire_s.pop(function, None)
            return
        self._next_fire_s[function] = instant.timestamp()

    def forget(self, function: str) -> None:
        """Drop the gauges of a function that is no longer scheduled."""
        self._next_fire_s.pop(function, None)

    def describe(self) -> Iterator[Metric]:
        # Without it, registering would call collect() to learn the names.
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        skipped, invalid, next_fire, info = self._families()
        for (function, reason), count in self._skipped.items():
            skipped.add_metric([function, reason], count)
        for function, (schedule, timezone, error) in self._status.items():
            invalid.add_metric([function], 1 if error else 0)
            info.add_metric([function, schedule, timezone, error], 1)
        for function, fire_s in self._next_fire_s.items():
            next_fire.add_metric([function], fire_s)
        yield from (skipped, invalid, next_fire, info)

    def _families(
        self,
    ) -> tuple[
        CounterMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily
    ]:
        return (
            CounterMetricFamily(
                "faashub_cron_ticks_skipped",
                "Ticks that fired no run, by reason (overlap or missed).",
                labels=["function", "reason"],
            ),
            GaugeMetricFamily(
                "faashub_cron_schedule_invalid",
                "1 while a function's schedule annotations cannot be used.",
                labels=["function"],
            ),
            GaugeMetricFamily(
                "faashub_cron_next_fire_timestamp_seconds",
                "The next tick of a function's schedule, in Unix seconds.",
                labels=["function"],
            ),
            GaugeMetricFamily(
                "faashub_cron_schedule_info",
                "Always 1: the schedule of each function, and its error if invalid.",
                labels=["function", "schedule", "timezone", "error"],
            ),
        )
