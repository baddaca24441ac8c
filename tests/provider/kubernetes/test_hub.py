"""The whole hub on the Kubernetes provider: gateway, queue-worker and cron connector.

No real Kubernetes API server can run on the test machines, so kmock's
`KubernetesEmulator`, served in this test's event loop, takes the place of
a real API server. Everything else is real and runs as its own process,
started one by one as `faashub up` would start it. `faashub provider
kubernetes` reaches the emulator through a kubeconfig file. The gateway
forwards to that provider and stores async calls in a real nats-server, a
queue-worker runs them, and the cron connector invokes a function whose
`schedule` annotation is `@every 1s`. The gateway requires basic auth
from a credentials folder, which the worker and the connector read as they
do in the hub.

The provider sends function traffic to an aiohttp server in this process
through the address template `http://127.0.0.1:PORT/{namespace}/{name}`, so
the path that the server sees tells which function was called. The test
plays the Deployment controller: it patches a Deployment's status to mark a
replica available.
"""

import asyncio
import datetime
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LOOPBACK, free_port
from tests.hub_support import CallbackReceiver
from tests.provider.kubernetes.conftest import (
    NAMESPACE,
    PODS,
    EchoServer,
    NamespacedEmulator,
    write_kubeconfig,
)

pytestmark = pytest.mark.timeout(150)

# Generous: the suite runs in two processes, and another whole hub may start
# on the same two cores at the same moment.
START_TIMEOUT_S = 80.0
STOP_TIMEOUT_S = 20.0
USER = "admin"
PASSWORD = "hub-test-password"


@dataclass
class Component:
    """One hub process, with the file that collects its output."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    health_url: str

    def output_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Hub:
    gateway_url: str
    provider_url: str
    emulator_url: str
    auth: httpx.BasicAuth
    components: list[Component] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(component.output_tail() for component in self.components)

    async def wait_for(
        self, condition: Callable[[], bool], *, timeout_s: float, description: str
    ) -> None:
        """Poll `condition`; on timeout fail with the output of every process."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {description}\n{self.output()}")
            await asyncio.sleep(0.02)

    async def mark_available(self, name: str, replicas: int = 1) -> None:
        """Set a Deployment's available replicas, as its controller would."""
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}/status"
        status = {"availableReplicas": replicas, "readyReplicas": replicas}
        async with httpx.AsyncClient(base_url=self.emulator_url) as client:
            response = await client.patch(
                path,
                json={"status": status},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        assert response.status_code == 200, response.text


def start_component(
    name: str, arguments: list[str], *, log_dir: Path, health_url: str
) -> Component:
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "faashub", *arguments],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return Component(name, process, log_path, health_url)


async def wait_until_healthy(components: list[Component]) -> None:
    """Poll every component's /healthz until each returns 200."""
    waiting = list(components)
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
    async with httpx.AsyncClient(timeout=2.0) as client:
        while waiting:
            for component in list(waiting):
                exit_code = component.process.poll()
                assert exit_code is None, (
                    f"{component.name} exited with {exit_code}:\n"
                    + component.output_tail()
                )
                try:
                    response = await client.get(component.health_url)
                except httpx.TransportError:
                    continue
                if response.status_code == 200:
                    waiting.remove(component)
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(
                    "not healthy in time: "
                    + ", ".join(component.name for component in waiting)
                    + "\n"
                    + "\n".join(component.output_tail() for component in waiting)
                )
            await asyncio.sleep(0.1)


async def stop_components(components: list[Component]) -> None:
    """SIGTERM each process, last started first, without blocking the loop.

    The loop keeps serving the emulator meanwhile, so the provider's watch
    ends as it would against a real API server.
    """
    for component in reversed(components):
        if component.process.poll() is None:
            component.process.terminate()
        for _ in range(int(STOP_TIMEOUT_S / 0.05)):
            if component.process.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            component.process.kill()
            component.process.wait()


def write_credentials(folder: Path) -> Path:
    folder.mkdir(mode=0o700)
    (folder / "basic-auth-user").write_text(USER)
    (folder / "basic-auth-password").write_text(PASSWORD)
    return folder


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as receiver:
        yield receiver


@pytest.fixture
async def hub(
    emulator: tuple[NamespacedEmulator, str],
    echo_server: EchoServer,
    nats_url: str,
    tmp_path: Path,
) -> AsyncIterator[Hub]:
    _, emulator_url = emulator
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator_url)
    credentials = str(write_credentials(tmp_path / "credentials"))
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    common = ["--log-level", "INFO"]
    provider_port, gateway_port = free_port(), free_port()
    worker_health_port, cron_health_port = free_port(), free_port()
    provider_url = f"http://{LOOPBACK}:{provider_port}"
    gateway_url = f"http://{LOOPBACK}:{gateway_port}"
    # The provider token, as the chart mounts it into the gateway and the
    # provider.
    token_file = tmp_path / "provider-token"
    token_file.write_text("token-of-this-test\n")
    hub = Hub(
        gateway_url=gateway_url,
        provider_url=provider_url,
        emulator_url=emulator_url,
        auth=httpx.BasicAuth(USER, PASSWORD),
    )
    template = f"http://{LOOPBACK}:{echo_server.port}/{{namespace}}/{{name}}"

    # All four start at once, as in `faashub up`: each one waits for what it
    # needs, so the order only matters when they stop.
    launches = [
        (
            "provider",
            [
                "provider",
                "kubernetes",
                "--host",
                LOOPBACK,
                "--port",
                str(provider_port),
                "--kubeconfig",
                str(kubeconfig),
                "--function-address-template",
                template,
                "--idle-check-interval-s",
                "3600",
                "--auth-token-file",
                str(token_file),
            ],
            f"{provider_url}/healthz",
        ),
        (
            "gateway",
            [
                "gateway",
                "--host",
                LOOPBACK,
                "--port",
                str(gateway_port),
                "--provider-url",
                provider_url,
                "--nats-url",
                nats_url,
                "--auth-secret-mount-path",
                credentials,
                "--provider-token-file",
                str(token_file),
            ],
            f"{gateway_url}/healthz",
        ),
        (
            "queue-worker",
            [
                "queue-worker",
                "--gateway-url",
                gateway_url,
                "--nats-url",
                nats_url,
                "--health-host",
                LOOPBACK,
                "--health-port",
                str(worker_health_port),
                "--retry-min-wait-s",
                "0.2",
                "--gateway-secret-mount-path",
                credentials,
            ],
            f"http://{LOOPBACK}:{worker_health_port}/healthz",
        ),
        (
            "cron-connector",
            [
                "connector",
                "cron",
                "--gateway-url",
                gateway_url,
                "--nats-url",
                nats_url,
                "--rebuild-interval-s",
                "1",
                "--health-host",
                LOOPBACK,
                "--health-port",
                str(cron_health_port),
                "--gateway-secret-mount-path",
                credentials,
            ],
            f"http://{LOOPBACK}:{cron_health_port}/healthz",
        ),
    ]
    try:
        for name, arguments, health_url in launches:
            hub.components.append(
                start_component(
                    name,
                    [*arguments, *common],
                    log_dir=log_dir,
                    health_url=health_url,
                )
            )
        await wait_until_healthy(hub.components)
        yield hub
    finally:
        await stop_components(hub.components)


async def test_hub_runs_on_kubernetes_provider(
    hub: Hub,
    echo_server: EchoServer,
    callback_receiver: CallbackReceiver,
    emulator: tuple[NamespacedEmulator, str],
    tmp_path: Path,
) -> None:
    async with httpx.AsyncClient(base_url=hub.gateway_url, timeout=30.0) as client:
        unauthorized = await client.get("/system/functions")
        assert unauthorized.status_code == 401
        around_the_gateway = await client.post(
            f"{hub.provider_url}/system/functions",
            json={"service": "intruder", "image": "example/intruder:1"},
        )
        assert around_the_gateway.status_code == 401, around_the_gateway.text

        deployed = await client.post(
            "/system/functions",
            json={"service": "echo", "image": "example/echo:1"},
            auth=hub.auth,
        )
        assert deployed.status_code == 202, deployed.text
        scheduled = await client.post(
            "/system/functions",
            json={
                "service": "ticker",
                "image": "example/ticker:1",
                "annotations": {"topic": "cron-function", "schedule": "@every 1s"},
            },
            auth=hub.auth,
        )
        assert scheduled.status_code == 202, scheduled.text

        not_ready = await client.post("/function/echo", content=b"early")
        assert not_ready.status_code == 503, not_ready.text
        assert not_ready.headers["x-openfaas-internal"] == "proxy"

        await hub.mark_available("echo")
        await hub.mark_available("ticker")

        listed = await client.get("/system/functions", auth=hub.auth)
        assert listed.status_code == 200, listed.text
        by_name = {function["name"]: function for function in listed.json()}
        assert set(by_name) == {"echo", "ticker"}
        assert by_name["ticker"]["annotations"]["schedule"] == "@every 1s"

        # The provider's cache follows the emulator's watch, so the first
        # call after marking a replica available may still get 503.
        async def sync_call() -> httpx.Response:
            for _ in range(100):
                response = await client.post(
                    "/function/echo/path?x=1",
                    content=b"sync body",
                    headers={"X-Call-Id": "sync-1"},
                )
                if response.status_code != 503:
                    return response
                await asyncio.sleep(0.05)
            return response

        synced = await sync_call()
        assert synced.status_code == 200, synced.text + hub.output()
        assert synced.headers["x-echo"] == "yes"
        echoed = synced.json()
        assert echoed["path"] == f"/{NAMESPACE}/echo/path?x=1"
        assert echoed["body"] == "sync body"
        assert echoed["headers"]["X-Call-Id"] == "sync-1"

        accepted = await client.post(
            "/async-function/echo",
            content=b"async body",
            headers={"X-Callback-Url": callback_receiver.url},
        )
        assert accepted.status_code == 202, accepted.text
        call_id = accepted.headers["x-call-id"]

        await hub.wait_for(
            lambda: bool(callback_receiver.received),
            timeout_s=20.0,
            description="the async call's callback",
        )
        [callback] = callback_receiver.received
        assert callback.headers["X-Call-Id"] == call_id
        assert callback.headers["X-Function-Status"] == "200"
        called_back = json.loads(callback.body)
        assert called_back["path"] == f"/{NAMESPACE}/echo/"
        assert called_back["body"] == "async body"

        # `faashub logs`, as a user runs it, reads the pod's log through the
        # gateway and the provider.
        emulated, _ = emulator
        emulated.objects[PODS, NAMESPACE, "echo-abc"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "echo-abc",
                "namespace": NAMESPACE,
                "labels": {"faas_function": "echo"},
            },
        }
        log_requests: list[str] = []
        # Recent enough for --since 10m, which drops older lines.
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        async def pod_log(request: Any) -> bytes:
            log_requests.append(str(request.url))
            return f"{stamp} handled sync-1\n".encode()

        emulated["get", f"/api/v1/namespaces/{NAMESPACE}/pods/echo-abc/log"] << (
            pod_log
        )
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "faashub",
            "logs",
            "echo",
            "--tail",
            "1",
            "--since",
            "10m",
            "--gateway",
            hub.gateway_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "HOME": str(tmp_path),
                "FAASHUB_GATEWAY_USER": USER,
                "FAASHUB_GATEWAY_PASSWORD": PASSWORD,
            },
        )
        out, err = await asyncio.wait_for(cli.communicate(), 30.0)
        assert cli.returncode == 0, err.decode()
        assert out.decode() == f"{stamp} echo (echo-abc) handled sync-1\n"
        [log_url] = log_requests
        assert "tailLines=1" in log_url
        assert "sinceSeconds=" in log_url

        def cron_calls() -> list[dict[str, Any]]:
            return [
                request
                for request in echo_server.requests
                if request["path"] == f"/{NAMESPACE}/ticker/"
            ]

        await hub.wait_for(
            lambda: len(cron_calls()) >= 2,
            timeout_s=20.0,
            description="two cron invocations of ticker",
        )
        ticks = cron_calls()
        assert all(tick["headers"]["X-Connector"] == "cron-connector" for tick in ticks)
        assert all(tick["headers"]["X-Topic"] == "cron-function" for tick in ticks)
        scheduled_at = [tick["headers"]["X-Cron-Scheduled-At"] for tick in ticks]
        assert len(set(scheduled_at)) == len(scheduled_at)
