"""The command line of the harness: `python -m bench run|list`.

    python -m bench run [NAME ...] [--smoke] [--runs N] [--results-dir DIR]
                        [--load auto|wrk|aiohttp] [--keep-logs]
    python -m bench list

`run` without names runs every benchmark. The exit status is 0 when every
benchmark that ran completed, 1 when one could not complete, and 2 for an
unknown name or missing tool. Whether a target is met never changes the
exit status.
"""

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import records
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
    return run(args, arguments)


if __name__ == "__main__":
    sys.exit(main())
