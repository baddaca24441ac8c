"""`ConnectorMetrics`: the names, types, help texts, labels and buckets.

The Grafana dashboard in deploy/grafana queries these names, so the expected
values are written out here rather than read from the module.
"""

import pytest
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from connectors.core import metrics as connector_metrics
from connectors.core.metrics import ConnectorMetrics

# Family name, then (type, help text, label names).
EXPECTED_FAMILIES = {
    "faashub_connector_consumed": (
        "counter",
        "Messages received from the source.",
        ("connector", "topic"),
    ),
    "faashub_connector_invoked": (
        "counter",
        "Invocations with a final outcome, by HTTP status.",
        ("connector", "function", "code"),
    ),
    "faashub_connector_failed": (
        "counter",
        "Invocations whose final outcome is a failure.",
        ("connector", "function"),
    ),
    "faashub_connector_retried": (
        "counter",
        "Invocation attempts after the first.",
        ("connector", "function"),
    ),
    "faashub_connector_dead_lettered": (
        "counter",
        "Messages written to a dead-letter destination.",
        ("connector", "topic"),
    ),
    "faashub_connector_invocation_seconds": (
        "histogram",
        "Seconds from the first attempt of an invocation to its final outcome.",
        ("connector", "function"),
    ),
    "faashub_connector_lag": (
        "gauge",
        "Messages in the source that are not final yet.",
        ("connector", "topic", "partition"),
    ),
}

# prometheus_client's default histogram buckets, as `le` label values.
EXPECTED_BUCKETS = [
    "0.005",
    "0.01",
    "0.025",
    "0.05",
    "0.075",
    "0.1",
    "0.25",
    "0.5",
    "0.75",
    "1.0",
    "2.5",
    "5.0",
    "7.5",
    "10.0",
    "+Inf",
]


def record_every_metric(metrics: ConnectorMetrics) -> None:
    metrics.consumed("orders", 3)
    metrics.invoked("echo", 200, duration_s=0.02)
    metrics.failed("echo")
    metrics.retried("echo")
    metrics.dead_lettered("orders")
    metrics.set_lag("orders", 7, partition="0")


def collect(metrics: ConnectorMetrics) -> dict[str, Metric]:
    return {family.name: family for family in metrics.registry.collect()}


def label_names(family: Metric) -> tuple[str, ...]:
    sample = family.samples[0]
    return tuple(name for name in sample.labels if name != "le")


def test_families_keep_names_and_help() -> None:
    metrics = ConnectorMetrics("kafka")
    record_every_metric(metrics)

    families = collect(metrics)

    assert sorted(families) == sorted(EXPECTED_FAMILIES)
    for name, (kind, documentation, labels) in EXPECTED_FAMILIES.items():
        family = families[name]
        assert family.type == kind, name
        assert family.documentation == documentation, name
        assert label_names(family) == labels, name


@pytest.mark.parametrize(
    ("function_durations", "series"),
    [
        pytest.param(True, "echo", id="per-function"),
        pytest.param(False, "", id="one-series"),
    ],
)
def test_duration_buckets_and_series(function_durations: bool, series: str) -> None:
    metrics = ConnectorMetrics("sqs", function_durations=function_durations)
    metrics.invoked("echo", 502, duration_s=1.5)

    family = collect(metrics)["faashub_connector_invocation_seconds"]
    buckets = [s for s in family.samples if s.name.endswith("_bucket")]

    assert [s.labels["le"] for s in buckets] == EXPECTED_BUCKETS
    assert {s.labels["function"] for s in buckets} == {series}
    assert {s.labels["connector"] for s in buckets} == {"sqs"}
    assert metrics.registry.get_sample_value(
        "faashub_connector_invoked_total",
        {"connector": "sqs", "function": "echo", "code": "502"},
    ) == pytest.approx(1.0)


def test_render_returns_exposition_text() -> None:
    metrics = ConnectorMetrics("cron")
    metrics.consumed("every-minute")

    text = metrics.render().decode()

    assert connector_metrics.CONTENT_TYPE == CONTENT_TYPE_LATEST
    assert (
        "# HELP faashub_connector_consumed_total Messages received from the source."
        in text
    )
    assert (
        'faashub_connector_consumed_total{connector="cron",topic="every-minute"} 1.0'
        in text
    )


def reference_registry(
    outcomes: list[tuple[str, int, float]], *, function_durations: bool
) -> CollectorRegistry:
    """Count `outcomes` with prometheus_client's own Counter and Histogram."""
    registry = CollectorRegistry()
    families: dict[str, Counter | Histogram | Gauge] = {}
    for name, (kind, documentation, labels) in EXPECTED_FAMILIES.items():
        metric_class = {"counter": Counter, "histogram": Histogram, "gauge": Gauge}
        families[name] = metric_class[kind](
            name, documentation, labels, registry=registry
        )
    invoked = families["faashub_connector_invoked"]
    durations = families["faashub_connector_invocation_seconds"]
    assert isinstance(invoked, Counter) and isinstance(durations, Histogram)
    for function, status, duration_s in outcomes:
        invoked.labels("kafka", function, str(status)).inc()
        series = function if function_durations else ""
        durations.labels("kafka", series).observe(duration_s)
    return registry


@pytest.mark.parametrize(
    "function_durations",
    [pytest.param(True, id="per-function"), pytest.param(False, id="one-series")],
)
def test_outcomes_render_as_prometheus_client(function_durations: bool) -> None:
    # Durations on, just above and between bucket bounds, beyond the last
    # finite one, and the odd cases a clock could give.
    durations_s = [0.0, 0.005, 0.0051, 0.07, 0.1, 2.5, 9.99, 10.0, 12.0, -0.5]
    durations_s.append(float("inf"))
    outcomes = [
        (function, status, duration_s)
        for duration_s in durations_s
        for function in ("b.fn", "a.fn")
        for status in (200, 502, 200)
    ]
    metrics = ConnectorMetrics("kafka", function_durations=function_durations)

    for function, status, duration_s in outcomes:
        metrics.invoked(function, status, duration_s=duration_s)

    reference = reference_registry(outcomes, function_durations=function_durations)
    assert metrics.render() == generate_latest(reference)
