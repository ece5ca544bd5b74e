"""Running a playbook of the wakegrid.fleet collection through ansible-runner, the fleet as inventory.

The caller never parses Ansible's output: events stream to :class:`wakegrid.actuate.events.Progress`
and its lines to a callback; the result carries the exit status, the plan and the timings. Each
run has its own private data dir (runs sharing one would collide), removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakegrid.actuate.events import Progress


@dataclass
class RunResult:
    rc: int
    status: str
    progress: Progress
    stats: dict[str, Any]
    seconds: float

    @property
    def changed(self) -> int:
        return sum((self.stats.get("changed") or {}).values())

    @property
    def blocked(self) -> bool:
        return bool(self.progress.plan and self.progress.plan.get("blocked"))

    @property
    def overhead(self) -> float:
        """The run's wall time minus the time inside the modules that act and wait.

        What remains is Ansible itself: start-up, inventory, observing and planning, task
        includes, facts, output.
        """
        return self.seconds - self.progress.working


def collection_root() -> Path:
    """The wakegrid.fleet collection: ``WAKEGRID_COLLECTION``, else the checkout holding this package."""
    given = os.environ.get("WAKEGRID_COLLECTION")
    root = Path(given) if given else Path(__file__).resolve().parents[3]
    if not (root / "galaxy.yml").is_file() or not (root / "playbooks").is_dir():
        raise FileNotFoundError(
            f"the wakegrid.fleet collection is not at {root} (no galaxy.yml and playbooks/): "
            "set WAKEGRID_COLLECTION to its directory"
        )
    return root


def run_playbook(
    name: str,
    fleet_path: str | os.PathLike[str],
    extravars: Mapping[str, Any] | None = None,
    *,
    check: bool = False,
    on_line: Callable[[str], None] | None = None,
    verbosity: int = 0,
) -> RunResult:
    """Run ``playbooks/<name>.yml`` of the collection with the fleet as inventory.

    Live progress lines (the plan, each step, its time) go to ``on_line``; Ansible's
    own output is kept in the runner's artifacts, which are removed afterwards.
    """
    import ansible_runner  # heavy: only when a playbook really runs

    root = collection_root()
    playbook = root / "playbooks" / f"{name}.yml"
    progress = Progress()
    work = Path(tempfile.mkdtemp(prefix="wakegrid-run-"))
    try:
        link = work / "collections" / "ansible_collections" / "wakegrid" / "fleet"
        link.parent.mkdir(parents=True)
        link.symlink_to(root, target_is_directory=True)
        env = {
            "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(
                [str(work / "collections"), "~/.ansible/collections", "/usr/share/ansible/collections"]
            ),
            "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
            # The fleet plugin by name, never 'auto'/'yaml' (their YAML errors quote the file, secrets included).
            "ANSIBLE_INVENTORY_ENABLED": "wakegrid.fleet.fleet,host_list,ini",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "True",
            "PATH": search_path(),
        }

        def handler(event: dict) -> bool:
            for line in progress.feed(event):
                if on_line is not None:
                    on_line(line)
            return True  # keep the event in the artifacts

        started = time.monotonic()
        runner = ansible_runner.run(
            private_data_dir=str(work),
            playbook=str(playbook),
            inventory=str(Path(fleet_path).resolve()),
            extravars=dict(extravars or {}),
            envvars=env,
            cmdline="--check" if check else None,
            verbosity=verbosity or None,
            event_handler=handler,
            quiet=True,
        )
        seconds = time.monotonic() - started
        if runner.rc and progress.failure is None:
            progress.failure = _tail(runner.stdout.read() if runner.stdout else "")
        return RunResult(runner.rc, runner.status, progress, runner.stats or {}, seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def search_path() -> str:
    """PATH with this Python's own bin directory first: the ansible-playbook of its virtualenv, if any."""
    here = str(Path(sys.executable).parent)
    rest = [entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep) if entry and entry != here]
    return os.pathsep.join([here, *rest])


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "the playbook failed without output"
