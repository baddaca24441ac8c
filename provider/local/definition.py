"""Validation of a FunctionDeployment for the local backend, and what it runs.

`build_spec` checks the rules of the local backend (one namespace, no secret
store, `envProcess` required because it is the command) and reads the
of-watchdog variables from `envVars`: `mode`, `exec_timeout`, `content_type`
and `upstream_url`. The result, a `FunctionSpec`, is what `classic` and
`http_mode` run. This module starts no process.

A function's process never inherits the provider's environment, which may
contain credentials. It gets a minimal base (`PATH`, `HOME`, `LANG`, `LC_ALL`,
`TMPDIR`, copied from the provider when set) plus the function's own
variables.
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
from provider.backend import InvalidRequest
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

    @property
    def ref(self) -> str:
        """The function's `name.namespace`, for messages and log context."""
        return f"{self.name}.{self.namespace}"

    def process_env(self) -> dict[str, str]:
        """Return the environment shared by every process of this function."""
        env = base_environment()
        env.update(self.env_vars)
        env["fprocess"] = self.command
        return env


def base_environment() -> dict[str, str]:
    """Return the few provider variables that a function process inherits."""
    env = {name: os.environ[name] for name in BASE_ENV_NAMES if name in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return env


def resolve_namespace(namespace: str) -> str:
    """Return the namespace to use for `namespace`, or raise InvalidRequest."""
    if namespace in ("", NAMESPACE):
        return NAMESPACE
    raise InvalidRequest(
        f"Namespace {namespace!r} is not available: the local provider has only "
        f"the namespace {NAMESPACE!r}. Leave the namespace empty or use {NAMESPACE!r}."
    )


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

    Raise InvalidRequest, or faashub.errors.InvalidFunctionName for a service
    that is not a DNS-1123 label. An invalid `exec_timeout` is not an error:
    it is logged once here and the default is used.
    """
    name = names.validate_label(deployment.service)
    namespace = resolve_namespace(deployment.namespace)
    argv = _split_command(name, deployment.env_process)
    _reject_secrets(name, deployment.secrets)
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


def _reject_secrets(name: str, secrets: list[str]) -> None:
    missing = [secret for secret in secrets if secret]
    if missing:
        listed = ", ".join(repr(secret) for secret in missing)
        raise InvalidRequest(
            f"Secret {listed} of function {name!r} not found: the local provider "
            "has no secret store yet. Remove the secrets from the function, or "
            "pass the values in envVars."
        )


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
