"""Logging setup for faashub processes.

Library modules only create `logging.getLogger(__name__)` and pass per-call
context (function, call id, topic, ...) as `extra={"ctx": {...}}`. This
module, called once by each entry point, renders that context as `key=value`
pairs in text mode or as fields in JSON mode.
"""

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


class _ContextFilter(logging.Filter):
    """Render the record's `ctx` mapping for the text format."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = getattr(record, "ctx", None)
        if isinstance(context, Mapping) and context:
            pairs = " ".join(f"{key}={_quote(value)}" for key, value in context.items())
            record.context = " " + pairs
        else:
            record.context = ""
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = getattr(record, "ctx", None)
        if isinstance(context, Mapping):
            entry.update(context)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(character in text for character in ' "='):
        return json.dumps(text)
    return text


def configure(*, level: str = "INFO", log_format: str = "text") -> None:
    """Send log records of every logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party access logs repeat what faashub logs per call.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # One line per control-plane request (health checks, the CLI) is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)


class LimitedLines:
    """A line written at most `per_second` times a second, the rest counted.

    At thousands of successes a second, one line each costs a few percent of a
    component's CPU. Lines beyond the limit in one second are only counted;
    one `summary` line with that count follows when the next second with a
    line begins, or at `flush()`. Both are written at `level` (INFO unless
    given).
    """

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        per_second: int,
        summary: str,
        count_field: str,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.INFO,
    ) -> None:
        self._logger = logger
        self._level = level
        self._message = message
        self._per_second = per_second
        self._summary = summary
        self._count_field = count_field
        self._clock = clock
        self._second = 0
        self._written = 0
        self._not_logged = 0
        self._not_logged_since_s = 0.0

    def write(self, context: Callable[[], Mapping[str, Any]]) -> None:
        """Write one line, building its context only when the line is written."""
        if not self._logger.isEnabledFor(self._level):
            return
        now_s = self._clock()
        second = int(now_s)
        if second != self._second:
            self._second = second
            self._written = 0
            self.flush()
        if self._written >= self._per_second:
            if not self._not_logged:
                self._not_logged_since_s = now_s
            self._not_logged += 1
            return
        self._written += 1
        self._logger.log(self._level, self._message, extra={"ctx": context()})

    def flush(self) -> None:
        """Write the count of lines not written so far, if there are any."""
        if not self._not_logged:
            return
        self._logger.log(
            self._level,
            self._summary,
            extra={
                "ctx": {
                    self._count_field: self._not_logged,
                    "over_s": round(self._clock() - self._not_logged_since_s, 1),
                    "max_lines_per_s": self._per_second,
                }
            },
        )
        self._not_logged = 0


class LimitedWarning:
    """A warning written at most once per `interval_s`, its repeats at DEBUG.

    While a fault lasts, every request or poll can fail the same way, and one
    WARNING line each would flood the log. The first call writes a WARNING.
    Calls within `interval_s` of it write at DEBUG, with their own context
    (call ids), and are counted. The next WARNING carries that count in the
    context field `repeats_held_back`. Share one instance among the callers
    of one kind of failure, so that the limit holds across them. `warning`
    may be called from any thread.

    NOTE: the count is written only with the next WARNING, so when the fault
    ends within an interval, the repeats show only at DEBUG.
    """

    COUNT_FIELD = "repeats_held_back"

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_warning_at_s: float | None = None
        self._held_back = 0

    def warning(self, message: str, *args: object, ctx: Mapping[str, Any]) -> None:
        """Log `message % args` at WARNING, or at DEBUG within the interval."""
        with self._lock:
            now_s = self._clock()
            next_at_s = self._next_warning_at_s
            within_interval = next_at_s is not None and now_s < next_at_s
            if within_interval:
                self._held_back += 1
            else:
                held_back = self._held_back
                self._held_back = 0
                self._next_warning_at_s = now_s + self._interval_s
        # stacklevel=2 gives the record the caller's file and line, not this one.
        if within_interval:
            self._logger.debug(message, *args, extra={"ctx": ctx}, stacklevel=2)
            return
        fields = {**ctx, self.COUNT_FIELD: held_back} if held_back else dict(ctx)
        self._logger.warning(message, *args, extra={"ctx": fields}, stacklevel=2)
