"""A hand-driven clock for the cron tests, so no test waits for real minutes."""

import asyncio
from datetime import datetime, timedelta


class FakeClock:
    """`now()` and `sleep()` for the scheduler; `advance()` moves time."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, delay_s: float) -> None:
        wake = self.current + timedelta(seconds=delay_s)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((wake, future))
        try:
            await future
        finally:
            self._sleepers = [
                entry for entry in self._sleepers if entry[1] is not future
            ]

    async def advance(self, seconds: float) -> None:
        """Move time forward, wake the sleepers that are due and let them run."""
        self.current += timedelta(seconds=seconds)
        for wake, future in list(self._sleepers):
            if wake <= self.current and not future.done():
                future.set_result(None)
        await settle()

    async def step_through(self, seconds: float, *, step_s: float = 1.0) -> None:
        """Advance by `seconds` in steps, as a running process would see time pass."""
        remaining = seconds
        while remaining > 0:
            step = min(step_s, remaining)
            await self.advance(step)
            remaining -= step


async def settle() -> None:
    """Let every ready task run until the loop is idle for a moment."""
    for _ in range(20):
        await asyncio.sleep(0)
