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
        "backlog-1m",
        "1 M queued calls accepted and drained with flat memory",
        "not measured: at the drain rate the queue-drain benchmark measures "
        "(about 1,400 calls/s on 2 shared cores), 1 M calls take about 12 "
        "minutes to drain, beyond a bounded run, and nats-server keeps "
        "per-subject state for every queued call",
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
