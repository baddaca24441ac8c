"""CallQueue.close ends tasks that survive their first cancellation.

Python 3.11's asyncio.wait_for returns a reply that arrives together with
the cancellation, so a task can go on to its next wait after `cancel()`. The
test adds such a task, one that catches the first CancelledError, to a
queue connected to a real nats-server.
"""

import asyncio

import pytest

from gateway.call_queue import CallQueue

pytestmark = pytest.mark.timeout(10)


async def test_close_ends_surviving_task(nats_url: str) -> None:
    queue = CallQueue(nats_url, duplicate_window_s=60)
    await queue.start()
    survived = asyncio.Event()

    async def swallow_first_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            survived.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(swallow_first_cancel())
    queue._tasks.append(task)
    await asyncio.sleep(0)

    await asyncio.wait_for(queue.close(), timeout=5)

    assert survived.is_set()
    assert task.cancelled()
