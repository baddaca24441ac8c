"""The Grafana dashboard queries only metrics that some component registers."""

import json
import re
from pathlib import Path
from typing import Any

from connectors.core.metrics import ConnectorMetrics
from gateway.metrics import GatewayMetrics
from queue_worker.metrics import WorkerMetrics

DASHBOARD = (
    Path(__file__).resolve().parents[2]
    / "deploy"
    / "grafana"
    / "faashub-dashboard.json"
)

# Words of PromQL and Grafana that look like metric names in an expression.
_NOT_METRICS = {
    "sum",
    "max",
    "by",
    "rate",
    "histogram_quantile",
    "le",
    "label_values",
}
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def registered_sample_names() -> set[str]:
    """Return every sample name the gateway, worker and connector registries expose."""
    registries = [
        GatewayMetrics().registry,
        WorkerMetrics(queue="default").registry,
        ConnectorMetrics("kafka").registry,
    ]
    found: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            found.add(family.name)
            for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
                if family.type in ("counter", "histogram"):
                    found.add(family.name + suffix)
    return found


def queried_metric_names(dashboard: dict[str, Any]) -> set[str]:
    """Return the identifiers of every query that are not labels or functions."""
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expressions.append(variable["definition"])
    names: set[str] = set()
    for expression in expressions:
        # Drop label matchers, label lists, ranges and legend-style variables.
        bare = re.sub(r"\{[^}]*\}|\[[^]]*\]|\$\w+|\"[^\"]*\"", " ", expression)
        bare = re.sub(r"\b(by|without)\s*\([^)]*\)", " ", bare)
        bare = re.sub(r"label_values\(\s*(\w+)\s*,\s*\w+\s*\)", r"\1", bare)
        for token in _IDENTIFIER.findall(bare):
            if token not in _NOT_METRICS and not token[0].isdigit():
                names.add(token)
    return names


def test_dashboard_metrics_are_registered() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    queried = queried_metric_names(dashboard)
    unknown = queried - registered_sample_names()

    assert not unknown, f"the dashboard queries unregistered metrics: {unknown}"
    for name in (
        "gateway_function_invocation_total",
        "gateway_functions_seconds_bucket",
        "gateway_function_invocation_started",
        "gateway_service_count",
        "faashub_worker_queue_depth",
        "faashub_connector_lag",
    ):
        assert name in queried


def test_dashboard_panels_have_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    ids = [panel["id"] for panel in dashboard["panels"]]

    assert len(ids) == len(set(ids))
