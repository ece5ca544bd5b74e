"""Run the emulator: ``python3 -m wakegrid.lab.pve …``, or in a lab host ``python3 /opt/wakegrid-lab/pve …``.

Run as a directory (copied next to engine.py, also under ``python3 -I -S``), this file is
not inside a package: it imports the package by its directory's name from the parent.
"""

import importlib
import os
import sys

if __package__:
    from .server import main
else:
    _here = os.path.dirname(os.path.abspath(__file__))
    # The parent holds engine.py; the package's own directory must not shadow top-level modules.
    sys.path[:] = [os.path.dirname(_here), *(p for p in sys.path if os.path.abspath(p) != _here)]
    main = importlib.import_module(f"{os.path.basename(_here)}.server").main

if __name__ == "__main__":
    sys.exit(main())
