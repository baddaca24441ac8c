"""The sync invocation proxy: `/function/NAME[.NS][/path]`, every method.

A caller's request goes straight to one of the function's replicas,
`{replica_url}[/path]?query`, when the provider reports replica URLs for it
(`gateway.replica_urls`). Otherwise it goes to the provider,
`{provider_url}/function/NAME[.NS][/path]?query`: when the function has
zero replicas (the provider scales it from zero), when the report failed or
listed no URL, and when the replica refused the connection. The request
keeps its method, headers (minus hop-by-hop ones) and body, and the
response comes back with its status, headers and body unchanged. Bodies are
streamed both ways, so large uploads, downloads and server-sent events pass
through without being held in memory. The gateway adds the OpenFaaS call
headers: X-Call-Id (kept from the caller, or new), X-Start-Time (replaced),
X-Forwarded-Host and X-Forwarded-For (unless present), and on the response
X-Served-By. To a replica, header names go in Go's canonical spelling
(`X-Call-Id`), as the provider's own proxy sends them.

A call sent to a replica skips what the provider does per call: its
`function invoked` log line, its invocation counter and its choice of the
least busy replica. The gateway applies the function's exec timeout itself,
from the provider's report: a call that exceeds it gets the provider's 504
text, marked `X-OpenFaaS-Internal: gateway`, or an incomplete body when the
response had already started.

`upstream_timeout_s` bounds the time until the response headers arrive;
after that it bounds each wait for the next piece of the body. A provider or
replica that is too slow gives 504 naming the setting, and one that fails
gives 502, both marked `X-OpenFaaS-Internal: gateway`. OpenFaaS's gateway
returns 502 for both. One that refuses the connection gives 503 with
Retry-After instead, because nothing reached the function. The caller's
request body must arrive whole within `body_read_timeout_s` of the first
read, else 408. A caller that disconnects while the gateway waits for the
response headers cancels the upstream request. The proxy neither looks the
function up nor sends a request twice (its session comes from
`faashub.http_sessions`), except once to the provider after a replica
refused the connection: an unknown function is the provider's 404.
"""

import asyncio
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass

import aiohttp
import yarl
from starlette.types import Message, Receive, Scope, Send

from faashub import constants as shared
from faashub import errors as shared_errors
from faashub import names
from faashub.headers import canonical_header_name, is_utf8, non_utf8_value_message
from faashub.incomplete_response import mark_broken_off
from faashub.logs import LimitedWarning
from faashub.replica_urls import ExecTimeouts, Replica, exec_timeout_message
from gateway import asgi, constants, errors, limits
from gateway.auth import Authenticator
from gateway.call_ids import check_call_id, new_call_id
from gateway.metrics import GatewayMetrics
from gateway.replica_urls import ReplicaUrls

logger = logging.getLogger(__name__)

# Request headers that are not forwarded, beside the hop-by-hop ones. The
# HTTP client sets Host for the provider, uvicorn has already handled any
# `Expect: 100-continue`, and the gateway sets X-Start-Time itself.
_REQUEST_HEADERS_NOT_FORWARDED = shared.HOP_BY_HOP | {"host", "expect", "x-start-time"}

# Response headers that are not passed back, beside those that
# `asgi.pass_response_headers` always drops: the gateway sets them itself.
_RESPONSE_HEADERS_NOT_PASSED = frozenset(
    {b"x-call-id", b"x-start-time", b"x-served-by"}
)

_SERVED_BY_HEADER = (shared.SERVED_BY.lower().encode(), constants.SERVED_BY.encode())
# Sent with the 503 for an upstream that refused the connection.
_RETRY_AFTER_HEADER = (b"retry-after", b"1")


# Cached, because the same few header names come with every request.
_canonical_name = functools.lru_cache(maxsize=1024)(canonical_header_name)


class _Outcome(enum.Enum):
    """The party that ended a call, as the metrics count it."""

    FUNCTION = "function"
    """The function made the response, so it exists."""
    PLATFORM = "platform"
    """The gateway or the provider made the response, or none was sent."""
    CALLER_LEFT = "caller-left"
    """The caller disconnected before the response started."""


# The status code counted for a call whose caller disconnected before the
# response started. Nothing is sent to the caller. 499 is nginx's code for a
# client that closed the request, and it is no success in any dashboard.
CALLER_LEFT_STATUS = 499


class _ClientDisconnected(Exception):
    """The caller went away while its request body was being forwarded."""


class _BodyReadTimedOut(Exception):
    """The caller did not send its request body within body_read_timeout_s."""


class _RequestBody:
    """A request body that arrives in several ASGI messages, read on demand.

    The whole body must arrive by `deadline_s` (event loop time).
    """

    def __init__(
        self, first_chunk: bytes, receive: Receive, *, deadline_s: float
    ) -> None:
        self._first_chunk = first_chunk
        self._receive = receive
        self._deadline_s = deadline_s
        self.started = False
        self.complete = False
        self.disconnected = False
        self.timed_out = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        yield self._first_chunk
        while True:
            try:
                async with asyncio.timeout_at(self._deadline_s):
                    message = await self._receive()
            except TimeoutError:
                self.timed_out = True
                raise _BodyReadTimedOut from None
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise _ClientDisconnected
            chunk: bytes = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                self.complete = True
                return


class SyncProxy:
    """The ASGI handler of `/function/...`.

    `replicas` defaults to a ReplicaUrls cache on `session` and
    `provider_url`. With `metrics`, each call with a valid function name is
    counted: started before it goes upstream, and finished with the status
    the caller got (see `GatewayMetrics` for the names that get series of
    their own). A call whose caller leaves before the response starts is
    cancelled upstream and counted with CALLER_LEFT_STATUS. An Authorization
    header that `authenticator` accepts carries the gateway's own
    credentials, so it is not forwarded.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        provider_url: str,
        *,
        upstream_timeout_s: float,
        body_read_timeout_s: float = 30.0,
        replicas: ReplicaUrls | None = None,
        metrics: GatewayMetrics | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._session = session
        self._authenticator = authenticator
        self._metrics = metrics
        self._provider_url = provider_url.rstrip("/")
        self._upstream_timeout_s = upstream_timeout_s
        self._body_read_timeout_s = body_read_timeout_s
        self._replicas = replicas or ReplicaUrls(session, provider_url)
        self._replica_timeouts = ExecTimeouts(sock_read_s=upstream_timeout_s)
        self._timeout_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        self._unreachable_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )
        self._broken_response_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, path_suffix = asgi.split_invocation_path(scope, constants.FUNCTION_PREFIX)
        try:
            names.parse_function_ref(name)
        except shared_errors.InvalidFunctionName as exc:
            await asgi.send_text(send, 400, f"{exc}\n")
            return
        metrics = self._metrics
        if metrics is None:
            await self._proxy(scope, receive, send, name, path_suffix)
            return

        start_counted = metrics.invocation_started(name)
        started_s = time.perf_counter()
        status = 0
        outcome = _Outcome.PLATFORM

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            outcome = await self._proxy(
                scope, receive, send_and_note_status, name, path_suffix
            )
        finally:
            if not status and outcome is _Outcome.CALLER_LEFT:
                status = CALLER_LEFT_STATUS
            if status:
                metrics.invocation_finished(
                    name,
                    status,
                    time.perf_counter() - started_s,
                    function_responded=outcome is _Outcome.FUNCTION,
                    start_counted=start_counted,
                )

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, name: str, path_suffix: str
    ) -> _Outcome:
        """Proxy one call and return its outcome.

        The outcome is FUNCTION for a response that a replica sent, or that
        the provider passed on from the function. The provider's 404 (an
        unknown function), a response that the provider marked
        X-OpenFaaS-Internal and every response that the gateway made are
        PLATFORM.
        """
        try:
            headers, call_id = _upstream_headers(scope, self._authenticator)
        except errors.InvalidRequest as exc:
            await asgi.send_text(send, 400, f"{exc}\n")
            return _Outcome.PLATFORM
        start_time = str(time.time_ns())
        headers.append((shared.START_TIME, start_time))
        call = _Call(
            function=name,
            call_id=call_id,
            own_headers=[
                (b"x-call-id", call_id.encode("latin-1")),
                (b"x-start-time", start_time.encode()),
                _SERVED_BY_HEADER,
            ],
        )

        # Read the first piece of the body. Most requests fit in one message
        # and are sent as bytes. Longer ones are streamed, and their later
        # pieces share the deadline set here.
        try:
            async with asyncio.timeout(self._body_read_timeout_s) as body_timeout:
                message = await receive()
        except TimeoutError:
            await self._send_body_read_timeout(call, send)
            return _Outcome.PLATFORM
        if message["type"] == "http.disconnect":
            return _Outcome.CALLER_LEFT
        first_chunk: bytes = message.get("body", b"")
        request_body: _RequestBody | None = None
        data: bytes | AsyncIterator[bytes] | None = first_chunk or None
        if message.get("more_body", False):
            deadline_s = body_timeout.when()
            assert deadline_s is not None
            request_body = _RequestBody(first_chunk, receive, deadline_s=deadline_s)
            data = request_body.chunks()

        query: bytes = scope.get("query_string", b"")
        target = _Target(
            function=name,
            path_suffix=path_suffix,
            query="?" + query.decode("latin-1") if query else "",
            replica=await self._replicas.pick(name),
        )
        opening = self._open(
            call,
            send,
            method=scope["method"],
            target=target,
            headers=headers,
            data=data,
            request_body=request_body,
        )
        if request_body is None:
            # The whole body has arrived, so `receive` is free to report a
            # caller that disconnects while the function runs.
            response = await _unless_caller_leaves(opening, receive)
        else:
            response = await opening
        if response is _CALLER_LEFT:
            logger.debug(
                "caller went away before the response; call cancelled",
                extra=call.log_extra(),
            )
            return _Outcome.CALLER_LEFT
        if response is None:
            if request_body is not None and request_body.disconnected:
                return _Outcome.CALLER_LEFT
            return _Outcome.PLATFORM
        assert isinstance(response, aiohttp.ClientResponse)
        if target.replica is not None or (
            response.status != 404 and shared.OPENFAAS_INTERNAL not in response.headers
        ):
            outcome = _Outcome.FUNCTION
        else:
            outcome = _Outcome.PLATFORM

        try:
            # `receive` is free for watching the caller only once the upload
            # has read the whole request body.
            watch_disconnect = request_body is None or request_body.complete
            complete = await self._relay(
                call,
                response,
                receive,
                send,
                is_head=scope["method"] == "HEAD",
                watch_disconnect=watch_disconnect,
                exec_timeout_s=target.exec_timeout_s,
            )
        finally:
            response.release()
        if not complete:
            # This runs in uvicorn's task of the request, where uvicorn logs
            # the incomplete response once this handler returns.
            mark_broken_off()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("proxied call", extra=call.log_extra(status=response.status))
        return outcome

    async def _open(
        self,
        call: "_Call",
        send: Send,
        *,
        method: str,
        target: "_Target",
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        request_body: _RequestBody | None,
    ) -> aiohttp.ClientResponse | None:
        """Send the request upstream and wait for the response headers.

        A replica that refuses the connection never saw the request, so the
        request goes to the provider then, unless part of a streamed body was
        already read. No other failure leads to a second attempt, because the
        function may have received the request. A call sent to a replica gets
        the function's exec timeout, which the provider would apply on its
        route. On failure, send the caller a 504 (timed out), 502 (failed) or
        408 (the caller's body came too slowly) and return None.
        """
        upstream = f"the provider at {self._provider_url}"
        # The exec timeout of the replica route, or None once the provider
        # route is taken (the provider applies it there).
        exec_timeout_s: float | None = None
        upstream_timeout = asyncio.timeout(self._upstream_timeout_s)
        try:
            async with upstream_timeout:
                replica = target.replica
                if replica is not None:
                    upstream = f"the replica at {replica.url}"
                    exec_timeout_s = replica.exec_timeout_s
                    try:
                        return await self._session.request(
                            method,
                            target.replica_request_url(),
                            headers=[
                                (_canonical_name(name), value)
                                for name, value in headers
                            ],
                            data=data,
                            allow_redirects=False,
                            timeout=self._replica_timeouts.get(exec_timeout_s),
                        )
                    except aiohttp.ClientConnectorError as exc:
                        self._replicas.forget(target.function, replica.url)
                        if request_body is not None and request_body.started:
                            raise
                        logger.debug(
                            "replica refused the connection; trying the provider",
                            extra=call.log_extra(error=str(exc)),
                        )
                        if request_body is not None:
                            data = request_body.chunks()
                        upstream = f"the provider at {self._provider_url}"
                        exec_timeout_s = None
                return await self._session.request(
                    method,
                    target.provider(self._provider_url),
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                )
        except TimeoutError:
            if request_body is not None and request_body.timed_out:
                await self._send_body_read_timeout(call, send)
                return None
            if exec_timeout_s is not None and not upstream_timeout.expired():
                await self._send_exec_timeout(call, send, exec_timeout_s)
                return None
            await self._send_upstream_timeout(call, send)
            return None
        except aiohttp.ClientError as exc:
            if request_body is not None and request_body.disconnected:
                logger.debug("caller went away during upload", extra=call.log_extra())
                return None
            if request_body is not None and request_body.timed_out:
                await self._send_body_read_timeout(call, send)
                return None
            error = str(exc) or repr(exc)
            self._unreachable_warnings.warning(
                "cannot reach upstream",
                ctx=call.context(upstream=upstream, error=error),
            )
            if isinstance(exc, aiohttp.ClientConnectorError):
                # Nothing reached the function, so the caller may retry as
                # it would after a 503: the queue-worker does, without
                # counting an attempt.
                text = (
                    f"Cannot reach {upstream} for function {call.function!r}: "
                    f"{error}. Nothing was sent to the function. Check that the "
                    "provider and the function are running, and retry.\n"
                )
                await asgi.send_gateway_error(
                    send,
                    503,
                    text,
                    headers=[*call.own_headers, _RETRY_AFTER_HEADER],
                )
                return None
            else:
                # Connected, then the function broke off: the address and
                # aiohttp's wording would only mislead.
                text = (
                    f"Function {call.function!r} closed the connection before it "
                    f"sent a whole response ({type(exc).__name__}). Check the "
                    "function's logs: it may have crashed or stopped reading "
                    "the request body, or its replica was stopped by a scale-down "
                    "or an update while the call ran.\n"
                )
        await asgi.send_gateway_error(send, 502, text, headers=call.own_headers)
        return None

    async def _send_exec_timeout(
        self, call: "_Call", send: Send, exec_timeout_s: float
    ) -> None:
        self._timeout_warnings.warning(
            "function exceeded its exec timeout",
            ctx=call.context(exec_timeout_s=exec_timeout_s),
        )
        text = exec_timeout_message(call.function, exec_timeout_s) + "\n"
        await asgi.send_gateway_error(send, 504, text, headers=call.own_headers)

    async def _send_upstream_timeout(self, call: "_Call", send: Send) -> None:
        self._timeout_warnings.warning("function timed out", ctx=call.context())
        text = (
            f"Function {call.function!r} timed out: no response within "
            f"{self._upstream_timeout_s:g} s (upstream_timeout_s). Make the "
            "function faster, or raise the gateway's --upstream-timeout-s.\n"
        )
        await asgi.send_gateway_error(send, 504, text, headers=call.own_headers)

    async def _send_body_read_timeout(self, call: "_Call", send: Send) -> None:
        logger.info(
            "request body timed out",
            extra=call.log_extra(body_read_timeout_s=self._body_read_timeout_s),
        )
        await limits.send_body_read_timeout(send, timeout_s=self._body_read_timeout_s)

    async def _relay(
        self,
        call: "_Call",
        response: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        *,
        is_head: bool,
        watch_disconnect: bool,
        exec_timeout_s: float | None,
    ) -> bool:
        """Send the upstream response back to the caller.

        `exec_timeout_s` is the exec timeout of a call sent to a replica, for
        the message when the response exceeds it. Return False when the body
        broke off after the status line was sent.
        """
        status = response.status
        headers = asgi.pass_response_headers(
            response.raw_headers, status, dropped=_RESPONSE_HEADERS_NOT_PASSED
        )
        headers.extend(call.own_headers)
        start = {"type": "http.response.start", "status": status, "headers": headers}

        # A small body of known length is read whole, so that a failure while
        # reading it can still become a 502, and it goes out in one message.
        length = response.content_length
        if is_head or (length is not None and length <= constants.SMALL_RESPONSE_BYTES):
            try:
                body = await response.read()
            except TimeoutError as exc:
                if exec_timeout_s is not None and _is_total_timeout(exc):
                    await self._send_exec_timeout(call, send, exec_timeout_s)
                else:
                    await self._send_upstream_timeout(call, send)
                return True
            except aiohttp.ClientError as exc:
                error = _describe(exc)
                self._broken_response_warnings.warning(
                    "provider response broke off", ctx=call.context(error=error)
                )
                await asgi.send_gateway_error(
                    send,
                    502,
                    f"The response of function {call.function!r} broke off: {error}.\n",
                    headers=call.own_headers,
                )
                return True
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return True

        await send(start)
        if watch_disconnect:
            return await self._copy_body_until_disconnect(
                call, response, receive, send, exec_timeout_s=exec_timeout_s
            )
        return await self._copy_body(
            call, response, send, exec_timeout_s=exec_timeout_s
        )

    async def _copy_body(
        self,
        call: "_Call",
        response: aiohttp.ClientResponse,
        send: Send,
        *,
        exec_timeout_s: float | None,
    ) -> bool:
        """Stream the upstream body to the caller, piece by piece.

        Return False when the body broke off, so the response stays
        incomplete.
        """
        try:
            async for chunk in response.content.iter_any():
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": True}
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line is already sent, so the only signal left is to
            # leave the response incomplete. uvicorn then closes the connection.
            error = _describe(exc)
            if exec_timeout_s is not None and _is_total_timeout(exc):
                error = f"exceeded its exec timeout of {exec_timeout_s:g} s"
            self._broken_response_warnings.warning(
                "provider response broke off", ctx=call.context(error=error)
            )
            return False
        await send({"type": "http.response.body", "body": b""})
        return True

    async def _copy_body_until_disconnect(
        self,
        call: "_Call",
        response: aiohttp.ClientResponse,
        receive: Receive,
        send: Send,
        *,
        exec_timeout_s: float | None,
    ) -> bool:
        """Stream the body, and stop early when the caller disconnects.

        uvicorn drops what is sent to a closed connection without an error, so
        an endless stream (server-sent events) would otherwise run until the
        provider ends it.
        """
        copy = asyncio.create_task(
            self._copy_body(call, response, send, exec_timeout_s=exec_timeout_s)
        )
        disconnect = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait((copy, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
            copy.cancel()
            await asyncio.gather(copy, disconnect, return_exceptions=True)
        if not copy.cancelled():
            return copy.result()
        logger.debug("caller went away during the response", extra=call.log_extra())
        response.close()
        return True


@dataclass(frozen=True, slots=True)
class _Target:
    """The upstream URLs of one call: a reported replica, if any, and the provider."""

    function: str
    path_suffix: str
    """The raw path after the function name, with its leading slash, or ""."""
    query: str
    """The raw query with its leading "?", or ""."""
    replica: Replica | None

    @property
    def exec_timeout_s(self) -> float | None:
        return None if self.replica is None else self.replica.exec_timeout_s

    def replica_request_url(self) -> yarl.URL:
        assert self.replica is not None
        # Pre-encoded, so the caller's path reaches the replica byte for byte.
        path = self.path_suffix or "/"
        return yarl.URL(f"{self.replica.url}{path}{self.query}", encoded=True)

    def provider(self, provider_url: str) -> yarl.URL:
        url = (
            provider_url
            + constants.FUNCTION_PREFIX
            + self.function
            + self.path_suffix
            + self.query
        )
        return yarl.URL(url, encoded=True)


@dataclass(frozen=True, slots=True)
class _Call:
    """The call in progress: its ids, and the headers of its response."""

    function: str
    call_id: str
    own_headers: asgi.Headers
    """X-Call-Id, X-Start-Time and X-Served-By for the caller's response."""

    def context(self, **fields: object) -> dict[str, object]:
        """Return the log fields of the call, with the function as `name.namespace`.

        `function` is already validated, so it parses.
        """
        function = str(names.parse_function_ref(self.function))
        return {"function": function, "call_id": self.call_id, **fields}

    def log_extra(self, **fields: object) -> dict[str, dict[str, object]]:
        return {"ctx": self.context(**fields)}


def _upstream_headers(
    scope: Scope, authenticator: Authenticator | None
) -> tuple[list[tuple[str, str]], str]:
    """Return the headers to forward, and the call id to use.

    An Authorization header that `authenticator` accepts is dropped, because
    the gateway's credentials must never reach a function. Any other
    Authorization header is forwarded, as OpenFaaS does.

    aiohttp (3.14) writes header values as UTF-8, so a value is decoded as
    UTF-8 to reach the function with the bytes the caller sent. A forwarded
    value that is not valid UTF-8 raises InvalidRequest, as the provider's
    proxies do, instead of reaching the function changed.

    NB: ASGI servers pass header names in lowercase, so plain comparisons
    with lowercase names are enough.
    """
    headers: list[tuple[str, str]] = []
    call_id = ""
    forwarded_host = forwarded_for = False
    host = ""
    connection_tokens: set[str] = set()
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1")
        utf8 = True
        if raw_value.isascii():
            value = raw_value.decode("ascii")
        else:
            utf8 = is_utf8(raw_value)
            value = raw_value.decode("utf-8", errors="replace")
        if name in _REQUEST_HEADERS_NOT_FORWARDED:
            if name == "host":
                host = value
            elif name == "connection":
                connection_tokens.update(asgi.connection_tokens(value))
            continue
        if name == "x-call-id":
            # Latin-1, because the response echoes the id as Latin-1 bytes.
            if not call_id and raw_value:
                call_id = check_call_id(raw_value.decode("latin-1"))
            continue
        if name == "authorization":
            if authenticator is not None and authenticator.is_valid(raw_value):
                continue
        elif name == "x-forwarded-host":
            forwarded_host = True
        elif name == "x-forwarded-for":
            forwarded_for = True
        if not utf8:
            raise errors.InvalidRequest(non_utf8_value_message(name, "gateway"))
        headers.append((name, value))

    # Headers named in Connection apply to that connection only (RFC 9110,
    # section 7.6.1).
    if connection_tokens:
        headers = [item for item in headers if item[0] not in connection_tokens]

    call_id = call_id or new_call_id()
    headers.append((shared.CALL_ID, call_id))
    if not forwarded_host and host:
        headers.append((shared.FORWARDED_HOST, host))
    client = scope.get("client")
    if not forwarded_for and client:
        headers.append((shared.FORWARDED_FOR, client[0]))
    return headers, call_id


# Returned by `_unless_caller_leaves` when the caller disconnected first.
_CALLER_LEFT = object()

# Seconds after which a call whose response has not started is watched for a
# caller that disconnects. Watching costs a task per call, about 11 µs of the
# gateway's CPU (an estimate from a uvloop micro-benchmark on a 2-core VM).
# Calls whose response starts sooner skip it. A caller that leaves earlier is
# noticed once the watch starts.
DISCONNECT_WATCH_AFTER_S = 0.1


async def _unless_caller_leaves(
    opening: Coroutine[None, None, aiohttp.ClientResponse | None], receive: Receive
) -> aiohttp.ClientResponse | None | object:
    """Await `opening`, or cancel it and return _CALLER_LEFT when the caller leaves.

    Cancelling the upstream request closes its connection, so the provider or
    the replica stops serving the call, as with OpenFaaS's gateway, whose
    proxy sends the upstream request with the caller's request context.
    `opening` runs in the current task, which the disconnect cancels, as
    `asyncio.timeout` does: one task per call less than a race of two.
    """
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    waiting = True
    caller_left = False

    def cancel_opening(watcher: "asyncio.Future[None]") -> None:
        nonlocal caller_left
        if waiting and not watcher.cancelled() and watcher.exception() is None:
            caller_left = True
            task.cancel()

    watcher: asyncio.Future[None] | None = None

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        watcher.add_done_callback(cancel_opening)

    # A timer costs a fraction of a task, and most responses start before it
    # fires, so only a slow call pays for the watching task.
    timer = asyncio.get_running_loop().call_later(
        DISCONNECT_WATCH_AFTER_S, start_watching
    )
    try:
        return await opening
    except asyncio.CancelledError:
        # Only this function's own cancel is absorbed. A cancel of the task
        # from elsewhere, such as the server stopping, goes on.
        if caller_left and task.uncancel() <= cancelling:
            return _CALLER_LEFT
        raise
    finally:
        waiting = False
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(cancel_opening)
            watcher.cancel()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _is_total_timeout(exc: BaseException) -> bool:
    """Return whether `exc` is aiohttp's total timeout, not a read timeout.

    aiohttp 3.14 raises a plain TimeoutError when ClientTimeout.total passes
    and SocketTimeoutError (a ServerTimeoutError) when sock_read passes.
    """
    return isinstance(exc, TimeoutError) and not isinstance(
        exc, aiohttp.ServerTimeoutError
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or repr(exc)
