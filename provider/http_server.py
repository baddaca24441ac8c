"""The HTTP server that every provider process serves its API with.

`build_server` returns uvicorn's server for a `ProviderApp` (uvloop and
httptools when they are installed, no access log, no Server or Date header
of its own). On SIGTERM or SIGINT the responses that follow a function's log
end first, then uvicorn stops accepting connections, waits up to
GRACEFUL_SHUTDOWN_S for requests in flight, and the API's lifespan stops the
backend. GC_TUNE_DELAY_S after the app has started, a server from a
process's `run` also tunes the garbage collector (`faashub.gc_tuning`).
`bind_listener` binds the TCP socket first, so that a taken address is a
clear start error. The local and Kubernetes providers both use these; what a
backend does when it stops is its own concern.
"""

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final

import uvicorn

from faashub.gc_tuning import tune_gc
from provider import api
from provider.backend import ProviderStartError

logger = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S: Final = 3
# Seconds after the start at which the garbage collector is tuned. Its full
# collection took 35 to 45 ms on a 2-core VM shared with other work, and
# right at the start it delayed the health check that `faashub up` waits for.
GC_TUNE_DELAY_S: Final = 1.0
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


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
        self,
        config: uvicorn.Config,
        *,
        on_shutdown: Callable[[], None],
        tune_gc_after_start: bool = False,
    ) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown
        self._tune_gc = tune_gc_after_start

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._tune_gc and self.started:
            asyncio.get_running_loop().call_later(GC_TUNE_DELAY_S, tune_gc)

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


def build_server(
    app: api.ProviderApp, *, tune_gc_after_start: bool = False
) -> ProviderServer:
    """Return a server for `app`; run it on a listener from `bind_listener`.

    Pass tune_gc_after_start only from a process's entry point, not in tests
    that share the interpreter.
    """
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
    return ProviderServer(
        config,
        on_shutdown=app.end_log_streams,
        tune_gc_after_start=tune_gc_after_start,
    )


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
