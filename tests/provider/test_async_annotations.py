"""Retry, max_inflight and queue annotations: rejected at deploy when invalid."""

from datetime import UTC, datetime

import httpx
import pytest

from faashub.settings import LocalProviderSettings
from provider.local.store import FunctionStore, StoredFunction
from provider.types import FunctionDeployment
from tests.provider.conftest import deploy, start_provider

pytestmark = pytest.mark.timeout(30)

ATTEMPTS = "com.openfaas.retry.attempts"
CODES = "com.openfaas.retry.codes"
MIN_WAIT = "com.openfaas.retry.min_wait"
MAX_WAIT = "com.openfaas.retry.max_wait"
MAX_INFLIGHT = "com.faashub.max_inflight"
QUEUE = "com.openfaas.queue"

INVALID = [
    pytest.param(ATTEMPTS, "banana", id="attempts-word"),
    pytest.param(ATTEMPTS, "-3", id="attempts-negative"),
    pytest.param(ATTEMPTS, "0", id="attempts-zero"),
    pytest.param(ATTEMPTS, "2.5", id="attempts-fraction"),
    pytest.param(CODES, "abc", id="codes-word"),
    pytest.param(CODES, "500,", id="codes-trailing-comma"),
    pytest.param(CODES, "600", id="codes-out-of-range"),
    pytest.param(MIN_WAIT, "-1s", id="min-wait-negative"),
    pytest.param(MIN_WAIT, "0s", id="min-wait-zero"),
    pytest.param(MIN_WAIT, "soon", id="min-wait-word"),
    pytest.param(MAX_WAIT, "5 s", id="max-wait-space"),
    pytest.param(MAX_WAIT, "inf", id="max-wait-infinite"),
    pytest.param(MAX_INFLIGHT, "-1", id="max-inflight-negative"),
    pytest.param(MAX_INFLIGHT, "0", id="max-inflight-zero"),
    pytest.param(QUEUE, "bad queue!", id="queue-space"),
    pytest.param(QUEUE, "a.b", id="queue-dot"),
    pytest.param(QUEUE, "q" * 129, id="queue-too-long"),
    pytest.param(ATTEMPTS, "\u00b2", id="attempts-superscript-digit"),
    pytest.param(CODES, "\u0665\u0660\u0660", id="codes-arabic-digits"),
    pytest.param(MIN_WAIT, "1_000", id="min-wait-underscore"),
    pytest.param(MIN_WAIT, "1e3", id="min-wait-exponent"),
    pytest.param(MAX_WAIT, "\u0663s", id="max-wait-arabic-digit"),
]

VALID = [
    pytest.param({ATTEMPTS: "4"}, id="attempts"),
    pytest.param({ATTEMPTS: " 10 "}, id="attempts-spaces"),
    pytest.param({CODES: "429, 500,503"}, id="codes"),
    pytest.param({MIN_WAIT: "500ms", MAX_WAIT: "1m30s"}, id="waits-durations"),
    pytest.param({MIN_WAIT: "2", MAX_WAIT: "2.5"}, id="waits-seconds"),
    pytest.param({MIN_WAIT: "10s", MAX_WAIT: "10s"}, id="waits-equal"),
    pytest.param({MIN_WAIT: "5m"}, id="min-wait-alone"),
    pytest.param({MAX_INFLIGHT: "1"}, id="max-inflight"),
    pytest.param({QUEUE: "bulk-jobs_2"}, id="queue"),
    pytest.param({QUEUE: ""}, id="queue-empty-is-default"),
]


@pytest.mark.parametrize(("annotation", "value"), INVALID)
def test_invalid_annotation_create_returns_400(
    client: httpx.Client, annotation: str, value: str
) -> None:
    response = deploy(client, "strict", "cat", annotations={annotation: value})

    assert response.status_code == 400
    assert f"{annotation}={value!r}" in response.text
    assert "'strict'" in response.text
    assert client.get("/system/function/strict").status_code == 404


@pytest.mark.parametrize(("annotation", "value"), INVALID[:3])
def test_invalid_annotation_update_returns_400(
    client: httpx.Client, annotation: str, value: str
) -> None:
    assert deploy(client, "kept", "cat").status_code == 202

    response = deploy(
        client, "kept", "wc", method="PUT", annotations={annotation: value}
    )

    assert response.status_code == 400
    assert f"{annotation}={value!r}" in response.text
    stored = client.get("/system/function/kept").json()
    assert stored["envProcess"] == "cat"
    assert annotation not in (stored.get("annotations") or {})


def test_min_wait_above_max_wait_returns_400(client: httpx.Client) -> None:
    annotations = {MIN_WAIT: "10s", MAX_WAIT: "2s"}

    response = deploy(client, "inverted", "cat", annotations=annotations)

    assert response.status_code == 400
    assert f"{MIN_WAIT}='10s'" in response.text
    assert f"{MAX_WAIT}='2s'" in response.text


@pytest.mark.parametrize("annotations", VALID)
def test_valid_annotations_deploy(
    client: httpx.Client, annotations: dict[str, str]
) -> None:
    created = deploy(client, "tuned", "cat", annotations=annotations)
    updated = deploy(client, "tuned", "wc", method="PUT", annotations=annotations)

    assert created.status_code == 202, created.text
    assert updated.status_code == 202, updated.text
    stored = client.get("/system/function/tuned").json()
    assert stored["annotations"] == annotations


def test_stored_invalid_annotation_still_served(
    settings: LocalProviderSettings,
) -> None:
    # A function deployed before the deploy check keeps loading and running.
    deployment = FunctionDeployment(
        service="legacy",
        image="",
        envProcess="cat",
        annotations={ATTEMPTS: "banana", QUEUE: "bad queue!"},
    )
    stored = StoredFunction(deployment=deployment, created_at=datetime.now(UTC))
    store = FunctionStore(settings.state_dir)
    store.folder.mkdir(parents=True)
    store.path_of("legacy", "openfaas-fn").write_text(stored.model_dump_json())

    running = start_provider(settings)
    try:
        with running.client() as client:
            status = client.get("/system/function/legacy")
            response = client.post("/function/legacy", content=b"still here")
    finally:
        running.stop()

    assert status.status_code == 200
    assert status.json()["annotations"][ATTEMPTS] == "banana"
    assert response.status_code == 200
    assert response.content == b"still here"
