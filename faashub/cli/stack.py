"""Read OpenFaaS stack files (`stack.yml`) into function deployments.

The format is faas-cli's: a `functions:` mapping from name to a definition
with `image`, `fprocess`, `environment`, `environment_file`, `labels`,
`annotations`, `secrets`, `limits`, `requests`, `constraints`, `namespace`
and `readonly_root_filesystem`. `${VAR}` and `${VAR:-default}` are replaced
from the environment before parsing, as faas-cli does. Build-only keys
(`lang`, `handler`, `build_args`, ...) are accepted and ignored, because
faashub deploys what is already built.

Values are read as faas-cli reads them: its fields are strings, and a
scalar keeps the text it was written with (`yes`, `0755`, `1.10` and `12:30`
stay as written, where YAML 1.1 would turn them into true, 493, 1.1 and
750). A list or mapping where text belongs is an error, and so is a key
given twice in one mapping. An `environment_file` overrides the inline
`environment`, as in faas-cli.
"""

import io
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


# YAML 1.1 spellings of a boolean, which faas-cli's decoder takes for its
# boolean field `readonly_root_filesystem`.
_TRUE = frozenset({"true", "yes", "on", "y"})
_FALSE = frozenset({"false", "no", "off", "n", ""})


class _TextLoader(yaml.BaseLoader):  # type: ignore[misc]
    """Reads every scalar as its text, and rejects a key given twice in a mapping."""

    def construct_mapping(
        self, node: yaml.MappingNode, deep: bool = False
    ) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                first = seen[key].start_mark.line + 1
                again = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice in one mapping (lines {first} and "
                    f"{again}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _parse_yaml(text: str, path: Path) -> Any:
    """Parse `text` with `_TextLoader`; errors name `path` and the line."""
    stream = io.StringIO(text)
    # PyYAML names the stream in its messages by this attribute.
    stream.name = str(path)
    return yaml.load(stream, Loader=_TextLoader)  # noqa: S506 (a safe loader)


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
        document = _parse_yaml(expanded, path)
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
    # The files override the inline values, as faas-cli merges them.
    environment = _string_map(definition, "environment", name, stack_path)
    for env_file in _string_list(definition, "environment_file", name, stack_path):
        environment.update(_read_environment_file(base_dir / env_file, name))
    deployment: dict[str, Any] = {
        "service": str(name),
        "image": _text(definition, "image", name, stack_path),
        "envProcess": _text(definition, "fprocess", name, stack_path),
        "envVars": environment,
        "labels": _string_map(definition, "labels", name, stack_path),
        "annotations": _string_map(definition, "annotations", name, stack_path),
        "secrets": _string_list(definition, "secrets", name, stack_path),
        "constraints": _string_list(definition, "constraints", name, stack_path),
        "readOnlyRootFilesystem": _flag(
            definition, "readonly_root_filesystem", name, stack_path
        ),
    }
    namespace = _text(definition, "namespace", name, stack_path)
    if namespace:
        deployment["namespace"] = namespace
    for key in ("limits", "requests"):
        resources = _string_map(definition, key, name, stack_path)
        if resources:
            deployment[key] = resources
    return deployment


def _kind(value: Any) -> str:
    return "a list" if isinstance(value, list) else "a mapping"


def _text(definition: dict[str, Any], key: str, name: str, stack_path: Path) -> str:
    value = definition.get(key) or ""
    if not isinstance(value, str):
        raise StackFileError(
            f"'{key}' of function {name!r} in {stack_path} must be text, not "
            f"{_kind(value)}."
        )
    return value


def _flag(definition: dict[str, Any], key: str, name: str, stack_path: Path) -> bool:
    value = _text(definition, key, name, stack_path).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise StackFileError(
        f"'{key}' of function {name!r} in {stack_path} must be true or false, "
        f"not {value!r}."
    )


def _string_map(
    definition: dict[str, Any], key: str, name: str, stack_path: Path
) -> dict[str, str]:
    value = definition.get(key) or {}
    if not isinstance(value, dict):
        raise StackFileError(
            f"'{key}' of function {name!r} in {stack_path} must be a mapping, "
            f"not {'text' if isinstance(value, str) else _kind(value)}."
        )
    for item_key, item in value.items():
        if not isinstance(item, str):
            raise StackFileError(
                f"'{key}' value {item_key!r} of function {name!r} in {stack_path} "
                f"must be text, not {_kind(item)}; quote it to pass it as text."
            )
    return dict(value)


def _string_list(
    definition: dict[str, Any], key: str, name: str, stack_path: Path
) -> list[str]:
    value = definition.get(key) or []
    if not isinstance(value, list):
        raise StackFileError(
            f"'{key}' of function {name!r} in {stack_path} must be a list, "
            f"not {'text' if isinstance(value, str) else _kind(value)}."
        )
    for item in value:
        if not isinstance(item, str):
            raise StackFileError(
                f"'{key}' of function {name!r} in {stack_path} must list text "
                f"items, not {_kind(item)}."
            )
    return list(value)


def _read_environment_file(path: Path, name: str) -> dict[str, str]:
    try:
        document = _parse_yaml(path.read_text(encoding="utf-8"), path) or {}
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
    for key, value in environment.items():
        if not isinstance(value, str):
            raise StackFileError(
                f"environment_file {path} of function {name!r}: the value of "
                f"{key!r} must be text, not {_kind(value)}."
            )
    return dict(environment)
