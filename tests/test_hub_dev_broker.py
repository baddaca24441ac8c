"""`faashub up --kafka-dev-broker`: the hub runs the Tansu broker itself.

The broker keeps its records in memory, so it must outlive the workers
process, which the hub restarts after any crash of a queue-worker or a
connector. A real hub and a real Tansu broker run here.
"""

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.connectors.conftest import create_topics, kafka_producer, read_topic
from tests.hub_support import RunningHub, running_hub
from tests.test_hub import pids_running

pytestmark = pytest.mark.timeout(90)


def broker_address(hub: RunningHub) -> str:
    """Return the address that the `development broker started` lines name.

    Fails unless every such line names the same address.
    """
    addresses = {
        found.group(1)
        for line in hub.output
        if (found := re.search(r"development broker started.* address=(\S+)", line))
    }
    assert len(addresses) == 1, "".join(hub.output[-30:])
    [address] = addresses
    return address


async def produce(brokers: str, topic: str, value: bytes) -> None:
    async with kafka_producer(brokers) as producer:
        await producer.send_and_wait(topic, value)


def test_dev_broker_survives_workers_restart(tmp_path: Path) -> None:
    topic = "orders"
    with running_hub(tmp_path / "state", extra_args=["--kafka-dev-broker"]) as hub:
        brokers = broker_address(hub)
        asyncio.run(create_topics(brokers, topic))
        asyncio.run(produce(brokers, topic, b"kept"))
        [workers_pid] = pids_running(hub.process.pid, "up-workers")

        os.kill(workers_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not any("restarted workers process" in line for line in hub.output):
            assert time.monotonic() < deadline, "".join(hub.output[-30:])
            time.sleep(0.1)

        # One broker start, at the same address, with the record still there.
        assert broker_address(hub) == brokers
        [record] = asyncio.run(read_topic(brokers, topic, count=1))
        assert record.value == b"kept"
        assert hub.process.poll() is None
