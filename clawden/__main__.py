"""`python -m clawden` is the `clawden` command."""

import sys

from clawden.cli import main

sys.exit(main())
