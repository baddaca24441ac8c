"""Outcomes of async calls by function, for the function page's chart.

The queue-worker writes a record in the `FAASHUB_CALL_STATUS` key-value
bucket at each change of a call's state (`faashub.call_status`), and its last
write for a call is the final state. `AsyncOutcomes` reads the bucket's
stream forward from where its previous read stopped and adds one to the
count of a function and state for each record with a state the worker ends
a call with: succeeded, failed or dead-lettered. A `cancelled` record comes
from a caller, not from the worker, and is not counted.

The read happens only when the console requests a function's counts, at
most once per `MIN_READ_INTERVAL_S`, so a gateway without an open function
page reads nothing. The totals count what was read since the gateway started:

* the first read, and the first read after `IDLE_RESET_S` without one,
  starts at the stream's end, so that a page opened after a long pause does
  not read an hour of records in one request;
* one read takes at most `MAX_RECORDS_PER_READ` records and skips older
  ones beyond that, adding them to `skipped`.

The accept path is untouched: accepted calls are counted apart, in
`AsyncAccept.accepted`.
"""

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from faashub.call_status import CallState
from faashub.logs import LimitedWarning
from faashub.names import FunctionRef
from gateway import constants
from gateway.async_call_list import STATUS_STREAM, status_scan
from gateway.call_queue import CallQueue

logger = logging.getLogger(__name__)

# Final states that the queue-worker writes, in the order the chart lists them.
COUNTED_STATES = (CallState.SUCCEEDED, CallState.FAILED, CallState.DEAD_LETTERED)
# Seconds within which a second request reuses the counts of the previous
# read. The chart samples every 2 s, so two open pages share most reads.
MIN_READ_INTERVAL_S = 1.0
# Seconds without a read after which the next read starts at the stream's end.
IDLE_RESET_S = 30.0
# Status records one read takes at most. The worker writes about one record
# per call, so this covers about 5,000 finished calls per second at the
# chart's 2 s interval.
MAX_RECORDS_PER_READ = 10_000
# Messages per fetch. JetStream returns at once when they are there.
_FETCH_BATCH = 500
_FETCH_TIMEOUT_S = 2.0
_COUNTED = frozenset(state.value for state in COUNTED_STATES)


@dataclasses.dataclass(frozen=True, slots=True)
class OutcomeCounts:
    """Finished async calls of one function, as totals since counting began."""

    by_state: dict[str, int]
    """Calls by final state (`succeeded`, `failed`, `dead-lettered`)."""
    skipped: int
    """Status records of all functions that a read skipped, so not counted."""


class AsyncOutcomes:
    """Counts the final states of async calls per function from the status stream."""

    def __init__(
        self,
        queue: CallQueue,
        *,
        max_records_per_read: int = MAX_RECORDS_PER_READ,
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._max_records = max_records_per_read
        self._clock_s = clock_s
        self._lock = asyncio.Lock()
        # Stream sequence of the last record read; None before the first read.
        self._cursor: int | None = None
        self._read_at_s = -float("inf")
        self._counts: dict[FunctionRef, dict[str, int]] = {}
        self._skipped = 0
        self._skip_warnings = LimitedWarning(
            logger, interval_s=constants.WARNING_INTERVAL_S
        )

    async def counts(self, ref: FunctionRef) -> OutcomeCounts:
        """Read the records stored since the last read, then return `ref`'s counts.

        Raises QueueUnavailable when NATS fails.
        """
        async with self._lock:
            now_s = self._clock_s()
            if now_s - self._read_at_s >= MIN_READ_INTERVAL_S:
                idle = now_s - self._read_at_s > IDLE_RESET_S
                await self._read(restart=idle)
                self._read_at_s = now_s
            by_state = self._counts.get(ref, {})
            return OutcomeCounts(
                by_state={
                    state.value: by_state.get(state.value, 0)
                    for state in COUNTED_STATES
                },
                skipped=self._skipped,
            )

    async def _read(self, *, restart: bool) -> None:
        js = self._queue.layout().js
        with self._queue.translate_errors("read the async call outcomes"):
            state = (await js.stream_info(STATUS_STREAM)).state
            if self._cursor is None or restart or self._cursor > state.last_seq:
                # The first read, a read after a pause, or a stream that was
                # recreated: count from here on.
                self._cursor = state.last_seq
                return
            if state.last_seq == self._cursor:
                return
            start_seq = max(self._cursor + 1, state.first_seq)
            oldest_read = max(start_seq, state.last_seq - self._max_records + 1)
            if oldest_read > start_seq:
                self._skipped += oldest_read - start_seq
                self._skip_warnings.warning(
                    "async outcomes not counted: %d status records arrived "
                    "since the last read, more than %d",
                    state.last_seq - start_seq + 1,
                    self._max_records,
                    ctx={"skipped": oldest_read - start_seq},
                )
            await self._read_from(js, oldest_read, last_seq=state.last_seq)
            self._cursor = state.last_seq

    async def _read_from(
        self, js: JetStreamContext, start_seq: int, *, last_seq: int
    ) -> None:
        async with status_scan(js, start_seq) as consumer:
            if not consumer.num_pending:
                return
            subscription = await js.pull_subscribe_bind(
                consumer=consumer.name, stream=STATUS_STREAM
            )
            try:
                await self._count_messages(subscription, last_seq=last_seq)
            finally:
                await subscription.unsubscribe()

    async def _count_messages(
        self, subscription: JetStreamContext.PullSubscription, *, last_seq: int
    ) -> None:
        while True:
            try:
                messages = await subscription.fetch(
                    _FETCH_BATCH, timeout=_FETCH_TIMEOUT_S
                )
            except nats.errors.TimeoutError:
                return  # the rest expired or was replaced meanwhile
            for message in messages:
                metadata = message.metadata
                if metadata.sequence.stream > last_seq:
                    return  # stored after the read began; the next read counts it
                self._count(message)
                if metadata.num_pending == 0:
                    return

    def _count(self, message: Msg) -> None:
        if (message.headers or {}).get("KV-Operation"):
            return  # a delete or purge marker, which has no record
        try:
            record = json.loads(message.data)
            state = record["state"]
            function = record["function"]
            namespace = record["namespace"]
        except (ValueError, KeyError, TypeError):
            return  # not a status record; the status API reports such keys
        if not all(isinstance(value, str) for value in (state, function, namespace)):
            return
        if state not in _COUNTED:
            return
        ref = FunctionRef(function, namespace)
        by_state = self._counts.setdefault(ref, {})
        by_state[state] = by_state.get(state, 0) + 1
