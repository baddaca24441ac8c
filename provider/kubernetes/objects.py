"""The Kubernetes objects of a function, built and read back as faas-netes does.

`build_deployment` and `build_service` turn a `FunctionDeployment` into the
Deployment and ClusterIP Service named after the function, selected by the
label `faas_function=<name>`. `function_status` reads a Deployment back into
the `FunctionStatus` that `faas-cli describe` shows, so a change made with
kubectl shows up too. `merge_patch` computes the JSON merge patch (RFC 7386)
that turns one object into another, which is how an update is sent.

The mapping: `envProcess` becomes env `fprocess` and `envVars` follow sorted
by name; `limits` and `requests` become the container's resources; each
named secret is projected read-only into `/var/openfaas/secrets/<key>`,
except Docker config secrets, which become `imagePullSecrets`;
`readOnlyRootFilesystem` adds a writable emptyDir at `/tmp`; `constraints`
(`key=value`) become the `nodeSelector`; HTTP probes go to `/_/health`; a
rolling update never takes a ready replica away before its successor is
ready. This module makes no API call.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from provider.backend import InvalidRequest
from provider.kubernetes.kube import JsonObject
from provider.types import FunctionDeployment, FunctionResources, FunctionStatus

FUNCTION_LABEL: Final = "faas_function"
# A fresh value on every update forces a rollout, so pods pick up new secrets.
ROLLOUT_LABEL: Final = "uid"
MIN_SCALE_LABEL: Final = "com.openfaas.scale.min"
SCALE_ZERO_LABEL: Final = "com.openfaas.scale.zero"
SCALE_ZERO_DURATION_LABEL: Final = "com.openfaas.scale.zero-duration"
SCRAPE_ANNOTATION: Final = "prometheus.io.scrape"
NAMESPACE_ANNOTATION: Final = "openfaas"
SECRET_MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
SECRET_MANAGER: Final = "faashub"
# Secrets that faas-netes created carry this manager; they are listed too.
OPENFAAS_SECRET_MANAGER: Final = "openfaas"
DOCKER_CONFIG_SECRET_TYPES: Final = frozenset(
    {"kubernetes.io/dockerconfigjson", "kubernetes.io/dockercfg"}
)

FUNCTION_PORT: Final = 8080
HEALTH_PATH: Final = "/_/health"
SECRETS_MOUNT_PATH: Final = "/var/openfaas/secrets"
TEMP_VOLUME: Final = "temp"
NON_ROOT_USER_ID: Final = 12000
DEFAULT_REPLICAS: Final = 1
REVISION_HISTORY_LIMIT: Final = 10
PROBE_FAILURE_THRESHOLD: Final = 3
DEFAULT_SCALE_ZERO_DURATION_S: Final = 15 * 60.0

_RESOURCE_KEYS: Final = (
    "memory",
    "cpu",
    "nvidia.com/gpu",
    "amd.com/gpu",
    "intel.com/gpu",
)
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS_S: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True, slots=True)
class ContainerOptions:
    """Cluster-wide choices for every function container, from the settings."""

    image_pull_policy: str = "Always"
    set_non_root_user: bool = False
    probe_initial_delay_s: int = 2
    probe_period_s: int = 2
    probe_timeout_s: int = 1


@dataclass(frozen=True, slots=True)
class SecretMounts:
    """The named secrets of a function, split by how the pod uses them."""

    projected: tuple[str, ...] = ()
    image_pull: tuple[str, ...] = ()


def selector_labels(name: str) -> dict[str, str]:
    """Return the labels that select a function's pods."""
    return {FUNCTION_LABEL: name}


def projected_volume_name(name: str) -> str:
    """Return the name of the volume that holds a function's secrets."""
    return f"{name}-projected-secrets"


def initial_replicas(labels: dict[str, str]) -> int | None:
    """Return the replicas that `com.openfaas.scale.min` asks for, or None if unset.

    Raise InvalidRequest for a value that is not a whole number of 0 or more.
    """
    value = labels.get(MIN_SCALE_LABEL)
    if value is None or value == "":
        return None
    try:
        replicas = int(value)
    except ValueError:
        replicas = -1
    if replicas < 0:
        raise InvalidRequest(
            f"Invalid label {MIN_SCALE_LABEL}={value!r}: use a whole number of "
            "replicas, 0 or more."
        )
    return replicas


def build_deployment(
    deployment: FunctionDeployment,
    *,
    namespace: str,
    replicas: int,
    secrets: SecretMounts,
    options: ContainerOptions,
) -> JsonObject:
    """Return the Deployment of a function, with a fresh rollout label."""
    name = deployment.service
    labels = {**deployment.labels, FUNCTION_LABEL: name}
    annotations = _annotations(deployment)
    pod_labels = {**labels, ROLLOUT_LABEL: uuid.uuid4().hex}
    pod_spec: JsonObject = {
        "containers": [_container(deployment, secrets=secrets, options=options)],
    }
    volumes = _volumes(deployment, secrets)
    if volumes:
        pod_spec["volumes"] = volumes
    if secrets.image_pull:
        pod_spec["imagePullSecrets"] = [{"name": item} for item in secrets.image_pull]
    node_selector = _node_selector(name, deployment.constraints)
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def build_service(deployment: FunctionDeployment, *, namespace: str) -> JsonObject:
    """Return the ClusterIP Service that sends port 8080 to the function's pods."""
    name = deployment.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": selector_labels(name),
            "annotations": _annotations(deployment),
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(name),
            "ports": [
                {
                    "name": "http",
                    "protocol": "TCP",
                    "port": FUNCTION_PORT,
                    "targetPort": FUNCTION_PORT,
                }
            ],
        },
    }


def merge_patch(current: Any, desired: Any) -> Any:
    """Return the JSON merge patch (RFC 7386) that turns `current` into `desired`.

    Keys of `current` missing from `desired` become null, which deletes them.
    Lists are replaced whole, as RFC 7386 does.
    """
    if not isinstance(current, dict) or not isinstance(desired, dict):
        return desired
    patch: JsonObject = {}
    for key, value in desired.items():
        if key in current:
            if current[key] != value:
                patch[key] = merge_patch(current[key], value)
        else:
            patch[key] = value
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch


def is_function(deployment: JsonObject) -> bool:
    """Return whether a Deployment carries the faas_function label."""
    labels = deployment.get("metadata", {}).get("labels") or {}
    return FUNCTION_LABEL in labels


def belongs_to_function(item: JsonObject, name: str) -> bool:
    """Return whether an object carries the label faas_function=`name`."""
    labels = item.get("metadata", {}).get("labels") or {}
    return labels.get(FUNCTION_LABEL) == name


def replicas_of(deployment: JsonObject) -> int:
    """Return a Deployment's desired replicas (1 when unset, the API default)."""
    replicas = deployment.get("spec", {}).get("replicas")
    return DEFAULT_REPLICAS if replicas is None else int(replicas)


def available_replicas_of(deployment: JsonObject) -> int:
    """Return the replicas that are available, from the Deployment's status."""
    status = deployment.get("status") or {}
    return int(status.get("availableReplicas") or 0)


def function_status(deployment: JsonObject) -> FunctionStatus:
    """Read a function's Deployment back into the FunctionStatus the API reports."""
    metadata = deployment.get("metadata", {})
    spec = deployment.get("spec", {})
    template = spec.get("template", {})
    pod_spec = template.get("spec", {})
    containers = pod_spec.get("containers") or [{}]
    container = containers[0]
    env_process = ""
    env_vars: dict[str, str] = {}
    for variable in container.get("env") or []:
        if variable.get("name") == "fprocess":
            env_process = variable.get("value", "")
        elif "value" in variable:
            env_vars[variable["name"]] = variable["value"]
    labels = {
        key: value
        for key, value in (template.get("metadata", {}).get("labels") or {}).items()
        if key not in (FUNCTION_LABEL, ROLLOUT_LABEL)
    }
    resources = container.get("resources") or {}
    security = container.get("securityContext") or {}
    return FunctionStatus(
        name=metadata.get("name", ""),
        image=container.get("image", ""),
        namespace=metadata.get("namespace", ""),
        env_process=env_process,
        env_vars=env_vars,
        constraints=[
            f"{key}={value}"
            for key, value in (pod_spec.get("nodeSelector") or {}).items()
        ],
        secrets=_secret_names(metadata.get("name", ""), pod_spec),
        labels=labels,
        annotations=dict(metadata.get("annotations") or {}),
        limits=_resources_model(resources.get("limits")),
        requests=_resources_model(resources.get("requests")),
        read_only_root_filesystem=bool(security.get("readOnlyRootFilesystem")),
        replicas=replicas_of(deployment),
        available_replicas=available_replicas_of(deployment),
        created_at=_parse_time(metadata.get("creationTimestamp")),
    )


def scale_zero_duration_s(labels: dict[str, str]) -> float:
    """Return the idle seconds after which a scale-to-zero function is scaled down.

    An invalid `com.openfaas.scale.zero-duration` falls back to 15 minutes,
    the OpenFaaS default, because the label was accepted at deploy time.
    """
    value = labels.get(SCALE_ZERO_DURATION_LABEL, "")
    try:
        return parse_go_duration_s(value) if value else DEFAULT_SCALE_ZERO_DURATION_S
    except ValueError:
        return DEFAULT_SCALE_ZERO_DURATION_S


def parse_go_duration_s(value: str) -> float:
    """Parse a Go duration such as `15m`, `1h30m` or `90s`; a bare number is seconds."""
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    position = 0
    seconds = 0.0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _GO_DURATION_UNITS_S[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{value!r} is not a duration such as 15m, 1h30m or 90s")
    return seconds


def validate_labels(deployment: FunctionDeployment) -> None:
    """Raise InvalidRequest for a scaling label the provider cannot read."""
    initial_replicas(deployment.labels)
    duration = deployment.labels.get(SCALE_ZERO_DURATION_LABEL, "")
    if duration:
        try:
            parse_go_duration_s(duration)
        except ValueError:
            raise InvalidRequest(
                f"Invalid label {SCALE_ZERO_DURATION_LABEL}={duration!r}: use a "
                "duration such as 15m, 1h30m or 90s."
            ) from None
    zero = deployment.labels.get(SCALE_ZERO_LABEL, "")
    if zero not in ("", "true", "false"):
        raise InvalidRequest(
            f"Invalid label {SCALE_ZERO_LABEL}={zero!r}: use true or false."
        )


def _annotations(deployment: FunctionDeployment) -> dict[str, str]:
    return {SCRAPE_ANNOTATION: "false", **deployment.annotations}


def _container(
    deployment: FunctionDeployment,
    *,
    secrets: SecretMounts,
    options: ContainerOptions,
) -> JsonObject:
    env: list[JsonObject] = []
    if deployment.env_process:
        env.append({"name": "fprocess", "value": deployment.env_process})
    for key in sorted(deployment.env_vars):
        env.append({"name": key, "value": deployment.env_vars[key]})
    probe = {
        "httpGet": {"path": HEALTH_PATH, "port": FUNCTION_PORT, "scheme": "HTTP"},
        "initialDelaySeconds": options.probe_initial_delay_s,
        "periodSeconds": options.probe_period_s,
        "timeoutSeconds": options.probe_timeout_s,
        "failureThreshold": PROBE_FAILURE_THRESHOLD,
    }
    security: JsonObject = {
        "readOnlyRootFilesystem": deployment.read_only_root_filesystem,
        "allowPrivilegeEscalation": False,
    }
    if options.set_non_root_user:
        security["runAsUser"] = NON_ROOT_USER_ID
    container: JsonObject = {
        "name": deployment.service,
        "image": deployment.image,
        "imagePullPolicy": options.image_pull_policy,
        "ports": [{"name": "http", "containerPort": FUNCTION_PORT, "protocol": "TCP"}],
        "env": env,
        "readinessProbe": probe,
        "livenessProbe": probe,
        "securityContext": security,
    }
    resources: JsonObject = {}
    for key, model in (
        ("limits", deployment.limits),
        ("requests", deployment.requests),
    ):
        quantities = _quantities(model)
        if quantities:
            resources[key] = quantities
    if resources:
        container["resources"] = resources
    mounts: list[JsonObject] = []
    if secrets.projected:
        mounts.append(
            {
                "name": projected_volume_name(deployment.service),
                "mountPath": SECRETS_MOUNT_PATH,
                "readOnly": True,
            }
        )
    if deployment.read_only_root_filesystem:
        mounts.append({"name": TEMP_VOLUME, "mountPath": "/tmp"})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _volumes(deployment: FunctionDeployment, secrets: SecretMounts) -> list[JsonObject]:
    volumes: list[JsonObject] = []
    if secrets.projected:
        # Without `items`, every key of each secret becomes a file of that name.
        volumes.append(
            {
                "name": projected_volume_name(deployment.service),
                "projected": {
                    "sources": [
                        {"secret": {"name": name}} for name in secrets.projected
                    ]
                },
            }
        )
    if deployment.read_only_root_filesystem:
        volumes.append({"name": TEMP_VOLUME, "emptyDir": {}})
    return volumes


def _node_selector(name: str, constraints: list[str]) -> dict[str, str]:
    selector: dict[str, str] = {}
    for constraint in constraints:
        key, separator, value = constraint.partition("=")
        key, value = key.strip(), value.strip().lstrip("=").strip()
        if not separator or not key or not value:
            raise InvalidRequest(
                f"Invalid constraint {constraint!r} of function {name!r}: use "
                "key=value, such as kubernetes.io/arch=arm64; it becomes the "
                "pods' nodeSelector."
            )
        selector[key] = value
    return selector


def _quantities(model: FunctionResources | None) -> dict[str, str]:
    if model is None:
        return {}
    data = model.model_dump(by_alias=True)
    return {key: data[key] for key in _RESOURCE_KEYS if data.get(key)}


def _resources_model(quantities: dict[str, str] | None) -> FunctionResources | None:
    if not quantities:
        return None
    return FunctionResources.model_validate(
        {key: value for key, value in quantities.items() if key in _RESOURCE_KEYS}
    )


def _secret_names(name: str, pod_spec: JsonObject) -> list[str]:
    secrets: list[str] = []
    for volume in pod_spec.get("volumes") or []:
        if volume.get("name") != projected_volume_name(name):
            continue
        for source in (volume.get("projected") or {}).get("sources") or []:
            secret = source.get("secret")
            if secret and secret.get("name"):
                secrets.append(secret["name"])
    for pull_secret in pod_spec.get("imagePullSecrets") or []:
        if pull_secret.get("name"):
            secrets.append(pull_secret["name"])
    return secrets


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
