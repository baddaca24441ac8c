"""The timer loop: which function runs when, on an injected clock.

`Scheduler` keeps one job per function and calls `fire(function, schedule,
scheduled_at)` in a task of its own at each tick. The clock is two injected
functions, `now()` (an aware datetime) and `sleep(seconds)`, so that tests
can move time by hand. The scheduler does not
invoke anything itself; `connectors.cron.source` supplies `fire`.

Rules at each tick:

* on time: a tick that the loop reaches within `misfire_grace_s` of its
  instant fires;
* missed: a tick reached later than that (the process was paused, the
  event loop blocked) follows the function's policy. `skip` logs and counts
  the missed ticks and fires none of them; `once` fires one catch-up run
  for the latest missed tick. Ticks before a job was added are not missed.
  The exception is a new job with the `once` policy for which
  `set_schedules` gets the tick fired last before a restart. That job
  resumes after the tick, so one catch-up run fires for the ticks between;
* overlap: unless the schedule allows overlap, a tick that comes while the
  function's previous run is still going is skipped and counted. It is
  logged at most once a minute per function, with the skips since the last
  line.

A job whose schedule changes starts again from the current time; a removed
job fires no more, though a run already going finishes.

Cost: the timers are a heap of next fire instants, so a pass touches only the
due jobs. A pass handles at most `FIRE_BATCH_SIZE` due ticks before it yields
to the event loop, so runs already started send their requests while
thousands of functions share one tick. Jobs that share a schedule share the
computation of their next tick within a pass.
"""

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.cron.metrics import CronMetrics
from connectors.cron.schedule import Schedule
from faashub import names

logger = logging.getLogger(__name__)

FireFunction = Callable[[names.FunctionRef, Schedule, datetime], Awaitable[None]]
NowFunction = Callable[[], datetime]
SleepFunction = Callable[[float], Coroutine[Any, Any, None]]

# Minimum seconds between two overlap log lines of one function. A connector
# that falls behind skips a tick of every function each second, and a log
# line for each would slow it down further. The metric counts every skip.
OVERLAP_LOG_INTERVAL_S = 60.0

# Maximum ticks counted when a job catches up after a long pause. Beyond it,
# the count in the log is a lower bound, and the catch-up run's tick is the
# last one counted.
MAX_MISSED_TICKS_COUNTED = 10_000

# Maximum due ticks handled before the scheduler yields to the event loop,
# so that one batch blocks the loop for milliseconds, not a whole pass over
# thousands of functions.
FIRE_BATCH_SIZE = 256

# Maximum schedule changes of one `set_schedules` call logged one line each
# at INFO. Larger changes, such as the first listing of thousands of
# functions, get one summary line at INFO and the per-function lines at DEBUG.
MAX_CHANGES_LOGGED_EACH = 20


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


@dataclass(slots=True)
class Job:
    """One function's schedule, its next tick and its runs in progress."""

    function: names.FunctionRef
    schedule: Schedule
    next_fire: datetime | None
    generation: int
    """Grows when the schedule changes, so stale timer entries are dropped."""
    running: set["asyncio.Task[None]"] = field(default_factory=set)
    overlaps_not_logged: int = 0
    """Overlap skips counted since the last overlap log line."""
    overlap_logged_at: datetime | None = None


class Scheduler:
    """Fires each function's ticks; see the module docstring for the rules."""

    def __init__(
        self,
        fire: FireFunction,
        *,
        now: NowFunction = utc_now,
        sleep: SleepFunction = asyncio.sleep,
        misfire_grace_s: float = 1.0,
        metrics: CronMetrics | None = None,
    ) -> None:
        self._fire = fire
        self._now = now
        self._sleep = sleep
        self._misfire_grace = timedelta(seconds=misfire_grace_s)
        self._metrics = metrics
        self._jobs: dict[names.FunctionRef, Job] = {}
        self._timers: list[tuple[datetime, int, names.FunctionRef]] = []
        self._generation = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Next ticks computed in the current pass, by schedule text, zone and
        # instant: jobs with the same schedule share them.
        self._next_fires: dict[tuple[str, str, datetime], datetime | None] = {}

    @property
    def jobs(self) -> Mapping[names.FunctionRef, Job]:
        """The scheduled functions and their jobs."""
        return self._jobs

    def set_schedules(
        self,
        schedules: Mapping[names.FunctionRef, Schedule],
        *,
        last_fired: Mapping[names.FunctionRef, datetime] | None = None,
    ) -> None:
        """Add, replace and remove jobs so that they follow `schedules`.

        `last_fired` gives the tick that functions last fired before this
        process started. A new job with the `once` policy resumes after it.
        """
        now = self._now()
        self._next_fires.clear()
        changes: list[tuple[str, dict[str, object]]] = []
        for function in list(self._jobs):
            if function not in schedules:
                del self._jobs[function]
                if self._metrics is not None:
                    self._metrics.forget(str(function))
                changes.append(("schedule removed", {"function": str(function)}))
        for function, schedule in schedules.items():
            job = self._jobs.get(function)
            if job is not None and job.schedule.annotations == schedule.annotations:
                continue
            self._generation += 1
            replaced = job is not None
            resume_after = None
            if not replaced and last_fired and schedule.missed_runs == "once":
                resume_after = last_fired.get(function)
            # A clock behind another replica's must not resume in the future.
            start = now if resume_after is None else min(resume_after, now)
            job = Job(
                function,
                schedule,
                self._next_fire(schedule, start),
                self._generation,
                running=job.running if job is not None else set(),
            )
            self._jobs[function] = job
            self._push(job)
            context: dict[str, object] = {
                "function": str(function),
                "schedule": schedule.text,
                "timezone": schedule.zone,
                "next_fire": _format(job.next_fire),
            }
            if resume_after is not None:
                context["resumed_after"] = _format(resume_after)
            changes.append(
                ("schedule replaced" if replaced else "schedule added", context)
            )
        self._next_fires.clear()
        _log_changes(changes, scheduled=len(self._jobs))
        self._wake.set()

    async def run(self) -> None:
        """Fire ticks until `stop()`; `drain()` then waits for the runs still going."""
        while not self._stopping:
            now = self._now()
            while self._fire_due(now, max_ticks=FIRE_BATCH_SIZE):
                # More ticks are due: let the runs started so far progress.
                await asyncio.sleep(0)
                if self._stopping:
                    return
                now = self._now()
            self._next_fires.clear()
            wait_s = self._seconds_to_next_tick(now)
            await self._wait(wait_s)

    @property
    def runs_in_flight(self) -> int:
        """The runs started and not finished yet."""
        return len(self._tasks)

    def stop(self) -> None:
        """Ask `run()` to return; it fires no more ticks."""
        self._stopping = True
        self._wake.set()

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for runs still going, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning(
                "abandoned %d scheduled runs still going after %g s",
                len(pending),
                timeout_s,
            )
            await asyncio.wait(pending)

    def _push(self, job: Job) -> None:
        if job.next_fire is not None:
            heapq.heappush(self._timers, (job.next_fire, job.generation, job.function))
        if self._metrics is not None:
            self._metrics.set_next_fire(str(job.function), job.next_fire)

    def _seconds_to_next_tick(self, now: datetime) -> float | None:
        while self._timers:
            when, generation, function = self._timers[0]
            job = self._jobs.get(function)
            if (
                job is not None
                and job.generation == generation
                and job.next_fire == when
            ):
                return max((when - now).total_seconds(), 0.0)
            heapq.heappop(self._timers)
        return None

    async def _wait(self, wait_s: float | None) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        waiters: set[asyncio.Task[object]] = {asyncio.create_task(self._wake.wait())}
        if wait_s is not None:
            waiters.add(asyncio.create_task(self._sleep(wait_s)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.wait(waiters)
        self._wake.clear()

    def _fire_due(self, now: datetime, *, max_ticks: int) -> bool:
        """Handle up to `max_ticks` ticks due at `now`; return whether more are due."""
        handled = 0
        timers = self._timers
        while timers and timers[0][0] <= now:
            if handled == max_ticks:
                return True
            when, generation, function = heapq.heappop(timers)
            job = self._jobs.get(function)
            if job is None or job.generation != generation or job.next_fire != when:
                continue
            self._handle_tick(job, when, now)
            self._push(job)
            handled += 1
        return False

    def _next_fire(self, schedule: Schedule, after: datetime) -> datetime | None:
        # The trigger depends on the schedule text and its zone only.
        key = (schedule.text, schedule.zone, after)
        try:
            return self._next_fires[key]
        except KeyError:
            following = self._next_fires[key] = schedule.next_fire(after)
            return following

    def _handle_tick(self, job: Job, tick: datetime, now: datetime) -> None:
        schedule = job.schedule
        following = self._next_fire(schedule, tick)
        if now - tick <= self._misfire_grace:
            job.next_fire = following
            self._start_run(job, tick)
            return

        # Late: count the ticks from this one up to the last one that is
        # also past its grace, and keep any on-time tick for the next round.
        latest_missed = tick
        missed = 1
        while (
            following is not None
            and now - following > self._misfire_grace
            and missed < MAX_MISSED_TICKS_COUNTED
        ):
            latest_missed = following
            missed += 1
            following = self._next_fire(schedule, following)
        if missed >= MAX_MISSED_TICKS_COUNTED and following is not None:
            following = schedule.next_fire(now - self._misfire_grace)
        job.next_fire = following
        context = {
            "function": str(job.function),
            "missed": missed,
            "first_missed": _format(tick),
            "last_missed": _format(latest_missed),
            "policy": schedule.missed_runs,
        }
        if self._metrics is not None:
            self._metrics.skipped(str(job.function), "missed", count=missed)
        if schedule.missed_runs == "once":
            logger.warning(
                "missed runs, firing one catch-up run", extra={"ctx": context}
            )
            self._start_run(job, latest_missed)
        else:
            logger.warning("missed runs skipped", extra={"ctx": context})

    def _start_run(self, job: Job, tick: datetime) -> None:
        if job.running and not job.schedule.allow_overlap:
            self._skip_overlap(job, tick)
            return
        task = asyncio.create_task(self._run(job, tick))
        job.running.add(task)
        self._tasks.add(task)
        task.add_done_callback(job.running.discard)
        task.add_done_callback(self._tasks.discard)

    def _skip_overlap(self, job: Job, tick: datetime) -> None:
        if self._metrics is not None:
            self._metrics.skipped(str(job.function), "overlap")
        job.overlaps_not_logged += 1
        last_logged = job.overlap_logged_at
        if (
            last_logged is not None
            and (tick - last_logged).total_seconds() < OVERLAP_LOG_INTERVAL_S
        ):
            return
        logger.warning(
            "tick skipped, the previous run is still going",
            extra={
                "ctx": {
                    "function": str(job.function),
                    "scheduled_at": _format(tick),
                    "skipped_since_last_log": job.overlaps_not_logged,
                }
            },
        )
        job.overlaps_not_logged = 0
        job.overlap_logged_at = tick

    async def _run(self, job: Job, tick: datetime) -> None:
        try:
            await self._fire(job.function, job.schedule, tick)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The invoker reports failures as results, so this is a bug;
            # the schedule must go on regardless.
            logger.exception(
                "scheduled run failed",
                extra={
                    "ctx": {
                        "function": str(job.function),
                        "scheduled_at": _format(tick),
                    }
                },
            )


def _log_changes(
    changes: list[tuple[str, dict[str, object]]], *, scheduled: int
) -> None:
    """Log schedule changes one line each, or summarised when there are many."""
    if len(changes) <= MAX_CHANGES_LOGGED_EACH:
        for event, context in changes:
            logger.info(event, extra={"ctx": context})
        return
    if logger.isEnabledFor(logging.DEBUG):
        for event, context in changes:
            logger.debug(event, extra={"ctx": context})
    counts = {"added": 0, "replaced": 0, "removed": 0}
    for event, _ in changes:
        counts[event.removeprefix("schedule ")] += 1
    logger.info(
        "schedules changed, details at DEBUG",
        extra={"ctx": {**counts, "scheduled": scheduled}},
    )


def _format(instant: datetime | None) -> str:
    return "never" if instant is None else format_instant(instant)


def format_instant(instant: datetime) -> str:
    """Return a UTC instant as RFC 3339 text with milliseconds and a `Z`."""
    utc = instant.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
