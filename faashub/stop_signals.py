"""Two-stage handling of SIGTERM and SIGINT for the long-running processes.

The queue-worker (`queue_worker.server`) and the connector processes
(`connectors.core.runner`) stop the same way. On the first signal the work
stops taking more and drains. A second signal abandons the work in flight
without waiting for it. The caller decides what stopping and abandoning
mean, and its module documents what becomes of the abandoned work.
"""

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Final, Self

logger = logging.getLogger(__name__)

# The signals that a supervisor (Kubernetes, systemd) or a terminal sends to
# stop a process.
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """Handlers for SIGTERM and SIGINT on the running event loop.

    Enter it as a context manager inside a coroutine. Entering installs the
    handlers and leaving removes them, so that a later signal has its default
    effect again. The first signal calls `stop`, and each later one calls
    `abandon`. Both run on the event loop, so they may touch tasks and events
    directly, and their return values are ignored. The log lines name
    `work_in_flight` (such as `calls` or `deliveries`) and go to `log`, so
    that they carry the caller's logger name.
    """

    def __init__(
        self,
        *,
        stop: Callable[[], object],
        abandon: Callable[[], object],
        work_in_flight: str,
        log: logging.Logger = logger,
    ) -> None:
        self._stop = stop
        self._abandon = abandon
        self._work_in_flight = work_in_flight
        self._log = log
        self._loop: asyncio.AbstractEventLoop | None = None
        # The number of stop signals received while the handlers were installed.
        self.received = 0

    def __enter__(self) -> Self:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._loop = loop
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is None:
            return
        for signum in STOP_SIGNALS:
            self._loop.remove_signal_handler(signum)
        self._loop = None

    def _on_signal(self, signum: signal.Signals) -> None:
        self.received += 1
        if self.received == 1:
            self._log.info("received %s, stopping", signum.name)
            self._stop()
            return
        self._log.warning(
            "received %s again, abandoning %s in flight",
            signum.name,
            self._work_in_flight,
        )
        self._abandon()
