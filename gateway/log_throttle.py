"""Rate-limited warnings for failures that repeat on every request.

While NATS or the provider is down, every request through the gateway fails
the same way, and one WARNING per request would flood the log at the
request rate. A `WarningThrottle` writes the first warning and then at most
one per interval. It logs the repeats in between at DEBUG, with their call
ids, and adds their count to the next warning.
"""

import logging
import time
from collections.abc import Callable

from gateway import constants


class WarningThrottle:
    """One kind of warning, written at most once per interval."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = constants.WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._next_warning_at = 0.0
        self._held_back = 0

    def warning(self, message: str, *args: object, ctx: dict[str, object]) -> None:
        """Log at WARNING, or at DEBUG if a warning went out within the interval."""
        now = self._clock()
        if now < self._next_warning_at:
            self._held_back += 1
            self._logger.debug(message, *args, extra={"ctx": ctx})
            return
        if self._held_back:
            ctx = {**ctx, "repeats_held_back": self._held_back}
            self._held_back = 0
        self._next_warning_at = now + self._interval_s
        self._logger.warning(message, *args, extra={"ctx": ctx})
