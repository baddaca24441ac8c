"""Cron connector: many schedules firing every second, delay from tick to invocation.

A target process plays the gateway for both sides: `target_app` below,
served by uvicorn. It lists N functions in `/system/functions`, each with
`topic: cron-function` and the schedule `* * * * * *` (every second). It
responds to every POST to `/function/NAME` with an empty 200 and records
when the request arrived and which tick its `X-Cron-Scheduled-At` header
names.

* `faashub`: `faashub connector cron` with its defaults (sync invocation,
  64 invocations in flight, INFO logs), pointed at the target;
* `baseline`: `python -m bench.benchmarks.cron_connector baseline`, a raw
  asyncio loop on uvloop that sleeps until each whole second and then POSTs
  one request for each of the N functions with one aiohttp session, 64 in
  flight, with the same header. It has no cron parsing, no function list
  refresh and no logs.

Each measured run starts the sender, waits for its first invocation, skips
the next tick, then measures the ticks of a fixed window. The delay of an
invocation is its arrival at the target minus its scheduled instant, both
read from this machine's wall clock. A tick's invocations all start at the
same instant, so the delay grows along the queue of one tick, and p99 is
close to the time a sender needs for N requests. The rate is the number of
invocations of any tick that arrived during the window, per second: the
sender's throughput, whether it queues ticks (the baseline) or skips them
(faashub's overlap rule). CPU is the sender's CPU
time during the window and its drain, as a percentage of one core over the
same time. Memory is the sender's peak resident size, sampled during the
window. The target shares the machine's cores with the sender, and its CPU
is reported as well.
"""

import argparse
import asyncio
import json
import math
import os
import time
from array import array
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs

import aiohttp
import httpx
from starlette.types import Receive, Scope, Send

from bench import stack
from bench.asgi import EMPTY_BODY, OK_EMPTY, send_json, serve_lifespan
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
from bench.load import percentile
from bench.processes import CpuMeter, Servers, rss_mib
from connectors.cron import constants as cron
from connectors.cron.scheduler import format_instant

NAMESPACE = "openfaas-fn"
EVERY_SECOND = "* * * * * *"
CONCURRENCY = 64
STATS_PATH = "/_bench/stats"
COUNT_PATH = "/_bench/count"
RESET_PATH = "/_bench/reset"
SCHEDULES_ENV = "BENCH_CRON_SCHEDULES"
POLL_INTERVAL_S = 0.2
START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class _Scale:
    schedules: int
    window_s: int
    """Ticks measured: one a second."""
    drain_limit_s: float
    """Seconds after the window's last tick to wait for its invocations."""


FULL = _Scale(schedules=10_000, window_s=10, drain_limit_s=10.0)
SMOKE = _Scale(schedules=200, window_s=1, drain_limit_s=3.0)


class CronConnector(Benchmark):
    name = "cron-connector"
    title = "schedules firing every second: delay from tick to invocation"
    default_runs = 3
    metrics = (
        Metric("delay_p50_ms", "delay tick to invocation, p50", "ms"),
        Metric("delay_p99_ms", "delay tick to invocation, p99", "ms"),
        Metric("delay_max_ms", "delay tick to invocation, max", "ms", compare=False),
        Metric("delivered", "invocations received / expected", "ratio", compare=False),
        Metric("arrivals_per_s", "invocations arrived per second", "1/s"),
        Metric("cpu_percent", "sender CPU, % of one core", "%"),
        Metric("rss_peak_mib", "sender RSS peak", "MiB"),
        Metric("cpu_percent_target", "target CPU, % of one core", "%", compare=False),
    )
    targets = (Target("delay p99 under 50 ms", "delay_p99_ms", "at_most", 50.0),)

    def prepare(self, context: Context) -> Measure:
        scale = SMOKE if context.smoke else FULL
        context.parameters.update(
            schedules=scale.schedules,
            schedule=EVERY_SECOND,
            window_s=scale.window_s,
            concurrency=CONCURRENCY,
        )
        servers = context.servers
        target = stack.start_asgi_app(
            servers,
            "target_app",
            module=__name__,
            name="target",
            env={SCHEDULES_ENV: str(scale.schedules)},
        )
        stack.wait_until_ready(servers, target)

        def start_sender(side: str) -> stack.Component:
            if side == FAASHUB:
                return stack.start_connector(
                    servers, "cron", name="cron-connector", gateway_url=target.url
                )
            return stack.start_module(
                servers,
                "raw-cron-loop",
                __name__,
                "baseline",
                "--target-url",
                target.url,
                "--schedules",
                str(scale.schedules),
                "--concurrency",
                str(CONCURRENCY),
            )

        def measure(side: str, run: int) -> Sample:
            with httpx.Client(timeout=10.0, trust_env=False) as client:
                client.post(target.url + RESET_PATH).raise_for_status()
                sender = start_sender(side)
                try:
                    return _measure_window(
                        servers,
                        client,
                        sender=sender,
                        target=target,
                        scale=scale,
                        notes=context.notes,
                        label=f"run {run + 1} {side}",
                    )
                finally:
                    servers.stop(sender.process)

        return measure


def _measure_window(
    servers: Servers,
    client: httpx.Client,
    *,
    sender: stack.Component,
    target: stack.Component,
    scale: _Scale,
    notes: list[str],
    label: str,
) -> Sample:
    """Wait for the sender's first invocation, then measure `scale.window_s` ticks."""
    name, process, target_url = sender.name, sender.process, target.url
    deadline = time.monotonic() + START_TIMEOUT_S
    while _count(client, target_url, 0, 2**62) == 0:
        if process.poll() is not None:
            raise BenchmarkError(
                f"{name} exited with code {process.returncode} before its first "
                f"invocation; its output is in {servers.log_path(name)}."
            )
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"{name} sent no invocation within {START_TIMEOUT_S:g} s; its "
                f"output is in {servers.log_path(name)}."
            )
        time.sleep(POLL_INTERVAL_S)

    # Skip the next tick, which may still be warming up, and start the
    # window on the one after it.
    first_tick_s = math.floor(time.time()) + 2
    end_tick_s = first_tick_s + scale.window_s
    expected = scale.schedules * scale.window_s
    _sleep_until(first_tick_s - 0.5)
    meter = CpuMeter({"sender": process.pid, "target": target.process.pid})
    meter.start()
    metered_from = time.monotonic()
    rss_peak = 0.0
    drain_deadline = end_tick_s + scale.drain_limit_s
    received = 0
    while time.time() < drain_deadline:
        rss = rss_mib(process.pid)
        if rss is not None:
            rss_peak = max(rss_peak, rss)
        if time.time() > end_tick_s:
            received = _count(client, target_url, first_tick_s, end_tick_s)
            if received >= expected:
                break
        time.sleep(POLL_INTERVAL_S)
    used = meter.stop()
    metered_s = time.monotonic() - metered_from

    response = client.get(
        target_url + STATS_PATH,
        params={"from_s": first_tick_s, "until_s": end_tick_s},
    )
    response.raise_for_status()
    stats = response.json()
    if stats["count"] == 0:
        raise BenchmarkError(
            f"{name} sent no invocation for the ticks of the window; its output "
            f"is in {servers.log_path(name)}."
        )
    if stats["count"] < expected:
        notes.append(
            f"{label}: {stats['count']} of {expected} invocations arrived within "
            f"{scale.drain_limit_s:g} s of the window's end; the delays cover "
            "those only."
        )
    return {
        "delay_p50_ms": stats["p50_ms"],
        "delay_p99_ms": stats["p99_ms"],
        "delay_max_ms": stats["max_ms"],
        "delivered": stats["count"] / expected,
        "arrivals_per_s": stats["arrivals"] / scale.window_s,
        "cpu_percent": used.get("sender", 0.0) / metered_s * 100,
        "rss_peak_mib": rss_peak,
        "cpu_percent_target": used.get("target", 0.0) / metered_s * 100,
    }


def _count(client: httpx.Client, target_url: str, from_s: int, until_s: int) -> int:
    response = client.get(
        target_url + COUNT_PATH, params={"from_s": from_s, "until_s": until_s}
    )
    response.raise_for_status()
    count: int = response.json()["count"]
    return count


def _sleep_until(instant_s: float) -> None:
    remaining_s = instant_s - time.time()
    if remaining_s > 0:
        time.sleep(remaining_s)


# The target: a fake gateway that lists the functions and records arrivals.


class _Arrivals:
    listing = b"[]"
    tick_ms = array("q")
    delay_us = array("q")
    per_tick: defaultdict[int, int] = defaultdict(int)


_arrivals = _Arrivals()
_SCHEDULED_AT = cron.SCHEDULED_AT.lower().encode()


def _function_listing(count: int) -> bytes:
    functions = [
        {
            "name": function_name(index),
            "namespace": NAMESPACE,
            "image": "bench/noop",
            "replicas": 1,
            "annotations": {
                "topic": cron.TOPIC,
                cron.ANNOTATION_SCHEDULE: EVERY_SECOND,
            },
        }
        for index in range(count)
    ]
    return json.dumps(functions).encode()


async def _list_functions() -> None:
    count = int(os.environ.get(SCHEDULES_ENV, "0"))
    _arrivals.listing = _function_listing(count)


def function_name(index: int) -> str:
    """Return the name of the scheduled function number `index`."""
    return f"tick-{index}"


async def target_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve the function list, record invocations and serve their delays."""
    if scope["type"] == "lifespan":
        await serve_lifespan(receive, send, on_startup=_list_functions)
        return
    arrived_ns = time.time_ns()
    while True:
        message = await receive()
        if not message.get("more_body"):
            break
    path: str = scope["path"]
    if path.startswith("/function/"):
        _record(scope["headers"], arrived_ns)
        await send(OK_EMPTY)
        await send(EMPTY_BODY)
        return
    if path == "/system/namespaces":
        await send_json(send, json.dumps([NAMESPACE]).encode())
    elif path == "/system/functions":
        await send_json(send, _arrivals.listing)
    elif path == COUNT_PATH:
        from_ms, until_ms = _window_ms(scope)
        count = sum(
            number
            for tick, number in list(_arrivals.per_tick.items())
            if from_ms <= tick < until_ms
        )
        await send_json(send, json.dumps({"count": count}).encode())
    elif path == STATS_PATH:
        stats = _delay_stats(*_window_ms(scope))
        await send_json(send, json.dumps(stats).encode())
    elif path == RESET_PATH:
        _arrivals.tick_ms = array("q")
        _arrivals.delay_us = array("q")
        _arrivals.per_tick.clear()
        await send(OK_EMPTY)
        await send(EMPTY_BODY)
    else:
        await send({**OK_EMPTY, "status": 404})
        await send(EMPTY_BODY)


def _record(headers: list[tuple[bytes, bytes]], arrived_ns: int) -> None:
    for name, value in headers:
        if name == _SCHEDULED_AT:
            tick_ms = round(datetime.fromisoformat(value.decode()).timestamp() * 1000)
            _arrivals.tick_ms.append(tick_ms)
            _arrivals.delay_us.append(arrived_ns // 1000 - tick_ms * 1000)
            _arrivals.per_tick[tick_ms] += 1
            return


def _window_ms(scope: Scope) -> tuple[int, int]:
    query = parse_qs(scope["query_string"].decode())
    return int(query["from_s"][0]) * 1000, int(query["until_s"][0]) * 1000


def _delay_stats(from_ms: int, until_ms: int) -> dict[str, float]:
    """Return the delays of the window's ticks and the arrivals during it."""
    delays_ms = []
    arrivals = 0
    from_us, until_us = from_ms * 1000, until_ms * 1000
    for tick_ms, delay_us in zip(_arrivals.tick_ms, _arrivals.delay_us, strict=True):
        if from_ms <= tick_ms < until_ms:
            delays_ms.append(delay_us / 1000)
        if from_us <= tick_ms * 1000 + delay_us < until_us:
            arrivals += 1
    delays_ms.sort()
    if not delays_ms:
        return {"count": 0, "arrivals": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {
        "count": len(delays_ms),
        "arrivals": arrivals,
        "p50_ms": percentile(delays_ms, 50),
        "p99_ms": percentile(delays_ms, 99),
        "max_ms": delays_ms[-1],
    }


# The baseline: a raw loop that fires every function at each whole second.


async def run_baseline(target_url: str, *, schedules: int, concurrency: int) -> None:
    """POST once per function at every whole second, until the process is stopped."""
    urls = [
        f"{target_url}/function/{function_name(index)}.{NAMESPACE}"
        for index in range(schedules)
    ]
    in_flight = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(url: str, scheduled_at: str) -> None:
            async with in_flight:
                async with session.post(
                    url, data=b"", headers={cron.SCHEDULED_AT: scheduled_at}
                ) as response:
                    await response.read()

        while True:
            tick_s = math.floor(time.time()) + 1
            await asyncio.sleep(tick_s - time.time())
            scheduled_at = format_instant(datetime.fromtimestamp(tick_s, UTC))
            for url in urls:
                task = asyncio.create_task(post(url, scheduled_at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


def main() -> None:
    """Run the baseline sender: `python -m bench.benchmarks.cron_connector baseline`."""
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    commands = parser.add_subparsers(dest="command", required=True)
    baseline = commands.add_parser(
        "baseline", help="Fire every function at each whole second, until stopped."
    )
    baseline.add_argument("--target-url", required=True, help="Base URL of the target.")
    baseline.add_argument(
        "--schedules", type=int, required=True, help="Functions fired per second."
    )
    baseline.add_argument(
        "--concurrency", type=int, default=CONCURRENCY, help="Requests in flight."
    )
    args = parser.parse_args()
    import uvloop

    uvloop.run(
        run_baseline(
            args.target_url, schedules=args.schedules, concurrency=args.concurrency
        )
    )


BENCHMARK = CronConnector()

if __name__ == "__main__":
    main()
