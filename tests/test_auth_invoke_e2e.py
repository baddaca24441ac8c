"""Invocations through a hub whose gateway requires credentials on them too.

With `auth_invoke` on, the gateway checks its credentials on `/function/`
and `/async-function/` as on `/system/`. The queue-worker then has to send
them when it runs a queued call through the gateway, and the function must
still not receive them.
"""

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.hub_support import (
    CallbackReceiver,
    ReceivedCallback,
    RunningHub,
    faashub,
    running_hub,
)

pytestmark = pytest.mark.timeout(90)

# Prints the Authorization header the function received, "none" without one.
SHOW_AUTHORIZATION = "sh -c 'echo \"${Http_Authorization:-none}\"'"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    state_dir: Path = tmp_path_factory.mktemp("hub") / "state"
    with running_hub(state_dir, extra_args=["--auth-invoke"]) as running:
        for name, command in (
            ("digest", "sha256sum"),
            ("show-auth", SHOW_AUTHORIZATION),
        ):
            deployed = faashub(
                "deploy", "--name", name, "--fprocess", command, gateway=running.url
            )
            assert deployed.returncode == 0, deployed.stderr.decode()
        yield running


def test_invocation_without_credentials_is_401(hub: RunningHub) -> None:
    response = httpx.post(f"{hub.url}/function/digest", content=b"x", timeout=30)

    assert response.status_code == 401


def queue_and_wait(
    hub: RunningHub, function: str, body: bytes
) -> tuple[httpx.Response, ReceivedCallback]:
    """Queue a call with the hub's credentials; return the 202 and its callback."""
    with CallbackReceiver() as receiver:
        accepted = httpx.post(
            f"{hub.url}/async-function/{function}",
            content=body,
            headers={"X-Callback-Url": receiver.url},
            auth=hub.auth,
            timeout=30,
        )
        [callback] = receiver.wait_for(1)
    return accepted, callback


def test_queued_call_runs_with_credentials(hub: RunningHub) -> None:
    accepted, callback = queue_and_wait(hub, "digest", b"hello")

    assert accepted.status_code == 202
    assert callback.headers["X-Function-Status"] == "200"
    expected = hashlib.sha256(b"hello").hexdigest()
    assert callback.body.decode().split()[0] == expected


def test_function_never_sees_gateway_credentials(hub: RunningHub) -> None:
    accepted, callback = queue_and_wait(hub, "show-auth", b"")
    direct = httpx.post(
        f"{hub.url}/function/show-auth", content=b"", auth=hub.auth, timeout=30
    )

    assert accepted.status_code == 202
    assert callback.headers["X-Function-Status"] == "200"
    assert callback.body.strip() == b"none"
    assert direct.status_code == 200
    assert direct.content.strip() == b"none"


@pytest.mark.parametrize(
    "arguments",
    [pytest.param([], id="sync"), pytest.param(["--async"], id="async")],
)
def test_cli_invoke_wrong_password_explains(
    hub: RunningHub, tmp_path: Path, arguments: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "faashub", "invoke", "digest", *arguments],
        input=b"x",
        capture_output=True,
        timeout=60,
        check=False,
        env={
            **os.environ,
            "OPENFAAS_URL": hub.url,
            "FAASHUB_GATEWAY_USER": "admin",
            "FAASHUB_GATEWAY_PASSWORD": "wrong",
            "FAASHUB_AUTH_FILE": str(tmp_path / "auth.json"),
        },
    )

    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert "HTTP 401" in stderr
    assert "rejected the credentials of user 'admin'" in stderr
    assert "from FAASHUB_GATEWAY_USER and FAASHUB_GATEWAY_PASSWORD" in stderr
