"""The benchmarks, one module each, and the slots of those not measured yet.

Every module in this package that defines `BENCHMARK` (an instance of
`bench.harness.Benchmark`) is a benchmark. `registry()` finds them, so adding
one is adding one module. `PENDING` names the measurements the project
wants but cannot make yet, with the reason. A module whose benchmark has the
name of a pending slot replaces that slot.
"""

import importlib
import pkgutil
from dataclasses import dataclass

from bench.harness import Benchmark


@dataclass(frozen=True, slots=True)
class PendingBenchmark:
    """A named slot for a benchmark that is not written yet, and why."""

    name: str
    title: str
    reason: str


PENDING: tuple[PendingBenchmark, ...] = (
    PendingBenchmark(
        "kafka-connector",
        "records/s from a preloaded topic to a no-op function vs a raw aiokafka "
        "consume-and-POST loop, in none, partition and key ordering",
        "not measured yet: the Kafka connector is being built",
    ),
    PendingBenchmark(
        "sqs-connector",
        "messages/s through the SQS connector vs a raw aioboto3 "
        "receive-POST-delete loop on the same server",
        "not measured yet: the SQS connector is being built",
    ),
    PendingBenchmark(
        "cron-connector",
        "delay from the scheduled instant to the invocation at p50 and p99 with "
        "10 k schedules a second, and the connector's CPU and memory",
        "not measured yet: the cron connector is being built",
    ),
    PendingBenchmark(
        "topic-map-10k",
        "time and memory to rebuild the topic map of 10 k functions",
        "not measured yet: the topic map belongs to the connectors, which are "
        "being built",
    ),
    PendingBenchmark(
        "backlog-1m",
        "1 M queued calls accepted and drained with flat memory",
        "not measured: at the drain rate the queue-drain benchmark measures, "
        "1 M calls take far longer than a bounded run on a 2-core machine",
    ),
)


def registry() -> dict[str, Benchmark]:
    """Return every benchmark module's BENCHMARK, by name, in module order."""
    found: dict[str, Benchmark] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        benchmark = getattr(module, "BENCHMARK", None)
        if isinstance(benchmark, Benchmark):
            found[benchmark.name] = benchmark
    return found


def pending() -> dict[str, PendingBenchmark]:
    """Return the slots that no benchmark module fills yet, by name."""
    written = registry()
    return {slot.name: slot for slot in PENDING if slot.name not in written}
