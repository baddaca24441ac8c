"""`python -m bench pair-drain`: two queue-workers measured on one queue.

The runs start their own hub on loopback, as the benchmarks do, and check
what the command reports, never a number against a target.
"""

import os
import re
import signal
import subprocess
import sys
import time
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


def children_of(pid: int) -> set[int]:
    """Return the pids whose parent is `pid`, read from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The parent pid is the second field after the command in parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.timeout(RUN_TIMEOUT_S + 10)
def test_sigterm_stops_every_server() -> None:
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "pair-drain",
            str(REPO_ROOT),
            str(REPO_ROOT),
            "--calls",
            "8000",
            "--window-s",
            "60",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The hub (nats-server, provider, gateway, callback app) and then the two
    # workers: wait until all six run.
    deadline = time.monotonic() + 60
    servers: set[int] = set()
    while time.monotonic() < deadline and len(servers) < 6:
        time.sleep(0.2)
        servers = children_of(bench.pid)
    assert len(servers) >= 6, servers

    os.kill(bench.pid, signal.SIGTERM)
    _, stderr = bench.communicate(timeout=60)

    assert bench.returncode == 128 + signal.SIGTERM
    assert "stopping the servers it started" in stderr
    assert not [pid for pid in servers if is_running(pid)]
