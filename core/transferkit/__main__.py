"""``python -m transferkit``: the same command line as ``transferkit``."""

import sys

from transferkit.cli import main

sys.exit(main())
