"""Timeouts and start errors of the provider's Kubernetes API client.

A hung API server is the emulator with a reaction that never responds, and
an unreachable one is a loopback port that nothing listens on.
"""

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

from faashub.settings import KubernetesProviderSettings
from provider.backend import ProviderStartError
from provider.kubernetes import kube
from provider.kubernetes.backend import KubernetesBackend
from tests.provider.kubernetes.conftest import (
    DEPLOYMENTS,
    SECRETS,
    NamespacedEmulator,
    RunningProvider,
    free_port,
    write_kubeconfig,
)

pytestmark = pytest.mark.timeout(60)

# Short enough for a test, and long enough that four of them (urllib3's
# default of 3 retries) stand out from one.
READ_TIMEOUT_S = 1.0


@pytest.fixture
async def hang_release() -> AsyncIterator[asyncio.Event]:
    """Return an event that ends every hung emulator response when set."""
    release = asyncio.Event()
    yield release
    release.set()


async def test_hung_get_waits_one_timeout(
    provider: RunningProvider,
    hang_release: asyncio.Event,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube, "READ_TIMEOUT_S", READ_TIMEOUT_S)

    async def hang() -> None:
        await hang_release.wait()

    provider.emulator["get", kmock.resource(SECRETS)] << hang

    started = time.monotonic()
    response = await provider.client.get("/system/secrets")
    elapsed_s = time.monotonic() - started

    assert response.status_code == 500, response.text
    assert "timed out" in response.text
    assert elapsed_s < 2 * READ_TIMEOUT_S
    secret_reads = provider.emulator["get", kmock.resource(SECRETS)]
    assert len(list(secret_reads)) == 1


async def test_start_unreachable_names_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    backend = KubernetesBackend(KubernetesProviderSettings(kubeconfig=str(kubeconfig)))

    with pytest.raises(ProviderStartError) as raised:
        await backend.start()

    message = str(raised.value)
    assert f"Cannot reach the Kubernetes API server at {url}" in message
    assert f"kubeconfig {kubeconfig}" in message
    assert "Connection refused" in message
    assert "RBAC" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("status", "rbac_hint"),
    [
        pytest.param(403, True, id="forbidden"),
        pytest.param(401, True, id="unauthorized"),
        pytest.param(500, False, id="server-error"),
    ],
)
async def test_start_error_hints_rbac_on_denial(
    emulator: tuple[NamespacedEmulator, str],
    tmp_path: Path,
    status: int,
    rbac_hint: bool,
) -> None:
    emulated, url = emulator
    emulated["get", kmock.resource(DEPLOYMENTS)] << kmock.KubernetesError(
        status=status, reason="Failure", message="deployments.apps failed"
    )
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
    backend = KubernetesBackend(KubernetesProviderSettings(kubeconfig=str(kubeconfig)))

    with pytest.raises(ProviderStartError) as raised:
        await backend.start()

    message = str(raised.value)
    assert f"the Kubernetes API server at {url}" in message
    assert f"kubeconfig {kubeconfig}" in message
    assert "deployments.apps failed" in message
    assert ("RBAC" in message) is rbac_hint


def test_failed_start_prints_no_traceback(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)

    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "faashub",
            "provider",
            "kubernetes",
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert started.returncode != 0
    assert "Traceback" not in started.stderr
    last_line = started.stderr.strip().splitlines()[-1]
    assert last_line.startswith(
        f"faashub: Cannot reach the Kubernetes API server at {url}"
    )
