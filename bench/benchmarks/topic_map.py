"""Topic map: rebuild the map of 10 k functions from a gateway listing them.

A fake gateway (`python -m bench.topic_map_probe serve`) lists FUNCTIONS
functions in one namespace, each with a `topic` annotation (1,000 topic
names, and every 100th function a glob pattern too). A probe process
(`python -m bench.topic_map_probe measure`) rebuilds the topic map REBUILDS
times per run:

* `baseline`: the same two GETs, `json.loads` and a dict of topic to
  function names, the least work that gives the same mapping;
* `faashub`: `connectors.core.topic_map.TopicMapBuilder.build` and the
  install step that a connector runs after each refresh.

Reported: the first build, and the median of the later rebuilds, in which
the map does not change, as in a connector's periodic refresh. Then the
peak memory one rebuild allocates and the memory the map keeps, both from
tracemalloc in a separate pass, and the CPU time of the probe and of the
fake gateway.
"""

import json
from dataclasses import dataclass

from bench.errors import BenchmarkError
from bench.harness import BASELINE, Benchmark, Context, Measure, Metric, Sample
from bench.processes import LOOPBACK, CpuMeter, free_port, python_module_argv

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class _Scale:
    functions: int
    rebuilds: int


FULL = _Scale(functions=10_000, rebuilds=10)
SMOKE = _Scale(functions=1_000, rebuilds=2)


class TopicMapRebuild(Benchmark):
    name = "topic-map-10k"
    title = "time and memory to rebuild the topic map of 10 k functions"
    default_runs = 3
    metrics = (
        Metric("first_build_ms", "first build", "ms"),
        Metric("rebuild_ms", "rebuild, map unchanged (median)", "ms"),
        Metric("peak_kib", "memory allocated at peak, one rebuild", "KiB"),
        Metric("kept_kib", "memory the map keeps", "KiB"),
        Metric("entries", "topic entries", "count", compare=False),
        Metric("cpu_ms_probe", "CPU of the probe, timed rebuilds", "ms"),
        Metric("cpu_ms_gateway", "CPU of the fake gateway", "ms", compare=False),
    )

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(functions=scale.functions, rebuilds=scale.rebuilds)
        servers = context.servers
        port = free_port()
        gateway = servers.start(
            "fake-gateway",
            python_module_argv(
                "bench.topic_map_probe",
                "serve",
                "--port",
                str(port),
                "--functions",
                str(scale.functions),
            ),
        )
        servers.wait_for_port("fake-gateway", gateway, port, timeout_s=START_TIMEOUT_S)
        gateway_url = f"http://{LOOPBACK}:{port}"

        def measure(side: str, run: int) -> Sample:
            name = f"probe-{side}"
            probe = servers.start(
                name,
                python_module_argv(
                    "bench.topic_map_probe",
                    "measure",
                    "--gateway-url",
                    gateway_url,
                    "--side",
                    "baseline" if side == BASELINE else "faashub",
                    "--rebuilds",
                    str(scale.rebuilds),
                ),
            )
            meter = CpuMeter({"gateway": gateway.pid})
            meter.start()
            try:
                probe.wait(timeout=START_TIMEOUT_S + 10 * scale.rebuilds)
            finally:
                gateway_cpu_s = meter.stop().get("gateway", 0.0)
                servers.stop(probe, grace_s=STOP_GRACE_S)
            log_path = servers.log_path(name)
            lines = log_path.read_text().strip().splitlines()
            try:
                sample: Sample = json.loads(lines[-1])
            except (IndexError, ValueError) as exc:
                raise BenchmarkError(
                    f"The topic-map probe printed no result (exit code "
                    f"{probe.returncode}); see its output in {log_path}."
                ) from exc
            sample["cpu_ms_gateway"] = gateway_cpu_s * 1000
            return sample

        return measure


BENCHMARK = TopicMapRebuild()
