"""The shared timer for deadlines of one length."""

import asyncio

import pytest

from queue_worker.deadlines import Deadlines

pytestmark = pytest.mark.timeout(10)


async def test_keys_fall_due_in_order() -> None:
    due: list[str] = []
    deadlines: Deadlines[str] = Deadlines(0.05, due.append)

    deadlines.add("a")
    await asyncio.sleep(0.02)
    deadlines.add("b")
    await asyncio.sleep(0.04)

    assert due == ["a"]
    await asyncio.sleep(0.04)
    assert due == ["a", "b"]


async def test_discarded_key_never_falls_due() -> None:
    due: list[str] = []
    deadlines: Deadlines[str] = Deadlines(0.03, due.append)

    deadlines.add("a")
    deadlines.add("b")
    deadlines.discard("a")
    deadlines.discard("missing")
    await asyncio.sleep(0.08)

    assert due == ["b"]


async def test_key_added_after_idle_falls_due() -> None:
    due: list[str] = []
    deadlines: Deadlines[str] = Deadlines(0.02, due.append)
    deadlines.add("a")
    await asyncio.sleep(0.05)

    deadlines.add("b")
    await asyncio.sleep(0.05)

    assert due == ["a", "b"]


async def test_key_added_by_callback_falls_due() -> None:
    due: list[int] = []

    def on_due(key: int) -> None:
        due.append(key)
        if key < 3:
            deadlines.add(key + 1)

    deadlines: Deadlines[int] = Deadlines(0.02, on_due)
    deadlines.add(1)
    await asyncio.sleep(0.15)

    assert due == [1, 2, 3]


async def test_close_drops_pending_keys() -> None:
    due: list[str] = []
    deadlines: Deadlines[str] = Deadlines(0.02, due.append)
    deadlines.add("a")

    deadlines.close()
    await asyncio.sleep(0.05)

    assert due == []
