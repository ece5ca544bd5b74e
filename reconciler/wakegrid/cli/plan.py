"""``wakegrid plan``: preview a start or a stop from assumed power states, observing nothing."""

from __future__ import annotations

import argparse
import json

from wakegrid.actuate import plan_data
from wakegrid.exitcodes import EXIT_BLOCKED, EXIT_OK
from wakegrid.graph import PlanError, start_plan, stop_plan
from wakegrid.model import Fleet, load_fleet
from wakegrid.render import plan_lines


def add_plan_command(commands: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the ``wakegrid`` command's subparsers (its ``handler`` returns the exit code)."""
    plan = commands.add_parser(
        "plan",
        help="preview the ordered steps to start or stop a node",
        description=(
            "Preview what starting or stopping a node would do, step by step, and through which channel. "
            "Nothing is observed: without --up/--down/--unknown the plan assumes that, for --start, only the "
            "site gateways are up and, for --stop, everything is up. A node given as unknown is never stopped, "
            "nor anything it could need; what it hosts is unknown too."
        ),
    )
    plan.add_argument("fleet", metavar="FLEET", help="a *.fleet.yml file")
    action = plan.add_mutually_exclusive_group(required=True)
    action.add_argument("--start", metavar="NODE", help="plan to start NODE (dependencies and hosts first)")
    action.add_argument("--stop", metavar="NODE", help="plan to stop NODE (hosted children first)")
    plan.add_argument("--up", metavar="NODES", type=_names, default=[], help="comma-separated nodes known to be up")
    plan.add_argument("--down", metavar="NODES", type=_names, default=[], help="comma-separated nodes known to be down")
    plan.add_argument(
        "--unknown",
        metavar="NODES",
        type=_names,
        default=[],
        help="comma-separated nodes whose power cannot be observed (and so what they host)",
    )
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
    plan.add_argument(
        "--force-infrastructure",
        action="store_true",
        help="with --stop: allow stopping a site gateway or the edge (or what hosts one); never automatic",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=_plan)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _plan(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    for name in [*args.up, *args.down, *args.unknown, *args.confirm]:
        if name not in fleet.nodes:
            raise PlanError(f"unknown node {name!r} (nodes: {', '.join(fleet.nodes)})")
    given = {"--up": args.up, "--down": args.down, "--unknown": args.unknown}
    for name in fleet.nodes:
        flags = [flag for flag, names in given.items() if name in names]
        if len(flags) > 1:
            raise PlanError(f"{name} is given with both {flags[0]} and {flags[1]}")
    up, unknown = _assumed_power(
        fleet, starting=args.start is not None, up=args.up, down=args.down, unknown=args.unknown
    )
    if args.start:
        plan = start_plan(fleet, args.start, up, unknown=unknown)
    else:
        plan = stop_plan(
            fleet,
            args.stop,
            up,
            unknown=unknown,
            include_dependants=args.include_dependants,
            confirmed=args.confirm,
            force_infrastructure=args.force_infrastructure,
        )
    if args.json:
        print(json.dumps({**plan.to_dict(), "assumed_up": sorted(up), "assumed_unknown": unknown}, indent=2))
    else:
        # Rendered as a run renders it, from the states assumed instead of observed.
        states = _assumed_states(fleet, up, unknown, down=args.down)
        print("\n".join(plan_lines(plan_data(fleet, plan, states), assumed=True, flags=True)))
    return EXIT_OK if plan.runnable else EXIT_BLOCKED


def _assumed_power(
    fleet: Fleet, *, starting: bool, up: list[str], down: list[str], unknown: list[str]
) -> tuple[set[str], dict[str, str]]:
    """The nodes assumed up, and those assumed unknown with why, as the observer would report them."""
    assumed = {site.gateway for site in fleet.sites.values()} if starting else set(fleet.nodes)
    # A node cannot run on a host that is down, nor a host be down under a running node.
    for name in down:
        assumed -= {name, *fleet.descendants(name)}
    unseen: dict[str, str] = {}
    for name in unknown:  # what an unknown node hosts is unknown too, as the observer says
        unseen[name] = "given with --unknown"
        for hosted in fleet.descendants(name):
            unseen.setdefault(hosted, f"its host {name} is unknown")
    for name in up:
        assumed |= {name, *fleet.ancestors(name)}
        for known in (name, *fleet.ancestors(name)):
            if known not in unknown:
                unseen.pop(known, None)
    assumed -= set(unseen)
    order = list(fleet.nodes)
    return assumed, {name: unseen[name] for name in sorted(unseen, key=order.index)}


def _assumed_states(
    fleet: Fleet, up: set[str], unknown: dict[str, str], *, down: list[str]
) -> dict[str, dict[str, str]]:
    """Every node's assumed power, in file order, shaped as the observer's states."""
    states = {}
    for name in fleet.nodes:
        if name in unknown:
            states[name] = {"power": "unknown", "detail": unknown[name]}
        elif name in up:
            states[name] = {"power": "up", "detail": ""}
        else:
            states[name] = {"power": "down", "detail": "given with --down" if name in down else ""}
    return states
