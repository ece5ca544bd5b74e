"""``python -m wakegrid.cli …``: the same as ``wakegrid …``."""

import sys

from wakegrid.cli import main

sys.exit(main())
