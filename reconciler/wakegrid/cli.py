"""The ``wakegrid`` command line.

Exit codes scripts can rely on:
  0  success (fleet valid; plan runnable)
  1  the fleet file is invalid (every problem is listed)
  2  usage error (bad arguments, unknown node)
  3  the plan is blocked (it says why; nothing would be done)
  4  a step failed while acting (wake, shutdown, discover: the message names the step)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from wakegrid import __version__
from wakegrid.actuate import add_power_commands
from wakegrid.exitcodes import EXIT_BLOCKED, EXIT_INVALID, EXIT_OK, EXIT_USAGE
from wakegrid.graph import Plan, PlanError, start_plan, stop_plan
from wakegrid.model import Fleet, FleetError, load_fleet


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:
        from wakegrid.lab.cli import main as lab_main  # the lab pulls in Docker: load it only when asked

        return lab_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except FleetError as exc:
        return _report_invalid(exc, as_json=getattr(args, "json", False))
    except PlanError as exc:
        print(f"wakegrid: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wakegrid",
        description="Multi-site high availability and power frugality for self-hosted fleets.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wakegrid {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a fleet file and list every problem")
    validate.add_argument("fleet", metavar="FLEET", help="a *.fleet.yml file")
    validate.add_argument("--json", action="store_true", help="machine-readable output")
    validate.set_defaults(handler=_validate)

    plan = commands.add_parser(
        "plan",
        help="preview the ordered steps to start or stop a node",
        description=(
            "Preview what starting or stopping a node would do, step by step, and through which channel. "
            "Without --up/--down the plan assumes that, for --start, only the site gateways are up and, "
            "for --stop, everything is up."
        ),
    )
    plan.add_argument("fleet", metavar="FLEET", help="a *.fleet.yml file")
    action = plan.add_mutually_exclusive_group(required=True)
    action.add_argument("--start", metavar="NODE", help="plan to start NODE (dependencies and hosts first)")
    action.add_argument("--stop", metavar="NODE", help="plan to stop NODE (hosted children first)")
    plan.add_argument("--up", metavar="NODES", type=_names, default=[], help="comma-separated nodes known to be up")
    plan.add_argument("--down", metavar="NODES", type=_names, default=[], help="comma-separated nodes known to be down")
    plan.add_argument(
        "--include-dependants",
        action="store_true",
        help="with --stop: also stop running nodes that depend on what is stopped, instead of refusing",
    )
    plan.add_argument(
        "--confirm",
        metavar="NODES",
        type=_names,
        default=[],
        help="with --stop: confirm the shutdown of these confirm_shutdown nodes instead of only proposing it",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=_plan)

    add_power_commands(commands)

    # Listed for --help; dispatched in main() so the lab's own parser owns its options.
    commands.add_parser("lab", help="build and drive a whole fleet on this machine (wakegrid lab --help)")
    return parser


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


# --------------------------------------------------------------------------- validate


def _validate(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    summary = {
        "sites": len(fleet.sites),
        "nodes": len(fleet.nodes),
        "services": len(fleet.services),
        "dependencies": sum(len(needs) for needs in fleet.dependencies.values()),
    }
    if args.json:
        print(json.dumps({"valid": True, "file": args.fleet, **summary}))
    else:
        print(
            f"{args.fleet}: valid fleet: {summary['sites']} sites, {summary['nodes']} nodes, "
            f"{summary['services']} services, {summary['dependencies']} dependencies"
        )
    return EXIT_OK


def _report_invalid(error: FleetError, *, as_json: bool) -> int:
    if as_json:
        problems = [{"path": p.path, "reason": p.reason, "line": p.line} for p in error.problems]
        print(json.dumps({"valid": False, "file": error.source, "problems": problems}))
    else:
        print(error.render(), file=sys.stderr)
    return EXIT_INVALID


# --------------------------------------------------------------------------- plan


def _plan(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    for name in [*args.up, *args.down, *args.confirm]:
        if name not in fleet.nodes:
            raise PlanError(f"unknown node {name!r} (nodes: {', '.join(fleet.nodes)})")
    up = _assumed_up(fleet, starting=args.start is not None, up=args.up, down=args.down)
    if args.start:
        plan = start_plan(fleet, args.start, up)
    else:
        plan = stop_plan(fleet, args.stop, up, include_dependants=args.include_dependants, confirmed=args.confirm)
    if args.json:
        print(json.dumps({**plan.to_dict(), "assumed_up": sorted(up)}, indent=2))
    else:
        print(render_plan(plan, fleet, up))
    return EXIT_OK if plan.runnable else EXIT_BLOCKED


def _assumed_up(fleet: Fleet, *, starting: bool, up: list[str], down: list[str]) -> set[str]:
    assumed = {site.gateway for site in fleet.sites.values()} if starting else set(fleet.nodes)
    # A node cannot run on a host that is down, nor a host be down under a running node.
    for name in down:
        assumed -= {name, *fleet.descendants(name)}
    for name in up:
        assumed |= {name, *fleet.ancestors(name)}
    return assumed


def render_plan(plan: Plan, fleet: Fleet, up: set[str]) -> str:
    order = list(fleet.nodes)
    lines = [
        f"Plan: {plan.operation} {plan.target}",
        f"  assuming up: {', '.join(sorted(up, key=order.index)) or 'nothing'}",
        "",
    ]
    if plan.blocked:
        lines.append("Blocked, nothing will be done:")
        lines += [f"  - {reason}" for reason in plan.blocked]
        if plan.operation == "stop" and any("still needed by" in reason for reason in plan.blocked):
            lines.append("  (--include-dependants stops those dependants first)")
        return "\n".join(lines)
    width = max((len(f"{s.action} {s.kind} {s.node}") for s in plan.steps), default=0)
    for number, step in enumerate(plan.steps, 1):
        head = f"{step.action} {step.kind} {step.node}".ljust(width)
        lines.append(f"  {number:>2}. {head}  via {step.channel.describe(step.action)}  ({step.reason})")
        lines.append(f"      {' ' * len(str(number))}wait until {step.wait_for}")
    if not plan.steps:
        lines.append("  nothing to do")
    for title, notes in (("Skipped", plan.skipped), ("Kept up", plan.kept), ("Proposed", plan.proposed)):
        if notes:
            lines += ["", f"{title}:"] + [f"  - {note.node}: {note.reason}" for note in notes]
    if plan.proposed:
        names = ",".join(note.node for note in plan.proposed)
        lines.append(f"  (confirm with --confirm {names})")
    verb = "start" if plan.operation == "start" else "stop"
    summary = f"{len(plan.steps)} to {verb}"
    if plan.proposed:
        summary += f", {len(plan.proposed)} proposed"
    lines += ["", f"{summary}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
