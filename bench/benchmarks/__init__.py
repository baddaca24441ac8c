"""The benchmarks, one module each.

Every module in this package that defines `BENCHMARK` (an instance of
`bench.harness.Benchmark`) is a benchmark. `registry()` finds them, so adding
one is adding one module.
"""

import importlib
import pkgutil

from bench.harness import Benchmark


def registry() -> dict[str, Benchmark]:
    """Return every benchmark module's BENCHMARK, by name, in module order."""
    found: dict[str, Benchmark] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        benchmark = getattr(module, "BENCHMARK", None)
        if isinstance(benchmark, Benchmark):
            found[benchmark.name] = benchmark
    return found
