"""Paired drain: two queue-workers from two source trees drain one queue together.

    python -m bench pair-drain OLD_TREE NEW_TREE [--rounds N] [--calls N]
                                                  [--window-s S] [--settle-s S]

On a busy machine, single runs of `queue-drain` vary by 15 % and more, which
hides a change of a few per cent in the worker. Here one `faashub
queue-worker` per source tree binds the same queue at the same time, so both
run on the same machine in the same state. Each round prefills the queue
and starts both workers, the first tree's first in odd rounds and the
second tree's first in even ones. After `--settle-s`, it reads each
worker's CPU time and its count of finished calls
(`faashub_worker_calls_total`) at the start and at the end of a window of
`--window-s`. The result is each worker's CPU per finished call, and the
second tree's divided by the first's, round by round.

The hub that the workers use (nats-server, the provider, the gateway, the
no-op function and the callback receiver) runs from the tree that the
harness runs from. A tree is a checkout of faashub: the folder that contains
`faashub/` and `queue_worker/`. The exit status is 0 after every round, 1
when a round could not be measured, and 2 for an invalid option.
"""

import argparse
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import queues, stack
from bench.errors import BenchmarkError
from bench.processes import Servers, cpu_seconds, temporary_directory

BODY_BYTES = 1024
_FINISHED = re.compile(r"^faashub_worker_calls_total\{[^}]*\} (\S+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class PairOptions:
    """The trees and the counts of one `run_pairs`, from the command line."""

    trees: tuple[Path, Path]
    rounds: int
    calls: int
    window_s: float
    settle_s: float


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """One worker's CPU and finished calls within one window."""

    cpu_s: float
    calls: int

    @property
    def cpu_per_call_us(self) -> float:
        return self.cpu_s * 1e6 / self.calls


def main(args: argparse.Namespace) -> int:
    """Run `pair-drain` with parsed `args` and return the exit status."""
    trees = (args.trees[0].resolve(), args.trees[1].resolve())
    for tree in trees:
        problem = tree_problem(tree)
        if problem:
            print(f"bench: {problem}", file=sys.stderr)
            return 2
    options = PairOptions(
        trees=trees,
        rounds=args.rounds,
        calls=args.calls,
        window_s=args.window_s,
        settle_s=args.settle_s,
    )
    try:
        samples = run_pairs(options)
    except BenchmarkError as exc:
        print(f"bench: pair-drain did not complete: {exc}", file=sys.stderr)
        return 1
    print_summary(options, samples)
    return 0


def tree_problem(tree: Path) -> str:
    """Return why `tree` is not a faashub checkout, or "" when it is one."""
    for part in ("faashub/__init__.py", "queue_worker/__init__.py"):
        if not (tree / part).is_file():
            return (
                f"{tree} is not a faashub source tree: it has no {part}. Give the "
                "folder that contains faashub/ and queue_worker/, such as a git "
                "worktree of the commit to compare."
            )
    return ""


def run_pairs(options: PairOptions) -> list[tuple[WorkerSample, WorkerSample]]:
    """Measure every round and return the two trees' samples of each."""
    rounds: list[tuple[WorkerSample, WorkerSample]] = []
    with temporary_directory("bench-pair-drain-") as work_dir:
        log_dir = work_dir / "logs"
        log_dir.mkdir()
        with Servers(log_dir) as servers:
            receiver = stack.start_asgi_app(
                servers, "callback_app", name="callback-app"
            )
            nats_server, _, gateway = stack.start_hub(
                servers, work_dir=work_dir, also_ready=(receiver,)
            )
            stack.deploy_noop_function(gateway.url)
            callback_url = f"{receiver.url}/callback"
            for number in range(options.rounds):
                queues.purge_calls(nats_server.url)
                queues.prefill_calls(
                    nats_server.url,
                    function=stack.NOOP_FUNCTION,
                    count=options.calls,
                    body=b"x" * BODY_BYTES,
                    callback_url=callback_url,
                )
                pair = _measure_round(
                    servers,
                    options,
                    number=number,
                    gateway_url=gateway.url,
                    nats_url=nats_server.url,
                )
                rounds.append(pair)
                print(_round_line(number, pair), flush=True)
    return rounds


def _measure_round(
    servers: Servers,
    options: PairOptions,
    *,
    number: int,
    gateway_url: str,
    nats_url: str,
) -> tuple[WorkerSample, WorkerSample]:
    order = (0, 1) if number % 2 == 0 else (1, 0)
    workers: dict[int, stack.Component] = {}
    for index in order:
        workers[index] = stack.start_worker(
            servers,
            gateway_url=gateway_url,
            nats_url=nats_url,
            name=f"queue-worker-{index + 1}-round-{number + 1}",
            tree=options.trees[index],
        )
    try:
        stack.wait_until_ready(servers, *workers.values())
        time.sleep(options.settle_s)
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            before = {i: _read(client, servers, w) for i, w in workers.items()}
            time.sleep(options.window_s)
            after = {i: _read(client, servers, w) for i, w in workers.items()}
    finally:
        for worker in workers.values():
            servers.stop(worker.process)
    if sum(calls for _, calls in after.values()) >= options.calls:
        raise BenchmarkError(
            f"The workers drained all {options.calls:,} calls before the window "
            "ended, so part of it measured an idle queue. Raise --calls or lower "
            "--window-s."
        )
    samples = []
    for index in (0, 1):
        cpu_s = after[index][0] - before[index][0]
        calls = after[index][1] - before[index][1]
        if calls <= 0:
            raise BenchmarkError(
                f"The worker of {options.trees[index]} finished no call in round "
                f"{number + 1}; its output is in "
                f"{servers.log_path(workers[index].name)}."
            )
        samples.append(WorkerSample(cpu_s, calls))
    return samples[0], samples[1]


def _read(
    client: httpx.Client, servers: Servers, worker: stack.Component
) -> tuple[float, int]:
    """Return the worker's CPU seconds and finished calls so far."""
    cpu_s = cpu_seconds(worker.process.pid)
    try:
        response = client.get(f"{worker.url}/metrics")
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise BenchmarkError(
            f"Cannot read the metrics of {worker.name}: {exc!r}; its output is in "
            f"{servers.log_path(worker.name)}."
        ) from exc
    if cpu_s is None:
        raise BenchmarkError(
            f"{worker.name} exited during the round; its output is in "
            f"{servers.log_path(worker.name)}."
        )
    finished = sum(float(value) for value in _FINISHED.findall(response.text))
    return cpu_s, int(finished)


def _round_line(number: int, pair: tuple[WorkerSample, WorkerSample]) -> str:
    first, second = pair
    ratio = second.cpu_per_call_us / first.cpu_per_call_us
    return (
        f"round {number + 1}: first {first.cpu_per_call_us:.1f} us/call "
        f"({first.calls:,} calls), second {second.cpu_per_call_us:.1f} us/call "
        f"({second.calls:,} calls), second/first {ratio:.3f}"
    )


def print_summary(
    options: PairOptions, rounds: Sequence[tuple[WorkerSample, WorkerSample]]
) -> None:
    """Print each tree's median CPU per call and the median of the round ratios."""
    for index, tree in enumerate(options.trees):
        values = [pair[index].cpu_per_call_us for pair in rounds]
        print(
            f"{'first' if index == 0 else 'second'} ({tree}): CPU per call "
            f"{statistics.median(values):.1f} us "
            f"({min(values):.1f} to {max(values):.1f})"
        )
    ratios = [
        second.cpu_per_call_us / first.cpu_per_call_us for first, second in rounds
    ]
    print(
        f"second/first, median of {len(ratios)} rounds: "
        f"{statistics.median(ratios):.3f} ({min(ratios):.3f} to {max(ratios):.3f})"
    )
