"""The cron source: schedules from annotations, ticks into invocations.

`CronSource.run(connector)` waits for the first function listing, which the
connector reads at once at start. It parses each scheduled function's
annotations into a `Schedule` and hands them to the `Scheduler`. It follows
every later listing, so a changed schedule replaces the old one and a removed
function stops. An invalid schedule or zone is logged once per change of
its annotations, with the function and the reason, and is published in the
`faashub_cron_schedule_info` and `faashub_cron_schedule_invalid` metrics.
It affects no other function.

Each tick invokes its one function (not every `cron-function` subscriber) with
`X-Topic: cron-function`, `X-Connector: cron-connector`, the tick's instant
in `X-Cron-Scheduled-At` and an `X-Call-Id` derived from the function and
that instant. Replicas therefore send the same call id for the same tick: in
async mode the gateway drops the repeats; in sync mode, with NATS
configured, replicas claim each tick first (see `connectors.cron.nats_state`).

With NATS configured, each run of a function with the `once` missed-run
policy also stores its tick as the function's last fired one. A function that
this process schedules for the first time resumes after that tick, so a
connector restarted after a downtime fires one catch-up run. Without NATS,
only ticks missed while the process runs (paused, or its loop blocked) are
caught up.
"""

import asyncio
import logging
import os
import socket
from datetime import datetime

from connectors.core.connector import Connector
from connectors.core.invoker import InvocationResult, Message
from connectors.core.metrics import ConnectorMetrics
from connectors.core.retry import SleepFunction as RetrySleepFunction
from connectors.core.source import until_stopped
from connectors.core.topic_map import serves_names
from connectors.cron import constants
from connectors.cron.errors import InvalidSchedule
from connectors.cron.functions import CronFunctionsBuilder
from connectors.cron.metrics import CronMetrics
from connectors.cron.nats_state import CronState
from connectors.cron.schedule import Schedule, parse_schedule, schedule_annotations
from connectors.cron.scheduler import (
    NowFunction,
    Scheduler,
    SleepFunction,
    format_instant,
    utc_now,
)
from faashub import credentials, names
from faashub.connector_settings import CronConnectorSettings
from faashub.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


class CronConnector(Connector):
    """The shared connector, plus the cron function list and one-function delivery."""

    topic_maps: CronFunctionsBuilder

    def __init__(
        self,
        settings: CronConnectorSettings,
        *,
        sleep: RetrySleepFunction = asyncio.sleep,
    ) -> None:
        super().__init__(settings, name=constants.CONNECTOR_NAME, sleep=sleep)
        # One duration histogram for all functions: a histogram per function
        # took 44 MiB for 10,000 schedules. The counters stay per function.
        self.metrics = ConnectorMetrics(
            constants.CONNECTOR_NAME, function_durations=False
        )
        self.topic_maps = CronFunctionsBuilder.like(self.topic_maps)
        self.topic_maps.serves = serves_names([constants.TOPIC])
        self.cron_metrics = CronMetrics(self.metrics.registry)
        # Many functions can share a tick. Without a bound, each would open a
        # connection at the same instant and overflow the gateway's backlog.
        self._in_flight = asyncio.Semaphore(settings.max_inflight)

    async def deliver_to(
        self, function: names.FunctionRef, message: Message
    ) -> InvocationResult:
        """Invoke one function with `message`, then log and count the outcome.

        Unlike `deliver()`, which invokes every subscriber of the topic,
        this invokes only `function`: each function has its own ticks. At
        most `max_inflight` invocations run at once; the others wait here.
        """
        # NOTE: _invoker and _record belong to Connector; a public
        # single-function delivery in the core would remove this reach-in.
        if self._invoker is None:
            raise RuntimeError("Connector.start() must run before deliver_to().")
        self.metrics.consumed(message.topic)
        async with self._in_flight:
            result = await self._invoker.invoke(function, message)
        self._record(result, message)
        return result


class CronSource:
    """Runs the scheduled functions of one connector replica."""

    def __init__(
        self,
        settings: CronConnectorSettings,
        *,
        now: NowFunction = utc_now,
        sleep: SleepFunction = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._now = now
        self._sleep = sleep
        self._state = "starting"
        self._stopping = asyncio.Event()
        self._parsed: dict[
            names.FunctionRef, tuple[tuple[tuple[str, str], ...], Schedule | str]
        ] = {}
        self.scheduler: Scheduler | None = None
        # The last tick and its header text. The functions of one tick share
        # it, so it is formatted once per tick instead of once per function.
        self._formatted_tick: tuple[datetime, str] | None = None
        self.nats_state: CronState | None = None
        if settings.nats_url:
            owner = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
            self.nats_state = CronState(
                settings.nats_url,
                token=credentials.read_nats_token(settings.nats_token_file),
                owner=owner,
                claim_ticks=not settings.async_invocation,
                lease_ttl_s=settings.lease_ttl_s,
            )

    @property
    def state(self) -> str:
        """Return "ready" while schedules run, else what the source waits for."""
        return self._state

    def stop(self) -> None:
        """Ask `run()` to stop firing, let runs finish and return."""
        self._stopping.set()

    async def run(self, connector: Connector) -> None:
        """Schedule the functions until `stop()`; see the module docstring."""
        if not isinstance(connector, CronConnector):
            raise TypeError("CronSource runs with a CronConnector only.")
        try:
            if self.nats_state is not None:
                self._state = "connecting to NATS"
                if not await until_stopped(self.nats_state.start(), self._stopping):
                    return
            elif not self._settings.async_invocation:
                logger.warning(
                    "sync invocation without nats_url: every replica fires every "
                    "tick, so run one replica only, or set --nats-url"
                )
            await self._schedule(connector)
        finally:
            if self.nats_state is not None:
                await self.nats_state.close()

    async def _schedule(self, connector: CronConnector) -> None:
        self._state = "waiting for the function list from the gateway"
        if not await until_stopped(connector.wait_until_ready(), self._stopping):
            return
        builder = connector.topic_maps

        async def fire(
            function: names.FunctionRef, schedule: Schedule, tick: datetime
        ) -> None:
            await self._fire(connector, function, schedule, tick)

        scheduler = self.scheduler = Scheduler(
            fire,
            now=self._now,
            sleep=self._sleep,
            misfire_grace_s=self._settings.misfire_grace_s,
            metrics=connector.cron_metrics,
        )
        scheduler_task = asyncio.create_task(scheduler.run())
        stopping = asyncio.create_task(self._stopping.wait())
        version = -1
        changed: asyncio.Task[None] | None = None
        drain_timeout_s = self._settings.drain_timeout_s
        try:
            while not self._stopping.is_set():
                if builder.scheduled_version != version:
                    version = builder.scheduled_version
                    await self._apply(
                        scheduler, connector.cron_metrics, builder.scheduled or {}
                    )
                    self._state = "ready"
                changed = asyncio.create_task(
                    builder.wait_for_scheduled_change(version)
                )
                done, _ = await asyncio.wait(
                    {changed, stopping, scheduler_task},
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if scheduler_task in done:
                    # The scheduler ends only on a bug: surface it.
                    scheduler_task.result()
        except asyncio.CancelledError:
            # Cancelled rather than stopped: abandon the runs at once.
            drain_timeout_s = 0.0
            raise
        finally:
            self._state = "stopping"
            scheduler.stop()
            helpers = {stopping} if changed is None else {stopping, changed}
            await cancel_and_wait(helpers)
            await asyncio.wait({scheduler_task})
            await scheduler.drain(drain_timeout_s)

    async def _apply(
        self,
        scheduler: Scheduler,
        metrics: CronMetrics,
        functions: dict[names.FunctionRef, dict[str, str]],
    ) -> None:
        schedules: dict[names.FunctionRef, Schedule] = {}
        for function in list(self._parsed):
            if function not in functions:
                del self._parsed[function]
                metrics.forget_status(str(function))
        # Functions with equal schedule annotations share one parsed Schedule,
        # which is immutable. Thousands of functions with a common schedule
        # then cost one parse and one copy of its expression in memory.
        shared: dict[tuple[tuple[str, str], ...], Schedule] = {
            key: parsed
            for key, parsed in self._parsed.values()
            if isinstance(parsed, Schedule)
        }
        for function, annotations in functions.items():
            key = schedule_annotations(annotations)
            cached = self._parsed.get(function)
            if cached is not None and cached[0] == key:
                parsed = cached[1]
            else:
                parsed = shared.get(key) or self._parse(function, annotations)
                if isinstance(parsed, Schedule):
                    shared[key] = parsed
                self._parsed[function] = (key, parsed)
            error = parsed if isinstance(parsed, str) else ""
            metrics.set_status(
                str(function),
                schedule=annotations.get(constants.ANNOTATION_SCHEDULE, ""),
                timezone=annotations.get(constants.ANNOTATION_TIMEZONE, "UTC"),
                error=error,
            )
            if isinstance(parsed, Schedule):
                schedules[function] = parsed
        last_fired = await self._sync_last_fired(scheduler, schedules)
        scheduler.set_schedules(schedules, last_fired=last_fired)

    async def _sync_last_fired(
        self, scheduler: Scheduler, schedules: dict[names.FunctionRef, Schedule]
    ) -> dict[names.FunctionRef, datetime]:
        """Read the last fired ticks of new `once` jobs; forget removed jobs."""
        state = self.nats_state
        if state is None:
            return {}
        removed = [function for function in scheduler.jobs if function not in schedules]
        new = [
            function
            for function, schedule in schedules.items()
            if function not in scheduler.jobs and schedule.missed_runs == "once"
        ]
        await asyncio.gather(*(state.forget(function) for function in removed))
        ticks = await asyncio.gather(
            *(state.read_last_fired(function, schedules[function]) for function in new)
        )
        return {
            function: tick
            for function, tick in zip(new, ticks, strict=True)
            if tick is not None
        }

    def _parse(
        self, function: names.FunctionRef, annotations: dict[str, str]
    ) -> Schedule | str:
        try:
            return parse_schedule(annotations)
        except InvalidSchedule as exc:
            logger.warning(
                "invalid schedule, function not scheduled",
                extra={"ctx": {"function": str(function), "error": str(exc)}},
            )
            return str(exc)

    async def _fire(
        self,
        connector: CronConnector,
        function: names.FunctionRef,
        schedule: Schedule,
        tick: datetime,
    ) -> None:
        formatted = self._formatted_tick
        if formatted is not None and formatted[0] == tick:
            scheduled_at = formatted[1]
        else:
            scheduled_at = format_instant(tick)
            self._formatted_tick = (tick, scheduled_at)
        state = self.nats_state
        if (
            state is not None
            and state.claims_ticks
            and not await state.claim(function, tick)
        ):
            logger.debug(
                "tick claimed by another replica",
                extra={
                    "ctx": {"function": str(function), "scheduled_at": scheduled_at}
                },
            )
            return
        message = Message(
            topic=constants.TOPIC,
            body=schedule.body,
            headers=[(constants.SCHEDULED_AT, scheduled_at)],
            identity=f"{constants.TOPIC}/{scheduled_at}",
            context={"scheduled_at": scheduled_at},
        )
        if state is None or schedule.missed_runs != "once":
            await connector.deliver_to(function, message)
            return
        # Stored beside the run, so a slow NATS does not delay the invocation.
        await asyncio.gather(
            state.record_fired(function, schedule, tick),
            connector.deliver_to(function, message),
        )
