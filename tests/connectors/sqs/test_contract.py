"""The shared connector contract, run against the SQS connector and moto."""

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.connectors.conftest import FakeGateway
from tests.connectors.contract import ConnectorContract, DeadLetter
from tests.connectors.sqs.conftest import (
    RunningConnector,
    create_queue,
    receive_all,
    running_connector,
    send_messages,
    sqs_settings,
)


class TestSqsContract(ConnectorContract):
    connector_name = "sqs"

    @pytest.fixture(autouse=True)
    def _use_server(self, sqs_endpoint: str) -> Iterator[None]:
        self.endpoint = sqs_endpoint
        self.queues: dict[str, str] = {}
        self.dead_letter_queue = ""
        yield

    @contextlib.asynccontextmanager
    async def running(
        self, gateway: FakeGateway, *, wait_ready: bool = True, **settings: Any
    ) -> AsyncIterator[RunningConnector]:
        if not self.dead_letter_queue:
            self.dead_letter_queue = await create_queue(self.endpoint, "dlq")
        values: dict[str, Any] = {"dead_letter_queue": self.dead_letter_queue}
        values.update(settings)
        config = sqs_settings(
            self.endpoint, gateway.url, list(self.queues.values()), **values
        )
        async with running_connector(config, wait_ready=wait_ready) as running:
            yield running

    async def new_topic(self) -> str:
        url = await create_queue(self.endpoint, "contract")
        name = url.rsplit("/", 1)[-1]
        self.queues[name] = url
        return name

    async def publish(self, topic: str, bodies: list[bytes]) -> None:
        await send_messages(self.endpoint, self.queues[topic], bodies)

    async def dead_letters(self, topic: str, count: int) -> list[DeadLetter]:
        if not self.dead_letter_queue:
            self.dead_letter_queue = await create_queue(self.endpoint, "dlq")
        messages = await receive_all(self.endpoint, self.dead_letter_queue, count=count)
        letters = []
        for message in messages:
            attributes = message["MessageAttributes"]
            assert (
                attributes["faashub-source-queue"]["StringValue"]
                == (self.queues[topic])
            )
            letters.append(
                DeadLetter(
                    body=message["Body"].encode(),
                    function=attributes["faashub-function"]["StringValue"],
                    status=int(attributes["faashub-status"]["StringValue"]),
                    error=attributes["faashub-error"]["StringValue"],
                )
            )
        return letters
