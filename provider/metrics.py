"""Prometheus metrics of the provider, served at `GET /metrics` on its port.

The provider counts the invocations it proxies, by function and status
code, and times them. At each scrape it also lists the functions of every
namespace it serves and reports their desired and available replicas, so a
dashboard shows the backend's state without a second data source. The names
start with `faashub_provider_`; `function_name` labels are `name.namespace`,
as on the gateway's metrics.

The endpoint is open, like `/healthz`: it names functions and counts, never
bodies, secrets or environment values. A backend that fails to list its
functions during a scrape still returns the invocation counters, with
`faashub_provider_up` at 0.
"""

import logging
import time

from faashub.metrics import ComponentMetrics
from provider.backend import ProviderBackend

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"

# Seconds, from a fast http-mode call to the default upstream timeout.
DURATION_BUCKETS_S = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)

# Maximum number of functions whose replica series one scrape reports.
# Functions beyond it still count in faashub_provider_functions.
MAX_REPORTED_FUNCTIONS = 10_000


class ProviderMetrics(ComponentMetrics):
    """The invocation counters and the per-scrape function gauges of one provider."""

    def __init__(self, backend: ProviderBackend) -> None:
        super().__init__()
        self._backend = backend
        self.invocations = self.counter(
            "faashub_provider_invocations_total",
            "Invocations the provider responded to, by function and status code.",
            ["function_name", "code"],
        )
        self.duration = self.histogram(
            "faashub_provider_invocation_seconds",
            "Seconds from an invocation's arrival to the end of its response.",
            ["function_name"],
            buckets=DURATION_BUCKETS_S,
        )
        self.functions = self.gauge(
            "faashub_provider_functions",
            "Functions deployed, by namespace.",
            ["namespace"],
        )
        self.replicas = self.gauge(
            "faashub_provider_function_replicas",
            "Replicas a function should have.",
            ["function_name"],
        )
        self.available_replicas = self.gauge(
            "faashub_provider_function_available_replicas",
            "Replicas of a function that can serve now.",
            ["function_name"],
        )
        self.up = self.gauge(
            "faashub_provider_up",
            "1 when the last scrape could list the functions, 0 when it could not.",
        )
        self.scrape_seconds = self.gauge(
            "faashub_provider_scrape_seconds",
            "Seconds the last scrape took to list the functions.",
        )

    def invoked(self, function_name: str, *, status: int, duration_s: float) -> None:
        """Count one finished invocation of `function_name` (`name.namespace`)."""
        self.invocations.labels(function_name, str(status)).inc()
        self.duration.labels(function_name).observe(duration_s)

    async def render(self) -> tuple[bytes, str]:
        """Refresh the function gauges from the backend; return body and type."""
        started_at = time.perf_counter()
        try:
            await self._refresh_functions()
        except Exception as exc:
            # A scrape returns the counters even when the backend cannot list.
            logger.warning("metrics scrape could not list functions: %s", exc)
            self.up.set(0)
        else:
            self.up.set(1)
        self.scrape_seconds.set(time.perf_counter() - started_at)
        return self.exposition()

    async def _refresh_functions(self) -> None:
        counts: dict[str, int] = {}
        replicas: dict[str, tuple[int, int]] = {}
        for namespace in await self._backend.list_namespaces():
            functions = await self._backend.list_functions(namespace)
            counts[namespace] = len(functions)
            for function in functions:
                if len(replicas) >= MAX_REPORTED_FUNCTIONS:
                    break
                label = f"{function.name}.{function.namespace or namespace}"
                replicas[label] = (function.replicas, function.available_replicas)
        # Drop the series of functions and namespaces that are gone.
        self.functions.clear()
        self.replicas.clear()
        self.available_replicas.clear()
        for namespace, count in counts.items():
            self.functions.labels(namespace).set(count)
        for label, (wanted, available) in replicas.items():
            self.replicas.labels(label).set(wanted)
            self.available_replicas.labels(label).set(available)
