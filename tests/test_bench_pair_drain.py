"""`python -m bench pair-drain`: two queue-workers measured on one queue.

The runs start their own hub on loopback, as the benchmarks do, and check
what the command reports, never a number against a target.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 120


def pair_drain(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "pair-drain", *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def test_folder_without_faashub_is_refused(tmp_path: Path) -> None:
    completed = pair_drain(str(REPO_ROOT), str(tmp_path))

    assert completed.returncode == 2
    assert f"{tmp_path} is not a faashub source tree" in completed.stderr
    assert "has no faashub/__init__.py" in completed.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_window_must_be_positive_seconds(value: str) -> None:
    completed = pair_drain(str(REPO_ROOT), str(REPO_ROOT), "--window-s", value)

    assert completed.returncode == 2
    assert f"expected a number of seconds above 0, got {value!r}" in completed.stderr


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_same_tree_twice_reports_every_round() -> None:
    completed = pair_drain(
        str(REPO_ROOT),
        str(REPO_ROOT),
        "--rounds",
        "2",
        "--calls",
        "8000",
        "--window-s",
        "1",
        "--settle-s",
        "0.5",
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    rounds = re.findall(
        r"^round \d: first [\d.]+ us/call \([\d,]+ calls\), second [\d.]+ us/call "
        r"\([\d,]+ calls\), second/first [\d.]+$",
        completed.stdout,
        re.MULTILINE,
    )
    assert len(rounds) == 2, completed.stdout
    assert f"first ({REPO_ROOT}): CPU per call" in completed.stdout
    assert "second/first, median of 2 rounds:" in completed.stdout


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_queue_drained_before_window_ends_is_an_error() -> None:
    completed = pair_drain(
        str(REPO_ROOT),
        str(REPO_ROOT),
        "--rounds",
        "1",
        "--calls",
        "50",
        "--window-s",
        "2",
        "--settle-s",
        "0.5",
    )

    assert completed.returncode == 1
    assert "drained all 50 calls before the window ended" in completed.stderr
    assert "Raise --calls or lower --window-s" in completed.stderr
