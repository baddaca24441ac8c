"""Footprint: resident memory of each component idle and under load, and start time.

faashub side, per run: `faashub up` on a fresh state folder. `ready_s` is
the time from launching it to its line `faashub is up`. Before the first
run, the hub's packages are compiled to bytecode, as `pip install .` does.
The no-op function is deployed, and after a pause the resident memory
(RSS) of the hub process, its nats-server, provider, gateway and workers
process (the queue-worker and the cron connector in one process) is read
(idle). Then wrk
sends `POST /async-function/noop` with an X-Callback-Url for the load
duration, so the gateway accepts, the worker drains and calls back, and the
provider proxies, all at once. RSS is sampled every quarter second during
the load and for a moment after it, and the peak is kept (load). The
totals add up the hub and its components (nats-server, provider, gateway
and workers). A hub that runs its queue-workers and connectors as processes
of their own has them counted under "workers" as well. The function
processes are the user's and are reported apart.

Baseline side, per run: nats-server and `bench.apps:publish_app`, the
smallest Python process that accepts async calls, measured the same way
under the same load without callbacks. It shows how much of faashub's
memory any Python ASGI process with aiohttp and nats-py needs.
"""

import compileall
import importlib.util
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import stack
from bench.errors import BenchmarkError
from bench.harness import (
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
    command_line,
    descendants,
    free_port,
    python_module_argv,
    rss_mib,
)

BODY_BYTES = 1024
CONNECTIONS = 64
SAMPLE_INTERVAL_S = 0.25
READY_LINE = "faashub is up"
HUB_PARTS = ("hub", "nats", "provider", "gateway", "workers")
BASELINE_PARTS = ("nats", "app")
COMPONENT_LIMIT_MIB = 100.0
TOTAL_LIMIT_MIB = 300.0
READY_LIMIT_S = 2.0
# The packages of this source tree that `faashub up` imports.
HUB_PACKAGES = ("faashub", "gateway", "provider", "queue_worker", "connectors")


@dataclass(frozen=True, slots=True)
class _Scale:
    settle_s: float
    load_s: float
    after_load_s: float
    ready_timeout_s: float
    stop_grace_s: float
    """Seconds `faashub up` has to stop before the harness kills it."""


FULL = _Scale(
    settle_s=3, load_s=10, after_load_s=3, ready_timeout_s=60, stop_grace_s=20
)
SMOKE = _Scale(
    settle_s=0.5, load_s=1, after_load_s=0.5, ready_timeout_s=60, stop_grace_s=5
)


def _metrics() -> tuple[Metric, ...]:
    metrics = [
        Metric("ready_s", "time to ready", "s"),
        Metric("stop_s", "time to stop", "s", compare=False),
        Metric("idle_total_mib", "RSS idle, total", "MiB"),
        Metric("load_total_mib", "RSS under load, total", "MiB"),
    ]
    for part in (*HUB_PARTS, "app", "functions"):
        metrics.append(
            Metric(f"idle_{part}_mib", f"RSS idle, {part}", "MiB", compare=False)
        )
        metrics.append(
            Metric(f"load_{part}_mib", f"RSS under load, {part}", "MiB", compare=False)
        )
    metrics.append(Metric("accepted_per_s", "async calls accepted", "req/s"))
    return tuple(metrics)


def _targets() -> tuple[Target, ...]:
    targets = [
        Target(
            f"{part} RSS under load at most {COMPONENT_LIMIT_MIB:g} MiB (max of runs)",
            f"load_{part}_mib",
            "at_most",
            COMPONENT_LIMIT_MIB,
            statistic="max",
        )
        for part in ("provider", "gateway", "workers")
    ]
    targets.append(
        Target(
            f"faashub up with NATS under load at most {TOTAL_LIMIT_MIB:g} MiB "
            "(max of runs)",
            "load_total_mib",
            "at_most",
            TOTAL_LIMIT_MIB,
            statistic="max",
        )
    )
    targets.append(
        Target(
            f"faashub up ready within {READY_LIMIT_S:g} s",
            "ready_s",
            "at_most",
            READY_LIMIT_S,
        )
    )
    return tuple(targets)


class _PeakSampler:
    """Samples the RSS of named processes in a thread and keeps each one's peak."""

    def __init__(self, find_pids: Callable[[], Mapping[str, list[int]]]) -> None:
        self._find_pids = find_pids
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "_PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for part, used in _rss_by_part(self._find_pids()).items():
                self.peaks[part] = max(self.peaks.get(part, 0.0), used)
            self._stop.wait(SAMPLE_INTERVAL_S)


def _rss_by_part(pids: Mapping[str, list[int]]) -> dict[str, float]:
    found: dict[str, float] = {}
    for part, part_pids in pids.items():
        values = [used for pid in part_pids if (used := rss_mib(pid)) is not None]
        if values:
            found[part] = sum(values)
    return found


def _hub_pids(hub_pid: int) -> dict[str, list[int]]:
    """Return the pids of the hub and of each component below it, by part."""
    parts: dict[str, list[int]] = {"hub": [hub_pid], "functions": []}
    for pid in descendants(hub_pid):
        argv = command_line(pid)
        if not argv:
            continue
        if argv[0].endswith("nats-server"):
            parts.setdefault("nats", []).append(pid)
        elif argv[1:3] == ["-m", "faashub"] and len(argv) > 3:
            part = {
                "provider": "provider",
                "gateway": "gateway",
                "up-workers": "workers",
                "queue-worker": "workers",
                "connector": "workers",
            }
            parts.setdefault(part.get(argv[3], argv[3]), []).append(pid)
        else:
            parts["functions"].append(pid)
    return parts


def _wait_for_line(
    path: Path, line: str, *, process_exited: Callable[[], bool], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text(errors="replace"):
            return
        if process_exited():
            raise BenchmarkError(
                f"faashub up exited before printing {line!r}; its output is in {path}."
            )
        time.sleep(0.01)
    raise BenchmarkError(
        f"faashub up did not print {line!r} within {timeout_s:g} s; its output is "
        f"in {path}."
    )


class Footprint(Benchmark):
    name = "footprint"
    title = "RSS of each component idle and under async load, faashub up start time"
    default_runs = 3
    metrics = _metrics()
    targets = _targets()

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(
            settle_s=scale.settle_s,
            load_s=scale.load_s,
            stop_grace_s=scale.stop_grace_s,
            after_load_s=scale.after_load_s,
            connections=CONNECTIONS,
            body_bytes=BODY_BYTES,
            sample_interval_s=SAMPLE_INTERVAL_S,
        )
        compile_sources()
        servers = context.servers
        receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
        stack.wait_until_ready(servers, receiver)
        callback_url = f"{receiver.url}/callback"

        def measure(side: str, run: int) -> Sample:
            if side == FAASHUB:
                return self._measure_hub(context, scale, run, callback_url=callback_url)
            return self._measure_baseline(context, scale, run)

        return measure

    def _measure_hub(
        self, context: Context, scale: _Scale, run: int, *, callback_url: str
    ) -> Sample:
        servers = context.servers
        port = free_port()
        name = f"faashub-up-{run + 1}"
        argv = python_module_argv(
            "faashub",
            "up",
            "--port",
            str(port),
            "--state-dir",
            str(context.work_dir / f"hub-{run + 1}"),
        )
        launched = time.monotonic()
        hub = servers.start(name, argv)
        try:
            _wait_for_line(
                servers.log_path(name),
                READY_LINE,
                process_exited=lambda: hub.poll() is not None,
                timeout_s=scale.ready_timeout_s,
            )
            ready_s = time.monotonic() - launched
            gateway_url = f"http://{LOOPBACK}:{port}"
            # `faashub up` protects /system with the credentials it generates.
            credentials = context.work_dir / f"hub-{run + 1}" / "credentials"
            stack.deploy_noop_function(
                gateway_url,
                auth=(
                    (credentials / "basic-auth-user").read_text(),
                    (credentials / "basic-auth-password").read_text(),
                ),
            )
            sample = self._measure_memory(
                context,
                scale,
                find_pids=lambda: _hub_pids(hub.pid),
                parts=HUB_PARTS,
                url=f"{gateway_url}/async-function/{stack.NOOP_FUNCTION}",
                callback_url=callback_url,
            )
        finally:
            stopping = time.monotonic()
            exit_code = servers.stop(hub, grace_s=scale.stop_grace_s)
            stop_s = time.monotonic() - stopping
        if exit_code != 0:
            context.notes.append(
                f"run {run + 1}: faashub up exited with code {exit_code} after "
                f"{stop_s:.1f} s. A negative code means that the harness killed it "
                f"after {scale.stop_grace_s:g} s."
            )
        return {"ready_s": ready_s, "stop_s": stop_s, **sample}

    def _measure_baseline(self, context: Context, scale: _Scale, run: int) -> Sample:
        servers = context.servers
        launched = time.monotonic()
        nats_server = stack.start_nats(
            servers, store_dir=context.work_dir / f"baseline-nats-{run + 1}"
        )
        stack.wait_until_ready(servers, nats_server)
        app = stack.start_asgi_app(
            servers,
            "publish_app",
            name=f"publish-app-{run + 1}",
            env={"BENCH_NATS_URL": nats_server.url},
        )
        try:
            stack.wait_until_ready(servers, app)
            ready_s = time.monotonic() - launched
            sample = self._measure_memory(
                context,
                scale,
                find_pids=lambda: {
                    "nats": [nats_server.process.pid],
                    "app": [app.process.pid],
                },
                parts=BASELINE_PARTS,
                url=f"{app.url}/async-function/{stack.NOOP_FUNCTION}",
                callback_url="",
            )
        finally:
            stopping = time.monotonic()
            servers.stop(app.process)
            servers.stop(nats_server.process)
            stop_s = time.monotonic() - stopping
        return {"ready_s": ready_s, "stop_s": stop_s, **sample}

    def _measure_memory(
        self,
        context: Context,
        scale: _Scale,
        *,
        find_pids: Callable[[], Mapping[str, list[int]]],
        parts: tuple[str, ...],
        url: str,
        callback_url: str,
    ) -> Sample:
        """Read RSS idle, then its peak under load, by part and in total."""
        time.sleep(scale.settle_s)
        pids = find_pids()
        missing = [part for part in parts if not pids.get(part)]
        if missing:
            raise BenchmarkError(
                f"Cannot find the process of {', '.join(missing)} to measure its "
                "memory. Check whether a component failed to start."
            )
        idle = _rss_by_part(pids)
        with _PeakSampler(find_pids) as sampler:
            result = context.load.run(
                url,
                connections=CONNECTIONS,
                duration_s=scale.load_s,
                body_bytes=BODY_BYTES,
                callback_url=callback_url,
            )
            time.sleep(scale.after_load_s)
        sample: Sample = {}
        for part, used in idle.items():
            sample[f"idle_{part}_mib"] = used
        for part, used in sampler.peaks.items():
            sample[f"load_{part}_mib"] = used
        sample["idle_total_mib"] = sum(idle.get(part, 0.0) for part in parts)
        sample["load_total_mib"] = sum(sampler.peaks.get(part, 0.0) for part in parts)
        sample["accepted_per_s"] = result.requests_per_s
        return sample


BENCHMARK = Footprint()


def compile_sources() -> None:
    """Write the bytecode of the hub's packages, as `pip install .` does.

    A user's `faashub up` reads compiled modules. Run from a source tree
    with PYTHONDONTWRITEBYTECODE set, every start would compile faashub's
    sources again, about 0.45 CPU-seconds on a 2-core VM, and count that
    in the time to ready.
    """
    for package in HUB_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise BenchmarkError(f"Cannot find the package {package!r} to compile.")
        for folder in spec.submodule_search_locations:
            if not compileall.compile_dir(folder, quiet=1):
                raise BenchmarkError(f"Cannot compile the modules in {folder}.")
