"""Fixtures that run the Kubernetes provider against kmock's KubernetesEmulator.

No real Kubernetes API server can run on the test machines, so these tests
use `kmock.KubernetesEmulator`: an aiohttp server on 127.0.0.1 that stores
the objects it receives and serves list, watch, fetch, merge patch and
delete for them. It does not validate objects, apply label selectors,
set creationTimestamp or run controllers, so a test plays the controller
itself: it patches a Deployment's status to mark a replica available.

The provider is the real application, served by uvicorn on a loopback port
in the test's event loop, and reaches the emulator through a kubeconfig
file, as it would reach a cluster. Function traffic goes to an aiohttp echo
server through the address template `http://127.0.0.1:PORT/{namespace}/{name}`.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import httpx
import kmock
import pytest
import uvicorn

from faashub.settings import KubernetesProviderSettings
from provider import api
from provider.kubernetes.backend import KubernetesBackend
from tests.conftest import free_port, wait_until

DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
PODS = "v1/pods"
NAMESPACE_LIST_PATH = "/api/v1/namespaces"
NAMESPACE = "openfaas-fn"


def write_kubeconfig(path: Path, server_url: str) -> Path:
    """Write a kubeconfig whose one context reaches `server_url` without credentials."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}
        ],
        "current-context": "emulator",
    }
    path.write_text(json.dumps(document))
    return path


@dataclass
class Fault:
    """An error status that the emulator sends to the next `count` matches."""

    method: str
    path: str
    status: int
    message: str
    count: int = 1


@dataclass
class Hold:
    """A request that the emulator holds until the test releases it.

    The emulator applies the request first, then sets `reached` and keeps
    the response until `release` is set, as a slow API server would.
    """

    method: str
    path: str
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@attrs.define(kw_only=True)
class NamespacedEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus a list of Namespaces and faults that the test sets.

    kmock 0.8 cannot store or list Namespaces: its path parser reads the
    segment `namespaces` as the start of `namespaces/NAME/...`, so a request
    for `/api/v1/namespaces` fails with "not enough values to unpack" before
    any reaction can match it. This subclass serves `GET /api/v1/namespaces`
    itself, from `namespaces` (name to Namespace object), before kmock's
    parser runs. It serves no other Namespace request: no get by name, create,
    watch or label selector.

    kmock applies a create, update or delete to its stored objects even when
    a reaction returns an error for it. A failed write that must leave the
    objects unchanged is therefore a `Fault`, whose error this class sends
    before kmock sees the request.
    """

    namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    faults: list[Fault] = attrs.field(factory=list)
    held_requests: list[Hold] = attrs.field(factory=list)

    async def __call__(
        self, raw_request: aiohttp.web.BaseRequest
    ) -> aiohttp.web.StreamResponse:
        for fault in self.faults:
            if (
                fault.count > 0
                and raw_request.method == fault.method
                and raw_request.path == fault.path
            ):
                fault.count -= 1
                return aiohttp.web.json_response(
                    {
                        "apiVersion": "v1",
                        "kind": "Status",
                        "status": "Failure",
                        "message": fault.message,
                        "code": fault.status,
                    },
                    status=fault.status,
                )
        for hold in self.held_requests:
            if raw_request.method == hold.method and raw_request.path == hold.path:
                self.held_requests.remove(hold)
                response = await super().__call__(raw_request)
                hold.reached.set()
                await hold.release.wait()
                return response
        if raw_request.method == "GET" and raw_request.path == NAMESPACE_LIST_PATH:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "NamespaceList",
                    "metadata": {},
                    "items": list(self.namespaces.values()),
                }
            )
        return await super().__call__(raw_request)

    def add_namespace(self, name: str, *, annotations: dict[str, str]) -> None:
        self.namespaces[name] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "annotations": annotations},
        }


@dataclass
class EchoServer:
    """The functions' HTTP server: it records each request and echoes it as JSON."""

    port: int
    requests: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunningProvider:
    url: str
    backend: KubernetesBackend
    emulator: NamespacedEmulator
    echo: EchoServer
    client: httpx.AsyncClient

    def deployment(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return dict(self.emulator.objects[DEPLOYMENTS, namespace, name].raw)

    def service(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        return dict(self.emulator.objects[SERVICES, namespace, name].raw)

    def has_object(self, resource: str, namespace: str, name: str) -> bool:
        try:
            stored = self.emulator.objects[resource, namespace, name]
        except KeyError:
            return False
        return not stored.deleted

    async def patch_object(
        self, path: str, patch: dict[str, Any], *, status: int = 200
    ) -> None:
        """PATCH an object of the emulator, as a controller or kubectl would."""
        async with httpx.AsyncClient(base_url=str(self.emulator_url)) as client:
            response = await client.patch(
                path,
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            )
        assert response.status_code == status, response.text

    async def mark_available(
        self, name: str, replicas: int, namespace: str = NAMESPACE
    ) -> None:
        """Set the Deployment's available replicas, as its controller would."""
        await self.patch_object(
            f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status",
            {"status": {"availableReplicas": replicas, "readyReplicas": replicas}},
        )

    emulator_url: str = ""


def add_pod(provider: RunningProvider, name: str, function: str) -> None:
    """Store a pod of `function` in the emulator, as its ReplicaSet would create it."""
    provider.emulator.objects[PODS, NAMESPACE, name] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"faas_function": function},
        },
    }


async def _echo(
    server: EchoServer, request: aiohttp.web.Request
) -> aiohttp.web.Response:
    body = await request.read()
    record = {
        "method": request.method,
        "path": request.raw_path,
        "headers": dict(request.headers),
        "body": body.decode(),
    }
    server.requests.append(record)
    # A request sets the response status, to act as a function that fails.
    status = int(request.headers.get("X-Echo-Status", "200"))
    return aiohttp.web.json_response(record, status=status, headers={"X-Echo": "yes"})


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    server = EchoServer(port=free_port())
    app = aiohttp.web.Application()

    async def handle(request: aiohttp.web.Request) -> aiohttp.web.Response:
        return await _echo(server, request)

    app.router.add_route("*", "/{tail:.*}", handle)
    runner = aiohttp.web.AppRunner(app, access_log=None)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", server.port)
    await site.start()
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[NamespacedEmulator, str]]:
    async with NamespacedEmulator() as emulated, kmock.Server(emulated) as server:
        for resource in (DEPLOYMENTS, SERVICES, SECRETS, PODS):
            emulated.resources[resource] = emulated.ResourceInfo()
        yield emulated, str(server.url).rstrip("/")


@pytest.fixture
async def start_provider(
    emulator: tuple[NamespacedEmulator, str],
    echo_server: EchoServer,
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Return a coroutine function that starts a provider with extra settings."""
    emulated, emulator_url = emulator
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator_url)
    stops: list[Callable[[], Any]] = []

    async def start(
        clock: Callable[[], float] | None = None, **overrides: Any
    ) -> RunningProvider:
        port = free_port()
        fields: dict[str, Any] = {
            "port": port,
            "kubeconfig": str(kubeconfig),
            "function_address_template": (
                f"http://127.0.0.1:{echo_server.port}/{{namespace}}/{{name}}"
            ),
            "scale_from_zero_timeout_s": 10.0,
            "idle_check_interval_s": 3600.0,
        }
        settings = KubernetesProviderSettings(**{**fields, **overrides})
        backend = (
            KubernetesBackend(settings)
            if clock is None
            else KubernetesBackend(settings, clock=clock)
        )
        app = api.create_app(backend)
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            lifespan="on",
            access_log=False,
            log_config=None,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        await wait_until(
            lambda: backend.is_ready() and server.started or task.done(),
            timeout_s=15.0,
            description="the provider to start",
        )
        assert not task.done(), "the provider failed to start"
        url = f"http://127.0.0.1:{port}"
        client = httpx.AsyncClient(base_url=url, timeout=30.0)

        async def stop() -> None:
            await client.aclose()
            server.should_exit = True
            await asyncio.wait_for(task, 15.0)

        stops.append(stop)
        return RunningProvider(
            url=url,
            backend=backend,
            emulator=emulated,
            echo=echo_server,
            client=client,
            emulator_url=emulator_url,
        )

    try:
        yield start
    finally:
        for stop in reversed(stops):
            await stop()


@pytest.fixture
async def provider(start_provider: Callable[..., Any]) -> RunningProvider:
    running: RunningProvider = await start_provider()
    return running
