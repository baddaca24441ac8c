"""The seam between the provider API and the code that runs functions.

`api` serves HTTP over any object that implements `ProviderBackend`. The local
backend (`provider.local`) runs functions as processes, and the Kubernetes
backend (`provider.kubernetes`) as Deployments and Services. A backend
reports failures by raising the errors below, and the API turns each into a
status code::

    ProviderError (faashub.errors.FaashubError)
    ├── InvalidRequest       400: a request the backend cannot carry out as sent
    ├── NamespaceNotFound    404: a namespace the backend does not have
    ├── FunctionNotFound     404: no function of that name in that namespace
    │   └── InstanceNotFound     404: no pod of the function has the log
    │                            request's `instance` (Kubernetes backend)
    ├── SecretNotFound       404: no secret of that name in that namespace
    ├── FunctionExists       409: create of a function that is already deployed
    ├── SecretExists         409: create of a secret that already exists
    ├── SecretInUse          409: delete of a secret that functions still use
    ├── Conflict             409: the orchestrator saw a conflicting change
    ├── Forbidden            403: the orchestrator denied the provider an action
    ├── InvalidObject        422: the orchestrator rejected an object as invalid
    ├── StorageError         500: the backend could not persist its state
    ├── ApiServerUnavailable 503: the Kubernetes API server sent no response
    │                        (Kubernetes backend; also a ConnectionError)
    ├── ProviderStartError   the backend could not start (the process exits)
    └── InvocationFailed     an invocation that produced no function response
        ├── FunctionFailed       500: the provider could not run or reach the function
        ├── FunctionUnavailable  503: the function is not responding
        └── FunctionTimeout      504: the function ran past its exec timeout

The API sends 503 with Retry-After for any ProviderError that is also a
ConnectionError, whatever its other base classes, because the request may
succeed once the orchestrator responds. `faashub.errors.InvalidFunctionName`,
which is not a ProviderError, gets 400 like InvalidRequest.

The API marks responses built from an `InvocationFailed` with the
`X-OpenFaaS-Internal` header, so a caller can tell a platform failure from
an error status that the function itself returned. Its value is `proxy`
for every backend: the value that the proxy package of openfaas/faas-provider
sets on the errors it makes itself, and faas-netes and faasd both serve
invocations through that package. A backend therefore returns a function's
own failure, such as a classic process's non-zero exit, as an
InvocationResponse and does not raise.
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from faashub import constants, errors
from faashub.names import FunctionRef
from provider.types import (
    FunctionDeployment,
    FunctionStatus,
    LogRequest,
    ProviderInfo,
    Secret,
)


class ProviderError(errors.FaashubError):
    """Base class of the errors a provider backend raises on purpose."""


class InvalidRequest(ProviderError, ValueError):
    """A request that the backend rejects: bad shape, namespace or secret."""


class FunctionNotFound(ProviderError, LookupError):
    """No function of that name is deployed in that namespace."""


class NamespaceNotFound(ProviderError, LookupError):
    """A namespace that the backend does not have."""


class SecretNotFound(ProviderError, LookupError):
    """No secret of that name exists in that namespace."""


class FunctionExists(ProviderError):
    """A create request for a function that is already deployed."""


class SecretExists(ProviderError):
    """A create request for a secret that already exists."""


class SecretInUse(ProviderError):
    """A delete request for a secret that deployed functions still use."""


def secret_in_use_message(secret: str, functions: Sequence[str]) -> str:
    """Return the SecretInUse message for `secret`, naming the `functions`."""
    listed = ", ".join(repr(function) for function in functions)
    if len(functions) == 1:
        users = f"function {listed}"
        fix = "that function and deploy it again, or delete it"
    else:
        users = f"functions {listed}"
        fix = "those functions and deploy them again, or delete them"
    return (
        f"Secret {secret!r} is used by {users}. Remove it from the secrets of "
        f"{fix}, before you delete the secret."
    )


class Conflict(ProviderError):
    """The orchestrator rejected a change that conflicts with another one."""


class Forbidden(ProviderError, PermissionError):
    """The orchestrator denied the provider an action, such as an RBAC refusal."""


class InvalidObject(ProviderError, ValueError):
    """The orchestrator rejected an object that the request produced as invalid."""


class StorageError(ProviderError, OSError):
    """The backend could not read or write its persisted state.

    The message names the files and the OS error, for the provider's log.
    `summary` states what failed without them, because they are details of
    the provider's machine. The API sends only `summary` to the caller.
    """

    def __init__(self, message: str, *, summary: str) -> None:
        super().__init__(message)
        self.summary = summary


class ProviderStartError(ProviderError, RuntimeError):
    """The backend or its listener could not start."""


class InvocationFailed(ProviderError):
    """An invocation that failed before the function produced a response."""

    status_code = 500


class FunctionFailed(InvocationFailed):
    """The provider could not start, reach or keep running the function's process."""

    status_code = 500


class FunctionUnavailable(InvocationFailed):
    """The function's process is not responding, so nothing could serve the call.

    `retry_after_s` is set when the backend can tell when the function starts
    again, such as the restart delay of a process that exited. The API sends
    it to the caller as a `Retry-After` header.
    """

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class FunctionTimeout(InvocationFailed):
    """The function did not respond within its exec timeout."""

    status_code = 504


class ClientDisconnected(Exception):
    """The caller closed its connection before it sent the whole request body.

    Reading `Invocation.body_stream` raises it. A backend lets it propagate,
    and the API then sends no response, because no one would read it.
    """


class LogStream(Protocol):
    """Chunks of ndjson log lines. `aclose` ends the stream early."""

    def __aiter__(self) -> "LogStream": ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Invocation:
    """One HTTP request to a function, as the API received it.

    `path` is the decoded path after the function name, always starting with
    "/" (the path the watchdog would see). `raw_path` is the same path still
    percent-encoded, which a proxy forwards unchanged. `query` is the raw
    query string without the "?". Header names are lowercase, in the order
    received, with repeats kept.

    The request body is `body` when it arrived whole before the call started.
    Otherwise `body` is empty and `body_stream` yields the body's chunks as
    the caller sends them, so that a backend forwards a large upload without
    holding it. The stream can be read once. It raises ClientDisconnected
    when the caller goes away before the end of the body.
    """

    function: FunctionRef
    method: str
    path: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    client_host: str = ""
    body_stream: AsyncIterator[bytes] | None = None

    @property
    def call_id(self) -> str:
        """The caller's X-Call-Id, or "" when the request has none."""
        for name, value in self.headers:
            if name == "x-call-id":
                return value
        return ""


@dataclass(slots=True)
class InvocationResponse:
    """A function's response: a complete `body`, or a `stream` of chunks.

    When `stream` is set, the API sends its chunks as they arrive and ignores
    `body`.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None


@dataclass(frozen=True, slots=True)
class FunctionEndpoints:
    """The base URLs at which a function's replicas take HTTP requests now.

    `urls` are absolute base URLs without a trailing slash, such as
    `http://10.1.2.3:8080`. A caller appends the invocation's raw path and
    query, and sends the caller's headers plus X-Call-Id, X-Start-Time and
    X-Forwarded-Host/-For, as the provider's own `/function/` route would.
    An empty tuple means "send the call to the provider's `/function/`":
    the function has zero replicas (so a scale from zero is needed), none
    responds yet, or the backend cannot reach its replicas from outside.
    `ttl_s` is how long a caller may reuse the list. A caller that reuses it
    must fall back to `/function/` when a URL refuses the connection.
    `exec_timeout_s` is how long one call may take, which the caller must
    enforce because the provider does not see the call (None: no limit).

    On the wire (`GET /system/function-endpoints/NAME?namespace=NS`) it is
    `{"name": ..., "namespace": ..., "urls": [...], "ttl_s": ...,
    "exec_timeout_s": ...}`, with the name and namespace as requested (the
    namespace may be "") and null for no exec timeout.
    """

    urls: tuple[str, ...] = ()
    ttl_s: float = 2.0
    exec_timeout_s: float | None = None


NO_ENDPOINTS = FunctionEndpoints()


async def function_endpoints(
    backend: "ProviderBackend", name: str, namespace: str
) -> FunctionEndpoints:
    """Return a backend's replica URLs, or NO_ENDPOINTS if it does not report any.

    `function_endpoints(name, namespace)` is an optional method of a backend,
    so a backend without it keeps every call on the provider's `/function/`.
    It raises FunctionNotFound or NamespaceNotFound like `get_function`.
    """
    report = getattr(backend, "function_endpoints", None)
    if report is None:
        # Still check the function exists, so that both paths return 404 alike.
        await backend.get_function(name, namespace)
        return NO_ENDPOINTS
    endpoints: FunctionEndpoints = await report(name, namespace)
    return endpoints


# The X-OpenFaaS-Internal value of the invocation failures a provider makes.
PROXY_ERROR_MARKER = "proxy"


def default_namespace(backend: "ProviderBackend") -> str:
    """Return the namespace of an invocation whose path names none.

    `default_namespace` is an optional string attribute of a backend. A
    backend without it serves the OpenFaaS default namespace, openfaas-fn.
    """
    namespace = getattr(backend, "default_namespace", None)
    if isinstance(namespace, str) and namespace:
        return namespace
    return constants.DEFAULT_NAMESPACE


def degraded_reason(backend: "ProviderBackend") -> str:
    """Return why a ready backend works only in part, or "" when it works fully.

    `degraded_reason()` is an optional method of a backend. The Kubernetes
    backend returns a reason while its API server does not respond.
    """
    report = getattr(backend, "degraded_reason", None)
    if report is None:
        return ""
    reason: str = report()
    return reason


class ProviderBackend(Protocol):
    """Interface between the provider API and the code that runs functions.

    The API calls `start` once before it serves requests and `stop` once when
    it shuts down. Namespace arguments may be "", which means the backend's
    default namespace.
    """

    async def start(self) -> None:
        """Load the backend's state and start what it runs; raise ProviderStartError."""
        ...

    async def stop(self) -> None:
        """Stop every function process the backend started and release resources."""
        ...

    def is_ready(self) -> bool:
        """Return whether `start` has finished and `stop` has not begun."""
        ...

    async def list_functions(self, namespace: str) -> list[FunctionStatus]:
        """Return the status of every function in the namespace."""
        ...

    async def get_function(self, name: str, namespace: str) -> FunctionStatus:
        """Return one function's status, or raise FunctionNotFound."""
        ...

    async def create_function(self, deployment: FunctionDeployment) -> None:
        """Deploy a new function, or raise FunctionExists or InvalidRequest."""
        ...

    async def update_function(self, deployment: FunctionDeployment) -> None:
        """Replace a function's definition, or raise FunctionNotFound."""
        ...

    async def delete_function(self, name: str, namespace: str) -> None:
        """Remove a function and stop its processes, or raise FunctionNotFound."""
        ...

    async def scale_function(self, name: str, namespace: str, *, replicas: int) -> None:
        """Set how many replicas the function runs, or raise FunctionNotFound.

        Raise InvalidRequest for a count the backend cannot run.
        """
        ...

    async def list_namespaces(self) -> list[str]:
        """Return the namespaces that functions can be deployed to."""
        ...

    async def list_secrets(self, namespace: str) -> list[Secret]:
        """Return the secrets of the namespace, with names only and no values."""
        ...

    async def create_secret(self, name: str, namespace: str, *, value: bytes) -> None:
        """Store a new secret, or raise SecretExists."""
        ...

    async def update_secret(self, name: str, namespace: str, *, value: bytes) -> None:
        """Replace a secret's value where it is stored and where functions read it.

        Raise SecretNotFound for an unknown secret.
        """
        ...

    async def delete_secret(self, name: str, namespace: str) -> None:
        """Remove a secret, or raise SecretNotFound or SecretInUse."""
        ...

    async def read_logs(self, request: LogRequest) -> LogStream:
        """Return the function's log as chunks of ndjson `logs.Message` lines.

        Raise FunctionNotFound or NamespaceNotFound before the first chunk.
        With `request.follow` the iterator waits for new lines until the
        function is removed or the backend stops, and `aclose` ends the wait.
        """
        ...

    def info(self) -> ProviderInfo:
        """Return the provider's name, orchestration and version."""
        ...

    def invoke(
        self, invocation: Invocation
    ) -> AbstractAsyncContextManager[InvocationResponse]:
        """Run one invocation; the response stays valid inside the context.

        Entering the context raises FunctionNotFound for an unknown function
        and an InvocationFailed subclass when no function response exists.
        """
        ...
