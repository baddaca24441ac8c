"""`python -m faashub.cli.supervisor`: the process `faashub up` becomes.

`faashub.cli.hub.run` checks the settings and then replaces its process with
this module, which imports only `faashub.cli.hub` and what that needs. A user
never runs it directly.
"""

import sys

from faashub.cli.hub import main

if __name__ == "__main__":
    sys.exit(main())
