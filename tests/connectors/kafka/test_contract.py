"""The shared connector contract, run against the Kafka connector and Tansu."""

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.connectors.conftest import (
    FakeGateway,
    create_topics,
    kafka_producer,
    read_topic,
    unique,
)
from tests.connectors.contract import ConnectorContract, DeadLetter
from tests.connectors.kafka.conftest import (
    RunningConnector,
    kafka_settings,
    running_connector,
)


class TestKafkaContract(ConnectorContract):
    connector_name = "kafka"

    @pytest.fixture(autouse=True)
    def _use_broker(self, kafka_brokers: str) -> Iterator[None]:
        self.brokers = kafka_brokers
        yield

    @contextlib.asynccontextmanager
    async def running(
        self, gateway: FakeGateway, *, wait_ready: bool = True, **settings: Any
    ) -> AsyncIterator[RunningConnector]:
        values: dict[str, Any] = {"group_id": unique("group")}
        values.update(settings)
        config = kafka_settings(self.brokers, gateway.url, **values)
        async with running_connector(config, wait_ready=wait_ready) as running:
            yield running

    async def new_topic(self) -> str:
        topic = unique("topic")
        await create_topics(self.brokers, topic, partitions=2)
        return topic

    async def publish(self, topic: str, bodies: list[bytes]) -> None:
        async with kafka_producer(self.brokers) as producer:
            for body in bodies:
                # One key, so the records stay in order on one partition.
                await producer.send(topic, body, key=b"contract")
            await producer.flush()

    async def dead_letters(self, topic: str, count: int) -> list[DeadLetter]:
        records = await read_topic(self.brokers, f"{topic}.dlq", count=count)
        letters = []
        for record in records:
            headers = dict(record.headers)
            letters.append(
                DeadLetter(
                    body=record.value or b"",
                    function=headers["faashub-function"].decode(),
                    status=int(headers["faashub-status"]),
                    error=headers["faashub-error"].decode(),
                )
            )
        return letters
