"""Batched reads of call-status records (`BatchedStatusReader`).

Every call that the worker starts reads its status record first, just after
its slot is acquired, so that a call cancelled while queued never runs and a
duplicate delivery of a finished call is recognised (`queue_worker.status`).
Most calls have no record at that point. Reads asked for in the same
event-loop turn share one request: JetStream's batched direct get,
`{"multi_last": [subject, ...], "batch": N}` on `$JS.API.DIRECT.GET.<stream>`,
which needs nats-server 2.11 or later and a stream with `allow_direct`.

The replies, as nats-server 2.15.1 sends them:

* one message for each requested subject that has a value, in stream order,
  with the headers `Nats-Subject` and `Nats-Sequence` (the revision), and
  `KV-Operation` on a delete or purge marker;
* then an end-of-batch message with status 204 (description `EOB`) whose
  `Nats-Num-Pending` header counts values that did not fit in `batch`;
* or, when no subject has a value, one message with status 404 and nothing
  else.

Any other status fails every read of the batch, and so does a batch that
gets no end within `timeout_s`. A failed read raises NatsUnavailable, so the
handler postpones only the calls of that batch. A reply that arrives after
its batch ended is dropped.

This module does not parse records or decide anything about them: it
returns the stored bytes and the revision. Writes are in
`queue_worker.status_writes`.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

from faashub.tasks import cancel_and_wait
from queue_worker import errors

logger = logging.getLogger(__name__)

_NO_RESULTS: Final = "404"
_END_OF_BATCH: Final = "204"
_DELETED_OPERATIONS: Final = frozenset({"DEL", "PURGE"})


@dataclass(frozen=True, slots=True)
class StoredValue:
    """The latest value stored under a key, as read from the stream."""

    data: bytes
    revision: int
    deleted: bool = False
    """True for a delete or purge marker, whose `data` is empty."""


class _Batch:
    """One batched request in flight: the futures waiting for each key."""

    __slots__ = ("waiters", "payload", "timer")

    def __init__(
        self,
        waiters: dict[str, list[asyncio.Future[StoredValue | None]]],
        payload: bytes,
    ) -> None:
        self.waiters = waiters
        self.payload = payload
        self.timer: asyncio.TimerHandle | None = None


class BatchedStatusReader:
    """Reads the latest values of keys, coalescing the reads of one loop turn.

    `stream` is the key-value bucket's stream (`KV_<bucket>`) and
    `subject_prefix` its key prefix (`$KV.<bucket>.`). One request carries at
    most `max_batch` keys, so more reads in one turn are split into several
    requests.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        stream: str,
        subject_prefix: str,
        timeout_s: float,
        max_batch: int,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}.")
        self._nc = nc
        self._stream = stream
        self._request_subject = f"$JS.API.DIRECT.GET.{stream}"
        self._subject_prefix = subject_prefix
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._queued: list[tuple[str, asyncio.Future[StoredValue | None]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._batches: dict[str, _Batch] = {}
        self._next_token = 0
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._closed = False
        self.requests = 0
        """Batched requests sent so far."""
        self.reads = 0
        """Reads carried by those requests."""
        self.batch_sizes = [0] * 17
        """Requests by number of reads (index 16: 16 or more), for measurements."""

    async def read(self, key: str) -> StoredValue | None:
        """Return the latest value of `key`, or None if it never had one.

        Raises NatsUnavailable when the batch carrying this read fails or
        times out.
        """
        if self._closed:
            raise errors.NatsUnavailable(
                f"Cannot read key {key!r} of stream {self._stream}: the reader is "
                "closed."
            )
        future: asyncio.Future[StoredValue | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._queued.append((key, future))
        if self._sender is None:
            # The task's first step runs in the next loop turn, after every
            # other task that is ready now had its chance to queue a read.
            self._sender = asyncio.create_task(self._send_queued())
        return await future

    async def close(self) -> None:
        """Fail the reads in flight and drop the reply subscription."""
        self._closed = True
        closed = "the reader closed before the reply arrived"
        for token in list(self._batches):
            self._end_batch(token, reason=closed)
        self._fail_queued(closed)
        if self._sender is not None:
            await cancel_and_wait([self._sender])
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except (nats.errors.Error, ValueError) as exc:
                logger.debug("unsubscribe of the status reader failed: %s", exc)

    async def _send_queued(self) -> None:
        try:
            await self._subscribe()
        except nats.errors.Error as exc:
            self._sender = None
            self._fail_queued(f"cannot subscribe to replies: {exc}")
            return
        queued, self._queued = self._queued, []
        self._sender = None
        # Every batch is registered before the first request goes out, so
        # that `close` fails them all if this task is cancelled midway.
        tokens = [
            self._start_batch(queued[start : start + self._max_batch])
            for start in range(0, len(queued), self._max_batch)
        ]
        for token in tokens:
            batch = self._batches.get(token)
            if batch is None:
                continue
            try:
                await self._nc.publish(
                    self._request_subject, batch.payload, reply=self._inbox + token
                )
            except nats.errors.Error as exc:
                self._end_batch(token, reason=f"request failed: {exc}")

    async def _subscribe(self) -> None:
        if self._subscription is not None:
            return
        self._inbox = self._nc.new_inbox() + "."
        self._subscription = await self._nc.subscribe(
            self._inbox + "*", cb=self._on_reply
        )

    def _start_batch(
        self, queued: list[tuple[str, asyncio.Future[StoredValue | None]]]
    ) -> str:
        """Register a batch of reads with its timeout, and return its token."""
        waiters: dict[str, list[asyncio.Future[StoredValue | None]]] = {}
        for key, future in queued:
            waiters.setdefault(key, []).append(future)
        # `batch` must cover every subject: a smaller one ends the reply
        # early, with the rest left pending.
        payload = _request_json([self._subject_prefix + key for key in waiters])
        self._next_token += 1
        token = str(self._next_token)
        batch = _Batch(waiters, payload)
        self._batches[token] = batch
        batch.timer = asyncio.get_running_loop().call_later(
            self._timeout_s, self._expire, token
        )
        self.requests += 1
        self.reads += len(queued)
        self.batch_sizes[min(len(queued), len(self.batch_sizes) - 1)] += 1
        return token

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) :]
        batch = self._batches.get(token)
        if batch is None:
            # The batch timed out or failed already.
            return
        headers = msg.headers or {}
        status = headers.get(Header.STATUS)
        if status is None:
            self._take_value(token, batch, msg, headers)
            return
        if status == _NO_RESULTS:
            self._end_batch(token, reason=None)
            return
        if status == _END_OF_BATCH:
            pending = headers.get("Nats-Num-Pending", "0")
            reason = None
            if pending != "0":
                reason = f"{pending} values did not fit in the batch"
            self._end_batch(token, reason=reason)
            return
        description = headers.get(Header.DESCRIPTION, "")
        self._end_batch(token, reason=f"the server replied {status} {description}")

    def _take_value(
        self, token: str, batch: _Batch, msg: Msg, headers: dict[str, str]
    ) -> None:
        subject = headers.get("Nats-Subject", "")
        key = subject[len(self._subject_prefix) :]
        sequence = headers.get("Nats-Sequence", "")
        if (
            key not in batch.waiters
            or not subject.startswith(self._subject_prefix)
            or not sequence.isdigit()
        ):
            self._end_batch(
                token,
                reason=f"unexpected reply for subject {subject!r} "
                f"(sequence {sequence!r})",
            )
            return
        deleted = headers.get("KV-Operation") in _DELETED_OPERATIONS
        value = StoredValue(b"" if deleted else msg.data, int(sequence), deleted)
        for future in batch.waiters.pop(key):
            if not future.done():
                future.set_result(value)

    def _expire(self, token: str) -> None:
        self._end_batch(token, reason=f"no reply within {self._timeout_s:g} s")

    def _end_batch(self, token: str, *, reason: str | None) -> None:
        """Resolve the batch's unanswered reads: None, or an error for `reason`."""
        batch = self._batches.pop(token, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        for futures in batch.waiters.values():
            for future in futures:
                if future.done():
                    continue
                if reason is None:
                    future.set_result(None)
                else:
                    future.set_exception(self._unavailable(reason))

    def _fail_queued(self, reason: str) -> None:
        queued, self._queued = self._queued, []
        for _, future in queued:
            if not future.done():
                future.set_exception(self._unavailable(reason))

    def _unavailable(self, reason: str) -> errors.NatsUnavailable:
        return errors.NatsUnavailable(
            f"Batched read from stream {self._stream} failed: {reason}."
        )


def _request_json(subjects: list[str]) -> bytes:
    # Keys are valid NATS subject tokens (no quote, backslash or control
    # character), so they need no JSON escaping.
    quoted = '","'.join(subjects)
    return f'{{"multi_last":["{quoted}"],"batch":{len(subjects)}}}'.encode()
