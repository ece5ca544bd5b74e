import sys

from wakegrid.lab.cli import main

sys.exit(main())
