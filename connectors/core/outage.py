"""Logging of outages of a dependency: the gateway, a broker, a queue service.

A connector retries an unreachable dependency for as long as it runs, so the
same failure may repeat every few seconds for hours. `Outage` logs one
WARNING when the failure starts, at most one more every
`WARNING_INTERVAL_S` while it lasts (the repeats in between go to DEBUG),
and one INFO line with the duration when it ends. The reason is logged as
one line of at most `OUTAGE_REASON_MAX_CHARS` characters (`one_line`).
"""

import logging
import time
from collections.abc import Callable

from connectors.core import constants

logger = logging.getLogger(__name__)


class Outage:
    """The state of one dependency: available, or unavailable since a moment."""

    def __init__(
        self,
        dependency: str,
        *,
        consequence: str,
        warning_interval_s: float = constants.WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dependency = dependency
        self._consequence = consequence
        self._warning_interval_s = warning_interval_s
        self._clock = clock
        self._started_s: float | None = None
        self._last_warning_s = 0.0

    @property
    def active(self) -> bool:
        """Whether the dependency is unavailable now."""
        return self._started_s is not None

    def begin(self, reason: str, *, consequence: str = "") -> None:
        """Record a failure; log it unless a warning went out recently.

        `consequence` replaces the one given at construction in this line.
        """
        reason = one_line(reason)
        now_s = self._clock()
        if self._started_s is None:
            self._started_s = now_s
        elif now_s - self._last_warning_s < self._warning_interval_s:
            logger.debug("%s still unavailable: %s", self._dependency, reason)
            return
        self._last_warning_s = now_s
        logger.warning(
            "%s unavailable, %s and retrying: %s",
            self._dependency,
            consequence or self._consequence,
            reason,
        )

    def end(self) -> None:
        """Record a success; log the end of the outage if one was going on."""
        if self._started_s is None:
            return
        lasted_s = self._clock() - self._started_s
        self._started_s = None
        logger.info("%s available again after %.1f s", self._dependency, lasted_s)


def one_line(text: str, max_chars: int = constants.OUTAGE_REASON_MAX_CHARS) -> str:
    """Return `text` with each run of whitespace as one space, cut to `max_chars`.

    A cut text ends with "...", within `max_chars`.
    """
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    return flat[: max_chars - 3].rstrip() + "..."
