"""The two processes of the topic-map benchmark: a fake gateway and the probe.

    python -m bench.topic_map_probe serve --port P --functions N
    python -m bench.topic_map_probe measure --gateway-url URL --side S \\
        --rebuilds R

`serve` plays a gateway that lists N functions in one namespace on `GET
/system/namespaces` and `GET /system/functions?namespace=NS`, each entry
shaped like a provider's function status. The listing is encoded once, so
the server adds little to the probe's time. Every function has a `topic`
annotation: one of TOPICS plain names, and every PATTERN_EVERY-th function
a glob pattern as well.

`measure` rebuilds the topic map R times and prints one JSON line. Side
`faashub` uses `connectors.core.topic_map.TopicMapBuilder` as a connector
does: `build`, then installing the map (the first install logs the map,
later ones compare it with the last one). Side `baseline` is the least work
that gives the same mapping: the same two GETs, `json.loads` and a dict of
topic to function names. The first build, the median of the later
rebuilds, the probe's CPU time over them, and, in a separate pass under
tracemalloc, the peak memory of one rebuild and the memory the map keeps
are reported.
"""

import argparse
import asyncio
import gc
import json
import logging
import statistics
import sys
import time
import tracemalloc
from collections.abc import Mapping
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

NAMESPACE = "openfaas-fn"
TOPICS = 1000
PATTERN_EVERY = 100
REQUEST_TIMEOUT_S = 30.0


def function_listing(count: int) -> list[dict[str, Any]]:
    """Return `count` function statuses with topic annotations."""
    listed = []
    for index in range(count):
        topic = f"orders-{index % TOPICS}"
        if index % PATTERN_EVERY == 0:
            topic += ",audit-*"
        listed.append(
            {
                "name": f"fn-{index:05d}",
                "namespace": NAMESPACE,
                "image": f"registry.example/fn-{index:05d}:1.0",
                "replicas": 1,
                "availableReplicas": 1,
                "invocationCount": 0,
                "envProcess": "python handler.py",
                "labels": {"app": f"fn-{index:05d}", "team": f"team-{index % 20}"},
                "annotations": {"topic": topic, "owner": f"team-{index % 20}"},
                "createdAt": "2026-12-04T00:00:00Z",
            }
        )
    return listed


async def serve(port: int, functions: int) -> None:
    """Serve the listing on 127.0.0.1:`port` until the process is stopped."""
    namespaces = json.dumps([NAMESPACE]).encode()
    listing = json.dumps(function_listing(functions)).encode()

    async def list_namespaces(request: web.Request) -> web.Response:
        return web.Response(body=namespaces, content_type="application/json")

    async def list_functions(request: web.Request) -> web.Response:
        if request.query.get("namespace", NAMESPACE) != NAMESPACE:
            return web.Response(body=b"[]", content_type="application/json")
        return web.Response(body=listing, content_type="application/json")

    app = web.Application()
    app.router.add_get("/system/namespaces", list_namespaces)
    app.router.add_get("/system/functions", list_functions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def _raw_build(client: aiohttp.ClientSession, gateway_url: str) -> object:
    async with client.get(f"{gateway_url}/system/namespaces") as response:
        namespaces = json.loads(await response.read())
    topics: dict[str, set[str]] = {}
    for namespace in namespaces:
        async with client.get(
            f"{gateway_url}/system/functions", params={"namespace": namespace}
        ) as response:
            listed = json.loads(await response.read())
        for function in listed:
            annotation = (function.get("annotations") or {}).get("topic")
            if not isinstance(annotation, str):
                continue
            name = f"{function['name']}.{function.get('namespace') or namespace}"
            for entry in annotation.split(","):
                entry = entry.strip()
                if entry:
                    topics.setdefault(entry, set()).add(name)
    return topics


async def measure(gateway_url: str, side: str, rebuilds: int) -> dict[str, float]:
    """Rebuild the map `rebuilds` times; return times in ms and memory in KiB."""
    from connectors.core.topic_map import TopicMapBuilder

    # The builder logs the first map at INFO; keep it off the output.
    logging.disable(logging.INFO)
    builder = TopicMapBuilder(gateway_url, rebuild_interval_s=60.0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as client:

        async def rebuild() -> object:
            if side == "baseline":
                return await _raw_build(client, gateway_url)
            topic_map = await builder.build(client)
            builder._install(topic_map)  # noqa: SLF001 - what run() does each time
            return topic_map

        durations_ms = []
        cpu_started_s = time.process_time()
        for _ in range(rebuilds):
            started = time.perf_counter()
            built_map = await rebuild()
            durations_ms.append((time.perf_counter() - started) * 1000)
        cpu_ms = (time.process_time() - cpu_started_s) * 1000
        del built_map

        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        # The reference keeps the map alive while its memory is read.
        kept_map = await rebuild()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    entries = _entry_count(kept_map)
    return {
        "first_build_ms": durations_ms[0],
        "rebuild_ms": statistics.median(durations_ms[1:] or durations_ms),
        "peak_kib": (peak - before) / 1024,
        "kept_kib": (current - before) / 1024,
        "entries": entries,
        "cpu_ms_probe": cpu_ms,
    }


def _entry_count(topic_map: object) -> int:
    """Return the number of topic entries of either side's map."""
    entries = getattr(topic_map, "entries", topic_map)
    assert isinstance(entries, dict | Mapping)
    return len(entries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.topic_map_probe", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="play a gateway that lists functions")
    serving.add_argument("--port", type=int, required=True)
    serving.add_argument("--functions", type=int, required=True)
    measuring = commands.add_parser("measure", help="rebuild the map and time it")
    measuring.add_argument("--gateway-url", required=True)
    measuring.add_argument("--side", choices=("baseline", "faashub"), required=True)
    measuring.add_argument("--rebuilds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.command == "serve":
        uvloop.run(serve(args.port, args.functions))
        return 0
    outcome = uvloop.run(measure(args.gateway_url, args.side, max(args.rebuilds, 1)))
    print(json.dumps(outcome), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
