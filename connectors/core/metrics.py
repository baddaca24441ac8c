"""Prometheus metrics with the same names for every connector.

Each name starts with `faashub_connector_` and carries a `connector` label
(`kafka`, `sqs`, `cron`), so one dashboard serves every connector. The
other labels are in brackets:

* `consumed_total` (topic): messages received from the source;
* `invoked_total` (function, code): invocations with a final outcome, by
  HTTP status;
* `failed_total` (function): invocations whose final outcome is a failure;
* `retried_total` (function): attempts after the first;
* `dead_lettered_total` (topic): messages written to a dead-letter
  destination;
* `invocation_seconds` (function): a histogram of the time from the first
  attempt to the final outcome. A connector built with
  `function_durations=False` records one histogram for all its functions,
  with function="";
* `lag` (topic, partition): a gauge of the messages not final yet; the
  partition is "" where the source has none.

Each connector process has its own registry, served by the health listener
at `/metrics`. The label children are cached, so counting costs a dict
lookup and a lock per event.
"""

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram

from connectors.core import constants
from faashub.metrics import ComponentMetrics

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ConnectorMetrics(ComponentMetrics):
    """The metrics of one connector, registered in their own registry."""

    def __init__(self, connector: str, *, function_durations: bool = True) -> None:
        super().__init__()
        self.connector = connector
        # One histogram series costs about 4.4 KiB with the default buckets
        # (prometheus_client 0.26, measured with 10,000 functions), so a
        # connector with thousands of functions may keep one for all of them.
        self._function_durations = function_durations
        prefix = constants.METRIC_PREFIX

        self._consumed = self.counter(
            prefix + "consumed",
            "Messages received from the source.",
            ["connector", "topic"],
        )

        self._invoked = self.counter(
            prefix + "invoked",
            "Invocations with a final outcome, by HTTP status.",
            ["connector", "function", "code"],
        )

        self._failed = self.counter(
            prefix + "failed",
            "Invocations whose final outcome is a failure.",
            ["connector", "function"],
        )

        self._retried = self.counter(
            prefix + "retried",
            "Invocation attempts after the first.",
            ["connector", "function"],
        )

        self._dead_lettered = self.counter(
            prefix + "dead_lettered",
            "Messages written to a dead-letter destination.",
            ["connector", "topic"],
        )

        self._duration = self.histogram(
            prefix + "invocation_seconds",
            "Seconds from the first attempt of an invocation to its final outcome.",
            ["connector", "function"],
        )

        self._lag = self.gauge(
            prefix + "lag",
            "Messages in the source that are not final yet.",
            ["connector", "topic", "partition"],
        )

        self._counters: dict[tuple[str, ...], Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        # The children that one (function, status) outcome updates.
        self._outcomes: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def consumed(self, topic: str, count: int = 1) -> None:
        """Count messages received from the source."""
        self._counter(self._consumed, "consumed", topic).inc(count)

    def invoked(self, function: str, status: int, *, duration_s: float) -> None:
        """Count an invocation with its final HTTP status and duration."""
        children = self._outcomes.get((function, status))
        if children is None:
            children = self._outcome_children(function, status)
        counter, histogram = children
        counter.inc()
        histogram.observe(duration_s)

    def failed(self, function: str) -> None:
        """Count an invocation whose final outcome is a failure."""
        self._counter(self._failed, "failed", function).inc()

    def retried(self, function: str) -> None:
        """Count one attempt after the first."""
        self._counter(self._retried, "retried", function).inc()

    def dead_lettered(self, topic: str) -> None:
        """Count a message written to a dead-letter destination."""
        self._counter(self._dead_lettered, "dead_lettered", topic).inc()

    def set_lag(self, topic: str, lag: int, *, partition: str = "") -> None:
        """Set how many messages of a topic (and partition) are not final yet."""
        self._lag.labels(self.connector, topic, partition).set(lag)

    def forget_lag(self, topic: str, *, partition: str = "") -> None:
        """Drop the lag of a topic (and partition) this connector no longer reads."""
        try:
            self._lag.remove(self.connector, topic, partition)
        except KeyError:
            pass

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        body, _ = self.exposition()
        return body

    def _outcome_children(
        self, function: str, status: int
    ) -> tuple[Counter, Histogram]:
        counter = self._counter(self._invoked, "invoked", function, str(status))
        series = function if self._function_durations else ""
        histogram = self._histograms.get(series)
        if histogram is None:
            histogram = self._duration.labels(self.connector, series)
            self._histograms[series] = histogram
        children = self._outcomes[(function, status)] = (counter, histogram)
        return children

    def _counter(self, family: Counter, name: str, *labels: str) -> Counter:
        key = (name, *labels)
        child = self._counters.get(key)
        if child is None:
            child = self._counters[key] = family.labels(self.connector, *labels)
        return child
