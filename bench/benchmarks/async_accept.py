"""Async accept: `POST /async-function/NAME`, 1 KiB body, 64 connections.

faashub side: the real gateway (`faashub gateway`) with the local provider
and the no-op function deployed, storing each call in its JetStream calls
stream before it responds 202. Baseline: `bench.apps:publish_app`, a bare
ASGI app on uvicorn that publishes the body to a stream with the same
storage and retention and responds 202 after the PubAck. Both use the same
nats-server. wrk sends the load.

After each measurement the side's stream is counted, so the record shows
that the 202s were stored, and purged, so every run starts from an empty
stream. The CPU time that each server process used during the load, divided
by the requests served, shows where a request's time goes.
"""

from dataclasses import dataclass

from bench import apps, queues, stack
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
from bench.processes import CpuMeter, cpu_per_call_us
from faashub import constants

BODY_BYTES = 1024
CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class _Scale:
    duration_s: float
    warmup_s: float


FULL = _Scale(duration_s=10, warmup_s=2)
SMOKE = _Scale(duration_s=1, warmup_s=0)


class AsyncAccept(Benchmark):
    name = "async-accept"
    title = "POST /async-function/NAME, 1 KiB body, 64 connections"
    metrics = (
        Metric("requests_per_s", "throughput", "req/s"),
        Metric("p50_ms", "latency p50", "ms"),
        Metric("p99_ms", "latency p99", "ms"),
        Metric("requests", "responses counted", "count", compare=False),
        Metric("failed", "failed requests", "count", compare=False),
        Metric("stored", "calls stored", "count", compare=False),
        Metric("cpu_us_server", "CPU per request, HTTP server", "us"),
        Metric("cpu_us_nats", "CPU per request, nats-server", "us"),
        Metric("cpu_us_provider", "CPU per request, provider", "us", compare=False),
        Metric("cpu_us_total", "CPU per request, all servers", "us"),
    )
    targets = (
        Target(
            "throughput at least 0.8 of the baseline",
            "requests_per_s",
            "ratio_at_least",
            0.8,
        ),
        Target("p99 at most 1.5 times the baseline's", "p99_ms", "ratio_at_most", 1.5),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(
            duration_s=scale.duration_s,
            warmup_s=scale.warmup_s,
            connections=CONNECTIONS,
            body_bytes=BODY_BYTES,
        )
        servers = context.servers
        nats_server, provider, gateway = stack.start_hub(
            servers, work_dir=context.work_dir
        )
        baseline = stack.start_asgi_app(
            servers,
            "publish_app",
            name="publish-app",
            env={"BENCH_NATS_URL": nats_server.url},
        )
        stack.wait_until_ready(servers, baseline)
        stack.deploy_noop_function(gateway.url)

        targets = {
            BASELINE: (
                f"{baseline.url}/async-function/{stack.NOOP_FUNCTION}",
                apps.ACCEPT_STREAM,
            ),
            FAASHUB: (
                f"{gateway.url}/async-function/{stack.NOOP_FUNCTION}",
                constants.CALLS_STREAM,
            ),
        }
        # The HTTP server of each side is called "server", so that the CPU
        # per request of the gateway and of the bare app get a ratio.
        meters = {
            BASELINE: CpuMeter(
                {"server": baseline.process.pid, "nats": nats_server.process.pid}
            ),
            FAASHUB: CpuMeter(
                {
                    "server": gateway.process.pid,
                    "nats": nats_server.process.pid,
                    "provider": provider.process.pid,
                }
            ),
        }

        def measure(side: str, run: int) -> Sample:
            url, stream = targets[side]
            if context.warm_up(
                side,
                url,
                duration_s=scale.warmup_s,
                connections=CONNECTIONS,
                body_bytes=BODY_BYTES,
            ):
                queues.purge(nats_server.url, stream)
            meters[side].start()
            result = context.load.run(
                url,
                connections=CONNECTIONS,
                duration_s=scale.duration_s,
                body_bytes=BODY_BYTES,
            )
            cpu_used = meters[side].stop()
            stored = queues.purge(nats_server.url, stream)
            return {
                "requests_per_s": result.requests_per_s,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "requests": result.requests,
                "failed": result.failed,
                "stored": stored,
                **cpu_per_call_us(cpu_used, result.requests),
            }

        return measure


BENCHMARK = AsyncAccept()
