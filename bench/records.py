"""The JSON record of one benchmark run: machine, versions, command, numbers.

One file per benchmark and run of `python -m bench run`, named
`<UTC time>-<benchmark>.json`, in `bench/results/` or the folder that
--results-dir names. The folder is ignored by git, so records stay on the
machine that made them. docs/benchmarks.md quotes the latest full run.

A record states the conditions that change the numbers: CPU count and
model, memory, kernel, the load average before and after the run (other
processes on the machine compete for the same cores), the versions of
Python, nats-server, the HTTP and NATS libraries and the load generator,
and the git commit with a flag for uncommitted changes.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import faashub
from faashub import embedded_nats, errors

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parent / "results"
_LIBRARIES = (
    "aiohttp",
    "uvicorn",
    "uvloop",
    "httptools",
    "nats-py",
    "fastapi",
    "starlette",
    "httpx",
)


def machine() -> dict[str, Any]:
    """Return the CPU, memory, kernel and Python of this machine."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_total_mib": _memory_total_mib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


def versions(load_generator: str) -> dict[str, str]:
    """Return the versions of faashub, nats-server, the libraries and the generator."""
    found = {
        "faashub": faashub.__version__,
        "nats-server": _nats_server_version(),
        "load_generator": load_generator,
        "git_commit": _git(["rev-parse", "HEAD"]),
        "git_uncommitted_changes": "yes" if _git(["status", "--porcelain"]) else "no",
    }
    for library in _LIBRARIES:
        try:
            found[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            found[library] = "not installed"
    return found


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def write(record: dict[str, Any], *, results_dir: Path) -> Path:
    """Write `record` as `<started_at>-<benchmark>.json` and return its path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.fromisoformat(str(record["started_at"]))
    stamp = started_at.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"{stamp}-{record['benchmark']}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return path


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    return match.group(1).strip() if match else "unknown"


def _memory_total_mib() -> int | None:
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M)
    return int(match.group(1)) // 1024 if match else None


def _nats_server_version() -> str:
    try:
        binary = embedded_nats.find_binary()
        completed = subprocess.run(
            [str(binary), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, errors.FaashubError):
        return "unknown"
    return completed.stdout.strip().removeprefix("nats-server: ") or "unknown"


def _git(arguments: list[str]) -> str:
    """Return the output of a read-only git command, or "" without git."""
    try:
        completed = subprocess.run(
            ["git", *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return completed.stdout.strip() if completed.returncode == 0 else ""
