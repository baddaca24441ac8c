"""The cron source against a fake gateway, with a hand-driven clock.

Replica tests run two connectors in this event loop against one fake
gateway and, for sync invocation, one real nats-server that stores the claims.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.js.errors import KeyNotFoundError

from connectors.core.invoker import call_id_for
from connectors.cron.source import CronConnector, CronSource
from faashub import constants
from faashub.connector_settings import CronConnectorSettings
from faashub.names import FunctionRef
from tests.conftest import LOOPBACK, free_port, wait_until
from tests.connectors.conftest import FakeGateway, settings_values
from tests.connectors.cron.conftest import FakeClock, settle

pytestmark = pytest.mark.timeout(30)

START = datetime(2024, 1, 1, tzinfo=UTC)
REPORT = FunctionRef("report", "openfaas-fn")
MISSED_RUNS = "com.faashub.cron.missed-runs"
SCHEDULED_AT = "X-Cron-Scheduled-At"


@dataclass
class Replica:
    connector: CronConnector
    source: CronSource
    task: "asyncio.Task[None]"


def cron_settings(gateway: FakeGateway, **overrides: Any) -> CronConnectorSettings:
    values = settings_values(gateway_url=gateway.url, rebuild_interval_s=0.1)
    values.pop("commit_interval_s")
    values.pop("session_timeout_s")
    values.update(overrides)
    return CronConnectorSettings(**values)


@contextlib.asynccontextmanager
async def running_replica(
    settings: CronConnectorSettings, clock: FakeClock
) -> AsyncIterator[Replica]:
    connector = CronConnector(settings)
    await connector.start()
    source = CronSource(settings, now=clock.now, sleep=clock.sleep)
    task = asyncio.create_task(source.run(connector))
    replica = Replica(connector, source, task)
    try:
        await wait_until(
            lambda: source.state == "ready" or task.done(),
            description="the cron source to schedule",
        )
        if task.done():
            task.result()
        yield replica
    finally:
        source.stop()
        try:
            if not task.done():
                await asyncio.wait_for(task, timeout=10)
        finally:
            await connector.close()


def deploy(gateway: FakeGateway, name: str, **annotations: str) -> None:
    gateway.functions[f"{name}.openfaas-fn"] = {"topic": "cron-function", **annotations}


async def test_tick_invokes_with_headers(gateway: FakeGateway) -> None:
    deploy(
        gateway,
        "report",
        schedule="*/10 * * * * *",
        **{"com.faashub.cron.body": "daily report"},
    )
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway), clock):
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 1)

    [call] = gateway.received("report")
    assert call.route == "function"
    assert call.body == b"daily report"
    assert call.header("X-Topic") == "cron-function"
    assert call.header("X-Connector") == "cron-connector"
    assert call.header("X-Cron-Scheduled-At") == "2024-01-01T00:00:10.000Z"
    expected_id = call_id_for("cron-function/2024-01-01T00:00:10.000Z", REPORT)
    assert call.header("X-Call-Id") == expected_id


async def test_durations_share_one_histogram(gateway: FakeGateway) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    deploy(gateway, "audit", schedule="*/10 * * * * *")
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway), clock) as replica:
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 1)
        await wait_until(lambda: len(gateway.received("audit")) == 1)
        metrics = replica.connector.metrics.render().decode()

    histogram_counts = [
        line
        for line in metrics.splitlines()
        if line.startswith("faashub_connector_invocation_seconds_count{")
    ]
    assert histogram_counts == [
        'faashub_connector_invocation_seconds_count{connector="cron",function=""} 2.0'
    ]
    for function in ("report", "audit"):
        invoked = (
            'faashub_connector_invoked_total{code="200",connector="cron",'
            f'function="{function}.openfaas-fn"}} 1.0'
        )
        assert invoked in metrics


async def test_other_subscribers_not_invoked(gateway: FakeGateway) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    deploy(gateway, "hourly", schedule="@hourly")
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway), clock):
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 1)
        await settle()
    assert gateway.received("hourly") == []


async def test_invalid_schedule_isolated(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    deploy(gateway, "broken", schedule="0 25 * * *")
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway), clock) as replica:
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 1)
        # Several refreshes read the same invalid schedule.
        requests = gateway.system_requests
        await wait_until(lambda: gateway.system_requests >= requests + 6)
        metrics = replica.connector.metrics.render().decode()

    invalid_logs = [
        r for r in caplog.records if r.message.startswith("invalid schedule")
    ]
    assert len(invalid_logs) == 1
    assert invalid_logs[0].ctx["function"] == "broken.openfaas-fn"  # type: ignore[attr-defined]
    assert "25 is outside 0-23" in invalid_logs[0].ctx["error"]  # type: ignore[attr-defined]
    assert 'faashub_cron_schedule_invalid{function="broken.openfaas-fn"} 1.0' in metrics
    assert 'faashub_cron_schedule_invalid{function="report.openfaas-fn"} 0.0' in metrics
    assert "25 is outside 0-23" in metrics


async def test_schedule_changes_followed(gateway: FakeGateway) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway), clock) as replica:
        scheduler = replica.source.scheduler
        assert scheduler is not None
        assert scheduler.jobs[REPORT].schedule.text == "*/10 * * * * *"

        deploy(gateway, "report", schedule="*/15 * * * * *")
        await wait_until(
            lambda: scheduler.jobs[REPORT].schedule.text == "*/15 * * * * *"
        )
        await clock.advance(15)
        await wait_until(lambda: len(gateway.received("report")) == 1)

        del gateway.functions["report.openfaas-fn"]
        await wait_until(lambda: REPORT not in scheduler.jobs)
        await clock.advance(15)
        await settle()
    [call] = gateway.received("report")
    assert call.header("X-Cron-Scheduled-At") == "2024-01-01T00:00:15.000Z"


async def test_async_replicas_send_one_call_id(gateway: FakeGateway) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    clock = FakeClock(START)
    settings = cron_settings(gateway, async_invocation=True)
    async with running_replica(settings, clock), running_replica(settings, clock):
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 2)

    calls = gateway.received("report")
    assert {call.route for call in calls} == {"async-function"}
    # The gateway's duplicate window drops the second of two equal ids.
    assert calls[0].header("X-Call-Id") == calls[1].header("X-Call-Id")


async def test_sync_replicas_fire_each_tick_once(
    gateway: FakeGateway, nats_url: str
) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    clock = FakeClock(START)
    first = cron_settings(gateway, nats_url=nats_url, replica_id="first")
    second = cron_settings(gateway, nats_url=nats_url, replica_id="second")
    async with (
        running_replica(first, clock) as one,
        running_replica(second, clock) as other,
    ):
        schedulers = [one.source.scheduler, other.source.scheduler]

        def runs_finished() -> bool:
            # Both replicas' runs, the claim loser's included, so that the
            # next tick is not skipped as an overlap.
            return all(
                scheduler is not None and not scheduler.jobs[REPORT].running
                for scheduler in schedulers
            )

        for count in range(1, 4):
            await clock.advance(10)

            def reached(n: int = count) -> bool:
                return len(gateway.received("report")) >= n

            await wait_until(reached)
            await wait_until(runs_finished)
        await asyncio.sleep(0.2)

    ticks = [call.header("X-Cron-Scheduled-At") for call in gateway.received("report")]
    assert ticks == [
        "2024-01-01T00:00:10.000Z",
        "2024-01-01T00:00:20.000Z",
        "2024-01-01T00:00:30.000Z",
    ]


async def test_replica_dying_mid_run_keeps_next_tick(
    gateway: FakeGateway, nats_url: str
) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    gateway.respond("report", delay_s=2.0)
    clock = FakeClock(START)
    settings = {
        name: cron_settings(gateway, nats_url=nats_url, replica_id=name)
        for name in ("first", "second")
    }
    async with contextlib.AsyncExitStack() as stack:
        replicas = {
            name: await stack.enter_async_context(running_replica(value, clock))
            for name, value in settings.items()
        }
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 1)
        winner = await lease_owner(nats_url, "openfaas-fn.report.1704067210000")

        # The winner dies while its run is going: its task is cancelled
        # and its connections close, without a drain.
        dead = replicas[winner]
        dead.task.cancel()
        await asyncio.wait({dead.task})
        await dead.connector.close()

        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 2)
        survivor = await lease_owner(nats_url, "openfaas-fn.report.1704067220000")

    assert survivor != winner
    calls = gateway.received("report")
    assert calls[1].header("X-Cron-Scheduled-At") == "2024-01-01T00:00:20.000Z"


async def lease_owner(nats_url: str, key: str) -> str:
    client = await nats.connect(nats_url)
    try:
        bucket = await client.jetstream().key_value(constants.CRON_LEASE_BUCKET)
        entry = await bucket.get(key)
        assert entry.value is not None
        return entry.value.decode()
    finally:
        await client.close()


@pytest.mark.parametrize("async_invocation", [False, True], ids=["sync", "async"])
async def test_restart_catches_up_once(
    gateway: FakeGateway, nats_url: str, async_invocation: bool
) -> None:
    every_10s = "*/10 * * * * *"
    deploy(gateway, "report", schedule=every_10s, **{MISSED_RUNS: "once"})
    deploy(gateway, "cleanup", schedule=every_10s)
    deploy(gateway, "changed", schedule=every_10s, **{MISSED_RUNS: "once"})
    clock = FakeClock(START)
    settings = cron_settings(
        gateway, nats_url=nats_url, async_invocation=async_invocation
    )
    async with running_replica(settings, clock):
        await clock.advance(10)
        await wait_until(lambda: len(gateway.invocations) == 3)

    # No replica runs while 00:20 and 00:30 pass, and one schedule changes.
    await clock.advance(25)
    deploy(gateway, "changed", schedule="*/20 * * * * *", **{MISSED_RUNS: "once"})
    async with running_replica(settings, clock) as replica:
        await wait_until(lambda: len(gateway.received("report")) == 2)
        # The catch-up run must end before 00:40, or the overlap rule skips
        # that tick; on a loaded machine its response can lag its request.
        scheduler = replica.source.scheduler
        assert scheduler is not None
        await wait_until(lambda: scheduler.runs_in_flight == 0)
        await clock.advance(5)
        await wait_until(lambda: len(gateway.invocations) == 7)
        await settle()

    def ticks(name: str) -> list[str | None]:
        return [call.header(SCHEDULED_AT) for call in gateway.received(name)]

    # `once` fires one catch-up run for the latest missed tick, 00:30.
    assert ticks("report") == [tick(10), tick(30), tick(40)]
    # `skip` (the default) fires nothing for the ticks while no replica ran.
    assert ticks("cleanup") == [tick(10), tick(40)]
    # A schedule changed while no replica ran starts from the current time.
    assert ticks("changed") == [tick(10), tick(40)]


async def test_removed_function_record_deleted(
    gateway: FakeGateway, nats_url: str
) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *", **{MISSED_RUNS: "once"})
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway, nats_url=nats_url), clock):
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("report")) == 1)
        assert await last_fired_record(nats_url, "openfaas-fn.report") is not None

        del gateway.functions["report.openfaas-fn"]
        await wait_until_async(
            lambda: last_fired_record(nats_url, "openfaas-fn.report"), expected=None
        )


def tick(second: int) -> str:
    return f"2024-01-01T00:00:{second:02d}.000Z"


async def wait_until_async(
    probe: Callable[[], Awaitable[object]], *, expected: object, timeout_s: float = 5
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (value := await probe()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"still {value!r}"
        await asyncio.sleep(0.05)


async def last_fired_record(nats_url: str, key: str) -> dict[str, Any] | None:
    client = await nats.connect(nats_url)
    try:
        bucket = await client.jetstream().key_value(constants.CRON_LAST_FIRED_BUCKET)
        try:
            entry = await bucket.get(key)
        except KeyNotFoundError:
            return None
        assert entry.value is not None
        record: dict[str, Any] = json.loads(entry.value)
        return record
    finally:
        await client.close()


async def test_shared_tick_bounded_by_max_inflight(gateway: FakeGateway) -> None:
    names = [f"report-{index}" for index in range(6)]
    for name in names:
        deploy(gateway, name, schedule="*/10 * * * * *")
        gateway.respond(name, delay_s=0.1)
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway, max_inflight=2), clock):
        await clock.advance(10)
        await wait_until(lambda: len(gateway.invocations) == len(names))
        await wait_until(lambda: gateway.active == 0)
    assert gateway.max_active == 2


async def test_equal_schedules_shared(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    deploy(gateway, "report", schedule="*/10 * * * * *")
    deploy(gateway, "backup", schedule="*/10 * * * * *")
    deploy(gateway, "broken", schedule="0 25 * * *")
    deploy(gateway, "broken-too", schedule="0 25 * * *")
    clock = FakeClock(START)
    async with running_replica(cron_settings(gateway), clock) as replica:
        assert replica.source.scheduler is not None
        jobs = replica.source.scheduler.jobs
        backup = FunctionRef("backup", "openfaas-fn")
        assert jobs[REPORT].schedule is jobs[backup].schedule
        await clock.advance(10)
        await wait_until(lambda: len(gateway.received("backup")) == 1)
        assert len(gateway.received("report")) == 1

    invalid_logs = [
        r for r in caplog.records if r.message.startswith("invalid schedule")
    ]
    assert sorted(r.ctx["function"] for r in invalid_logs) == [  # type: ignore[attr-defined]
        "broken-too.openfaas-fn",
        "broken.openfaas-fn",
    ]


async def test_stop_ends_wait_for_first_function_list() -> None:
    clock = FakeClock(START)
    # No gateway listens, so the first function list never arrives.
    values = settings_values(gateway_url=f"http://{LOOPBACK}:{free_port()}")
    values.pop("commit_interval_s")
    values.pop("session_timeout_s")
    settings = CronConnectorSettings(**values)
    connector = CronConnector(settings)
    await connector.start()
    source = CronSource(settings, now=clock.now, sleep=clock.sleep)
    task = asyncio.create_task(source.run(connector))
    try:
        await wait_until(
            lambda: source.state.startswith("waiting for the function list"),
            description="the cron source to wait for the gateway",
        )
        source.stop()
        await asyncio.wait_for(task, timeout=2)
    finally:
        task.cancel()
        await connector.close()

    assert source.state != "ready"


async def test_connector_serves_only_cron_topic(gateway: FakeGateway) -> None:
    connector = CronConnector(cron_settings(gateway))

    assert connector.topic_maps.serves("cron-function")
    assert connector.topic_maps.serves("cron-*")
    assert not connector.topic_maps.serves("orders")
