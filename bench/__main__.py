"""The command line of the harness: `python -m bench run|list`.

    python -m bench run [NAME ...] [--smoke] [--runs N] [--results-dir DIR]
                        [--load auto|wrk|aiohttp] [--keep-logs]
    python -m bench list
    python -m bench pair-drain OLD_TREE NEW_TREE [--rounds N] [--calls N]
                                                  [--window-s S] [--settle-s S]

`run` without names runs every benchmark. The exit status is 0 when every
benchmark that ran completed, 1 when one could not complete, and 2 for an
unknown name or missing tool. Whether a target is met never changes the
exit status. `pair-drain` compares the queue-worker of two source trees
(`bench.pair_drain`).
"""

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import pair_drain, records
from bench.benchmarks import registry
from bench.errors import BenchmarkError
from bench.harness import RunOptions, run_benchmark
from bench.load import choose_load_generator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure faashub's hot paths against raw baselines on this "
        "machine, as ratios.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run", help="Run benchmarks and write one JSON record per benchmark."
    )
    run.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="Benchmarks to run (see 'list'). Without a name, all of them run.",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="Run each benchmark briefly, to check that it works, not to measure.",
    )
    run.add_argument(
        "--runs",
        type=_positive_int,
        default=None,
        help="Runs per benchmark, each measuring every side once (default: each "
        "benchmark's own, 1 with --smoke).",
    )
    run.add_argument(
        "--results-dir",
        type=Path,
        default=records.DEFAULT_RESULTS_DIR,
        help=f"Folder for the JSON records (default {records.DEFAULT_RESULTS_DIR}).",
    )
    run.add_argument(
        "--load",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="HTTP load generator: 'auto' uses wrk, and falls back to aiohttp only "
        "with --smoke (default auto).",
    )
    run.add_argument(
        "--keep-logs",
        action="store_true",
        help="Keep the output of every server in a temporary folder and print its "
        "path. Without this flag the output is kept only when a benchmark fails.",
    )
    run.add_argument(
        "--calls",
        type=_positive_int,
        default=None,
        help="Calls to queue in the benchmarks that take a count (backlog-1m: "
        "default 1,000,000, 1,000 with --smoke).",
    )
    commands.add_parser("list", help="List the benchmarks.")
    pair = commands.add_parser(
        "pair-drain",
        help="Compare the queue-worker's CPU per call of two source trees that "
        "drain one queue at the same time.",
    )
    pair.add_argument(
        "trees",
        nargs=2,
        type=Path,
        metavar="TREE",
        help="Two faashub checkouts, for example git worktrees of two commits.",
    )
    pair.add_argument(
        "--rounds", type=_positive_int, default=5, help="Rounds (default 5)."
    )
    pair.add_argument(
        "--calls",
        type=_positive_int,
        default=40_000,
        help="Calls queued before each round; the workers must not drain them "
        "before the window ends (default 40,000).",
    )
    pair.add_argument(
        "--window-s",
        type=_positive_seconds,
        default=8.0,
        help="Seconds over which CPU and finished calls are counted (default 8).",
    )
    pair.add_argument(
        "--settle-s",
        type=_positive_seconds,
        default=3.0,
        help="Seconds from the workers' start to the window (default 3).",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of 1 or more, got {text!r}"
        )
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    # Also refuses nan and inf.
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds above 0, got {text!r}"
        )
    return value


def list_benchmarks() -> int:
    for name, benchmark in registry().items():
        print(f"{name:<18} {benchmark.title}")
    return 0


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    benchmarks = registry()
    names: list[str] = args.names or list(benchmarks)
    unknown = [name for name in names if name not in benchmarks]
    if unknown:
        known = ", ".join(benchmarks)
        print(
            f"Unknown benchmark {', '.join(map(repr, unknown))}. Known: {known}.",
            file=sys.stderr,
        )
        return 2
    # Fail before any server starts when the load generator is missing.
    try:
        choose_load_generator(args.load, smoke=args.smoke)
    except BenchmarkError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(
        smoke=args.smoke,
        runs=args.runs,
        results_dir=args.results_dir,
        load=args.load,
        command=["python", "-m", "bench", *argv],
        keep_logs=args.keep_logs,
        calls=args.calls,
    )
    failed: list[str] = []
    for name in names:
        try:
            run_benchmark(benchmarks[name], options)
        except BenchmarkError as exc:
            print(f"   {name} did not complete: {exc}", file=sys.stderr, flush=True)
            failed.append(name)
    if failed:
        print(f"bench: incomplete: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "list":
        return list_benchmarks()
    # The servers run in sessions of their own, so a signal to this process
    # does not reach them: SIGTERM must unwind the `Servers` blocks, which
    # stop them, as Ctrl-C does.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if args.command == "pair-drain":
            return pair_drain.main(args)
        return run(args, arguments)
    except KeyboardInterrupt:
        print(
            "bench: interrupted; the servers it started were stopped.", file=sys.stderr
        )
        return 128 + signal.SIGINT


def _exit_on_signal(signum: int, frame: object) -> None:
    print(
        f"bench: stopping the servers it started, then exiting (signal {signum}).",
        file=sys.stderr,
    )
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
