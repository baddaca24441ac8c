"""A cancelled task stops, even when what it awaited ends in the same loop pass.

On Python 3.11, `asyncio.wait_for` returns the inner result when its own task
is cancelled in the loop pass in which the inner awaitable finishes, so the
cancel is lost (a CPython bug, fixed in 3.12 by rewriting wait_for on
`asyncio.timeout`). The Kafka source lost such a cancel of its commit loop
and never stopped. The components therefore bound each wait with
`asyncio.timeout`, and the first test keeps `asyncio.wait_for` out of them.
The other tests cancel a task at that exact instant and check that it ends.
The Kafka consumer here is a small stand-in, because the code under test is
the source's own loop, not the client.
"""

import ast
import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from connectors.core.source import until_stopped
from connectors.kafka.source import KafkaSource
from faashub.tasks import cancel_and_wait
from tests.connectors.kafka.conftest import kafka_settings

pytestmark = pytest.mark.timeout(20)

REPOSITORY = Path(__file__).resolve().parent.parent
COMPONENTS = ("faashub", "gateway", "queue_worker", "provider", "connectors", "bench")


def _wait_for_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "wait_for"
        and isinstance(node.value, ast.Name)
        and node.value.id == "asyncio"
    ]


def test_components_avoid_wait_for() -> None:
    found = [
        f"{path.relative_to(REPOSITORY)}:{line}"
        for package in COMPONENTS
        for path in sorted((REPOSITORY / package).rglob("*.py"))
        for line in _wait_for_calls(path)
    ]

    assert found == [], (
        "asyncio.wait_for can lose a cancel on Python 3.11; use "
        f"`async with asyncio.timeout(...)` instead at: {', '.join(found)}"
    )


class _CommitEndsAsCancelled:
    """A consumer whose commit requests its caller's cancel as it returns."""

    def __init__(self) -> None:
        self.commits = 0
        self.task: asyncio.Task[None] | None = None

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        assert self.task is not None
        # call_soon puts the cancel in the loop pass in which the commit ends.
        asyncio.get_running_loop().call_soon(self.task.cancel)


async def test_commit_loop_cancelled_mid_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = kafka_settings(
        "127.0.0.1:9", "http://127.0.0.1:9", group_id="cancel", commit_interval_s=0.01
    )
    source = KafkaSource(settings)
    consumer = _CommitEndsAsCancelled()
    offsets = iter(range(1, 1_000_000))
    work = SimpleNamespace(
        partition=TopicPartition("orders", 0),
        committed=None,
        offsets=SimpleNamespace(committable=lambda: next(offsets)),
    )
    source._consumer = consumer
    source._connector = object()  # type: ignore[assignment]
    source._dispatcher = SimpleNamespace(works=[work])  # type: ignore[assignment]
    monkeypatch.setattr(source, "_update_lag", lambda works: None)

    consumer.task = asyncio.create_task(source._commit_periodically())
    done, _ = await asyncio.wait({consumer.task}, timeout=2.0)

    assert consumer.task in done, (
        f"the commit loop went on after its cancel ({consumer.commits} commits)"
    )
    assert consumer.task.cancelled()
    assert consumer.commits == 1


async def test_until_stopped_cancelled() -> None:
    ended: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("forever")

    waiter = asyncio.create_task(until_stopped(forever(), asyncio.Event()))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)

    assert ended == ["forever"]
    leftover: list[Any] = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and not task.done()
    ]
    assert leftover == []


async def test_cancel_and_wait_recancels() -> None:
    cancels: list[int] = []

    async def loses_first_cancel() -> None:
        # As a library that catches CancelledError once and then waits again.
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancels.append(1)
        await asyncio.Event().wait()

    task = asyncio.create_task(loses_first_cancel())
    await asyncio.sleep(0)

    await cancel_and_wait([task])

    assert task.cancelled()
    assert cancels == [1]
