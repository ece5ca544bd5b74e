"""Actuator overhead: from a decision (``Actuator.submit``) to the first task of the playbook running.

    .venv/bin/python tests/bench/actuator.py [--fleet FLEET] [--node NODE] [--runs N] [--parallel N]

Submits ``--runs`` starts of ``--node`` one after the other through the daemon's
:class:`wakegrid.actuate.service.Actuator` (real ansible-runner, the real collection's ``wake.yml``
in check mode, the fleet as inventory through the ``wakegrid.fleet.fleet`` plugin) and cancels each
as soon as its first task ran: what is measured is start-up, never the lab. The first task's time
is the runner event's own timestamp (``playbook_on_task_start``). With ``--parallel N``, N starts of
different nodes are submitted at once each round (the first task of each, from the same submit).

Prints the median, min and max of: submit → run started (queue and thread hand-off), run started →
first task (ansible-runner, ansible-playbook start-up, inventory), submit → first task. Nothing is
asserted: the figures depend on the machine. Check mode, and each run is cancelled a moment after its
first task: nothing is started.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from wakegrid.actuate.service import Actuator
from wakegrid.bus import EventBus
from wakegrid.journal import SqliteStore
from wakegrid.model import load_fleet

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"


async def measure(fleet: Path, nodes: list[str], runs: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"queue": [], "startup": [], "total": []}
    with tempfile.TemporaryDirectory(prefix="wakegrid-bench-") as state:
        journal = SqliteStore(Path(state) / "journal.sqlite")
        bus = EventBus()
        actuator = Actuator(lambda: fleet, journal, bus, max_parallel=len(nodes), check=True)
        for number in range(runs):
            async with bus.subscribe(["action:"]) as events:
                handles = [await actuator.submit("start", node, f"bench run {number}", timeout=120) for node in nodes]
                waiting = {handle.id: handle for handle in handles}
                async for event in events:  # each run is cancelled once its playbook runs its first task
                    handle = waiting.get(event["action_id"])
                    if handle is not None and event["kind"] in ("playbook_started", "finished"):
                        handle.cancel("bench: start-up measured")
                        del waiting[handle.id]
                    if not waiting:
                        break
                for handle in handles:
                    result = await handle.wait()
                    if result.first_task_at is None:
                        print(f"run {number} {handle.target}: no task ran ({result.failure})", file=sys.stderr)
                        continue
                    total = result.first_task_at - handle.submitted_at.timestamp()
                    figures["queue"].append(result.queued_seconds)
                    figures["startup"].append(total - result.queued_seconds)
                    figures["total"].append(total)
        await actuator.shutdown(grace=0)
        journal.close()
    return figures


def table(figures: dict[str, list[float]], nodes: int) -> str:
    rows = [
        ("submit → run started", figures["queue"]),
        ("run started → first task", figures["startup"]),
        ("submit → first task", figures["total"]),
    ]
    heading = f"ms ({len(figures['total'])} runs, {nodes} at once)"
    out = [f"{heading:<32}{'median':>9}{'min':>9}{'max':>9}"]
    for name, values in rows:
        if values:
            median, low, high = (1000 * f(values) for f in (statistics.median, min, max))
            out.append(f"{name:<32}{median:>9.0f}{low:>9.0f}{high:>9.0f}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", type=Path, default=LAB_FLEET)
    parser.add_argument("--node", default=None, help="the node to start (default: the fleet's first non-gateway)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    fleet = load_fleet(args.fleet)
    gateways = {site.gateway for site in fleet.sites.values()}
    candidates = [name for name in fleet.nodes if name not in gateways]
    if args.node:
        candidates = [args.node, *(name for name in candidates if name != args.node)]
    nodes = candidates[: max(1, args.parallel)]
    figures = asyncio.run(measure(args.fleet.resolve(), nodes, args.runs))
    print(table(figures, len(nodes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
