"""Rate limiting of aiokafka's own log lines about unreachable brokers.

While no broker accepts connections, aiokafka 0.14 logs an ERROR line at every failed
connection attempt, several times in a half minute, next to the source's
own `kafka unavailable` warning. `limited_client_logs()` lets the first of
each such line through, then at most one every `WARNING_INTERVAL_S` for the
same message template and broker. The repeats in between go to this
module's logger at DEBUG. Every other aiokafka line passes unchanged.

The filter sits on the `aiokafka` logger only while a Kafka source runs,
so nothing else in the process loses lines.
"""

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from connectors.core import constants as core_constants

logger = logging.getLogger(__name__)

# The logger of aiokafka's client module, which writes the lines below.
AIOKAFKA_LOGGER = "aiokafka"

# aiokafka 0.14's message templates (aiokafka/client.py) that repeat at every
# failed attempt while a broker is unreachable.
REPEATED_TEMPLATES = frozenset(
    {
        'Unable connect to "%s:%s": %s',
        "Unable connect to node with id %s: %s",
        "Unable to update metadata from %s",
    }
)


class RepeatedConnectionErrors(logging.Filter):
    """Drops repeats of aiokafka's connection errors within an interval."""

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

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether `record` is logged; a dropped repeat goes to DEBUG."""
        template = record.msg
        if not isinstance(template, str) or template not in REPEATED_TEMPLATES:
            return True
        key = (template, *_broker_arguments(record))
        now_s = self._clock()
        last_s = self._last_s.get(key)
        if last_s is not None and now_s - last_s < self._interval_s:
            logger.debug("aiokafka: %s", record.getMessage())
            return False
        self._last_s[key] = now_s
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
    aiokafka_logger = logging.getLogger(AIOKAFKA_LOGGER)
    aiokafka_logger.addFilter(_filter)
    _sources_running += 1
    try:
        yield
    finally:
        _sources_running -= 1
        if _sources_running == 0:
            aiokafka_logger.removeFilter(_filter)
