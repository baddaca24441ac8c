"""Render the Helm chart in deploy/faashub and check the objects it makes.

Helm's own template engine (helm-python-sdk, no cluster and no network)
renders the chart for four value sets: the defaults, connectors only, the
full stack with every connector and two named queues, and a highly available
set. Every object is validated against the newest Kubernetes schemas that
kubernetes-validate ships. The tests then check the wiring between the
objects: URLs resolve to Services and container ports, and probes hit each
component's health listener. Every FAASHUB_* variable must be a field of the
component's settings class, the provider's RBAC must equal the rules that
provider.kubernetes.rbac exports, and every secret reference must resolve.
The rendered NATS configuration runs in a real nats-server, which must
reject clients without the chart's token and serve the probes without it.
Three servers with the clustered configuration must form routes with the
chart's route password and reject a route without it.
"""

import asyncio
import base64
import contextlib
import copy
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python
import httpx
import kubernetes_validate
import nats
import pytest
import yaml
from pydantic_settings import BaseSettings

from faashub import connector_settings, embedded_nats, settings
from faashub.cli import main as cli_main
from provider.kubernetes import kube, rbac
from tests.conftest import LOOPBACK, free_port, stop_process

CHART_DIR = Path(__file__).resolve().parents[2] / "deploy" / "faashub"
DOCKERFILE = CHART_DIR.parents[1] / "Dockerfile"
RELEASE = "hub"
NAMESPACE = "faashub"
PREFIX = f"{RELEASE}-faashub"
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()

# Objects of custom resource kinds, which kubernetes-validate has no schema for.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Manifest = dict[str, Any]

EXTERNAL_GATEWAY = "http://gateway.openfaas:8080"
EXTERNAL_NATS = "nats://nats.messaging:4222"

NATS_TOKEN_SECRET = f"{PREFIX}-nats-token"
NATS_TOKEN_DIR = "/var/secrets/nats-token"
NATS_TOKEN_FILE = f"{NATS_TOKEN_DIR}/nats-token"

CONNECTORS = {
    "kafkaConnector": {
        "enabled": True,
        "brokers": "kafka-0.kafka:9092,kafka-1.kafka:9092",
        "topics": "orders,payments.*",
        "ordering": "key",
        "sasl": {"mechanism": "SCRAM-SHA-512", "secretName": "kafka-sasl"},
        "tls": {
            "enabled": True,
            "secretName": "kafka-tls",
            "certKey": "tls.crt",
            "keyKey": "tls.key",
        },
    },
    "sqsConnector": {
        "enabled": True,
        "queues": ["https://sqs.eu-west-1.amazonaws.com/123456789012/orders"],
        "region": "eu-west-1",
        "credentials": {"secretName": "aws-sqs"},
    },
    "cronConnector": {"enabled": True},
}

DEFAULT: dict[str, Any] = {}
CONNECTORS_ONLY: dict[str, Any] = {
    "connectorsOnly": True,
    "gatewayUrl": EXTERNAL_GATEWAY,
    "basicAuth": {"create": False},
    **CONNECTORS,
}
FULL_STACK: dict[str, Any] = {
    **CONNECTORS,
    "queueWorker": {
        "callbackSigning": {"secretName": "callback-signing"},
        "queues": [
            {"name": "slow", "maxInflight": 2},
            {"name": "bulk", "replicas": 2},
        ],
    },
    "metrics": {"serviceMonitor": {"enabled": True}},
}
HIGHLY_AVAILABLE: dict[str, Any] = {
    **copy.deepcopy(FULL_STACK),
    "gateway": {"replicas": 3},
    # The chart rejects a second provider, because each keeps its own idle times.
    "nats": {"replicas": 3},
}
HIGHLY_AVAILABLE["queueWorker"]["replicas"] = 3
for _name in ("kafkaConnector", "sqsConnector", "cronConnector"):
    HIGHLY_AVAILABLE[_name] = {**HIGHLY_AVAILABLE[_name], "replicas": 2}

SCENARIOS = [
    pytest.param(DEFAULT, id="default"),
    pytest.param(CONNECTORS_ONLY, id="connectors-only"),
    pytest.param(FULL_STACK, id="full-stack"),
    pytest.param(HIGHLY_AVAILABLE, id="highly-available"),
]

# Secrets that the user creates, by scenario: (Secret name, key) pairs that
# values.yaml and deploy/README.md document.
EXTERNAL_SECRET_KEYS = {
    "default": set(),
    "connectors-only": {
        ("basic-auth", "basic-auth-user"),
        ("basic-auth", "basic-auth-password"),
        ("kafka-sasl", "username"),
        ("kafka-sasl", "password"),
        ("kafka-tls", "ca.crt"),
        ("kafka-tls", "tls.crt"),
        ("kafka-tls", "tls.key"),
        ("aws-sqs", "aws-access-key-id"),
        ("aws-sqs", "aws-secret-access-key"),
    },
}
EXTERNAL_SECRET_KEYS["full-stack"] = EXTERNAL_SECRET_KEYS["connectors-only"] - {
    ("basic-auth", "basic-auth-user"),
    ("basic-auth", "basic-auth-password"),
} | {("callback-signing", "callback-signing-secret")}
EXTERNAL_SECRET_KEYS["highly-available"] = EXTERNAL_SECRET_KEYS["full-stack"]

# Container arguments of each component, and the settings class that reads
# its FAASHUB_* variables. A class that does not exist yet is None.
SETTINGS_BY_ARGS: dict[tuple[str, ...], type[BaseSettings] | None] = {
    ("gateway",): settings.GatewaySettings,
    ("queue-worker",): settings.WorkerSettings,
    ("provider", "kubernetes"): getattr(settings, "KubernetesProviderSettings", None),
    ("connector", "kafka"): connector_settings.KafkaConnectorSettings,
    ("connector", "sqs"): getattr(connector_settings, "SqsConnectorSettings", None),
    ("connector", "cron"): getattr(connector_settings, "CronConnectorSettings", None),
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(
    chart: helm_python.Chart, values: dict[str, Any], *, release: str = RELEASE
) -> list[Manifest]:
    """Render the chart as a fresh install and return its objects."""
    manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    objects: list[Manifest] = []
    for path in sorted(manifests):
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


def scenario_id(request: pytest.FixtureRequest) -> str:
    scenario: str = request.node.callspec.id
    return scenario


def find(objects: list[Manifest], kind: str, name: str) -> Manifest:
    for item in objects:
        if item["kind"] == kind and item["metadata"]["name"] == name:
            return item
    pytest.fail(f"no {kind} named {name}; rendered: {names(objects)}")


def names(objects: list[Manifest]) -> list[str]:
    return [f"{item['kind']}/{item['metadata']['name']}" for item in objects]


def workloads(objects: list[Manifest]) -> list[Manifest]:
    return [item for item in objects if item["kind"] in ("Deployment", "StatefulSet")]


def faashub_containers(
    objects: list[Manifest],
) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """Yield (workload, container) for each container that runs the faashub image."""
    for workload in workloads(objects):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            if container["image"].startswith("ghcr.io/faashub/faashub:"):
                yield workload, container


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """Map each variable to its value; one read from a Secret maps to "<secret>"."""
    values: dict[str, str] = {}
    for entry in container.get("env", []):
        values[entry["name"]] = entry.get("value", "<secret>")
    return values


def container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a port name or number to the container's port number."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            number: int = entry["containerPort"]
            return number
    pytest.fail(f"container {container['name']} has no port {port!r}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def resolve_service_url(
    objects: list[Manifest], url: str
) -> tuple[Manifest, dict[str, Any], int]:
    """Follow a URL to its Service, then to the workload and port behind it."""
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, f"{url} names no port"
    service = find(objects, "Service", parts.hostname)
    ports = [entry for entry in service["spec"]["ports"] if entry["port"] == parts.port]
    assert ports, f"Service {parts.hostname} does not expose port {parts.port}"
    target = ports[0].get("targetPort", parts.port)
    backends = [
        workload
        for workload in workloads(objects)
        if selects(
            service["spec"]["selector"],
            workload["spec"]["template"]["metadata"]["labels"],
        )
    ]
    assert len(backends) == 1, (
        f"Service {parts.hostname} selects {len(backends)} workloads, expected 1"
    )
    container = backends[0]["spec"]["template"]["spec"]["containers"][0]
    return backends[0], container, container_port(container, target)


def component(workload: Manifest) -> str:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels["app.kubernetes.io/component"]


def assert_valid(objects: list[Manifest]) -> None:
    """Fail on the first object that the Kubernetes schemas reject."""
    for item in objects:
        if (item["apiVersion"], item["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{item['kind']}/{item['metadata']['name']} is invalid for "
                f"Kubernetes {KUBERNETES_VERSION}: {exc.message} at "
                f"{'.'.join(str(part) for part in exc.path)}"
            )


@pytest.mark.parametrize("values", SCENARIOS)
def test_scenario_objects_valid(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    objects = render(chart, values)
    assert objects
    keys = [
        (item["kind"], item["metadata"].get("namespace"), item["metadata"]["name"])
        for item in objects
    ]
    assert len(keys) == len(set(keys)), f"duplicate objects: {sorted(keys)}"
    assert_valid(objects)


def test_default_install_components(chart: helm_python.Chart) -> None:
    objects = render(chart, DEFAULT)
    assert {component(item) for item in workloads(objects)} == {
        "gateway",
        "queue-worker",
        "provider",
        "nats",
    }
    assert find(objects, "Secret", "basic-auth")
    assert find(objects, "Namespace", "openfaas-fn")


def test_connectors_only_components(chart: helm_python.Chart) -> None:
    objects = render(chart, CONNECTORS_ONLY)
    assert {component(item) for item in workloads(objects)} == {
        "kafka-connector",
        "sqs-connector",
        "cron-connector",
    }
    kinds = {item["kind"] for item in objects}
    assert "Secret" not in kinds
    assert "StatefulSet" not in kinds
    assert "Role" not in kinds
    assert "ClusterRole" not in kinds
    assert "Namespace" not in kinds


@pytest.mark.parametrize("values", SCENARIOS)
def test_env_names_are_settings_fields(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    for workload, container in faashub_containers(render(chart, values)):
        args = tuple(container["args"])
        assert args in SETTINGS_BY_ARGS, f"unknown component arguments {args}"
        settings_class = SETTINGS_BY_ARGS[args]
        assert settings_class is not None, f"no settings class for {args} yet"
        fields = {
            settings.ENV_PREFIX + name.upper() for name in settings_class.model_fields
        }
        unknown = {
            name
            for name in env_values(container)
            if name.startswith(settings.ENV_PREFIX)
        } - fields
        assert not unknown, (
            f"{workload['metadata']['name']} sets {sorted(unknown)}, which "
            f"{settings_class.__name__} does not have"
        )


@pytest.mark.parametrize("values", SCENARIOS)
def test_env_loads_into_settings(
    chart: helm_python.Chart,
    values: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for workload, container in faashub_containers(render(chart, values)):
        args = tuple(container["args"])
        settings_class = SETTINGS_BY_ARGS[args]
        assert settings_class is not None, f"no settings class for {args} yet"
        with monkeypatch.context() as patch:
            for name, value in env_values(container).items():
                patch.setenv(name, value)
            try:
                settings_class()
            except ValueError as exc:
                pytest.fail(
                    f"{workload['metadata']['name']}'s environment does not load "
                    f"into {settings_class.__name__}: {exc}"
                )


@pytest.mark.parametrize("values", SCENARIOS)
def test_component_urls_reach_services(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    objects = render(chart, values)
    targets = {
        "FAASHUB_GATEWAY_URL": ("gateway", f"{PREFIX}-gateway"),
        "FAASHUB_PROVIDER_URL": ("provider", f"{PREFIX}-provider"),
        "FAASHUB_NATS_URL": ("nats", f"{PREFIX}-nats"),
    }
    checked = 0
    for _, container in faashub_containers(objects):
        env = env_values(container)
        for variable, (expected_component, host) in targets.items():
            if variable not in env:
                continue
            url = env[variable]
            if values.get("connectorsOnly"):
                if variable == "FAASHUB_GATEWAY_URL":
                    assert url == EXTERNAL_GATEWAY
                else:
                    assert url == "", f"{variable}={url} without a NATS of the chart"
                continue
            assert urlsplit(url).hostname == host, f"{variable}={url}"
            backend, backend_container, port = resolve_service_url(objects, url)
            assert component(backend) == expected_component, f"{variable}={url}"
            if expected_component == "nats":
                assert port == 4222
            else:
                assert str(port) == env_values(backend_container)["FAASHUB_PORT"]
            checked += 1
    if not values.get("connectorsOnly"):
        assert checked >= 4


@pytest.mark.parametrize("values", SCENARIOS)
def test_probes_hit_health_listener(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    for workload, container in faashub_containers(render(chart, values)):
        env = env_values(container)
        if "FAASHUB_HEALTH_PORT" in env:
            host, port = env["FAASHUB_HEALTH_HOST"], env["FAASHUB_HEALTH_PORT"]
        else:
            host, port = env["FAASHUB_HOST"], env["FAASHUB_PORT"]
        assert host == "0.0.0.0", workload["metadata"]["name"]
        for probe in ("readinessProbe", "livenessProbe"):
            action = container[probe]["httpGet"]
            assert action["path"] == "/healthz"
            assert str(container_port(container, action["port"])) == port


@pytest.mark.parametrize("values", SCENARIOS)
def test_containers_hardened(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    for workload in workloads(render(chart, values)):
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, name
            assert "readinessProbe" in container, name
            assert "livenessProbe" in container, name


def rules_of(role: Manifest) -> set[tuple[str, str, frozenset[str]]]:
    found = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.add((group, resource, frozenset(rule["verbs"])))
    return found


def exported(rules: tuple[rbac.RbacRule, ...]) -> set[tuple[str, str, frozenset[str]]]:
    return {(rule.api_group, rule.resource, frozenset(rule.verbs)) for rule in rules}


@pytest.mark.parametrize(
    ("cluster_wide", "kind", "expected"),
    [
        pytest.param(False, "Role", rbac.RBAC_RULES, id="role"),
        pytest.param(
            True,
            "ClusterRole",
            rbac.RBAC_RULES + rbac.NAMESPACE_RULES,
            id="cluster-role",
        ),
    ],
)
def test_provider_rbac_matches_code(
    chart: helm_python.Chart,
    cluster_wide: bool,
    kind: str,
    expected: tuple[rbac.RbacRule, ...],
) -> None:
    objects = render(
        chart,
        {"provider": {"clusterWide": cluster_wide, "functionNamespace": "fn"}},
    )
    name = f"{PREFIX}-provider"
    role = find(objects, kind, name)
    assert rules_of(role) == exported(expected)
    binding = find(objects, f"{kind}Binding", name)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": kind,
        "name": name,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}
    ]
    if cluster_wide:
        assert "namespace" not in role["metadata"]
    else:
        assert role["metadata"]["namespace"] == "fn"
        assert binding["metadata"]["namespace"] == "fn"
    deployment = find(objects, "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    assert pod["automountServiceAccountToken"] is True
    env = env_values(pod["containers"][0])
    assert env["FAASHUB_CLUSTER_WIDE"] == str(cluster_wide).lower()
    assert env["FAASHUB_FUNCTION_NAMESPACE"] == "fn"


def test_only_provider_gets_api_token(chart: helm_python.Chart) -> None:
    for workload in workloads(render(chart, FULL_STACK)):
        if component(workload) in ("provider", "nats"):
            continue
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False


def secret_references(objects: list[Manifest]) -> set[tuple[str, str]]:
    """Collect every (Secret name, key) that a pod reads, from env or volumes."""
    found: set[tuple[str, str]] = set()
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for entry in container.get("env", []):
                reference = entry.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    found.add((reference["name"], reference["key"]))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                items = volume["secret"].get("items")
                assert items, f"secret volume {volume['name']} must list its keys"
                for item in items:
                    found.add((volume["secret"]["secretName"], item["key"]))
    return found


@pytest.mark.parametrize("values", SCENARIOS)
def test_secret_references_resolve(
    chart: helm_python.Chart, values: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    objects = render(chart, values)
    created = {
        (item["metadata"]["name"], key)
        for item in objects
        if item["kind"] == "Secret"
        for key in item.get("data", {})
    }
    external = secret_references(objects) - created
    assert external == EXTERNAL_SECRET_KEYS[scenario_id(request)]
    readme = (CHART_DIR.parent / "README.md").read_text()
    for _, key in external:
        assert f"`{key}`" in readme, f"deploy/README.md does not document key {key}"


def test_basic_auth_mounted_where_used(
    chart: helm_python.Chart,
) -> None:
    objects = render(chart, FULL_STACK)
    for workload, container in faashub_containers(objects):
        env = env_values(container)
        mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
        if component(workload) == "gateway":
            assert env["FAASHUB_AUTH_SECRET_MOUNT_PATH"] == "/var/secrets/basic-auth"
            assert "/var/secrets/basic-auth" in mounts
        elif component(workload) == "provider":
            assert "/var/secrets/basic-auth" not in mounts
        else:
            assert env["FAASHUB_GATEWAY_SECRET_MOUNT_PATH"] == "/var/secrets/basic-auth"
            assert "/var/secrets/basic-auth" in mounts


def basic_auth_password(objects: list[Manifest]) -> str:
    secret = find(objects, "Secret", "basic-auth")
    assert base64.b64decode(secret["data"]["basic-auth-user"]) == b"admin"
    return base64.b64decode(secret["data"]["basic-auth-password"]).decode()


def test_basic_auth_password_generated(chart: helm_python.Chart) -> None:
    first = basic_auth_password(render(chart, DEFAULT))
    second = basic_auth_password(render(chart, DEFAULT))
    assert len(first) == 32
    assert first.isalnum()
    assert first != second


def test_basic_auth_password_given(chart: helm_python.Chart) -> None:
    objects = render(chart, {"basicAuth": {"password": "s3cret-Pass"}})
    assert basic_auth_password(objects) == "s3cret-Pass"


def test_basic_auth_disabled(chart: helm_python.Chart) -> None:
    objects = render(chart, {"basicAuth": {"enabled": False}, **CONNECTORS})
    secrets = {item["metadata"]["name"] for item in objects if item["kind"] == "Secret"}
    assert "basic-auth" not in secrets
    for workload, container in faashub_containers(objects):
        env = env_values(container)
        assert "FAASHUB_GATEWAY_SECRET_MOUNT_PATH" not in env
        assert "FAASHUB_AUTH_SECRET_MOUNT_PATH" not in env
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        assert "basic-auth" not in {volume["name"] for volume in volumes}


def test_provider_token_shared_by_gateway_and_provider(
    chart: helm_python.Chart,
) -> None:
    objects = render(chart, FULL_STACK)
    secret = find(objects, "Secret", "hub-faashub-provider-token")
    token = base64.b64decode(secret["data"]["provider-token"]).decode()
    assert len(token) == 48
    assert token.isalnum()
    token_file = "/var/secrets/provider-token/provider-token"
    expected_env = {
        "gateway": "FAASHUB_PROVIDER_TOKEN_FILE",
        "provider": "FAASHUB_AUTH_TOKEN_FILE",
    }
    seen = set()
    for workload, container in faashub_containers(objects):
        mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
        name = component(workload)
        if name in expected_env:
            assert env_values(container)[expected_env[name]] == token_file
            assert "/var/secrets/provider-token" in mounts
            volumes = workload["spec"]["template"]["spec"]["volumes"]
            [volume] = [v for v in volumes if v["name"] == "provider-token"]
            assert volume["secret"]["secretName"] == "hub-faashub-provider-token"
            seen.add(name)
        else:
            # Workers and connectors reach the provider through the gateway.
            assert "/var/secrets/provider-token" not in mounts, name
    assert seen == set(expected_env)


def test_provider_token_disabled(chart: helm_python.Chart) -> None:
    objects = render(chart, {"providerToken": {"enabled": False}})
    names = {item["metadata"]["name"] for item in objects if item["kind"] == "Secret"}
    assert "hub-faashub-provider-token" not in names
    for _, container in faashub_containers(objects):
        env = env_values(container)
        assert "FAASHUB_PROVIDER_TOKEN_FILE" not in env
        assert "FAASHUB_AUTH_TOKEN_FILE" not in env


def nats_secret_value(objects: list[Manifest], key: str) -> str:
    secret = find(objects, "Secret", NATS_TOKEN_SECRET)
    assert set(secret["data"]) == {"nats-token", "nats-route-password"}
    return base64.b64decode(secret["data"][key]).decode()


def nats_token(objects: list[Manifest]) -> str:
    return nats_secret_value(objects, "nats-token")


def nats_route_password(objects: list[Manifest]) -> str:
    return nats_secret_value(objects, "nats-route-password")


def nats_token_volume(workload: Manifest) -> dict[str, Any] | None:
    volumes = workload["spec"]["template"]["spec"].get("volumes", [])
    found = [volume for volume in volumes if volume["name"] == "nats-token"]
    assert len(found) <= 1, workload["metadata"]["name"]
    return found[0] if found else None


def test_nats_token_generated(chart: helm_python.Chart) -> None:
    tokens = [nats_token(render(chart, DEFAULT)) for _ in range(20)]
    assert len(set(tokens)) == len(tokens)
    for token in tokens:
        assert len(token) == 48
        assert token.isalnum()
        # The server parses $NATS_TOKEN as a config value, where a leading
        # digit can turn it into a number. A random alphanumeric first
        # character is a digit in 10 of 62 cases, so 20 renders miss such a
        # generator in about 3% of runs.
        assert token[0].isalpha(), token


def test_nats_route_password_generated(chart: helm_python.Chart) -> None:
    renders = [render(chart, {"nats": {"replicas": 3}}) for _ in range(20)]
    passwords = [nats_route_password(objects) for objects in renders]
    assert len(set(passwords)) == len(passwords)
    for objects, password in zip(renders, passwords, strict=True):
        assert len(password) == 48
        assert password.isalnum()
        assert password[0].isalpha(), password
        assert password != nats_token(objects)


def test_nats_routes_require_password(chart: helm_python.Chart) -> None:
    objects = render(chart, {"nats": {"replicas": 3}})
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    [cluster] = re.findall(r"^cluster \{\n(.*?)^\}$", config, re.M | re.S)
    assert re.search(
        r"^  authorization \{\n"
        r"    user: nats-route\n"
        r"    password: \$NATS_ROUTE_PASSWORD\n"
        r"  \}$",
        cluster,
        re.M,
    ), cluster
    [routes] = re.findall(r"^  routes: \[\n(.*?)^  \]$", cluster, re.M | re.S)
    assert routes.split() == ["$NATS_ROUTE_0", "$NATS_ROUTE_1", "$NATS_ROUTE_2"]

    statefulset = find(objects, "StatefulSet", f"{PREFIX}-nats")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry for entry in container["env"]}
    assert env["NATS_ROUTE_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": NATS_TOKEN_SECRET,
        "key": "nats-route-password",
    }
    # The kubelet expands $(NATS_ROUTE_PASSWORD) only from a variable defined
    # earlier in the list.
    order = [entry["name"] for entry in container["env"]]
    for index in range(3):
        name = f"NATS_ROUTE_{index}"
        host = f"{PREFIX}-nats-{index}.{PREFIX}-nats-headless"
        expected = f"nats://nats-route:$(NATS_ROUTE_PASSWORD)@{host}:6222"
        assert env[name]["value"] == expected
        assert order.index(name) > order.index("NATS_ROUTE_PASSWORD")


def test_single_nats_has_no_routes(chart: helm_python.Chart) -> None:
    objects = render(chart, DEFAULT)
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    assert "cluster {" not in config
    statefulset = find(objects, "StatefulSet", f"{PREFIX}-nats")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    env_names = {entry["name"] for entry in container["env"]}
    assert env_names == {"POD_NAME", "NATS_TOKEN"}


def test_nats_requires_token(chart: helm_python.Chart) -> None:
    objects = render(chart, DEFAULT)
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    assert re.search(r"^authorization \{\n  token: \$NATS_TOKEN\n\}$", config, re.M)
    statefulset = find(objects, "StatefulSet", f"{PREFIX}-nats")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    [variable] = [entry for entry in container["env"] if entry["name"] == "NATS_TOKEN"]
    assert variable["valueFrom"]["secretKeyRef"] == {
        "name": NATS_TOKEN_SECRET,
        "key": "nats-token",
    }


def test_callback_secret_reaches_gateway_and_workers(
    chart: helm_python.Chart,
) -> None:
    objects = render(chart, FULL_STACK)
    signers = []
    for workload, container in faashub_containers(objects):
        env = {entry["name"]: entry for entry in container.get("env", [])}
        variable = env.get("FAASHUB_CALLBACK_SIGNING_SECRET")
        if variable is None:
            continue
        assert variable["valueFrom"]["secretKeyRef"] == {
            "name": "callback-signing",
            "key": "callback-signing-secret",
        }
        signers.append(component(workload))
    # The default queue and the two named ones each have a worker.
    assert sorted(signers) == [
        "gateway",
        "queue-worker",
        "queue-worker",
        "queue-worker",
    ]


def test_nats_token_mounted_in_clients(chart: helm_python.Chart) -> None:
    objects = render(chart, FULL_STACK)
    nats_token(objects)
    clients = []
    for workload, container in faashub_containers(objects):
        env = env_values(container)
        mounts = [
            mount
            for mount in container.get("volumeMounts", [])
            if mount["name"] == "nats-token"
        ]
        volume = nats_token_volume(workload)
        name = workload["metadata"]["name"]
        if "FAASHUB_NATS_URL" not in env:
            # The provider and the Kafka and SQS connectors do not use NATS.
            assert "FAASHUB_NATS_TOKEN_FILE" not in env, name
            assert not mounts, name
            assert volume is None, name
            continue
        assert env["FAASHUB_NATS_TOKEN_FILE"] == NATS_TOKEN_FILE, name
        assert mounts == [
            {"name": "nats-token", "mountPath": NATS_TOKEN_DIR, "readOnly": True}
        ], name
        assert volume is not None, name
        assert volume["secret"] == {
            "secretName": NATS_TOKEN_SECRET,
            "items": [{"key": "nats-token", "path": "nats-token"}],
        }, name
        clients.append(component(workload))
    assert sorted(clients) == [
        "cron-connector",
        "gateway",
        "queue-worker",
        "queue-worker",
        "queue-worker",
    ]


EXTERNAL_NATS_VALUES = [
    pytest.param(
        {"nats": {"enabled": False, "url": EXTERNAL_NATS}},
        {"gateway", "queue-worker", "cron-connector"},
        id="nats-url",
    ),
    pytest.param(
        {
            "connectorsOnly": True,
            "gatewayUrl": EXTERNAL_GATEWAY,
            "basicAuth": {"create": False},
            "cronConnector": {"natsUrl": EXTERNAL_NATS},
        },
        {"cron-connector"},
        id="connectors-only-cron",
    ),
]


@pytest.mark.parametrize(("values", "clients"), EXTERNAL_NATS_VALUES)
def test_external_nats_token_secret(
    chart: helm_python.Chart, values: dict[str, Any], clients: set[str]
) -> None:
    values = copy.deepcopy(values)
    values.setdefault("cronConnector", {})["enabled"] = True
    values["nats"] = {
        **values.get("nats", {}),
        "tokenSecret": {"name": "nats-client", "key": "token"},
    }
    objects = render(chart, values)
    secrets = {item["metadata"]["name"] for item in objects if item["kind"] == "Secret"}
    assert NATS_TOKEN_SECRET not in secrets
    assert "StatefulSet" not in {item["kind"] for item in objects}
    seen = set()
    for workload, container in faashub_containers(objects):
        env = env_values(container)
        if "FAASHUB_NATS_URL" not in env:
            assert "FAASHUB_NATS_TOKEN_FILE" not in env, component(workload)
            continue
        assert env["FAASHUB_NATS_URL"] == EXTERNAL_NATS
        assert env["FAASHUB_NATS_TOKEN_FILE"] == NATS_TOKEN_FILE
        volume = nats_token_volume(workload)
        assert volume is not None
        assert volume["secret"] == {
            "secretName": "nats-client",
            "items": [{"key": "token", "path": "nats-token"}],
        }
        mount_paths = {mount["mountPath"] for mount in container["volumeMounts"]}
        assert NATS_TOKEN_DIR in mount_paths
        seen.add(component(workload))
    assert seen == clients


@pytest.mark.parametrize(("values", "clients"), EXTERNAL_NATS_VALUES)
def test_external_nats_without_token(
    chart: helm_python.Chart, values: dict[str, Any], clients: set[str]
) -> None:
    values = copy.deepcopy(values)
    values.setdefault("cronConnector", {})["enabled"] = True
    objects = render(chart, values)
    secrets = {item["metadata"]["name"] for item in objects if item["kind"] == "Secret"}
    assert NATS_TOKEN_SECRET not in secrets
    seen = set()
    for workload, container in faashub_containers(objects):
        env = env_values(container)
        assert "FAASHUB_NATS_TOKEN_FILE" not in env
        assert nats_token_volume(workload) is None
        if "FAASHUB_NATS_URL" in env:
            assert env["FAASHUB_NATS_URL"] == EXTERNAL_NATS
            seen.add(component(workload))
    assert seen == clients


def test_external_nats_objects_valid(chart: helm_python.Chart) -> None:
    values = {
        "nats": {
            "enabled": False,
            "url": EXTERNAL_NATS,
            "tokenSecret": {"name": "nats-client"},
        },
        "cronConnector": {"enabled": True, "replicas": 2},
    }
    objects = render(chart, values)
    assert_valid(objects)
    assert ("nats-client", "nats-token") in secret_references(objects)
    readme = (CHART_DIR.parent / "README.md").read_text()
    assert "`nats.tokenSecret.name`" in readme


def test_named_queues_get_workers(chart: helm_python.Chart) -> None:
    objects = render(chart, FULL_STACK)
    workers = {
        env_values(container)["FAASHUB_QUEUE"]: (workload, env_values(container))
        for workload, container in faashub_containers(objects)
        if component(workload) == "queue-worker"
    }
    assert set(workers) == {"default", "slow", "bulk"}
    assert workers["default"][0]["metadata"]["name"] == f"{PREFIX}-queue-worker"
    assert workers["slow"][0]["metadata"]["name"] == f"{PREFIX}-queue-worker-slow"
    assert workers["default"][1]["FAASHUB_MAX_INFLIGHT"] == "64"
    assert workers["slow"][1]["FAASHUB_MAX_INFLIGHT"] == "2"
    assert workers["bulk"][1]["FAASHUB_MAX_INFLIGHT"] == "64"
    assert workers["bulk"][0]["spec"]["replicas"] == 2
    assert workers["slow"][0]["spec"]["replicas"] == 1
    for workload, env in workers.values():
        assert env["FAASHUB_RETRY_ATTEMPTS"] == "10"
        assert env["FAASHUB_RETRY_CODES"] == "408,429,500,502,503,504"
        grace_s = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace_s > float(env["FAASHUB_SHUTDOWN_GRACE_S"])


def test_extra_function_namespaces_created(chart: helm_python.Chart) -> None:
    values = {"provider": {"clusterWide": True, "extraFunctionNamespaces": ["team-a"]}}
    objects = render(chart, values)
    namespaces = [item for item in objects if item["kind"] == "Namespace"]
    assert sorted(item["metadata"]["name"] for item in namespaces) == [
        "openfaas-fn",
        "team-a",
    ]
    for namespace in namespaces:
        assert namespace["metadata"]["annotations"]["openfaas"] == "1"
    values["provider"]["createFunctionNamespaces"] = False
    kinds = {item["kind"] for item in render(chart, values)}
    assert "Namespace" not in kinds


def render_queue(chart: helm_python.Chart, release: str, queue: str) -> list[Manifest]:
    values = {"queueWorker": {"queues": [{"name": queue}]}}
    return render(chart, values, release=release)


def test_queue_worker_name_at_limit(chart: helm_python.Chart) -> None:
    objects = render_queue(chart, "payments-prod-eu1", "invoice-reconciliation-j")
    name = "payments-prod-eu1-faashub-queue-worker-invoice-reconciliation-j"
    assert len(name) == 63
    assert find(objects, "Service", name)
    assert find(objects, "Deployment", name)
    for item in objects:
        if item["kind"] in ("Service", "Deployment", "StatefulSet"):
            assert len(item["metadata"]["name"]) <= 63, item["metadata"]["name"]


def test_queue_worker_name_too_long(chart: helm_python.Chart) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render_queue(chart, "payments-prod-eu1", "invoice-reconciliation-jo")
    message = str(caught.value)
    assert 'release "payments-prod-eu1"' in message
    assert 'queue "invoice-reconciliation-jo"' in message
    assert "has 64 characters" in message
    assert "at most 63" in message


def test_pdbs_for_replicated_workloads(chart: helm_python.Chart) -> None:
    objects = render(chart, HIGHLY_AVAILABLE)
    budgets = [item for item in objects if item["kind"] == "PodDisruptionBudget"]
    replicated = [item for item in workloads(objects) if item["spec"]["replicas"] > 1]
    assert len(replicated) == 8
    assert len(budgets) == len(replicated)
    for workload in replicated:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [
            budget
            for budget in budgets
            if selects(budget["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(covering) == 1, workload["metadata"]["name"]
        assert covering[0]["spec"]["maxUnavailable"] == 1


def test_no_pdbs_for_single_replicas(chart: helm_python.Chart) -> None:
    kinds = {item["kind"] for item in render(chart, FULL_STACK)}
    assert "PodDisruptionBudget" in kinds  # the bulk queue has two replicas
    kinds = {item["kind"] for item in render(chart, DEFAULT)}
    assert "PodDisruptionBudget" not in kinds


def test_metrics_scraped_on_metrics_port(chart: helm_python.Chart) -> None:
    objects = render(chart, FULL_STACK)
    scraped = 0
    for workload, container in faashub_containers(objects):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        if component(workload) in ("gateway", "provider"):
            # Both serve /metrics beside their API.
            port = container_port(container, "http")
            assert env_values(container)["FAASHUB_PORT"] == str(port)
        else:
            port = container_port(container, "metrics")
            assert env_values(container)["FAASHUB_HEALTH_PORT"] == str(port)
        assert annotations["prometheus.io/port"] == str(port)
        scraped += 1
    assert scraped == 8

    monitor = find(objects, "ServiceMonitor", PREFIX)
    selector = monitor["spec"]["selector"]["matchLabels"]
    endpoint_ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    assert endpoint_ports == {"metrics", "http"}
    monitored = [
        item
        for item in objects
        if item["kind"] == "Service" and selects(selector, item["metadata"]["labels"])
    ]
    assert len(monitored) == scraped
    for service in monitored:
        named = {port["name"] for port in service["spec"]["ports"]}
        # Exactly one of the monitor's endpoints matches each Service.
        assert len(named & endpoint_ports) == 1, service["metadata"]["name"]


def test_kafka_connector_settings(chart: helm_python.Chart) -> None:
    objects = render(chart, FULL_STACK)
    deployment = find(objects, "Deployment", f"{PREFIX}-kafka-connector")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = env_values(container)
    assert container["args"] == ["connector", "kafka"]
    assert env["FAASHUB_BROKERS"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert env["FAASHUB_TOPICS"] == "orders,payments.*"
    assert env["FAASHUB_ORDERING"] == "key"
    assert env["FAASHUB_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["FAASHUB_TLS"] == "true"
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    for variable in (
        "FAASHUB_SASL_PASSWORD_FILE",
        "FAASHUB_TLS_CA_FILE",
        "FAASHUB_TLS_CERT_FILE",
        "FAASHUB_TLS_KEY_FILE",
    ):
        assert str(Path(env[variable]).parent) in mounts, variable


def test_sqs_connector_service_account(chart: helm_python.Chart) -> None:
    role_arn = "arn:aws:iam::123456789012:role/faashub-sqs"
    values = {
        "sqsConnector": {
            "enabled": True,
            "queues": ["orders", "refunds"],
            "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": role_arn}},
        }
    }
    objects = render(chart, values)
    name = f"{PREFIX}-sqs-connector"
    account = find(objects, "ServiceAccount", name)
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role_arn
    pod = find(objects, "Deployment", name)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name
    env = env_values(pod["containers"][0])
    assert env["FAASHUB_SQS_QUEUES"] == "orders,refunds"
    assert "AWS_ACCESS_KEY_ID" not in env


def test_cron_replicas_claim_ticks_in_nats(chart: helm_python.Chart) -> None:
    objects = render(chart, HIGHLY_AVAILABLE)
    deployment = find(objects, "Deployment", f"{PREFIX}-cron-connector")
    assert deployment["spec"]["replicas"] == 2
    env = env_values(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["FAASHUB_NATS_URL"] == f"nats://{PREFIX}-nats:4222"

    url = "nats://nats.messaging:4222"
    values = {**CONNECTORS_ONLY, "cronConnector": {"enabled": True, "natsUrl": url}}
    objects = render(chart, values)
    deployment = find(objects, "Deployment", f"{PREFIX}-cron-connector")
    env = env_values(deployment["spec"]["template"]["spec"]["containers"][0])
    assert env["FAASHUB_NATS_URL"] == url


def test_external_nats_url(chart: helm_python.Chart) -> None:
    url = "nats://nats.messaging:4222"
    objects = render(chart, {"nats": {"enabled": False, "url": url}})
    assert "StatefulSet" not in {item["kind"] for item in objects}
    for workload, container in faashub_containers(objects):
        env = env_values(container)
        if "FAASHUB_NATS_URL" in env:
            assert env["FAASHUB_NATS_URL"] == url, workload["metadata"]["name"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("replicas", [1, 3])
def test_nats_config_accepted_by_nats_server(
    chart: helm_python.Chart, replicas: int, tmp_path: Path
) -> None:
    objects = render(chart, {"nats": {"replicas": replicas}})
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    assert "store_dir: /data" in config
    assert ("cluster {" in config) == (replicas > 1)
    routes = re.findall(r"\$NATS_ROUTE_\d", config)
    assert len(routes) == (replicas if replicas > 1 else 0)
    statefulset = find(objects, "StatefulSet", f"{PREFIX}-nats")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    secrets = {"nats-token": "a-token", "nats-route-password": "a-password"}
    env = kubelet_env(container, secrets, hosts={})
    env["POD_NAME"] = f"{PREFIX}-nats-0"
    config_path = tmp_path / "nats.conf"
    config_path.write_text(config.replace("/data", str(tmp_path / "data")))
    result = subprocess.run(
        [str(embedded_nats.find_binary()), "--config", str(config_path), "-t"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr


def local_nats_config(
    config: str, *, store_dir: Path, port: int, http_port: int
) -> str:
    """Rewrite the chart's nats.conf for loopback ports and a local store_dir."""
    replacements = {
        "port: 4222\n": f"listen: {LOOPBACK}:{port}\n",
        "http_port: 8222\n": f"http: {LOOPBACK}:{http_port}\n",
        "store_dir: /data\n": f"store_dir: {str(store_dir)!r}\n",
    }
    for line, local in replacements.items():
        assert line in config, f"nats.conf no longer contains {line!r}"
        config = config.replace(line, local)
    return config


@pytest.mark.timeout(60)
async def test_nats_server_enforces_chart_token(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    objects = render(chart, DEFAULT)
    token = nats_token(objects)
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    port, http_port = free_port(), free_port()
    config_path = tmp_path / "nats.conf"
    config_path.write_text(
        local_nats_config(
            config, store_dir=tmp_path / "data", port=port, http_port=http_port
        )
    )
    with (tmp_path / "nats.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(embedded_nats.find_binary()),
            "--config",
            str(config_path),
            env={"POD_NAME": f"{PREFIX}-nats-0", "NATS_TOKEN": token},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await check_token_enforced(objects, token=token, port=port, http_port=http_port)
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def check_token_enforced(
    objects: list[Manifest], *, token: str, port: int, http_port: int
) -> None:
    statefulset = find(objects, "StatefulSet", f"{PREFIX}-nats")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    monitor = f"http://{LOOPBACK}:{http_port}"

    # The probes send no token, so each must pass on the monitoring port once
    # JetStream is up.
    async with httpx.AsyncClient(base_url=monitor) as client:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = container[probe]["httpGet"]
            assert container_port(container, action["port"]) == 8222
            deadline = time.monotonic() + 20
            while True:
                try:
                    response = await client.get(action["path"])
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code == 200:
                    break
                assert time.monotonic() < deadline, f"{probe} {action['path']} failed"
                await asyncio.sleep(0.1)

    assert await connect_reply(port, token=None) == REJECTED
    assert await connect_reply(port, token="not-the-token") == REJECTED
    assert await connect_reply(port, token=token) == b"PONG\r\n"

    # With the token, a client also reaches JetStream.
    connection = await nats.connect(
        f"nats://{LOOPBACK}:{port}", token=token, allow_reconnect=False
    )
    try:
        info = await connection.jetstream().account_info()
        assert info.limits is not None
    finally:
        await connection.close()


REJECTED = b"-ERR 'Authorization Violation'\r\n"


def local_cluster_config(config: str, *, ports: dict[str, int], data: Path) -> str:
    """Rewrite the chart's clustered nats.conf for one server on loopback."""
    config = local_nats_config(
        config, store_dir=data, port=ports["client"], http_port=ports["http"]
    )
    line = "  port: 6222\n"
    assert line in config, f"nats.conf no longer contains {line!r}"
    return config.replace(line, f"  listen: {LOOPBACK}:{ports['cluster']}\n")


def kubelet_env(
    container: dict[str, Any], secrets: dict[str, str], hosts: dict[str, str]
) -> dict[str, str]:
    """Build the environment that the kubelet gives the NATS container.

    Values from a Secret come from `secrets` (by key), $(VAR) references to
    earlier variables are expanded as the kubelet does, and each host name in
    `hosts` is replaced by its loopback address.
    """
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda ref: env[ref[1]], entry["value"])
            for host, local in hosts.items():
                value = value.replace(host, local)
        elif "secretKeyRef" in entry["valueFrom"]:
            value = secrets[entry["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            value = "pod-name-set-by-the-caller"
        env[entry["name"]] = value
    return env


def route_names(http_port: int) -> set[str]:
    """Return the names of the servers that a NATS server has routes to."""
    routez = httpx.get(f"http://{LOOPBACK}:{http_port}/routez", timeout=5).json()
    return {route["remote_name"] for route in routez["routes"] or []}


def route_connect_reply(port: int, options: dict[str, Any]) -> bytes:
    """Send a route CONNECT with `options` to a cluster port and return the reply."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as connection:
        reader = connection.makefile("rb")
        greeting = reader.readline()
        assert greeting.startswith(b"INFO "), greeting
        payload = {"verbose": False, "pedantic": False, "name": "probe", **options}
        connection.sendall(b"CONNECT " + json.dumps(payload).encode() + b"\r\n")
        return reader.readline()


@pytest.mark.timeout(120)
def test_nats_cluster_rejects_routes_without_password(
    chart: helm_python.Chart, tmp_path: Path
) -> None:
    objects = render(chart, {"nats": {"replicas": 3}})
    secrets = {
        "nats-token": nats_token(objects),
        "nats-route-password": nats_route_password(objects),
    }
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    statefulset = find(objects, "StatefulSet", f"{PREFIX}-nats")
    [container] = statefulset["spec"]["template"]["spec"]["containers"]
    servers = [f"{PREFIX}-nats-{index}" for index in range(3)]
    ports = {
        server: {"client": free_port(), "http": free_port(), "cluster": free_port()}
        for server in servers
    }
    # Each server's route host name and port, as the headless Service
    # publishes them, mapped to its loopback cluster port.
    hosts = {}
    for server in servers:
        local = f"{LOOPBACK}:{ports[server]['cluster']}"
        hosts[f"{server}.{PREFIX}-nats-headless:6222"] = local
    binary = str(embedded_nats.find_binary())
    with contextlib.ExitStack() as stack:

        def start(name: str, config_text: str, env: dict[str, str]) -> Path:
            directory = tmp_path / name
            directory.mkdir()
            (directory / "nats.conf").write_text(config_text)
            log_path = directory / "nats.log"
            log = stack.enter_context(log_path.open("wb"))
            process = subprocess.Popen(
                [binary, "--config", str(directory / "nats.conf")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            stack.callback(stop_process, process)
            return log_path

        for server in servers:
            env = kubelet_env(container, secrets, hosts)
            env["POD_NAME"] = server
            local = local_cluster_config(
                config, ports=ports[server], data=tmp_path / server / "data"
            )
            start(server, local, env)

        # The chart's own routes carry the password, so the three servers
        # form a full mesh. A route that failed is tried again after a pause
        # that grows, so a busy machine can take a while.
        deadline = time.monotonic() + 60
        for server in servers:
            others = set(servers) - {server}
            while True:
                try:
                    connected = route_names(ports[server]["http"])
                except httpx.TransportError:
                    connected = set()
                if connected == others:
                    break
                assert time.monotonic() < deadline, f"{server} routes: {connected}"
                time.sleep(0.1)

        first = ports[servers[0]]
        assert route_connect_reply(first["cluster"], {}) == REJECTED
        wrong = {"user": "nats-route", "pass": "not-the-password"}
        assert route_connect_reply(first["cluster"], wrong) == REJECTED

        # A rogue NATS server, with a route to the first server but without
        # the password, must not join the cluster.
        rogue_http = free_port()
        rogue_log = start(
            "rogue",
            f"listen: {LOOPBACK}:{free_port()}\n"
            f"http: {LOOPBACK}:{rogue_http}\n"
            "server_name: rogue\n"
            "cluster {\n"
            f"  name: {PREFIX}-nats\n"
            f"  listen: {LOOPBACK}:{free_port()}\n"
            f"  routes: [nats://{LOOPBACK}:{first['cluster']}]\n"
            "}\n",
            {},
        )
        deadline = time.monotonic() + 20
        while b"Authorization Violation" not in rogue_log.read_bytes():
            assert time.monotonic() < deadline, rogue_log.read_text()
            time.sleep(0.1)
        assert route_names(rogue_http) == set()
        assert "rogue" not in route_names(first["http"])


async def connect_reply(port: int, *, token: str | None) -> bytes:
    """Send a NATS CONNECT with `token` as auth_token and a PING, and return the reply.

    The raw protocol shows the server's own reply, which is PONG for an
    accepted client and -ERR for a rejected one.
    """
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        greeting = await reader.readline()
        assert greeting.startswith(b"INFO "), greeting
        options: dict[str, Any] = {"verbose": False, "pedantic": False}
        if token is not None:
            options["auth_token"] = token
        writer.write(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


INVALID_VALUES = [
    pytest.param({"gatewy": {}}, "additional properties 'gatewy'", id="top-level-typo"),
    pytest.param(
        {"queueWorker": {"maxInflght": 8}},
        "additional properties 'maxInflght'",
        id="nested-typo",
    ),
    pytest.param(
        {"kafkaConnector": {"ordering": "random"}},
        "/kafkaConnector/ordering",
        id="ordering-enum",
    ),
    pytest.param({"gateway": {"replicas": -1}}, "/gateway/replicas", id="negative"),
    pytest.param(
        {"gateway": {"replicas": "3"}}, "/gateway/replicas", id="replicas-string"
    ),
    pytest.param(
        {"queueWorker": {"queues": [{"name": "Slow_Queue"}]}},
        "/queueWorker/queues/0/name",
        id="queue-name",
    ),
    pytest.param(
        {"queueWorker": {"queues": [{"name": "default"}]}},
        "/queueWorker/queues/0/name",
        id="queue-named-default",
    ),
    pytest.param(
        {"queueWorker": {"retry": {"codes": "500;502"}}},
        "/queueWorker/retry/codes",
        id="retry-codes",
    ),
    pytest.param(
        {"kafkaConnector": {"brokers": "kafka"}},
        "/kafkaConnector/brokers",
        id="broker-without-port",
    ),
    pytest.param(
        {"sqsConnector": {"waitTimeS": 30}}, "/sqsConnector/waitTimeS", id="wait-time"
    ),
    pytest.param({"nats": {"maxFileStore": "8GB"}}, "/nats/maxFileStore", id="size"),
    pytest.param({"log": {"level": "verbose"}}, "/log/level", id="log-level"),
    pytest.param(
        {"nats": {"tokenSecret": {"secret": "nats-client"}}},
        "additional properties 'secret'",
        id="token-secret-typo",
    ),
]


@pytest.mark.parametrize(("values", "message"), INVALID_VALUES)
def test_schema_rejects_invalid_values(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render(chart, values)
    assert message in str(caught.value)


INCONSISTENT_VALUES = [
    pytest.param(
        {"connectorsOnly": True, **CONNECTORS},
        "connectorsOnly is true but gatewayUrl is empty",
        id="connectors-only-without-gateway",
    ),
    pytest.param(
        {"nats": {"enabled": False}},
        "nats.enabled is false but nats.url is empty",
        id="no-nats",
    ),
    pytest.param(
        {"nats": {"replicas": 2}}, "nats.replicas is 2", id="two-nats-servers"
    ),
    pytest.param(
        {"kafkaConnector": {"enabled": True}},
        "kafkaConnector.brokers is empty",
        id="kafka-without-brokers",
    ),
    pytest.param(
        {
            "kafkaConnector": {
                "enabled": True,
                "brokers": "kafka:9092",
                "sasl": {"mechanism": "PLAIN"},
            }
        },
        "kafkaConnector.sasl.secretName is empty",
        id="sasl-without-secret",
    ),
    pytest.param(
        {
            "kafkaConnector": {
                "enabled": True,
                "brokers": "kafka:9092",
                "tls": {"enabled": True, "secretName": "tls", "certKey": "tls.crt"},
            }
        },
        "certKey and kafkaConnector.tls.keyKey go together",
        id="cert-without-key",
    ),
    pytest.param(
        {"sqsConnector": {"enabled": True}},
        "sqsConnector.queues is empty",
        id="sqs-without-queues",
    ),
    pytest.param(
        {"queueWorker": {"queues": [{"name": "slow"}, {"name": "slow"}]}},
        'lists the queue "slow" twice',
        id="duplicate-queue",
    ),
    pytest.param(
        {
            "connectorsOnly": True,
            "gatewayUrl": EXTERNAL_GATEWAY,
            "cronConnector": {"enabled": True, "replicas": 2},
        },
        "cronConnector.replicas is 2 but no NATS server is set",
        id="cron-replicas-without-nats",
    ),
    pytest.param(
        {"nats": {"tokenSecret": {"name": "nats-client"}}},
        "nats.tokenSecret.name is set, but no component connects",
        id="token-secret-for-chart-nats",
    ),
    pytest.param(
        {
            "connectorsOnly": True,
            "gatewayUrl": EXTERNAL_GATEWAY,
            "nats": {"tokenSecret": {"name": "nats-client"}},
            "cronConnector": {"enabled": True},
        },
        "nats.tokenSecret.name is set, but no component connects",
        id="token-secret-without-nats",
    ),
    pytest.param(
        {"provider": {"extraFunctionNamespaces": ["team-a"]}},
        "needs provider.clusterWide=true",
        id="namespaces-without-cluster-role",
    ),
    pytest.param(
        {"provider": {"replicas": 2}},
        "provider.replicas is 2, but the chart runs at most 1 provider. Each "
        "provider keeps the time of each function's last call in its own memory",
        id="two-providers",
    ),
    pytest.param(
        {
            "provider": {
                "clusterWide": True,
                "extraFunctionNamespaces": ["team-a", "openfaas-fn"],
            }
        },
        'provider.extraFunctionNamespaces lists "openfaas-fn", which is already '
        "provider.functionNamespace",
        id="function-namespace-twice",
    ),
    *[
        pytest.param(
            {"provider": {"functionNamespace": namespace}},
            f'the function namespace "{namespace}" in provider.functionNamespace '
            "or provider.extraFunctionNamespaces is reserved",
            id=f"function-namespace-{namespace}",
        )
        for namespace in ("kube-system", "kube-public", "kube-node-lease", "default")
    ],
    pytest.param(
        {
            "provider": {
                "clusterWide": True,
                "extraFunctionNamespaces": ["team-a", "kube-system"],
            }
        },
        'the function namespace "kube-system" in provider.functionNamespace',
        id="extra-function-namespace-kube-system",
    ),
    pytest.param(
        {"nats": {"url": EXTERNAL_NATS}},
        f"nats.url is {EXTERNAL_NATS} but nats.enabled is true, so the chart would "
        "run its own NATS",
        id="nats-url-with-chart-nats",
    ),
    pytest.param(
        {
            "connectorsOnly": True,
            "gatewayUrl": EXTERNAL_GATEWAY,
            "nats": {"url": EXTERNAL_NATS},
            "cronConnector": {"enabled": True},
        },
        f"nats.url is {EXTERNAL_NATS} but connectorsOnly is true",
        id="nats-url-with-connectors-only",
    ),
    pytest.param(
        {"basicAuth": {"enabled": False}, "gateway": {"authInvoke": True}},
        "gateway.authInvoke is true but basicAuth.enabled is false",
        id="auth-invoke-without-basic-auth",
    ),
    pytest.param(
        {"queueWorker": {"retry": {"minWaitS": 100, "maxWaitS": 1}}},
        "queueWorker.retry.minWaitS is 100, above queueWorker.retry.maxWaitS 1",
        id="retry-min-wait-above-max",
    ),
    pytest.param(
        {"queueWorker": {"retry": {"minWaitS": 1.5, "maxWaitS": 1.25}}},
        "queueWorker.retry.minWaitS is 1.5, above queueWorker.retry.maxWaitS 1.25",
        id="retry-min-wait-above-max-fraction",
    ),
    pytest.param(
        {"connectorsOnly": True, "gatewayUrl": EXTERNAL_GATEWAY},
        "connectorsOnly is true but no connector is enabled",
        id="connectors-only-without-connector",
    ),
    pytest.param(
        {"nats": {"maxFileStore": "20Gi", "storage": {"size": "10Gi"}}},
        "nats.maxFileStore is 20Gi, above nats.storage.size 10Gi",
        id="max-file-store-above-volume",
    ),
    pytest.param(
        {"nats": {"maxFileStore": "10241Mi", "storage": {"size": "10Gi"}}},
        "nats.maxFileStore is 10241Mi, above nats.storage.size 10Gi",
        id="max-file-store-above-volume-mixed-units",
    ),
    *[
        pytest.param(
            values,
            f"{key}.extraEnv sets {variable}, which the chart already sets for the "
            f"{container} container",
            id=f"{container}-extra-env-{variable}",
        )
        for key, container, variable, values in [
            ("gateway", "gateway", "FAASHUB_PORT", {}),
            ("provider", "provider", "FAASHUB_PORT", {}),
            ("queueWorker", "queue-worker", "FAASHUB_RETRY_MAX_WAIT_S", {}),
            ("kafkaConnector", "kafka-connector", "FAASHUB_BROKERS", CONNECTORS),
            ("sqsConnector", "sqs-connector", "AWS_ACCESS_KEY_ID", CONNECTORS),
            ("cronConnector", "cron-connector", "FAASHUB_NATS_URL", CONNECTORS),
            ("cronConnector", "cron-connector", "FAASHUB_LOG_LEVEL", CONNECTORS),
        ]
        for values in [
            {
                **values,
                key: {
                    **values.get(key, {}),
                    "extraEnv": [
                        {"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                        {"name": variable, "value": "9999"},
                    ],
                },
            }
        ]
    ],
]


@pytest.mark.parametrize(("values", "message"), INCONSISTENT_VALUES)
def test_template_rejects_inconsistent_values(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(chart, values)
    assert message in str(caught.value)


EXTRA_ENV = [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]


def test_extra_env_appended(chart: helm_python.Chart) -> None:
    values = {
        **CONNECTORS,
        **{
            key: {**CONNECTORS.get(key, {}), "extraEnv": EXTRA_ENV}
            for key in (
                "gateway",
                "provider",
                "queueWorker",
                "kafkaConnector",
                "sqsConnector",
                "cronConnector",
            )
        },
    }
    containers = list(faashub_containers(render(chart, values)))
    assert len(containers) == 6
    for workload, container in containers:
        env_names = [entry["name"] for entry in container["env"]]
        assert env_names[-1] == "HTTPS_PROXY", workload["metadata"]["name"]
        assert len(env_names) == len(set(env_names)), workload["metadata"]["name"]


def test_retry_waits_may_be_equal(chart: helm_python.Chart) -> None:
    values = {"queueWorker": {"retry": {"minWaitS": 5, "maxWaitS": 5}}}
    worker = find(render(chart, values), "Deployment", f"{PREFIX}-queue-worker")
    env = env_values(worker["spec"]["template"]["spec"]["containers"][0])
    assert env["FAASHUB_RETRY_MIN_WAIT_S"] == "5"
    assert env["FAASHUB_RETRY_MAX_WAIT_S"] == "5"


@pytest.mark.parametrize(
    ("max_file_store", "size"),
    [
        pytest.param("10240Mi", "10Gi", id="equal-mixed-units"),
        pytest.param("1Ti", "2Ti", id="terabytes"),
        pytest.param("9Gi", "10Gi", id="below"),
    ],
)
def test_max_file_store_within_volume(
    chart: helm_python.Chart, max_file_store: str, size: str
) -> None:
    values = {"nats": {"maxFileStore": max_file_store, "storage": {"size": size}}}
    objects = render(chart, values)
    config = find(objects, "ConfigMap", f"{PREFIX}-nats")["data"]["nats.conf"]
    assert f"max_file_store: {max_file_store}\n" in config


@pytest.mark.parametrize(
    "args", [pytest.param(args, id=" ".join(args)) for args in SETTINGS_BY_ARGS]
)
def test_component_args_are_cli_commands(args: tuple[str, ...]) -> None:
    parser = cli_main.build_parser()
    try:
        parsed = parser.parse_args(list(args))
    except SystemExit:
        pytest.fail(f"`faashub {' '.join(args)}` is not a command of the CLI")
    assert callable(parsed.handler)


def test_dockerfile_matches_chart(chart: helm_python.Chart) -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["faashub"\]$', dockerfile, re.MULTILINE)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    run_as = chart.values["podSecurityContext"]
    assert user[-1] == f"{run_as['runAsUser']}:{run_as['runAsGroup']}"
    assert re.search(r"^FROM python:3\.11-slim\S* AS build$", dockerfile, re.MULTILINE)


def test_helm_lint_strict_clean() -> None:
    report = helm_python.lint(CHART_DIR, strict=True)
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert not problems
    assert not report["errors"]


@pytest.mark.parametrize("values", SCENARIOS)
def test_startup_probe_covers_slow_start(
    chart: helm_python.Chart, values: dict[str, Any]
) -> None:
    # The provider's start waits for one list of Deployments, which may take a
    # connect timeout and a read timeout before it exits with its reason.
    provider_start_s = kube.CONNECT_TIMEOUT_S + kube.READ_TIMEOUT_S
    for workload in workloads(render(chart, values)):
        name = workload["metadata"]["name"]
        for container in workload["spec"]["template"]["spec"]["containers"]:
            startup = container["startupProbe"]
            liveness = container["livenessProbe"]
            assert startup["httpGet"] == liveness["httpGet"], name
            startup_s = startup["periodSeconds"] * startup["failureThreshold"]
            liveness_s = liveness["periodSeconds"] * liveness["failureThreshold"]
            assert startup_s > liveness_s, name
            assert startup_s > 2 * provider_start_s, name


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        pytest.param(
            {"repository": f"ghcr.io/faashub/faashub@{DIGEST}", "tag": ""},
            f"ghcr.io/faashub/faashub@{DIGEST}",
            id="digest-in-repository",
        ),
        pytest.param(
            {"repository": "ghcr.io/faashub/faashub", "tag": DIGEST},
            f"ghcr.io/faashub/faashub@{DIGEST}",
            id="digest-as-tag",
        ),
        pytest.param(
            {"repository": f"ghcr.io/faashub/faashub@{DIGEST}", "tag": "0.9.0"},
            f"ghcr.io/faashub/faashub:0.9.0@{DIGEST}",
            id="tag-and-digest",
        ),
        pytest.param(
            {"repository": "registry.local:5000/faashub", "tag": "0.9.0"},
            "registry.local:5000/faashub:0.9.0",
            id="registry-port",
        ),
    ],
)
def test_image_reference_forms(
    chart: helm_python.Chart, image: dict[str, str], expected: str
) -> None:
    objects = render(chart, {**FULL_STACK, "image": image, "nats": {"image": image}})

    images = {
        container["image"]
        for workload in workloads(objects)
        for container in workload["spec"]["template"]["spec"]["containers"]
    }
    assert images == {expected}
    assert_valid(objects)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        pytest.param(
            {"repository": "ghcr.io/faashub/faashub@sha256:abc", "tag": ""},
            'image.repository is "ghcr.io/faashub/faashub@sha256:abc"',
            id="short-digest",
        ),
        pytest.param(
            {"repository": "ghcr.io/faashub/faashub", "tag": "sha256:xyz"},
            'image.tag is "sha256:xyz"',
            id="digest-tag-not-hex",
        ),
        pytest.param(
            {"repository": "ghcr.io/faashub/faashub", "tag": "1.0 beta"},
            'image.tag is "1.0 beta"',
            id="tag-with-space",
        ),
    ],
)
def test_invalid_image_rejected(
    chart: helm_python.Chart, image: dict[str, str], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(chart, {"image": image})
    assert message in str(caught.value)


def resources(**bounds: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "1", "memory": "512Mi"},
    }
    for bound, changes in bounds.items():
        base[bound] = {**base[bound], **changes}
    return base


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"gateway": {"resources": resources(requests={"cpu": "-100m"})}},
            'gateway.resources.requests.cpu is "-100m", which is negative',
            id="negative",
        ),
        pytest.param(
            {"provider": {"resources": resources(limits={"memory": "512MB"})}},
            'provider.resources.limits.memory is "512MB", which is not a '
            "Kubernetes quantity",
            id="unknown-suffix",
        ),
        pytest.param(
            {"nats": {"resources": resources(requests={"cpu": "1.5.0"})}},
            'nats.resources.requests.cpu is "1.5.0"',
            id="two-points",
        ),
        pytest.param(
            {"queueWorker": {"resources": resources(requests={"cpu": 2})}},
            'queueWorker.resources.requests.cpu is "2", above '
            'queueWorker.resources.limits.cpu "1"',
            id="request-above-limit",
        ),
        pytest.param(
            {
                "queueWorker": {
                    "queues": [
                        {
                            "name": "slow",
                            "resources": resources(requests={"memory": "1Gi"}),
                        }
                    ]
                }
            },
            'queueWorker.queues[slow].resources.requests.memory is "1Gi", above '
            'queueWorker.queues[slow].resources.limits.memory "512Mi"',
            id="named-queue",
        ),
        pytest.param(
            {
                **CONNECTORS,
                "cronConnector": {
                    "enabled": True,
                    "resources": resources(requests={"ephemeral-storage": "x"}),
                },
            },
            'cronConnector.resources.requests.ephemeral-storage is "x"',
            id="connector",
        ),
    ],
)
def test_invalid_resources_rejected(
    chart: helm_python.Chart, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError) as caught:
        render(chart, values)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("request_value", "limit_value"),
    [
        pytest.param("1Gi", "1024Mi", id="binary-units"),
        pytest.param("100m", "0.1", id="milli-and-decimal"),
        pytest.param("1e3", "1k", id="exponent"),
        pytest.param(0.5, "500m", id="number"),
        pytest.param("+1", "1000m", id="plus-sign"),
    ],
)
def test_equal_request_and_limit_accepted(
    chart: helm_python.Chart, request_value: Any, limit_value: str
) -> None:
    values = {
        "gateway": {
            "resources": resources(
                requests={"cpu": request_value}, limits={"cpu": limit_value}
            )
        }
    }
    gateway = find(render(chart, values), "Deployment", f"{PREFIX}-gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == request_value
    assert container["resources"]["limits"]["cpu"] == limit_value
