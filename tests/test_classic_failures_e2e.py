"""A classic function's failure through `faashub up`: the function's retry codes apply.

The local provider returns a classic process's non-zero exit as the
function's own 500, without `X-OpenFaaS-Internal`, so the queue-worker
retries it only when the function's `com.openfaas.retry.codes` include 500.
"""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hub_support import RunningHub, faashub, running_hub

pytestmark = pytest.mark.timeout(90)

EXIT_3 = "sh -c 'exit 3'"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state_dir: Path = tmp_path_factory.mktemp("hub") / "state"
    with running_hub(state_dir) as running:
        functions = {
            "exit-final": "503",
            "exit-retried": "500,503",
        }
        for name, codes in functions.items():
            deployed = faashub(
                "deploy",
                "--name",
                name,
                "--fprocess",
                EXIT_3,
                "--annotation",
                "com.openfaas.retry.attempts=4",
                "--annotation",
                f"com.openfaas.retry.codes={codes}",
                "--annotation",
                "com.openfaas.retry.min_wait=100ms",
                "--annotation",
                "com.openfaas.retry.max_wait=200ms",
                gateway=running.url,
            )
            assert deployed.returncode == 0, deployed.stderr.decode()
        yield running


def queue_call(hub: RunningHub, function: str) -> str:
    call_id = f"classic-{uuid.uuid4()}"
    response = httpx.post(
        f"{hub.url}/async-function/{function}",
        content=b"x",
        headers={"X-Call-Id": call_id},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return call_id


def wait_until_final(
    hub: RunningHub, call_id: str, *, timeout_s: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{hub.url}/async-calls/{call_id}", timeout=10)
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        if status["state"] in ("succeeded", "failed", "dead-lettered", "cancelled"):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"call {call_id} is still {status['state']}")
        time.sleep(0.1)


def test_sync_exit_is_unmarked_500(hub: RunningHub) -> None:
    response = httpx.post(f"{hub.url}/function/exit-final", content=b"x", timeout=30)

    assert response.status_code == 500
    assert "X-OpenFaaS-Internal" not in response.headers
    assert "exited with code 3" in response.text


def test_exit_not_in_retry_codes_rejected(hub: RunningHub) -> None:
    call_id = queue_call(hub, "exit-final")

    status = wait_until_final(hub, call_id)

    assert status["state"] == "failed"
    assert status["attempts"] == 1
    assert status["last_status"] == 500
    assert status["dead_letter_reason"] == "rejected"


def test_exit_in_retry_codes_retried(hub: RunningHub) -> None:
    call_id = queue_call(hub, "exit-retried")

    status = wait_until_final(hub, call_id)

    assert status["state"] == "dead-lettered"
    assert status["attempts"] == 4
    assert status["last_status"] == 500
    assert status["dead_letter_reason"] == "attempts-exhausted"
