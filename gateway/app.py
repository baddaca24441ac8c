"""The gateway's outer ASGI app: routing and the one lifespan.

Requests under `/function/`, `/async-function/`, `/async-calls/` and
`/healthz` go straight to the lean handlers, and so does `GET /metrics`
(Prometheus, open like `/healthz`, see `gateway.metrics`); DELETE on `/async-function/`
cancels a call. Everything else, `/system/...` (the dead-letter API
included) and the OpenAPI pages, goes to the FastAPI app of
`gateway.system`. Requests under `/ui` go to the web console
(`gateway.ui.console`), behind the same auth as `/system`. The lifespan
opens three things and closes them in reverse order. The first is the
NATS connection, in the background, so the gateway starts while NATS is
down. The second is the shared aiohttp session
that reaches the provider and callback receivers, and the third the FastAPI
app's own lifespan. With a provider token, the lookups of functions and
replica URLs under the provider's `/system/` go through a second session
that sends the token, so the token never reaches a function replica.
"""

import asyncio
import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
from starlette.types import Receive, Scope, Send

from faashub import callback_request, credentials, http_sessions, tracing
from faashub.callback_guard import CallbackGuard, new_callback_session
from faashub.gc_tuning import tune_gc
from faashub.incomplete_response import install_log_filter
from faashub.logs import LimitedWarning
from faashub.names import FunctionRef
from faashub.settings import GatewaySettings
from gateway import asgi, auth, constants, limits, system
from gateway.async_accept import AsyncAccept
from gateway.async_calls import AsyncCalls
from gateway.call_queue import CallQueue
from gateway.dead_letters import DeadLetterStore
from gateway.function_lookup import FunctionLookup
from gateway.metrics import METRICS_PATH, GatewayMetrics, ServiceCountRefresher
from gateway.provider_token import ProviderTokenRejections
from gateway.replica_urls import ReplicaUrls
from gateway.sync_proxy import SyncProxy
from gateway.ui import guard
from gateway.ui.console import Console

logger = logging.getLogger(__name__)
# A rebinding page can repeat its requests in a loop.
_host_rejections = LimitedWarning(logger, interval_s=constants.WARNING_INTERVAL_S)

# Headers that aiohttp would add by default and the data path must not add.
# auto_decompress=False keeps bodies byte for byte, so an added
# Accept-Encoding would hand the caller a compressed body it did not request.
_SKIPPED_CLIENT_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

# Methods that change nothing, so a request from another origin may use them.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Seconds after the start at which a gateway with `tune_gc` tunes the garbage
# collector, unless a healthy /healthz came first.
GC_TUNE_DELAY_S = 2.0


@dataclass(frozen=True, slots=True)
class _Handlers:
    sync: SyncProxy
    async_accept: AsyncAccept
    async_calls: AsyncCalls


class GatewayApp:
    """The ASGI app that uvicorn serves.

    With `tune_gc`, which only a process's entry point should pass, it tunes
    the garbage collector (`faashub.gc_tuning`) once: right after its first
    /healthz that returns 200, or GC_TUNE_DELAY_S after its start if that
    comes first. The collection took 35 to 45 ms on a 2-core VM shared with
    other work, and at the start it would delay the NATS connection and the
    healthy /healthz that `faashub up` waits for.
    """

    def __init__(self, settings: GatewaySettings, *, tune_gc: bool = False) -> None:
        self.settings = settings
        self.queue = CallQueue(
            settings.nats_url,
            nats_token=credentials.read_nats_token(settings.nats_token_file),
            duplicate_window_s=settings.duplicate_window_s,
            status_ttl_s=settings.status_ttl_s,
            dead_letter_max_age_s=settings.dead_letter_max_age_s,
        )
        self.dead_letters = DeadLetterStore(self.queue)
        self.metrics = GatewayMetrics()
        # Async calls accepted per function, counted by AsyncAccept for the console.
        self.async_accepted: dict[FunctionRef, int] = {}
        self._service_counts: ServiceCountRefresher | None = None
        self._provider_authorization = auth.provider_authorization(settings)
        # One record for every route that reaches the provider's /system/ API,
        # so that the warning about a rejected token has one rate limit.
        self._token_rejections = ProviderTokenRejections(
            settings.provider_url, token_sent=bool(self._provider_authorization)
        )
        self.system = system.create_app(
            settings,
            self.dead_letters,
            metrics=self.metrics,
            queue=self.queue,
            token_rejections=self._token_rejections,
        )
        self.console = Console(
            settings,
            system_app=self.system,
            gateway=self,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            queue=self.queue,
            async_accepted=self.async_accepted,
        )
        self._auth = auth.from_settings(settings)
        # None when the gateway listens beyond loopback with no allowed_hosts.
        self._host_check = guard.HostCheck.from_settings(
            listen_host=settings.host, allowed_hosts=settings.allowed_hosts
        )
        # None when invocations are open, so the invoke routes skip the check.
        self._invoke_auth: auth.Authenticator | None = (
            self._auth if settings.auth_invoke else None
        )
        self._max_header_count = settings.max_header_count
        self._max_header_bytes = settings.max_header_bytes
        self._handlers: _Handlers | None = None
        self._exit_stack = AsyncExitStack()
        self._gc_tune_pending = tune_gc
        self._delayed_gc_tune: asyncio.TimerHandle | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A websocket scope has a path too; a lifespan scope has none.
        path: str = scope.get("path", "")
        if scope["type"] == "http":
            handlers = self._handlers
            if len(scope["headers"]) > self._max_header_count or (
                limits.header_bytes(scope) > self._max_header_bytes
            ):
                await limits.reject_headers(
                    scope,
                    send,
                    max_count=self._max_header_count,
                    max_bytes=self._max_header_bytes,
                )
                return
            if self._invoke_auth is not None and path.startswith(auth.INVOKE_PREFIXES):
                if not await self._invoke_auth.admit(scope, send):
                    return
            if path.startswith(constants.FUNCTION_PREFIX):
                if handlers is None:
                    await _send_starting(send)
                    return
                if tracing.enabled:
                    await _serve_traced(
                        handlers.sync, scope, receive, send, constants.FUNCTION_PREFIX
                    )
                    return
                await handlers.sync(scope, receive, send)
                return
            if path.startswith(constants.ASYNC_FUNCTION_PREFIX):
                if handlers is None:
                    await _send_starting(send)
                elif scope["method"] == "DELETE":
                    await handlers.async_calls.cancel(
                        scope, send, prefix=constants.ASYNC_FUNCTION_PREFIX
                    )
                elif tracing.enabled:
                    await _serve_traced(
                        handlers.async_accept,
                        scope,
                        receive,
                        send,
                        constants.ASYNC_FUNCTION_PREFIX,
                    )
                else:
                    await handlers.async_accept(scope, receive, send)
                return
            if path.startswith(constants.ASYNC_CALLS_PREFIX):
                if handlers is None:
                    await _send_starting(send)
                else:
                    await handlers.async_calls(scope, receive, send)
                return
            if path == constants.HEALTH_PATH:
                await self._health(scope, send)
                return
            if path == METRICS_PATH:
                await self._serve_metrics(scope, send)
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        elif scope["type"] == "websocket":
            # No route of the gateway uses WebSocket, so reject the handshake
            # (uvicorn then responds with 403).
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        if path == "/" and scope["method"] in _SAFE_METHODS:
            # As in OpenFaaS, the root leads to the web console.
            location = auth.CONSOLE_PREFIX + "/"
            await asgi.send_text(
                send,
                307,
                f"The web console is at {location}\n",
                headers=[(b"location", location.encode())],
            )
            return
        is_console = path == auth.CONSOLE_PREFIX or path.startswith(
            auth.CONSOLE_PREFIX + "/"
        )
        # The console's own responses carry these headers; so do its rejections.
        reject_send = guard.with_security_headers(send) if is_console else send
        if self._host_check is not None and auth.is_protected_path(path):
            # Against DNS rebinding: a page of another site that resolves its
            # own name to this gateway passes the Origin check below.
            problem = self._host_check.problem(scope["headers"])
            if problem is not None:
                host = guard.header(scope["headers"], b"host") or ""
                _host_rejections.warning(
                    "rejected request for an unknown host",
                    ctx={"path": path, "host": host[:200]},
                )
                await asgi.send_text(reject_send, 403, problem + "\n")
                return
        if self._auth is not None and auth.is_protected_path(path):
            if not await self._auth.admit(scope, reject_send):
                return
        if (
            scope["type"] == "http"
            and scope["method"] not in _SAFE_METHODS
            and auth.is_system_path(path)
        ):
            # Browsers resend basic-auth credentials with requests that other
            # sites make; faas-cli and other API clients send no Origin.
            problem = guard.cross_origin_problem(scope["headers"])
            if problem is not None:
                await asgi.send_text(send, 403, problem + "\n")
                return
        if is_console:
            await self.console(scope, receive, send)
            return
        await self.system(scope, receive, send)

    async def _health(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await asgi.send_text(
                send,
                405,
                "Only GET and HEAD are allowed on /healthz.\n",
                headers=[(b"allow", b"GET, HEAD")],
            )
            return
        reason = self.queue.unavailable_reason()
        if self._handlers is None:
            reason = "the gateway is starting"
        if reason is None:
            await asgi.send_text(send, 200, "OK")
            self._tune_gc_once()
        else:
            await asgi.send_text(send, 503, f"Not ready: {reason}.\n")

    async def _serve_metrics(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await asgi.send_text(
                send,
                405,
                "Only GET and HEAD are allowed on /metrics.\n",
                headers=[(b"allow", b"GET, HEAD")],
            )
            return
        if self._service_counts is not None:
            await self._service_counts.refresh()
        # Rendered in a worker thread, so that calls keep flowing while a large
        # registry is rendered. prometheus_client locks each metric while it
        # reads it.
        body, content_type = await asyncio.to_thread(self.metrics.render)
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
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self._start()
        except Exception as exc:
            logger.exception("gateway failed to start")
            await self._exit_stack.aclose()
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        logger.info(
            "gateway started",
            extra={
                "ctx": {
                    "provider_url": self.settings.provider_url,
                    "nats_url": self.settings.nats_url,
                }
            },
        )

        await receive()  # lifespan.shutdown
        if self._delayed_gc_tune is not None:
            self._delayed_gc_tune.cancel()
        self._handlers = None
        self._service_counts = None
        self.dead_letters.unbind()
        try:
            await self._exit_stack.aclose()
        except Exception as exc:
            logger.exception("gateway failed to stop cleanly")
            await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            return
        logger.info("gateway stopped")
        await send({"type": "lifespan.shutdown.complete"})

    def _tune_gc_once(self) -> None:
        if not self._gc_tune_pending:
            return
        self._gc_tune_pending = False
        if self._delayed_gc_tune is not None:
            self._delayed_gc_tune.cancel()
        tune_gc()

    async def _start(self) -> None:
        stack = self._exit_stack
        settings = self.settings
        if self._gc_tune_pending:
            self._delayed_gc_tune = asyncio.get_running_loop().call_later(
                GC_TUNE_DELAY_S, self._tune_gc_once
            )

        # NATS first, so the connection attempts start as early as possible.
        await self.queue.start()
        stack.push_async_callback(self.queue.close)

        # One session and connection pool for every call to the provider.
        session = http_sessions.new_session(
            limit=constants.UPSTREAM_CONNECTION_LIMIT,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_read=settings.upstream_timeout_s
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIPPED_CLIENT_HEADERS,
            request_class=http_sessions.LeanRequest,
            trust_env=False,
        )
        await stack.enter_async_context(session)

        await stack.enter_async_context(
            self.system.router.lifespan_context(self.system)
        )

        provider_session = session
        if self._provider_authorization:
            provider_session = http_sessions.new_session(
                headers={"Authorization": self._provider_authorization},
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_read=settings.upstream_timeout_s
                ),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
            await stack.enter_async_context(provider_session)
        lookup = FunctionLookup(
            provider_session,
            settings.provider_url,
            ttl_s=settings.function_cache_ttl_s,
            token_rejections=self._token_rejections,
        )
        # Redriven callbacks go where callers chose, so they get the same
        # guarded session as the queue-worker's callbacks.
        guard = CallbackGuard.from_settings(
            deny_networks=settings.callback_deny_networks,
            allow=settings.callback_allow,
        )
        callback_session = new_callback_session(
            guard, limit=constants.CALLBACK_REDRIVE_CONNECTION_LIMIT
        )
        await stack.enter_async_context(callback_session)
        self.dead_letters.bind(
            session=session,
            lookup=lookup,
            callback_session=callback_session,
            callback_guard=guard,
            signing_secrets=callback_request.secrets_of(
                settings.callback_signing_secret,
                settings.callback_signing_secret_previous,
            ),
        )
        self._service_counts = ServiceCountRefresher(
            self.metrics,
            provider_session,
            settings.provider_url,
            token_rejections=self._token_rejections,
        )
        install_log_filter()
        self._handlers = _Handlers(
            sync=SyncProxy(
                session,
                settings.provider_url,
                upstream_timeout_s=settings.upstream_timeout_s,
                body_read_timeout_s=settings.body_read_timeout_s,
                replicas=ReplicaUrls(provider_session, settings.provider_url),
                metrics=self.metrics,
                authenticator=self._auth,
            ),
            async_accept=AsyncAccept(
                self.queue,
                lookup,
                max_body_bytes=settings.max_body_bytes,
                max_delay_s=settings.max_delay_s,
                body_read_timeout_s=settings.body_read_timeout_s,
                authenticator=self._auth,
                accepted=self.async_accepted,
            ),
            async_calls=AsyncCalls(self.queue),
        )


async def _serve_traced(
    handler: SyncProxy | AsyncAccept,
    scope: Scope,
    receive: Receive,
    send: Send,
    prefix: str,
) -> None:
    """Serve an invocation inside a server span (trace export is on)."""
    function, _ = asgi.split_invocation_path(scope, prefix)
    await tracing.serve_traced(
        handler,
        scope,
        receive,
        send,
        span_name=f"{scope['method']} {prefix}{{name}}",
        function=function,
    )


async def _send_starting(send: Send) -> None:
    await asgi.send_gateway_error(
        send, 503, "The gateway is starting or stopping; retry in a moment.\n"
    )
