"""`run_services`: several services in one event loop, stopped together.

The services here are small in-process classes, because what is tested is
the runner's order of open, run, stop and close, and how a signal or a
failure of one service reaches the others. The hub tests run the real
queue-worker and connectors this way.
"""

import asyncio
import gc
import os
import signal

import pytest

from connectors.core.runner import run_services
from faashub import gc_tuning

pytestmark = pytest.mark.timeout(10)


class RecordingService:
    """A service that runs until stopped, or fails as set up, and records each step."""

    def __init__(
        self,
        name: str,
        events: list[str],
        *,
        fail_run_after_s: float | None = None,
        fail_open: bool = False,
    ) -> None:
        self.name = name
        self.events = events
        self.fail_run_after_s = fail_run_after_s
        self.fail_open = fail_open
        self.started = asyncio.Event()
        self._stopped = asyncio.Event()

    async def open(self) -> None:
        self.events.append(f"open {self.name}")
        if self.fail_open:
            raise OSError(f"{self.name} cannot listen")

    async def run(self) -> None:
        self.events.append(f"run {self.name}")
        self.started.set()
        if self.fail_run_after_s is not None:
            await asyncio.sleep(self.fail_run_after_s)
            raise RuntimeError(f"{self.name} broke")
        await self._stopped.wait()
        self.events.append(f"drained {self.name}")

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")
        self._stopped.set()

    async def close(self) -> None:
        self.events.append(f"close {self.name}")


async def test_signal_stops_every_service() -> None:
    events: list[str] = []
    first = RecordingService("worker", events)
    second = RecordingService("cron", events)
    running = asyncio.create_task(run_services([first, second]))
    await asyncio.wait_for(first.started.wait(), 5)
    await asyncio.wait_for(second.started.wait(), 5)

    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 5)

    assert events[:4] == ["open worker", "open cron", "run worker", "run cron"]
    assert "drained worker" in events
    assert "drained cron" in events
    assert events[-2:] == ["close cron", "close worker"]


async def test_failed_service_stops_others() -> None:
    events: list[str] = []
    healthy = RecordingService("worker", events)
    broken = RecordingService("cron", events, fail_run_after_s=0.05)

    with pytest.raises(RuntimeError, match="cron broke"):
        await asyncio.wait_for(run_services([healthy, broken]), 5)

    assert "stop worker" in events
    assert "drained worker" in events
    assert events[-2:] == ["close cron", "close worker"]


async def test_failed_open_closes_opened_services() -> None:
    events: list[str] = []
    opened = RecordingService("worker", events)
    broken = RecordingService("cron", events, fail_open=True)
    never_opened = RecordingService("kafka", events)

    with pytest.raises(OSError, match="cron cannot listen"):
        await asyncio.wait_for(run_services([opened, broken, never_opened]), 5)

    assert events == ["open worker", "open cron", "close cron", "close worker"]


async def test_tuning_freezes_heap_after_open() -> None:
    events: list[str] = []
    service = RecordingService("worker", events, fail_run_after_s=0.01)
    threshold = gc.get_threshold()
    try:
        with pytest.raises(RuntimeError, match="worker broke"):
            await run_services([service], tune_gc_after_open=True)
        frozen = gc.get_freeze_count()
        tuned = gc.get_threshold()
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)

    assert frozen > 0
    assert tuned[0] == gc_tuning.GEN0_THRESHOLD


async def test_services_leave_heap_unfrozen_by_default() -> None:
    service = RecordingService("worker", [], fail_run_after_s=0.01)

    with pytest.raises(RuntimeError, match="worker broke"):
        await run_services([service])

    assert gc.get_freeze_count() == 0
