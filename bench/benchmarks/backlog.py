"""Backlog: a large number of async calls accepted, then drained for a bounded time.

Only faashub is measured; the question is whether memory stays flat, not how
fast a raw loop is. A run has two phases:

1. Accept. `python -m bench.accept_load` POSTs `--calls` calls (1,000,000 by
   default) with a 1 KiB body and an X-Callback-Url to the gateway's
   `/async-function/noop`, 64 in flight, while no worker runs. So the whole
   backlog is stored in the calls stream.
2. Drain. `faashub queue-worker` starts with its defaults and drains for at
   most DRAIN_LIMIT_S, invoking the no-op function and posting each result to
   the callback receiver.

During both phases the resident memory of nats-server, the gateway and the
worker is sampled every SAMPLE_INTERVAL_S, and the calls stream's message
count with it. The report gives memory at the start and end of each phase
and its peak, nats-server's growth per 100,000 stored calls, and both rates.
Draining 1,000,000 calls takes longer than the drain limit on two cores, so
the drain shows whether memory grows while calls go out, and how fast, not
the end of the backlog.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import arrivals, queues, stack
from bench.errors import BenchmarkError
from bench.harness import FAASHUB, Benchmark, Context, Measure, Metric, Sample
from bench.processes import Servers, python_module_argv, rss_mib
from faashub import constants, embedded_nats

BODY_BYTES = 1024
CONCURRENCY = 64
SAMPLE_INTERVAL_S = 1.0
# nats-server's growth is reported per this many stored calls.
GROWTH_PER_CALLS = 100_000


@dataclass(frozen=True, slots=True)
class _Scale:
    calls: int
    accept_limit_s: float
    drain_limit_s: float


FULL = _Scale(calls=1_000_000, accept_limit_s=1800, drain_limit_s=240)
SMOKE = _Scale(calls=1_000, accept_limit_s=60, drain_limit_s=20)


@dataclass(slots=True)
class _Memory:
    """First, peak and last RSS of one process over a phase, in MiB."""

    first: float = 0.0
    peak: float = 0.0
    last: float = 0.0

    def add(self, value: float | None) -> None:
        if value is None:
            return
        if not self.first:
            self.first = value
        self.peak = max(self.peak, value)
        self.last = value


class Backlog(Benchmark):
    name = "backlog-1m"
    title = "1 M queued calls accepted, then drained for a bounded time"
    sides = (FAASHUB,)
    default_runs = 1
    metrics = (
        Metric("accepted", "calls accepted", "count"),
        Metric("accept_failed", "calls not accepted", "count"),
        Metric("accept_per_s", "accept rate", "calls/s"),
        Metric("stored_mib", "calls stream size after the accept", "MiB"),
        Metric("nats_idle_mib", "nats-server RSS before the accept", "MiB"),
        Metric("nats_accepted_mib", "nats-server RSS after the accept", "MiB"),
        Metric("nats_mib_per_100k", "nats-server growth per 100 k stored calls", "MiB"),
        Metric("gateway_first_mib", "gateway RSS at the accept's start", "MiB"),
        Metric("gateway_peak_mib", "gateway RSS peak during the accept", "MiB"),
        Metric("gateway_last_mib", "gateway RSS at the accept's end", "MiB"),
        Metric("drained", "callbacks during the drain", "count"),
        Metric("drain_per_s", "drain rate", "calls/s"),
        Metric("drain_s", "drain time", "s"),
        Metric("remaining", "calls still stored after the drain", "count"),
        Metric("worker_first_mib", "worker RSS at the first callback", "MiB"),
        Metric("worker_peak_mib", "worker RSS peak during the drain", "MiB"),
        Metric("worker_last_mib", "worker RSS at the drain's end", "MiB"),
        Metric("nats_drain_peak_mib", "nats-server RSS peak during the drain", "MiB"),
        Metric("nats_drain_last_mib", "nats-server RSS at the drain's end", "MiB"),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        calls = context.calls or scale.calls
        context.parameters.update(
            calls=calls,
            accept_limit_s=scale.accept_limit_s,
            drain_limit_s=scale.drain_limit_s,
            body_bytes=BODY_BYTES,
            concurrency=CONCURRENCY,
            sample_interval_s=SAMPLE_INTERVAL_S,
            nats_go_memory_limit_mib=embedded_nats.DEFAULT_GO_MEMORY_LIMIT_MIB,
        )
        servers = context.servers
        receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
        # The memory limit that `faashub up` gives its embedded server, so the
        # run shows the memory the hub ships with rather than Go's headroom:
        # without it, nats-server held about 1.9 times its live heap.
        hub = stack.start_hub(
            servers,
            work_dir=context.work_dir,
            also_ready=(receiver,),
            go_memory_limit_mib=embedded_nats.DEFAULT_GO_MEMORY_LIMIT_MIB,
        )
        nats_server, gateway = hub.nats_server, hub.gateway
        stack.deploy_noop_function(gateway.url)
        callback_url = f"{receiver.url}/callback"
        accept_url = f"{gateway.url}/async-function/{stack.NOOP_FUNCTION}"

        def measure(side: str, run: int) -> Sample:
            queues.purge_calls(nats_server.url)
            arrivals.reset(receiver.url)
            sample = _accept(
                servers,
                url=accept_url,
                callback_url=callback_url,
                calls=calls,
                time_limit_s=scale.accept_limit_s,
                nats_pid=nats_server.process.pid,
                gateway_pid=gateway.process.pid,
            )
            stored = queues.stream_state(nats_server.url, constants.CALLS_STREAM)
            sample["stored_mib"] = stored.bytes / 2**20
            worker = stack.start_worker(
                servers, gateway_url=gateway.url, nats_url=nats_server.url
            )
            try:
                sample.update(
                    _drain(
                        receiver_url=receiver.url,
                        worker_pid=worker.process.pid,
                        nats_pid=nats_server.process.pid,
                        time_limit_s=scale.drain_limit_s,
                        stop_after=int(sample["accepted"]),
                    )
                )
            finally:
                servers.stop(worker.process)
            remaining = queues.stream_state(nats_server.url, constants.CALLS_STREAM)
            sample["remaining"] = remaining.messages
            return sample

        return measure


def _accept(
    servers: Servers,
    *,
    url: str,
    callback_url: str,
    calls: int,
    time_limit_s: float,
    nats_pid: int,
    gateway_pid: int,
) -> Sample:
    """Send the calls through the gateway, sampling memory until the loader exits."""
    argv = python_module_argv(
        "bench.accept_load",
        "--url",
        url,
        "--count",
        str(calls),
        "--concurrency",
        str(CONCURRENCY),
        "--body-bytes",
        str(BODY_BYTES),
        "--callback-url",
        callback_url,
        "--time-limit-s",
        str(time_limit_s),
    )

    nats_idle = rss_mib(nats_pid) or 0.0
    nats = _Memory()
    gateway = _Memory()
    loader = servers.start("accept-load", argv)
    deadline = time.monotonic() + time_limit_s + 30
    try:
        _sample_until(
            lambda: loader.poll() is not None,
            deadline=deadline,
            record=lambda: _record_both(nats, nats_pid, gateway, gateway_pid),
        )
    finally:
        servers.stop(loader)

    result = _loader_result(servers.log_path("accept-load"))
    accepted = float(result["accepted"])
    if accepted < 1:
        raise BenchmarkError(
            f"The gateway accepted no call at {url}: {result.get('first_error')}; "
            f"see {servers.log_path('gateway')}."
        )

    nats_accepted = rss_mib(nats_pid) or nats.last
    return {
        "accepted": accepted,
        "accept_failed": float(result["failed"]),
        "accept_per_s": accepted / float(result["elapsed_s"]),
        "nats_idle_mib": nats_idle,
        "nats_accepted_mib": nats_accepted,
        "nats_mib_per_100k": (nats_accepted - nats_idle) / accepted * GROWTH_PER_CALLS,
        "gateway_first_mib": gateway.first,
        "gateway_peak_mib": gateway.peak,
        "gateway_last_mib": gateway.last,
    }


def _drain(
    *,
    receiver_url: str,
    worker_pid: int,
    nats_pid: int,
    time_limit_s: float,
    stop_after: int,
) -> Sample:
    """Let the worker drain until every call is back or the time limit passes."""
    worker = _Memory()
    nats = _Memory()
    deadline = time.monotonic() + time_limit_s
    with httpx.Client(timeout=5.0, trust_env=False) as client:

        def record() -> None:
            if arrivals.read(client, receiver_url).count:
                worker.add(rss_mib(worker_pid))
            nats.add(rss_mib(nats_pid))

        _sample_until(
            lambda: arrivals.read(client, receiver_url).count >= stop_after,
            deadline=deadline,
            record=record,
        )
        drained = arrivals.read(client, receiver_url)
    count = drained.count
    if count < 2:
        raise BenchmarkError(
            f"The queue-worker delivered {count} callbacks within {time_limit_s:g} s, "
            "too few for a rate; see its log."
        )
    drain_s = (drained.last_ns - drained.first_ns) / 1e9
    return {
        "drained": float(count),
        "drain_per_s": (count - 1) / drain_s,
        "drain_s": drain_s,
        "worker_first_mib": worker.first,
        "worker_peak_mib": worker.peak,
        "worker_last_mib": worker.last,
        "nats_drain_peak_mib": nats.peak,
        "nats_drain_last_mib": nats.last,
    }


def _record_both(
    first: _Memory, first_pid: int, second: _Memory, second_pid: int
) -> None:
    first.add(rss_mib(first_pid))
    second.add(rss_mib(second_pid))


def _sample_until(
    done: Callable[[], bool], *, deadline: float, record: Callable[[], object]
) -> None:
    while True:
        record()
        if done() or time.monotonic() > deadline:
            return
        time.sleep(SAMPLE_INTERVAL_S)


def _loader_result(log_path: Path) -> dict[str, float | str]:
    """Return the JSON line that `bench.accept_load` printed last."""
    text = log_path.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if not lines:
        raise BenchmarkError(
            f"bench.accept_load printed no result; see its log in {log_path}."
        )
    result: dict[str, float | str] = json.loads(lines[-1])
    return result


BENCHMARK = Backlog()
