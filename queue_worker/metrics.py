"""Prometheus metrics of one worker, served at `/metrics` on its health listener.

Each `Worker` owns a registry of its own, so that several workers in one
process (as in tests) do not collide. The names start with
`faashub_worker_`; `function` labels are `name.namespace`.

Queue depth comes from the consumer's state, which the worker reads when
`/metrics` is scraped rather than on a timer.
"""

from prometheus_client import Counter

from faashub.metrics import ComponentMetrics

# From 10 ms to 6 hours, the default max event age: a queued call usually
# starts within milliseconds, a backlogged or delayed one much later.
START_DELAY_BUCKETS_S = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    6 * 3600.0,
)


class WorkerMetrics(ComponentMetrics):
    """The counters, gauges and histogram of one worker."""

    def __init__(self, *, queue: str) -> None:
        super().__init__()
        self._queue = queue
        self.queue_depth = self.gauge(
            "faashub_worker_queue_depth",
            "Calls stored for this queue that no worker has received yet.",
            ["queue"],
        )
        self.queue_unacknowledged = self.gauge(
            "faashub_worker_queue_unacknowledged",
            "Calls received by a worker and not finished: running, waiting for "
            "a retry, or delayed.",
            ["queue"],
        )
        self.in_flight = self.gauge(
            "faashub_worker_calls_in_flight",
            "Calls this worker is running now.",
        )
        self.attempts = self.counter(
            "faashub_worker_attempts",
            "Invocations of queued calls, retries included.",
            ["function"],
        )
        self.retries = self.counter(
            "faashub_worker_retries",
            "Invocations that failed and were scheduled again.",
            ["function"],
        )
        self.calls = self.counter(
            "faashub_worker_calls",
            "Calls that reached a final state, by state.",
            ["function", "state"],
        )
        self.dead_letters = self.counter(
            "faashub_worker_dead_letters",
            "Dead letters written, by kind (call or callback) and reason.",
            ["kind", "reason"],
        )
        self.callback_failures = self.counter(
            "faashub_worker_callback_failures",
            "Callback deliveries that failed (each try counts once).",
        )
        self.start_delay = self.histogram(
            "faashub_worker_start_delay_seconds",
            "Seconds from a call's acceptance (or the time it was delayed to) "
            "to the start of its first attempt.",
            buckets=START_DELAY_BUCKETS_S,
        )

        # Labelled children by metric and label values: `labels()` takes a
        # lock and builds a key on every call, which adds up per call.
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}

    def attempt_started(self, function: str) -> None:
        """Count one invocation of `function` (`name.namespace`)."""
        self._child(self.attempts, function).inc()

    def retry_scheduled(self, function: str) -> None:
        """Count one failed invocation of `function` that runs again."""
        self._child(self.retries, function).inc()

    def call_finished(self, function: str, state: str) -> None:
        """Count one call of `function` that reached final `state`."""
        self._child(self.calls, function, state).inc()

    def dead_lettered(self, kind: str, reason: str) -> None:
        """Count one dead letter of `kind` written for `reason`."""
        self._child(self.dead_letters, kind, reason).inc()

    def _child(self, metric: Counter, *labels: str) -> Counter:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_queue_state(self, *, pending: int, unacknowledged: int) -> None:
        """Record the consumer's pending and unacknowledged message counts."""
        self.queue_depth.labels(self._queue).set(pending)
        self.queue_unacknowledged.labels(self._queue).set(unacknowledged)

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        return self.exposition()
