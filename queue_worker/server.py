"""The queue-worker process: the worker, a health listener and signals.

`run(settings)` blocks until SIGTERM or SIGINT. The first signal stops
fetching and lets the calls in flight finish for up to shutdown_grace_s. A
second signal abandons them at once, and JetStream redelivers them after
ack_wait. The listener on health_host:health_port serves:

* `GET /healthz`: 200 `OK` while the worker is connected to NATS and bound to
  its consumer, and 503 otherwise, including while it starts and stops;
* `GET /metrics`: the worker's Prometheus metrics (`queue_worker.metrics`).

The pull loop itself is in `queue_worker.worker`.
"""

import asyncio
import logging

from aiohttp import web

from faashub import health
from faashub.gc_tuning import tune_gc
from faashub.settings import WorkerSettings
from faashub.stop_signals import StopSignals
from queue_worker.worker import Worker

logger = logging.getLogger(__name__)


def run(settings: WorkerSettings) -> None:
    """Run a queue-worker until SIGTERM or SIGINT, then stop it cleanly."""
    # Each call allocates many short-lived objects (futures, tasks, requests),
    # so the collector runs often: keep it off the start-up heap.
    tune_gc()
    try:
        import uvloop
    except ImportError:
        # uvloop, which uvicorn[standard] installs, does not exist on Windows.
        asyncio.run(serve(settings))
        return
    uvloop.run(serve(settings))


async def serve(settings: WorkerSettings) -> None:
    """Run the worker and its health listener until a signal stops them."""
    worker = Worker(settings)
    health = await start_health_listener(
        worker, host=settings.health_host, port=settings.health_port
    )
    worker_task = asyncio.create_task(worker.run())
    signals = StopSignals(
        stop=worker.stop, abandon=worker_task.cancel, work_in_flight="calls", log=logger
    )
    try:
        with signals:
            await asyncio.wait({worker_task})
    finally:
        await health.cleanup()
    if not worker_task.cancelled():
        # Re-raise what ended the worker other than a signal, such as a
        # NATS URL that cannot be used.
        worker_task.result()


async def start_health_listener(
    worker: Worker, *, host: str, port: int
) -> web.AppRunner:
    """Serve `/healthz` and `/metrics` on host:port, and return the runner.

    The caller cleans the runner up when the process stops. Raise
    SettingsError when the address cannot be bound.
    """

    async def render_metrics() -> tuple[bytes, str]:
        await worker.refresh_metrics()
        return worker.metrics.render()

    return await health.start_health_listener(
        state=lambda: worker.state,
        render_metrics=render_metrics,
        host=host,
        port=port,
        log=logger,
        log_context={"queue": worker.queue},
    )
