"""The ``wakegrid`` command line: ``validate`` here, ``plan`` in :mod:`~wakegrid.cli.plan`,
``wake``/``shutdown``/``discover`` in :mod:`~wakegrid.cli.power`, ``daemon``/``reconcile`` in
:mod:`~wakegrid.cli.daemon`, ``lab`` in :mod:`wakegrid.lab.cli`.

Exit codes scripts can rely on:
  0  success (fleet valid; plan runnable)
  1  the fleet file is invalid (every problem is listed)
  2  usage error (bad arguments, unknown node)
  3  the plan is blocked (it says why; nothing would be done)
  4  a step failed while acting (wake, shutdown, discover: the message names the step)
  141  the reader of the output went away (`wakegrid … | head`): nothing more is printed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from wakegrid import __version__
from wakegrid.cli.daemon import add_daemon_commands
from wakegrid.cli.migrate import add_migrate_command
from wakegrid.cli.plan import add_plan_command
from wakegrid.cli.power import add_power_commands
from wakegrid.exitcodes import EXIT_BLOCKED, EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_USAGE
from wakegrid.graph import PlanError
from wakegrid.model import FleetError, load_fleet

__all__ = ["EXIT_BLOCKED", "EXIT_BROKEN_PIPE", "EXIT_FAILED", "EXIT_INVALID", "EXIT_OK", "EXIT_USAGE", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a reader gone shows up here for short outputs
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly. Point stdout at devnull so the
        # interpreter's own flush at exit does not fail again (Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
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

    add_plan_command(commands)

    add_power_commands(commands)

    add_daemon_commands(commands)
    add_migrate_command(commands)

    # Listed for --help; dispatched in main() so the lab's own parser owns its options.
    commands.add_parser("lab", help="build and drive a whole fleet on this machine (wakegrid lab --help)")
    return parser


# --------------------------------------------------------------------------- validate


def _validate(args: argparse.Namespace) -> int:
    fleet = load_fleet(args.fleet)
    summary = {
        "sites": len(fleet.sites),
        "nodes": len(fleet.nodes),
        "services": len(fleet.services),
        "dependencies": sum(len(needs) for needs in fleet.dependencies.values()),
        "stacks": len(fleet.stacks),
    }
    if args.json:
        print(json.dumps({"valid": True, "file": args.fleet, **summary}))
    else:
        print(
            f"{args.fleet}: valid fleet: {summary['sites']} sites, {summary['nodes']} nodes, "
            f"{summary['services']} services, {summary['dependencies']} dependencies, {summary['stacks']} stacks"
        )
    return EXIT_OK


def _report_invalid(error: FleetError, *, as_json: bool) -> int:
    if as_json:
        problems = [{"path": p.path, "reason": p.reason, "line": p.line} for p in error.problems]
        print(json.dumps({"valid": False, "file": error.source, "problems": problems}))
    else:
        print(error.render(), file=sys.stderr)
    return EXIT_INVALID
