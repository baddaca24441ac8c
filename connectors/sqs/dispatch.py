"""Run received messages with the in-flight bound and FIFO group order.

`Capacity` bounds the messages the connector holds, received and not yet
settled, to max_inflight across all queues. A poller reserves room before
each ReceiveMessage call and requests no more messages than it reserved.

`Dispatcher` runs each message of a standard queue in its own task, so
they run in parallel. Messages of a FIFO queue run one at a time per
message group, in the order SQS returned them, while different groups run in
parallel. A message may go back to the queue unfinished, for a retry after
a visibility timeout or as a release. The messages after it in its group
must not run first, so the dispatcher gives them back to the queue at once
too.
SQS returns none of that group while the first one is hidden, and then
returns them in order.
"""

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from connectors.sqs.messages import ReceivedMessage

# Handles one message; returns False when the message went back to the queue
# unfinished, so the rest of its FIFO group must go back too.
HandleFunction = Callable[[ReceivedMessage], Awaitable[bool]]
# Makes messages visible again at once.
ReleaseFunction = Callable[[list[ReceivedMessage]], Awaitable[None]]


class Capacity:
    """A count of free places for messages, shared by every queue's poller."""

    def __init__(self, places: int) -> None:
        self.places = places
        self.free = places
        self._freed = asyncio.Event()

    async def reserve(self, requested: int) -> int:
        """Wait for a free place, then reserve up to `requested`; return how many."""
        while self.free == 0:
            self._freed.clear()
            await self._freed.wait()
        reserved = min(requested, self.free)
        self.free -= reserved
        return reserved

    def release(self, count: int = 1) -> None:
        """Give `count` places back."""
        self.free += count
        self._freed.set()


class Dispatcher:
    """Runs messages in parallel, one at a time per FIFO message group."""

    def __init__(
        self,
        *,
        handle: HandleFunction,
        release: ReleaseFunction,
        capacity: Capacity,
    ) -> None:
        self._handle = handle
        self._release = release
        self._capacity = capacity
        self._groups: dict[tuple[str, str], deque[ReceivedMessage]] = {}
        self._stopping = False
        self.tasks: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Start no more queued messages; the running ones go on."""
        self._stopping = True

    def submit(self, message: ReceivedMessage) -> None:
        """Start `message`, or queue it behind the running message of its group."""
        if not message.group_id:
            self._start(self._run_one(message))
            return
        key = (message.queue_url, message.group_id)
        waiting = self._groups.get(key)
        if waiting is not None:
            waiting.append(message)
            return
        self._groups[key] = deque([message])
        self._start(self._run_group(key))

    def _start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run_one(self, message: ReceivedMessage) -> None:
        try:
            await self._handle(message)
        finally:
            self._capacity.release()

    async def _run_group(self, key: tuple[str, str]) -> None:
        waiting = self._groups[key]
        try:
            while waiting and not self._stopping:
                message = waiting.popleft()
                try:
                    finished = await self._handle(message)
                finally:
                    self._capacity.release()
                if not finished and waiting:
                    rest = list(waiting)
                    waiting.clear()
                    try:
                        await self._release(rest)
                    finally:
                        self._capacity.release(len(rest))
        finally:
            del self._groups[key]
            # Messages still queued (on stop or cancellation) keep their
            # places until here; the source releases them with every message
            # it holds.
            if waiting:
                self._capacity.release(len(waiting))
