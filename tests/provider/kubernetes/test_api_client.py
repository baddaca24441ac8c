"""Timeouts, unreachable servers and start errors of the Kubernetes API client.

A hung API server is the emulator with a reaction that never responds. An
unreachable one is a loopback port that nothing listens on, or a proxy to
the emulator that the test closes while the provider runs.
"""

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest

from faashub.settings import KubernetesProviderSettings
from provider.backend import ProviderStartError
from provider.kubernetes import backend, kube
from provider.kubernetes.backend import KubernetesBackend
from provider.kubernetes.log_limit import RepeatedWarning
from tests.provider.kubernetes.conftest import (
    DEPLOYMENTS,
    NAMESPACE,
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

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert "did not respond in time" in response.text
    assert elapsed_s < 2 * READ_TIMEOUT_S
    secret_reads = provider.emulator["get", kmock.resource(SECRETS)]
    assert len(list(secret_reads)) == 1


class ClosableProxy:
    """A TCP proxy from a loopback port to the emulator, until `close` is called.

    After `close`, connections to the port are refused, as they are when an
    API server stops.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            _pipe(reader, upstream_writer),
            _pipe(upstream_reader, writer),
            return_exceptions=True,
        )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
async def proxied_provider(
    emulator: tuple[NamespacedEmulator, str],
    start_provider: Callable[..., Any],
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningProvider, ClosableProxy]]:
    """Start a provider that reaches the emulator through a ClosableProxy."""
    _, emulator_url = emulator
    proxy = ClosableProxy(int(emulator_url.rsplit(":", 1)[1]))
    await proxy.start()
    kubeconfig = write_kubeconfig(tmp_path / "proxied-kubeconfig", proxy.url)
    provider: RunningProvider = await start_provider(kubeconfig=str(kubeconfig))
    try:
        yield provider, proxy
    finally:
        await proxy.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param(
            "POST",
            "/system/functions",
            {"service": "fn2", "image": "x"},
            id="deploy",
        ),
        pytest.param("GET", "/system/secrets", None, id="list-secrets"),
        pytest.param(
            "POST",
            "/system/secrets",
            {"name": "s1", "value": "v"},
            id="create-secret",
        ),
        pytest.param("GET", "/system/logs?name=fn", None, id="logs"),
    ],
)
async def test_unreachable_api_server_is_503(
    proxied_provider: tuple[RunningProvider, ClosableProxy],
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    provider, proxy = proxied_provider
    deployed = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert deployed.status_code == 202, deployed.text
    await proxy.close()

    response = await provider.client.request(method, path, json=body)

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert "The Kubernetes API server could not be reached" in response.text
    assert "Send the request again in a few seconds" in response.text
    assert "HTTPConnection" not in response.text
    assert "Max retries" not in response.text


async def test_scale_from_zero_unreachable_is_503(
    proxied_provider: tuple[RunningProvider, ClosableProxy],
) -> None:
    provider, proxy = proxied_provider
    deployed = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert deployed.status_code == 202, deployed.text
    scaled = await provider.client.post(
        "/system/scale-function/fn", json={"serviceName": "fn", "replicas": 0}
    )
    assert scaled.status_code == 202, scaled.text
    cached = provider.backend._cached.get("fn", NAMESPACE) or {}
    assert cached["spec"]["replicas"] == 0
    await proxy.close()

    response = await provider.client.post("/function/fn", content=b"x")

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-openfaas-internal"] == "proxy"
    assert "could not scale from zero function fn.openfaas-fn" in response.text
    assert provider.echo.requests == []


async def test_unreachable_api_server_logged_once(
    proxied_provider: tuple[RunningProvider, ClosableProxy],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    template = "kubernetes api server did not respond: %s"
    monkeypatch.setattr(
        backend, "api_server_silent", RepeatedWarning(backend.logger, template)
    )
    provider, proxy = proxied_provider
    deployed = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert deployed.status_code == 202, deployed.text
    await proxy.close()

    with caplog.at_level(logging.WARNING, logger=backend.logger.name):
        for _ in range(3):
            response = await provider.client.post(
                "/system/scale-function/fn", json={"serviceName": "fn", "replicas": 2}
            )
            assert response.status_code == 503, response.text

    records = [record for record in caplog.records if record.msg == template]
    assert len(records) == 1
    assert records[0].ctx == {"action": "scale function fn.openfaas-fn"}


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
