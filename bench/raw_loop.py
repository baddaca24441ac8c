"""Shared parts of the raw baseline loops: options, worker tasks, result line.

`bench.raw_drain` and `bench.raw_kafka` each run as a process of their own.
One task fetches messages into a bounded queue, and `--concurrency` worker
tasks, sharing one aiohttp session, take them from it and POST them, until
a None from the fetcher stops each worker. The per-message work stays in
each loop's own module. This module only parses the options, starts and
stops the tasks and prints the result, so it adds no work per message.
`loop_options` builds the shared options for the benchmark that starts a
loop.
"""

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import aiohttp

T = TypeVar("T")


def argument_parser(
    module: str, description: str, *, count_help: str
) -> argparse.ArgumentParser:
    """Return a parser with the options every raw loop takes.

    Those are `--function-url`, `--count` (described by `count_help`),
    `--concurrency` and `--time-limit-s`. The caller adds its source's own.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=description
    )
    parser.add_argument("--function-url", required=True)
    parser.add_argument("--count", type=int, required=True, help=count_help)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--time-limit-s", type=float, default=300.0)
    return parser


def loop_options(
    *, function_url: str, count: int, concurrency: int, time_limit_s: float
) -> list[str]:
    """Return the command-line options that `argument_parser` adds, with values."""
    return [
        "--function-url",
        function_url,
        "--count",
        str(count),
        "--concurrency",
        str(concurrency),
        "--time-limit-s",
        str(time_limit_s),
    ]


async def run_workers(
    fetch: Callable[[], Awaitable[None]],
    work: Callable[[aiohttp.ClientSession], Awaitable[None]],
    *,
    concurrency: int,
) -> None:
    """Run `fetch` and `concurrency` copies of `work` until all of them return.

    The workers share one session, with at most `concurrency` connections.
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(fetch(), *(work(session) for _ in range(concurrency)))


async def stop_workers(pending: "asyncio.Queue[T | None]", concurrency: int) -> None:
    """Put one None per worker in `pending`, which stops each worker."""
    for _ in range(concurrency):
        await pending.put(None)


def print_outcome(outcome: Mapping[str, int | float], *, done: int, count: int) -> int:
    """Print `outcome` as one JSON line, and return the process's exit status.

    The status is 0 when `done` reached `count`, and 1 otherwise.
    """
    print(json.dumps(outcome), flush=True)
    return 0 if done == count else 1
