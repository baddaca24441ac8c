"""Read OpenFaaS stack files (`stack.yml`) into function deployments.

The format is faas-cli's: a `functions:` mapping from name to a definition
with `image`, `fprocess`, `environment`, `environment_file`, `labels`,
`annotations`, `secrets`, `limits`, `requests`, `constraints`, `namespace`
and `readonly_root_filesystem`. `${VAR}` and `${VAR:-default}` are replaced
from the environment before parsing, as faas-cli does. Build-only keys
(`lang`, `handler`, `build_args`, ...) are accepted and ignored, because
faashub deploys what is already built.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faashub import errors

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class StackFileError(errors.FaashubError, ValueError):
    """A stack file that cannot be read or has an invalid definition."""


@dataclass(frozen=True)
class Stack:
    """The functions of a stack file, and the gateway it names if any."""

    gateway: str | None
    deployments: dict[str, dict[str, Any]]
    """Function name to the `FunctionDeployment` JSON body for the provider."""
    problems: dict[str, str] = field(default_factory=dict)
    """Function name to why its definition is invalid. It has no deployment."""


def expand_variables(text: str, environment: Mapping[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}` with values from `environment`."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = environment.get(name, "")
        if value == "" and default is not None:
            return default
        return value

    return _VARIABLE.sub(replace, text)


def load_stack(path: Path, environment: Mapping[str, str] | None = None) -> Stack:
    """Parse a stack file and build one deployment per function.

    Raise StackFileError when the file as a whole is unusable. An invalid
    function definition goes to `Stack.problems`, so that a caller can name
    every invalid function at once.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StackFileError(f"Cannot read stack file {path}: {exc.strerror}.") from exc
    expanded = expand_variables(
        text, os.environ if environment is None else environment
    )
    try:
        document = yaml.safe_load(expanded)
    except yaml.YAMLError as exc:
        raise StackFileError(f"Stack file {path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(
        document.get("functions"), dict
    ):
        raise StackFileError(
            f"Stack file {path} has no 'functions:' mapping; see "
            "https://docs.openfaas.com/reference/yaml/ for the format."
        )
    provider = document.get("provider") or {}
    gateway = provider.get("gateway") if isinstance(provider, dict) else None
    deployments: dict[str, dict[str, Any]] = {}
    problems: dict[str, str] = {}
    for name, definition in document["functions"].items():
        try:
            deployments[str(name)] = _deployment(
                name, definition or {}, base_dir=path.parent, stack_path=path
            )
        except StackFileError as exc:
            problems[str(name)] = str(exc)
    return Stack(gateway=gateway or None, deployments=deployments, problems=problems)


def _deployment(
    name: str, definition: Any, *, base_dir: Path, stack_path: Path
) -> dict[str, Any]:
    if not isinstance(definition, dict):
        raise StackFileError(
            f"Function {name!r} in {stack_path} must be a mapping of settings."
        )
    environment: dict[str, str] = {}
    for env_file in _string_list(definition, "environment_file", name, stack_path):
        environment.update(_read_environment_file(base_dir / env_file, name))
    environment.update(_string_map(definition, "environment", name, stack_path))
    deployment: dict[str, Any] = {
        "service": str(name),
        "image": str(definition.get("image") or ""),
        "envProcess": str(definition.get("fprocess") or ""),
        "envVars": environment,
        "labels": _string_map(definition, "labels", name, stack_path),
        "annotations": _string_map(definition, "annotations", name, stack_path),
        "secrets": _string_list(definition, "secrets", name, stack_path),
        "constraints": _string_list(definition, "constraints", name, stack_path),
        "readOnlyRootFilesystem": bool(
            definition.get("readonly_root_filesystem", False)
        ),
    }
    if definition.get("namespace"):
        deployment["namespace"] = str(definition["namespace"])
    for key in ("limits", "requests"):
        resources = _string_map(definition, key, name, stack_path)
        if resources:
            deployment[key] = resources
    return deployment


def _string_map(
    definition: dict[str, Any], key: str, name: str, stack_path: Path
) -> dict[str, str]:
    value = definition.get(key) or {}
    if not isinstance(value, dict):
        raise StackFileError(
            f"'{key}' of function {name!r} in {stack_path} must be a mapping, "
            f"not {type(value).__name__}."
        )
    return {str(item_key): _scalar_text(item) for item_key, item in value.items()}


def _string_list(
    definition: dict[str, Any], key: str, name: str, stack_path: Path
) -> list[str]:
    value = definition.get(key) or []
    if not isinstance(value, list):
        raise StackFileError(
            f"'{key}' of function {name!r} in {stack_path} must be a list, "
            f"not {type(value).__name__}."
        )
    return [str(item) for item in value]


def _scalar_text(value: Any) -> str:
    # YAML reads `true` and `10` as bool and int; the provider wants text.
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _read_environment_file(path: Path, name: str) -> dict[str, str]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise StackFileError(
            f"Cannot read environment_file {path} of function {name!r}: {exc.strerror}."
        ) from exc
    except yaml.YAMLError as exc:
        raise StackFileError(
            f"environment_file {path} is not valid YAML: {exc}"
        ) from exc
    environment = document.get("environment") if isinstance(document, dict) else None
    if not isinstance(environment, dict):
        raise StackFileError(
            f"environment_file {path} of function {name!r} must hold an "
            "'environment:' mapping."
        )
    return {str(key): _scalar_text(value) for key, value in environment.items()}
