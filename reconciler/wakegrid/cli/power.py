"""``wakegrid wake|shutdown|discover``: a collection playbook run through the actuator, live.

Each command checks the request against the fleet, runs its playbook
(:func:`wakegrid.actuate.run_playbook`), prints the progress lines as they come and closes
with :func:`report`: what stays up, what is only proposed, the run's time, the exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from wakegrid.actuate import RunResult, run_playbook
from wakegrid.exitcodes import EXIT_BLOCKED, EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_USAGE
from wakegrid.model import Fleet
from wakegrid.observe.power import PowerState
from wakegrid.render import override_hints

FLEET_ENV = "WAKEGRID_FLEET"


def add_power_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``wake``, ``shutdown`` and ``discover`` to the ``wakegrid`` command's subparsers.

    Each sets ``handler`` (``args.handler(args)`` returns the exit code).
    """
    wake = _command(
        commands,
        "wake",
        help="start a node: its dependencies and hosts first, each step waiting until up",
        description="Observe the fleet, plan the start of NODE and run it step by step (playbooks/wake.yml).",
    )
    wake.set_defaults(handler=_wake)

    shutdown = _command(
        commands,
        "shutdown",
        help="stop a node: what it hosts first, then dependencies nobody needs (proposed when they ask to be)",
        description="Observe the fleet, plan the shutdown of NODE and run it step by step (playbooks/shutdown.yml).",
    )
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
    shutdown.add_argument(
        "--force-infrastructure",
        action="store_true",
        help="allow stopping a site gateway or the edge (or what hosts one): a person's decision, never automatic",
    )
    shutdown.add_argument(
        "--drain",
        action="store_true",
        help="first migrate the machine's LXC guests to another up machine of its Proxmox cluster, instead of "
        "stopping them (wakegrid migrate), then shut it down",
    )
    shutdown.set_defaults(handler=_shutdown)

    discover = _command(
        commands,
        "discover",
        target="host",
        target_help="a fleet node with proxmox or docker",
        help="list the guests or containers of a Proxmox or Docker host that the fleet does not know",
        description="Ask HOST's Proxmox and/or Docker API what runs there (playbooks/discover.yml).",
    )
    discover.set_defaults(handler=_discover)


def _command(
    commands: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    target: str = "node",
    target_help: str | None = None,
) -> argparse.ArgumentParser:
    """A command on one fleet node, with ``--fleet``, and ``--check`` when it acts on the node."""
    parser = commands.add_parser(name, help=help, description=description)
    parser.add_argument(target, metavar=target.upper(), help=target_help)
    parser.add_argument(
        "--fleet", metavar="FILE", default=os.environ.get(FLEET_ENV), help=f"the fleet file (default: ${FLEET_ENV})"
    )
    if target == "node":
        parser.add_argument("--check", action="store_true", help="print the plan only, change nothing")
    return parser


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
        for hint in override_hints(progress.plan.get("overrides") or [], flags=True):  # type: ignore[union-attr]
            print(f"  {hint}", file=err)
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
    extravars: dict[str, Any] = {
        "node": args.node,
        "confirm": confirm,
        "include_dependants": args.include_dependants,
        "force_infrastructure": args.force_infrastructure,
    }
    if getattr(args, "drain", False):
        moved = _drain(args)
        if isinstance(moved, int):
            return moved
        extravars["moved"] = moved
    return _power(args, "shutdown", extravars)


def drain_plan(fleet: Fleet, machine: str, states: Mapping[str, PowerState]) -> tuple[list[str], str | None, list[str]]:
    """Which LXC guests run on ``machine`` now, the up machine of its cluster to move them to, and what blocks.

    A guest runs on ``machine`` when the observation found it there (its parent's listing, or a peer's
    after a migration: :attr:`PowerState.host`). A guest of the cluster whose power is unknown blocks
    the drain (it might be on ``machine``). VMs are not drained: the shutdown stops them as before.
    """
    node = fleet.nodes.get(machine)
    if node is None or node.kind != "machine" or node.proxmox is None or not node.proxmox.cluster:
        return (
            [],
            None,
            [f"{machine} is not a Proxmox VE machine of a declared cluster (proxmox.cluster): nothing to drain to"],
        )
    members = list(fleet.cluster_members(node.proxmox.cluster))
    guests, blocked = [], []
    for name, guest in fleet.nodes.items():
        if guest.kind != "lxc" or guest.parent not in members:
            continue
        state = states.get(name)
        if state is None or state.power == "unknown":
            blocked.append(f"{name} is unknown ({state.detail if state else 'not observed'}): it may be on {machine}")
            continue
        if (state.host or guest.parent) == machine and not (state.host is None and state.detail.startswith("its host")):
            guests.append(name)
    target = next((m for m in members if m != machine and states.get(m) and states[m].up), None)
    if guests and target is None:
        blocked.append(f"no other machine of cluster {node.proxmox.cluster} is up to take {', '.join(guests)}")
    return guests, target, blocked


def _drain(args: argparse.Namespace, *, err: TextIO | None = None) -> list[str] | int:
    """Migrate the machine's LXC guests away (``--drain``); the guests moved, or an exit code."""
    from wakegrid.cli.migrate import report_migration, run_migration
    from wakegrid.observe.power import observe_power

    err = err or sys.stderr
    fleet = _fleet_or_exit(args, err)
    if isinstance(fleet, int):
        return fleet
    if args.node not in fleet.nodes:
        print(f"wakegrid: unknown node {args.node!r} (nodes: {', '.join(fleet.nodes)})", file=err)
        return EXIT_USAGE
    node = fleet.nodes[args.node]
    cluster = node.proxmox.cluster if node.proxmox else None
    members = list(fleet.cluster_members(cluster)) if cluster else [args.node]
    names = [*members, *(n for n, g in fleet.nodes.items() if g.kind == "lxc" and g.parent in members)]
    guests, target, blocked = drain_plan(fleet, args.node, observe_power(fleet, names))
    if blocked:
        print("wakegrid: cannot drain, nothing was done:", file=err)
        for reason in blocked:
            print(f"  - {reason}", file=err)
        return EXIT_BLOCKED if guests or cluster else EXIT_USAGE
    if not guests:
        print(f"drain: no LXC guest runs on {args.node}")
        return []
    for guest in guests:
        print(f"drain: migrating {guest} from {args.node} to {target}", flush=True)

        def show(event: dict[str, Any], guest: str = guest) -> None:
            if event.get("phase") in ("shutdown", "start", "done", "failed") or event.get("error"):
                print(
                    f"  {guest}: {event.get('percent', 0)}% {event.get('phase')}: {event.get('message', '')}",
                    flush=True,
                )

        outcome = run_migration(args.fleet, guest, str(target), check=args.check, on_event=show)
        code = report_migration(outcome, guest, str(target), out=sys.stdout, err=err)
        if code != EXIT_OK:
            print(f"wakegrid: drain stopped: {args.node} is not shut down", file=err)
            return code
    return guests


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
