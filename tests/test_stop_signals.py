"""`faashub.stop_signals`: real SIGTERM and SIGINT sent to the test's own loop.

The handlers are installed on the test's event loop, so each test sends the
signal to its own process only while they are in place. The queue-worker's
server tests send SIGTERM to a real worker process.
"""

import asyncio
import logging
import os
import signal

import pytest

from faashub.stop_signals import StopSignals

pytestmark = pytest.mark.timeout(10)

LOGGER_NAME = "tests.stop_signals"


class Recorder:
    """The `stop` and `abandon` callbacks, counting their calls."""

    def __init__(self) -> None:
        self.stops = 0
        self.abandons = 0
        self.stopped = asyncio.Event()
        self.abandoned = asyncio.Event()

    def stop(self) -> None:
        self.stops += 1
        self.stopped.set()

    def abandon(self) -> bool:
        # A return value, as from `Task.cancel`, is allowed and ignored.
        self.abandons += 1
        self.abandoned.set()
        return True


def make_signals(recorder: Recorder) -> StopSignals:
    return StopSignals(
        stop=recorder.stop,
        abandon=recorder.abandon,
        work_in_flight="calls",
        log=logging.getLogger(LOGGER_NAME),
    )


async def test_first_signal_stops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    recorder = Recorder()

    with make_signals(recorder) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(recorder.stopped.wait(), 5)

    assert signals.received == 1
    assert recorder.stops == 1
    assert recorder.abandons == 0
    [record] = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert record.levelno == logging.INFO
    assert record.getMessage() == "received SIGTERM, stopping"


async def test_second_signal_abandons(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    recorder = Recorder()

    with make_signals(recorder) as signals:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(recorder.stopped.wait(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(recorder.abandoned.wait(), 5)
        recorder.abandoned.clear()
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(recorder.abandoned.wait(), 5)

    assert signals.received == 3

    assert recorder.stops == 1
    assert recorder.abandons == 2
    messages = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER_NAME
    ]
    assert messages == [
        (logging.INFO, "received SIGINT, stopping"),
        (logging.WARNING, "received SIGTERM again, abandoning calls in flight"),
        (logging.WARNING, "received SIGINT again, abandoning calls in flight"),
    ]


async def test_exit_removes_handlers() -> None:
    loop = asyncio.get_running_loop()
    recorder = Recorder()

    with make_signals(recorder):
        pass

    # remove_signal_handler returns False when no handler is installed.
    assert loop.remove_signal_handler(signal.SIGTERM) is False
    assert loop.remove_signal_handler(signal.SIGINT) is False
    assert recorder.stops == 0


async def test_exit_on_error_removes_handlers() -> None:
    loop = asyncio.get_running_loop()

    with pytest.raises(RuntimeError, match="drain failed"):
        with make_signals(Recorder()):
            raise RuntimeError("drain failed")

    assert loop.remove_signal_handler(signal.SIGTERM) is False
    assert loop.remove_signal_handler(signal.SIGINT) is False
