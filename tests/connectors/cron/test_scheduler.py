"""The scheduler on an injected clock: ticks, overlap and missed runs."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from connectors.cron.schedule import Schedule, parse_schedule
from connectors.cron.scheduler import (
    FIRE_BATCH_SIZE,
    MAX_CHANGES_LOGGED_EACH,
    Scheduler,
)
from faashub.names import FunctionRef
from tests.connectors.cron.conftest import FakeClock, settle

pytestmark = pytest.mark.timeout(20)

START = datetime(2024, 1, 1, tzinfo=UTC)
REPORT = FunctionRef("report", "openfaas-fn")


class Runs:
    """A `fire` function that records ticks and can hold runs open."""

    def __init__(self) -> None:
        self.ticks: list[datetime] = []
        self.release = asyncio.Event()
        self.release.set()

    async def fire(
        self, function: FunctionRef, schedule: Schedule, tick: datetime
    ) -> None:
        self.ticks.append(tick)
        await self.release.wait()


@asynccontextmanager
async def running(
    clock: FakeClock, runs: Runs, schedules: dict[FunctionRef, Schedule]
) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(
        runs.fire, now=clock.now, sleep=clock.sleep, misfire_grace_s=1
    )
    scheduler.set_schedules(schedules)
    task = asyncio.create_task(scheduler.run())
    await settle()
    try:
        yield scheduler
    finally:
        runs.release.set()
        scheduler.stop()
        await asyncio.wait_for(task, timeout=5)
        await scheduler.drain(5)


def schedule(text: str, **options: str) -> Schedule:
    annotations = {"schedule": text}
    annotations.update(
        {f"com.faashub.cron.{name}": value for name, value in options.items()}
    )
    return parse_schedule(annotations)


def at(seconds: int) -> datetime:
    return START.replace(second=seconds % 60, minute=seconds // 60)


async def test_ticks_fire_on_time() -> None:
    clock, runs = FakeClock(START), Runs()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}):
        await clock.step_through(35)
    assert runs.ticks == [at(10), at(20), at(30)]


async def test_changed_schedule_replaces_old() -> None:
    clock, runs = FakeClock(START), Runs()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}) as scheduler:
        await clock.step_through(12)
        scheduler.set_schedules({REPORT: schedule("*/15 * * * * *")})
        await clock.step_through(20)
    assert runs.ticks == [at(10), at(15), at(30)]


async def test_removed_function_stops() -> None:
    clock, runs = FakeClock(START), Runs()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}) as scheduler:
        await clock.step_through(12)
        scheduler.set_schedules({})
        await clock.step_through(30)
        assert scheduler.jobs == {}
    assert runs.ticks == [at(10)]


async def test_overlap_forbidden_while_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, runs = FakeClock(START), Runs()
    runs.release.clear()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}):
        await clock.step_through(25)
        # The run of 00:10 is still going: 00:20 is skipped.
        assert runs.ticks == [at(10)]
        runs.release.set()
        await settle()
        await clock.step_through(10)
    assert runs.ticks == [at(10), at(30)]
    skipped = [r for r in caplog.records if "previous run is still going" in r.message]
    assert len(skipped) == 1


async def test_overlap_allowed_by_annotation() -> None:
    clock, runs = FakeClock(START), Runs()
    runs.release.clear()
    slow = schedule("*/10 * * * * *", overlap="allow")
    async with running(clock, runs, {REPORT: slow}):
        await clock.step_through(25)
        assert runs.ticks == [at(10), at(20)]


async def test_missed_runs_skipped_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    clock, runs = FakeClock(START), Runs()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}):
        await clock.step_through(12)
        # The process is paused for 45 s: 00:20, 00:30, 00:40 and 00:50 pass.
        await clock.advance(45)
        await clock.step_through(8)
    assert runs.ticks == [at(10), at(60)]
    [record] = [r for r in caplog.records if r.message == "missed runs skipped"]
    assert record.ctx["missed"] == 4  # type: ignore[attr-defined]
    assert record.ctx["last_missed"] == "2024-01-01T00:00:50.000Z"  # type: ignore[attr-defined]


async def test_missed_runs_once_fires_one_catch_up() -> None:
    clock, runs = FakeClock(START), Runs()
    catch_up = schedule("*/10 * * * * *", **{"missed-runs": "once"})
    async with running(clock, runs, {REPORT: catch_up}):
        await clock.step_through(12)
        await clock.advance(45)
        await clock.step_through(8)
    # One catch-up run for the latest missed tick (00:50), then on time.
    assert runs.ticks == [at(10), at(50), at(60)]


async def test_late_within_grace_fires() -> None:
    clock, runs = FakeClock(START), Runs()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}):
        await clock.advance(10.8)
    assert runs.ticks == [at(10)]


async def test_functions_independent() -> None:
    clock, runs = FakeClock(START), Runs()
    other = FunctionRef("other", "openfaas-fn")
    schedules = {REPORT: schedule("*/10 * * * * *"), other: schedule("@every 15s")}
    async with running(clock, runs, schedules):
        await clock.step_through(30)
    assert runs.ticks == [at(10), at(15), at(20), at(30), at(30)]


async def test_overlap_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock, runs = FakeClock(START), Runs()
    runs.release.clear()
    async with running(clock, runs, {REPORT: schedule("*/10 * * * * *")}):
        # The run of 00:10 goes on while 00:20 to 01:30 are skipped.
        await clock.step_through(95)
    assert runs.ticks == [at(10)]
    skipped = [r for r in caplog.records if "previous run is still going" in r.message]
    assert [r.ctx["scheduled_at"] for r in skipped] == [  # type: ignore[attr-defined]
        "2024-01-01T00:00:20.000Z",
        "2024-01-01T00:01:20.000Z",
    ]
    assert skipped[1].ctx["skipped_since_last_log"] == 6  # type: ignore[attr-defined]


async def test_many_functions_share_tick() -> None:
    # More due ticks than one batch, so the scheduler yields between batches.
    clock, runs = FakeClock(START), Runs()
    count = FIRE_BATCH_SIZE * 2 + 10
    every_ten = schedule("*/10 * * * * *")
    schedules = {
        FunctionRef(f"job-{i}", "openfaas-fn"): every_ten for i in range(count)
    }
    async with running(clock, runs, schedules):
        await clock.step_through(20)
    assert runs.ticks.count(at(10)) == count
    assert runs.ticks.count(at(20)) == count
    assert len(runs.ticks) == 2 * count


async def test_many_changes_logged_as_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="connectors.cron.scheduler")
    count = MAX_CHANGES_LOGGED_EACH + 1
    every_ten = schedule("*/10 * * * * *")
    schedules = {
        FunctionRef(f"job-{i}", "openfaas-fn"): every_ten for i in range(count)
    }
    scheduler = Scheduler(Runs().fire, now=FakeClock(START).now)
    scheduler.set_schedules(schedules)
    scheduler.set_schedules({REPORT: every_ten})
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.message for r in info] == [
        "schedules changed, details at DEBUG",
        "schedules changed, details at DEBUG",
    ]
    assert info[0].ctx == {  # type: ignore[attr-defined]
        "added": count,
        "replaced": 0,
        "removed": 0,
        "scheduled": count,
    }
    assert info[1].ctx == {  # type: ignore[attr-defined]
        "added": 1,
        "replaced": 0,
        "removed": count,
        "scheduled": 1,
    }
