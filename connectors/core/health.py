"""The health and metrics listener of a connector process.

`GET /healthz` returns 200 with body `OK` once the first topic map is built
and the source is consuming, and 503 with a short reason before that and
while stopping. `GET /metrics` returns the connector's Prometheus metrics.
The listener (`faashub.health`) runs on aiohttp in the connector's own
event loop.
"""

import logging

from aiohttp import web

from connectors.core.connector import Connector
from connectors.core.metrics import CONTENT_TYPE
from connectors.core.source import ConnectorSource
from faashub import health

logger = logging.getLogger(__name__)


def health_state(connector: Connector, source: ConnectorSource) -> str:
    """Return "ready" when the connector works, else what it is waiting for."""
    if not connector.ready:
        return "waiting for the first topic map from the gateway"
    return source.state


async def start_health_listener(
    connector: Connector, source: ConnectorSource, *, host: str, port: int
) -> web.AppRunner:
    """Serve `/healthz` and `/metrics` on host:port, and return the runner.

    The caller cleans the runner up when the process stops. Raise
    SettingsError when the address cannot be bound.
    """

    async def render_metrics() -> tuple[bytes, str]:
        return connector.metrics.render(), CONTENT_TYPE

    return await health.start_health_listener(
        state=lambda: health_state(connector, source),
        render_metrics=render_metrics,
        host=host,
        port=port,
        log=logger,
    )
