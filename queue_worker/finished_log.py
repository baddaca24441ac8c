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

from faashub.logs import LimitedLines
from queue_worker import constants


class FinishedLog(LimitedLines):
    """The `call finished` lines of successes, at most FINISHED_LINES_PER_S a second."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(
            logging.getLogger("queue_worker.handling"),
            "call finished",
            per_second=constants.FINISHED_LINES_PER_S,
            summary="calls finished, not logged",
            count_field="calls",
            clock=clock,
        )

    def succeeded(self, context: Callable[[], Mapping[str, Any]]) -> None:
        """Log one success, building its context only when the line is written."""
        self.write(context)
