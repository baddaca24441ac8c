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
"""

import os
import sys

from faashub.cli import hub

if sys.argv[1:2] == ["up"] and hub.SETTINGS_VARIABLE in os.environ:
    sys.exit(hub.main())

if sys.argv[1:2] == [hub.WORKERS_COMMAND]:
    from faashub.cli import up_workers

    sys.exit(up_workers.main(sys.argv[2:]))

from faashub.cli.main import main  # noqa: E402 (only when not the supervisor)

sys.exit(main())
