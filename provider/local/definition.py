"""Validation of a FunctionDeployment for the local backend, and what it runs.

`build_spec` checks the rules of the local backend: one namespace, secret
names that are DNS-1123 labels, and `envProcess` required because it is the
command. It reads the of-watchdog variables from `envVars` (`mode`,
`exec_timeout`, `content_type` and `upstream_url`) and the initial replica
count from the label `com.openfaas.scale.min`. The result, a `FunctionSpec`,
is what `classic` and `http_mode` run. Whether the named secrets exist is the
backend's check, because it needs the secret store. This module starts no
process.

A function's process never inherits the provider's environment, which may
contain credentials. It gets a minimal base (`PATH`, `HOME`, `LANG`, `LC_ALL`,
`TMPDIR`, copied from the provider when set) plus the function's own
variables. A function that names secrets also gets OPENFAAS_SECRETS_DIR, the
folder that holds one file per secret.
"""

import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from faashub import constants, names
from provider.backend import InvalidRequest, NamespaceNotFound
from provider.types import FunctionDeployment

logger = logging.getLogger(__name__)

NAMESPACE: Final = constants.DEFAULT_NAMESPACE

# Variables copied from the provider's environment into every function's.
BASE_ENV_NAMES: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
DEFAULT_PATH: Final = "/usr/local/bin:/usr/bin:/bin"

# of-watchdog modes. The fork-per-request ones share one implementation here,
# because the local backend buffers the request and the response either way.
CLASSIC_MODES: Final = frozenset({"", "streaming", "serializing"})
HTTP_MODE: Final = "http"
ENV_HTTP_UPSTREAM_URL: Final = "http_upstream_url"  # of-watchdog's older spelling

# The folder of the function's secret files. OpenFaaS mounts secrets at
# /var/openfaas/secrets, and a local function reads $OPENFAAS_SECRETS_DIR/<name>.
ENV_SECRETS_DIR: Final = "OPENFAAS_SECRETS_DIR"

# The replicas a function starts with, as faas-netes reads it at deploy.
LABEL_SCALE_MIN: Final = "com.openfaas.scale.min"
# The maximum replicas of a function, so a typo in a scale request cannot
# start hundreds of servers. It is the default of com.openfaas.scale.max in
# OpenFaaS Pro.
MAX_REPLICAS: Final = 20

_DURATION_UNITS_S: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A validated function definition, ready for the local backend to run."""

    name: str
    namespace: str
    command: str
    argv: tuple[str, ...]
    mode: Literal["classic", "http"]
    env_vars: Mapping[str, str]
    exec_timeout_s: float
    content_type: str
    upstream_url: str
    upstream_port: int
    secrets: tuple[str, ...] = ()
    secrets_dir: str = ""
    """The folder of the secret files, or "" when the function names no secret."""
    min_replicas: int | None = None
    """The replicas from the `com.openfaas.scale.min` label, None without it."""

    @property
    def ref(self) -> str:
        """The function's `name.namespace`, for messages and log context."""
        return f"{self.name}.{self.namespace}"

    def process_env(self) -> dict[str, str]:
        """Return the environment shared by every process of this function."""
        env = base_environment()
        env.update(self.env_vars)
        env["fprocess"] = self.command
        # Set last, so an envVars entry cannot point a function elsewhere.
        if self.secrets_dir:
            env[ENV_SECRETS_DIR] = self.secrets_dir
        return env


def base_environment() -> dict[str, str]:
    """Return the few provider variables that a function process inherits."""
    env = {name: os.environ[name] for name in BASE_ENV_NAMES if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def resolve_namespace(namespace: str) -> str:
    """Return the namespace to use for `namespace`, or raise NamespaceNotFound."""
    if namespace in ("", NAMESPACE):
        return NAMESPACE
    raise NamespaceNotFound(
        f"Namespace {namespace!r} not found: the local provider has only the "
        f"namespace {NAMESPACE!r}. Leave the namespace empty or use {NAMESPACE!r}."
    )


def validate_replicas(spec: FunctionSpec, replicas: int) -> int:
    """Return `replicas` if the function can run that many, or raise InvalidRequest."""
    if replicas < 0 or replicas > MAX_REPLICAS:
        raise InvalidRequest(
            f"Cannot scale function {spec.ref} to {replicas} replicas: the local "
            f"provider runs from 0 to {MAX_REPLICAS} replicas of a function."
        )
    if replicas > 1 and spec.upstream_url:
        raise InvalidRequest(
            f"Cannot scale function {spec.ref} to {replicas} replicas: its "
            f"upstream_url {spec.upstream_url} fixes one port, so only one process "
            "can run. Remove upstream_url from its envVars to let each replica get "
            "its own port."
        )
    return replicas


def parse_duration_s(value: str) -> float:
    """Parse integer seconds ("30") or a Go duration ("1m30s", "500ms").

    Raise ValueError when the value is neither or is not greater than zero.
    """
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        position = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
            position = match.end()
        if position != len(text) or not text:
            raise ValueError(
                f"{value!r} is neither whole seconds nor a duration such as "
                "'30s', '1m30s' or '500ms'"
            )
    if seconds <= 0:
        raise ValueError(f"{value!r} is not greater than zero")
    return seconds


def build_spec(
    deployment: FunctionDeployment, *, default_exec_timeout_s: float
) -> FunctionSpec:
    """Validate `deployment` for the local backend and return what to run.

    Raise InvalidRequest, NamespaceNotFound, or
    faashub.errors.InvalidFunctionName for a service or secret name that is
    not a DNS-1123 label. An invalid `exec_timeout` is not an error: it is
    logged once here and the default is used.
    """
    name = names.validate_label(deployment.service)
    namespace = resolve_namespace(deployment.namespace)
    argv = _split_command(name, deployment.env_process)
    secrets = _secret_names(name, deployment.secrets)
    env_vars = deployment.env_vars

    mode_value = env_vars.get(constants.ENV_MODE, "")
    if mode_value == HTTP_MODE:
        mode: Literal["classic", "http"] = "http"
    elif mode_value in CLASSIC_MODES:
        mode = "classic"
    else:
        raise InvalidRequest(
            f"Function {name!r} has envVars mode={mode_value!r}, which the local "
            "provider does not run. Use 'http' for a long-running server, or leave "
            "mode unset to start a process per request."
        )

    upstream_url = env_vars.get(constants.ENV_UPSTREAM_URL) or env_vars.get(
        ENV_HTTP_UPSTREAM_URL, ""
    )
    upstream_port = _upstream_port(name, upstream_url) if upstream_url else 0
    min_replicas = _min_replicas(name, deployment.labels)
    if upstream_url and min_replicas is not None and min_replicas > 1:
        raise InvalidRequest(
            f"Function {name!r} asks for {min_replicas} replicas with label "
            f"{LABEL_SCALE_MIN}, but its upstream_url fixes one port, so only one "
            "process can run. Remove upstream_url to let each replica get its "
            f"own port, or set {LABEL_SCALE_MIN} to 1."
        )

    return FunctionSpec(
        name=name,
        namespace=namespace,
        command=deployment.env_process,
        argv=argv,
        mode=mode,
        env_vars=dict(env_vars),
        exec_timeout_s=_exec_timeout_s(
            name, env_vars, default_s=default_exec_timeout_s
        ),
        content_type=env_vars.get(constants.ENV_CONTENT_TYPE, ""),
        upstream_url=upstream_url.rstrip("/"),
        upstream_port=upstream_port,
        secrets=secrets,
        min_replicas=min_replicas,
    )


def _split_command(name: str, command: str) -> tuple[str, ...]:
    if not command.strip():
        raise InvalidRequest(
            f"Function {name!r} has no envProcess. The local provider runs "
            "envProcess as the function's command: set it, for example "
            "'envProcess: cat' or, with faas-cli, 'fprocess: cat' in environment."
        )
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise InvalidRequest(
            f"Function {name!r} has an envProcess that cannot be split into a "
            f"command and arguments ({exc}): {command!r}. Balance its quotes."
        ) from exc
    if not argv:
        raise InvalidRequest(f"Function {name!r} has an envProcess with no command.")
    return argv


def _secret_names(name: str, secrets: list[str]) -> tuple[str, ...]:
    """Return the function's secret names, without repeats, in the order given."""
    unique = dict.fromkeys(secret for secret in secrets if secret)
    for secret in unique:
        names.validate_label(secret, what=f"secret name of function {name!r}")
    return tuple(unique)


def _min_replicas(name: str, labels: Mapping[str, str]) -> int | None:
    value = labels.get(LABEL_SCALE_MIN)
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit() or int(text) > MAX_REPLICAS:
        raise InvalidRequest(
            f"Function {name!r} has label {LABEL_SCALE_MIN}={value!r}, which is "
            f"not a whole number of replicas from 0 to {MAX_REPLICAS}. Fix it, or "
            "remove it to start one replica."
        )
    return int(text)


def _upstream_port(name: str, url: str) -> int:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None:
        raise InvalidRequest(
            f"Function {name!r} has upstream_url {url!r}, which is not an "
            "http://HOST:PORT address. Set it to the address the function's "
            "server listens on, such as http://127.0.0.1:5000, or remove it to "
            "let the provider pick a port and pass it in PORT."
        )
    return port


def _exec_timeout_s(
    name: str, env_vars: Mapping[str, str], *, default_s: float
) -> float:
    value = env_vars.get(constants.ENV_EXEC_TIMEOUT)
    if value is None:
        return default_s
    try:
        return parse_duration_s(value)
    except ValueError as exc:
        logger.warning(
            "invalid exec_timeout, using the default: %s",
            exc,
            extra={"ctx": {"function": name, "default_s": default_s}},
        )
        return default_s
