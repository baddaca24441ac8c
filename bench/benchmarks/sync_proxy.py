"""Sync proxy: `/function/NAME` to an http-mode function, 1 KiB POST bodies.

The function is `bench/noop_function.py` (a raw ASGI app on uvicorn),
deployed on the local provider in http mode with an `upstream_url` port that
the harness picks, so that every side below reaches the same process:

* `direct`: the function itself, no proxy (reference for added latency);
* `baseline`: `bench.apps:proxy_app`, a bare ASGI reverse proxy with one
  aiohttp session, in front of the function;
* `provider`: the provider's `/function/NAME`, which proxies to the function
  (reference: the second of faashub's two hops);
* `faashub`: the gateway's `/function/NAME`, which proxies to the provider.

Each side is measured at 64 connections (throughput and latency) and at 1
connection (latency without queueing). The latency the gateway adds is the
faashub side minus the direct side, at p50 and p99. The CPU time each
process used during the 64-connection load, divided by the requests served,
shows which hop costs what.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from bench import stack
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

BODY_BYTES = 1024
CONNECTIONS = 64
# CPU per request below this, in microseconds, counts as an idle process.
IDLE_CPU_US = 5.0
DIRECT = "direct"
PROVIDER = "provider"


@dataclass(frozen=True, slots=True)
class _Scale:
    duration_s: float
    latency_duration_s: float
    warmup_s: float


FULL = _Scale(duration_s=8, latency_duration_s=4, warmup_s=2)
SMOKE = _Scale(duration_s=1, latency_duration_s=1, warmup_s=0)


class SyncProxy(Benchmark):
    name = "sync-proxy"
    title = "POST /function/NAME to an http-mode function, 1 KiB body"
    sides = (DIRECT, BASELINE, PROVIDER, FAASHUB)
    metrics = (
        Metric("requests_per_s", "throughput, 64 conn.", "req/s"),
        Metric("p50_ms", "latency p50, 64 conn.", "ms"),
        Metric("p99_ms", "latency p99, 64 conn.", "ms"),
        Metric("c1_p50_ms", "latency p50, 1 conn.", "ms"),
        Metric("c1_p99_ms", "latency p99, 1 conn.", "ms"),
        Metric("failed", "failed requests", "count", compare=False),
        Metric("cpu_us_function", "CPU per request, function", "us", compare=False),
        Metric("cpu_us_proxy", "CPU per request, bare proxy", "us", compare=False),
        Metric("cpu_us_provider", "CPU per request, provider", "us", compare=False),
        Metric("cpu_us_gateway", "CPU per request, gateway", "us", compare=False),
        Metric("cpu_us_total", "CPU per request, all servers", "us"),
    )
    targets = (
        Target(
            "throughput at least 0.7 of the baseline",
            "requests_per_s",
            "ratio_at_least",
            0.7,
        ),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(
            duration_s=scale.duration_s,
            latency_duration_s=scale.latency_duration_s,
            warmup_s=scale.warmup_s,
            connections=CONNECTIONS,
            body_bytes=BODY_BYTES,
        )
        servers = context.servers
        hub = stack.start_hub(servers, work_dir=context.work_dir)
        gateway, provider = hub.gateway, hub.provider
        function_url = stack.deploy_noop_function(gateway.url)
        proxy = stack.start_asgi_app(
            servers,
            "proxy_app",
            name="proxy-app",
            env={"BENCH_UPSTREAM_URL": function_url},
        )
        stack.wait_until_ready(servers, proxy)

        path = f"/function/{stack.NOOP_FUNCTION}"
        urls = {
            DIRECT: f"{function_url}{path}",
            BASELINE: f"{proxy.url}{path}",
            PROVIDER: f"{provider.url}{path}",
            FAASHUB: f"{gateway.url}{path}",
        }
        meter = CpuMeter(
            {
                "function": stack.function_pid(provider.process.pid),
                "proxy": proxy.process.pid,
                "provider": provider.process.pid,
                "gateway": gateway.process.pid,
            }
        )

        def measure(side: str, run: int) -> Sample:
            url = urls[side]
            context.warm_up(
                side,
                url,
                duration_s=scale.warmup_s,
                connections=CONNECTIONS,
                body_bytes=BODY_BYTES,
            )
            meter.start()
            loaded = context.load.run(
                url,
                connections=CONNECTIONS,
                duration_s=scale.duration_s,
                body_bytes=BODY_BYTES,
            )
            # Idle processes still wake up now and then, so only busy ones count.
            cpu_used = {
                part: used_s
                for part, used_s in meter.stop().items()
                if used_s * 1e6 / max(loaded.requests, 1) >= IDLE_CPU_US
            }
            single = context.load.run(
                url,
                connections=1,
                duration_s=scale.latency_duration_s,
                body_bytes=BODY_BYTES,
            )
            return {
                "requests_per_s": loaded.requests_per_s,
                "p50_ms": loaded.p50_ms,
                "p99_ms": loaded.p99_ms,
                "c1_p50_ms": single.p50_ms,
                "c1_p99_ms": single.p99_ms,
                "failed": loaded.failed + single.failed,
                **cpu_per_call_us(cpu_used, loaded.requests),
            }

        return measure

    def derive(
        self, summary: Mapping[str, Mapping[str, Mapping[str, float]]]
    ) -> Sample:
        """Return the latency that faashub and the bare proxy add to the direct call."""
        derived: Sample = {}
        for prefix, label in (("c1_", "1 conn."), ("", "64 conn.")):
            for rank in ("p50", "p99"):
                key = f"{prefix}{rank}_ms"
                direct = summary[DIRECT][key]["median"]
                gateway_key = f"faashub added latency {rank}, {label} (ms)"
                baseline_key = f"baseline added latency {rank}, {label} (ms)"
                derived[gateway_key] = summary[FAASHUB][key]["median"] - direct
                derived[baseline_key] = summary[BASELINE][key]["median"] - direct
        return derived


BENCHMARK = SyncProxy()
