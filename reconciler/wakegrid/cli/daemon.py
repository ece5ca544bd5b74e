"""``wakegrid daemon`` (the reconciler, long-running) and ``wakegrid reconcile --once`` (one round, printed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from typing import Any

from wakegrid.actuate import plan_data
from wakegrid.exitcodes import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from wakegrid.render import plan_lines

DEFAULT_STATE_DIR = "/var/lib/wakegrid"


def add_daemon_commands(commands: argparse._SubParsersAction) -> None:
    daemon = commands.add_parser(
        "daemon",
        help="run the reconciler: observe, decide and act in a loop, with its HTTP endpoint",
        description=(
            "Keep the fleet as the fleet file says: observe power, health, tunnels and activity every round, "
            "decide with the policies (always_on, scheduled, on_demand), run the collection's playbooks. "
            "SIGHUP re-reads the fleet; SIGTERM stops after the runs in flight (up to stop_grace)."
        ),
    )
    _common(daemon)
    daemon.add_argument("--dry-run", action="store_true", help="decide and log, never act")
    daemon.add_argument("--log-format", choices=("json", "text"), help="log lines on stderr (default: the config's)")
    daemon.set_defaults(handler=_daemon)

    reconcile = commands.add_parser(
        "reconcile",
        help="one round of the reconciler: what it sees, what it would do and why (--dry-run), or does",
        description=(
            "One observation round and one decision round, printed: each start, stop and pool change, and "
            "every node and service kept as it is, with the reason. Without --dry-run the actions are run "
            "and waited for."
        ),
    )
    _common(reconcile, state_default=None)
    reconcile.add_argument("--once", action="store_true", required=True, help="one round, then exit (required)")
    reconcile.add_argument("--dry-run", action="store_true", help="print the decisions, act on nothing")
    reconcile.add_argument("--json", action="store_true", help="machine-readable output")
    reconcile.set_defaults(handler=_reconcile)


def _common(parser: argparse.ArgumentParser, state_default: str | None = DEFAULT_STATE_DIR) -> None:
    parser.add_argument("--fleet", required=True, metavar="FILE", help="the *.fleet.yml file (the desired state)")
    parser.add_argument("--config", metavar="FILE", help="the daemon's settings (YAML; defaults fit the edge host)")
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default=state_default,
        help=f"where the journal lives (default: {state_default or 'a temporary one, thrown away'})",
    )


def _load(args: argparse.Namespace):
    from wakegrid.daemon.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _daemon(args: argparse.Namespace) -> int:
    from wakegrid.daemon.logs import setup_logging
    from wakegrid.daemon.service import serve
    from wakegrid.journal import JournalError
    from wakegrid.model import FleetError

    config = _load(args)
    if config is None:
        return EXIT_INVALID
    setup_logging(args.log_format or config.log_format)
    try:
        return asyncio.run(serve(args.fleet, config, args.state_dir, dry_run=args.dry_run))
    except FleetError as exc:
        print(exc.render(), file=sys.stderr)
        return EXIT_INVALID
    except JournalError as exc:
        print(f"wakegrid daemon: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _reconcile(args: argparse.Namespace) -> int:
    from wakegrid.daemon.logs import setup_logging
    from wakegrid.journal import JournalError

    config = _load(args)
    if config is None:
        return EXIT_INVALID
    setup_logging("text")
    try:
        if args.state_dir is None:
            with tempfile.TemporaryDirectory(prefix="wakegrid-reconcile-") as state_dir:
                return asyncio.run(_once(args, config, state_dir))
        return asyncio.run(_once(args, config, args.state_dir))
    except JournalError as exc:
        print(f"wakegrid reconcile: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _once(args: argparse.Namespace, config, state_dir: str) -> int:
    from wakegrid.daemon.reconciler import Reconciler
    from wakegrid.daemon.service import open_store

    store = open_store(state_dir)
    try:
        reconciler = Reconciler(args.fleet, config, store, dry_run=args.dry_run)
        fleet = reconciler.fleet
        observed = await reconciler.observe(fleet)
        reconciler._after_observation(fleet, observed)
        decisions = reconciler.decide(fleet, observed)
        report = _report(fleet, observed, decisions)
        if args.json:
            print(json.dumps(report, indent=2, default=str))
        else:
            print("\n".join(_lines(report, dry_run=args.dry_run)))
        if args.dry_run or decisions.idle:
            return EXIT_OK
        reconciler.act(fleet, decisions)
        results = await reconciler.wait_for_runs()
        for line in results:
            print(line)
        return EXIT_OK if all(line.startswith("done") for line in results) else EXIT_FAILED
    finally:
        store.close()


def _report(fleet, observed, decisions) -> dict[str, Any]:
    from wakegrid.observe.power import as_observed

    fleet = as_observed(fleet, observed.power)  # the plans were made where migrated guests run now
    states = {name: {"power": s.power, "detail": s.detail} for name, s in observed.power.items()}
    return {
        "at": decisions.at.isoformat(),
        "wanted": dict(decisions.wanted),
        "starts": [
            {"node": s.node, "reason": s.reason, "services": list(s.services), "plan": plan_data(fleet, s.plan, states)}
            for s in decisions.starts
        ],
        "stops": [
            {"node": s.node, "reason": s.reason, "services": list(s.services), "plan": plan_data(fleet, s.plan, states)}
            for s in decisions.stops
        ],
        "pools": [
            {"service": p.service, "excluded": list(p.excluded), "reasons": list(p.reasons)} for p in decisions.pools
        ],
        "decisions": [{"subject": d.subject, "verdict": d.verdict, "reason": d.reason} for d in decisions.log],
        "observed": {
            "power": states,
            "health": {
                f"{svc}[{i}]": {"state": h.state, "detail": h.detail} for (svc, i), h in observed.health.items()
            },
            "tunnels": {site: {"state": t.state, "detail": t.detail} for site, t in observed.tunnels.items()},
            "activity": {
                svc: {"in_flight": a.in_flight, "last_request": a.last_request, "detail": a.detail}
                for svc, a in observed.activity.items()
            },
        },
    }


def _lines(report: dict[str, Any], *, dry_run: bool) -> list[str]:
    lines = [f"reconcile at {report['at']}{' (dry run: nothing is done)' if dry_run else ''}"]
    for entry in report["decisions"]:
        lines.append(f"{entry['verdict']:>6}  {entry['subject']}: {entry['reason']}")
    for kind in ("starts", "stops"):
        for action in report[kind]:
            lines.append("")
            lines += plan_lines(action["plan"])
    if not (report["starts"] or report["stops"] or report["pools"]):
        lines.append("nothing to do")
    return lines
