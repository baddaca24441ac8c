"""Deploy, update, delete, scale and list functions on the emulated cluster.

Each test sends the faas-provider requests that faas-cli sends and asserts
the fields of the Deployment and Service that the emulator then stores.
"""

import asyncio
import base64
import logging
from typing import Any

import kmock
import pytest

from provider.types import FunctionDeployment
from tests.conftest import wait_until
from tests.provider.kubernetes.conftest import (
    DEPLOYMENTS,
    NAMESPACE,
    SECRETS,
    SERVICES,
    Fault,
    Hold,
    RunningProvider,
)

pytestmark = pytest.mark.timeout(60)


def full_definition(**changes: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "service": "figlet",
        "image": "ghcr.io/openfaas/figlet:latest",
        "envProcess": "figlet",
        "envVars": {"write_timeout": "10s", "GREETING": "hi"},
        "labels": {"com.openfaas.scale.min": "2", "team": "blue"},
        "annotations": {"topic": "orders,payments"},
        "limits": {"memory": "128Mi", "cpu": "500m"},
        "requests": {"memory": "64Mi"},
        "secrets": ["api-key", "regcred"],
        "readOnlyRootFilesystem": True,
        "constraints": ["kubernetes.io/arch=arm64"],
    }
    definition.update(changes)
    return definition


async def create_secrets(provider: RunningProvider) -> None:
    response = await provider.client.post(
        "/system/secrets", json={"name": "api-key", "value": "hunter2"}
    )
    assert response.status_code == 202, response.text
    provider.emulator.objects[SECRETS, NAMESPACE, "regcred"] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "regcred", "namespace": NAMESPACE},
        "data": {".dockerconfigjson": base64.b64encode(b"{}").decode()},
    }


async def deploy(provider: RunningProvider, **changes: Any) -> None:
    response = await provider.client.post(
        "/system/functions", json=full_definition(**changes)
    )
    assert response.status_code == 202, response.text


async def test_deploy_builds_deployment(provider: RunningProvider) -> None:
    await create_secrets(provider)
    await deploy(provider)

    deployment = provider.deployment("figlet")
    metadata = deployment["metadata"]
    assert metadata["namespace"] == NAMESPACE
    assert metadata["labels"] == {
        "faas_function": "figlet",
        "com.openfaas.scale.min": "2",
        "team": "blue",
    }
    assert metadata["annotations"] == {
        "prometheus.io.scrape": "false",
        "topic": "orders,payments",
    }
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {"faas_function": "figlet"}}
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    template = spec["template"]
    assert template["metadata"]["labels"]["faas_function"] == "figlet"
    assert template["metadata"]["labels"]["uid"]
    pod = template["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"] == [
        {
            "name": "figlet-projected-secrets",
            "projected": {"sources": [{"secret": {"name": "api-key"}}]},
        },
        {"name": "temp", "emptyDir": {}},
    ]
    [container] = pod["containers"]
    assert container["name"] == "figlet"
    assert container["image"] == "ghcr.io/openfaas/figlet:latest"
    assert container["imagePullPolicy"] == "Always"
    assert container["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    ]
    assert container["env"] == [
        {"name": "fprocess", "value": "figlet"},
        {"name": "GREETING", "value": "hi"},
        {"name": "write_timeout", "value": "10s"},
    ]
    assert container["resources"] == {
        "limits": {"memory": "128Mi", "cpu": "500m"},
        "requests": {"memory": "64Mi"},
    }
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["volumeMounts"] == [
        {
            "name": "figlet-projected-secrets",
            "mountPath": "/var/openfaas/secrets",
            "readOnly": True,
        },
        {"name": "temp", "mountPath": "/tmp"},
    ]
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        assert probe["httpGet"]["path"] == "/_/health"
        assert probe["httpGet"]["port"] == 8080


async def test_deploy_builds_service(provider: RunningProvider) -> None:
    await create_secrets(provider)
    await deploy(provider)

    service = provider.service("figlet")
    assert service["metadata"]["annotations"]["topic"] == "orders,payments"
    assert service["spec"] == {
        "type": "ClusterIP",
        "selector": {"faas_function": "figlet"},
        "ports": [
            {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}
        ],
    }


async def test_status_reads_deployment(provider: RunningProvider) -> None:
    await create_secrets(provider)
    await deploy(provider)
    await provider.patch_object(
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/figlet",
        {"metadata": {"creationTimestamp": "2024-05-01T12:00:00Z"}},
    )
    await provider.mark_available("figlet", 1)
    await wait_until(
        lambda: (
            (provider.backend._cached.get("figlet", NAMESPACE) or {}).get("status")
            is not None
        ),
        description="the watch to deliver the status",
    )

    response = await provider.client.get("/system/function/figlet")

    assert response.status_code == 200, response.text
    status = response.json()
    assert status["name"] == "figlet"
    assert status["namespace"] == NAMESPACE
    assert status["image"] == "ghcr.io/openfaas/figlet:latest"
    assert status["envProcess"] == "figlet"
    assert status["envVars"] == {"GREETING": "hi", "write_timeout": "10s"}
    assert status["labels"] == {"com.openfaas.scale.min": "2", "team": "blue"}
    assert status["annotations"]["topic"] == "orders,payments"
    assert status["secrets"] == ["api-key", "regcred"]
    assert status["limits"] == {"memory": "128Mi", "cpu": "500m"}
    assert status["requests"] == {"memory": "64Mi"}
    assert status["readOnlyRootFilesystem"] is True
    assert status["constraints"] == ["kubernetes.io/arch=arm64"]
    assert status["replicas"] == 2
    assert status["availableReplicas"] == 1
    assert status["createdAt"] == "2024-05-01T12:00:00Z"

    listed = await provider.client.get("/system/functions")
    assert [item["name"] for item in listed.json()] == ["figlet"]


async def test_deploy_without_scale_label(provider: RunningProvider) -> None:
    response = await provider.client.post(
        "/system/functions", json={"service": "plain", "image": "nginx"}
    )

    assert response.status_code == 202, response.text
    deployment = provider.deployment("plain")
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == []
    assert "volumes" not in deployment["spec"]["template"]["spec"]


async def test_deploy_missing_secret_is_400(provider: RunningProvider) -> None:
    response = await provider.client.post(
        "/system/functions",
        json={"service": "fn", "image": "nginx", "secrets": ["nope"]},
    )

    assert response.status_code == 400
    assert "'nope'" in response.text
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")


async def test_deploy_twice_is_409(provider: RunningProvider) -> None:
    body = {"service": "fn", "image": "nginx"}
    first = await provider.client.post("/system/functions", json=body)
    second = await provider.client.post("/system/functions", json=body)

    assert first.status_code == 202
    assert second.status_code == 409
    assert "already exists" in second.text


async def test_deploy_invalid_object_is_422(provider: RunningProvider) -> None:
    provider.emulator["post", kmock.resource(DEPLOYMENTS)] << kmock.KubernetesError(
        status=422,
        reason="Invalid",
        message='Deployment.apps "fn" is invalid: spec.template.spec.containers[0]'
        ".resources.limits: Invalid value",
    )

    response = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "nginx"}
    )

    assert response.status_code == 422
    assert "is invalid" in response.text


async def test_forbidden_is_403(provider: RunningProvider) -> None:
    provider.emulator["post", kmock.resource(DEPLOYMENTS)] << kmock.KubernetesError(
        status=403,
        reason="Forbidden",
        message='deployments.apps is forbidden: User "faashub" cannot create',
    )

    response = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "nginx"}
    )

    assert response.status_code == 403
    assert "forbidden" in response.text


async def test_update_patches_deployment(provider: RunningProvider) -> None:
    await create_secrets(provider)
    await deploy(provider)
    rollout_before = provider.deployment("figlet")["spec"]["template"]["metadata"][
        "labels"
    ]["uid"]
    await provider.client.post(
        "/system/scale-function/figlet", json={"serviceName": "figlet", "replicas": 3}
    )

    response = await provider.client.put(
        "/system/functions",
        json=full_definition(
            image="ghcr.io/openfaas/figlet:2",
            envVars={"GREETING": "hello"},
            labels={"team": "red"},
            annotations={},
            secrets=[],
            readOnlyRootFilesystem=False,
        ),
    )

    assert response.status_code == 202, response.text
    deployment = provider.deployment("figlet")
    assert deployment["metadata"]["labels"] == {
        "faas_function": "figlet",
        "team": "red",
    }
    assert deployment["metadata"]["annotations"] == {"prometheus.io.scrape": "false"}
    assert deployment["spec"]["replicas"] == 3
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["uid"] != rollout_before
    container = template["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/openfaas/figlet:2"
    assert container["env"] == [
        {"name": "fprocess", "value": "figlet"},
        {"name": "GREETING", "value": "hello"},
    ]
    assert "volumes" not in template["spec"]
    assert "imagePullSecrets" not in template["spec"]
    assert "topic" not in provider.service("figlet")["metadata"]["annotations"]


async def test_update_unknown_is_404(provider: RunningProvider) -> None:
    response = await provider.client.put(
        "/system/functions", json={"service": "ghost", "image": "nginx"}
    )

    assert response.status_code == 404
    assert "'ghost'" in response.text


async def test_delete_removes_objects(provider: RunningProvider) -> None:
    await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )

    response = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )

    assert response.status_code == 202, response.text
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert not provider.has_object(SERVICES, NAMESPACE, "fn")
    missing = await provider.client.get("/system/function/fn")
    assert missing.status_code == 404


async def test_delete_unknown_is_404(provider: RunningProvider) -> None:
    response = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "ghost"}
    )

    assert response.status_code == 404


async def test_scale_allows_zero(provider: RunningProvider) -> None:
    await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )

    for replicas in (40, 0):
        response = await provider.client.post(
            "/system/scale-function/fn",
            json={"serviceName": "other", "replicas": replicas},
        )
        assert response.status_code == 202, response.text
        assert provider.deployment("fn")["spec"]["replicas"] == replicas
        status = (await provider.client.get("/system/function/fn")).json()
        assert status.get("replicas", 0) == replicas


async def test_scale_unknown_is_404(provider: RunningProvider) -> None:
    response = await provider.client.post(
        "/system/scale-function/ghost", json={"replicas": 1}
    )

    assert response.status_code == 404


async def test_watch_sees_outside_change(provider: RunningProvider) -> None:
    await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )

    await provider.patch_object(
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/fn",
        {"spec": {"replicas": 7}},
    )

    async def replicas() -> int:
        status = (await provider.client.get("/system/function/fn")).json()
        return int(status.get("replicas", 0))

    for _ in range(100):
        if await replicas() == 7:
            break
        await provider.client.get("/healthz")
    assert await replicas() == 7


async def test_no_function_limit(provider: RunningProvider) -> None:
    for index in range(20):
        response = await provider.client.post(
            "/system/functions", json={"service": f"fn-{index}", "image": "x"}
        )
        assert response.status_code == 202, response.text

    listed = (await provider.client.get("/system/functions")).json()
    assert len(listed) == 20


def foreign_service(name: str) -> dict[str, Any]:
    """Return a Service of another application, without a faas_function label."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": name},
            "ports": [{"name": "pg", "port": 5432, "targetPort": 5432}],
        },
    }


async def test_deploy_over_foreign_service_is_400(
    provider: RunningProvider,
) -> None:
    provider.emulator.objects[SERVICES, NAMESPACE, "postgres"] = foreign_service(
        "postgres"
    )

    response = await provider.client.post(
        "/system/functions", json={"service": "postgres", "image": "nginx"}
    )

    assert response.status_code == 400, response.text
    assert "Service 'postgres'" in response.text
    assert f"namespace {NAMESPACE!r}" in response.text
    assert "delete that Service first" in response.text
    service = provider.service("postgres")
    assert service["metadata"]["labels"] == {"app": "postgres"}
    assert service["spec"]["selector"] == {"app": "postgres"}
    assert service["spec"]["ports"] == [
        {"name": "pg", "port": 5432, "targetPort": 5432}
    ]
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "postgres")


async def test_update_over_foreign_service_is_400(
    provider: RunningProvider,
) -> None:
    await deploy(provider, secrets=[], labels={"team": "blue"})
    # Another application replaces the function's Service with its own.
    provider.emulator.objects[SERVICES, NAMESPACE, "figlet"] = foreign_service("figlet")
    deployment_before = provider.deployment("figlet")
    patches_before = len(list(provider.emulator["patch", kmock.resource(DEPLOYMENTS)]))

    response = await provider.client.put(
        "/system/functions",
        json=full_definition(
            image="ghcr.io/openfaas/figlet:2", secrets=[], labels={"team": "red"}
        ),
    )

    assert response.status_code == 400, response.text
    assert "Service 'figlet'" in response.text
    assert "delete that Service first" in response.text
    assert provider.deployment("figlet") == deployment_before
    patches = list(provider.emulator["patch", kmock.resource(DEPLOYMENTS)])
    assert len(patches) == patches_before
    service = provider.service("figlet")
    assert service["metadata"]["labels"] == {"app": "figlet"}
    assert service["spec"]["selector"] == {"app": "figlet"}


async def test_delete_keeps_foreign_service(provider: RunningProvider) -> None:
    await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    # Another application replaces the function's Service with its own.
    provider.emulator.objects[SERVICES, NAMESPACE, "fn"] = foreign_service("fn")

    response = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )

    assert response.status_code == 202, response.text
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert provider.has_object(SERVICES, NAMESPACE, "fn")
    assert provider.service("fn")["metadata"]["labels"] == {"app": "fn"}
    deletes = provider.emulator["delete", kmock.resource(SERVICES)]
    assert len(list(deletes)) == 0


async def test_delete_again_removes_leftover_service(
    provider: RunningProvider,
) -> None:
    await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    # Only the first Service delete fails, as a timed-out admission webhook would.
    provider.emulator.faults.append(
        Fault(
            method="DELETE",
            path=f"/api/v1/namespaces/{NAMESPACE}/services/fn",
            status=500,
            message="Internal error occurred: admission webhook timed out",
        )
    )

    first = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )

    assert first.status_code == 500, first.text
    assert "admission webhook timed out" in first.text
    assert "Deployment is already deleted" in first.text
    assert "Send the delete again" in first.text
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert provider.has_object(SERVICES, NAMESPACE, "fn")
    # The emulator sets no uid, so the test sets one, as an API server would.
    await provider.patch_object(
        f"/api/v1/namespaces/{NAMESPACE}/services/fn",
        {"metadata": {"uid": "uid-of-fn"}},
    )

    second = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )

    assert second.status_code == 202, second.text
    assert not provider.has_object(SERVICES, NAMESPACE, "fn")
    last_delete = list(provider.emulator["delete", kmock.resource(SERVICES)])[-1]
    assert last_delete.data["preconditions"] == {"uid": "uid-of-fn"}

    third = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )

    assert third.status_code == 404, third.text


SERVICE_CREATE_PATH = f"/api/v1/namespaces/{NAMESPACE}/services"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/fn"


async def test_failed_service_create_rolls_back(provider: RunningProvider) -> None:
    provider.emulator.faults.append(
        Fault(
            method="POST",
            path=SERVICE_CREATE_PATH,
            status=500,
            message="Internal error occurred: etcdserver: request timed out",
        )
    )

    first = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )

    assert first.status_code == 500, first.text
    assert "create the Service of fn.openfaas-fn" in first.text
    assert "etcdserver: request timed out" in first.text
    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert not provider.has_object(SERVICES, NAMESPACE, "fn")
    listed = (await provider.client.get("/system/functions")).json()
    assert listed == []

    # The same deploy, sent again at once, creates both objects.
    second = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )

    assert second.status_code == 202, second.text
    assert provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert provider.has_object(SERVICES, NAMESPACE, "fn")


async def test_cancelled_create_is_undone(
    provider: RunningProvider, caplog: pytest.LogCaptureFixture
) -> None:
    # The API server creates the Service, and the create is cancelled, as
    # when the provider stops, before the response arrives.
    hold = Hold(method="POST", path=SERVICE_CREATE_PATH)
    provider.emulator.held_requests.append(hold)
    create = asyncio.create_task(
        provider.backend.create_function(FunctionDeployment(service="fn", image="x"))
    )
    await asyncio.wait_for(hold.reached.wait(), timeout=10)

    with caplog.at_level(logging.INFO, logger="provider.kubernetes.backend"):
        create.cancel()
        await asyncio.sleep(0.2)
        # The undo waits for the Service step, whose thread goes on.
        assert not create.done()
        hold.release.set()
        with pytest.raises(asyncio.CancelledError):
            await create

    assert not provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert not provider.has_object(SERVICES, NAMESPACE, "fn")
    assert "function create undone because it was cancelled" in caplog.text
    listed = (await provider.client.get("/system/functions")).json()
    assert listed == []
    again = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert again.status_code == 202, again.text


async def test_failed_rollback_names_both_failures(
    provider: RunningProvider,
) -> None:
    provider.emulator.faults += [
        Fault(
            method="POST",
            path=SERVICE_CREATE_PATH,
            status=500,
            message="Internal error occurred: etcdserver: request timed out",
        ),
        Fault(
            method="DELETE",
            path=DEPLOYMENT_PATH,
            status=500,
            message="Internal error occurred: admission webhook timed out",
        ),
    ]

    first = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )

    assert first.status_code == 500, first.text
    assert "create the Service of fn.openfaas-fn" in first.text
    assert "etcdserver: request timed out" in first.text
    assert "delete the Deployment of fn.openfaas-fn" in first.text
    assert "admission webhook timed out" in first.text
    assert "faas-cli remove fn --namespace openfaas-fn" in first.text
    assert "kubectl delete deployment fn -n openfaas-fn" in first.text
    assert provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert not provider.has_object(SERVICES, NAMESPACE, "fn")

    # faas-cli deploy and faashub deploy send an update first, which creates
    # the missing Service.
    updated = await provider.client.put(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert updated.status_code == 202, updated.text
    assert provider.has_object(SERVICES, NAMESPACE, "fn")

    # The remove that the message names, then a create, both work.
    removed = await provider.client.request(
        "DELETE", "/system/functions", json={"functionName": "fn"}
    )
    assert removed.status_code == 202, removed.text
    second = await provider.client.post(
        "/system/functions", json={"service": "fn", "image": "x"}
    )
    assert second.status_code == 202, second.text
    assert provider.has_object(DEPLOYMENTS, NAMESPACE, "fn")
    assert provider.has_object(SERVICES, NAMESPACE, "fn")
