"""`gateway.limits.SharedTimeout`: one periodic check times out many awaits."""

import asyncio

import pytest

from gateway import limits

pytestmark = pytest.mark.timeout(10)

TIMEOUT_S = 0.2


async def test_result_passes_through() -> None:
    timeout = limits.SharedTimeout(TIMEOUT_S)

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await timeout.run(answer()) == 42
    assert await timeout.run(answer()) == 42


async def test_slow_await_times_out() -> None:
    timeout = limits.SharedTimeout(TIMEOUT_S)
    never = asyncio.get_running_loop().create_future()

    with pytest.raises(TimeoutError):
        await timeout.run(never)

    assert never.cancelled()
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_timeouts_only_the_slow_ones() -> None:
    timeout = limits.SharedTimeout(TIMEOUT_S)

    async def wait(delay_s: float) -> str:
        await timeout.run(asyncio.sleep(delay_s))
        return "done"

    results = await asyncio.gather(
        wait(0.0), wait(10.0), wait(0.01), return_exceptions=True
    )

    assert results[0] == "done"
    assert isinstance(results[1], TimeoutError)
    assert results[2] == "done"


async def test_outside_cancel_stays_cancel() -> None:
    timeout = limits.SharedTimeout(10.0)
    started = asyncio.Event()

    async def wait() -> None:
        started.set()
        await timeout.run(asyncio.sleep(10.0))

    task = asyncio.create_task(wait())
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


class _CancelledAtExpiry(limits.SharedTimeout):
    """Cancels each expired task once more, as an outside cancel at that moment."""

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        super()._check(loop)
        for task in self._expired:
            task.cancel()


async def test_cancel_at_expiry_stays_cancel() -> None:
    timeout = _CancelledAtExpiry(TIMEOUT_S)
    outcome: list[str] = []

    async def wait() -> None:
        try:
            await timeout.run(asyncio.sleep(10.0))
        except TimeoutError:
            outcome.append("timeout")
            raise

    task = asyncio.create_task(wait())

    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == []


async def test_watched_future_times_out() -> None:
    timeout = limits.SharedTimeout(TIMEOUT_S)
    never = asyncio.get_running_loop().create_future()
    timeout.watch(never)

    with pytest.raises(TimeoutError):
        await never

    timeout.unwatch(never)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0


async def test_watched_future_result_kept() -> None:
    timeout = limits.SharedTimeout(TIMEOUT_S)
    loop = asyncio.get_running_loop()
    slow = loop.create_future()
    quick = loop.create_future()
    timeout.watch(slow)
    timeout.watch(quick)
    loop.call_soon(quick.set_result, "done")

    assert await quick == "done"
    timeout.unwatch(quick)
    with pytest.raises(TimeoutError):
        await slow
    timeout.unwatch(slow)
    assert quick.result() == "done"


async def test_unwatched_future_not_failed() -> None:
    timeout = limits.SharedTimeout(TIMEOUT_S)
    future = asyncio.get_running_loop().create_future()
    timeout.watch(future)
    timeout.unwatch(future)

    await asyncio.sleep(TIMEOUT_S * 2 + timeout.check_interval_s)

    assert not future.done()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timeout_s must be positive"):
        limits.SharedTimeout(0)
