"""uvicorn's id-less error for a response broken off on purpose, kept out of the log.

When a function's response body breaks off after its status line was sent,
the gateway and the provider can only end their own response incomplete,
so that the caller sees the fault. Each logs a warning with the function
and call id. uvicorn then logs its own ERROR for the same event, without
any id. `mark_broken_off()`, called in the request's task, marks that
request, and `IncompleteResponseFilter` drops uvicorn's record for a marked
request only. uvicorn's other records, and this one for any other request,
pass.
"""

import logging
from contextvars import ContextVar

# The message that uvicorn (0.55) logs as an error when an app returns before
# its response is complete, with no request or call id.
UVICORN_INCOMPLETE_RESPONSE = "ASGI callable returned without completing response."

# True in the task of a request whose response broke off after its status
# line was sent, which the component has already logged with its ids.
_broken_off: ContextVar[bool] = ContextVar("faashub_response_broken_off", default=False)


def mark_broken_off() -> None:
    """Mark the current request's response as broken off and already logged.

    Call it in uvicorn's task of the request, that is, in the ASGI app.
    """
    _broken_off.set(True)


class IncompleteResponseFilter(logging.Filter):
    """A logging filter that drops uvicorn's error for a marked request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == UVICORN_INCOMPLETE_RESPONSE and _broken_off.get())


def install_log_filter() -> None:
    """Add an IncompleteResponseFilter to uvicorn's error logger, once."""
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if not any(
        isinstance(item, IncompleteResponseFilter) for item in uvicorn_logger.filters
    ):
        uvicorn_logger.addFilter(IncompleteResponseFilter())
