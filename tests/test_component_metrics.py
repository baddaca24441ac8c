"""`faashub.metrics`: per-instance registries and the bounded child cache."""

from prometheus_client import CONTENT_TYPE_LATEST, Histogram

from faashub.metrics import ComponentMetrics, keep_child


def test_instances_have_own_registries() -> None:
    first = ComponentMetrics()
    second = ComponentMetrics()

    first.counter("demo_calls", "Calls.", ["function"]).labels("a").inc()
    second.counter("demo_calls", "Calls.", ["function"]).labels("b").inc(2)

    assert first.registry.get_sample_value("demo_calls_total", {"function": "a"}) == 1
    assert (
        first.registry.get_sample_value("demo_calls_total", {"function": "b"}) is None
    )
    assert second.registry.get_sample_value("demo_calls_total", {"function": "b"}) == 2


def test_declared_metrics_keep_names_and_help() -> None:
    metrics = ComponentMetrics()
    metrics.gauge("demo_depth", "Calls waiting.", ["queue"]).labels("q").set(3)
    metrics.histogram("demo_seconds", "Call time.", buckets=(0.5, 2.0)).observe(1.0)

    body, content_type = metrics.exposition()
    text = body.decode()

    assert content_type == CONTENT_TYPE_LATEST
    assert "# HELP demo_depth Calls waiting." in text
    assert 'demo_depth{queue="q"} 3.0' in text
    assert 'demo_seconds_bucket{le="0.5"} 0.0' in text
    assert 'demo_seconds_bucket{le="2.0"} 1.0' in text


def test_histogram_default_buckets() -> None:
    metrics = ComponentMetrics()
    metrics.histogram("demo_seconds", "Call time.").observe(0.2)

    text = metrics.exposition()[0].decode()

    for bound in Histogram.DEFAULT_BUCKETS[:-1]:
        assert f'demo_seconds_bucket{{le="{bound}"}}' in text


def test_no_created_series() -> None:
    metrics = ComponentMetrics()
    metrics.counter("demo_calls", "Calls.", ["function"]).labels("a").inc()
    metrics.histogram("demo_seconds", "Call time.").observe(0.2)

    text = metrics.exposition()[0].decode()

    assert "demo_calls_total" in text
    assert "demo_seconds_count" in text
    assert "_created" not in text


def test_keep_child_stops_at_max_size() -> None:
    cache: dict[str, int] = {}

    returned = [keep_child(cache, f"k{n}", n, max_size=2) for n in range(3)]

    assert returned == [0, 1, 2]
    assert cache == {"k0": 0, "k1": 1}


def test_keep_child_unbounded_without_max_size() -> None:
    cache: dict[str, int] = {}

    for n in range(100):
        keep_child(cache, f"k{n}", n, max_size=None)

    assert len(cache) == 100
