"""The process around a connector: event loop, signals, health listener.

`run_connector(connector, source)` blocks until SIGTERM or SIGINT. On the
first signal the source stops receiving, waits up to drain_timeout_s for
deliveries in flight and settles them. A second signal
abandons the deliveries at once; their events come back from the source
later, because they were never settled. Every connector's `server.run()`
ends here, so they all stop the same way.
"""

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from connectors.core.connector import Connector
from connectors.core.health import start_health_listener
from connectors.core.source import ConnectorSource

logger = logging.getLogger(__name__)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where it exists, else on the default event loop."""
    try:
        import uvloop
    except ImportError:
        # uvloop, which uvicorn[standard] installs, does not exist on Windows.
        asyncio.run(main)
        return
    uvloop.run(main)


async def run_connector(connector: Connector, source: ConnectorSource) -> None:
    """Run `source` with `connector` until a signal stops it; then clean up."""
    settings = connector.settings
    await connector.start()
    try:
        health = await start_health_listener(
            connector, source, host=settings.health_host, port=settings.health_port
        )
        try:
            await _run_until_signal(connector, source)
        finally:
            await health.cleanup()
    finally:
        await connector.close()
    logger.info("%s connector stopped", connector.name)


async def _run_until_signal(connector: Connector, source: ConnectorSource) -> None:
    source_task = asyncio.create_task(source.run(connector))
    loop = asyncio.get_running_loop()
    signals_received = 0

    def on_signal(signum: signal.Signals) -> None:
        nonlocal signals_received
        signals_received += 1
        if signals_received == 1:
            logger.info("received %s, stopping", signum.name)
            source.stop()
        else:
            logger.warning(
                "received %s again, abandoning deliveries in flight", signum.name
            )
            source_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await asyncio.wait({source_task})
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if not source_task.done():
            source_task.cancel()
            await asyncio.wait({source_task})
    if not source_task.cancelled():
        # Re-raise what ended the source other than a signal, such as
        # settings that cannot work.
        source_task.result()
