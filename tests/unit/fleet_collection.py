"""The collection's module_utils, imported as Ansible imports them on a managed host.

A temporary collections root whose ``ansible_collections/wakegrid/fleet`` links to this repository
goes on ``sys.path`` (``ansible_collections`` is a namespace package), so that module_utils that import
each other (``from ansible_collections.wakegrid.fleet.plugins.module_utils.fleet_entries import ...``)
load exactly as in a module. ansible-core is the only requirement; optional libraries (proxmoxer,
docker) stay behind the module_utils' own import guards.
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "ansible_collections.wakegrid.fleet.plugins.module_utils"
_root: Path | None = None


def _collections_root() -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="wakegrid-collections-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
        link = _root / "ansible_collections" / "wakegrid" / "fleet"
        link.parent.mkdir(parents=True)
        link.symlink_to(REPO)
        sys.path.append(str(_root))
    return _root


def module_utils(name: str) -> ModuleType:
    """``plugins/module_utils/<name>.py`` as ``ansible_collections.wakegrid.fleet.plugins.module_utils.<name>``."""
    _collections_root()
    return importlib.import_module(f"{PACKAGE}.{name}")
