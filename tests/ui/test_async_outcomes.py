"""The outcome counts of `gateway.ui.async_outcomes` against a real nats-server."""

import time
from collections.abc import AsyncIterator

import pytest

from faashub.call_status import CallState, CallStatus
from faashub.names import FunctionRef
from gateway import errors
from gateway.call_queue import CallQueue
from gateway.ui.async_outcomes import IDLE_RESET_S, MIN_READ_INTERVAL_S, AsyncOutcomes
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(30)

RESIZE = FunctionRef("resize", "openfaas-fn")
CROP = FunctionRef("crop", "openfaas-fn")


class SteppedClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
async def queue(nats_url: str) -> AsyncIterator[CallQueue]:
    started = CallQueue(nats_url, duplicate_window_s=60.0)
    await started.start()
    try:
        await wait_until(
            lambda: started.unavailable_reason() is None,
            description="the JetStream layout",
        )
        yield started
    finally:
        await started.close()


async def put_status(
    queue: CallQueue, call_id: str, state: CallState, *, ref: FunctionRef = RESIZE
) -> None:
    now_ns = time.time_ns()
    status = CallStatus(
        call_id=call_id,
        function=ref.name,
        namespace=ref.namespace,
        state=state,
        attempts=1,
        accepted_at_ns=now_ns,
        updated_at_ns=now_ns,
    )
    await queue.layout().status.put(status.key, status.to_json())


async def test_counts_final_states_by_function(queue: CallQueue) -> None:
    clock = SteppedClock()
    outcomes = AsyncOutcomes(queue, clock_s=clock)
    # Written before the first read, so not counted.
    await put_status(queue, "before-1", CallState.SUCCEEDED)
    first = await outcomes.counts(RESIZE)
    assert first.by_state == {"succeeded": 0, "failed": 0, "dead-lettered": 0}

    await put_status(queue, "ok-1", CallState.SUCCEEDED)
    await put_status(queue, "ok-2", CallState.SUCCEEDED)
    await put_status(queue, "bad-1", CallState.FAILED)
    await put_status(queue, "dead-1", CallState.DEAD_LETTERED)
    await put_status(queue, "crop-1", CallState.SUCCEEDED, ref=CROP)
    # States that are not a worker's final word on a call.
    await put_status(queue, "run-1", CallState.RUNNING)
    await put_status(queue, "retry-1", CallState.RETRYING)
    await put_status(queue, "gone-1", CallState.CANCELLED)
    await queue.layout().status.delete("ok-1-deleted")
    clock.advance(MIN_READ_INTERVAL_S)

    counts = await outcomes.counts(RESIZE)
    assert counts.by_state == {"succeeded": 2, "failed": 1, "dead-lettered": 1}
    assert counts.skipped == 0
    crop = await outcomes.counts(CROP)
    assert crop.by_state["succeeded"] == 1


async def test_read_waits_min_interval(queue: CallQueue) -> None:
    clock = SteppedClock()
    outcomes = AsyncOutcomes(queue, clock_s=clock)
    await outcomes.counts(RESIZE)
    await put_status(queue, "ok-1", CallState.SUCCEEDED)
    clock.advance(MIN_READ_INTERVAL_S / 2)
    assert (await outcomes.counts(RESIZE)).by_state["succeeded"] == 0
    clock.advance(MIN_READ_INTERVAL_S / 2)
    assert (await outcomes.counts(RESIZE)).by_state["succeeded"] == 1


async def test_read_after_idle_starts_at_end(queue: CallQueue) -> None:
    clock = SteppedClock()
    outcomes = AsyncOutcomes(queue, clock_s=clock)
    await outcomes.counts(RESIZE)
    await put_status(queue, "ok-1", CallState.SUCCEEDED)
    clock.advance(IDLE_RESET_S + 1)
    # No read for longer than IDLE_RESET_S: the records of the pause are
    # passed over, and counting goes on from the stream's end.
    assert (await outcomes.counts(RESIZE)).by_state["succeeded"] == 0
    await put_status(queue, "ok-2", CallState.SUCCEEDED)
    clock.advance(MIN_READ_INTERVAL_S)
    counts = await outcomes.counts(RESIZE)
    assert counts.by_state["succeeded"] == 1
    assert counts.skipped == 0


async def test_read_beyond_limit_skips_oldest(queue: CallQueue) -> None:
    clock = SteppedClock()
    outcomes = AsyncOutcomes(queue, max_records_per_read=3, clock_s=clock)
    await outcomes.counts(RESIZE)
    await put_status(queue, "old-1", CallState.FAILED)
    await put_status(queue, "old-2", CallState.FAILED)
    for index in range(3):
        await put_status(queue, f"new-{index}", CallState.SUCCEEDED)
    clock.advance(MIN_READ_INTERVAL_S)

    counts = await outcomes.counts(RESIZE)
    assert counts.by_state == {"succeeded": 3, "failed": 0, "dead-lettered": 0}
    assert counts.skipped == 2


async def test_counts_raise_without_nats(nats_url: str) -> None:
    stopped = CallQueue(nats_url, duplicate_window_s=60.0)
    outcomes = AsyncOutcomes(stopped)
    with pytest.raises(errors.QueueUnavailable):
        await outcomes.counts(RESIZE)
