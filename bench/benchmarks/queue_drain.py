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
  provider, as it does in production;
* `contract`: `python -m bench.contract_drain`, the raw loop plus only what
  faashub's contract requires of a worker (the status read before the run,
  the OpenFaaS headers on both requests, the final status record), on the
  same queued calls as `faashub` and calling the function directly. Its
  distance from the baseline is what the contract costs on this machine;
  the queue-worker's distance from it is what the worker's own decisions,
  limits, metrics and logs cost.

Each run prefills the queue first, then starts the drainer and waits until
every callback arrived, bounded by a time limit. The rate is the number of
callbacks divided by the time from the first to the last one, which leaves
out the drainer's start-up. `wall_s` includes it. The drainer's resident memory
is sampled during the drain, to show whether it stays flat, and the CPU time
of every process involved is divided by the calls drained, to show where a
call's time goes.
"""

from dataclasses import dataclass

from bench import arrivals, queues, raw_loop, stack
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
from bench.processes import rss_mib

BODY_BYTES = 1024
CONCURRENCY = 64
BASELINE_STREAM = "BENCH_DRAIN"
BASELINE_CONSUMER = "bench-raw-drain"
CONTRACT = "contract"


@dataclass(frozen=True, slots=True)
class _Scale:
    calls: int
    time_limit_s: float


FULL = _Scale(calls=50_000, time_limit_s=240)
SMOKE = _Scale(calls=300, time_limit_s=30)


class QueueDrain(Benchmark):
    name = "queue-drain"
    title = "queued calls to a no-op function with callbacks, drained"
    default_runs = 3
    sides = (BASELINE, FAASHUB, CONTRACT)
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
        receiver = stack.start_asgi_app(servers, "callback_app", name="callback-app")
        nats_server, provider, gateway = stack.start_hub(
            servers, work_dir=context.work_dir, also_ready=(receiver,)
        )
        function_url = stack.deploy_noop_function(gateway.url)
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
                queues.purge_calls(nats_server.url)
                queues.prefill_calls(
                    nats_server.url,
                    function=stack.NOOP_FUNCTION,
                    count=scale.calls,
                    body=body,
                    callback_url=callback_url,
                )

        loop_options = raw_loop.loop_options(
            function_url=f"{function_url}/",
            count=scale.calls,
            concurrency=CONCURRENCY,
            time_limit_s=scale.time_limit_s,
        )

        def start_drainer(side: str) -> stack.Component:
            if side == FAASHUB:
                return stack.start_worker(
                    servers, gateway_url=gateway.url, nats_url=nats_server.url
                )
            if side == CONTRACT:
                return stack.start_module(
                    servers,
                    "contract-drain",
                    "bench.contract_drain",
                    "--nats-url",
                    nats_server.url,
                    *loop_options,
                )
            return stack.start_module(
                servers,
                "raw-drain",
                "bench.raw_drain",
                "--nats-url",
                nats_server.url,
                "--stream",
                BASELINE_STREAM,
                "--consumer",
                BASELINE_CONSUMER,
                "--callback-url",
                callback_url,
                *loop_options,
            )

        watch = arrivals.DrainWatch(
            receiver_url=receiver.url,
            expected=scale.calls,
            time_limit_s=scale.time_limit_s,
            other_pids=busy_pids,
            drainer_part="drainer",
            noun="callback",
        )

        def measure(side: str, run: int) -> Sample:
            prefill(side)
            memory = _DrainerMemory()
            drain = watch.measure(
                servers,
                lambda: start_drainer(side),
                label=f"run {run + 1} {side}",
                notes=context.notes,
                on_poll=memory.sample,
            )
            return {
                "calls_per_s": drain.rate_per_s,
                "drain_s": drain.drain_s,
                "wall_s": drain.wall_s,
                "completed": drain.arrivals.count,
                "failed": drain.arrivals.failed,
                "rss_first_mib": memory.first,
                "rss_peak_mib": memory.peak,
                "rss_last_mib": memory.last,
                **drain.cpu_per_arrival_us(),
            }

        return measure


@dataclass(slots=True)
class _DrainerMemory:
    """The drainer's resident memory in MiB, sampled at each poll.

    `first` is the sample at the first callback, which leaves out start-up.
    """

    first: float = 0.0
    peak: float = 0.0
    last: float = 0.0

    def sample(self, drainer: stack.Component, seen: arrivals.Arrivals) -> None:
        rss = rss_mib(drainer.process.pid)
        if rss is None:
            return
        self.last = rss
        self.peak = max(self.peak, rss)
        if seen.count and not self.first:
            self.first = rss


BENCHMARK = QueueDrain()
