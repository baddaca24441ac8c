"""The worker's `call finished` lines, with successes limited per second.

Every call that ends gets one `call finished` line: at INFO when it
succeeded, at WARNING otherwise. While a backlog drains, thousands of calls
succeed each second, and writing a line for each took about 3 % of the
worker's CPU in a queue-drain profile. So successes beyond
FINISHED_LINES_PER_S in one second are only counted, and one
`calls finished, not logged` INFO line with that count follows when the next
second with a success begins, or at `flush()`. Failures, cancels and dead
letters are always logged.
"""

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from queue_worker import constants

logger = logging.getLogger("queue_worker.handling")


class FinishedLog:
    """Writes `call finished` lines, at most FINISHED_LINES_PER_S successes a second."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._second = 0
        self._written = 0
        self._not_logged = 0
        self._not_logged_since_s = 0.0

    def succeeded(self, context: Callable[[], Mapping[str, Any]]) -> None:
        """Log one success, building its context only when the line is written."""
        if not logger.isEnabledFor(logging.INFO):
            return
        now_s = self._clock()
        second = int(now_s)
        if second != self._second:
            self._second = second
            self._written = 0
            self.flush()
        if self._written >= constants.FINISHED_LINES_PER_S:
            if not self._not_logged:
                self._not_logged_since_s = now_s
            self._not_logged += 1
            return
        self._written += 1
        logger.info("call finished", extra={"ctx": context()})

    def flush(self) -> None:
        """Write the count of successes not logged so far, if there are any."""
        if not self._not_logged:
            return
        logger.info(
            "calls finished, not logged",
            extra={
                "ctx": {
                    "calls": self._not_logged,
                    "over_s": f"{self._clock() - self._not_logged_since_s:.1f}",
                    "max_lines_per_s": constants.FINISHED_LINES_PER_S,
                }
            },
        )
        self._not_logged = 0
