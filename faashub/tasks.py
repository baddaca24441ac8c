"""Cancelling helper tasks so that they end, even when a library loses the cancel.

On Python 3.11, `asyncio.wait_for` returns the inner result when its task is
cancelled in the loop pass in which the inner awaitable ends, so the cancel
is lost and the task goes on to its next wait. nats-py calls
`asyncio.wait_for` inside its own methods, so a task awaiting it can lose a
cancel too. `cancel_and_wait` cancels again until every task has ended.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

# Time between one cancel of a task that has not ended and the next.
RECANCEL_AFTER_S = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and wait until each has ended, cancelling again as needed.

    Ended tasks are left as they are, and their results and errors are not
    read here.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_AFTER_S)
