"""One event-loop timer for many deadlines of the same length (`Deadlines`).

The worker bounds each status write by a timeout and starts each running
call's lease extensions after a fixed delay, and most of those timers are
cancelled before they fire. Every deadline of one `Deadlines` has the same
length, so the order in which keys are added is the order in which they
fall due, and one timer set for the oldest key serves them all. In one
measurement (200,000 rounds on uvloop, Python 3.11, a busy 2-core VM),
`loop.call_later` and `cancel` took 2.1 to 2.4 µs, and `add` and `discard`
here 0.25 µs.
"""

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """Keys that fall due `delay_s` after `add(key)`, each passed to `on_due`.

    A key removed with `discard` before then is never passed to `on_due`.
    `on_due` runs from the event loop's timer and must not block.
    """

    def __init__(self, delay_s: float, on_due: Callable[[K], None]) -> None:
        self.delay_s = delay_s
        self._on_due = on_due
        self._due_at: dict[K, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, key: K) -> None:
        """Start the delay of `key`, which must not be pending already."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        due_at = loop.time() + self.delay_s
        self._due_at[key] = due_at
        if self._timer is None:
            self._timer = loop.call_at(due_at, self._fire)

    def discard(self, key: K) -> None:
        """Drop `key` if it is pending."""
        self._due_at.pop(key, None)

    def close(self) -> None:
        """Drop every pending key and cancel the timer."""
        self._due_at.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        due = []
        for key, due_at in self._due_at.items():
            if due_at > now:
                break
            due.append(key)
        for key in due:
            del self._due_at[key]
        # The next timer is set before the callbacks run, so that a key they
        # add does not start a second one.
        self._timer = None
        if self._due_at:
            next_due_at = next(iter(self._due_at.values()))
            self._timer = self._loop.call_at(next_due_at, self._fire)
        for key in due:
            self._on_due(key)
