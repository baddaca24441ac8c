"""`python -m faashub`: the faashub command.

`faashub up` checks its settings and then replaces its own process with
`python -m faashub up ...` again, with the checked settings in
`hub.SETTINGS_VARIABLE`. That second start runs the lean hub supervisor and
never imports the CLI, so the process keeps its `faashub up` command line
(for ps and pkill) without pydantic and httpx in its memory.

The supervisor starts `python -m faashub up-workers ...`, the one process
that runs all the hub's queue-workers and connectors
(`faashub.cli.up_workers`). It is not a command of the CLI, because only the
hub starts it.

The gateway and the provider serve with uvicorn, which cancels the requests
still running when its graceful shutdown times out and logs an ERROR
traceback for each. When the hub stops while calls outlast the workers
process's drain, the gateway and the provider still run the requests of the
abandoned calls, so that expected event would print one traceback per
request. `ShutdownCancellationFilter` logs one WARNING line instead.
"""

import logging
import os
import sys

from faashub.cli import hub

# The message that uvicorn 0.55 gives the requests it cancels at the end of
# its graceful shutdown (uvicorn/server.py, Server.shutdown).
UVICORN_SHUTDOWN_CANCEL_MESSAGE = "timeout graceful shutdown exceeded"


class ShutdownCancellationFilter(logging.Filter):
    """Turn uvicorn's shutdown cancellations into one WARNING line.

    uvicorn logs "Cancel N running task(s), timeout graceful shutdown
    exceeded" at ERROR, then "Exception in ASGI application" with a
    CancelledError traceback for each request. This filter rewrites the first
    as a WARNING and drops the others. Every other record passes unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if UVICORN_SHUTDOWN_CANCEL_MESSAGE in str(record.msg):
            count = record.args[0] if isinstance(record.args, tuple) else "?"
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
            record.msg = (
                "stopping with %s requests still running after the graceful "
                "shutdown wait; cancelling them (a queued call among them runs "
                "again, because JetStream redelivers it)"
            )
            record.args = (count,)
            return True
        # Imported here, so that the supervisor, which also runs this module,
        # does not load asyncio.
        import asyncio

        error = record.exc_info[1] if record.exc_info else None
        return not (
            isinstance(error, asyncio.CancelledError)
            and UVICORN_SHUTDOWN_CANCEL_MESSAGE in str(error)
        )


if sys.argv[1:2] == ["up"] and hub.SETTINGS_VARIABLE in os.environ:
    sys.exit(hub.main())

if sys.argv[1:2] == [hub.WORKERS_COMMAND]:
    from faashub.cli import up_workers

    sys.exit(up_workers.main(sys.argv[2:]))

if sys.argv[1:2] in (["gateway"], ["provider"]):
    logging.getLogger("uvicorn.error").addFilter(ShutdownCancellationFilter())

from faashub.cli.main import main  # noqa: E402 (only when not the supervisor)

sys.exit(main())
