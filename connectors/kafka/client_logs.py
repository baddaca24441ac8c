"""Rate limiting of aiokafka's own log lines about unreachable brokers.

While no broker accepts connections, aiokafka 0.14 logs an ERROR line at
every failed connection attempt, fetch and coordinator lookup, about 18
lines a second with one broker, next to the source's own `kafka
unavailable` warning. `limited_client_logs()` lets the first of each such
line through, then at most one every `WARNING_INTERVAL_S` for the same
message template and broker, with the number of repeats left out since the
last one logged. The repeats in between go to this module's logger at
DEBUG. Every other aiokafka line passes unchanged.

The filter sits on the loggers of the aiokafka modules that write these
lines only while a Kafka source runs, so nothing else in the process loses
lines.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from connectors.core import constants as core_constants

logger = logging.getLogger(__name__)

# The logger of aiokafka's client module, which writes the connection lines.
AIOKAFKA_LOGGER = "aiokafka"
# The loggers that write the lines of REPEATED_TEMPLATES. A filter on a
# logger applies only to the records logged through that logger itself, not
# to those of its children, so each one gets the filter.
FILTERED_LOGGERS = (
    AIOKAFKA_LOGGER,
    "aiokafka.consumer.fetcher",
    "aiokafka.consumer.group_coordinator",
)

# aiokafka 0.14's message templates (aiokafka/client.py,
# consumer/fetcher.py, consumer/group_coordinator.py) that repeat at every
# failed attempt while a broker is unreachable.
REPEATED_TEMPLATES = frozenset(
    {
        'Unable connect to "%s:%s": %s',
        "Unable connect to node with id %s: %s",
        "Unable to update metadata from %s",
        "Failed fetch messages from %s: %s",
        "Group Coordinator Request failed: %s",
    }
)


# Appended to a line that passes after dropped repeats of its kind.
_REPEATS_SUFFIX = "%d more like this in the last %.0f s, at DEBUG"


class RepeatedConnectionErrors(logging.Filter):
    """Drops repeats of aiokafka's connection errors within an interval.

    A line that passes after dropped repeats of its kind ends with their
    count, such as "(41 more like this in the last 30 s, at DEBUG)".
    """

    def __init__(
        self,
        *,
        interval_s: float = core_constants.WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock
        self._last_s: dict[tuple[str, ...], float] = {}
        self._dropped: dict[tuple[str, ...], int] = {}

    def reset(self) -> None:
        """Forget the lines seen, so the next line of each kind is logged."""
        self._last_s.clear()
        self._dropped.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether `record` is logged; a dropped repeat goes to DEBUG."""
        template = record.msg
        if not isinstance(template, str) or template not in REPEATED_TEMPLATES:
            return True
        key = (template, *_broker_arguments(record))
        now_s = self._clock()
        last_s = self._last_s.get(key)
        if last_s is not None and now_s - last_s < self._interval_s:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            logger.debug("aiokafka: %s", record.getMessage())
            return False
        self._last_s[key] = now_s
        dropped = self._dropped.pop(key, 0)
        if dropped and last_s is not None:
            arguments = record.args if isinstance(record.args, tuple) else ()
            record.msg = f"{template} ({_REPEATS_SUFFIX})"
            record.args = (*arguments, dropped, now_s - last_s)
        return True


def _broker_arguments(record: logging.LogRecord) -> tuple[str, ...]:
    """Return the arguments that name the broker: all but the error, if any."""
    arguments = record.args if isinstance(record.args, tuple) else ()
    return tuple(str(argument) for argument in arguments[:-1])


_filter = RepeatedConnectionErrors()
_sources_running = 0


@contextlib.contextmanager
def limited_client_logs() -> Iterator[None]:
    """Limit aiokafka's repeated connection errors for the block.

    Sources running at the same time share one filter, which stays until
    the last of them leaves its block.
    """
    global _sources_running
    loggers = [logging.getLogger(name) for name in FILTERED_LOGGERS]
    if _sources_running == 0:
        _filter.reset()
    for client_logger in loggers:
        client_logger.addFilter(_filter)
    _sources_running += 1
    try:
        yield
    finally:
        _sources_running -= 1
        if _sources_running == 0:
            for client_logger in loggers:
                client_logger.removeFilter(_filter)
