"""The management API: `/system/...` on FastAPI, forwarded to the provider.

Every `/system/{path}` request goes to `{provider_url}/system/{path}` with its
method, raw query, headers (minus hop-by-hop ones) and body. The provider's
status, headers and body come back unchanged, except a 401 (see below). The
response body is streamed, so `/system/logs` can stream ndjson. The gateway
handles two parts itself:
`GET /system/info` returns the provider's info wrapped with the gateway's
version and architecture, as OpenFaaS does, and `/system/dead-letters` is the
dead-letter API of `gateway.dead_letter_api`, never forwarded. A `GET
/system/functions` listing and a `GET /system/function/NAME` status get
`invocationCount` from the gateway's counts (`gateway.metrics`), as the
OpenFaaS gateway fills it from Prometheus, because a call sent straight to a
replica never reaches the provider's own counter.

This is the control plane, so it uses FastAPI and httpx. The invocation
routes (`gateway.sync_proxy`, `gateway.async_accept`) do not come through
here, but the OpenAPI document built below describes them too. Basic
auth is checked before a request reaches this app (`gateway.auth`), and the
caller's Authorization header is not forwarded. With a provider token, the
gateway sends its own `Authorization: Bearer TOKEN` to the provider instead
(not to a separate logs provider). A 401 from the provider becomes a 502
that names the gateway's `provider_token_file` (`gateway.provider_token`),
because the caller's own credentials were already accepted. A deploy or
update whose function name, namespace, labels or annotations break the
Kubernetes rules gets 400 here, before the provider sees it. Alert-driven
scaling and the scale clamp of OpenFaaS CE are not implemented.
"""

import asyncio
import json
import logging
import platform
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from faashub import __version__, names
from faashub import constants as shared
from faashub import errors as shared_errors
from faashub.logs import LimitedWarning
from faashub.replica_urls import DIRECT_INVOCATIONS_PATH
from faashub.settings import GatewaySettings
from gateway import asgi, async_call_list, auth, constants, dead_letter_api, limits
from gateway.call_queue import CallQueue
from gateway.dead_letters import DeadLetterStore
from gateway.metrics import GatewayMetrics, listed_replicas
from gateway.provider_token import ProviderTokenRejections

logger = logging.getLogger(__name__)

# Request headers that are not forwarded, beside the hop-by-hop ones. httpx
# sets Host and Content-Length for the provider, and uvicorn has already
# handled any `Expect: 100-continue`.
# Authorization carries the caller's credentials for the gateway itself, which
# the provider must never see.
_REQUEST_HEADERS_NOT_FORWARDED = shared.HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "authorization",
}

# Headers that httpx adds to every request by default. A proxy must not add
# them, because an Accept-Encoding that the caller did not send would bring
# back a compressed body that the caller cannot expect.
_HTTPX_DEFAULT_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")

_FORWARDED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

# The provider route that streams for as long as the caller follows the logs.
_LOGS_PATH = "logs"
# Largest body the management API forwards. A secret of the local provider's
# default 1 MiB limit, base64-encoded in JSON, fits with room to spare.
MAX_SYSTEM_BODY_BYTES = 4 * 1024 * 1024
# The gateway's own route under /system/, in the form of the forward route's
# `{path}` parameter.
_DEAD_LETTERS_PATH = constants.DEAD_LETTERS_PATH.removeprefix("/system/")
# The provider route that deploys (POST) and updates (PUT) a function.
_FUNCTIONS_PATH = "functions"
# The start of the provider route of one function's status, `function/NAME`.
_FUNCTION_PATH_PREFIX = "function/"
# Maximum count that one report may add for one function.
MAX_DIRECT_INVOCATIONS = 1_000_000_000


class VersionInfo(BaseModel):
    """The gateway's version, in the OpenFaaS `VersionInfo` shape."""

    release: str = Field(description="faashub release.")
    sha: str = Field("", description="Git commit; empty for a packaged release.")
    commit_message: str = Field("", description="Git commit message; may be empty.")


class GatewayInfo(BaseModel):
    """The response of `GET /system/info`, in the OpenFaaS `GatewayInfo` shape."""

    provider: dict[str, Any] = Field(
        description="The provider's own `/system/info` response, unchanged."
    )
    version: VersionInfo
    arch: str = Field(description="Machine architecture of the gateway, e.g. x86_64.")


class SystemForwarder:
    """Forwards management requests to the provider with one httpx client."""

    def __init__(
        self,
        provider_url: str,
        *,
        upstream_timeout_s: float,
        logs_provider_url: str = "",
        body_read_timeout_s: float = 30.0,
        provider_authorization: str = "",
        token_rejections: ProviderTokenRejections,
        metrics: GatewayMetrics | None = None,
        provider_start_grace_s: float = 0.0,
    ) -> None:
        self._provider_url = provider_url.rstrip("/")
        self._metrics = metrics
        self._token_rejections = token_rejections
        # Every management request fails alike while the provider is down.
        self._unreachable_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        self._provider_start_grace_s = provider_start_grace_s
        # Monotonic time until which an unreachable provider may still be
        # starting. The app's lifespan sets it.
        self._provider_grace_ends_s = 0.0
        # The Authorization value for the provider, "" for none.
        self._provider_authorization = provider_authorization
        self._body_read_timeout_s = body_read_timeout_s
        # OpenFaaS lets a separate log provider serve /system/logs.
        self._logs_provider_url = logs_provider_url.rstrip("/") or self._provider_url
        self._timeout = httpx.Timeout(
            upstream_timeout_s,
            connect=constants.SYSTEM_CONNECT_TIMEOUT_S,
            pool=constants.SYSTEM_CONNECT_TIMEOUT_S,
        )
        self._stream_timeout = httpx.Timeout(
            None,
            connect=constants.SYSTEM_CONNECT_TIMEOUT_S,
            pool=constants.SYSTEM_CONNECT_TIMEOUT_S,
        )
        self._client: httpx.AsyncClient | None = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """Open the httpx client for the life of the FastAPI app."""
        self._provider_grace_ends_s = time.monotonic() + self._provider_start_grace_s
        async with httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,
            verify=_tls_verification(self._provider_url, self._logs_provider_url),
        ) as client:
            for name in _HTTPX_DEFAULT_HEADERS:
                del client.headers[name]
            self._client = client
            try:
                yield
            finally:
                self._client = None

    async def forward(self, request: Request, path: str) -> Response:
        """Send one management request to the provider and stream the response back.

        A body over MAX_SYSTEM_BODY_BYTES gets 413 as soon as it passes the
        limit, so a large request never sits whole in the gateway's memory.
        """
        if path == _DEAD_LETTERS_PATH or path.startswith(_DEAD_LETTERS_PATH + "/"):
            # The dead-letter routes did not match this method: never forward.
            return PlainTextResponse(
                f"Method {request.method} is not allowed on /system/{path}. The "
                "dead-letter API takes GET and DELETE on /system/dead-letters and "
                "/system/dead-letters/CALL_ID, and POST on "
                "/system/dead-letters/redrive.\n",
                status_code=405,
            )
        problem = namespace_query_problem(request.query_params.getlist("namespace"))
        if problem is not None:
            return PlainTextResponse(f"{problem}\n", status_code=400)
        client = self._require_client()
        raw_path: bytes = request.scope.get("raw_path") or request.url.path.encode()
        base_url = self._logs_provider_url if path == _LOGS_PATH else self._provider_url
        url = base_url + raw_path.decode("latin-1")
        query: bytes = request.scope.get("query_string", b"")
        if query:
            url += "?" + query.decode("latin-1")
        headers = [
            (name, value)
            for name, value in request.headers.raw
            if name.decode("latin-1").lower() not in _REQUEST_HEADERS_NOT_FORWARDED
        ]
        if self._provider_authorization and base_url == self._provider_url:
            headers.append(
                (b"authorization", self._provider_authorization.encode("latin-1"))
            )
        declared = request.headers.get("content-length", "")
        if (
            declared.isascii()
            and declared.isdigit()
            and int(declared) > MAX_SYSTEM_BODY_BYTES
        ):
            return _system_body_too_large(request.method, path)
        try:
            async with asyncio.timeout(self._body_read_timeout_s):
                body = await _read_capped(request)
        except _BodyTooLarge:
            return _system_body_too_large(request.method, path)
        except TimeoutError:
            return PlainTextResponse(
                limits.body_read_timeout_text(self._body_read_timeout_s),
                status_code=408,
                headers={"Connection": "close"},
            )
        if path == _FUNCTIONS_PATH and request.method in ("POST", "PUT"):
            problem = deployment_problem(body)
            if problem is not None:
                return PlainTextResponse(f"{problem}\n", status_code=400)
        upstream_request = client.build_request(
            request.method,
            url,
            headers=headers,
            content=body,
            timeout=self._stream_timeout if path == _LOGS_PATH else self._timeout,
        )
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            return self._unreachable(
                exc, request_line=f"{request.method} /system/{path}"
            )
        if upstream.status_code == 401 and base_url == self._provider_url:
            await upstream.aclose()
            return self._token_rejected(f"{request.method} /system/{path}")
        if (
            self._metrics is not None
            and (path == _FUNCTIONS_PATH or path.startswith(_FUNCTION_PATH_PREFIX))
            and request.method == "GET"
            and upstream.status_code == 200
            and "content-encoding" not in upstream.headers
        ):
            return await self._with_invocation_counts(
                upstream, self._metrics, namespace=request.query_params.get("namespace")
            )

        response = StreamingResponse(
            _raw_body(upstream),
            status_code=upstream.status_code,
            background=BackgroundTask(upstream.aclose),
        )
        response.raw_headers = asgi.pass_response_headers(
            upstream.headers.raw, upstream.status_code
        )
        return response

    async def _with_invocation_counts(
        self,
        upstream: httpx.Response,
        metrics: GatewayMetrics,
        *,
        namespace: str | None,
    ) -> Response:
        """Return the provider's function listing or status with the gateway's counts.

        The body is the list of `GET /system/functions` or the one function
        of `GET /system/function/NAME`. Each function the gateway has counted
        calls for gets that count as `invocationCount`; the others keep the
        provider's value. A body that is neither a JSON list nor a JSON
        object comes back unchanged.
        """
        try:
            body = await upstream.aread()
        finally:
            await upstream.aclose()
        headers = asgi.pass_response_headers(upstream.headers.raw, 200)
        try:
            listing = json.loads(body)
        except ValueError:
            listing = None
        if not isinstance(listing, list | dict):
            response = Response(body, status_code=200)
            response.raw_headers = headers
            return response
        counts = metrics.invocation_counts()
        default_namespace = namespace or shared.DEFAULT_NAMESPACE
        entries = listing if isinstance(listing, list) else [listing]
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            entry_namespace = entry.get("namespace") or default_namespace
            count = counts.get(f"{entry['name']}.{entry_namespace}")
            if count is not None:
                entry["invocationCount"] = int(count)
        if isinstance(listing, list):
            metrics.set_service_counts(
                listed_replicas(listing, namespace=default_namespace)
            )
        merged = json.dumps(listing).encode()
        response = Response(merged, status_code=200)
        response.raw_headers = [
            (name, value) for name, value in headers if name != b"content-length"
        ]
        response.raw_headers.append((b"content-length", str(len(merged)).encode()))
        return response

    async def info(self) -> Response | GatewayInfo:
        """Return the provider's info wrapped with the gateway's own."""
        client = self._require_client()
        try:
            upstream = await client.get(
                f"{self._provider_url}/system/info",
                headers=self.provider_headers(),
            )
        except httpx.HTTPError as exc:
            return self._unreachable(exc, request_line="GET /system/info")
        if upstream.status_code == 401:
            return self._token_rejected("GET /system/info")
        try:
            provider_info = upstream.json() if upstream.status_code == 200 else None
        except ValueError:
            provider_info = None
        if not isinstance(provider_info, dict):
            return PlainTextResponse(
                f"The provider at {self._provider_url} returned status "
                f"{upstream.status_code} and no JSON object for /system/info. "
                "Check the provider's log.\n",
                status_code=502,
                headers={shared.OPENFAAS_INTERNAL: "gateway"},
            )
        return GatewayInfo(
            provider=provider_info,
            version=VersionInfo(release=__version__, sha="", commit_message=""),
            arch=platform.machine(),
        )

    def provider_headers(self) -> dict[str, str]:
        """Return the headers that authenticate the gateway to the provider."""
        if not self._provider_authorization:
            return {}
        return {"Authorization": self._provider_authorization}

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(
                "The management API was called outside its lifespan; serve the "
                "gateway app with lifespan events turned on."
            )
        return self._client

    def _token_rejected(self, request_line: str) -> Response:
        error = self._token_rejections.rejected(request_line)
        return PlainTextResponse(
            f"{error}\n",
            status_code=502,
            headers={shared.OPENFAAS_INTERNAL: "gateway"},
        )

    def _unreachable(self, exc: httpx.HTTPError, *, request_line: str) -> Response:
        cause = "timed out" if isinstance(exc, httpx.TimeoutException) else str(exc)
        context: dict[str, object] = {
            "request": request_line,
            "error": cause or repr(exc),
        }
        if time.monotonic() < self._provider_grace_ends_s:
            # The provider may still be starting, as under `faashub up`.
            logger.debug("cannot reach provider yet", extra={"ctx": context})
        else:
            self._unreachable_warnings.warning("cannot reach provider", ctx=context)
        return PlainTextResponse(
            f"Cannot reach the provider at {self._provider_url} for {request_line}: "
            f"{cause or repr(exc)}. Check that the provider is running.\n",
            status_code=502,
            headers={shared.OPENFAAS_INTERNAL: "gateway"},
        )


def _tls_verification(*base_urls: str) -> ssl.SSLContext | bool:
    """Return httpx's `verify` for a client that sends requests only to `base_urls`.

    True, which loads the certifi CA bundle, when one of them uses https.
    Otherwise the client never makes a TLS connection, so it gets a context
    that trusts no certificate authority, and a TLS handshake with it would
    fail verification. Loading the bundle took 25 to 40 ms of the gateway's
    start on a 2-core VM shared with other work, and `faashub up` waits for
    that start.
    """
    if any(url.lower().startswith("https:") for url in base_urls):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def namespace_query_problem(values: list[str]) -> str | None:
    """Return why a `namespace` query value is invalid, or None when all are valid.

    The message is the one a deployment body with that namespace gets. An
    empty value means the provider's default namespace.
    """
    for value in values:
        if not value:
            continue
        try:
            names.validate_label(value, what="namespace")
        except shared_errors.InvalidFunctionName as exc:
            return str(exc)
    return None


def deployment_problem(body: bytes) -> str | None:
    """Return what is wrong with a deploy or update body, or None if it is usable.

    The gateway checks the function name, the namespace and the label and
    annotation keys and values by Kubernetes rules itself, so that a provider
    which does not check them never stores them. The provider checks the
    rest of the body.
    """
    try:
        deployment = json.loads(body)
    except ValueError as exc:
        return f"Invalid JSON in the FunctionDeployment request body: {exc}."
    if not isinstance(deployment, dict):
        return "The request body is not a JSON object: send a FunctionDeployment."
    service = deployment.get("service")
    if not isinstance(service, str):
        return 'The FunctionDeployment has no "service" string: name the function.'
    namespace = deployment.get("namespace") or ""
    if not isinstance(namespace, str):
        return 'The FunctionDeployment field "namespace" must be a string.'
    labels = _string_map(deployment, "labels")
    annotations = _string_map(deployment, "annotations")
    if labels is None or annotations is None:
        return (
            'The FunctionDeployment fields "labels" and "annotations" must be '
            "JSON objects with string values."
        )
    try:
        names.validate_label(service)
        if namespace:
            names.validate_label(namespace, what="namespace")
        names.validate_metadata(labels, annotations, function=service)
    except shared_errors.InvalidFunctionName as exc:
        return str(exc)
    return _cron_schedule_problem(service, annotations)


def _cron_schedule_problem(service: str, annotations: dict[str, str]) -> str | None:
    """Return why the cron connector could not use the function's schedule, or None.

    Only a function whose `topic` annotation includes `cron-function` is
    checked, with the cron connector's own parser, so that a bad schedule is
    a 400 at deploy rather than an error in the connector's log.
    """
    topic = annotations.get(shared.ANNOTATION_TOPIC)
    if topic is None:
        return None
    # Imported here, so the gateway loads APScheduler only once a deploy
    # carries a topic annotation.
    from connectors.core.topic_map import parse_topic_annotation
    from connectors.cron import constants as cron_constants
    from connectors.cron.errors import InvalidSchedule
    from connectors.cron.schedule import parse_schedule

    if cron_constants.TOPIC not in parse_topic_annotation(topic):
        return None
    try:
        parse_schedule(annotations)
    except InvalidSchedule as exc:
        return f"Invalid cron schedule for function {service!r}: {exc}"
    return None


def _string_map(deployment: dict[str, Any], field: str) -> dict[str, str] | None:
    """Return the JSON object `field` of `deployment`, or None if it is not one."""
    value = deployment.get(field) or {}
    if not isinstance(value, dict):
        return None
    if not all(isinstance(item, str) for item in value.values()):
        return None
    return value


async def _raw_body(upstream: httpx.Response) -> AsyncIterator[bytes]:
    # Raw bytes keep the provider's Content-Encoding and Content-Length true.
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


class _BodyTooLarge(Exception):
    """The request body passed MAX_SYSTEM_BODY_BYTES."""


async def _read_capped(request: Request) -> bytes:
    """Read the request body, raising _BodyTooLarge past the limit."""
    chunks: list[bytes] = []
    size = 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > MAX_SYSTEM_BODY_BYTES:
            await limits.discard_rest(stream)
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _system_body_too_large(method: str, path: str) -> Response:
    return PlainTextResponse(
        f"The body of {method} /system/{path} is larger than "
        f"{MAX_SYSTEM_BODY_BYTES // (1024 * 1024)} MiB, the limit of the "
        "management API. Function definitions and secrets are far smaller; "
        "check that the right file was sent.\n",
        status_code=413,
        headers={"Connection": "close"},
    )


def create_app(
    settings: GatewaySettings,
    dead_letters: DeadLetterStore,
    *,
    metrics: GatewayMetrics | None = None,
    queue: CallQueue | None = None,
    token_rejections: ProviderTokenRejections | None = None,
) -> FastAPI:
    """Build the FastAPI app of the management API.

    With `metrics`, function listings get the gateway's invocation counts.
    With `queue`, the app serves the async-call listing of `gateway.async_call_list`.
    Pass the gateway's `token_rejections` so that all its routes share one
    rate limit for the warning, else the app gets its own.
    """
    provider_authorization = auth.provider_authorization(settings)
    if token_rejections is None:
        token_rejections = ProviderTokenRejections(
            settings.provider_url, token_sent=bool(provider_authorization)
        )
    forwarder = SystemForwarder(
        settings.provider_url,
        upstream_timeout_s=settings.upstream_timeout_s,
        logs_provider_url=settings.logs_provider_url,
        body_read_timeout_s=settings.body_read_timeout_s,
        provider_authorization=provider_authorization,
        token_rejections=token_rejections,
        metrics=metrics,
        provider_start_grace_s=settings.provider_start_grace_s,
    )
    app = FastAPI(
        title="faashub gateway",
        version=__version__,
        description="The OpenFaaS gateway API: management routes under /system, "
        "sync invocation under /function and async invocation under "
        "/async-function.",
        lifespan=forwarder.lifespan,
    )

    @app.get(
        "/system/info",
        response_model=GatewayInfo,
        summary="Provider and gateway version information",
        responses={
            502: {
                "description": "The provider is unreachable, or it rejected the "
                "gateway's provider token."
            }
        },
    )
    async def system_info() -> Response | GatewayInfo:
        return await forwarder.info()

    if metrics is not None:
        _add_direct_invocations_route(app, metrics)

    # Before the forward routes, which would match these paths too.
    app.include_router(dead_letter_api.create_router(dead_letters))
    if queue is not None:
        lister = async_call_list.AsyncCallLister(queue)
        app.include_router(async_call_list.create_router(lister))

    # One route per method, each with its own operation id, because FastAPI
    # warns about an operation id shared by several methods.
    for method in _FORWARDED_METHODS:
        app.add_api_route(
            "/system/{path:path}",
            forwarder.forward,
            methods=[method],
            operation_id=f"forward_system_{method.lower()}",
            summary="Forward to the provider's /system API",
            description="Sent to `{provider_url}/system/{path}` with the query, "
            "headers and body; the provider's status, headers and body come back "
            "unchanged, except that its 401 becomes a 502.",
            responses={
                502: {
                    "description": "The provider is unreachable, or it rejected "
                    "the gateway's provider token."
                }
            },
            response_class=Response,
        )

    app.openapi = _openapi_with_invocation_routes(app)  # type: ignore[method-assign]
    return app


def _add_direct_invocations_route(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Add `POST /system/direct-invocations`, where direct calls are counted."""

    @app.post(
        DIRECT_INVOCATIONS_PATH,
        status_code=204,
        summary="Count calls sent straight to replicas",
        description="faashub's own route. A queue-worker or connector that "
        "sends calls straight to function replicas posts how many it sent, as "
        '`{"NAME.NAMESPACE": COUNT, ...}`, so that `invocationCount` includes '
        "them.",
        responses={400: {"description": "The body is not such an object."}},
    )
    async def count_direct_invocations(request: Request) -> Response:
        try:
            body = await _read_capped(request)
        except _BodyTooLarge:
            return _system_body_too_large(
                "POST", DIRECT_INVOCATIONS_PATH.removeprefix("/system/")
            )
        try:
            counts = parse_direct_invocations(body)
        except ValueError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        for function, count in counts.items():
            metrics.direct_calls_reported(function, count)
        return Response(status_code=204)


def parse_direct_invocations(body: bytes) -> dict[str, int]:
    """Parse a `{"NAME.NAMESPACE": COUNT, ...}` report of direct calls.

    Raise ValueError, with a message for the caller, for a body that is not
    such an object, a name that is invalid, or a count that is not an
    integer from 1 to MAX_DIRECT_INVOCATIONS.
    """
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise ValueError(
            'The body must be a JSON object such as {"NAME.NAMESPACE": COUNT}.'
        )
    counts: dict[str, int] = {}
    for function, count in document.items():
        try:
            ref = names.parse_function_ref(function)
        except shared_errors.InvalidFunctionName as exc:
            raise ValueError(f"Invalid function {function!r}: {exc}") from None
        if (
            isinstance(count, bool)
            or not isinstance(count, int)
            or not 1 <= count <= MAX_DIRECT_INVOCATIONS
        ):
            raise ValueError(
                f"Invalid count {count!r} for function {function!r}: send an "
                f"integer from 1 to {MAX_DIRECT_INVOCATIONS}."
            )
        counts[str(ref)] = counts.get(str(ref), 0) + count
    return counts


def _openapi_with_invocation_routes(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """Return an `openapi()` that adds the routes served outside FastAPI."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema["paths"].update(_invocation_paths())
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _invocation_paths() -> dict[str, Any]:
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "Function name, or NAME.NAMESPACE.",
        "schema": {"type": "string"},
    }
    rest = {
        "name": "path",
        "in": "path",
        "required": True,
        "description": "Extra path passed to the function.",
        "schema": {"type": "string"},
    }
    sync_responses = {
        "200": {"description": "The function's response, passed through."},
        "400": {"description": "Invalid function name."},
        "404": {"description": "The provider does not know the function."},
        "502": {"description": "The provider is unreachable or timed out."},
    }
    async_responses = {
        "202": {
            "description": "Stored in the queue; X-Call-Id names the call.",
            "headers": {
                shared.CALL_ID: {"schema": {"type": "string"}},
                shared.START_TIME: {"schema": {"type": "string"}},
            },
        },
        "400": {
            "description": "Invalid function name, X-Callback-Url, X-Delay-Seconds "
            "or X-Not-Before."
        },
        "404": {"description": "The function does not exist."},
        "405": {"description": "Method not allowed."},
        "413": {"description": "The body exceeds the gateway's max_body_bytes."},
        "502": {
            "description": "The provider is unreachable, or it rejected the "
            "gateway's provider token."
        },
        "503": {"description": "The queue is unavailable; retry with the same id."},
    }
    call_id = {
        "name": "call_id",
        "in": "path",
        "required": True,
        "description": "The X-Call-Id of the 202 response, percent-encoded.",
        "schema": {"type": "string"},
    }
    status_operation = {
        "summary": "Status of an async call",
        "operationId": "async_call_status",
        "parameters": [call_id],
        "responses": {
            "200": {"description": "The call's state, attempts and times (JSON)."},
            "404": {"description": "Unknown call, or its status expired."},
            "503": {"description": "NATS is unavailable."},
        },
    }
    cancel_responses = {
        "202": {"description": "Cancelled; the body is the cancelled status."},
        "404": {"description": "Unknown call, or its status expired."},
        "409": {"description": "The call is running or has finished."},
        "503": {"description": "NATS is unavailable."},
    }

    def operations(
        operation: str,
        summary: str,
        methods: tuple[str, ...],
        responses: dict[str, Any],
        *,
        tail: bool,
    ) -> dict[str, Any]:
        parameters = [name, rest] if tail else [name]
        suffix = "_with_path" if tail else ""
        return {
            method.lower(): {
                "summary": summary,
                "operationId": f"{operation}_{method.lower()}{suffix}",
                "parameters": parameters,
                "responses": responses,
            }
            for method in methods
        }

    sync_methods = ("GET", "POST", "PUT", "PATCH", "DELETE")
    return {
        "/function/{name}": operations(
            "invoke",
            "Invoke a function and wait for its response",
            sync_methods,
            sync_responses,
            tail=False,
        ),
        "/function/{name}/{path}": operations(
            "invoke",
            "Invoke a function with an extra path",
            sync_methods,
            sync_responses,
            tail=True,
        ),
        "/async-function/{name}": {
            **operations(
                "queue",
                "Queue a call to a function",
                constants.ASYNC_METHODS,
                async_responses,
                tail=False,
            ),
            "delete": {
                "summary": "Cancel a queued call; {name} is its X-Call-Id here",
                "operationId": "cancel_async_function",
                "parameters": [name],
                "responses": cancel_responses,
            },
        },
        "/async-calls/{call_id}": {
            "get": status_operation,
            "delete": {
                "summary": "Cancel a queued or retrying async call",
                "operationId": "cancel_async_call",
                "parameters": [call_id],
                "responses": cancel_responses,
            },
        },
        "/async-function/{name}/{path}": operations(
            "queue",
            "Queue a call to a function with an extra path",
            constants.ASYNC_METHODS,
            async_responses,
            tail=True,
        ),
        constants.HEALTH_PATH: {
            "get": {
                "summary": "Readiness of the gateway",
                "operationId": "healthz",
                "responses": {
                    "200": {"description": "OK: connected to NATS, stream ready."},
                    "503": {"description": "Not ready; the body says why."},
                },
            }
        },
    }
