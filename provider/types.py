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
OpenFaaS no longer uses (`registryAuth`, `network`) and unknown keys are
ignored. Like the Go types, `FunctionStatus` omits zero values from its JSON,
except `name` and `image`, which are always present.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic.alias_generators import to_camel

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
    limits: FunctionResources | None = None
    requests: FunctionResources | None = None
    read_only_root_filesystem: bool = False


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
