"""The health and metrics listener of the queue-worker and connector processes.

`GET /healthz` returns 200 with body `OK` while the process's state is
"ready", and 503 with the state as the body otherwise. `GET /metrics`
returns the process's Prometheus metrics. The listener runs on aiohttp in
the process's own event loop. What "ready" means, and how the metrics are
rendered, is up to the caller (`queue_worker.server` and
`connectors.core.health`).
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web

from faashub import errors

logger = logging.getLogger(__name__)

# The state for which `/healthz` returns 200.
READY: Final = "ready"


async def start_health_listener(
    *,
    state: Callable[[], str],
    render_metrics: Callable[[], Awaitable[tuple[bytes, str]]],
    host: str,
    port: int,
    log: logging.Logger = logger,
    log_context: Mapping[str, object] | None = None,
) -> web.AppRunner:
    """Serve `/healthz` and `/metrics` on host:port, and return the runner.

    The caller cleans the runner up when the process stops. `state` returns
    "ready" or what the process waits for. `render_metrics` returns the
    exposition text and its content type. `log_context` adds fields to the
    ready line, such as the queue of a queue-worker. Raise SettingsError when
    the address cannot be bound.
    """

    async def healthz(request: web.Request) -> web.Response:
        current = state()
        if current == READY:
            return web.Response(text="OK")
        return web.Response(status=503, text=current)

    async def metrics(request: web.Request) -> web.Response:
        body, content_type = await render_metrics()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    # The handlers return at once, so a short shutdown timeout is enough.
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
    context = {**(log_context or {}), "address": f"{host}:{port}"}
    log.info("health listener ready", extra={"ctx": context})
    return runner
