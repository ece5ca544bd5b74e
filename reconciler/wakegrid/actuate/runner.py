"""Running a playbook of the wakegrid.fleet collection through ansible-runner, the fleet as inventory.

The caller never parses Ansible's output: events stream to :class:`wakegrid.actuate.events.Progress`
and its lines to a callback (the raw events too, for the daemon's journal and event bus); the result
carries the exit status, the plan and the timings. Each run has its own private data dir (runs
sharing one collide: ansible-runner issues 808/1143), removed afterwards. A run can be cancelled
(``cancel``) and bounded in time (``timeout``); both kill the playbook's process group.
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger(__name__)

# How often ansible-runner looks at ``cancel`` and the deadline while the playbook is quiet (its
# default, 5 s, would make a cancelled or timed-out run linger that long).
CHECK_EVERY = 0.25


@dataclass
class RunResult:
    rc: int
    status: str  # ansible-runner's: "successful", "failed", "canceled", "timeout"
    progress: Progress
    stats: dict[str, Any]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"

    @property
    def canceled(self) -> bool:
        return self.status == "canceled"

    @property
    def timed_out(self) -> bool:
        return self.status == "timeout"

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
    # galaxy.yml in a checkout, MANIFEST.json in an installed collection (ansible-galaxy collection install)
    described = (root / "galaxy.yml").is_file() or (root / "MANIFEST.json").is_file()
    if not described or not (root / "playbooks").is_dir():
        raise FileNotFoundError(
            f"the wakegrid.fleet collection is not at {root} (no galaxy.yml or MANIFEST.json, and playbooks/): "
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
    on_event: Callable[[dict[str, Any]], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
    progress: Progress | None = None,
    verbosity: int = 0,
) -> RunResult:
    """Run ``playbooks/<name>.yml`` of the collection with the fleet as inventory.

    Live progress lines (the plan, each step, its time) go to ``on_line``; each raw
    ansible-runner event goes to ``on_event`` once ``progress`` (a fresh :class:`Progress`
    unless given) has taken it. Both are called from the thread running the playbook; an
    exception in them is logged, never breaks the run. ``cancel`` is asked every
    :data:`CHECK_EVERY` seconds and at each output: true stops the run (status ``canceled``);
    after ``timeout`` seconds the run is stopped too (status ``timeout``). Ansible's own output
    is kept in the runner's artifacts, which are removed afterwards.
    """
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    import ansible_runner  # heavy: only when a playbook really runs

    root = collection_root()
    playbook = root / "playbooks" / f"{name}.yml"
    if not playbook.is_file():
        raise FileNotFoundError(f"the wakegrid.fleet collection at {root} has no playbook {name!r} ({playbook})")
    progress = progress if progress is not None else Progress()
    work = Path(tempfile.mkdtemp(prefix="wakegrid-run-"))
    try:
        (work / "env").mkdir()
        # ansible-runner reads its settings from this file only (a settings= argument is dropped without it).
        (work / "env" / "settings").write_text(json.dumps({"pexpect_timeout": CHECK_EVERY}))
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
            # Modules run on the controller would log each invocation to its journal (the daemon's unit).
            "ANSIBLE_NO_TARGET_SYSLOG": "True",
            "PATH": search_path(),
        }

        def handler(event: dict) -> bool:
            lines = progress.feed(event)
            for line in lines:
                _call(on_line, line)
            _call(on_event, event)
            return True  # keep the event in the artifacts

        started = time.monotonic()
        deadline = started + timeout if timeout is not None else None
        timed_out = False

        def should_stop() -> bool:
            # ansible-runner's own `timeout` takes whole seconds only: the deadline is kept here.
            nonlocal timed_out
            if deadline is not None and time.monotonic() >= deadline:
                timed_out = True
                return True
            if cancel is None:
                return False
            try:
                return bool(cancel())
            except Exception:
                log.exception("the cancel callback of a %s run failed: cancelling the run", name)
                return True

        runner = ansible_runner.run(
            private_data_dir=str(work),
            playbook=str(playbook),
            inventory=str(Path(fleet_path).resolve()),
            extravars=dict(extravars or {}),
            envvars=env,
            cmdline="--check" if check else None,
            verbosity=verbosity or None,
            event_handler=handler,
            cancel_callback=should_stop,
            quiet=True,
        )
        seconds = time.monotonic() - started
        status = "timeout" if timed_out and runner.status == "canceled" else runner.status
        if status in ("canceled", "timeout"):
            progress.failure = _stopped(status, seconds, timeout, progress)
        elif runner.rc and progress.failure is None:
            progress.failure = _tail(runner.stdout.read() if runner.stdout else "")
        return RunResult(runner.rc, status, progress, runner.stats or {}, seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def search_path() -> str:
    """PATH with this Python's own bin directory first: the ansible-playbook of its virtualenv, if any."""
    here = str(Path(sys.executable).parent)
    rest = [entry for entry in os.environ.get("PATH", os.defpath).split(os.pathsep) if entry and entry != here]
    return os.pathsep.join([here, *rest])


def _call(callback: Callable[[Any], None] | None, value: Any) -> None:
    if callback is None:
        return
    try:
        callback(value)
    except Exception:
        log.exception("a progress callback failed; the run goes on")


def _stopped(status: str, seconds: float, timeout: float | None, progress: Progress) -> str:
    """``timed out after 30.2s (timeout 30s) during step 2 of 3: start lxc jellyfin via …``"""
    what = (
        f"timed out after {seconds:.1f}s (timeout {timeout:g}s)"
        if status == "timeout"
        else f"cancelled after {seconds:.1f}s"
    )
    step = progress.steps[-1] if progress.steps and progress.steps[-1].seconds is None else None
    return f"{what} during step {step.index} of {step.total}: {step.title}" if step else what


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "the playbook failed without output"
