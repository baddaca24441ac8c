"""`faashub deploy` through the gateway: invalid async annotations fail the deploy."""

from collections.abc import Iterator
from pathlib import Path

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
    listed = faashub("list", gateway=hub.url)

    assert deployed.returncode != 0
    stderr = deployed.stderr.decode()
    assert "400" in stderr
    name, value = annotation.split("=", 1)
    assert f"{name}={value!r}" in stderr
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
