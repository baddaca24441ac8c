"""The health and metrics listener of a connector process.

`GET /healthz` returns 200 with body `OK` once the first topic map is built
and the source is consuming, and 503 with a short reason before that and
while stopping. `GET /metrics` returns the connector's Prometheus metrics.
The listener runs on aiohttp in the connector's own event loop.
"""

import logging

from aiohttp import web

from connectors.core.connector import Connector
from connectors.core.metrics import CONTENT_TYPE
from connectors.core.source import ConnectorSource
from faashub import errors

logger = logging.getLogger(__name__)


def health_state(connector: Connector, source: ConnectorSource) -> str:
    """Return "ready" when the connector works, else what it is waiting for."""
    if not connector.ready:
        return "waiting for the first topic map from the gateway"
    return source.state


async def start_health_listener(
    connector: Connector, source: ConnectorSource, *, host: str, port: int
) -> web.AppRunner:
    """Serve `/healthz` and `/metrics` on host:port; return the runner to clean up."""

    async def healthz(request: web.Request) -> web.Response:
        state = health_state(connector, source)
        if state == "ready":
            return web.Response(text="OK")
        return web.Response(status=503, text=state)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=connector.metrics.render(), headers={"Content-Type": CONTENT_TYPE}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    # Both handlers return at once, so a short shutdown timeout is enough.
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise errors.SettingsError(
            f"Cannot listen for /healthz on {host}:{port}: {exc.strerror or exc}. "
            "Choose a free port with --health-port."
        ) from exc
    logger.info("health listener ready", extra={"ctx": {"address": f"{host}:{port}"}})
    return runner
