"""Invocation, scale from and to zero, secrets, namespaces and logs on the emulator."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from provider.logs_api import parse_rfc3339
from tests.provider.kubernetes.conftest import (
    DEPLOYMENTS,
    NAMESPACE,
    SECRETS,
    RunningProvider,
    add_pod,
)

pytestmark = pytest.mark.timeout(60)


async def deploy(provider: RunningProvider, name: str = "fn", **fields: Any) -> None:
    response = await provider.client.post(
        "/system/functions", json={"service": name, "image": "x", **fields}
    )
    assert response.status_code == 202, response.text


async def wait_for_cache(
    provider: RunningProvider,
    name: str,
    *,
    available: int,
    namespace: str = NAMESPACE,
) -> None:
    for _ in range(200):
        cached = provider.backend._cached.get(name, namespace) or {}
        if (cached.get("status") or {}).get("availableReplicas", 0) == available:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"the cache never showed {available} available replicas of {name}")


async def test_invoke_reaches_service(provider: RunningProvider) -> None:
    await deploy(provider)
    await provider.mark_available("fn", 1)
    await wait_for_cache(provider, "fn", available=1)

    response = await provider.client.post(
        "/function/fn/a%2Fb/c?x=1",
        content=b"ping",
        headers=[(b"X-Call-Id", b"c-1"), (b"X-Greeting", "grüße ✓".encode())],
    )

    assert response.status_code == 200, response.text
    assert response.headers["x-echo"] == "yes"
    echoed = response.json()
    assert echoed["path"] == "/openfaas-fn/fn/a%2Fb/c?x=1"
    assert echoed["body"] == "ping"
    assert echoed["headers"]["X-Call-Id"] == "c-1"
    # The echo server decodes header bytes as UTF-8.
    assert echoed["headers"]["X-Greeting"] == "grüße ✓"


async def test_invoke_streams_large_body(provider: RunningProvider) -> None:
    await deploy(provider)
    await provider.mark_available("fn", 1)
    await wait_for_cache(provider, "fn", available=1)
    block = b"0123456789abcdef" * 4096
    # 960 KiB: the echo server takes bodies up to 1 MiB.
    blocks = 15

    async def upload() -> AsyncIterator[bytes]:
        for _ in range(blocks):
            yield block
            # A pause makes the provider see a body that has not fully arrived.
            await asyncio.sleep(0.01)

    response = await provider.client.post(
        "/function/fn",
        content=upload(),
        headers={"Content-Length": str(len(block) * blocks)},
    )

    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["body"] == (block * blocks).decode()
    assert echoed["headers"]["Content-Length"] == str(len(block) * blocks)
    assert "Transfer-Encoding" not in echoed["headers"]


async def test_function_error_passes_unmarked(provider: RunningProvider) -> None:
    await deploy(provider)
    await provider.mark_available("fn", 1)
    await wait_for_cache(provider, "fn", available=1)

    response = await provider.client.post(
        "/function/fn", content=b"x", headers={"X-Echo-Status": "500"}
    )

    assert response.status_code == 500
    assert response.headers["x-echo"] == "yes"
    # The function's own error, so not marked as the provider's.
    assert "x-openfaas-internal" not in response.headers


async def test_invoke_not_ready_is_503(provider: RunningProvider) -> None:
    await deploy(provider)

    response = await provider.client.post("/function/fn", content=b"x")

    assert response.status_code == 503
    assert response.headers["x-openfaas-internal"] == "proxy"
    assert "No endpoints available" in response.text
    assert provider.echo.requests == []


async def test_invoke_unknown_is_404(provider: RunningProvider) -> None:
    response = await provider.client.post("/function/ghost", content=b"x")

    assert response.status_code == 404


async def test_scale_from_zero_waits(provider: RunningProvider) -> None:
    await deploy(provider, labels={"com.openfaas.scale.min": "2"})
    await provider.client.post("/system/scale-function/fn", json={"replicas": 0})

    call = asyncio.create_task(provider.client.post("/function/fn", content=b"hi"))
    for _ in range(200):
        if provider.deployment("fn")["spec"]["replicas"] == 2:
            break
        await asyncio.sleep(0.02)
    assert provider.deployment("fn")["spec"]["replicas"] == 2
    assert not call.done()
    await provider.mark_available("fn", 1)
    response = await asyncio.wait_for(call, 15)

    assert response.status_code == 200, response.text
    assert response.json()["body"] == "hi"


async def test_scale_from_zero_bound_is_504(start_provider: Any) -> None:
    provider: RunningProvider = await start_provider(scale_from_zero_timeout_s=0.5)
    await deploy(provider, labels={"com.openfaas.scale.min": "0"})

    response = await provider.client.post("/function/fn", content=b"hi")

    assert response.status_code == 504
    assert response.headers["x-openfaas-internal"] == "proxy"
    assert provider.deployment("fn")["spec"]["replicas"] == 1
    assert provider.echo.requests == []


async def test_idle_function_scaled_to_zero(start_provider: Any) -> None:
    now = [1000.0]
    provider: RunningProvider = await start_provider(clock=lambda: now[0])
    labels = {
        "com.openfaas.scale.zero": "true",
        "com.openfaas.scale.zero-duration": "2m",
    }
    await deploy(provider, "idle", labels=labels)
    await deploy(provider, "busy")

    now[0] += 119
    assert await provider.backend.scale_idle_functions() == []
    now[0] += 2
    scaled = await provider.backend.scale_idle_functions()

    assert [ref.name for ref in scaled] == ["idle"]
    assert provider.deployment("idle")["spec"]["replicas"] == 0
    assert provider.deployment("busy")["spec"]["replicas"] == 1


async def test_idle_timer_restarts_on_call(start_provider: Any) -> None:
    now = [1000.0]
    provider: RunningProvider = await start_provider(clock=lambda: now[0])
    labels = {
        "com.openfaas.scale.zero": "true",
        "com.openfaas.scale.zero-duration": "60s",
    }
    await deploy(provider, labels=labels)
    await provider.mark_available("fn", 1)
    await wait_for_cache(provider, "fn", available=1)

    now[0] += 50
    response = await provider.client.post("/function/fn", content=b"x")
    assert response.status_code == 200
    now[0] += 50

    assert await provider.backend.scale_idle_functions() == []
    assert provider.deployment("fn")["spec"]["replicas"] == 1


async def test_secret_lifecycle(provider: RunningProvider) -> None:
    created = await provider.client.post(
        "/system/secrets", json={"name": "api-key", "value": "hunter2"}
    )
    assert created.status_code == 202, created.text
    stored = dict(provider.emulator.objects[SECRETS, NAMESPACE, "api-key"].raw)
    assert stored["type"] == "Opaque"
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "faashub"}
    assert base64.b64decode(stored["data"]["api-key"]) == b"hunter2"

    duplicate = await provider.client.post(
        "/system/secrets", json={"name": "api-key", "value": "other"}
    )
    assert duplicate.status_code == 409

    listed = await provider.client.get("/system/secrets")
    assert listed.json() == [{"name": "api-key", "namespace": NAMESPACE}]
    assert "hunter2" not in listed.text

    updated = await provider.client.put(
        "/system/secrets",
        json={"name": "api-key", "rawValue": base64.b64encode(b"\x00new").decode()},
    )
    assert updated.status_code == 202, updated.text
    stored = dict(provider.emulator.objects[SECRETS, NAMESPACE, "api-key"].raw)
    assert base64.b64decode(stored["data"]["api-key"]) == b"\x00new"

    await deploy(provider, secrets=["api-key"])
    in_use = await provider.client.request(
        "DELETE", "/system/secrets", json={"name": "api-key"}
    )
    assert in_use.status_code == 409
    assert "used by function 'fn'. Remove it from the secrets of that function" in (
        in_use.text
    )

    await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )
    deleted = await provider.client.request(
        "DELETE", "/system/secrets", json={"name": "api-key"}
    )
    assert deleted.status_code == 202, deleted.text
    assert not provider.has_object(SECRETS, NAMESPACE, "api-key")


async def test_secret_unknown_is_404(provider: RunningProvider) -> None:
    updated = await provider.client.put(
        "/system/secrets", json={"name": "ghost", "value": "x"}
    )
    deleted = await provider.client.request(
        "DELETE", "/system/secrets", json={"name": "ghost"}
    )

    assert updated.status_code == 404
    assert deleted.status_code == 404


async def test_unmanaged_secret_left_alone(provider: RunningProvider) -> None:
    provider.emulator.objects[SECRETS, NAMESPACE, "token"] = {
        "metadata": {"name": "token", "namespace": NAMESPACE},
        "data": {"token": "eA=="},
    }

    listed = await provider.client.get("/system/secrets")
    deleted = await provider.client.request(
        "DELETE", "/system/secrets", json={"name": "token"}
    )

    assert listed.json() == []
    assert deleted.status_code == 400
    assert provider.has_object(SECRETS, NAMESPACE, "token")


async def test_annotated_namespace_serves_functions(
    provider: RunningProvider,
) -> None:
    # kmock cannot list Namespaces itself; NamespacedEmulator in conftest
    # serves this list.
    provider.emulator.add_namespace("team-a", annotations={"openfaas": "1"})
    provider.emulator.add_namespace("plain", annotations={})
    provider.emulator.add_namespace("other", annotations={"openfaas": "0"})
    provider.emulator.add_namespace("kube-system", annotations={"openfaas": "1"})

    namespaces = await provider.client.get("/system/namespaces")
    assert namespaces.status_code == 200, namespaces.text
    assert namespaces.json() == [NAMESPACE, "team-a"]

    await deploy(provider, namespace="team-a")
    deployment = provider.deployment("fn", "team-a")
    assert deployment["metadata"]["namespace"] == "team-a"
    assert provider.service("fn", "team-a")["metadata"]["namespace"] == "team-a"
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")

    listed = await provider.client.get("/system/functions?namespace=team-a")
    assert [function["name"] for function in listed.json()] == ["fn"]
    assert listed.json()[0]["namespace"] == "team-a"
    default_listed = await provider.client.get("/system/functions")
    assert default_listed.json() == []

    await provider.mark_available("fn", 1, namespace="team-a")
    await wait_for_cache(provider, "fn", available=1, namespace="team-a")
    invoked = await provider.client.post("/function/fn.team-a", content=b"hi")
    assert invoked.status_code == 200, invoked.text
    assert invoked.json()["path"] == "/team-a/fn/"
    unqualified = await provider.client.post("/function/fn", content=b"hi")
    assert unqualified.status_code == 404


@pytest.mark.parametrize(
    ("namespace", "status"),
    [
        pytest.param("plain", 404, id="not-annotated"),
        pytest.param("other", 404, id="annotated-0"),
        pytest.param("missing", 404, id="missing"),
        pytest.param("kube-system", 400, id="kube-system"),
    ],
)
async def test_deploy_rejects_namespace(
    provider: RunningProvider, namespace: str, status: int
) -> None:
    provider.emulator.add_namespace("plain", annotations={})
    provider.emulator.add_namespace("other", annotations={"openfaas": "0"})
    provider.emulator.add_namespace("kube-system", annotations={"openfaas": "1"})

    response = await provider.client.post(
        "/system/functions",
        json={"service": "fn", "image": "x", "namespace": namespace},
    )
    invoked = await provider.client.post(f"/function/fn.{namespace}", content=b"")

    assert response.status_code == status, response.text
    assert repr(namespace) in response.text
    assert not provider.has_object(DEPLOYMENTS, namespace, "fn")
    assert invoked.status_code == status
    assert provider.echo.requests == []


async def test_bare_call_uses_function_namespace(start_provider: Any) -> None:
    provider: RunningProvider = await start_provider(function_namespace="functions")
    await deploy(provider)
    assert provider.has_object(DEPLOYMENTS, "functions", "fn")
    await provider.mark_available("fn", 1, namespace="functions")
    await wait_for_cache(provider, "fn", available=1, namespace="functions")

    response = await provider.client.post("/function/fn", content=b"x")

    assert response.status_code == 200, response.text
    assert response.json()["path"] == "/functions/fn/"


async def test_single_namespace_mode(start_provider: Any) -> None:
    provider: RunningProvider = await start_provider(cluster_wide=False)

    namespaces = await provider.client.get("/system/namespaces")
    refused = await provider.client.get("/system/functions?namespace=team-a")

    assert namespaces.json() == ["openfaas-fn"]
    assert refused.status_code == 404


async def test_logs_stream_pod_lines(provider: RunningProvider) -> None:
    await deploy(provider)
    add_pod(provider, "fn-abc", "fn")
    add_pod(provider, "other-xyz", "other")
    log_paths: list[str] = []

    async def pod_log(request: Any) -> bytes:
        log_paths.append(str(request.url))
        return (
            b"2024-05-01T12:00:00.123456789Z first line\n"
            b"2024-05-01T12:00:01Z second line\n"
        )

    provider.emulator["get", "/api/v1/namespaces/openfaas-fn/pods/fn-abc/log"] << (
        pod_log
    )

    response = await provider.client.get("/system/logs?name=fn&tail=5")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    messages = [json.loads(line) for line in response.text.splitlines()]
    assert messages == [
        {
            "name": "fn",
            "namespace": NAMESPACE,
            "instance": "fn-abc",
            "timestamp": "2024-05-01T12:00:00.123456789Z",
            "text": "first line",
        },
        {
            "name": "fn",
            "namespace": NAMESPACE,
            "instance": "fn-abc",
            "timestamp": "2024-05-01T12:00:01Z",
            "text": "second line",
        },
    ]
    [url] = log_paths
    assert "tailLines=5" in url
    assert "timestamps=true" in url
    assert "container=fn" in url


async def test_logs_unknown_function_404(provider: RunningProvider) -> None:
    response = await provider.client.get("/system/logs?name=ghost")

    assert response.status_code == 404


async def test_logs_unknown_instance_404(provider: RunningProvider) -> None:
    await deploy(provider)
    add_pod(provider, "fn-abc", "fn")
    add_pod(provider, "other-xyz", "other")

    for instance in ("nosuchpod", "other-xyz"):
        response = await provider.client.get(
            "/system/logs", params={"name": "fn", "instance": instance}
        )

        assert response.status_code == 404, response.text
        assert f"has no pod named {instance!r}" in response.text


async def test_logs_without_pods_send_reason(provider: RunningProvider) -> None:
    await deploy(provider)

    response = await provider.client.get("/system/logs?name=fn")

    assert response.status_code == 200, response.text
    [message] = [json.loads(line) for line in response.text.splitlines()]
    assert message["name"] == "fn"
    assert message["namespace"] == NAMESPACE
    assert message["instance"] == ""
    assert message["text"].startswith("faashub found no pods of this function.")
    assert "follow" not in message["text"]
    parse_rfc3339(message["timestamp"])


@pytest.mark.timeout(30)
async def test_logs_follow_waits_for_pods(provider: RunningProvider) -> None:
    await deploy(provider)
    pod_log: LivePodLog | None = None
    try:
        async with provider.client.stream(
            "GET", "/system/logs", params={"name": "fn", "follow": "true"}
        ) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            reason = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert reason["instance"] == ""
            assert reason["text"].startswith("faashub found no pods")
            assert "Their logs follow once they start." in reason["text"]

            # A scale from zero starts a pod, which the next poll finds.
            add_pod(provider, "fn-abc", "fn")
            pod_log = LivePodLog(provider, "fn-abc")
            pod_log.add("2024-05-01T12:00:00Z", "started")
            started = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert started["instance"] == "fn-abc"
            assert started["text"] == "started"
    finally:
        if pod_log is not None:
            pod_log.end()


# The API server's message for the log of a pod whose image does not pull.
PULL_FAILURE = (
    'container "fn" in pod "fn-wait" is waiting to start: trying and failing '
    "to pull image"
)


def fail_pod_log(provider: RunningProvider, pod: str) -> None:
    path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"
    provider.emulator["get", path] << kmock.KubernetesError(
        status=400, reason="BadRequest", message=PULL_FAILURE
    )


async def test_logs_unreadable_pod_sends_reason(provider: RunningProvider) -> None:
    await deploy(provider)
    add_pod(provider, "fn-wait", "fn")
    fail_pod_log(provider, "fn-wait")

    response = await provider.client.get("/system/logs?name=fn")

    assert response.status_code == 200, response.text
    [message] = [json.loads(line) for line in response.text.splitlines()]
    assert message["name"] == "fn"
    assert message["namespace"] == NAMESPACE
    assert message["instance"] == "fn-wait"
    assert message["text"] == (
        "faashub could not read the log of this pod: the Kubernetes API server "
        f"returned 400 BadRequest: {PULL_FAILURE}"
    )
    parse_rfc3339(message["timestamp"])


@pytest.mark.timeout(30)
async def test_logs_follow_reports_reason_once(provider: RunningProvider) -> None:
    await deploy(provider)
    add_pod(provider, "fn-wait", "fn")
    failures_left = 2
    live_lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def live_log() -> AsyncIterator[bytes]:
        while (line := await live_lines.get()) is not None:
            yield line

    def pod_log(request: Any) -> Any:
        # The first reads fail as while the image pulls, then the container runs.
        nonlocal failures_left
        if failures_left > 0:
            failures_left -= 1
            return kmock.KubernetesError(
                status=400, reason="BadRequest", message=PULL_FAILURE
            )
        return live_log()

    path = f"/api/v1/namespaces/{NAMESPACE}/pods/fn-wait/log"
    provider.emulator["get", path] << pod_log
    live_lines.put_nowait(b"2024-05-01T12:00:00Z started\n")
    try:
        async with provider.client.stream(
            "GET", "/system/logs", params={"name": "fn", "follow": "true"}
        ) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()

            first = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert first["instance"] == "fn-wait"
            assert PULL_FAILURE in first["text"]

            # The second failed read, one poll later, sends no second message.
            second = json.loads(await asyncio.wait_for(anext(lines), 15))
            assert second["text"] == "started"
            assert failures_left == 0
    finally:
        live_lines.put_nowait(None)


class LivePodLog:
    """A followed pod log: the emulator streams each line a test adds, and waits.

    kmock sends an async iterator returned by a reaction as a chunked
    response, one chunk per item, so the connection stays open between
    lines as a kubelet's `follow=true` log does. `end` closes the stream.
    """

    def __init__(self, provider: RunningProvider, pod: str) -> None:
        self._lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.urls: list[str] = []
        path = f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/log"
        provider.emulator["get", path] << self._respond

    def add(self, stamp: str, text: str) -> None:
        self._lines.put_nowait(f"{stamp} {text}\n".encode())

    def end(self) -> None:
        self._lines.put_nowait(None)

    async def _respond(self, request: Any) -> AsyncIterator[bytes]:
        self.urls.append(str(request.url))
        while (line := await self._lines.get()) is not None:
            yield line


@pytest.mark.timeout(30)
async def test_logs_follow_streams_new_lines(provider: RunningProvider) -> None:
    await deploy(provider)
    add_pod(provider, "fn-abc", "fn")
    first_pod = LivePodLog(provider, "fn-abc")
    first_pod.add("2024-05-01T12:00:00Z", "before")
    later_pod: LivePodLog | None = None
    try:
        async with provider.client.stream(
            "GET", "/system/logs", params={"name": "fn", "follow": "true"}
        ) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()

            before = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert before["instance"] == "fn-abc"
            assert before["text"] == "before"
            [url] = first_pod.urls
            assert "follow=true" in url

            first_pod.add("2024-05-01T12:00:05Z", "while following")
            added = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert added == {
                "name": "fn",
                "namespace": NAMESPACE,
                "instance": "fn-abc",
                "timestamp": "2024-05-01T12:00:05Z",
                "text": "while following",
            }

            # A pod that starts while the client follows is found by the
            # next poll of the pod list, within POD_POLL_INTERVAL_S.
            add_pod(provider, "fn-def", "fn")
            later_pod = LivePodLog(provider, "fn-def")
            later_pod.add("2024-05-01T12:00:09Z", "from the new pod")
            new_pod = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert new_pod["instance"] == "fn-def"
            assert new_pod["text"] == "from the new pod"
            assert len(first_pod.urls) == 1
    finally:
        first_pod.end()
        if later_pod is not None:
            later_pod.end()


@pytest.mark.timeout(30)
async def test_logs_follow_ends_on_delete(provider: RunningProvider) -> None:
    await deploy(provider)
    add_pod(provider, "fn-abc", "fn")
    pod_log = LivePodLog(provider, "fn-abc")
    pod_log.add("2024-05-01T12:00:00Z", "only line")
    try:
        async with provider.client.stream(
            "GET", "/system/logs", params={"name": "fn", "follow": "true"}
        ) as response:
            lines = response.aiter_lines()
            first = json.loads(await asyncio.wait_for(anext(lines), 10))
            assert first["text"] == "only line"

            deleted = await provider.client.request(
                "DELETE", "/system/functions", json={"functionName": "fn"}
            )
            assert deleted.status_code == 202, deleted.text
            rest = [line async for line in lines]
            assert rest == []
    finally:
        pod_log.end()
