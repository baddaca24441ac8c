"""The worker's metrics: plain-Python counts that a scrape shows as Prometheus would.

`WorkerMetrics` keeps per-call updates out of prometheus_client, so these
tests compare its exposition with what prometheus_client's own Counter,
Gauge and Histogram give for the same updates. The end-to-end values
through `/metrics` are checked in test_server.py against a real NATS server.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as prometheus_text

from queue_worker.metrics import START_DELAY_BUCKETS_S, WorkerMetrics

# Values on, below and above bucket bounds, and one past the last bound.
DELAYS_S = (0.0, 0.01, 0.010001, 0.05, 0.7, 5.0, 6 * 3600.0, 10**6)


def _sample_lines(text: bytes, prefix: str) -> list[str]:
    return [
        line
        for line in text.decode().splitlines()
        if line.startswith(prefix) and "_created" not in line
    ]


def test_start_delay_buckets_match_prometheus_histogram() -> None:
    metrics = WorkerMetrics(queue="default")
    registry = CollectorRegistry()
    reference = Histogram(
        "faashub_worker_start_delay_seconds",
        "reference",
        buckets=START_DELAY_BUCKETS_S,
        registry=registry,
    )
    for delay_s in DELAYS_S:
        metrics.start_delay.observe(delay_s)
        reference.observe(delay_s)

    ours = _sample_lines(metrics.render()[0], "faashub_worker_start_delay_seconds")
    expected = _sample_lines(
        prometheus_text(registry), "faashub_worker_start_delay_seconds"
    )
    assert ours == expected
    assert 'faashub_worker_start_delay_seconds_bucket{le="0.01"} 2.0' in ours
    assert "faashub_worker_start_delay_seconds_count 8.0" in ours


def test_counts_reach_the_registry_when_rendered() -> None:
    metrics = WorkerMetrics(queue="default")
    registry = CollectorRegistry()
    attempts = Counter("faashub_worker_attempts", "", ["function"], registry=registry)
    calls = Counter(
        "faashub_worker_calls", "", ["function", "state"], registry=registry
    )
    failures = Counter("faashub_worker_callback_failures", "", registry=registry)
    for _ in range(3):
        metrics.attempt_started("echo.openfaas-fn")
        attempts.labels("echo.openfaas-fn").inc()
    metrics.call_finished("echo.openfaas-fn", "succeeded")
    calls.labels("echo.openfaas-fn", "succeeded").inc()
    metrics.callback_failed(0)
    metrics.callback_failed(2)
    failures.inc(2)

    first = metrics.render()[0]
    for name in ("attempts_total", "calls_total", "callback_failures_total"):
        prefix = f"faashub_worker_{name}"
        assert _sample_lines(first, prefix) == _sample_lines(
            prometheus_text(registry), prefix
        )
    # A second render adds nothing that was counted before the first.
    metrics.attempt_started("echo.openfaas-fn")
    assert (
        'faashub_worker_attempts_total{function="echo.openfaas-fn"} 4.0'
        in metrics.render()[0].decode()
    )


def test_calls_in_flight_follow_attempts() -> None:
    metrics = WorkerMetrics(queue="default")
    registry = CollectorRegistry()
    reference = Gauge("faashub_worker_calls_in_flight", "", registry=registry)
    metrics.attempt_started("a.openfaas-fn")
    metrics.attempt_started("b.openfaas-fn")
    metrics.attempt_ended()
    reference.set(1)

    prefix = "faashub_worker_calls_in_flight"
    assert _sample_lines(metrics.render()[0], prefix) == _sample_lines(
        prometheus_text(registry), prefix
    )
