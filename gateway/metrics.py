"""Prometheus metrics of the gateway, with the OpenFaaS gateway's names.

Dashboards and alerts written for OpenFaaS work unchanged on these series:

* `gateway_function_invocation_total` (function_name, code): sync calls
  proxied by `/function/`, by the HTTP status the caller got;
* `gateway_functions_seconds` (function_name, code): a histogram of their
  duration, from the request to the end of the response;
* `gateway_function_invocation_started` (function_name): calls that
  started, counted before the function responds;
* `gateway_service_count` (function_name): a function's desired replicas,
  as the provider's function listing reports them.

`function_name` is `name.namespace`, as in OpenFaaS, for functions known
to exist: listed by the provider, or that responded to one of its calls.
Calls of other names, which any caller can make up, are counted under
OTHER_FUNCTIONS_LABEL, and so are calls beyond MAX_FUNCTION_LABELS and
MAX_INVOCATION_LABEL_SETS, so that the registry and each scrape stay
bounded. The OpenFaaS gateway keeps a series for every name it proxies.
Those series count only calls that pass through the gateway's `/function/`
route. A queue-worker or connector that sends calls straight to a replica
counts them in its own metrics (`faashub_worker_attempts`,
`faashub_connector_invoked_total`) and reports their number to the gateway
(`POST /system/direct-invocations`), which adds it to
`faashub_gateway_direct_invocations_total` (function_name). The
`invocationCount` of the function listing and status is the sum of both.

Each `GatewayMetrics` has a registry of its own, served at `GET /metrics`,
so that several gateways in one process (as in tests) do not collide. The
replica counts are refreshed from the provider when `/metrics` is scraped,
at most once per `SERVICE_COUNT_REFRESH_S`, and whenever a function listing
passes through `/system/functions`.
"""

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
import yarl
from prometheus_client import Counter, Gauge, Histogram

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import names
from faashub.logs import LimitedWarning
from faashub.metrics import ComponentMetrics, keep_child
from gateway import constants, errors
from gateway.provider_token import ProviderTokenRejections

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"

# Seconds a scrape reuses the replica counts of an earlier listing, so that
# frequent scrapes send few listing requests to the provider.
SERVICE_COUNT_REFRESH_S = 5.0
# Upper bound on one listing request made for a scrape.
SERVICE_COUNT_TIMEOUT_S = 2.0

# The `function_name` of calls that are not counted per function: calls of
# names that no deployed function has, and calls beyond MAX_FUNCTION_LABELS
# or MAX_INVOCATION_LABEL_SETS. Every per-function value contains a dot
# (`name.namespace`), so this value never collides with one.
OTHER_FUNCTIONS_LABEL = "other"

# Functions that get series of their own, at most. Each one costs about 18
# exposition lines per status code (15 histogram buckets, the histogram's
# sum and count, and the counter), and the registry never drops a series,
# so this bounds the size of a scrape.
MAX_FUNCTION_LABELS = 1_000

# Label sets of gateway_function_invocation_total (function and status
# code) at most, where `NAME` and `NAME.NAMESPACE` in the request path count
# as two. A new label set beyond it is counted under OTHER_FUNCTIONS_LABEL,
# so that functions that return many different status codes cannot grow a
# scrape without bound either. At this limit a scrape has about 90,000
# lines (8 MB), which the gateway renders in a worker thread.
MAX_INVOCATION_LABEL_SETS = 5_000


class GatewayMetrics(ComponentMetrics):
    """The invocation counters, histogram and replica gauge of one gateway."""

    def __init__(self) -> None:
        super().__init__()
        self.invocations = self.counter(
            "gateway_function_invocation",
            "Sync calls proxied to a function, by the HTTP status the caller got.",
            ["function_name", "code"],
        )
        self.duration = self.histogram(
            "gateway_functions_seconds",
            "Seconds from the start of a sync call to the end of its response.",
            ["function_name", "code"],
        )
        # A gauge that only rises: prometheus_client appends `_total` to the
        # samples of every Counter, and the OpenFaaS name has no suffix.
        # rate() and increase() treat it as they treat a counter.
        self.started = self.gauge(
            "gateway_function_invocation_started",
            "Sync calls that started, counted before the function responds.",
            ["function_name"],
        )
        self.direct_invocations = self.counter(
            "faashub_gateway_direct_invocations",
            "Calls that a queue-worker or connector sent straight to a replica "
            "and reported to the gateway.",
            ["function_name"],
        )
        self.service_count = self.gauge(
            "gateway_service_count",
            "Desired replicas of a function, from the provider's listing.",
            ["function_name"],
        )
        # The `name.namespace` labels of functions known to exist: listed by
        # the provider, or whose call got a response from the function. Only
        # these get series of their own, so that calls of made-up names add
        # none. At most MAX_FUNCTION_LABELS.
        self._known_labels: set[str] = set()
        self._invocation_label_sets = 0
        # Label children by the function name in the request path, for known
        # functions only: `labels()` takes a lock and builds a key on every
        # call. Each cache has at most a few entries per known function.
        self._started_children: dict[str, Gauge] = {}
        self._finished_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._other_children: dict[int, tuple[Counter, Histogram]] = {}

    def invocation_started(self, function: str) -> bool:
        """Count one started call of `function` (`NAME` or `NAME.NAMESPACE`).

        Return False, and count nothing, when `function` is not known to
        exist yet: `invocation_finished` then counts the start with the end.
        """
        child = self._started_children.get(function)
        if child is None:
            label = function_label(function)
            if label not in self._known_labels:
                return False
            child = keep_child(
                self._started_children,
                function,
                self.started.labels(label),
                max_size=MAX_FUNCTION_LABELS * 2,
            )
        child.inc()
        return True

    def invocation_finished(
        self,
        function: str,
        code: int,
        duration_s: float,
        *,
        function_responded: bool,
        start_counted: bool = True,
    ) -> None:
        """Count one finished call of `function` with status `code`.

        `function_responded` is True when the response came from the
        function, so that the function exists. A call that did not reach a
        function, such as the provider's 404 for an unknown name or a 502
        made by the gateway, is counted under OTHER_FUNCTIONS_LABEL unless
        the function is already known. With `start_counted` False, the start
        of the call is counted here too.
        """
        key = (function, code)
        children = self._finished_children.get(key)
        if children is None:
            children = self._finished_children_for(function, code, function_responded)
        if not start_counted:
            self._count_late_start(function)
        children[0].inc()
        children[1].observe(duration_s)

    def _finished_children_for(
        self, function: str, code: int, function_responded: bool
    ) -> tuple[Counter, Histogram]:
        label = function_label(function)
        if label not in self._known_labels:
            if not function_responded or not self._add_known_label(label):
                return self._other_finished_children(code)
        if self._invocation_label_sets >= MAX_INVOCATION_LABEL_SETS:
            return self._other_finished_children(code)
        self._invocation_label_sets += 1
        return keep_child(
            self._finished_children,
            (function, code),
            (
                self.invocations.labels(label, str(code)),
                self.duration.labels(label, str(code)),
            ),
            max_size=MAX_INVOCATION_LABEL_SETS * 2,
        )

    def _other_finished_children(self, code: int) -> tuple[Counter, Histogram]:
        children = self._other_children.get(code)
        if children is None:
            children = (
                self.invocations.labels(OTHER_FUNCTIONS_LABEL, str(code)),
                self.duration.labels(OTHER_FUNCTIONS_LABEL, str(code)),
            )
            self._other_children[code] = children
        return children

    def _count_late_start(self, function: str) -> None:
        if not self.invocation_started(function):
            self.started.labels(OTHER_FUNCTIONS_LABEL).inc()

    def _add_known_label(self, label: str) -> bool:
        """Add `label` to the known functions, unless there are too many."""
        if len(self._known_labels) >= MAX_FUNCTION_LABELS:
            return False
        self._known_labels.add(label)
        return True

    def direct_calls_reported(self, function: str, count: int) -> None:
        """Add `count` calls of `function` that went straight to a replica."""
        self.direct_invocations.labels(function_label(function)).inc(count)

    def invocation_counts(self) -> dict[str, float]:
        """Return the finished calls by `name.namespace`, summed over status codes.

        Calls reported with `direct_calls_reported` are included.
        """
        counts: dict[str, float] = {}
        for metric in (self.invocations, self.direct_invocations):
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        label = sample.labels["function_name"]
                        counts[label] = counts.get(label, 0.0) + sample.value
        return counts

    def set_service_counts(
        self, replicas: dict[str, int], *, complete: bool = False
    ) -> None:
        """Set the replica gauge of each `name.namespace` in `replicas`.

        With `complete`, `replicas` lists every function, so the series of a
        function missing from it (removed since) are dropped.
        """
        if complete:
            for family in self.service_count.collect():
                for sample in family.samples:
                    label = sample.labels["function_name"]
                    if label not in replicas:
                        self.service_count.remove(label)
        for label, count in replicas.items():
            self.service_count.labels(label).set(count)
            self._add_known_label(label)

    def render(self) -> tuple[bytes, str]:
        """Return the exposition text and its content type."""
        return self.exposition()


def function_label(function: str) -> str:
    """Return `function` as `name.namespace`, the default namespace filled in.

    A name that does not parse is used as it is; the sync proxy rejects such
    names before it counts a call.
    """
    try:
        return str(names.parse_function_ref(function))
    except shared_errors.InvalidFunctionName:
        return function


def listed_replicas(listing: Iterable[Any], *, namespace: str = "") -> dict[str, int]:
    """Return the desired replicas by `name.namespace` from a function listing.

    An entry without `replicas` has 0, because the local provider leaves
    the field out at 0, as Go's `omitempty` does. Entries without a string
    `name` or with a `replicas` that is not an integer are skipped. An entry
    without a `namespace` is in `namespace`, or the default one.
    """
    replicas: dict[str, int] = {}
    for entry in listing:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        count = entry.get("replicas", 0)
        if not isinstance(name, str) or not isinstance(count, int):
            continue
        entry_namespace = entry.get("namespace") or namespace
        if not isinstance(entry_namespace, str) or not entry_namespace:
            entry_namespace = shared.DEFAULT_NAMESPACE
        replicas[f"{name}.{entry_namespace}"] = count
    return replicas


class ServiceCountRefresher:
    """Refreshes `gateway_service_count` from the provider's listing at scrape time.

    A failed listing keeps the previous values and logs a throttled warning,
    so a scrape never fails because the provider is down.
    """

    def __init__(
        self,
        metrics: GatewayMetrics,
        session: aiohttp.ClientSession,
        provider_url: str,
        *,
        token_rejections: ProviderTokenRejections,
        refresh_s: float = SERVICE_COUNT_REFRESH_S,
        timeout_s: float = SERVICE_COUNT_TIMEOUT_S,
    ) -> None:
        self._metrics = metrics
        self._token_rejections = token_rejections
        self._session = session
        self._provider_url = provider_url.rstrip("/")
        self._refresh_s = refresh_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._refreshed_at_s = -float("inf")
        self._lock = asyncio.Lock()
        self._warnings = LimitedWarning(logger, interval_s=constants.WARNING_INTERVAL_S)

    async def refresh(self) -> None:
        """List every function on the provider and set the replica gauges."""
        async with self._lock:
            if time.monotonic() - self._refreshed_at_s < self._refresh_s:
                return
            try:
                replicas = await self._list_all()
            except errors.ProviderTokenRejected:
                # Logged by token_rejections, with its own rate limit.
                return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self._warnings.warning(
                    "cannot list functions for gateway_service_count: %s",
                    str(exc) or repr(exc),
                    ctx={"provider_url": self._provider_url},
                )
                return
            self._metrics.set_service_counts(replicas, complete=True)
            self._refreshed_at_s = time.monotonic()

    async def _list_all(self) -> dict[str, int]:
        # A provider without namespaces (404, or an empty list) lists all
        # its functions without the query.
        try:
            namespaces = await self._get_json("/system/namespaces")
        except ValueError:
            namespaces = [""]
        if not isinstance(namespaces, list) or not namespaces:
            namespaces = [""]
        replicas: dict[str, int] = {}
        for namespace in namespaces:
            if not isinstance(namespace, str):
                continue
            query = {"namespace": namespace} if namespace else {}
            listing = await self._get_json("/system/functions", query=query)
            if not isinstance(listing, list):
                raise ValueError(
                    f"the provider's /system/functions?namespace={namespace} "
                    "returned no JSON list"
                )
            replicas.update(listed_replicas(listing, namespace=namespace))
        return replicas

    async def _get_json(self, path: str, *, query: dict[str, str] | None = None) -> Any:
        url = yarl.URL(self._provider_url + path).with_query(query or {})
        async with self._session.get(url, timeout=self._timeout) as response:
            if response.status == 401:
                raise self._token_rejections.rejected(f"GET {path}")
            if response.status != 200:
                raise ValueError(f"the provider's {path} returned {response.status}")
            return json.loads(await response.read())
