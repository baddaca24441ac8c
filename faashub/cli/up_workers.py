"""The workers process of `faashub up`: its queue-workers and connectors in one loop.

`faashub up` starts `python -m faashub up-workers SERVICE [-- SERVICE ...]`,
where each SERVICE is the argument list of one `faashub queue-worker ...` or
`faashub connector cron|kafka|sqs ...` command. This process parses each
list as that command would, then runs every service in one event loop
(`connectors.core.runner.run_services`). One Python process costs about
50 MiB before it does any work, mostly the interpreter and the imports that
the worker and the connectors share, so the hub saves that much for every
service after the first.

Each service keeps its own health listener on the port its arguments name,
which serves its `/healthz` and `/metrics` as the standalone command does.
The first SIGTERM or SIGINT stops them all, and each drains as it would
alone. A service that fails stops the others, and the process exits, so that
the hub restarts all of them together. On Kubernetes every component still
runs as its own command.
"""

import argparse
import asyncio
import functools
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from connectors.core.runner import Service, run_event_loop, run_services
from faashub import errors, logs, tracing
from faashub.cli import options
from faashub.cli.hub import WORKERS_COMMAND, WORKERS_SEPARATOR
from faashub.cli.main import build_parser
from faashub.connector_settings import (
    CronConnectorSettings,
    KafkaConnectorSettings,
    SqsConnectorSettings,
)
from faashub.gc_tuning import tune_gc
from faashub.settings import CommonSettings, WorkerSettings

logger = logging.getLogger(__name__)

# The service name of its spans, unless OTEL_SERVICE_NAME names another:
# one process exports the spans of every queue-worker and connector in it.
TRACE_SERVICE_NAME = "faashub-up-workers"
# Seconds after its services have started to open at which the process tunes
# the garbage collector. Its full collection took 20 to 60 ms on a 2-core VM
# shared with other work. Right at the start, it blocked the event loop while
# the services connected to NATS and responded to the health checks that
# `faashub up` waits for.
GC_TUNE_DELAY_S = 1.0


class WorkerService:
    """A queue-worker, with its health listener on health_host:health_port."""

    def __init__(self, settings: WorkerSettings) -> None:
        from queue_worker.worker import Worker

        self.settings = settings
        self.worker = Worker(settings)
        self._health: web.AppRunner | None = None

    @property
    def name(self) -> str:
        return f"queue-worker for queue {self.settings.queue!r}"

    async def open(self) -> None:
        from queue_worker.server import start_health_listener

        self._health = await start_health_listener(
            self.worker, host=self.settings.health_host, port=self.settings.health_port
        )

    async def run(self) -> None:
        await self.worker.run()

    def stop(self) -> None:
        self.worker.stop()

    async def close(self) -> None:
        if self._health is not None:
            await self._health.cleanup()
            self._health = None


def split_arguments(arguments: Sequence[str]) -> list[list[str]]:
    """Split the `up-workers` arguments into one argument list per service."""
    services: list[list[str]] = [[]]
    for argument in arguments:
        if argument == WORKERS_SEPARATOR:
            services.append([])
        else:
            services[-1].append(argument)
    return [service for service in services if service]


def load_service_settings(arguments: Sequence[str]) -> CommonSettings:
    """Parse one service's arguments as its own command would, and load its settings."""
    if arguments[:1] == ["up"] or arguments[:1] == [WORKERS_COMMAND]:
        raise errors.SettingsError(
            f"The workers process cannot run {arguments[0]!r}: give it "
            "queue-worker or connector commands."
        )
    args = _component_parser().parse_args(list(arguments))
    if args.command == "queue-worker":
        return options.load_settings(WorkerSettings, args)
    if args.command == "connector":
        connector_classes: dict[str, type[CommonSettings]] = {
            "cron": CronConnectorSettings,
            "kafka": KafkaConnectorSettings,
            "sqs": SqsConnectorSettings,
        }
        return options.load_settings(connector_classes[args.connector], args)
    raise errors.SettingsError(
        f"The workers process cannot run {args.command!r}: give it "
        "queue-worker or connector commands."
    )


@functools.cache
def _component_parser() -> argparse.ArgumentParser:
    # One parser for every service: building it takes a few milliseconds.
    return build_parser(user_commands=False)


def build_service(settings: CommonSettings) -> Service:
    """Build the service for one loaded settings object; import only what it needs."""
    from connectors.core.runner import ConnectorService

    if isinstance(settings, WorkerSettings):
        return WorkerService(settings)
    if isinstance(settings, CronConnectorSettings):
        from connectors.cron.source import CronConnector, CronSource

        return ConnectorService(CronConnector(settings), CronSource(settings))
    if isinstance(settings, KafkaConnectorSettings):
        from connectors.kafka import server as kafka_server

        return ConnectorService(*kafka_server.build(settings))
    if isinstance(settings, SqsConnectorSettings):
        from connectors.sqs.delivery import SqsConnector
        from connectors.sqs.source import SqsSource

        return ConnectorService(SqsConnector(settings), SqsSource(settings))
    raise errors.SettingsError(
        f"The workers process cannot run {type(settings).__name__} services."
    )


def run(arguments: Sequence[str]) -> None:
    """Run the services that `arguments` name until SIGTERM or SIGINT."""
    all_settings = [
        load_service_settings(service) for service in split_arguments(arguments)
    ]
    if not all_settings:
        raise errors.SettingsError(
            f"Give '{WORKERS_COMMAND}' at least one queue-worker or connector command."
        )
    first = all_settings[0]
    logs.configure(level=first.log_level, log_format=first.log_format)
    dev_broker = None
    for index, settings in enumerate(all_settings):
        if isinstance(settings, KafkaConnectorSettings) and settings.dev_broker:
            if dev_broker is None:
                from connectors.kafka.dev_broker import start_dev_broker

                dev_broker = start_dev_broker()
            all_settings[index] = settings.model_copy(
                update={"brokers": dev_broker.address}
            )
    try:
        services = [build_service(settings) for settings in all_settings]
        logger.info(
            "workers process runs %s", ", ".join(service.name for service in services)
        )
        tracing.setup(default_service_name=TRACE_SERVICE_NAME)
        try:
            run_event_loop(_run_tuned(services))
        finally:
            tracing.shutdown()
    finally:
        if dev_broker is not None:
            dev_broker.stop()


async def _run_tuned(services: Sequence[Service]) -> None:
    """Run the services, and tune the garbage collector GC_TUNE_DELAY_S later."""
    tuning = asyncio.get_running_loop().call_later(GC_TUNE_DELAY_S, tune_gc)
    try:
        await run_services(services)
    finally:
        tuning.cancel()


def main(arguments: Sequence[str]) -> int:
    """Entry point of `python -m faashub up-workers ...`; return the exit code."""
    try:
        run(arguments)
    except errors.FaashubError as exc:
        print(f"faashub: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
