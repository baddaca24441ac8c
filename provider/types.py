"""Pydantic models of the faas-provider JSON shapes.

These are the bodies that `faas-cli` and the gateway send to and read from a
provider: `FunctionDeployment` (POST and PUT `/system/functions`),
`FunctionStatus` (GET `/system/functions` and `/system/function/{name}`),
`DeleteFunctionRequest` (DELETE `/system/functions`), `Secret` (`/system/secrets`),
`ScaleServiceRequest` (POST `/system/scale-function/{name}`), `LogRequest` (the
query of GET `/system/logs`) and `ProviderInfo` (GET `/system/info`). Python
attributes are snake_case and the JSON keys keep the camelCase spelling of the
Go types, through aliases.

Go clients send `null` for an empty map, list or string, so every optional
field of a request accepts `null` and reads it as its empty default. Keys that
OpenFaaS no longer uses (`registryAuth`, `network`) and unknown top-level keys
are ignored. Like the Go types, `FunctionStatus` omits zero values from its
JSON, except `name` and `image`, which are always present.

A `FunctionDeployment` is checked where faas-netes rejects it with a 400: a
`readOnlyRootFilesystem` that is not a JSON boolean (Go's decoder rejects it)
and a memory or CPU quantity that Kubernetes cannot parse. It also rejects
two mistakes that faas-netes lets through: an unknown key in `limits` or
`requests`, which Go's decoder drops, and a secret listed twice. Validation
with `STORED_CONTEXT` skips these checks, so a function file written before
them still loads. `FunctionStatus` has none of them.
"""

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

# The validation context for definitions that were accepted and stored
# earlier, which skips the checks added since: `model_validate(data,
# context=STORED_CONTEXT)`.
STORED_CONTEXT: Final = {"stored": True}

# A Kubernetes resource quantity (k8s.io/apimachinery resource.ParseQuantity):
# a decimal number and an optional suffix, binary (Ki to Ei), decimal (m, k,
# M to E) or an exponent (e3, E-2). A sign is part of the grammar, but a
# negative quantity is rejected separately, as Kubernetes rejects it for a
# container's resources.
_QUANTITY = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:Ki|Mi|Gi|Ti|Pi|Ei|[mkMGTPE]|[eE][+-]?[0-9]+)?"
)


def validation_problems(exc: ValidationError, *, limit: int) -> list[str]:
    """Return the first `limit` faults of `exc`, each as `field.path: message`."""
    problems = []
    for error in exc.errors()[:limit]:
        location = ".".join(str(part) for part in error["loc"])
        problems.append(f"{location}: {error['msg']}" if location else error["msg"])
    return problems


def _is_stored(info: ValidationInfo) -> bool:
    """Return whether the data is a stored definition, which skips the new checks."""
    return isinstance(info.context, dict) and bool(info.context.get("stored"))


# Keys that a Go `omitempty` tag keeps even when they are empty.
_ALWAYS_PRESENT_KEYS = frozenset({"name", "image"})


def _is_zero(value: Any) -> bool:
    """Return whether Go's `omitempty` would drop `value` from the JSON."""
    if value is None or value is False:
        return True
    if isinstance(value, int | float | str | list | dict):
        return not value
    return False


def _omit_zero_values(data: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in data.items()
        if key in _ALWAYS_PRESENT_KEYS or not _is_zero(value)
    }


class _WireModel(BaseModel):
    """Base of the request models: camelCase keys, `null` read as empty."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _null_as_default(cls, value: Any, info: ValidationInfo) -> Any:
        """Read a JSON `null` as the field's default when the field has one."""
        if value is not None or info.field_name is None:
            return value
        field = cls.model_fields[info.field_name]
        if field.is_required():
            return value
        return field.get_default(call_default_factory=True)


class FunctionResources(_WireModel):
    """Memory, CPU and accelerator quantities, in Kubernetes notation."""

    memory: str = ""
    cpu: str = ""
    nvidia_gpu: str = Field("", alias="nvidia.com/gpu")
    amd_gpu: str = Field("", alias="amd.com/gpu")
    intel_gpu: str = Field("", alias="intel.com/gpu")

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value}


class CheckedFunctionResources(FunctionResources):
    """FunctionResources of a deploy request, checked before they are stored."""

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any, info: ValidationInfo) -> Any:
        """Reject a key that is not a resource, so that a misspelled one is seen."""
        if not isinstance(data, dict) or _is_stored(info):
            return data
        known = [field.alias or name for name, field in cls.model_fields.items()]
        for key in data:
            if key not in known and key not in cls.model_fields:
                raise PydanticCustomError(
                    "unknown_resource",
                    "unknown resource {key}: use one of {known}, or remove it",
                    {"key": repr(key), "known": ", ".join(known)},
                )
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _check_quantity(cls, value: str, info: ValidationInfo) -> str:
        """Reject a value that Kubernetes cannot parse as a quantity."""
        if not value or _is_stored(info):
            return value
        if not _QUANTITY.fullmatch(value):
            raise PydanticCustomError(
                "invalid_quantity",
                "{value} is not a Kubernetes quantity: use a number with an "
                "optional suffix, such as 128Mi, 1Gi, 0.5 or 500m",
                {"value": repr(value)},
            )
        if value.startswith("-"):
            raise PydanticCustomError(
                "negative_quantity",
                "{value} is negative: use zero or more, such as 128Mi or 500m",
                {"value": repr(value)},
            )
        return value


class FunctionDeployment(_WireModel):
    """The definition of a function, as `faas-cli deploy` sends it."""

    service: str
    image: str = ""
    namespace: str = ""
    env_process: str = ""
    env_vars: dict[str, str] = Field(default_factory=dict)
    constraints: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    limits: CheckedFunctionResources | None = None
    requests: CheckedFunctionResources | None = None
    read_only_root_filesystem: bool = False

    @field_validator("read_only_root_filesystem", mode="before")
    @classmethod
    def _require_json_boolean(cls, value: Any, info: ValidationInfo) -> Any:
        """Reject a string or number, which pydantic would read as a boolean."""
        if value is None or isinstance(value, bool) or _is_stored(info):
            return value
        raise PydanticCustomError(
            "invalid_boolean",
            "{value} is not a JSON boolean: send true or false",
            {"value": repr(value)},
        )

    @field_validator("secrets", mode="after")
    @classmethod
    def _reject_repeated_secrets(cls, value: list[str], info: ValidationInfo) -> Any:
        """Reject a secret named twice, which would be stored and reported twice."""
        if _is_stored(info):
            return value
        seen: set[str] = set()
        for secret in value:
            if secret in seen:
                raise PydanticCustomError(
                    "repeated_secret",
                    "secret {secret} is listed more than once: list each secret once",
                    {"secret": repr(secret)},
                )
            seen.add(secret)
        return value


class FunctionUsage(_WireModel):
    """Resource use of a function's replicas, when the provider measures it."""

    cpu: float = 0.0
    total_memory_bytes: float = 0.0


class FunctionStatus(_WireModel):
    """A deployed function and its state, as `faas-cli list` and `describe` read it.

    `replicas` is the desired count and `available_replicas` the count that
    can serve now. `created_at` is when the function was first deployed.
    """

    name: str
    image: str = ""
    namespace: str = ""
    env_process: str = ""
    env_vars: dict[str, str] = Field(default_factory=dict)
    constraints: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    limits: FunctionResources | None = None
    requests: FunctionResources | None = None
    read_only_root_filesystem: bool = False
    invocation_count: int = 0
    replicas: int = 0
    available_replicas: int = 0
    created_at: datetime | None = None
    usage: FunctionUsage | None = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_zero_values(handler(self))


class DeleteFunctionRequest(_WireModel):
    """The body of DELETE `/system/functions`."""

    function_name: str
    namespace: str = ""


class Secret(_WireModel):
    """A secret as `faas-cli secret` sends it: `value` text or base64 `rawValue`.

    A request that creates or updates a secret carries exactly one of the
    two, and the provider never returns either.
    """

    name: str
    namespace: str = ""
    value: str = ""
    raw_value: str = ""


class ScaleServiceRequest(_WireModel):
    """The body of POST `/system/scale-function/{name}`.

    `replicas` has no default: a body without it is rejected rather than read
    as a scale to zero, which is what Go's zero value would mean. It must be a
    JSON integer, as Go's `uint` requires, so `true` or `2.0` is rejected.
    """

    service_name: str = ""
    namespace: str = ""
    replicas: int = Field(strict=True)


@dataclass(frozen=True, slots=True)
class LogRequest:
    """The query of GET `/system/logs`, as faas-provider's `logs.Request` defines it.

    `tail` of zero or less means every stored line. `since` keeps only lines
    stamped at or after that time. `follow` keeps the stream open for new lines.
    """

    name: str
    namespace: str = ""
    instance: str = ""
    since: datetime | None = None
    tail: int = 0
    follow: bool = False


class VersionInfo(BaseModel):
    """The release of the provider, with Go's snake_case keys."""

    release: str
    sha: str = ""
    commit_message: str = ""


class ProviderInfo(BaseModel):
    """The body of GET `/system/info`: the provider, its orchestration and release."""

    provider: str
    orchestration: str
    version: VersionInfo
