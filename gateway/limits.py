"""Request size and time limits that the gateway enforces.

uvicorn's parsers bound the header section only loosely (h11 at
h11_max_incomplete_event_size, httptools not at all), and answer a violation
with a bare 400. `GatewayApp` therefore checks the parsed headers against
max_header_count and max_header_bytes and answers 431 with a message that
names the limit.

uvicorn 0.55 has no timeout for reading a request's headers: its
timeout_keep_alive runs only between requests and stops at the first byte
of the next one. `http_protocol` returns uvicorn's HTTP protocol class with
a header deadline added (header_read_timeout_s), which answers 408 and
closes the connection. The body size limit and the body read timeout are
enforced where bodies are read (`gateway.async_accept`, `gateway.system`),
with the message from `body_read_timeout_text`. `SharedTimeout` times out
the accept path's body reads, and its waits for a PubAck, with one timer per
kind instead of one per request.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import h11
from starlette.types import Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import asgi

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result")
# Upper bound of the interval between two checks of SharedTimeout.
MAX_DEADLINE_CHECK_INTERVAL_S = 1.0


def header_bytes(scope: Scope) -> int:
    """Return the size of the request's header names and values in bytes."""
    return sum(len(name) + len(value) for name, value in scope["headers"])


async def reject_headers(
    scope: Scope, send: Send, *, max_count: int, max_bytes: int
) -> None:
    """Send 431 for a request whose headers exceed one of the limits."""
    count = len(scope["headers"])
    size = header_bytes(scope)
    if count > max_count:
        text = (
            f"The request has {count} headers, above the gateway's limit of "
            f"{max_count} (max_header_count).\n"
        )
    else:
        text = (
            f"The request headers have {size} bytes, above the gateway's limit of "
            f"{max_bytes} bytes (max_header_bytes).\n"
        )
    client = scope.get("client")
    logger.info(
        "request headers too large",
        extra={
            "ctx": {
                "client": client[0] if client else "unknown",
                "headers": count,
                "header_bytes": size,
            }
        },
    )
    await asgi.send_text(send, 431, text, headers=[(b"connection", b"close")])


def body_read_timeout_text(timeout_s: float) -> str:
    """Return the 408 message for a body that did not arrive in time."""
    return (
        f"The request body did not arrive within {timeout_s:g} s "
        "(body_read_timeout_s). Send the body faster, or raise the gateway's "
        "limit: --body-read-timeout-s of 'faashub gateway' or 'faashub up', or "
        "the environment variable FAASHUB_BODY_READ_TIMEOUT_S.\n"
    )


async def send_body_read_timeout(send: Send, *, timeout_s: float) -> None:
    """Send 408 for a body that did not arrive in time, and close the connection."""
    await asgi.send_text(
        send,
        408,
        body_read_timeout_text(timeout_s),
        headers=[(b"connection", b"close")],
    )


class SharedTimeout:
    """One timeout for many concurrent awaits, enforced by a periodic check.

    An `asyncio.timeout` block schedules and cancels a timer handle each
    time: about 6 µs on uvloop against 0.8 µs for `run` (timeit, Python
    3.11, 2-core VM), and about 6 % of the py-spy samples of the gateway
    under the async-accept benchmark. Here an await costs a dictionary
    insert and removal. While awaits are pending, one timer checks them every
    `check_interval_s` and cancels those past their deadline. So an await
    times out between `timeout_s` and `timeout_s + check_interval_s` after
    it started. Use one instance per event loop.

    `watch` is cheaper still for a bare future, such as a reply that another
    callback resolves. The check then fails the future itself with
    TimeoutError, so no task is looked up or cancelled.
    """

    def __init__(self, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}.")
        self.timeout_s = timeout_s
        self.check_interval_s = min(MAX_DEADLINE_CHECK_INTERVAL_S, timeout_s / 4)
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._future_deadlines: dict[asyncio.Future[Any], float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, future: asyncio.Future[Any]) -> None:
        """Fail `future` with TimeoutError if it is still pending past the deadline.

        The caller awaits the future itself, and calls `unwatch` once it no
        longer waits, whatever the outcome.
        """
        loop = future.get_loop()
        self._future_deadlines[future] = loop.time() + self.timeout_s
        if self._timer is None:
            self._timer = loop.call_later(self.check_interval_s, self._check, loop)

    def unwatch(self, future: asyncio.Future[Any]) -> None:
        """Stop watching `future`. A future that is not watched is ignored."""
        self._future_deadlines.pop(future, None)

    async def run(self, awaitable: Awaitable[_Result]) -> _Result:
        """Await `awaitable` in the current task, with TimeoutError past the deadline.

        As with `asyncio.timeout`, a cancellation that comes from elsewhere
        is passed on as CancelledError.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("SharedTimeout.run must be awaited inside a task.")
        cancelling = task.cancelling()
        self._deadlines[task] = loop.time() + self.timeout_s
        if self._timer is None:
            self._timer = loop.call_later(self.check_interval_s, self._check, loop)
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Only the check's own cancel, and no other, becomes a timeout.
            if task in self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            del self._deadlines[task]
            self._expired.discard(task)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for task, deadline in self._deadlines.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        expired = [
            future
            for future, deadline in self._future_deadlines.items()
            if deadline <= now
        ]
        for future in expired:
            del self._future_deadlines[future]
            if not future.done():
                future.set_exception(TimeoutError())
        if self._deadlines or self._future_deadlines:
            self._timer = loop.call_later(self.check_interval_s, self._check, loop)
        else:
            self._timer = None


def _header_timeout_response(timeout_s: float) -> bytes:
    text = (
        f"The request headers did not arrive within {timeout_s:g} s "
        "(header_read_timeout_s); the connection is closed.\n"
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + text
    )


class _HeaderDeadline:
    """The time by which one connection must finish the headers of a request.

    The deadline is armed when the connection opens and while a request's
    head is incomplete, and cleared when its headers are complete. When it
    passes, the client gets 408 and the connection is closed. A connection
    that is still sending an earlier response is closed after that response
    instead, so the response is not cut.
    """

    def __init__(self, protocol: asyncio.Protocol, *, timeout_s: float) -> None:
        self._protocol = protocol
        self._timeout_s = timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._client = "unknown"

    def start(
        self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._client = str(peer[0])
        self.arm(loop)

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self._timeout_s, self._expire)

    def clear(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        logger.info(
            "request headers timed out",
            extra={"ctx": {"client": self._client, "timeout_s": self._timeout_s}},
        )
        cycle = getattr(self._protocol, "cycle", None)
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            return
        transport.write(_header_timeout_response(self._timeout_s))
        transport.close()


class _HttpToolsWithHeaderDeadline(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for request headers.

    A request head that arrives whole within one read needs no timer, so the
    deadline is armed only after a read that leaves a head incomplete. That
    spares most requests a timer that would be armed and cancelled at once.
    """

    header_read_timeout_s = 10.0
    # Whether the parser has seen a request's first byte but not its whole head.
    _head_pending = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_deadline = _HeaderDeadline(
            self, timeout_s=self.header_read_timeout_s
        )
        super().connection_made(transport)
        self.header_deadline.start(transport, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_pending and not self.transport.is_closing():
            self.header_deadline.arm(self.loop)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_pending = True

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self.header_deadline.clear()
        super().on_headers_complete()


class _H11WithHeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for request headers."""

    header_read_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.header_deadline = _HeaderDeadline(
            self, timeout_s=self.header_read_timeout_s
        )
        super().connection_made(transport)
        self.header_deadline.start(transport, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        self.header_deadline.clear()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            self.header_deadline.arm(self.loop)
        super().data_received(data)
        # h11 leaves IDLE once it has parsed a whole request head.
        if self.conn.their_state is not h11.IDLE:
            self.header_deadline.clear()


def http_protocol(
    *, header_read_timeout_s: float, h11_only: bool = False
) -> type[asyncio.Protocol]:
    """Return uvicorn's HTTP protocol class with a deadline for request headers.

    The base is httptools, as uvicorn's "auto" chooses when httptools is
    installed (uvicorn[standard] installs it), or h11 when `h11_only` is set.
    """
    base: type[_HttpToolsWithHeaderDeadline | _H11WithHeaderDeadline] = (
        _H11WithHeaderDeadline if h11_only else _HttpToolsWithHeaderDeadline
    )
    return type(
        base.__name__, (base,), {"header_read_timeout_s": header_read_timeout_s}
    )


# Bounds of the read that follows a body over its limit (see discard_rest).
DISCARD_MAX_BYTES = 1024 * 1024
DISCARD_TIMEOUT_S = 1.0


async def discard_rest(stream: AsyncIterator[bytes]) -> None:
    """Read and drop what follows of a body that passed its limit, within bounds.

    A server that closes the connection while the client's data is still
    unread makes the kernel reset it, which can discard the 413 before the
    client reads it. So up to DISCARD_MAX_BYTES more are read, for at most
    DISCARD_TIMEOUT_S, before the response; a larger or slower upload still
    ends there.
    """
    discarded = 0
    try:
        async with asyncio.timeout(DISCARD_TIMEOUT_S):
            async for chunk in stream:
                discarded += len(chunk)
                if discarded > DISCARD_MAX_BYTES:
                    return
    except TimeoutError:
        return
