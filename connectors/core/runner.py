"""The process around connectors: event loop, signals, health listeners.

`run_connector(connector, source)` blocks until SIGTERM or SIGINT. On the
first signal the source stops receiving, waits up to drain_timeout_s for
deliveries in flight and settles them. A second signal
abandons the deliveries at once; their events come back from the source
later, because they were never settled. Every connector's `server.run()`
ends here, so they all stop the same way.

`run_services(services)` does the same for several services in one event
loop, each with its own health listener: `faashub up` runs its
queue-workers and connectors this way in one process. A signal stops them
all, and a service that fails stops the others, so that the process exits
and its supervisor restarts it.
"""

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from aiohttp import web

from connectors.core.connector import Connector
from connectors.core.health import start_health_listener
from connectors.core.source import ConnectorSource
from faashub.gc_tuning import tune_gc
from faashub.stop_signals import StopSignals

logger = logging.getLogger(__name__)


class Service(Protocol):
    """A long-running part of a process that `run_services` starts and stops."""

    @property
    def name(self) -> str:
        """Short name for log lines, such as `cron connector`."""
        ...

    async def open(self) -> None:
        """Prepare to run: open sessions and start the health listener."""
        ...

    async def run(self) -> None:
        """Work until `stop()` is called, then drain and return.

        If the task running it is cancelled, it abandons its work in flight.
        """
        ...

    def stop(self) -> None:
        """Ask `run()` to stop taking work, drain and return."""
        ...

    async def close(self) -> None:
        """Undo `open()`; called once `run()` has returned, or if `open()` failed."""
        ...


class ConnectorService:
    """A connector and its source, with the health listener on its settings' port."""

    def __init__(self, connector: Connector, source: ConnectorSource) -> None:
        self.connector = connector
        self.source = source
        self._health: web.AppRunner | None = None

    @property
    def name(self) -> str:
        return f"{self.connector.name} connector"

    async def open(self) -> None:
        settings = self.connector.settings
        await self.connector.start()
        self._health = await start_health_listener(
            self.connector,
            self.source,
            host=settings.health_host,
            port=settings.health_port,
        )

    async def run(self) -> None:
        await self.source.run(self.connector)

    def stop(self) -> None:
        self.source.stop()

    async def close(self) -> None:
        try:
            if self._health is not None:
                await self._health.cleanup()
                self._health = None
        finally:
            await self.connector.close()
        logger.info("%s stopped", self.name)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it exists, else on the default event loop."""
    try:
        import uvloop
    except ImportError:
        # uvloop, which uvicorn[standard] installs, does not exist on Windows.
        asyncio.run(main)
        return
    uvloop.run(main)


async def run_connector(
    connector: Connector, source: ConnectorSource, *, tune_gc_after_open: bool = False
) -> None:
    """Run `source` with `connector` until a signal stops it; then clean up."""
    await run_services(
        [ConnectorService(connector, source)], tune_gc_after_open=tune_gc_after_open
    )


async def run_services(
    services: Sequence[Service], *, tune_gc_after_open: bool = False
) -> None:
    """Run every service until a signal or a failure stops them; then close them.

    The services open in order and close in the reverse order. The first
    exception that ends a service is raised again once all are closed. With
    tune_gc_after_open, which only a process's entry point should pass, the
    garbage collector is tuned once every service has opened
    (`faashub.gc_tuning`).
    """
    opened: list[Service] = []
    try:
        for service in services:
            try:
                await service.open()
            finally:
                # close() also undoes a half-finished open().
                opened.append(service)
        if tune_gc_after_open:
            tune_gc()
        await _run_until_signal(opened)
    finally:
        await _close_all(opened)


async def _close_all(services: list[Service]) -> None:
    first_error: BaseException | None = None
    for service in reversed(services):
        try:
            await service.close()
        except Exception as exc:
            logger.exception("closing the %s failed", service.name)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error


async def _run_until_signal(services: Sequence[Service]) -> None:
    tasks = {
        asyncio.create_task(service.run(), name=service.name): service
        for service in services
    }

    def stop_all() -> None:
        for service in services:
            service.stop()

    def cancel_all() -> None:
        for task in tasks:
            task.cancel()

    signals = StopSignals(
        stop=stop_all, abandon=cancel_all, work_in_flight="deliveries", log=logger
    )
    failure: BaseException | None = None
    stopping_others = False
    try:
        with signals:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(
                    pending, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        failure = failure or task.exception()
                if signals.received or not pending or stopping_others:
                    continue
                # A service ended without a signal, so the process must end:
                # stop the others so that they drain before it exits.
                stopping_others = True
                for task in done:
                    logger.error(
                        "the %s ended (%s); stopping the other services",
                        tasks[task].name,
                        _outcome(task),
                    )
                for task in pending:
                    tasks[task].stop()
    finally:
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
    if failure is not None:
        # Re-raise what ended a service other than a signal, such as settings
        # that cannot work.
        raise failure


def _outcome(task: "asyncio.Task[None]") -> str:
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    if error is None:
        return "returned"
    return f"{type(error).__name__}: {error}"
