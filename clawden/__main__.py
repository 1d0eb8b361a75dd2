"""`python -m clawden` is the `clawden` command."""

import sys

from clawden.cli.main import main

sys.exit(main())
