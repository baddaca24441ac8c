import sys

from faashub.cli.main import main

sys.exit(main())
