"""``wakegrid migrate GUEST TARGET``: move an LXC guest to another Proxmox VE machine, with a live progress bar.

:func:`run_migration` runs ``playbooks/migrate_lxc.yml`` through the actuator and hands each
progress event of the migration to a callback as it happens: the module
(``wakegrid.fleet.proxmox_lxc_migrate``) appends them to an events file while it follows the
Proxmox VE task, and a thread here reads that file as it grows. The daemon can call the same
function and publish the events; the command draws them with ``rich`` and closes with the
downtime the guest had. The events are documented in docs/migration.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from wakegrid.actuate import run_playbook
from wakegrid.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from wakegrid.model import Fleet

FLEET_ENV = "WAKEGRID_FLEET"
MIGRATE_MODULE = "proxmox_lxc_migrate"
HEALTH_TASK = "Wait until the guest's services answer healthy"
TAIL_EVERY = 0.1  # seconds between two reads of the events file

# The phases, in order, as the events carry them (plugins/module_utils/proxmox.py MIGRATION_PHASES).
PHASES = ("prepare", "shutdown", "copy", "start", "done", "failed")
PHASE_TEXT = {
    "prepare": "preparing",
    "shutdown": "shutting the container down",
    "copy": "copying its volumes",
    "start": "starting it on the target",
    "done": "moved",
    "failed": "failed",
}


@dataclass
class MigrationOutcome:
    """How a migration went: the module's result, its events, and the times a person wants to see."""

    rc: int
    status: str
    result: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0
    healthy_at: float | None = None  # wall time the guest's services answered again (seen by the playbook)

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.status == "successful"

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed"))

    @property
    def stopped_at(self) -> float | None:
        """Wall time of the ``shutdown CT`` line: the moment the guest stopped serving."""
        return next((e["time"] for e in self.events if e.get("phase") == "shutdown"), None)

    @property
    def services_back_after(self) -> float | None:
        """Seconds from the shutdown to the services answering healthy again (an upper bound: Ansible polls)."""
        if self.stopped_at is None or self.healthy_at is None:
            return None
        return round(self.healthy_at - self.stopped_at, 1)


def run_migration(
    fleet_path: str | os.PathLike[str],
    guest: str,
    target: str,
    *,
    restart: bool = True,
    bwlimit: float | None = None,
    target_storage: str | Mapping[str, str] | None = None,
    check: bool = False,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_line: Callable[[str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    timeout: float | None = None,
) -> MigrationOutcome:
    """Migrate ``guest`` to the machine ``target`` with ``playbooks/migrate_lxc.yml``; events go to ``on_event``.

    Each event is a dict: ``guest``, ``target``, ``seq``, ``time`` (epoch seconds), ``phase`` (one of
    :data:`PHASES`), ``percent`` (overall, never decreasing), ``copy_percent``, ``message`` (the
    Proxmox VE log line), and where they apply ``pve_time``, ``volume``, ``bytes``, ``error``.
    ``on_event`` is called from a reading thread, in order; an exception in it is ignored.
    """
    extravars: dict[str, Any] = {"guest": guest, "target": target, "restart": restart}
    if bwlimit is not None:
        extravars["bwlimit"] = bwlimit
    if target_storage:
        extravars["target_storage"] = dict(target_storage) if isinstance(target_storage, Mapping) else target_storage
    outcome = MigrationOutcome(rc=1, status="failed")
    handle, events_path = tempfile.mkstemp(prefix="wakegrid-migrate-", suffix=".jsonl")
    os.close(handle)
    extravars["events_file"] = events_path
    finished = threading.Event()

    def deliver(event: dict[str, Any]) -> None:
        event = {"guest": guest, "target": target, **event}
        outcome.events.append(event)
        if on_event is not None:
            with contextlib.suppress(Exception):  # a display problem must not stop the reading
                on_event(event)

    def tail() -> None:
        with open(events_path) as handle:
            pending = ""
            while True:
                done = finished.is_set()  # read once more after the run ended
                pending += handle.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    if line.strip():
                        deliver(json.loads(line))
                if done:
                    return
                time.sleep(TAIL_EVERY)

    def runner_event(event: dict[str, Any]) -> None:
        data = event.get("event_data") or {}
        action = str(data.get("task_action") or "")
        if action.endswith(MIGRATE_MODULE) and event.get("event") in ("runner_on_ok", "runner_on_failed"):
            outcome.result = dict(data.get("res") or {})
        if str(data.get("task") or "").startswith(HEALTH_TASK) and event.get("event") == "runner_item_on_ok":
            outcome.healthy_at = time.time()

    reader = threading.Thread(target=tail, name=f"migrate-{guest}-events", daemon=True)
    reader.start()
    try:
        run = run_playbook(
            "migrate_lxc",
            fleet_path,
            extravars,
            check=check,
            on_line=on_line,
            on_event=runner_event,
            cancel=cancel,
            timeout=timeout,
        )
    finally:
        finished.set()
        reader.join(10)
        os.unlink(events_path)
    outcome.rc, outcome.status, outcome.seconds = run.rc, run.status, run.seconds
    if not outcome.ok:
        outcome.failure = outcome.result.get("msg") if outcome.result.get("failed") else None
        outcome.failure = outcome.failure or run.progress.failure or "the migration playbook failed"
    return outcome


# --------------------------------------------------------------------------- the command


def add_migrate_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "migrate",
        help="move an LXC guest to another Proxmox VE machine of its cluster, with a live progress bar",
        description=(
            "Migrate GUEST (a fleet lxc) to TARGET (a fleet machine of the same Proxmox VE cluster) with "
            "playbooks/migrate_lxc.yml: a running container moves in restart mode (shut down, copy, start on the "
            "target); then its services are waited for and the edge's routes synced. Prints the downtime."
        ),
    )
    parser.add_argument("guest", metavar="GUEST", help="the fleet lxc to move")
    parser.add_argument("target", metavar="TARGET", help="the fleet machine (with proxmox) to move it to")
    parser.add_argument(
        "--fleet", metavar="FILE", default=os.environ.get(FLEET_ENV), help=f"the fleet file (default: ${FLEET_ENV})"
    )
    parser.add_argument(
        "--no-restart", action="store_true", help="refuse to move a running container (it would be restarted)"
    )
    parser.add_argument("--bwlimit", type=float, metavar="KIB_S", help="bandwidth limit of the copy, in KiB/s")
    parser.add_argument(
        "--target-storage",
        metavar="MAP",
        help="where the volumes land: a storage, or SOURCE:TARGET[,SOURCE:TARGET] (Proxmox VE's target-storage)",
    )
    parser.add_argument("--check", action="store_true", help="say what would happen, move nothing")
    parser.add_argument("--json", action="store_true", help="print each progress event as one JSON line, no bar")
    parser.set_defaults(handler=_migrate)


def check_request(fleet: Fleet, guest: str, target: str) -> str | None:
    """Why ``wakegrid migrate guest target`` cannot be asked for, or None."""
    node = fleet.nodes.get(guest)
    if node is None:
        return f"unknown node {guest!r} (nodes: {', '.join(fleet.nodes)})"
    if node.kind != "lxc":
        return f"{guest} is a {node.kind}: only lxc guests migrate (Proxmox VE moves containers in restart mode)"
    machine = fleet.nodes.get(target)
    machines = [name for name, n in fleet.nodes.items() if n.proxmox is not None]
    if machine is None or machine.proxmox is None:
        return f"{target!r} is not a fleet machine with proxmox (those are: {', '.join(machines)})"
    parent = fleet.nodes[node.parent] if node.parent else None
    if parent is None or parent.proxmox is None or parent.proxmox.cluster != machine.proxmox.cluster:
        cluster = (parent.proxmox.cluster if parent and parent.proxmox else None) or "none declared"
        return f"{target} is not in the Proxmox VE cluster of {guest}'s host {node.parent} ({cluster})"
    return None


def _migrate(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    from wakegrid.cli.power import _fleet_or_exit

    out, err = out or sys.stdout, err or sys.stderr
    fleet = _fleet_or_exit(args, err)
    if isinstance(fleet, int):
        return fleet
    problem = check_request(fleet, args.guest, args.target)
    if problem:
        print(f"wakegrid: {problem}", file=err)
        return EXIT_USAGE
    if args.bwlimit is not None and args.bwlimit < 0:
        print(f"wakegrid: --bwlimit must be 0 or more KiB/s, not {args.bwlimit:g}", file=err)
        return EXIT_USAGE
    storage = _storage_map(args.target_storage)
    if isinstance(storage, str) and storage.startswith("!"):
        print(f"wakegrid: {storage[1:]}", file=err)
        return EXIT_USAGE
    display = JsonDisplay(out) if args.json else BarDisplay(args.guest, args.target, out)
    with display:
        outcome = run_migration(
            args.fleet,
            args.guest,
            args.target,
            restart=not args.no_restart,
            bwlimit=args.bwlimit,
            target_storage=storage,
            check=args.check,
            on_event=display.event,
        )
    return report_migration(outcome, args.guest, args.target, out=out, err=err, as_json=args.json)


def _storage_map(value: str | None) -> str | dict[str, str] | None:
    """``--target-storage``: one storage, or ``SRC:DST,…`` as a map; ``"!reason"`` when it is neither."""
    if not value:
        return None
    if ":" not in value:
        return value
    mapping = {}
    for item in value.split(","):
        source, _, dest = item.partition(":")
        if not source or not dest:
            return f"!--target-storage {value!r}: write STORAGE or SOURCE:TARGET[,SOURCE:TARGET]"
        mapping[source] = dest
    return mapping


def report_migration(
    outcome: MigrationOutcome, guest: str, target: str, *, out: TextIO, err: TextIO, as_json: bool = False
) -> int:
    result = outcome.result
    if as_json:
        summary = {
            "ok": outcome.ok,
            "changed": outcome.changed,
            "source": result.get("source"),
            "node": result.get("node"),
            "downtime": result.get("downtime"),
            "services_back_after": outcome.services_back_after,
            "failure": outcome.failure,
        }
        print(json.dumps({"summary": summary}), file=out)
    if not outcome.ok:
        print(f"wakegrid: {outcome.failure}", file=err)
        if result.get("node"):
            print(f"wakegrid: {guest} is on {result['node']}, {result.get('status_after', 'status unknown')}", file=err)
        return EXIT_FAILED
    if as_json:
        return EXIT_OK
    if not outcome.changed:
        print(f"{guest} is already on {target}: nothing moved")
        return EXIT_OK
    if result.get("plan") and not result.get("upid"):  # check mode
        plan = result["plan"]
        print(f"check mode: {guest} would move from {plan['source']} to {plan['target']} in {plan['mode']} mode, "
              f"{plan['copy_bytes'] / (1 << 30):.1f} GiB to copy")  # fmt: skip
        for refusal in plan.get("refusals") or []:
            print(f"  Proxmox VE would refuse: {refusal}")
        return EXIT_OK
    print(f"{guest} moved from {result.get('source')} to {result.get('node')} in {result.get('seconds')}s "
          f"({result.get('mode')} mode)")  # fmt: skip
    if result.get("downtime") is not None:
        line = f"downtime: {guest} was down {result['downtime']}s (Proxmox VE's restart: shutdown, copy, start)"
        if outcome.services_back_after is not None:
            line += f"; its services answered again {outcome.services_back_after}s after it stopped"
        print(line)
    return EXIT_OK


class JsonDisplay:
    def __init__(self, out: TextIO):
        self.out = out

    def __enter__(self) -> JsonDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def event(self, event: dict[str, Any]) -> None:
        print(json.dumps(event, sort_keys=True), file=self.out, flush=True)


class BarDisplay:
    """A rich progress bar: the phase, the overall percentage and the copy percentage; a line per phase."""

    def __init__(self, guest: str, target: str, out: TextIO):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = Console(file=out, highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[guest]}[/] → {task.fields[target]}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[phase]}"),
            TextColumn("{task.fields[copy]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("migrate", total=100, guest=guest, target=target, phase="", copy="")
        self.phase: str | None = None

    def __enter__(self) -> BarDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, event: dict[str, Any]) -> None:
        phase = str(event.get("phase", ""))
        copy = f"copy {event.get('copy_percent', 0)}%" if phase == "copy" else ""
        self.progress.update(
            self.task, completed=event.get("percent", 0), phase=PHASE_TEXT.get(phase, phase), copy=copy
        )
        if phase != self.phase:
            self.phase = phase
            self.progress.console.print(f"{event.get('percent', 0):>3}%  {PHASE_TEXT.get(phase, phase)}: "
                                        f"{event.get('message', '')}")  # fmt: skip
        elif event.get("error"):
            self.progress.console.print(f"      error: {event['error']}")
