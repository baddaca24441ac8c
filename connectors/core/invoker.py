"""Invoke one function for one message through the gateway, with retries.

The request is `POST {gateway_url}/function/NAME.NAMESPACE` (or
`/async-function/...` when async invocation is on) with the message body and
these headers, after the source's own (`X-Kafka-*` for Kafka):

* `X-Topic`: the message's topic, and `X-Connector`: `<name>-connector`;
* `Content-Type`, when configured;
* `X-Call-Id`: derived from the message's identity and the function, so a
  message delivered again after a crash carries the same id. The gateway
  uses it to drop a repeated async call within its duplicate window, and a
  function can use it to skip work it has already done;
* `X-Callback-Url`, for async invocations when a callback URL is configured;
* `Authorization`, with the connector's gateway credentials, only after the
  gateway rejected an invocation with 401 (its auth_invoke setting), because
  a gateway that does not check them would forward them to the function.

With sync invocation and `replicas` given, the request goes straight to a
function replica that the gateway reports (`GET
/system/function-endpoints/NAME?namespace=NS`, cached by
`faashub.replica_urls.ReplicaUrls`), which skips the gateway's and the
provider's hops. It carries the same headers, minus `Authorization`, which is
for the gateway only, plus those the gateway would add: `X-Start-Time` and
`X-Forwarded-Host`/`X-Forwarded-For`, with every name in Go's canonical
spelling. The request goes to the gateway's `/function/` instead when the
report lists no URL (for example a function at zero replicas, which the
gateway's route scales up), when the report failed less than a few seconds
ago, and when the replica refuses the connection. A direct call gets the
function's exec timeout from the report, when it is shorter than the
connector's upstream timeout, because the provider that would apply it is
skipped. Async invocations always go through the gateway, which queues them.
The session sends each request once (`faashub.http_sessions`), so no
failure other than a refused connection leads to a second route.

Temporary failures are retried as `connectors.core.retry` describes. A
gateway that refuses the connection is an outage, not a failure of the
function: the invoker logs it once, waits and tries again for as long as it
is not cancelled, without counting attempts, so delivery pauses instead of
filling the dead-letter destination.

All invocations share one aiohttp session, owned by the caller. This module
does not choose the functions (see `connectors.core.topic_map`) and does not
log results (see `connectors.core.connector`).
"""

import asyncio
import dataclasses
import functools
import hashlib
import logging
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import yarl
from multidict import CIMultiDict, CIMultiDictProxy, istr

from connectors.core import constants
from connectors.core.metrics import ConnectorMetrics
from connectors.core.outage import Outage, one_line
from connectors.core.retry import RetryPolicy, is_retryable, is_success
from faashub import constants as shared
from faashub import http_sessions, names, tracing
from faashub.credentials import InvocationCredentials
from faashub.headers import canonical_header_name
from faashub.replica_urls import (
    ExecTimeouts,
    ReplicaUrls,
    exec_timeout_message,
    shorter_exec_timeout_s,
)

logger = logging.getLogger(__name__)

# The part of a platform error's text that a failure reason repeats.
FAILURE_TEXT_MAX_BYTES = 300
# The component that made up an error response, by its X-OpenFaaS-Internal value.
_INTERNAL_SOURCES = {
    "gateway": "The gateway",
    "proxy": "The provider",
    "provider": "The provider",
}

# Namespace of the name-based (version 5) UUIDs used as call ids.
CALL_ID_NAMESPACE = uuid.UUID("5f0c8a43-7d1e-4f0b-9a57-2b61d9f4c1e8")
# SHA-1 state after the namespace bytes, copied for each call id.
_CALL_ID_HASH = hashlib.sha1(CALL_ID_NAMESPACE.bytes)
# The UUID variant bits (RFC 4122) replace the two high bits of the fourth
# group's first hex digit, so that digit becomes 8, 9, a or b. This table maps
# each hex digit to its replacement.
_VARIANT_DIGITS = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}

# Upper bound on the pause between two attempts to reach a gateway that
# refuses connections, so delivery resumes within seconds of its return.
GATEWAY_PROBE_MAX_WAIT_S = 5.0

# Parsed replica URLs kept for reuse. The cache starts over when it is full,
# since replicas come and go.
MAX_CACHED_REPLICA_URLS = 1024

# Header names are multidict `istr` objects, which carry their case-folded
# form. aiohttp merges each request's headers into a CIMultiDict, which folds
# the case of every plain str name on every request. That took about 2 µs per
# request for a dozen headers (timeit, aiohttp 3.14.5, multidict 6.9.1, on a
# 2-vCPU AMD EPYC VM).
_TOPIC = istr(constants.TOPIC)
_CALL_ID = istr(shared.CALL_ID)
_START_TIME = istr(shared.START_TIME)
_AUTHORIZATION = istr("Authorization")


@functools.lru_cache(maxsize=1024)
def _canonical_name(name: str) -> istr:
    """Spell a header name as Go does, which functions behind OpenFaaS expect.

    The gateway does the same on its way to a replica. Source headers repeat
    their names from message to message, so the spellings are cached.
    """
    return istr(canonical_header_name(name))


def _no_headers() -> Mapping[str, str]:
    return CIMultiDictProxy(CIMultiDict())


@dataclass(slots=True)
class Message:
    """One message from a source, as the core delivers it to functions."""

    topic: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Source-specific HTTP headers, sent before the core's own."""
    identity: str = ""
    """Stable id of the message at its source, such as topic, partition and
    offset; it seeds the call ids. Empty gives each invocation a random id."""
    context: dict[str, object] = field(default_factory=dict)
    """Fields added to every log line about this message."""


@dataclass(slots=True)
class InvocationResult:
    """The final outcome of invoking one function for one message."""

    function: names.FunctionRef
    topic: str
    call_id: str
    status: int
    """The function's HTTP status, or 504 or 413 made up by the connector."""
    attempts: int
    """Requests sent; 0 when the message was rejected before any."""
    duration_s: float
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    body: bytes = b""
    error: str = ""
    """The reason for a failed outcome, or "" on success."""

    @property
    def succeeded(self) -> bool:
        """Whether the function handled the message (a 2xx status)."""
        return is_success(self.status)


@dataclass(slots=True)
class _Response:
    status: int
    headers: Mapping[str, str] = field(default_factory=_no_headers)
    body: bytes = b""
    error: str = ""
    gateway_unreachable: bool = False
    replica_refused: bool = False


class Invoker:
    """Sends messages to functions through the gateway.

    `session` comes from `new_session()`, whose requests carry no
    Content-Type unless `content_type` is set.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        gateway_url: str,
        connector: str,
        retry: RetryPolicy,
        metrics: ConnectorMetrics,
        timeout_s: float,
        async_invocation: bool = False,
        callback_url: str = "",
        content_type: str = "",
        max_body_bytes: int = 0,
        authorization: str = "",
        replicas: ReplicaUrls | None = None,
        forwarded_for: str = "",
    ) -> None:
        self._session = session
        self._connector = connector
        route = "/async-function/" if async_invocation else "/function/"
        self._gateway_url = yarl.URL(gateway_url)
        self._base_url = gateway_url.rstrip("/") + route
        # Async calls must reach the gateway, which queues them.
        self._replicas = None if async_invocation else replicas
        self._retry = retry
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Timeouts of direct calls, by the function's exec timeout in seconds.
        self._exec_timeouts = ExecTimeouts()
        self._max_body_bytes = max_body_bytes
        # Parsed once: aiohttp parses a URL given as text on every request.
        self._urls: dict[names.FunctionRef, yarl.URL] = {}
        self._replica_urls: dict[str, yarl.URL] = {}
        self._outage = Outage("gateway", consequence="pausing invocations")

        # Headers the core adds to every request, after the source's own.
        self._fixed_headers: list[tuple[str, str]] = [
            (istr(constants.CONNECTOR), f"{connector}-connector")
        ]
        if content_type:
            self._fixed_headers.append((istr(constants.CONTENT_TYPE), content_type))
        if async_invocation and callback_url:
            self._fixed_headers.append((istr(shared.CALLBACK_URL), callback_url))
        # Headers of direct calls to a replica: the same, never Authorization,
        # plus those the gateway adds.
        self._replica_headers: list[tuple[str, str]] = [
            *self._fixed_headers,
            (
                istr(shared.FORWARDED_HOST),
                self._gateway_url.host_port_subcomponent or "",
            ),
        ]
        if forwarded_for:
            self._replica_headers.append((istr(shared.FORWARDED_FOR), forwarded_for))
        self._credentials = InvocationCredentials(authorization)

    async def invoke(
        self, function: names.FunctionRef, message: Message
    ) -> InvocationResult:
        """Invoke `function` with `message` until the outcome is final.

        Returns the final outcome; raises only when cancelled. With trace
        export on, the invocation and its retries run inside one span.
        """
        if tracing.enabled:
            return await self._invoke_traced(function, message)
        return await self._invoke(function, message)

    async def _invoke_traced(
        self, function: names.FunctionRef, message: Message
    ) -> InvocationResult:
        span = tracing.start_span(
            f"{self._connector} invoke",
            kind="consumer",
            parent_headers=message.headers,
            attributes={
                **tracing.function_attributes(str(function)),
                **tracing.source_attributes(
                    self._connector, message.topic, message.context
                ),
                "faashub.call_id": call_id_for(message.identity, function),
            },
        )
        try:
            result = await self._invoke(
                function,
                dataclasses.replace(
                    message, headers=tracing.with_trace_headers(message.headers, span)
                ),
            )
        except BaseException as exc:
            span.record_exception(exc)
            span.end()
            raise
        span.set_attribute("faashub.attempts", result.attempts)
        span.set_http_status(result.status)
        span.end()
        return result

    async def _invoke(
        self, function: names.FunctionRef, message: Message
    ) -> InvocationResult:
        call_id = call_id_for(message.identity, function)
        body_bytes = len(message.body)
        if self._max_body_bytes and body_bytes > self._max_body_bytes:
            return InvocationResult(
                function=function,
                topic=message.topic,
                call_id=call_id,
                status=413,
                attempts=0,
                duration_s=0.0,
                error=f"The message body of {body_bytes} bytes exceeds the "
                f"connector's max_body_bytes of {self._max_body_bytes}.",
            )

        started_s = time.monotonic()
        response = await self._attempt(message, function=function, call_id=call_id)
        attempts = 1
        if response.gateway_unreachable or self._should_retry(response, attempts):
            response, attempts = await self._retry_until_final(
                response, message, function=function, call_id=call_id
            )
        elif self._outage.active:
            self._outage.end()
        return InvocationResult(
            function=function,
            topic=message.topic,
            call_id=call_id,
            status=response.status,
            attempts=attempts,
            duration_s=time.monotonic() - started_s,
            headers=response.headers,
            body=response.body,
            error=response.error,
        )

    def _should_retry(self, response: _Response, attempts: int) -> bool:
        return (
            not is_success(response.status)
            and is_retryable(response.status)
            and attempts < self._retry.attempts
        )

    async def _retry_until_final(
        self,
        response: _Response,
        message: Message,
        *,
        function: names.FunctionRef,
        call_id: str,
    ) -> tuple[_Response, int]:
        """Retry after a first `response` that was not final; return the last one.

        The first attempt runs in `invoke()` itself, so that a success costs
        no call of this loop.
        """
        attempts = 0
        outage_waits = 0
        while True:
            if response.gateway_unreachable:
                # The request never reached the gateway: wait, uncounted.
                self._outage.begin(response.error)
                outage_waits += 1
                wait_s = min(self._retry.wait_s(outage_waits), GATEWAY_PROBE_MAX_WAIT_S)
            else:
                self._outage.end()
                outage_waits = 0
                attempts += 1
                if not self._should_retry(response, attempts):
                    return response, attempts
                wait_s = self._retry.wait_s(
                    attempts,
                    retry_after_s=self._retry.retry_after_s(
                        response.status, response.headers.get("Retry-After")
                    ),
                )
                self._log_retry(
                    response,
                    message,
                    function=function,
                    call_id=call_id,
                    attempts=attempts,
                    wait_s=wait_s,
                )
            await self._retry.sleep(wait_s)
            response = await self._attempt(message, function=function, call_id=call_id)

    def _log_retry(
        self,
        response: _Response,
        message: Message,
        *,
        function: names.FunctionRef,
        call_id: str,
        attempts: int,
        wait_s: float,
    ) -> None:
        self._metrics.retried(str(function))
        context: dict[str, object] = {
            "function": str(function),
            "topic": message.topic,
            "call_id": call_id,
            "status": response.status,
            "attempt": attempts,
            "wait_s": round(wait_s, 2),
        }
        if response.error:
            context["error"] = response.error
        context.update(message.context)
        logger.warning("invocation failed, retrying", extra={"ctx": context})

    async def _attempt(
        self, message: Message, *, function: names.FunctionRef, call_id: str
    ) -> _Response:
        """Send one attempt to a reported replica if any, else to the gateway.

        The headers are built for the route taken, once per attempt.
        """
        if self._replicas is not None:
            replica = await self._replicas.pick(function)
            if replica is not None:
                response = await self._send(
                    self._replica_request_url(replica.url),
                    self._headers_for_replica(message, call_id),
                    message.body,
                    function=function,
                    to_replica=True,
                    exec_timeout_s=shorter_exec_timeout_s(replica, self._timeout_s),
                )
                if not response.replica_refused:
                    self._replicas.record_call(function)
                    return response
                # The replica is gone, for example scaled down: the gateway's
                # route finds the function's current replicas.
                self._replicas.forget(function, replica.url)
                logger.debug(
                    "replica refused the connection; invoking through the gateway",
                    extra={
                        "ctx": {
                            "function": str(function),
                            "call_id": call_id,
                            "topic": message.topic,
                            **message.context,
                            "error": response.error,
                        }
                    },
                )
        response = await self._send_to_gateway(message, function, call_id)
        if response.status == 401 and self._credentials.require_after(
            response.status, context={"function": str(function), "call_id": call_id}
        ):
            response = await self._send_to_gateway(message, function, call_id)
        return response

    async def _send_to_gateway(
        self, message: Message, function: names.FunctionRef, call_id: str
    ) -> _Response:
        return await self._send(
            self._gateway_request_url(function),
            self._headers_for_gateway(message, call_id),
            message.body,
            function=function,
        )

    def _gateway_request_url(self, function: names.FunctionRef) -> yarl.URL:
        url = self._urls.get(function)
        if url is None:
            url = self._urls[function] = yarl.URL(f"{self._base_url}{function}")
        return url

    def _replica_request_url(self, replica_url: str) -> yarl.URL:
        url = self._replica_urls.get(replica_url)
        if url is None:
            if len(self._replica_urls) >= MAX_CACHED_REPLICA_URLS:
                self._replica_urls.clear()
            url = self._replica_urls[replica_url] = yarl.URL(replica_url + "/")
        return url

    def _headers_for_gateway(
        self, message: Message, call_id: str
    ) -> list[tuple[str, str]]:
        headers = [
            *message.headers,
            (_TOPIC, message.topic),
            *self._fixed_headers,
            (_CALL_ID, call_id),
        ]
        if self._credentials.header:
            headers.append((_AUTHORIZATION, self._credentials.header))
        return headers

    def _headers_for_replica(
        self, message: Message, call_id: str
    ) -> list[tuple[str, str]]:
        headers: list[tuple[str, str]] = [
            (_canonical_name(name), value) for name, value in message.headers
        ]
        headers += [
            (_TOPIC, message.topic),
            *self._replica_headers,
            (_CALL_ID, call_id),
            (_START_TIME, str(time.time_ns())),
        ]
        return headers

    async def _send(
        self,
        url: yarl.URL,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        function: names.FunctionRef,
        to_replica: bool = False,
        exec_timeout_s: float | None = None,
    ) -> _Response:
        """Send one request; `exec_timeout_s` replaces the upstream timeout."""
        timeout = self._timeout
        if exec_timeout_s is not None:
            timeout = self._exec_timeouts.get(exec_timeout_s)
        try:
            # Awaited, not entered with `async with`, because the context
            # manager adds two coroutine frames that are resumed on every wait
            # of the request. read() waits until the body has been written, so
            # release() does the rest of what leaving the context does.
            response = await self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
            )
            try:
                content = await response.read()
            finally:
                response.release()
        except aiohttp.ClientConnectorError as exc:
            if to_replica:
                return _Response(
                    status=503,
                    error=f"Cannot connect to {url}: {exc.os_error or exc}",
                    replica_refused=True,
                )
            return _Response(
                status=503,
                error=f"Cannot connect to the gateway: {exc.os_error or exc}",
                gateway_unreachable=True,
            )
        except TimeoutError:
            if exec_timeout_s is not None:
                return _Response(
                    status=504,
                    error=exec_timeout_message(str(function), exec_timeout_s),
                )
            return _Response(
                status=504,
                error=f"No response from {function} within "
                f"{self._timeout.total:g} s (upstream_timeout_s).",
            )
        except (aiohttp.ClientError, OSError) as exc:
            return _Response(
                status=503,
                error=f"The request to {function} failed: "
                f"{exc.__class__.__name__}: {exc}",
            )
        status = response.status
        if is_success(status):
            return _Response(status, response.headers, content)
        return _Response(
            status,
            response.headers,
            content,
            error=failure_reason(
                function, status, response.headers, content, to_replica=to_replica
            ),
        )


def failure_reason(
    function: names.FunctionRef,
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    to_replica: bool,
) -> str:
    """Return why an invocation failed, naming who returned the error status.

    The gateway and the provider mark the failures they make up themselves,
    such as a 504 for a function's exec timeout or a 503 for a function that
    cannot start, with X-OpenFaaS-Internal, and their text gives the reason. A
    replica's unmarked error is the function's own. Through the gateway, an
    unmarked error may also be the gateway's reply to the request itself,
    such as 431 for too many headers.
    """
    source = headers.get(shared.OPENFAAS_INTERNAL)
    if not source:
        if to_replica:
            return f"{function} returned HTTP {status}."
        return f"The call of {function} through the gateway returned HTTP {status}."
    text = one_line(content[:FAILURE_TEXT_MAX_BYTES].decode("utf-8", "replace"))
    component = _INTERNAL_SOURCES.get(source, source)
    if not text:
        return f"{component} returned HTTP {status} for {function}."
    return f"{component} returned HTTP {status} for {function}: {text}"


def call_id_for(identity: str, function: names.FunctionRef) -> str:
    """Return the X-Call-Id of a message's invocation of `function`.

    The id is `uuid.uuid5(CALL_ID_NAMESPACE, identity + "\\n" + function)`, so
    the same message identity and function always give the same id; an empty
    identity gives a random one.
    """
    if not identity:
        return str(uuid.uuid4())
    # The same text as str(uuid.uuid5()) in about a third of its time, which
    # counts once per invocation on the data path.
    digest = _CALL_ID_HASH.copy()
    digest.update(f"{identity}\n{function}".encode())
    text = digest.hexdigest()
    # Version 5 replaces the first digit of the third group, and the variant
    # the two high bits of the fourth group's first digit.
    variant = _VARIANT_DIGITS[text[16]]
    return (
        f"{text[:8]}-{text[8:12]}-5{text[13:16]}-{variant}{text[17:20]}-{text[20:32]}"
    )


async def local_address_towards(gateway_url: str) -> str:
    """Return this host's IP address on the route to the gateway, or "" if unknown.

    It is what the gateway would see as the connector's address and send as
    X-Forwarded-For. Connecting a UDP socket picks the route and the source
    address without sending any packet.
    """
    url = yarl.URL(gateway_url)
    if url.host is None or url.port is None:
        return ""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_DGRAM)
        family, kind, protocol, _, address = infos[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.connect(address)
            return str(probe.getsockname()[0])
    except (OSError, IndexError) as exc:
        logger.debug(
            "no local address towards the gateway; X-Forwarded-For not sent: %s",
            exc,
            extra={"ctx": {"gateway_url": gateway_url}},
        )
        return ""


def new_session(
    *, user_agent: str, body_content_type: bool = False
) -> aiohttp.ClientSession:
    """Return the aiohttp session that carries a connector's invocations.

    The pool has no connection limit: max_inflight times the subscribers of a
    topic already bounds the requests open at once, and a request queued for
    a connection would spend its upstream timeout waiting. Requests carry
    User-Agent and the caller's headers only: no Accept or Accept-Encoding,
    and no Content-Type unless the caller's headers have one. With
    `body_content_type`, a request gets the Content-Type of its body as aiohttp
    sets it instead, such as `application/json` for `json=`, and
    `application/octet-stream` for bytes.
    """
    # Skipped for the whole session rather than per request, because aiohttp
    # 3.14 builds a set of the names on each request that passes them. That
    # took about 1.3 µs per request (timeit, aiohttp 3.14.5, 2-vCPU VM).
    skip_auto_headers = () if body_content_type else (constants.CONTENT_TYPE,)
    return http_sessions.new_session(
        limit=0,
        # The function's response body is passed on as it was sent.
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": user_agent},
        skip_auto_headers=skip_auto_headers,
        request_class=http_sessions.LeanRequest,
    )
