"""Run the Kafka connector in the test's event loop, against the session broker."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from connectors.core.connector import Connector
from connectors.kafka.source import KafkaSource
from faashub.connector_settings import KafkaConnectorSettings
from tests.connectors.conftest import settings_values, wait_until


@dataclass
class RunningConnector:
    settings: KafkaConnectorSettings
    connector: Connector
    source: KafkaSource
    task: "asyncio.Task[None]"


def kafka_settings(
    brokers: str, gateway_url: str, **overrides: Any
) -> KafkaConnectorSettings:
    """Return Kafka connector settings for a test, with a group of its own."""
    values = settings_values(brokers=brokers, gateway_url=gateway_url, **overrides)
    return KafkaConnectorSettings(**values)


@contextlib.asynccontextmanager
async def running_connector(
    settings: KafkaConnectorSettings, *, wait_ready: bool = True
) -> AsyncIterator[RunningConnector]:
    """Run a Kafka connector until the block ends, then stop it and wait.

    With `wait_ready`, the block starts once the connector consumes.
    """
    connector = Connector(settings, name="kafka")
    await connector.start()
    source = KafkaSource(settings)
    task = asyncio.create_task(source.run(connector))
    running = RunningConnector(settings, connector, source, task)
    try:
        if wait_ready:
            await wait_until(
                lambda: source.state == "ready" or task.done(),
                description="the connector to consume",
            )
        if task.done():
            task.result()
        yield running
    finally:
        source.stop()
        try:
            await asyncio.wait_for(task, timeout=settings.drain_timeout_s + 15)
        finally:
            await connector.close()
