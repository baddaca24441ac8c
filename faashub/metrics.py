"""Prometheus building blocks that the gateway, worker and provider share.

Each component declares its own metrics (names, labels, help text and
buckets) in `gateway.metrics`, `queue_worker.metrics` and `provider.metrics`.
This module contains what they share. `ComponentMetrics` gives each instance
a registry of its own, so that several gateways or workers in one process
(as in tests) do not collide, and renders that registry in the Prometheus
text format, without prometheus_client's `_created` series. `keep_child`
fills a bounded cache of label children, because `labels()` takes a lock
and builds a key on every call, which adds up on a per-call path.
This module serves no HTTP route: each component serves `/metrics` itself.
"""

from collections.abc import Iterable, Sequence
from typing import TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.utils import floatToGoString

# The key and the value of a cache of label children.
K = TypeVar("K")
V = TypeVar("V")


class ComponentMetrics:
    """A registry of its own, with helpers that declare metrics in it."""

    def __init__(self) -> None:
        # prometheus_client (0.26) adds a `_created` series, the time the
        # series started, to every counter and histogram label set, which
        # doubles the series count. The OpenFaaS components expose none. The
        # switch is global to the process, as the environment variable
        # PROMETHEUS_DISABLE_CREATED_SERIES is.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()

    def counter(
        self, name: str, documentation: str, labelnames: Sequence[str] = ()
    ) -> Counter:
        """Declare a counter in this registry.

        prometheus_client appends `_total` to a counter's samples, and drops
        the suffix from `name` first if it is there.
        """
        return Counter(name, documentation, labelnames, registry=self.registry)

    def gauge(
        self, name: str, documentation: str, labelnames: Sequence[str] = ()
    ) -> Gauge:
        """Declare a gauge in this registry."""
        return Gauge(name, documentation, labelnames, registry=self.registry)

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
    ) -> Histogram:
        """Declare a histogram in this registry.

        `buckets` are upper bounds in ascending order. Without them, the
        histogram has prometheus_client's default buckets.
        """
        return Histogram(
            name, documentation, labelnames, buckets=buckets, registry=self.registry
        )

    def exposition(self) -> tuple[bytes, str]:
        """Return the registry's metrics in the Prometheus text format, and its type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def keep_child(cache: dict[K, V], key: K, child: V, *, max_size: int | None) -> V:
    """Store `child` in `cache` under `key` unless `cache` is full, and return it.

    A label child (or a tuple of them) is looked up with a plain `dict.get`
    on the per-call path, and passed here on a miss. With `max_size`, the
    children beyond that many are used but not kept, so that calls with
    made-up label values cannot grow the cache without bound.
    """
    if max_size is None or len(cache) < max_size:
        cache[key] = child
    return child


def bucket_labels(bounds: Iterable[float]) -> list[str]:
    """Return the `le` label of each bucket bound, as prometheus_client spells it.

    A component that counts a histogram in plain Python and exposes it with
    a collector labels its buckets with these, so that a scrape shows what a
    prometheus_client Histogram would show. An infinite bound is `+Inf`.
    """
    return [floatToGoString(bound) for bound in bounds]  # type: ignore[no-untyped-call]


def cumulative_buckets(
    labels: Sequence[str], counts: Sequence[int]
) -> list[tuple[str, float]]:
    """Return (le, count) pairs with each count summed over the buckets up to it.

    `counts` contains the observations per bucket, in the order of `labels`.
    """
    buckets = []
    cumulative = 0
    for label, count in zip(labels, counts, strict=True):
        cumulative += count
        buckets.append((label, float(cumulative)))
    return buckets
