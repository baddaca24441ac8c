"""Timeouts, unreachable servers and start errors of the Kubernetes API client.

A hung API server is the emulator with a reaction that never responds. An
unreachable one is a loopback port that nothing listens on, or a proxy to
the emulator that the test closes while the provider runs.
"""

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest

from faashub.logs import LimitedWarning
from faashub.settings import KubernetesProviderSettings
from provider.backend import ProviderStartError
from provider.kubernetes import backend, kube
from provider.kubernetes.backend import KubernetesBackend
from tests.conftest import wait_until, wait_until_async
from tests.provider.kubernetes.conftest import (
    DEPLOYMENTS,
    NAMESPACE,
    SECRETS,
    NamespacedEmulator,
    RunningProvider,
    add_pod,
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
    API server stops. `reopen` listens on the same port again, as when the
    API server returns.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._port = 0
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self._port}"

    async def reopen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._port)

    async def close(self) -> None:
        assert self._server is not None
        if not self._server.is_serving():
            return
        self._server.close()
        for writer in self._writers:
            writer.close()
        self._writers.clear()
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
        backend, "api_server_silent", LimitedWarning(backend.logger, interval_s=30.0)
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


STALE_LISTING = "function status served from a cache that may be out of date"


async def test_healthz_reports_lost_api_server(
    proxied_provider: tuple[RunningProvider, ClosableProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, proxy = proxied_provider
    deployed = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert deployed.status_code == 202, deployed.text
    healthy = await provider.client.get("/healthz")
    assert healthy.text == "OK"

    for outage in (1, 2):
        await proxy.close()
        # The watch ends with the connection, and the list after it fails.
        await wait_until_async(
            lambda: _health_text_starts(provider, "Degraded:"),
            description="/healthz to report the lost API server",
        )
        health = await provider.client.get("/healthz")
        assert health.status_code == 200
        assert "The Kubernetes API server has not returned" in health.text
        assert "Connection refused" in health.text
        assert "use the cache of" in health.text

        with caplog.at_level(logging.WARNING, logger=backend.logger.name):
            for _ in range(3):
                listed = await provider.client.get("/system/functions")
                assert listed.status_code == 200, listed.text
                assert [item["name"] for item in listed.json()] == ["fn"]
            status = await provider.client.get("/system/function/fn")
            assert status.status_code == 200, status.text
        stale_lines = [
            record for record in caplog.records if record.msg.startswith(STALE_LISTING)
        ]
        assert len(stale_lines) == outage
        assert "cache_synced_at" in stale_lines[-1].ctx

        await proxy.reopen()
        await wait_until_async(
            lambda: _health_text_starts(provider, "OK"),
            timeout_s=20.0,
            description="/healthz to report OK once the API server returns",
        )


async def _health_text_starts(provider: RunningProvider, prefix: str) -> bool:
    response = await provider.client.get("/healthz")
    return response.text.startswith(prefix)


class ResumablePodLog:
    """A followed pod log whose every request gets a response stream of its own.

    `add` sends a line on the latest stream only, because the emulator may keep
    an earlier stream's generator waiting after the provider's connection to
    it closed, and that generator would take the line.
    """

    def __init__(self, provider: RunningProvider, pod: str) -> None:
        self._streams: list[asyncio.Queue[bytes | None]] = []
        self.urls: list[str] = []
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"
        provider.emulator["get", path] << self._respond

    def add(self, line: bytes) -> None:
        self._streams[-1].put_nowait(line)

    def end(self) -> None:
        for stream in self._streams:
            stream.put_nowait(None)

    async def _respond(self, request: Any) -> AsyncIterator[bytes]:
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._streams.append(lines)
        self.urls.append(str(request.url))
        while (line := await lines.get()) is not None:
            yield line


@pytest.mark.timeout(60)
async def test_followed_log_reports_lost_api_server(
    proxied_provider: tuple[RunningProvider, ClosableProxy],
) -> None:
    provider, proxy = proxied_provider
    deployed = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert deployed.status_code == 202, deployed.text
    add_pod(provider, "fn-abc", "fn")
    pod_log = ResumablePodLog(provider, "fn-abc")
    before = b"2024-05-01T12:00:00.5Z before\n"
    try:
        async with provider.client.stream(
            "GET", "/system/logs", params={"name": "fn", "follow": "true"}
        ) as response:
            lines = response.aiter_lines()
            await wait_until(lambda: len(pod_log.urls) == 1, description="a log read")
            pod_log.add(before)
            first = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert first["text"] == "before"

            await proxy.close()
            lost = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert lost["instance"] == ""
            assert lost["text"] == (
                "faashub could not list the pods of this function: the Kubernetes "
                "API server could not be reached. Following goes on when the pod "
                "list succeeds again."
            )

            await proxy.reopen()
            back = json.loads(await asyncio.wait_for(anext(lines), 40))
            assert back["instance"] == ""
            assert back["text"].startswith("faashub listed the pods of this function")
            await wait_until(
                lambda: len(pod_log.urls) == 2,
                timeout_s=10.0,
                description="the pod log to be read again",
            )
            assert "sinceSeconds=" in pod_log.urls[1]
            # The kubelet sends the lines of the last seconds again, and the
            # provider skips those it sent before.
            # Lines after it pass, even two with the same timestamp.
            pod_log.add(
                before
                + b"2024-05-01T12:00:09Z after\n"
                + b"2024-05-01T12:00:09Z after, same second\n"
            )
            after = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert after["instance"] == "fn-abc"
            assert after["text"] == "after"
            same_second = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert same_second["text"] == "after, same second"
    finally:
        pod_log.end()


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
