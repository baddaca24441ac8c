"""Runs the gateway under uvicorn: the entry point of `faashub gateway`.

`run` listens on the gateway's port before it starts the app, so a port in
use fails the start before anything connects to NATS. It serves the app until
SIGTERM or SIGINT, then stops accepting, gives open requests
`GRACEFUL_SHUTDOWN_S` to finish, closes the NATS connection and the HTTP
clients, and returns. Logging is configured by the caller
(`faashub.logs`), so uvicorn's own log config and access log stay off.

Shortly after the app has started, `run` also has it tune CPython's cyclic
garbage collector for serving (`faashub.gc_tuning`, `gateway.app`).
"""

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from faashub import errors as shared_errors
from faashub.settings import GatewaySettings
from gateway import constants, limits
from gateway.app import GatewayApp

logger = logging.getLogger(__name__)

# Signals that stop the gateway gracefully.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def create_app(settings: GatewaySettings, *, tune_gc: bool = False) -> GatewayApp:
    """Build the gateway's ASGI app; it connects to NATS in its lifespan.

    Pass `tune_gc` only from a process's entry point, not in tests that
    share the interpreter.
    """
    return GatewayApp(settings, tune_gc=tune_gc)


def uvicorn_config(settings: GatewaySettings, app: GatewayApp) -> uvicorn.Config:
    """Return the uvicorn config the gateway runs with (tests use it too)."""
    # "auto" picks uvloop when it is importable, and the asyncio loop
    # otherwise. The HTTP protocol is uvicorn's httptools one with a deadline
    # for request headers (`gateway.limits`).
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",
        http=limits.http_protocol(header_read_timeout_s=settings.header_read_timeout_s),
        lifespan="on",
        access_log=False,
        # The gateway is the first hop: X-Forwarded-* from callers are passed
        # on as headers, never trusted as the client's address.
        proxy_headers=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=constants.GRACEFUL_SHUTDOWN_S,
    )


class GatewayServer(uvicorn.Server):
    """A uvicorn server that returns normally after a stop signal.

    Plain uvicorn re-raises a captured SIGTERM or SIGINT once it has shut
    down. That would kill the process, or raise KeyboardInterrupt in the
    caller, before `run` could return.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signal handlers can only be installed from the main thread.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self._on_stop_signal) for sig in _STOP_SIGNALS
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_stop_signal(self, sig: int, frame: FrameType | None) -> None:
        # A second SIGINT stops at once, without waiting for open requests.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def listen(host: str, port: int) -> socket.socket:
    """Return a socket that listens on `host`:`port`, or raise HubStartError.

    SO_REUSEADDR is set, as uvicorn sets it, so that connections of a previous
    gateway in TIME_WAIT do not block the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen()
    except OSError as exc:
        listener.close()
        raise shared_errors.HubStartError(
            f"Cannot listen on {host}:{port}: {exc.strerror}. Stop the process "
            "that uses this address, or choose another with --host or --port."
        ) from exc
    return listener


def run(settings: GatewaySettings) -> None:
    """Serve the gateway until SIGTERM or SIGINT, then stop cleanly.

    Raises HubStartError when the gateway cannot start: when its port is in
    use, before the app starts, or when the app's start fails, which uvicorn
    has logged by then.
    """
    # NB: uvicorn binds only after the app's lifespan startup. When that bind
    # fails, uvicorn waits for the app's shutdown, and `CallQueue.close` can
    # wait there forever for a task that dropped its cancellation, because
    # Python 3.11's asyncio.wait_for returns a result that arrives together
    # with the cancellation. Listening first leaves nothing to shut down when
    # the port is taken. uvicorn sets its own backlog when it starts serving.
    listener = listen(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    logger.info("gateway listening", extra={"ctx": {"address": f"{host}:{port}"}})
    server = GatewayServer(uvicorn_config(settings, create_app(settings, tune_gc=True)))
    failure = shared_errors.HubStartError(
        f"The gateway did not start on {settings.host}:{settings.port}; the log "
        "above gives the cause."
    )
    try:
        server.run(sockets=[listener])
    except SystemExit as exc:
        # uvicorn calls sys.exit when the app's lifespan startup failed.
        raise failure from exc
    finally:
        listener.close()
    if not server.started:
        raise failure
