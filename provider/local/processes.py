"""Starting, stopping and reading the output of function processes.

Every function process starts in a new session, so it leads its own process
group and the provider can signal the whole group, children included. On
Linux the process also sets PR_SET_PDEATHSIG, so the kernel sends it SIGKILL
when the provider thread that started it ends. That signal reaches only the
direct child, so `ProcessTracker` also keeps a `guardian` process informed of
every group, and the guardian kills the groups that a provider killed with
SIGKILL leaves behind. `classic` and `http_mode` start and stop their
processes through one `ProcessTracker`, and this module contains no HTTP
code. `read_lines` splits a process's output into lines for the function log
store; the provider's own log gets them only at DEBUG.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Final

from provider.local import guardian

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG: Final = 1  # from <linux/prctl.h>
# Seconds a stopping provider waits for the guardian to exit.
GUARDIAN_EXIT_TIMEOUT_S: Final = 5.0

# Output is read in chunks and split into lines, so a long line without a
# newline does not fill the pipe and block the process. Lines longer than
# MAX_LOG_LINE_BYTES are stored in parts of that size.
READ_CHUNK_BYTES: Final = 64 * 1024
MAX_LOG_LINE_BYTES: Final = 16 * 1024

# The C library's prctl, loaded before any fork because a forked child must
# not load libraries. None off Linux, where no parent-death signal exists.
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)
if not sys.platform.startswith("linux"):
    _prctl = None


def _die_with_parent(parent_pid: int) -> None:
    """Run in the forked child before exec: exit when the provider dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The provider may have died between fork and prctl; the signal would
    # then never come, so check once by hand.
    if os.getppid() != parent_pid:
        os._exit(1)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int | None = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """Start `argv` without a shell, in its own session, with pipes for output.

    Raise OSError when the command cannot be started (FileNotFoundError when
    it is not found on the `PATH` of `env`).
    """
    parent_pid = os.getpid()
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
        preexec_fn=lambda: _die_with_parent(parent_pid),
    )


def describe_exit(exit_code: int | None) -> str:
    """Describe how a process ended, such as "was killed by signal 9 (SIGKILL)".

    asyncio reports a process killed by signal N as the exit code -N.
    """
    if exit_code is None:
        return "ended"
    if exit_code >= 0:
        return f"exited with code {exit_code}"
    number = -exit_code
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"was killed by signal {number}"
    return f"was killed by signal {number} ({name})"


def signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    """Send `signum` to the process group that `process` leads, if any is left."""
    # NB: start_new_session makes the process group id equal to the pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


async def kill_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the process and every process left in its group, then reap it."""
    signal_group(process, signal.SIGKILL)
    await process.wait()


async def terminate_group(
    process: asyncio.subprocess.Process, *, grace_s: float
) -> int:
    """Send SIGTERM to the group, SIGKILL after `grace_s`, and return the exit code."""
    if process.returncode is None:
        signal_group(process, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            logger.warning(
                "function process ignored SIGTERM, killing it",
                extra={"ctx": {"pid": process.pid, "grace_s": grace_s}},
            )
    # Children that outlived the main process are killed too.
    await kill_group(process)
    return process.returncode if process.returncode is not None else -signal.SIGKILL


async def read_lines(
    stream: asyncio.StreamReader | None, *, on_line: Callable[[str], None]
) -> None:
    """Pass each line that a process writes to `on_line`, until end of file.

    Lines are decoded as UTF-8 (invalid bytes replaced), without the newline
    or a trailing carriage return.
    """
    if stream is None:
        return
    pending = bytearray()
    while chunk := await stream.read(READ_CHUNK_BYTES):
        pending += chunk
        for line in _take_lines(pending):
            on_line(_decode_line(line))
    if pending:
        on_line(_decode_line(bytes(pending)))


def _take_lines(pending: bytearray) -> Iterator[bytes]:
    """Remove and yield the complete lines at the start of `pending`."""
    while (end := pending.find(b"\n")) >= 0 or len(pending) >= MAX_LOG_LINE_BYTES:
        if end < 0 or end > MAX_LOG_LINE_BYTES:
            line = bytes(pending[:MAX_LOG_LINE_BYTES])
            del pending[:MAX_LOG_LINE_BYTES]
        else:
            line = bytes(pending[:end])
            del pending[: end + 1]
        yield line


def _decode_line(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


class ProcessTracker:
    """The function processes that run now, and the guardian that outlives them.

    Every function process is started with `spawn` and ended with `kill` or
    `terminate`, which stop its whole group. `kill_all` ends the ones still
    running when the provider stops. `start` and `close` run the guardian.
    """

    def __init__(self) -> None:
        self._running: set[asyncio.subprocess.Process] = set()
        self._guardian: asyncio.subprocess.Process | None = None
        self._guardian_watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the guardian; without one, a provider that is killed leaks groups.

        A guardian that cannot start is logged as a warning, and functions
        still run.
        """
        try:
            self._guardian = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-S",
                guardian.__file__,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            logger.warning(
                "process guardian failed to start, a killed provider will leave "
                "function processes running: %s",
                exc,
            )
            return
        self._guardian_watch = asyncio.create_task(
            self._watch_guardian(self._guardian), name="process-guardian"
        )
        logger.debug(
            "process guardian started", extra={"ctx": {"pid": self._guardian.pid}}
        )

    async def close(self) -> None:
        """End the guardian's input, so it exits, and wait for it."""
        guardian_process, self._guardian = self._guardian, None
        if self._guardian_watch is not None:
            self._guardian_watch.cancel()
            await asyncio.gather(self._guardian_watch, return_exceptions=True)
            self._guardian_watch = None
        if guardian_process is None:
            return
        if guardian_process.stdin is not None:
            guardian_process.stdin.close()
        try:
            async with asyncio.timeout(GUARDIAN_EXIT_TIMEOUT_S):
                await guardian_process.wait()
        except TimeoutError:
            logger.warning(
                "process guardian did not exit, killing it",
                extra={"ctx": {"pid": guardian_process.pid}},
            )
            guardian_process.kill()
            await guardian_process.wait()

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: int | None = asyncio.subprocess.DEVNULL,
    ) -> asyncio.subprocess.Process:
        """Start a function process as `spawn` does, and track its group.

        Raise OSError when the command cannot be started.
        """
        process = await spawn(argv, env=env, stdin=stdin)
        self._running.add(process)
        self._tell_guardian(f"add {process.pid}\n")
        return process

    async def kill(self, process: asyncio.subprocess.Process) -> None:
        """SIGKILL the process's group, reap the process and stop tracking it."""
        await kill_group(process)
        self._forget(process)

    async def terminate(
        self, process: asyncio.subprocess.Process, *, grace_s: float
    ) -> int:
        """Stop the group as `terminate_group` does and stop tracking it.

        Return the process's exit code.
        """
        exit_code = await terminate_group(process, grace_s=grace_s)
        self._forget(process)
        return exit_code

    async def kill_all(self) -> None:
        """SIGKILL every tracked process group and reap the processes."""
        await asyncio.gather(*(self.kill(process) for process in list(self._running)))

    def _forget(self, process: asyncio.subprocess.Process) -> None:
        # NB: called only after the group was killed and its leader reaped.
        # Until the reap, the leader's pid (the group id) cannot be reused, so
        # the guardian never lists a group id that another process could own,
        # except for the instant between the reap and this write.
        if process in self._running:
            self._running.discard(process)
            self._tell_guardian(f"remove {process.pid}\n")

    def _tell_guardian(self, line: str) -> None:
        stdin = self._guardian.stdin if self._guardian is not None else None
        # NB: is_closing() and write() run without yielding to the event loop,
        # so the pipe cannot close between them.
        if stdin is not None and not stdin.is_closing():
            stdin.write(line.encode())

    async def _watch_guardian(self, process: asyncio.subprocess.Process) -> None:
        """Log a guardian that exits while the provider runs."""
        exit_code = await process.wait()
        if self._guardian is process:
            self._guardian = None
            logger.warning(
                "process guardian exited, a killed provider will leave function "
                "processes running",
                extra={"ctx": {"pid": process.pid, "exit_code": exit_code}},
            )
