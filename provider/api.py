"""The faas-provider HTTP API, served over any `ProviderBackend`.

Four parts share one ASGI application:

- `/system/*`: the management API (functions CRUD, status, scaling, secrets,
  namespaces, info), a FastAPI app whose lifespan starts and stops the
  backend;
- `/system/logs`: a raw-ASGI handler (`logs_api`), because a followed log
  stream must notice a client that disconnects while no line arrives;
- `/function/NAME[.NAMESPACE][/PATH]`: invocation, a lean raw-ASGI handler,
  because FastAPI's routing would cost several times more per call on the
  hot path. A body that arrives in one ASGI message goes to the backend
  whole. A longer one goes as a stream that reads from the caller only as
  fast as the backend forwards it, so an upload of any size costs the
  provider a few chunks of memory;
- `/healthz`: 200 `OK` once the backend is ready, 503 before that and while
  it stops. A ready backend that works only in part, such as the Kubernetes
  backend while its API server does not respond, gets 200 with a body that
  starts with `Degraded:` and gives the reason;
- `/metrics`: Prometheus metrics (`provider.metrics`), open like `/healthz`.

With an auth token configured, every request but `/healthz`, `/metrics` and
`/function/...` must carry `Authorization: Bearer TOKEN`, or gets 401. The
token is compared in constant time. Invocations stay open because the
gateway passes the caller's own Authorization header through to the
function, and the gateway's invocation routes are open by default anyway.
With no token the provider is open, as a faas-provider with basic auth off.

Error bodies are plain-text sentences that name the offending value and the
fix. The backend reports failures with the exceptions of `provider.backend`,
and this module maps them to status codes. A StorageError names files of the
provider's machine, so its caller gets only its summary and the provider's
log gets the details. A ProviderError that is also a ConnectionError means
that the orchestrator the backend runs functions on sent no response, so it
gets 503 with a Retry-After header, on every route. A 405 lists, in its
`Allow` header and its body, every method that the path supports. It does
not know how functions run.
"""

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Final, TypeVar
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, Request, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from faashub import async_annotations, constants, errors, names
from faashub.incomplete_response import install_log_filter, mark_broken_off
from faashub.logs import LimitedLines
from provider import logs_api
from provider.backend import (
    PROXY_ERROR_MARKER,
    ClientDisconnected,
    Conflict,
    Forbidden,
    FunctionExists,
    FunctionNotFound,
    FunctionUnavailable,
    InvalidObject,
    InvalidRequest,
    Invocation,
    InvocationFailed,
    InvocationResponse,
    NamespaceNotFound,
    ProviderBackend,
    ProviderError,
    SecretExists,
    SecretInUse,
    SecretNotFound,
    StorageError,
    default_namespace,
    degraded_reason,
    function_endpoints,
)
from provider.metrics import METRICS_PATH, ProviderMetrics
from provider.types import (
    DeleteFunctionRequest,
    FunctionDeployment,
    FunctionStatus,
    ScaleServiceRequest,
    Secret,
    validation_problems,
)

logger = logging.getLogger(__name__)

FUNCTION_PREFIX: Final = "/function/"
HEALTH_PATH: Final = "/healthz"
LOGS_PATH: Final = "/system/logs"
TEXT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE: Final = "application/json"
MAX_REPORTED_VALIDATION_ERRORS: Final = 5
# The order in which a 405 lists the allowed methods.
METHOD_ORDER: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# The largest /system/* request body when the settings give none. The largest
# valid one is a secret of max_secret_bytes, base64-encoded in JSON.
DEFAULT_MAX_SYSTEM_BODY_BYTES: Final = 16 * 1024 * 1024


# Retry-After, in seconds, of the 503 sent when the orchestrator sent no
# response. NOTE: an estimate, because the provider cannot tell when the
# orchestrator responds again.
UNAVAILABLE_RETRY_AFTER_S: Final = 5


class _BodyTooLarge(Exception):
    """A /system/* request body longer than max_system_body_bytes."""


_STATUS_BY_ERROR: Final[tuple[tuple[type[Exception], int], ...]] = (
    (_BodyTooLarge, 413),
    (InvalidRequest, 400),
    (errors.InvalidFunctionName, 400),
    (NamespaceNotFound, 404),
    (FunctionNotFound, 404),
    (SecretNotFound, 404),
    (FunctionExists, 409),
    (SecretExists, 409),
    (SecretInUse, 409),
    (Conflict, 409),
    (Forbidden, 403),
    (InvalidObject, 422),
    (StorageError, 500),
)

_Model = TypeVar("_Model", bound=BaseModel)

# The key in an invocation's context that marks a function that exists.
_REACHED_KEY: Final = "_reached"

# Most `function invoked` lines the provider writes in one second.
INVOCATION_LINES_PER_S: Final = 20


class ProviderApp:
    """The ASGI app: serves invocations and health, passes the rest to FastAPI."""

    def __init__(
        self,
        backend: ProviderBackend,
        *,
        auth_token: str | None = None,
        max_system_body_bytes: int = DEFAULT_MAX_SYSTEM_BODY_BYTES,
    ) -> None:
        self.backend = backend
        self._auth_token = auth_token.encode() if auth_token else None
        self.start_error: BaseException | None = None
        self._default_namespace = default_namespace(backend)
        # One `function invoked` line per call is what an operator reads at
        # low rates. At thousands of calls a second, the lines took about 9 %
        # of the provider's py-spy samples (2-core VM, sync-proxy benchmark),
        # so beyond INVOCATION_LINES_PER_S a second they are only counted.
        self._invocation_log = LimitedLines(
            logger,
            "function invoked",
            per_second=INVOCATION_LINES_PER_S,
            summary="function invocations not logged",
            count_field="invocations",
        )
        self._system = _build_system_app(
            backend,
            max_body_bytes=max_system_body_bytes,
            on_start_error=self._record_start_error,
            on_stop=self._invocation_log.flush,
        )
        self._closing = asyncio.Event()
        self.metrics = ProviderMetrics(backend)

    def _record_start_error(self, exc: BaseException) -> None:
        self.start_error = exc

    def end_log_streams(self) -> None:
        """End every log response that follows, as the server begins to stop."""
        self._closing.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            # NB: "/function" without the slash falls through to the system
            # app, whose 404 lists the routes.
            if path.startswith(FUNCTION_PREFIX):
                await self._serve_function(scope, receive, send)
                return
            if path == HEALTH_PATH:
                await self._serve_health(scope, send)
                return
            if path == METRICS_PATH:
                await self._serve_metrics(scope, send)
                return
            if self._auth_token is not None:
                presented = _presented_token(scope)
                if presented is None or not hmac.compare_digest(
                    presented, self._auth_token
                ):
                    await _send_unauthorized(send, token_sent=presented is not None)
                    return
            if path == LOGS_PATH:
                await self._serve_logs(scope, receive, send)
                return
        await self._system(scope, receive, send)

    async def _serve_logs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream a function's log lines, or send the error that prevents it."""
        if scope["method"] != "GET":
            await _send_method_not_allowed(send, scope, allowed=("GET",))
            return
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            request = logs_api.parse_log_request(query)
            check_namespace_query(request.namespace)
            stream = await self.backend.read_logs(request)
        except Exception as exc:
            status = _status_of(exc)
            if status is None:
                raise
            logger.info(
                "log request rejected: %s", exc, extra={"ctx": {"status": status}}
            )
            await _send_text(
                send,
                status,
                _error_text(exc),
                retry_after=_unavailable_retry_after(exc),
            )
            return
        started_at = time.perf_counter()
        sent_bytes = await logs_api.stream_logs(
            stream, receive, send, closing=self._closing
        )
        logger.info(
            "function logs sent",
            extra={
                "ctx": {
                    "function": request.name,
                    "follow": request.follow,
                    "bytes": sent_bytes,
                    "duration_s": round(time.perf_counter() - started_at, 3),
                }
            },
        )

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send_method_not_allowed(send, scope, allowed=("GET", "HEAD"))
            return
        body, content_type = await self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body,
            }
        )

    async def _serve_health(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send_method_not_allowed(send, scope, allowed=("GET", "HEAD"))
        elif self.backend.is_ready():
            # A degraded backend still serves invocations, and a 503 would take
            # the provider out of its Service and fail them too, so the reason
            # goes in the body of a 200.
            reason = degraded_reason(self.backend)
            await _send_text(send, 200, f"Degraded: {reason}" if reason else "OK")
        else:
            await _send_text(send, 503, "The provider is starting or stopping.")

    async def _serve_function(self, scope: Scope, receive: Receive, send: Send) -> None:
        started_at = time.perf_counter()
        context = {"function": "", "call_id": "", "method": scope["method"]}
        status = await self._route_invocation(scope, receive, send, context=context)
        if status:
            duration_s = time.perf_counter() - started_at
            # Only functions that exist get a series, so that requests for
            # made-up names cannot grow the metrics without bound.
            if context.pop(_REACHED_KEY, ""):
                self.metrics.invoked(
                    context["function"], status=status, duration_s=duration_s
                )
            self._invocation_log.write(
                lambda: {
                    **context,
                    "status": status,
                    "duration_s": round(duration_s, 6),
                }
            )

    async def _route_invocation(
        self, scope: Scope, receive: Receive, send: Send, *, context: dict[str, str]
    ) -> int:
        """Parse the invocation, run it and return the status sent (0 for none).

        `context` gets the function and call id as soon as they are known.
        """
        raw_name, raw_rest = _split_function_path(scope)
        context["function"] = unquote(raw_name)
        if not raw_name:
            message = (
                "The path names no function: call /function/NAME or "
                "/function/NAME.NAMESPACE."
            )
            await _send_text(send, 400, message)
            return 400
        try:
            ref = names.parse_function_ref(
                unquote(raw_name), default_namespace=self._default_namespace
            )
        except errors.InvalidFunctionName as exc:
            await _send_text(send, 400, str(exc))
            return 400
        body = await _start_body(receive)
        if body is None:
            return 0  # the client disconnected, so no response can be sent

        client = scope.get("client")
        invocation = Invocation(
            function=ref,
            method=scope["method"],
            path=unquote(raw_rest),
            raw_path=raw_rest,
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=[
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in scope["headers"]
            ],
            body=body if isinstance(body, bytes) else b"",
            client_host=client[0] if client else "",
            body_stream=None if isinstance(body, bytes) else body,
        )
        context["function"] = str(ref)
        context["call_id"] = invocation.call_id
        return await self._invoke(invocation, send, context=context)

    async def _invoke(
        self, invocation: Invocation, send: Send, *, context: dict[str, str]
    ) -> int:
        """Send the backend's response, or an error; return the status sent.

        Marks `context` when the function exists, whatever the outcome.
        Return 0 when the caller went away while it sent the body.
        """
        sending = _ResponseSender(send)
        try:
            async with self.backend.invoke(invocation) as response:
                context[_REACHED_KEY] = "1"
                await sending.send(response)
                return response.status
        except ClientDisconnected:
            _log_disconnect(invocation)
            return 0
        except (
            InvalidRequest,
            NamespaceNotFound,
            FunctionNotFound,
            Forbidden,
            InvalidObject,
            StorageError,
        ) as exc:
            # Raised on entry (lookup, or saving a scale from zero), so no
            # response has started.
            status = _status_of(exc) or 500
            await _send_text(send, status, _error_text(exc))
            return status
        except ConnectionError as exc:
            if sending.started or not _is_backend_unavailable(exc):
                raise
            # Raised on entry, such as when the backend could not scale the
            # function from zero, so the function did not run.
            await _send_text(
                send,
                503,
                _error_text(exc),
                internal=PROXY_ERROR_MARKER,
                retry_after=str(UNAVAILABLE_RETRY_AFTER_S),
            )
            return 503
        except InvocationFailed as exc:
            context[_REACHED_KEY] = "1"
            stream = invocation.body_stream
            if isinstance(stream, _RequestStream) and stream.disconnected:
                # An HTTP client library reports the caller's disconnect as
                # a failure of the upload to the function.
                _log_disconnect(invocation)
                return 0
            if not sending.started:
                await _send_text(
                    send,
                    exc.status_code,
                    str(exc),
                    internal=PROXY_ERROR_MARKER,
                    retry_after=_retry_after(exc),
                )
                return exc.status_code
            # The status line is already sent, so the only signal left is an
            # incomplete body: the server closes the connection.
            logger.warning(
                "function response broken off: %s",
                exc,
                extra={
                    "ctx": {
                        "function": str(invocation.function),
                        "call_id": invocation.call_id,
                    }
                },
            )
            # uvicorn's own line for this response would have no ids.
            mark_broken_off()
            return sending.status


class _ResponseSender:
    """Writes an InvocationResponse to ASGI and records whether it began."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.status = 0

    async def send(self, response: InvocationResponse) -> None:
        self.started = True
        self.status = response.status
        await self._send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.headers
                ],
            }
        )
        if response.stream is None:
            await self._send({"type": "http.response.body", "body": response.body})
            return
        async for chunk in response.stream:
            await self._send(
                {"type": "http.response.body", "body": chunk, "more_body": True}
            )
        await self._send({"type": "http.response.body", "body": b""})


def create_app(
    backend: ProviderBackend,
    *,
    auth_token: str | None = None,
    max_system_body_bytes: int = DEFAULT_MAX_SYSTEM_BODY_BYTES,
) -> ProviderApp:
    """Return the provider's ASGI application over `backend`.

    With `auth_token`, every route but `/healthz` and `/function/` needs
    `Authorization: Bearer TOKEN`. Without it the app logs one warning. A
    `/system/*` request body longer than `max_system_body_bytes` gets 413.
    """
    if not auth_token:
        logger.warning(
            "no auth token configured: the provider's /system/* API is open to "
            "anyone who reaches its port; set auth_token_file"
        )
    install_log_filter()
    return ProviderApp(
        backend, auth_token=auth_token, max_system_body_bytes=max_system_body_bytes
    )


def check_namespace_query(namespace: str) -> None:
    """Raise InvalidFunctionName (400) unless `namespace` is empty or a DNS-1123 label.

    A query names the namespace as a body does, so an invalid one gets the
    same 400 instead of a 404 for a namespace that does not exist.
    """
    if namespace:
        names.validate_label(namespace, what="namespace")


async def _check_namespace_parameter(request: Request) -> None:
    for namespace in request.query_params.getlist("namespace"):
        check_namespace_query(namespace)


def _build_system_app(
    backend: ProviderBackend,
    *,
    max_body_bytes: int,
    on_start_error: Callable[[BaseException], None],
    on_stop: Callable[[], None],
) -> FastAPI:
    """Build the FastAPI app of `/system/*`, whose lifespan runs the backend.

    `on_stop` runs once the backend has stopped.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await backend.start()
        except BaseException as exc:
            on_start_error(exc)
            raise
        try:
            yield
        finally:
            await backend.stop()
            on_stop()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(_check_namespace_parameter)],
    )
    for error_type, status_code in _STATUS_BY_ERROR:
        app.add_exception_handler(error_type, _text_error_handler(status_code))
    app.add_exception_handler(ConnectionError, _unavailable_error_handler)
    app.add_exception_handler(StarletteHTTPException, _routing_error_handler)

    @app.get("/system/functions")
    async def list_functions(namespace: str = "") -> Response:
        statuses = await backend.list_functions(namespace)
        return _json_response(_status_array(statuses))

    @app.post("/system/functions")
    async def create_function(request: Request) -> Response:
        deployment = _parse_body(
            FunctionDeployment, await _read_body(request, max_body_bytes)
        )
        _validate_names(deployment)
        _validate_async_annotations(deployment)
        await backend.create_function(deployment)
        return Response(status_code=202)

    @app.put("/system/functions")
    async def update_function(request: Request) -> Response:
        deployment = _parse_body(
            FunctionDeployment, await _read_body(request, max_body_bytes)
        )
        _validate_names(deployment)
        _validate_async_annotations(deployment)
        await backend.update_function(deployment)
        return Response(status_code=202)

    @app.delete("/system/functions")
    async def delete_function(request: Request, namespace: str = "") -> Response:
        delete = _parse_body(
            DeleteFunctionRequest, await _read_body(request, max_body_bytes)
        )
        if not delete.function_name:
            raise InvalidRequest(
                "functionName is empty: send the name of the function to delete, "
                'as {"functionName": "NAME"}.'
            )
        await backend.delete_function(
            delete.function_name, namespace or delete.namespace
        )
        return Response(status_code=202)

    @app.get("/system/function/{name}")
    async def get_function(name: str, namespace: str = "") -> Response:
        status = await backend.get_function(name, namespace)
        return _json_response(status.model_dump_json())

    @app.get("/system/function-endpoints/{name}")
    async def get_function_endpoints(name: str, namespace: str = "") -> Response:
        # faashub's own route: where the gateway and the queue-worker may send
        # a function's calls directly (see FunctionEndpoints).
        endpoints = await function_endpoints(backend, name, namespace)
        document = {
            "name": name,
            "namespace": namespace,
            "urls": list(endpoints.urls),
            "ttl_s": endpoints.ttl_s,
            "exec_timeout_s": endpoints.exec_timeout_s,
        }
        return _json_response(json.dumps(document, separators=(",", ":")))

    @app.post("/system/scale-function/{name}")
    async def scale_function(
        name: str, request: Request, namespace: str = ""
    ) -> Response:
        # The name comes from the path, as in faas-netes, so serviceName is ignored.
        scale = _parse_body(
            ScaleServiceRequest,
            await _read_body(request, max_body_bytes),
            example='{"serviceName": "NAME", "replicas": 2}',
        )
        if scale.replicas < 0:
            raise InvalidRequest(
                f"Invalid replicas {scale.replicas} for function {name!r}: use 0 "
                "or more. 0 stops its processes until the next call."
            )
        await backend.scale_function(
            name, namespace or scale.namespace, replicas=scale.replicas
        )
        return Response(status_code=202)

    @app.get("/system/secrets")
    async def list_secrets(namespace: str = "") -> Response:
        secrets = await backend.list_secrets(namespace)
        listed = [
            {"name": secret.name, "namespace": secret.namespace} for secret in secrets
        ]
        return _json_response(json.dumps(listed))

    @app.post("/system/secrets")
    async def create_secret(request: Request, namespace: str = "") -> Response:
        secret = _parse_body(Secret, await _read_body(request, max_body_bytes))
        await backend.create_secret(
            secret.name, namespace or secret.namespace, value=_secret_value(secret)
        )
        return Response(status_code=202)

    @app.put("/system/secrets")
    async def update_secret(request: Request, namespace: str = "") -> Response:
        secret = _parse_body(Secret, await _read_body(request, max_body_bytes))
        await backend.update_secret(
            secret.name, namespace or secret.namespace, value=_secret_value(secret)
        )
        return Response(status_code=202)

    @app.delete("/system/secrets")
    async def delete_secret(request: Request, namespace: str = "") -> Response:
        secret = _parse_body(Secret, await _read_body(request, max_body_bytes))
        await backend.delete_secret(secret.name, namespace or secret.namespace)
        return Response(status_code=202)

    @app.get("/system/namespaces")
    async def list_namespaces() -> Response:
        namespaces = await backend.list_namespaces()
        return _json_response(json.dumps(namespaces))

    @app.get("/system/namespace/{namespace}")
    async def manage_namespace(namespace: str) -> Response:
        # OpenFaaS CE returns 501 here too; only its Pro edition manages namespaces.
        return Response(
            f"Managing namespace {namespace!r} is not supported: this provider's "
            "namespaces are the ones that functions are deployed to. List them "
            "with GET /system/namespaces.",
            status_code=501,
            media_type=TEXT_CONTENT_TYPE,
        )

    @app.get("/system/info")
    async def info() -> Response:
        return _json_response(backend.info().model_dump_json())

    return app


def _secret_value(secret: Secret) -> bytes:
    """Return the bytes of `value` or of base64 `rawValue`, or raise InvalidRequest."""
    if secret.value and secret.raw_value:
        raise InvalidRequest(
            f"Secret {secret.name!r} has both value and rawValue: send the text in "
            "value or the base64 bytes in rawValue, not both."
        )
    if secret.value:
        data = secret.value.encode()
    elif secret.raw_value:
        try:
            data = base64.b64decode(secret.raw_value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"The rawValue of secret {secret.name!r} is not valid base64: "
                "encode the bytes with standard base64, or send text in value."
            ) from None
    else:
        data = b""
    if not data:
        raise InvalidRequest(
            f"Secret {secret.name!r} has no value: send the text in value or the "
            "base64 bytes in rawValue."
        )
    return data


def _error_text(exc: Exception) -> str:
    """Return the error body for a backend error, logging what it leaves out."""
    if isinstance(exc, StorageError):
        logger.error("provider storage failed: %s", exc)
        return f"{exc.summary} The provider's log has the details."
    return str(exc)


def _retry_after(exc: InvocationFailed) -> str:
    """Return the Retry-After value for `exc` in whole seconds, or "" for none."""
    if isinstance(exc, FunctionUnavailable) and exc.retry_after_s is not None:
        return str(max(1, math.ceil(exc.retry_after_s)))
    return ""


def _is_backend_unavailable(exc: Exception) -> bool:
    """Return whether `exc` reports an orchestrator that sent no response."""
    return isinstance(exc, ProviderError) and isinstance(exc, ConnectionError)


def _unavailable_retry_after(exc: Exception) -> str:
    """Return the Retry-After value for `exc`, or "" when it is not a 503."""
    return str(UNAVAILABLE_RETRY_AFTER_S) if _is_backend_unavailable(exc) else ""


def _status_of(exc: Exception) -> int | None:
    """Return the status code for a backend error, or None for an unexpected one."""
    if _is_backend_unavailable(exc):
        return 503
    for error_type, status_code in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status_code
    return None


def _status_array(statuses: list[FunctionStatus]) -> str:
    return "[" + ",".join(status.model_dump_json() for status in statuses) + "]"


def _json_response(body: str) -> Response:
    return Response(content=body, media_type=JSON_CONTENT_TYPE)


def _validate_names(deployment: FunctionDeployment) -> None:
    """Check names, namespaces, labels and annotations by Kubernetes rules.

    Raises InvalidFunctionName (400) before the backend stores anything.
    """
    names.validate_label(deployment.service)
    if deployment.namespace:
        names.validate_label(deployment.namespace, what="namespace")
    names.validate_metadata(
        deployment.labels, deployment.annotations, function=deployment.service
    )


def _validate_async_annotations(deployment: FunctionDeployment) -> None:
    """Check the retry, max_inflight and queue annotations, or raise InvalidRequest.

    The worker and the gateway would fall back to the default for an invalid
    value at each call, so it is rejected here before the backend stores it.
    """
    try:
        async_annotations.check_async_annotations(
            deployment.service, deployment.annotations
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """Return the request body, or raise _BodyTooLarge once it passes the limit.

    A Content-Length over the limit is refused before any of the body is
    read, and a longer chunked body as soon as its length passes the limit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise _body_too_large(limit_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise _body_too_large(limit_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _body_too_large(limit_bytes: int) -> _BodyTooLarge:
    return _BodyTooLarge(
        f"The request body is larger than the provider's limit of {limit_bytes} "
        "bytes for /system/* requests. Send a smaller body, or raise "
        "--max-system-body-bytes (FAASHUB_MAX_SYSTEM_BODY_BYTES) of the provider."
    )


def _parse_body(model: type[_Model], body: bytes, *, example: str = "") -> _Model:
    """Validate a JSON body as `model`; raise InvalidRequest naming the fault.

    A given `example`, a body of the expected shape, ends each message.
    """
    model_name = model.__name__
    if not body.strip():
        expected = f" such as {example}" if example else ""
        raise InvalidRequest(
            f"The request body is empty: send a JSON {model_name}{expected}."
        )
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = validation_problems(exc, limit=MAX_REPORTED_VALIDATION_ERRORS)
        expected = f" Send a JSON {model_name} such as {example}." if example else ""
        raise InvalidRequest(
            f"Invalid {model_name} in the request body: {'; '.join(problems)}."
            + expected
        ) from exc


def _text_error_handler(
    status_code: int,
) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        return Response(
            _error_text(exc), status_code=status_code, media_type=TEXT_CONTENT_TYPE
        )

    return handle


async def _unavailable_error_handler(request: Request, exc: Exception) -> Response:
    """Return 503 with Retry-After for an orchestrator that sent no response.

    Re-raise any other ConnectionError, which is a bug, so that it gets 500.
    """
    if not _is_backend_unavailable(exc):
        raise exc
    return Response(
        _error_text(exc),
        status_code=503,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
        media_type=TEXT_CONTENT_TYPE,
    )


async def _routing_error_handler(request: Request, exc: Exception) -> Response:
    """Return a plain-text sentence for a routing error (unknown path, wrong method)."""
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 404:
        text = (
            f"No route for {where}. faashub's management API serves "
            "/system/functions, /system/function/NAME, "
            "/system/scale-function/NAME, /system/secrets, /system/logs, "
            "/system/namespaces, /system/namespace/NAME (GET, 501), "
            "/system/info, /function/NAME and /healthz."
        )
    elif exc.status_code == 405:
        # Starlette's Allow names the methods of the first route whose path
        # matches, but each method of a path is a route of its own here.
        allowed = _allowed_methods(request)
        text = _method_not_allowed_text(request.method, request.url.path, allowed)
        return Response(
            text,
            status_code=405,
            headers={"Allow": ", ".join(allowed)},
            media_type=TEXT_CONTENT_TYPE,
        )
    else:
        text = str(exc.detail)
    return Response(
        text,
        status_code=exc.status_code,
        headers=exc.headers,
        media_type=TEXT_CONTENT_TYPE,
    )


def _allowed_methods(request: Request) -> list[str]:
    """Return the methods of every route whose path matches the request's."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return _ordered_methods(methods)


def _ordered_methods(methods: Collection[str]) -> list[str]:
    known = [method for method in METHOD_ORDER if method in methods]
    return known + sorted(set(methods) - set(METHOD_ORDER))


def _method_not_allowed_text(method: str, path: str, allowed: list[str]) -> str:
    text = f"Method {method} is not allowed on {path}."
    if not allowed:
        return text
    listed = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1])
    if len(allowed) > 1:
        listed += f" or {allowed[-1]}"
    return f"{text} Use {listed}."


async def _send_method_not_allowed(
    send: Send, scope: Scope, *, allowed: tuple[str, ...]
) -> None:
    """Send a 405 for a route that the raw ASGI handlers serve."""
    methods = _ordered_methods(allowed)
    text = _method_not_allowed_text(scope["method"], scope["path"], methods)
    await _send_text(send, 405, text, allow=", ".join(methods))


def _split_function_path(scope: Scope) -> tuple[str, str]:
    """Split `/function/NAME/REST` into NAME and "/REST", both still percent-encoded."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None or not raw.startswith(FUNCTION_PREFIX.encode()):
        raw = quote(scope["path"]).encode()
    target = raw.split(b"?", 1)[0].decode("latin-1")
    name, _, rest = target[len(FUNCTION_PREFIX) :].partition("/")
    return name, "/" + rest


async def _start_body(receive: Receive) -> "bytes | _RequestStream | None":
    """Read the first ASGI message of the request body.

    Return the whole body when it came in that message, as a small body
    does, and otherwise a stream of the whole body, which reads the rest
    from the caller as the backend consumes it. Return None when the caller
    went away.
    """
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    first: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return first
    return _RequestStream(first, receive)


class _RequestStream:
    """The chunks of a request body, read from the ASGI server on demand.

    The ASGI server stops reading the socket while a few chunks wait for
    `receive`, so reading only as fast as the backend writes keeps the
    caller's upload in step with the function's reading. It can be iterated
    once, and raises ClientDisconnected when the caller goes away first.
    """

    def __init__(self, first: bytes, receive: Receive) -> None:
        self._pending = first
        self._receive = receive
        self._more = True
        self.disconnected = False

    def __aiter__(self) -> "_RequestStream":
        return self

    async def __anext__(self) -> bytes:
        # Empty chunks are skipped: a chunked upload would read one as its end.
        while not self._pending:
            if not self._more:
                raise StopAsyncIteration
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._more = False
                self.disconnected = True
                raise ClientDisconnected(
                    "The caller closed the connection before the end of the body."
                )
            self._pending = message.get("body", b"")
            self._more = message.get("more_body", False)
        chunk, self._pending = self._pending, b""
        return chunk


def _log_disconnect(invocation: Invocation) -> None:
    context = {"function": str(invocation.function), "call_id": invocation.call_id}
    logger.debug("caller disconnected during the upload", extra={"ctx": context})


def _presented_token(scope: Scope) -> bytes | None:
    """Return the token of `Authorization: Bearer <token>`, or None without one."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, presented = bytes(value).strip().partition(b" ")
            if scheme.lower() != b"bearer":
                return None
            return presented.strip()
    return None


async def _send_unauthorized(send: Send, *, token_sent: bool) -> None:
    if token_sent:
        body = (
            b"Invalid token: the provider rejected the bearer token. Send the "
            b"token of its auth_token_file (the gateway's provider_token_file "
            b"must hold the same one).\n"
        )
    else:
        body = (
            b"Authentication required: send the provider's token as "
            b"'Authorization: Bearer TOKEN' (the gateway's provider_token_file).\n"
        )
    headers = [
        (b"content-type", TEXT_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="faashub-provider"'),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_text(
    send: Send,
    status: int,
    text: str,
    *,
    internal: str = "",
    allow: str = "",
    retry_after: str = "",
) -> None:
    """Send a complete plain-text response, with the headers that are not empty."""
    body = text.encode()
    headers = [
        (b"content-type", TEXT_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if internal:
        headers.append(
            (constants.OPENFAAS_INTERNAL.lower().encode(), internal.encode())
        )
    if allow:
        headers.append((b"allow", allow.encode()))
    if retry_after:
        headers.append((b"retry-after", retry_after.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
