"""The servers a benchmark starts: launch, readiness checks, resident memory, stop.

Every process starts in a session of its own, so its process group id is its
pid, and `Servers` stops the whole group by that id: SIGTERM first, SIGKILL
after a grace period. Processes that left the group on purpose, such as the
function processes of the local provider, are found through /proc before the
stop and killed afterwards if they outlived their parent. `Servers` is a
context manager, so a benchmark that fails half-way still stops everything
it started.

Children never inherit `FAASHUB_*` variables from the shell that runs the
harness, because a stray `FAASHUB_PORT` would change what is measured.

This module does not start faashub's components: `bench.stack` does.
"""

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from bench.errors import BenchmarkError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 20.0
POLL_INTERVAL_S = 0.05


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without FAASHUB_* variables, plus `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("FAASHUB_")
    }
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True, slots=True)
class _ProcessId:
    """A pid together with its start time, so a reused pid is never signalled."""

    pid: int
    start_ticks: int


def _start_ticks(pid: int) -> int | None:
    """Return the start time of `pid` in clock ticks since boot, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 of /proc/PID/stat, counted after the parenthesised command name.
    return int(stat.rsplit(")", 1)[1].split()[19])


def descendants(pid: int) -> list[int]:
    """Return the pids of every living process below `pid`, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found.append(child)
                pending.append(child)
    return found


def command_line(pid: int) -> list[str]:
    """Return the argv of `pid`, or [] when it has exited."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def rss_mib(pid: int) -> float | None:
    """Return the resident memory of `pid` in MiB, or None when it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """Return the CPU time, user plus system, that `pid` used so far in seconds.

    Returns None when the process has exited.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks.
    # The fields after the parenthesised command name start at field 3.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time used by named processes between `start` and `stop`.

    Dividing it by the requests served in the same window gives the CPU cost
    of one request in each process, which shows where the time goes on a
    machine whose cores the load generator and every server share.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._started: dict[str, float] = {}

    def start(self) -> None:
        """Read the CPU time of every process now."""
        self._started = {
            part: used
            for part, pid in self._pids.items()
            if (used := cpu_seconds(pid)) is not None
        }

    def stop(self) -> dict[str, float]:
        """Return the CPU seconds each process used since `start`, by part."""
        used: dict[str, float] = {}
        for part, before in self._started.items():
            after = cpu_seconds(self._pids[part])
            if after is not None:
                used[part] = after - before
        return used


def cpu_per_call_us(used_s: Mapping[str, float], calls: int) -> dict[str, float]:
    """Return `cpu_us_<part>` per call for each part, plus `cpu_us_total`."""
    if calls <= 0:
        return {}
    sample = {f"cpu_us_{part}": used * 1e6 / calls for part, used in used_s.items()}
    sample["cpu_us_total"] = sum(used_s.values()) * 1e6 / calls
    return sample


class Servers:
    """Processes started for one benchmark, stopped in reverse order on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> "Servers":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in its own session, its output in `<log_dir>/<name>.log`."""
        log_path = self.log_path(name)
        with log_path.open("ab") as log_file:
            try:
                process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=child_environment(env),
                    start_new_session=True,
                )
            except OSError as exc:
                raise BenchmarkError(
                    f"Cannot start {name} ({argv[0]}): {exc}. Check that the "
                    "benchmark runs in the project's virtualenv."
                ) from exc
        self._started.append((name, process))
        logger.debug("started %s (pid %d): %s", name, process.pid, " ".join(argv))
        return process

    def log_path(self, name: str) -> Path:
        """Return the file that collects the output of the process `name`."""
        return self.log_dir / f"{name}.log"

    def stop(
        self, process: subprocess.Popen[bytes], *, grace_s: float = STOP_GRACE_S
    ) -> int | None:
        """Stop `process`, its group and its descendants, and return its exit code.

        SIGKILL follows SIGTERM after `grace_s` seconds, so the exit code is
        -9 for a process that did not stop in time.
        """
        for index, (name, started) in enumerate(self._started):
            if started is process:
                del self._started[index]
                return _stop_group(name, process, grace_s=grace_s)
        raise ValueError(f"process {process.pid} was not started by this Servers")

    def stop_all(self) -> None:
        """Stop every process still running, the most recently started first."""
        while self._started:
            name, process = self._started.pop()
            try:
                _stop_group(name, process, grace_s=STOP_GRACE_S)
            except Exception:
                logger.exception("stopping %s failed", name)

    def wait_for_port(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        port: int,
        *,
        timeout_s: float,
    ) -> None:
        """Wait until `port` accepts connections, or raise if `process` exits first."""

        def listening() -> str | None:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    return None
            except OSError as exc:
                return type(exc).__name__

        self._wait(
            name,
            process,
            listening,
            goal=f"listen on port {port}",
            timeout_s=timeout_s,
        )

    def wait_for_health(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        url: str,
        *,
        timeout_s: float,
    ) -> None:
        """Wait until GET `url` returns 200, or raise if `process` exits first."""
        with httpx.Client(timeout=1.0, trust_env=False) as client:

            def healthy() -> str | None:
                try:
                    response = client.get(url)
                except httpx.TransportError as exc:
                    return type(exc).__name__
                if response.status_code == 200:
                    return None
                return f"status {response.status_code}"

            self._wait(
                name,
                process,
                healthy,
                goal=f"become healthy at {url}",
                timeout_s=timeout_s,
            )

    def _wait(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        check: Callable[[], str | None],
        *,
        goal: str,
        timeout_s: float,
    ) -> None:
        """Call `check` until it returns None, the process exits or time runs out.

        `check` returns None on success and the problem it found otherwise,
        which the error of a timeout names.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_running(name, process)
            problem = check()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise BenchmarkError(
                    f"{name} did not {goal} within {timeout_s:g} s (last check: "
                    f"{problem}); its output is in {self.log_path(name)}."
                )
            time.sleep(POLL_INTERVAL_S)

    def _check_running(self, name: str, process: subprocess.Popen[bytes]) -> None:
        code = process.poll()
        if code is not None:
            raise BenchmarkError(
                f"{name} exited with code {code} while starting; its output is in "
                f"{self.log_path(name)}."
            )


def _stop_group(
    name: str, process: subprocess.Popen[bytes], *, grace_s: float
) -> int | None:
    """Stop one process group and kill any descendant that outlives it."""
    leftovers = [
        _ProcessId(pid, ticks)
        for pid in descendants(process.pid)
        if (ticks := _start_ticks(pid)) is not None
    ]
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %g s, killing it", name, grace_s)
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE_S)
    # The process group may still hold children that ignored SIGTERM.
    _signal_group(process.pid, signal.SIGKILL)
    for leftover in leftovers:
        if _start_ticks(leftover.pid) == leftover.start_ticks:
            logger.warning("killing pid %d left behind by %s", leftover.pid, name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover.pid, signal.SIGKILL)
    return process.returncode


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@contextlib.contextmanager
def temporary_directory(prefix: str) -> Iterator[Path]:
    """Yield a new directory under the system's temp folder, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def python_module_argv(module: str, *arguments: str) -> list[str]:
    """Return the argv that runs `python -m module arguments...` in this venv."""
    return [sys.executable, "-m", module, *arguments]
