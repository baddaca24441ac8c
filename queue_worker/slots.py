"""Concurrency limits of one worker: max_inflight, and one per function.

A call first reserves a place under its function's limit (annotation
`com.faashub.max_inflight`), without waiting. When the function is at its
limit, the call is handed back to JetStream with a short delay, so a slow
function with a backlog never occupies the slots that other functions' calls
need. Then the call waits for one of the worker's max_inflight slots, in
arrival order. `close()` makes waiting calls give up, so a stopping worker
hands them back instead of starting them.

The limits count calls in this worker only: N workers on one queue run up
to N times a function's limit.
"""

import asyncio
import collections

from faashub.names import FunctionRef


class Slots:
    """The worker's invocation slots and per-function counts."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._closed = False
        self._per_function: collections.Counter[FunctionRef] = collections.Counter()

    @property
    def closed(self) -> bool:
        return self._closed

    def reserve(self, ref: FunctionRef, limit: int | None) -> bool:
        """Count one more call of `ref`, unless `limit` calls already count."""
        if limit is not None and self._per_function[ref] >= limit:
            return False
        self._per_function[ref] += 1
        return True

    def unreserve(self, ref: FunctionRef) -> None:
        """Count one call of `ref` less."""
        self._per_function[ref] -= 1
        if self._per_function[ref] <= 0:
            del self._per_function[ref]

    async def acquire(self) -> bool:
        """Wait for a free slot; return False, holding none, once closed."""
        if self._closed:
            return False
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            granted: bool = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                # Granted a slot just as the wait was cancelled: pass it on.
                self.release()
            raise
        return granted

    def release(self) -> None:
        """Free a slot taken by `acquire`, handing it to the longest waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._free += 1

    def close(self) -> None:
        """Make every current and later `acquire` return False."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)
