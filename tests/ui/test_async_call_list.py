"""The bounded read of `gateway.async_call_list` against a real nats-server."""

import time
from collections.abc import AsyncIterator

import pytest

from faashub.call_status import CallState, CallStatus
from faashub.names import FunctionRef
from faashub.queued_call import QueuedCall
from gateway.async_call_list import AsyncCallLister
from gateway.call_queue import CallQueue
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(30)

RESIZE = FunctionRef("resize", "openfaas-fn")


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


async def put_status(queue: CallQueue, call_id: str, *, function: str) -> None:
    now_ns = time.time_ns()
    status = CallStatus(
        call_id=call_id,
        function=function,
        namespace="openfaas-fn",
        state=CallState.SUCCEEDED,
        attempts=1,
        accepted_at_ns=now_ns,
        updated_at_ns=now_ns,
    )
    await queue.layout().status.put(status.key, status.to_json())


async def publish_queued(queue: CallQueue, call_id: str, *, function: str) -> None:
    await queue.publish(
        QueuedCall(
            function=function,
            namespace="openfaas-fn",
            call_id=call_id,
            queue="parked",
            accepted_at_ns=time.time_ns(),
            body=b"x" * 100,
        )
    )


async def test_listing_merges_queued_and_touched(queue: CallQueue) -> None:
    await publish_queued(queue, "waiting-1", function="resize")
    await publish_queued(queue, "other-1", function="crop")
    await put_status(queue, "done-1", function="resize")
    await put_status(queue, "done-2", function="crop")
    # A worker that started a queued call wrote its record: the record wins.
    await put_status(queue, "waiting-1", function="resize")
    await publish_queued(queue, "waiting-2", function="resize")

    listing = await AsyncCallLister(queue).list_calls(RESIZE, limit=10)

    states = {status.call_id: status.state for status in listing.calls}
    assert states == {
        "waiting-2": CallState.QUEUED,
        "waiting-1": CallState.SUCCEEDED,
        "done-1": CallState.SUCCEEDED,
    }
    assert [status.call_id for status in listing.calls][0] == "waiting-2"
    assert listing.truncated is False
    assert listing.scan_limit_reached is False


async def test_listing_empty_streams(queue: CallQueue) -> None:
    listing = await AsyncCallLister(queue).list_calls(RESIZE, limit=10)
    assert listing.calls == []
    assert listing.scan_limit_reached is False


async def test_scan_limit_reads_newest_only(queue: CallQueue) -> None:
    for index in range(6):
        await put_status(queue, f"old-{index}", function="resize")
    for index in range(3):
        await put_status(queue, f"new-{index}", function="resize")
    for index in range(5):
        await publish_queued(queue, f"queued-{index}", function="resize")

    listing = await AsyncCallLister(queue, scan_limit=3).list_calls(RESIZE, limit=50)

    ids = {status.call_id for status in listing.calls}
    assert {"new-0", "new-1", "new-2"} <= ids
    assert not any(call_id.startswith("old-") for call_id in ids)
    assert len([call_id for call_id in ids if call_id.startswith("queued-")]) == 3
    assert listing.scan_limit_reached is True


async def test_scan_limit_counts_filtered_reads(queue: CallQueue) -> None:
    # The subject filter skips the calls of other functions in the window.
    await publish_queued(queue, "resize-0", function="resize")
    for index in range(4):
        await publish_queued(queue, f"crop-{index}", function="crop")
    await publish_queued(queue, "resize-1", function="resize")

    listing = await AsyncCallLister(queue, scan_limit=10).list_calls(RESIZE, limit=50)

    assert {status.call_id for status in listing.calls} == {"resize-0", "resize-1"}
    assert listing.scan_limit_reached is False


async def test_limit_cuts_newest_first(queue: CallQueue) -> None:
    for index in range(4):
        await put_status(queue, f"call-{index}", function="resize")

    listing = await AsyncCallLister(queue).list_calls(RESIZE, limit=2)

    assert [status.call_id for status in listing.calls] == ["call-3", "call-2"]
    assert listing.truncated is True
    assert listing.scan_limit_reached is False


async def test_deleted_record_not_listed(queue: CallQueue) -> None:
    await put_status(queue, "gone", function="resize")
    await put_status(queue, "kept", function="resize")
    await queue.layout().status.delete("gone")

    listing = await AsyncCallLister(queue).list_calls(RESIZE, limit=10)

    assert [status.call_id for status in listing.calls] == ["kept"]
