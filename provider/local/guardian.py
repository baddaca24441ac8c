"""The guardian: kills the function process groups when the provider dies.

A provider killed with SIGKILL cannot stop its function processes. The
parent-death signal that `processes.spawn` sets reaches only the process the
provider started, so what that process started in turn (the `sleep` of
`sh -c 'sleep 60'`, or the server behind an `sh -c` wrapper) would run on
without a provider, holding its port. `processes.ProcessTracker` therefore
runs this file as a small separate process, once per provider, and writes one
line to its stdin for each function process group: `add PGID` after a start
and `remove PGID` after the group was killed and its leader reaped. When
stdin reaches end of file, because the provider closed it or because the
kernel closed it when the provider died, the guardian sends SIGKILL to every
group still listed and exits.

The file is run as a script with `python -I -S`, so it imports only the
standard library and does not depend on how faashub is installed. It does
not reap the processes it kills: they are not its children, so that falls to
the process that adopts them (PID 1, or a subreaper).
"""

import os
import signal
import sys
from collections.abc import Iterable


def read_groups(lines: Iterable[bytes]) -> set[int]:
    """Return the process groups that are added and not removed in `lines`.

    A line that is not `add PGID` or `remove PGID` with a positive PGID is
    skipped, because the provider is the only writer.
    """
    groups: set[int] = set()
    for line in lines:
        action, _, number = line.strip().partition(b" ")
        if not number.isdigit() or int(number) <= 0:
            continue
        if action == b"add":
            groups.add(int(number))
        elif action == b"remove":
            groups.discard(int(number))
    return groups


def kill_groups(groups: Iterable[int]) -> int:
    """Send SIGKILL to each process group and return how many still existed."""
    killed = 0
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue
        killed += 1
    return killed


def main() -> None:
    """Follow stdin until end of file, then kill the groups still listed."""
    # NB: the guardian runs in a session of its own, so a Ctrl-C in the
    # provider's terminal does not reach it; SIGINT is ignored all the same.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    groups = read_groups(sys.stdin.buffer)
    killed = kill_groups(groups)
    if killed:
        print(
            f"faashub provider guardian: the provider exited without stopping "
            f"{killed} function process groups; killed them.",
            file=sys.stderr,
            flush=True,
        )


if __name__ == "__main__":
    main()
