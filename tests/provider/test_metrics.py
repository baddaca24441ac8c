"""The provider's Prometheus metrics after a known workload (real local provider)."""

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from faashub.settings import LocalProviderSettings
from tests.provider.conftest import deploy, start_provider

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def samples(client: httpx.Client) -> dict[SampleKey, float]:
    """Scrape /metrics and key every sample by its name and sorted labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    found: dict[SampleKey, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_metrics_count_invocations_and_replicas(client: httpx.Client) -> None:
    assert deploy(client, "counted", "cat").status_code == 202
    assert deploy(client, "failing", "false").status_code == 202
    for _ in range(3):
        assert client.post("/function/counted", content=b"x").status_code == 200
    assert client.post("/function/failing", content=b"").status_code == 500
    assert client.post("/function/made-up-name", content=b"").status_code == 404

    found = samples(client)

    def invocations(function: str, code: str) -> float:
        key = (
            "faashub_provider_invocations_total",
            (("code", code), ("function_name", function)),
        )
        return found.get(key, 0.0)

    assert invocations("counted.openfaas-fn", "200") == 3
    assert invocations("failing.openfaas-fn", "500") == 1
    # A name that no function has gets no series.
    assert not any("made-up-name" in str(labels) for _, labels in found)
    duration_count = found[
        (
            "faashub_provider_invocation_seconds_count",
            (("function_name", "counted.openfaas-fn"),),
        )
    ]
    assert duration_count == 3
    assert found[("faashub_provider_functions", (("namespace", "openfaas-fn"),))] == 2
    replicas = found[
        (
            "faashub_provider_function_replicas",
            (("function_name", "counted.openfaas-fn"),),
        )
    ]
    assert replicas == 1
    assert found[("faashub_provider_up", ())] == 1

    # A removed function's series leave at the next scrape.
    removed = client.request(
        "DELETE", "/system/functions", json={"functionName": "failing"}
    )
    assert removed.status_code == 202, removed.text
    after = samples(client)
    assert after[("faashub_provider_functions", (("namespace", "openfaas-fn"),))] == 1
    assert (
        "faashub_provider_function_replicas",
        (("function_name", "failing.openfaas-fn"),),
    ) not in after


def test_metrics_open_beside_token(
    settings: LocalProviderSettings, tmp_path: Path
) -> None:
    token_file = tmp_path / "provider-token"
    token_file.write_text("a-token-for-this-test\n")
    guarded = settings.model_copy(update={"auth_token_file": token_file})
    running = start_provider(guarded)
    try:
        with running.client() as client:
            # Prometheus scrapes without the token, as it probes /healthz.
            assert client.get("/metrics").status_code == 200
            assert client.head("/metrics").status_code == 200
            assert client.get("/system/functions").status_code == 401
            refused = client.post("/metrics")
            assert refused.status_code == 405
            assert "GET" in refused.headers["allow"]
    finally:
        running.stop()
