"""The interface that every connector source implements.

A source is the part of a connector that talks to one kind of broker or
scheduler: it subscribes, receives events, turns each into a
`connectors.core.invoker.Message`, hands it to `Connector.deliver()` and
settles the event once the outcome is final (commit an offset, delete a
queue message, write a dead letter). Everything else, from the topic map to
retries, result lines, metrics and the health listener, is shared and comes
from `connectors.core`.

To add a connector:

1. add its settings class to `faashub.connector_settings`, derived from
   `ConnectorSettings`;
2. write a class that satisfies `ConnectorSource` below;
3. give it a `server.run(settings)` that calls
   `connectors.core.runner.run_connector(...)`, and a CLI subcommand.

`connectors.kafka` is the reference implementation.
"""

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from connectors.core.connector import Connector


class ConnectorSource(Protocol):
    """A source of events that a `Connector` delivers to functions."""

    @property
    def state(self) -> str:
        """Return "ready" while the source consumes, else a short reason.

        The health listener returns 200 `OK` in the first case and 503 with
        this text otherwise.
        """
        ...

    async def run(self, connector: Connector) -> None:
        """Consume and deliver events until `stop()` is called, then drain.

        The source must not receive events before
        `connector.wait_until_ready()` returns, so that the first topic map
        exists. Sources that a failure of their broker can reach retry and
        log; they never return on such a failure. After `stop()`, `run()`
        waits up to `settings.drain_timeout_s` for deliveries in flight,
        settles the finished ones, closes its clients and returns. If the
        task running it is cancelled, it abandons the deliveries at once.
        """
        ...

    def stop(self) -> None:
        """Ask `run()` to stop receiving, drain and return."""
        ...


async def until_stopped(awaitable: Awaitable[Any], stopping: asyncio.Event) -> bool:
    """Await `awaitable` unless `stopping` is set first; return whether it finished.

    A source's run() waits this way for what may take long (the first topic
    map, a broker that is down), so that stop() ends it even then.
    """
    task = asyncio.ensure_future(awaitable)
    stop = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # A cancelled asyncio.wait leaves its tasks running, so both end here.
        task.cancel()
        stop.cancel()
        raise
    stop.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.wait({task})
    return False
