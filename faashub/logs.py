"""Logging setup for faashub processes.

Library modules only create `logging.getLogger(__name__)` and pass per-call
context (function, call id, topic, ...) as `extra={"ctx": {...}}`. This
module, called once by each entry point, renders that context as `key=value`
pairs in text mode or as fields in JSON mode.
"""

import json
import logging
import sys
import time
from collections.abc import Mapping
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
