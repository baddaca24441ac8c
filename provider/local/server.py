"""The `faashub provider local` process: the provider API over the local backend.

`run` binds the listener, serves the API with uvicorn (uvloop and httptools
when they are installed, no access log) and blocks until SIGTERM or SIGINT.
Then the responses that follow a function's log end, uvicorn stops accepting
connections, waits up to GRACEFUL_SHUTDOWN_S for requests in flight, and the
API's lifespan stops the backend, which terminates every function process.
`create_app` builds the same application for tests that serve it themselves.
"""

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final

import uvicorn

from faashub.settings import LocalProviderSettings
from provider import api
from provider.backend import ProviderStartError
from provider.local.backend import LocalBackend

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S: Final = 3
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def create_app(settings: LocalProviderSettings) -> api.ProviderApp:
    """Return the provider's ASGI application over a new local backend."""
    return api.create_app(LocalBackend(settings))


class ProviderServer(uvicorn.Server):
    """uvicorn's server, stopped by SIGINT or SIGTERM with a normal return.

    uvicorn's own handlers re-raise the signal after shutdown and skip the
    lifespan shutdown on a second SIGINT. Either would end the process
    without stopping the function processes cleanly.

    `on_shutdown` runs first when the server stops, however the stop was
    requested. It ends the log streams, which would otherwise wait for lines
    until the graceful shutdown timed out.
    """

    def __init__(
        self, config: uvicorn.Config, *, on_shutdown: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Python delivers signals only to the main thread.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            signum: signal.signal(signum, self._request_stop) for signum in STOP_SIGNALS
        }
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        logger.info("stopping on %s", signal.Signals(signum).name)
        self.should_exit = True


def build_server(app: api.ProviderApp) -> ProviderServer:
    """Return a server for `app`; run it on a listener from `bind_listener`."""
    config = uvicorn.Config(
        app,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=False,
        log_config=None,
        # Function responses pass through with their own headers only.
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return ProviderServer(config, on_shutdown=app.end_log_streams)


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind the TCP listener; raise ProviderStartError if the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ProviderStartError(
            f"Cannot listen on {host}:{port}: {exc.strerror}. Stop the process "
            "that uses this address, or choose another with --host or --port."
        ) from exc
    return listener


def run(settings: LocalProviderSettings) -> None:
    """Serve the local provider until SIGTERM or SIGINT, then stop its functions.

    Raise ProviderStartError when the listener cannot be bound or the stored
    functions cannot be loaded.
    """
    app = create_app(settings)
    listener = bind_listener(settings.host, settings.port)
    host, port = listener.getsockname()[:2]
    logger.info(
        "local provider listening", extra={"ctx": {"address": f"{host}:{port}"}}
    )
    server = build_server(app)
    try:
        server.run(sockets=[listener])
    except SystemExit:
        # uvicorn exits this way when the lifespan startup failed.
        if isinstance(app.start_error, ProviderStartError):
            raise app.start_error from None
        if app.start_error is not None:
            raise ProviderStartError(
                f"The local provider failed to start: {app.start_error}"
            ) from app.start_error
        raise
    finally:
        listener.close()
