"""Warnings that repeat while a fault lasts, written at most once per interval.

A pod-log follower polls the pod list every few seconds and every API call
can fail the same way while the API server is down, so one warning per
failure would flood the provider's log. `RepeatedWarning` writes the first
occurrence, suppresses the others for `interval_s`, and puts the count of
suppressed lines in the context of the next line it writes.
"""

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

DEFAULT_INTERVAL_S: Final = 30.0
# The context field that carries the count of lines suppressed since the
# previous line.
SUPPRESSED_FIELD: Final = "suppressed_lines"


class RepeatedWarning:
    """One log message written at most once per `interval_s` seconds.

    The instance is shared by every caller of the message, so the limit holds
    for the process, not per log stream. `write` may be called from any
    thread.

    NOTE: the count of suppressed lines is written only with the next line,
    so when the fault ends within an interval that count is never logged.
    """

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._message = message
        self._interval_s = interval_s
        self._clock = clock
        self._level = level
        self._lock = threading.Lock()
        self._last_written_s: float | None = None
        self._suppressed = 0

    def write(self, *args: object, context: Mapping[str, Any]) -> None:
        """Write the message with `args` and `context`, or count it as suppressed."""
        with self._lock:
            now_s = self._clock()
            last_s = self._last_written_s
            if last_s is not None and now_s - last_s < self._interval_s:
                self._suppressed += 1
                return
            suppressed = self._suppressed
            self._suppressed = 0
            self._last_written_s = now_s
        fields = dict(context)
        if suppressed:
            fields[SUPPRESSED_FIELD] = suppressed
        # stacklevel=2 gives the record the caller's file and line, not this one.
        self._logger.log(
            self._level, self._message, *args, extra={"ctx": fields}, stacklevel=2
        )
