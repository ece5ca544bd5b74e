"""The actuator: power plans turned into playbook steps, and playbooks run through ansible-runner.

Two halves:

- **Pure**: :func:`plan_data` turns a :class:`wakegrid.graph.Plan` (and the observed
  power state it was computed from) into what the ``wake.yml`` / ``shutdown.yml``
  playbooks execute: per step, the module, its options resolved from the fleet,
  where it runs (``delegate_to``), its timeout, the API to wait for before it, and
  the printable plan. Secrets never appear here: the playbook takes them from the
  inventory's lazy variables (``hostvars[...]``) at task time, with ``no_log``.
  :func:`progress_line` and :class:`Progress` turn ansible-runner events into the
  live progress the CLI prints.
- **I/O**: :func:`run_playbook` runs a collection playbook with the fleet as
  inventory through ansible-runner; ``wakegrid wake|shutdown|discover`` are built on
  it (:func:`add_power_commands`).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from wakegrid.exitcodes import EXIT_BLOCKED, EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_USAGE
from wakegrid.graph import Note, Plan, Step
from wakegrid.model import Fleet

FLEET_ENV = "WAKEGRID_FLEET"
PLAN_ACTION = "wakegrid.fleet.power_plan"
# The tasks that do a step's real work (and its waiting); the rest of a run is overhead.
POWER_MODULES = frozenset(
    {
        "wakegrid.fleet.wake_on_lan",
        "wakegrid.fleet.proxmox_guest",
        "wakegrid.fleet.docker_container_power",
        "community.general.shutdown",
        "ansible.builtin.wait_for",
        "ansible.builtin.command",
        "ansible.builtin.uri",
    }
)
STEP_STARTED, STEP_DONE = "wakegrid_step_started", "wakegrid_step_done"


# =========================================================================== pure: plan → playbook steps


def channel_phrase(kind: str, via: str) -> str:
    return {
        "wake_on_lan": f"Wake-on-LAN from {via}",
        "proxmox": f"Proxmox API of {via}",
        "docker": f"Docker API of {via}",
        "ssh": f"SSH on {via}",
    }[kind]


def step_title(step: Step) -> str:
    """``start lxc jellyfin via Proxmox API of pve1``: what a step does, in the failure messages too."""
    return f"{step.action} {step.kind} {step.node} via {channel_phrase(step.channel.kind, step.channel.via)}"


def step_data(fleet: Fleet, step: Step, index: int, total: int) -> dict[str, Any]:
    """Everything the playbook needs to run one step (no secrets: see the module docstring)."""
    node = fleet.nodes[step.node]
    seconds = node.timeouts.start if step.action == "start" else node.timeouts.stop
    timeout = max(1, math.ceil(seconds))
    data: dict[str, Any] = {
        "index": index,
        "total": total,
        "action": step.action,
        "node": step.node,
        "kind": step.kind,
        "channel": {"kind": step.channel.kind, "via": step.channel.via},
        "wait_for": step.wait_for,
        "reason": step.reason,
        "title": step_title(step),
        "timeout": timeout,
        "ready": None,  # an API to wait for before acting: {what, url, status, validate_certs}
    }
    kind = step.channel.kind
    if kind == "wake_on_lan":
        wol = fleet.wol_of(step.node)
        args: dict[str, Any] = {"mac": node.mac, "broadcast": wol.broadcast, "port": wol.port, "timeout": timeout}
        if wol.interface:
            args["interface"] = wol.interface
        args["wait_for"] = {"host": node.address or step.node, "port": fleet.ssh_of(step.node).port, "protocol": "tcp"}
        data.update(
            module="wakegrid.fleet.wake_on_lan",
            delegate_to=step.channel.via,
            args=args,
            secureon=node.wol is not None and node.wol.secureon is not None,
        )
    elif kind == "proxmox":
        proxmox = fleet.nodes[step.channel.via].proxmox
        assert proxmox is not None  # the model guarantees it for a guest's parent
        url = urlsplit(proxmox.api)
        port = url.port or 8006
        args = {
            "api_host": url.hostname,
            "api_port": port,
            "api_token_id": proxmox.token_id,
            "validate_certs": proxmox.verify_tls,
            "vmid": node.vmid,
            "node": proxmox.node or step.channel.via,
            "state": "started" if step.action == "start" else "shutdown",
            "timeout": timeout,
        }
        if step.action == "stop":
            args["force_stop"] = True  # a guest that ignores the clean shutdown is stopped hard after `timeout`
        data.update(
            module="wakegrid.fleet.proxmox_guest",
            delegate_to="localhost",
            args=args,
            ready={
                "what": f"Proxmox API of {step.channel.via}",
                "url": f"{url.scheme}://{_netloc(url.hostname or '', port)}/api2/json/version",
                "status": [200, 401],  # 401: up, and asking for credentials
                "validate_certs": proxmox.verify_tls,
            },
        )
    elif kind == "docker":
        docker = fleet.nodes[step.channel.via].docker
        assert docker is not None
        args = {
            "docker_host": docker.api,
            "tls": docker.tls,
            "name": node.container or step.node,
            "state": "started" if step.action == "start" else "stopped",
            "timeout": timeout,
        }
        data.update(module="wakegrid.fleet.docker_container_power", delegate_to="localhost", args=args)
        ping = docker_ping_url(docker.api, docker.tls)
        if ping:
            data["ready"] = {
                "what": f"Docker API of {step.channel.via}",
                "url": ping,
                "status": [200],
                "validate_certs": False,
            }
    else:  # ssh: the machine powers itself off
        data.update(
            module="community.general.shutdown",
            delegate_to=step.node,
            args={"delay": 0, "msg": f"wakegrid: shutting down {step.node} ({step.reason})"},
            address=node.address or step.node,
            port=fleet.ssh_of(step.node).port,
        )
    return data


def docker_ping_url(api: str, tls: bool) -> str | None:
    """The ``/_ping`` URL of a TCP Docker API (None for unix:// and ssh://, which are not polled)."""
    url = urlsplit(api)
    if url.scheme in ("http", "https"):
        return f"{url.scheme}://{url.netloc}/_ping"
    if url.scheme == "tcp" and url.hostname:
        return f"{'https' if tls else 'http'}://{_netloc(url.hostname, url.port or (2376 if tls else 2375))}/_ping"
    return None


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plan_data(fleet: Fleet, plan: Plan, observed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plan as the playbooks use it: steps with their options, notes, and the printable plan.

    ``observed`` maps node names to objects with ``up`` and ``detail`` (the observer's
    :class:`wakegrid.observe.power.PowerState`) or to ``{"up", "detail"}`` dicts.
    """
    observed = observed or {}
    states = {name: _as_state(state) for name, state in observed.items()}
    total = len(plan.steps)
    steps = [step_data(fleet, step, index, total) for index, step in enumerate(plan.steps, 1)]
    data = {
        "operation": plan.operation,
        "target": plan.target,
        "runnable": plan.runnable,
        "blocked": list(plan.blocked),
        "steps": steps,
        "already": [_note(note) for note in plan.skipped],  # not "skipped": Ansible reads that as a skipped task
        "kept": [_note(note) for note in plan.kept],
        "proposed": [_note(note) for note in plan.proposed],
        "observed": states,
        "up": [name for name, state in states.items() if state["up"]],
    }
    data["lines"] = plan_lines(data)
    return data


def _as_state(state: Any) -> dict[str, Any]:
    if isinstance(state, Mapping):
        return {"up": bool(state["up"]), "detail": str(state.get("detail", ""))}
    return {"up": bool(state.up), "detail": str(state.detail)}


def _note(note: Note) -> dict[str, Any]:
    return {"node": note.node, "reason": note.reason, "needed_by": list(note.needed_by)}


def plan_lines(data: Mapping[str, Any]) -> list[str]:
    """The plan, printable, one line per fact: what was observed, each step, what stays, what is proposed."""
    verb = "start" if data["operation"] == "start" else "shut down"
    steps = data["steps"]
    lines = [f"plan: {verb} {data['target']}: {len(steps)} step{'s' if len(steps) != 1 else ''}"]
    observed = data.get("observed") or {}
    if observed:
        up = [name for name, state in observed.items() if state["up"]]
        down = [f"{name} ({state['detail']})" for name, state in observed.items() if not state["up"]]
        lines.append(f"observed up: {', '.join(up) or 'none'}")
        lines.append(f"observed down: {'; '.join(down) or 'none'}")
    for reason in data["blocked"]:
        lines.append(f"blocked: {reason}")
    for step in steps:
        lines.append(
            f"step {step['index']}/{step['total']}: {step['title']} ({step['reason']}); "
            f"then wait until {step['wait_for']} (at most {step['timeout']}s)"
        )
    if not steps and not data["blocked"]:
        lines.append(f"nothing to do: {data['target']} is already {'up' if data['operation'] == 'start' else 'down'}")
    for note in data["kept"]:
        lines.append(f"stays up: {note['node']}: {note['reason']}")
    for note in data["proposed"]:
        lines.append(
            f"proposed: shut down {note['node']}: {note['reason']} "
            f"(to do it: -e confirm={note['node']}, or wakegrid shutdown --confirm {note['node']})"
        )
    return lines


# =========================================================================== pure: runner events → progress


@dataclass
class StepTiming:
    index: int
    total: int
    title: str
    wait_for: str
    started: float  # runner event time, seconds since the epoch
    seconds: float | None = None
    changed: bool | None = None
    working: float = 0.0  # seconds inside the modules that act and wait (POWER_MODULES)


@dataclass
class Progress:
    """Follows the events of one wake/shutdown run: the plan, each step and its time, the failure."""

    plan: dict[str, Any] | None = None
    plan_seconds: float | None = None  # observing and planning (the power_plan task)
    steps: list[StepTiming] = field(default_factory=list)
    failure: str | None = None
    started: float | None = None
    finished: float | None = None

    def feed(self, event: Mapping[str, Any]) -> list[str]:
        """Take one ansible-runner event; return the lines to show for it (maybe none)."""
        stamp = _event_time(event)
        if self.started is None and stamp is not None:
            self.started = stamp
        if stamp is not None:
            self.finished = stamp
        kind = event.get("event")
        data = event.get("event_data") or {}
        result = data.get("res") or {}
        if kind == "runner_on_ok" and data.get("task_action") == PLAN_ACTION:
            self.plan = {key: value for key, value in result.items() if not key.startswith("_")}
            self.plan_seconds = _float(data.get("duration"))
            return list(self.plan.get("lines") or [])
        if kind in ("runner_on_ok", "runner_on_failed") and data.get("task_action") in POWER_MODULES and self.steps:
            self.steps[-1].working += _float(data.get("duration")) or 0.0
        if kind == "runner_on_ok":
            facts = result.get("ansible_facts") or {}
            if STEP_STARTED in facts:
                info = facts[STEP_STARTED]
                self.steps.append(
                    StepTiming(int(info["index"]), int(info["total"]), info["title"], info["wait_for"], stamp or 0.0)
                )
                return [progress_line(info)]
            if "wakegrid_report" in facts:
                return [*facts["wakegrid_report"], *entries_lines(facts.get("wakegrid_entries") or {})]
            if STEP_DONE in facts and self.steps:
                info = facts[STEP_DONE]
                step = self.steps[-1]
                step.seconds = (stamp - step.started) if stamp is not None else None
                step.changed = bool(info.get("changed"))
                return [done_line(step)]
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            message = _failure_message(result)
            if self.steps and self.steps[-1].seconds is None and stamp is not None:
                self.steps[-1].seconds = stamp - self.steps[-1].started  # the step that failed
            if data.get("task_action") in ("ansible.builtin.fail", "fail") or self.failure is None:
                self.failure = message
            return [f"failed: {message}"] if data.get("task_action") in ("ansible.builtin.fail", "fail") else []
        if kind == "runner_on_unreachable":
            self.failure = _failure_message(result)
        return []

    @property
    def wall(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def working(self) -> float:
        """Seconds inside the modules that act and wait, over all steps."""
        return sum(step.working for step in self.steps)


def entries_lines(entries: Mapping[str, Any]) -> list[str]:
    """Discovered fleet entries as YAML to complete and paste under ``nodes:``."""
    if not entries:
        return []
    import yaml

    text = yaml.safe_dump({"nodes": dict(entries)}, default_flow_style=False, sort_keys=False)
    return ["", "to complete and add to the fleet file:", *text.rstrip().splitlines()]


def progress_line(info: Mapping[str, Any]) -> str:
    """``step 2 of 3: start lxc jellyfin via Proxmox API of pve1… waiting for Proxmox reports lxc 201 running``"""
    return f"step {info['index']} of {info['total']}: {info['title']}… waiting for {info['wait_for']}"


def done_line(step: StepTiming) -> str:
    took = f" in {step.seconds:.1f}s" if step.seconds is not None else ""
    what = "done" if step.changed or step.changed is None else "already so, nothing changed"
    return f"step {step.index} of {step.total}: {what}{took}"


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _failure_message(result: Mapping[str, Any]) -> str:
    message = result.get("msg") or result.get("stderr") or result.get("reason") or "failed"
    return str(message).strip()


def _event_time(event: Mapping[str, Any]) -> float | None:
    created = event.get("created")
    if not created:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        return None


# =========================================================================== I/O: running playbooks


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
    root = Path(given) if given else Path(__file__).resolve().parents[2]
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


# =========================================================================== the CLI


def add_power_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``wake``, ``shutdown`` and ``discover`` to the ``wakegrid`` command's subparsers.

    Each sets ``handler`` (``args.handler(args)`` returns the exit code).
    """
    fleet_help = f"the fleet file (default: ${FLEET_ENV})"

    wake = commands.add_parser(
        "wake",
        help="start a node: its dependencies and hosts first, each step waiting until up",
        description="Observe the fleet, plan the start of NODE and run it step by step (playbooks/wake.yml).",
    )
    wake.add_argument("node", metavar="NODE")
    wake.add_argument("--fleet", metavar="FILE", default=os.environ.get(FLEET_ENV), help=fleet_help)
    wake.add_argument("--check", action="store_true", help="print the plan only, change nothing")
    wake.set_defaults(handler=_wake)

    shutdown = commands.add_parser(
        "shutdown",
        help="stop a node: what it hosts first, then dependencies nobody needs (proposed when they ask to be)",
        description="Observe the fleet, plan the shutdown of NODE and run it step by step (playbooks/shutdown.yml).",
    )
    shutdown.add_argument("node", metavar="NODE")
    shutdown.add_argument("--fleet", metavar="FILE", default=os.environ.get(FLEET_ENV), help=fleet_help)
    shutdown.add_argument(
        "--confirm",
        metavar="NODES",
        action="append",
        default=[],
        help="also shut down these proposed (confirm_shutdown) dependencies; comma-separated or repeated",
    )
    shutdown.add_argument(
        "--include-dependants",
        action="store_true",
        help="stop running nodes that still need NODE first, instead of refusing",
    )
    shutdown.add_argument("--check", action="store_true", help="print the plan only, change nothing")
    shutdown.set_defaults(handler=_shutdown)

    discover = commands.add_parser(
        "discover",
        help="list the guests or containers of a Proxmox or Docker host that the fleet does not know",
        description="Ask HOST's Proxmox and/or Docker API what runs there (playbooks/discover.yml).",
    )
    discover.add_argument("host", metavar="HOST", help="a fleet node with proxmox or docker")
    discover.add_argument("--fleet", metavar="FILE", default=os.environ.get(FLEET_ENV), help=fleet_help)
    discover.set_defaults(handler=_discover)


def _fleet_or_exit(args: argparse.Namespace, out: TextIO) -> Fleet | int:
    from wakegrid.model import FleetError, load_fleet

    if not args.fleet:
        print(f"wakegrid: no fleet file: give --fleet FILE or set {FLEET_ENV}", file=out)
        return EXIT_USAGE
    try:
        return load_fleet(args.fleet)
    except FleetError as exc:
        print(exc.render(), file=out)
        return EXIT_INVALID
    except OSError as exc:
        print(f"wakegrid: cannot read {args.fleet}: {exc.strerror}", file=out)
        return EXIT_USAGE


def _power(args: argparse.Namespace, playbook: str, extravars: dict[str, Any], *, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    fleet = _fleet_or_exit(args, err)
    if isinstance(fleet, int):
        return fleet
    names = [args.node, *extravars.get("confirm", [])]
    unknown = [name for name in names if name not in fleet.nodes]
    if unknown:
        print(f"wakegrid: unknown node {unknown[0]!r} (nodes: {', '.join(fleet.nodes)})", file=err)
        return EXIT_USAGE

    def show(line: str) -> None:
        print(line, flush=True)

    result = run_playbook(playbook, args.fleet, extravars, check=args.check, on_line=show)
    return report(result, err=err)


def report(result: RunResult, *, err: TextIO | None = None) -> int:
    """The closing lines of a run, and its exit code."""
    err = err or sys.stderr
    progress = result.progress
    if result.blocked:
        print("wakegrid: blocked, nothing was done:", file=err)
        for reason in progress.plan["blocked"]:  # type: ignore[index]
            print(f"  - {reason}", file=err)
        return EXIT_BLOCKED
    if result.rc != 0:
        print(f"wakegrid: {progress.failure or 'the playbook failed'}", file=err)
        return EXIT_FAILED
    plan = progress.plan or {}
    for note in plan.get("kept") or []:
        print(f"stays up: {note['node']}: {note['reason']}")
    for note in plan.get("proposed") or []:
        print(f"proposed, not done: shut down {note['node']} (run again with --confirm {note['node']})")
    if progress.steps:
        count = len(progress.steps)
        print(
            f"done: {count} step{'s' if count != 1 else ''} in {result.seconds:.1f}s: "
            f"{progress.working:.1f}s acting and waiting, {result.overhead:.1f}s of overhead "
            f"(observing and planning {progress.plan_seconds or 0.0:.1f}s)"
        )
    return EXIT_OK


def _wake(args: argparse.Namespace) -> int:
    return _power(args, "wake", {"node": args.node})


def _shutdown(args: argparse.Namespace) -> int:
    confirm = [name.strip() for item in args.confirm for name in item.split(",") if name.strip()]
    extravars: dict[str, Any] = {"node": args.node, "confirm": confirm, "include_dependants": args.include_dependants}
    return _power(args, "shutdown", extravars)


def _discover(args: argparse.Namespace, *, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    fleet = _fleet_or_exit(args, err)
    if isinstance(fleet, int):
        return fleet
    node = fleet.nodes.get(args.host)
    if node is None or (node.proxmox is None and node.docker is None):
        capable = [name for name, n in fleet.nodes.items() if n.proxmox is not None or n.docker is not None]
        print(
            f"wakegrid: {args.host!r} is not a node with proxmox or docker (those are: {', '.join(capable)})", file=err
        )
        return EXIT_USAGE
    result = run_playbook("discover", args.fleet, {"host": args.host}, on_line=print)
    return report(result, err=err)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wakegrid.actuate wake|shutdown|discover …`` (the same as ``wakegrid …``)."""
    parser = argparse.ArgumentParser(
        prog="wakegrid", description="Power fleet nodes through the collection's playbooks."
    )
    add_power_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
