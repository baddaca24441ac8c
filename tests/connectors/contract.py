"""Behaviour that every connector shows, written once for all of them.

`ConnectorContract` contains the tests. A connector's test module subclasses it
as `Test<Name>Contract` and provides four hooks: `running` (run the connector
against a gateway), `new_topic`, `publish` and `dead_letters`. The tests use
the fake gateway from `tests.connectors.conftest` and the connector's real
broker. Each new connector subclasses it the same way.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import pytest

from tests.connectors.conftest import FakeGateway, wait_until


@dataclass
class DeadLetter:
    """A message in a dead-letter destination, with why it failed."""

    body: bytes
    function: str
    status: int
    error: str


class ConnectorContract:
    """Tests every connector must pass; subclasses implement the hooks below."""

    connector_name = ""

    def running(
        self, gateway: FakeGateway, *, wait_ready: bool = True, **settings: Any
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """Run the connector until the block ends; settings override defaults.

        The block gets an object whose `source.state` is "ready" while the
        connector consumes. With `wait_ready`, the block starts only then.
        """
        raise NotImplementedError

    async def new_topic(self) -> str:
        """Create a topic (or queue) of the source that no other test uses."""
        raise NotImplementedError

    async def publish(self, topic: str, bodies: list[bytes]) -> None:
        """Publish messages with these bodies, in this order."""
        raise NotImplementedError

    async def dead_letters(self, topic: str, count: int) -> list[DeadLetter]:
        """Return the first `count` dead letters of messages published to `topic`."""
        raise NotImplementedError

    @pytest.mark.timeout(40)
    async def test_message_reaches_every_subscriber(self, gateway: FakeGateway) -> None:
        topic = await self.new_topic()
        other = await self.new_topic()
        gateway.deploy("one", topic)
        gateway.deploy("both", f"{topic}, {other}")
        gateway.deploy("unrelated", "elsewhere")

        async with self.running(gateway):
            await self.publish(topic, [b"m1", b"m2"])
            await self.publish(other, [b"o1"])
            await wait_until(
                lambda: len(gateway.invocations) >= 5, description="5 invocations"
            )
            # Give repeats, if there were any, time to arrive.
            await asyncio.sleep(0.5)

        assert sorted(gateway.bodies("one")) == [b"m1", b"m2"]
        assert sorted(gateway.bodies("both")) == [b"m1", b"m2", b"o1"]
        assert gateway.received("unrelated") == []
        for call in gateway.invocations:
            assert call.header("X-Connector") == f"{self.connector_name}-connector"
            assert call.header("Content-Type") == "text/plain"
            expected_topic = other if call.body == b"o1" else topic
            assert call.header("X-Topic") == expected_topic

    @pytest.mark.timeout(40)
    async def test_temporary_failure_is_retried(self, gateway: FakeGateway) -> None:
        topic = await self.new_topic()
        gateway.deploy("flaky", topic)
        gateway.respond("flaky", statuses=[500, 503])

        async with self.running(gateway):
            await self.publish(topic, [b"try-me"])
            await wait_until(
                lambda: len(gateway.received("flaky")) >= 3,
                description="three attempts",
            )
            await asyncio.sleep(0.5)

        assert gateway.bodies("flaky") == [b"try-me"] * 3
        call_ids = {call.header("X-Call-Id") for call in gateway.received("flaky")}
        assert len(call_ids) == 1

    @pytest.mark.timeout(40)
    async def test_final_failure_is_dead_lettered(self, gateway: FakeGateway) -> None:
        topic = await self.new_topic()
        gateway.deploy("picky", topic)
        gateway.respond("picky", status_for_body={b"poison": 422})

        async with self.running(gateway):
            await self.publish(topic, [b"poison", b"fine"])
            [dead] = await self.dead_letters(topic, 1)
            await wait_until(
                lambda: b"fine" in gateway.bodies("picky"),
                description="the record after the poison one",
            )

        assert dead.body == b"poison"
        assert dead.function == "picky.openfaas-fn"
        assert dead.status == 422
        assert "422" in dead.error
        assert gateway.bodies("picky").count(b"poison") == 1

    @pytest.mark.timeout(40)
    async def test_new_function_receives_without_restart(
        self, gateway: FakeGateway
    ) -> None:
        topic = await self.new_topic()
        gateway.deploy("first", topic)

        async with self.running(gateway):
            await self.publish(topic, [b"before"])
            await wait_until(
                lambda: gateway.bodies("first") == [b"before"],
                description="the first record",
            )
            gateway.deploy("second", topic)
            # Two refreshes of the topic map, at 0.5 s each in these tests.
            await asyncio.sleep(1.2)
            await self.publish(topic, [b"after"])
            await wait_until(
                lambda: gateway.bodies("second") == [b"after"],
                description="the record after the deploy",
            )

        assert gateway.bodies("first") == [b"before", b"after"]

    @pytest.mark.timeout(60)
    async def test_gateway_outage_loses_nothing(self, gateway: FakeGateway) -> None:
        topic = await self.new_topic()
        gateway.deploy("steady", topic)
        bodies = [f"m{number}".encode() for number in range(20)]

        async with self.running(gateway, retry_attempts=2):
            await self.publish(topic, bodies[:5])
            await wait_until(
                lambda: len(gateway.received("steady")) >= 5, description="5 records"
            )
            await gateway.stop()
            await self.publish(topic, bodies[5:])
            await asyncio.sleep(1.5)
            await gateway.start()
            await wait_until(
                lambda: set(gateway.bodies("steady")) == set(bodies),
                description="every record after the outage",
            )

        assert sorted(gateway.bodies("steady")) == sorted(bodies)

    @pytest.mark.timeout(40)
    async def test_nothing_consumed_before_first_map(
        self, gateway: FakeGateway
    ) -> None:
        topic = await self.new_topic()
        gateway.deploy("waiting", topic)
        await gateway.stop()
        await self.publish(topic, [b"early"])

        async with self.running(gateway, wait_ready=False) as running:
            await asyncio.sleep(1.5)
            assert running.source.state != "ready"
            assert gateway.invocations == []
            await gateway.start()
            await wait_until(
                lambda: gateway.bodies("waiting") == [b"early"],
                description="the record after the first map",
            )
