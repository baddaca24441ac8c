"""Queue drain: N queued calls to a no-op function, each with a callback.

Both sides drain the same number of 1 KiB calls, invoke the same no-op
function process and post to the same callback receiver
(`bench.apps:callback_app`):

* `baseline`: `python -m bench.raw_drain`, a raw pull, invoke, callback, ack
  loop with 64 calls in flight, reading plain messages from a stream with
  the calls stream's storage and retention, and calling the function
  directly;
* `faashub`: `faashub queue-worker` with its defaults (64 calls in flight),
  reading queued calls that the harness stored in the calls stream as the
  gateway would, and invoking the function through the gateway and the
  provider, as it does in production.

Each run prefills the queue first, then starts the drainer and waits until
every callback arrived, bounded by a time limit. The rate is the number of
callbacks divided by the time from the first to the last one, which leaves
out the drainer's start-up. `wall_s` includes it. The drainer's resident memory
is sampled during the drain, to show whether it stays flat, and the CPU time
of every process involved is divided by the calls drained, to show where a
call's time goes.
"""

import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from bench import apps, queues, stack
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
    CpuMeter,
    Servers,
    cpu_per_call_us,
    free_port,
    python_module_argv,
    rss_mib,
)
from faashub import constants

BODY_BYTES = 1024
CONCURRENCY = 64
BASELINE_STREAM = "BENCH_DRAIN"
BASELINE_CONSUMER = "bench-raw-drain"
STATUS_STREAM = f"KV_{constants.STATUS_BUCKET}"
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class _Scale:
    calls: int
    time_limit_s: float


FULL = _Scale(calls=50_000, time_limit_s=240)
SMOKE = _Scale(calls=300, time_limit_s=30)


@dataclass(frozen=True, slots=True)
class _CallbackStats:
    count: int
    failed: int
    first_ns: int
    last_ns: int


class QueueDrain(Benchmark):
    name = "queue-drain"
    title = "queued calls to a no-op function with callbacks, drained"
    default_runs = 3
    metrics = (
        Metric("calls_per_s", "drain rate", "calls/s"),
        Metric("drain_s", "first to last callback", "s"),
        Metric("wall_s", "start to last callback", "s", compare=False),
        Metric("completed", "callbacks received", "count", compare=False),
        Metric("failed", "callbacks with a failed call", "count", compare=False),
        Metric("rss_first_mib", "drainer RSS at 1st callback", "MiB", compare=False),
        Metric("rss_peak_mib", "drainer RSS peak", "MiB", compare=False),
        Metric("rss_last_mib", "drainer RSS at the end", "MiB", compare=False),
        Metric("cpu_us_drainer", "CPU per call, drainer", "us"),
        Metric("cpu_us_gateway", "CPU per call, gateway", "us", compare=False),
        Metric("cpu_us_provider", "CPU per call, provider", "us", compare=False),
        Metric("cpu_us_function", "CPU per call, function", "us"),
        Metric("cpu_us_callback", "CPU per call, callback receiver", "us"),
        Metric("cpu_us_nats", "CPU per call, nats-server", "us"),
        Metric("cpu_us_total", "CPU per call, all processes", "us"),
    )
    targets = (
        Target(
            "drain rate at least 0.8 of the baseline",
            "calls_per_s",
            "ratio_at_least",
            0.8,
        ),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(
            calls=scale.calls,
            time_limit_s=scale.time_limit_s,
            body_bytes=BODY_BYTES,
            concurrency=CONCURRENCY,
        )
        servers = context.servers
        nats_server = stack.start_nats(servers, store_dir=context.work_dir / "nats")
        provider = stack.start_provider(
            servers, state_dir=context.work_dir / "provider"
        )
        receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
        stack.wait_until_ready(servers, nats_server)
        gateway = stack.start_gateway(
            servers, provider_url=provider.url, nats_url=nats_server.url
        )
        stack.wait_until_ready(servers, provider, receiver, gateway)
        function_url = stack.deploy_noop_function(gateway.url, port=free_port())
        callback_url = f"{receiver.url}/callback"
        body = b"x" * BODY_BYTES
        busy_pids = {
            "gateway": gateway.process.pid,
            "provider": provider.process.pid,
            "function": stack.function_pid(provider.process.pid),
            "callback": receiver.process.pid,
            "nats": nats_server.process.pid,
        }

        def prefill(side: str) -> None:
            if side == BASELINE:
                queues.purge(nats_server.url, BASELINE_STREAM)
                queues.prefill_plain(
                    nats_server.url,
                    stream=BASELINE_STREAM,
                    consumer=BASELINE_CONSUMER,
                    count=scale.calls,
                    body=body,
                )
            else:
                queues.purge(nats_server.url, constants.CALLS_STREAM)
                queues.purge(nats_server.url, STATUS_STREAM)
                queues.prefill_calls(
                    nats_server.url,
                    function=stack.NOOP_FUNCTION,
                    count=scale.calls,
                    body=body,
                    callback_url=callback_url,
                )

        def start_drainer(side: str) -> stack.Component:
            if side == FAASHUB:
                return stack.start_worker(
                    servers, gateway_url=gateway.url, nats_url=nats_server.url
                )
            argv = python_module_argv(
                "bench.raw_drain",
                "--nats-url",
                nats_server.url,
                "--stream",
                BASELINE_STREAM,
                "--consumer",
                BASELINE_CONSUMER,
                "--function-url",
                f"{function_url}/",
                "--callback-url",
                callback_url,
                "--count",
                str(scale.calls),
                "--concurrency",
                str(CONCURRENCY),
                "--time-limit-s",
                str(scale.time_limit_s),
            )
            process = servers.start("raw-drain", argv)
            return stack.Component("raw-drain", process, "", 0)

        def measure(side: str, run: int) -> Sample:
            prefill(side)
            _reset_callbacks(receiver.url)
            launched = time.monotonic()
            drainer = start_drainer(side)
            try:
                sample = _wait_for_callbacks(
                    servers,
                    drainer,
                    receiver_url=receiver.url,
                    expected=scale.calls,
                    launched=launched,
                    time_limit_s=scale.time_limit_s,
                    other_pids=busy_pids,
                )
            finally:
                servers.stop(drainer.process)
            if sample["completed"] < scale.calls:
                context.notes.append(
                    f"run {run + 1} {side}: {sample['completed']:.0f} of "
                    f"{scale.calls} callbacks arrived within {scale.time_limit_s:g} s; "
                    "the rate covers those only."
                )
            return sample

        return measure


def _reset_callbacks(receiver_url: str) -> None:
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        client.post(receiver_url + apps.RESET_PATH).raise_for_status()


def _callback_stats(client: httpx.Client, receiver_url: str) -> _CallbackStats:
    response = client.get(receiver_url + apps.STATS_PATH)
    response.raise_for_status()
    data = response.json()
    return _CallbackStats(
        count=int(data["count"]),
        failed=int(data["failed"]),
        first_ns=int(data["first_ns"]),
        last_ns=int(data["last_ns"]),
    )


def _wait_for_callbacks(
    servers: Servers,
    drainer: stack.Component,
    *,
    receiver_url: str,
    expected: int,
    launched: float,
    time_limit_s: float,
    other_pids: Mapping[str, int],
) -> Sample:
    """Poll the receiver until all callbacks arrived, the drainer exits or time ends.

    The CPU time of the drainer and of `other_pids` is measured from the
    first callback seen to the end, like the rate.
    """
    deadline = launched + time_limit_s
    rss_first = rss_peak = rss_last = 0.0
    meter = CpuMeter({"drainer": drainer.process.pid, **other_pids})
    metered_from = -1
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while True:
            stats = _callback_stats(client, receiver_url)
            if stats.count and metered_from < 0:
                meter.start()
                metered_from = stats.count
            rss = rss_mib(drainer.process.pid)
            if rss is not None:
                rss_last = rss
                rss_peak = max(rss_peak, rss)
                if stats.count and not rss_first:
                    rss_first = rss
            if stats.count >= expected:
                break
            if drainer.process.poll() is not None:
                # The raw drain exits by itself: read its last callbacks too.
                stats = _callback_stats(client, receiver_url)
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_INTERVAL_S)
    cpu_used = meter.stop() if metered_from >= 0 else {}
    if stats.count < 2:
        raise BenchmarkError(
            f"{drainer.name} delivered {stats.count} of {expected} callbacks within "
            f"{time_limit_s:g} s, too few for a rate; see its log in "
            f"{servers.log_path(drainer.name)}."
        )
    drain_s = (stats.last_ns - stats.first_ns) / 1e9
    # The wall time ends at the last callback, measured on the monotonic clock
    # that the receiver also uses.
    wall_s = stats.last_ns / 1e9 - launched
    return {
        "calls_per_s": (stats.count - 1) / drain_s,
        "drain_s": drain_s,
        "wall_s": wall_s,
        "completed": stats.count,
        "failed": stats.failed,
        "rss_first_mib": rss_first,
        "rss_peak_mib": rss_peak,
        "rss_last_mib": rss_last,
        **cpu_per_call_us(cpu_used, stats.count - metered_from),
    }


BENCHMARK = QueueDrain()
