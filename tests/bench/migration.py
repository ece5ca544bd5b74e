"""Client-visible downtime of an LXC migration in the lab, split into PVE's restart and the edge noticing.

    flock /tmp/wakegrid-lab.lock sudo .venv/bin/python tests/bench/migration.py [--rounds 3] [--rate 20] \
        [--bwlimit KIB_S] [--guest jellyfin --source pve1 --target pve2 --service stream]

Brings the lab up (idempotent), then for each round moves the guest source → target and back with
:func:`wakegrid.cli.migrate.run_migration` (``playbooks/migrate_lxc.yml``) while ``loadgen.py`` sends
HTTPS through the edge from the lab's client host (tests/bench/failover.py). For each move:

- ``pve_restart``: what Proxmox VE's restart costs, from the ``shutdown CT`` line to the end of the
  migration task (which ends once the container started on the target) - the module's ``downtime``;
- ``absent``: how long the clients saw no answer from the guest (last answer by it before the
  shutdown → first answer by it after the move); the edge sends them elsewhere meanwhile (the
  service's other backends) or fails them;
- ``edge_added``: ``absent`` minus ``pve_restart`` - the time the edge took to notice the guest
  answering again (its active health check, every ``health.interval``) plus the time it took to
  notice it gone; the goal is < 1 s;
- ``failed``: requests that got no answer or an error the edge made up.

Nothing is asserted (tests/integration/test_migrate_lab.py asserts); the guest ends on its source.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import failover as rehearsal  # tests/bench/failover.py

REPO = Path(__file__).resolve().parents[2]


def measure(lab, tgt, guest: str, target: str, rate: float, bwlimit: float | None) -> dict:
    from wakegrid.cli.migrate import run_migration

    load = rehearsal.LoadRun(tgt, rate, timeout=10)
    try:
        time.sleep(2)
        outcome = run_migration(lab.fleet_path, guest, target, bwlimit=bwlimit)
        ended = outcome.events[-1]["time"] if outcome.events else time.time()
        deadline = time.time() + 30
        while time.time() < deadline:
            if any(r.get("node") == guest and r["start"] > ended for r in load.snapshot()):
                break
            time.sleep(0.2)
        time.sleep(1)
    finally:
        records = load.stop()
    if not outcome.ok:
        raise SystemExit(f"migration to {target} failed: {outcome.failure}")
    stopped = outcome.stopped_at or ended
    last = max((r["start"] for r in records if r.get("node") == guest and r["start"] < stopped), default=None)
    first = min((r["start"] for r in records if r.get("node") == guest and r["start"] >= ended), default=None)
    absent = first - last if first is not None and last is not None else None
    restart = outcome.result.get("downtime")
    return {
        "to": target,
        "pve_restart": restart,
        "absent": round(absent, 2) if absent is not None else None,
        "edge_added": round(absent - restart, 2) if absent is not None and restart is not None else None,
        "noticed_after_task": round(first - ended, 2) if first is not None else None,
        "failed": sum(1 for r in records if rehearsal.failed(r)),
        "requests": len(records),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", default=str(REPO / "inventories" / "lab" / "lab.fleet.yml"))
    parser.add_argument("--guest", default="jellyfin")
    parser.add_argument("--source", default="pve1")
    parser.add_argument("--target", default="pve2")
    parser.add_argument("--service", default="stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--bwlimit", type=float, help="KiB/s: a slower copy, a longer restart")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from wakegrid.lab.runtime import Lab

    lab = Lab(args.fleet, log=lambda *_: None)
    lab.up()
    tgt = rehearsal.target(lab, args.service)
    rehearsal.install_loadgen(tgt)
    rows = []
    for _ in range(args.rounds):
        for target in (args.target, args.source):
            rows.append(measure(lab, tgt, args.guest, target, args.rate, args.bwlimit))
            print(json.dumps(rows[-1]) if args.json else _row(rows[-1]), flush=True)
    for key in ("pve_restart", "absent", "edge_added"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            print(f"median {key}: {statistics.median(values):.2f}s over {len(values)} moves")
    return 0


def _row(row: dict) -> str:
    def s(value):
        return "-" if value is None else f"{value:.2f}s"

    return (
        f"→ {row['to']}: PVE restart {s(row['pve_restart'])}, clients without the guest {s(row['absent'])}, "
        f"edge added {s(row['edge_added'])} (noticed {s(row['noticed_after_task'])} after the task), "
        f"{row['failed']}/{row['requests']} failed"
    )


if __name__ == "__main__":
    sys.exit(main())
