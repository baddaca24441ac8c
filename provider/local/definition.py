"""Validation of a FunctionDeployment for the local backend, and what it runs.

`build_spec` checks the rules of the local backend: one namespace, secret
names that are DNS-1123 labels, and a command. The command is `envProcess`,
or else the `fprocess` entry of `envVars`, which is where the watchdog reads
it. It reads the of-watchdog variables from `envVars` (`mode`,
`exec_timeout`, `content_type` and `upstream_url`) and the initial replica
count from the label `com.openfaas.scale.min`. An invalid value of any of
them is an InvalidRequest, so a deploy fails instead of a later call. The
result, a `FunctionSpec`, is what `classic` and `http_mode` run. Whether the
named secrets exist is the backend's check, because it needs the secret
store. This module starts no process.

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
# The watchdog's variable for the command, used when envProcess is empty.
ENV_FPROCESS: Final = "fprocess"

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
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A validated function definition, ready for the local backend to run."""

    name: str
    namespace: str
    command: str
    argv: tuple[str, ...]
    mode: Literal["classic", "http"]
    env_vars: Mapping[str, str]
    exec_timeout_s: float | None
    """Seconds one request may take, or None for no limit (`exec_timeout=0`)."""
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


def validate_replicas(spec: FunctionSpec, replicas: int, *, max_replicas: int) -> int:
    """Return `replicas` if the function can run that many, or raise InvalidRequest."""
    if replicas < 0 or replicas > max_replicas:
        raise InvalidRequest(
            f"Cannot scale function {spec.ref} to {replicas} replicas: the local "
            f"provider runs from 0 to {max_replicas} replicas of a function "
            "(the provider's --max-replicas)."
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

    Raise ValueError when the value is neither, which includes a negative one.
    """
    text = value.strip()
    if text.isascii() and text.isdigit():
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
    return seconds


def build_spec(
    deployment: FunctionDeployment,
    *,
    default_exec_timeout_s: float,
    max_replicas: int,
) -> FunctionSpec:
    """Validate `deployment` for the local backend and return what to run.

    Raise InvalidRequest, NamespaceNotFound, or
    faashub.errors.InvalidFunctionName for a service or secret name that is
    not a DNS-1123 label.
    """
    name = names.validate_label(deployment.service)
    namespace = resolve_namespace(deployment.namespace)
    env_vars = deployment.env_vars
    command, command_source = _command(deployment)
    argv = _split_command(name, command, source=command_source)
    secrets = _secret_names(name, deployment.secrets)
    mode = _mode(name, env_vars)

    upstream_url = env_vars.get(constants.ENV_UPSTREAM_URL) or env_vars.get(
        ENV_HTTP_UPSTREAM_URL, ""
    )
    upstream_port = _upstream_port(name, upstream_url) if upstream_url else 0
    min_replicas = _min_replicas(name, deployment.labels, max_replicas=max_replicas)
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
        command=command,
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


def _command(deployment: FunctionDeployment) -> tuple[str, str]:
    """Return the function's command and the field it came from, for messages.

    `envProcess` wins over an `fprocess` entry of `envVars`, because it is
    the API's own field for the command.
    """
    if deployment.env_process.strip():
        return deployment.env_process, "envProcess"
    from_env = deployment.env_vars.get(ENV_FPROCESS, "")
    if from_env.strip():
        return from_env, f"envVars {ENV_FPROCESS}"
    raise InvalidRequest(
        f"Function {deployment.service!r} has no command: the local provider "
        "runs envProcess as the function's process. In a faas-cli stack file, "
        "set the function's 'fprocess:' key (faas-cli sends it as envProcess), "
        "for example 'fprocess: cat'. With 'faashub deploy' pass --fprocess."
    )


def _split_command(name: str, command: str, *, source: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise InvalidRequest(
            f"Function {name!r} has a command in {source} that cannot be split "
            f"into a program and arguments ({exc}): {command!r}. Balance its "
            "quotes."
        ) from exc
    if not argv or not argv[0]:
        raise InvalidRequest(
            f"Function {name!r} has a command in {source} with an empty program "
            f"name: {command!r}. Name the program to run first."
        )
    return argv


def _mode(name: str, env_vars: Mapping[str, str]) -> Literal["classic", "http"]:
    value = env_vars.get(constants.ENV_MODE, "")
    if value == HTTP_MODE:
        return "http"
    if value in CLASSIC_MODES:
        return "classic"
    raise InvalidRequest(
        f"Function {name!r} has envVars mode={value!r}, which the local provider "
        "does not run. Use 'http' for a long-running server, 'streaming' or "
        "'serializing' (or no mode) to start a process per request."
    )


def _secret_names(name: str, secrets: list[str]) -> tuple[str, ...]:
    """Return the function's secret names, without repeats, in the order given."""
    unique = dict.fromkeys(secret for secret in secrets if secret)
    for secret in unique:
        names.validate_label(secret, what=f"secret name of function {name!r}")
    return tuple(unique)


def _min_replicas(
    name: str, labels: Mapping[str, str], *, max_replicas: int
) -> int | None:
    value = labels.get(LABEL_SCALE_MIN)
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > max_replicas:
        raise InvalidRequest(
            f"Function {name!r} has label {LABEL_SCALE_MIN}={value!r}, which is "
            f"not a whole number of replicas from 0 to {max_replicas}. Fix it, or "
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
) -> float | None:
    """Return the function's exec timeout, None for none, as the watchdog reads it.

    Zero disables the timeout, as in the OpenFaaS watchdogs.
    """
    value = env_vars.get(constants.ENV_EXEC_TIMEOUT)
    if value is None:
        return default_s
    try:
        seconds = parse_duration_s(value)
    except ValueError:
        raise InvalidRequest(
            f"Function {name!r} has envVars {constants.ENV_EXEC_TIMEOUT}={value!r}, "
            "which is not a valid timeout. Use whole seconds (30), a duration "
            "such as 30s, 1m30s or 500ms, or 0 for no timeout."
        ) from None
    return seconds or None
