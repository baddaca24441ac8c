"""The benchmark runner: sides measured alternately, statistics, targets, records.

A benchmark (`Benchmark`) names the sides it measures, for example
`baseline` and `faashub`, and the metrics each side reports. `prepare`
starts its servers and returns a function that measures one side once. The
runner calls that function for every side in every run, and reverses the
order of the sides in every other run. So a machine that slows down or
speeds up during the run, because of other processes or a warming disk
cache, shifts both sides alike.

For each metric the runner reports the median, min and max over the runs
of each side. For each metric that both `baseline` and `faashub` report it
computes the ratio faashub / baseline per run, since the two were measured
back to back, and reports the median, min and max of those ratios. Targets
are checked against these numbers and reported as met or not met. Nothing
here fails because of a number, so a slow machine never breaks a build.

Every server a benchmark starts belongs to one `Servers`, which stops them
all when the benchmark ends or fails. Output of the servers goes to a log
folder. The folder is kept, and its path printed, after a failure or with
--keep-logs, and removed otherwise.
"""

import abc
import logging
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from bench import records
from bench.errors import BenchmarkError
from bench.load import AiohttpLoad, LoadChoice, LoadGenerator, choose_load_generator
from bench.processes import Servers, temporary_directory

logger = logging.getLogger(__name__)

BASELINE = "baseline"
FAASHUB = "faashub"

Sample = dict[str, float]
"""The numbers of one side in one run, by metric key."""


@dataclass(frozen=True, slots=True)
class Metric:
    """A number that a side reports, such as throughput or p99 latency."""

    key: str
    label: str
    unit: str
    compare: bool = True
    """Whether the faashub / baseline ratio of this metric is reported."""


@dataclass(frozen=True, slots=True)
class Target:
    """A goal of the issue that the runner checks and reports, never enforces.

    `ratio_at_least` and `ratio_at_most` compare the median of the per-run
    faashub / baseline ratios of `metric` with `threshold`. `at_most`
    compares the faashub side's `statistic` of `metric` with it.
    """

    description: str
    metric: str
    kind: Literal["ratio_at_least", "ratio_at_most", "at_most"]
    threshold: float
    statistic: Literal["median", "max"] = "median"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Options of one `python -m bench run` command."""

    smoke: bool
    runs: int | None
    """Runs per benchmark, or None for each benchmark's default (1 in smoke mode)."""
    results_dir: Path
    load: LoadChoice
    command: Sequence[str]
    keep_logs: bool = False
    """Keep the servers' log folder after a successful run too."""
    calls: int | None = None
    """Calls for the benchmarks that take a count, or None for their own default."""


@dataclass
class Context:
    """The servers, folders and options that a benchmark's `prepare` uses."""

    smoke: bool
    servers: Servers
    work_dir: Path
    """A folder for state (NATS store, provider state), removed afterwards."""
    load_choice: LoadChoice
    calls: int | None = None
    """The `--calls` option, for the benchmarks that take a count."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """Settings of this benchmark (durations, counts) for the record."""
    notes: list[str] = field(default_factory=list)
    """Remarks for the report and the record, such as a fallback taken."""
    _load: LoadGenerator | None = None
    _warmed: set[str] = field(default_factory=set)

    @property
    def load(self) -> LoadGenerator:
        """The HTTP load generator, chosen on first use."""
        if self._load is None:
            self._load = choose_load_generator(self.load_choice, smoke=self.smoke)
            if isinstance(self._load, AiohttpLoad):
                self.notes.append(
                    f"The load came from {self._load.name}, not from wrk, and its "
                    "numbers are not comparable with wrk's."
                )
        return self._load

    def load_name(self) -> str:
        return self._load.name if self._load is not None else "none"

    def warm_up(
        self,
        side: str,
        url: str,
        *,
        duration_s: float,
        connections: int,
        body_bytes: int,
    ) -> bool:
        """Send load to `url` for `duration_s` before the first measurement of `side`.

        Returns whether it sent any, so that the caller can clear what the
        warm-up left behind. It sends none for a later measurement of the
        same side or when `duration_s` is 0.
        """
        first = side not in self._warmed
        self._warmed.add(side)
        if not first or duration_s <= 0:
            return False
        self.load.run(
            url, connections=connections, duration_s=duration_s, body_bytes=body_bytes
        )
        return True


Measure = Callable[[str, int], Sample]
"""Measures one side (first argument) in one run (second, from 0) once."""


class Benchmark(abc.ABC):
    """One benchmark: its sides, metrics and targets, and how to measure them.

    A subclass lives in a module of `bench.benchmarks` and is exposed as the
    module's `BENCHMARK`, which is all it takes to add one.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    sides: ClassVar[tuple[str, ...]] = (BASELINE, FAASHUB)
    metrics: ClassVar[tuple[Metric, ...]]
    targets: ClassVar[tuple[Target, ...]] = ()
    default_runs: ClassVar[int] = 5

    @abc.abstractmethod
    def prepare(self, context: Context) -> Measure:
        """Start the servers in `context.servers` and return the measure function."""

    def derive(
        self, summary: Mapping[str, Mapping[str, Mapping[str, float]]]
    ) -> Sample:
        """Return numbers computed from the per-side summary, such as added latency."""
        return {}


def run_benchmark(benchmark: Benchmark, options: RunOptions) -> dict[str, Any]:
    """Run `benchmark`, print its report, write its record and return the record.

    Raises BenchmarkError when it cannot complete. Its servers are stopped
    either way, and their logs are kept after a failure.
    """
    runs = options.runs or (1 if options.smoke else benchmark.default_runs)
    started_at = records.utc_now()
    load_before = records.load_average()
    log_dir = Path(tempfile.mkdtemp(prefix=f"bench-{benchmark.name}-logs-"))
    print(
        f"== {benchmark.name}: {benchmark.title}\n"
        f"   {runs} run(s), {'smoke' if options.smoke else 'full'} mode, "
        f"load average {load_before}",
        flush=True,
    )
    began = time.monotonic()
    try:
        samples, context = _measure(benchmark, options, runs=runs, log_dir=log_dir)
    except BenchmarkError:
        print(f"   server logs kept in {log_dir}", flush=True)
        raise
    except Exception as exc:
        print(f"   server logs kept in {log_dir}", flush=True)
        raise BenchmarkError(
            f"{benchmark.name} failed unexpectedly: {exc!r}\n{traceback.format_exc()}"
        ) from exc
    if options.keep_logs:
        print(f"   server logs kept in {log_dir}", flush=True)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)

    record = {
        "benchmark": benchmark.name,
        "title": benchmark.title,
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - began, 1),
        "mode": "smoke" if options.smoke else "full",
        "runs": runs,
        "command": list(options.command),
        "machine": records.machine(),
        "load_average_before": load_before,
        "load_average_after": records.load_average(),
        "versions": records.versions(context.load_name()),
        "parameters": context.parameters,
        **_results(benchmark, samples),
        "notes": context.notes,
    }
    _print_report(benchmark, record)
    path = records.write(record, results_dir=options.results_dir)
    print(f"   record: {path}", flush=True)
    return record


def _measure(
    benchmark: Benchmark, options: RunOptions, *, runs: int, log_dir: Path
) -> tuple[dict[str, list[Sample]], Context]:
    """Start the benchmark's servers, measure every side in every run, stop them."""
    samples: dict[str, list[Sample]] = {side: [] for side in benchmark.sides}
    with (
        temporary_directory(f"bench-{benchmark.name}-") as work_dir,
        Servers(log_dir) as servers,
    ):
        context = Context(
            smoke=options.smoke,
            servers=servers,
            work_dir=work_dir,
            load_choice=options.load,
            calls=options.calls,
        )
        measure = benchmark.prepare(context)
        for run in range(runs):
            # Every other run reverses the order, so drift hits both sides.
            order = benchmark.sides if run % 2 == 0 else benchmark.sides[::-1]
            for side in order:
                sample = measure(side, run)
                samples[side].append(sample)
                print(f"   run {run + 1} {side}: {_format_sample(sample)}", flush=True)
    return samples, context


def _results(benchmark: Benchmark, samples: dict[str, list[Sample]]) -> dict[str, Any]:
    """Return the record's sides, metrics, samples, statistics and verdicts."""
    summary = {side: _summarise(side_samples) for side, side_samples in samples.items()}
    ratios = _ratios(benchmark, samples)
    return {
        "sides": list(benchmark.sides),
        "metrics": {
            metric.key: {"label": metric.label, "unit": metric.unit}
            for metric in benchmark.metrics
        },
        "samples": samples,
        "summary": summary,
        "ratios": ratios,
        "derived": benchmark.derive(summary),
        "targets": [_evaluate(target, summary, ratios) for target in benchmark.targets],
    }


def _format_sample(sample: Sample) -> str:
    return ", ".join(f"{key} {_number(value)}" for key, value in sample.items())


def _number(value: float) -> str:
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _summarise(side_samples: list[Sample]) -> dict[str, dict[str, float]]:
    keys = dict.fromkeys(key for sample in side_samples for key in sample)
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [sample[key] for sample in side_samples if key in sample]
        summary[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return summary


def _ratios(
    benchmark: Benchmark, samples: Mapping[str, list[Sample]]
) -> dict[str, dict[str, Any]]:
    """Return faashub / baseline per metric, paired run by run."""
    if BASELINE not in samples or FAASHUB not in samples:
        return {}
    ratios: dict[str, dict[str, Any]] = {}
    for metric in benchmark.metrics:
        if not metric.compare:
            continue
        per_run = [
            faashub[metric.key] / baseline[metric.key]
            for baseline, faashub in zip(
                samples[BASELINE], samples[FAASHUB], strict=True
            )
            if metric.key in baseline
            and metric.key in faashub
            and baseline[metric.key] > 0
        ]
        if per_run:
            ratios[metric.key] = {
                "median": statistics.median(per_run),
                "min": min(per_run),
                "max": max(per_run),
                "per_run": per_run,
            }
    return ratios


def _evaluate(
    target: Target,
    summary: Mapping[str, Mapping[str, Mapping[str, float]]],
    ratios: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    value: float | None
    if target.kind == "at_most":
        stats = summary.get(FAASHUB, {}).get(target.metric)
        value = None if stats is None else stats[target.statistic]
    else:
        ratio = ratios.get(target.metric)
        value = None if ratio is None else float(ratio["median"])
    if value is None:
        met: bool | None = None
    elif target.kind == "ratio_at_least":
        met = value >= target.threshold
    else:
        met = value <= target.threshold
    return {
        "description": target.description,
        "metric": target.metric,
        "kind": target.kind,
        "threshold": target.threshold,
        "value": value,
        "met": met,
    }


def _print_report(benchmark: Benchmark, record: Mapping[str, Any]) -> None:
    summary: Mapping[str, Mapping[str, Mapping[str, float]]] = record["summary"]
    ratios: Mapping[str, Mapping[str, Any]] = record["ratios"]
    header = f"   {'metric':<40}" + "".join(f"{side:>24}" for side in benchmark.sides)
    print(header + (f"{'ratio':>24}" if ratios else ""))
    for metric in benchmark.metrics:
        cells = []
        present = False
        for side in benchmark.sides:
            stats = summary[side].get(metric.key)
            present = present or stats is not None
            cells.append(f"{_spread(stats):>24}")
        if not present:
            continue
        ratio = ratios.get(metric.key)
        ratio_cell = f"{_spread(ratio):>24}" if ratio else ""
        label = f"{metric.label} ({metric.unit})"
        print(f"   {label:<40}" + "".join(cells) + ratio_cell)
    for key, value in record["derived"].items():
        print(f"   {key}: {_number(value)}")
    for verdict in record["targets"]:
        value = verdict["value"]
        value_text = "not measured" if value is None else _number(value)
        outcome = {True: "met", False: "NOT met", None: "not measured"}[verdict["met"]]
        print(f"   target: {verdict['description']}: {value_text} -> {outcome}")
    for note in record["notes"]:
        print(f"   note: {note}")
    sys.stdout.flush()


def _spread(stats: Mapping[str, Any] | None) -> str:
    """Return `median (min-max)`, or "-" for a metric the side lacks."""
    if stats is None:
        return "-"
    if stats["min"] == stats["max"]:
        return _number(stats["median"])
    return (
        f"{_number(stats['median'])} ({_number(stats['min'])}-{_number(stats['max'])})"
    )
