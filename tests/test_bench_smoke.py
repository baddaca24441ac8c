"""Smoke runs of the benchmark harness, so that the benchmarks do not rot.

Each benchmark runs once in smoke mode through the documented command
(`python -m bench run NAME --smoke`), with its own servers on loopback. The
tests check that it completed and wrote a record in which every side was
measured. They never check a number against a target: speed depends on the
machine and on what else runs on it.
"""

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.benchmarks import registry
from bench.harness import BASELINE, FAASHUB

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 80


def run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def only_record(results_dir: Path, name: str) -> dict[str, Any]:
    paths = sorted(results_dir.glob(f"*-{name}.json"))
    assert len(paths) == 1, f"expected one record of {name}, found {paths}"
    record: dict[str, Any] = json.loads(paths[0].read_text())
    return record


def assert_every_side_measured(record: dict[str, Any]) -> None:
    for side in record["sides"]:
        samples = record["samples"][side]
        assert len(samples) == record["runs"], side
        for sample in samples:
            assert sample, f"{side} reported no numbers"
            for key, value in sample.items():
                assert math.isfinite(value), f"{side} {key} is {value}"


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
@pytest.mark.parametrize("name", [pytest.param(name, id=name) for name in registry()])
def test_benchmark_smoke_run(name: str, tmp_path: Path) -> None:
    completed = run_bench("run", name, "--smoke", "--results-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stdout + completed.stderr

    record = only_record(tmp_path, name)
    assert record["mode"] == "smoke"
    assert record["runs"] == 1
    assert FAASHUB in record["sides"]
    assert_every_side_measured(record)
    if registry()[name].sides != (FAASHUB,):
        # Only a benchmark of faashub alone, such as the backlog, has no ratio.
        assert BASELINE in record["sides"]
        assert record["ratios"], "no faashub / baseline ratio was computed"
    assert record["machine"]["nproc"] >= 1
    assert record["versions"]["nats-server"] != "unknown"
    assert f"record: {tmp_path}" in completed.stdout


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_aiohttp_fallback_named(tmp_path: Path) -> None:
    completed = run_bench(
        "run",
        "async-accept",
        "--smoke",
        "--load",
        "aiohttp",
        "--results-dir",
        str(tmp_path),
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr

    record = only_record(tmp_path, "async-accept")
    assert "aiohttp" in record["versions"]["load_generator"]
    assert any("not comparable" in note for note in record["notes"])
    assert_every_side_measured(record)


@pytest.mark.timeout(30)
def test_unknown_name_rejected(tmp_path: Path) -> None:
    completed = run_bench("run", "no-such-benchmark", "--results-dir", str(tmp_path))
    assert completed.returncode == 2
    assert "Unknown benchmark 'no-such-benchmark'" in completed.stderr
    assert "async-accept" in completed.stderr
