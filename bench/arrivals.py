"""Counting what reaches a receiver during a drain, and the CPU it cost.

Two receivers count what the drainers send them: the callback receiver
(`bench.apps:callback_app`) counts callbacks, and the counting function
(`bench/counting_function.py`) counts records. Both serve the count and the
monotonic times of the first and the last arrival on `/_bench/stats`, and
clear them on `POST /_bench/reset`. `DrainWatch.measure` polls one of
them while a drainer runs and meters the CPU time of every process
involved from the first arrival on, so that the drainer's start-up stays
out of the rate and out of the CPU per call.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

from bench import apps, stack
from bench.errors import BenchmarkError
from bench.processes import CpuMeter, Servers, cpu_per_call_us

POLL_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class Arrivals:
    """A receiver's count, and the monotonic times of its first and last arrival."""

    count: int
    failed: int
    """Callbacks whose call failed. The counting function reports 0."""
    first_ns: int
    last_ns: int


@dataclass(frozen=True, slots=True)
class Drain:
    """The arrivals of one drain, and the CPU time that the processes used."""

    arrivals: Arrivals
    launched: float
    """When the drainer was started, on the monotonic clock of the receivers."""
    cpu_used_s: dict[str, float]
    """CPU seconds by part, from the first arrival seen to the end of the wait."""
    metered_arrivals: int
    """Arrivals during the metered time, which the CPU per call divides by."""

    @property
    def drain_s(self) -> float:
        """Seconds from the first to the last arrival."""
        return (self.arrivals.last_ns - self.arrivals.first_ns) / 1e9

    @property
    def wall_s(self) -> float:
        """Seconds from the drainer's start to the last arrival."""
        return self.arrivals.last_ns / 1e9 - self.launched

    @property
    def rate_per_s(self) -> float:
        """Arrivals per second after the first one."""
        return (self.arrivals.count - 1) / self.drain_s

    def cpu_per_arrival_us(self) -> dict[str, float]:
        """Return `cpu_us_<part>` and `cpu_us_total` per metered arrival."""
        return cpu_per_call_us(self.cpu_used_s, self.metered_arrivals)


PollHook = Callable[[stack.Component, Arrivals], None]
"""A callback run after each read of the receiver, with the drainer and arrivals."""


@dataclass(frozen=True, slots=True)
class DrainWatch:
    """The receiver, expected count and time limit of a benchmark's drains.

    `drainer_part` names the drainer among the CPU parts, beside
    `other_pids`, and `noun` names what arrives, in messages and notes.
    """

    receiver_url: str
    expected: int
    time_limit_s: float
    other_pids: Mapping[str, int]
    drainer_part: str
    noun: str

    def measure(
        self,
        servers: Servers,
        start_drainer: Callable[[], stack.Component],
        *,
        label: str,
        notes: list[str],
        on_poll: PollHook | None = None,
    ) -> Drain:
        """Reset the receiver, start the drainer, wait for its arrivals, stop it.

        Adds a note, headed by `label`, when fewer than `expected` arrived in
        time. Raises BenchmarkError when fewer than two arrived, too few for
        a rate.
        """
        reset(self.receiver_url)
        launched = time.monotonic()
        drainer = start_drainer()
        try:
            drain = self._wait(servers, drainer, launched=launched, on_poll=on_poll)
        finally:
            servers.stop(drainer.process)
        if drain.arrivals.count < self.expected:
            notes.append(
                f"{label}: {drain.arrivals.count} of {self.expected} {self.noun}s "
                f"arrived within {self.time_limit_s:g} s; the rate covers those only."
            )
        return drain

    def _wait(
        self,
        servers: Servers,
        drainer: stack.Component,
        *,
        launched: float,
        on_poll: PollHook | None,
    ) -> Drain:
        """Poll the receiver until all arrived, the drainer exits or time ends.

        The CPU time of the drainer and of `other_pids` is measured from the
        first arrival seen to the end, like the rate.
        """
        deadline = launched + self.time_limit_s
        meter = CpuMeter({self.drainer_part: drainer.process.pid, **self.other_pids})
        metered_from = -1
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                arrivals = read(client, self.receiver_url)
                if arrivals.count and metered_from < 0:
                    meter.start()
                    metered_from = arrivals.count
                if on_poll is not None:
                    on_poll(drainer, arrivals)
                if arrivals.count >= self.expected:
                    break
                if drainer.process.poll() is not None:
                    # A raw loop exits by itself: read its last arrivals too.
                    arrivals = read(client, self.receiver_url)
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(POLL_INTERVAL_S)
        cpu_used = meter.stop() if metered_from >= 0 else {}
        if arrivals.count < 2:
            raise BenchmarkError(
                f"{drainer.name} delivered {arrivals.count} of {self.expected} "
                f"{self.noun}s within {self.time_limit_s:g} s, too few for a rate; "
                f"see its log in {servers.log_path(drainer.name)}."
            )
        return Drain(arrivals, launched, cpu_used, arrivals.count - metered_from)


def reset(receiver_url: str) -> None:
    """Set the receiver's count and times to zero."""
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        client.post(receiver_url + apps.RESET_PATH).raise_for_status()


def read(client: httpx.Client, receiver_url: str) -> Arrivals:
    """Return the receiver's count and times."""
    response = client.get(receiver_url + apps.STATS_PATH)
    response.raise_for_status()
    data = response.json()
    return Arrivals(
        count=int(data["count"]),
        failed=int(data.get("failed", 0)),
        first_ns=int(data["first_ns"]),
        last_ns=int(data["last_ns"]),
    )
