"""`faashub deploy` through the gateway: invalid async annotations fail the deploy."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hub_support import RunningHub, faashub, running_hub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state_dir: Path = tmp_path_factory.mktemp("hub") / "state"
    with running_hub(state_dir) as running:
        yield running


@pytest.mark.parametrize(
    "annotation",
    [
        pytest.param("com.openfaas.retry.attempts=banana", id="attempts"),
        pytest.param("com.openfaas.retry.min_wait=-1s", id="min-wait"),
        pytest.param("com.faashub.max_inflight=-1", id="max-inflight"),
        pytest.param("com.openfaas.queue=bad queue!", id="queue"),
    ],
)
def test_invalid_annotation_fails_deploy(hub: RunningHub, annotation: str) -> None:
    deployed = faashub(
        "deploy",
        "--name",
        "strict",
        "--fprocess",
        "cat",
        "--annotation",
        annotation,
        gateway=hub.url,
    )
    name, value = annotation.split("=", 1)
    # The gateway and the provider reject it too, for clients that skip the
    # CLI's own check.
    direct = httpx.post(
        f"{hub.url}/system/functions",
        json={"service": "strict", "image": "cat", "annotations": {name: value}},
        auth=hub.auth,
    )
    listed = faashub("list", gateway=hub.url)

    assert deployed.returncode == 2
    stderr = deployed.stderr.decode()
    assert "Deployed nothing" in stderr
    assert f"{name}={value!r}" in stderr
    assert direct.status_code == 400
    assert f"{name}={value!r}" in direct.text
    assert "strict" not in listed.stdout.decode()


def test_valid_annotations_deploy(hub: RunningHub) -> None:
    deployed = faashub(
        "deploy",
        "--name",
        "tuned",
        "--fprocess",
        "cat",
        "--annotation",
        "com.openfaas.retry.attempts=3",
        "--annotation",
        "com.openfaas.retry.codes=429,503",
        "--annotation",
        "com.openfaas.retry.min_wait=500ms",
        "--annotation",
        "com.openfaas.retry.max_wait=1m",
        "--annotation",
        "com.faashub.max_inflight=2",
        "--annotation",
        "com.openfaas.queue=bulk",
        gateway=hub.url,
    )

    assert deployed.returncode == 0, deployed.stderr.decode()
