"""CPU time of the reconciler's decision core on a no-change tick of a large generated fleet.

    .venv/bin/python tests/bench/decide.py [--sites N] [--ticks N] [--profile]

Generates a fleet of 50 sites (a gateway and two Proxmox machines each, five Docker guests per
machine, four containers per guest: 2,650 nodes), 500 services of 4 backends (2,000 backends),
two on each of two neighbouring sites; in each guest, the other containers depend on its first
one (shared nodes). Policies: 2 in 5 always_on, 1 in 5 scheduled, 2 in 5 on_demand (half of
those in use, half asleep). Synthetic observations say everything is as wanted (what a wanted
service needs is up, the rest down, health follows power, one site's tunnel stale) and memory holds the
pools a first tick decided. Then ``decide`` runs ``--ticks`` times, 2 s apart, and this prints
the median and max CPU time (time.process_time) and what the last tick would do (goal: 0 starts,
0 stops, 0 pool changes; CPU goal ≤ 100 ms). Nothing is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

from wakegrid.decide import _index, decide
from wakegrid.model import parse_fleet
from wakegrid.observe.power import PowerState
from wakegrid.state import Activity, Health, Memory, Observed, Tunnel

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a Monday, 11:00 in Paris: inside the scheduled windows


def fleet_text(sites: int = 50, machines: int = 2, guests: int = 5, containers: int = 4) -> str:
    out = [
        "plugin: wakegrid.fleet.fleet",
        "edge:",
        "  host: vps",
        "  domain: example.net",
        "  wireguard: {address: 10.200.0.1/24, endpoint: 'vps.example.net:51820'}",
        "sites:",
    ]
    for s in range(sites):
        out.append(
            f"  site{s}: {{gateway: gw{s}, lan: 10.{s}.0.0/16, priority: {s}, wireguard: {{address: 10.201.{s}.1/16}}}}"
        )
    out.append("nodes:")
    dependencies: list[str] = []
    pairs: dict[int, list[list[str]]] = {s: [] for s in range(sites)}  # site → pairs of containers
    for s in range(sites):
        out.append(f"  gw{s}: {{kind: machine, site: site{s}, address: 10.{s}.255.1}}")
        for m in range(machines):
            machine = f"pve{s}-{m}"
            out += [
                f"  {machine}:",
                "    kind: machine",
                f"    site: site{s}",
                f"    address: 10.{s}.{m}.1",
                f'    mac: "52:54:{s // 256:02x}:{s % 256:02x}:{m:02x}:01"',
                "    confirm_shutdown: false",
                "    proxmox:",
                f'      api: "https://10.{s}.{m}.1:8006"',
                '      token_id: "root@pam!wakegrid"',
                "      token_secret: {env: WAKEGRID_PVE_TOKEN}",
            ]
            for g in range(guests):
                guest = f"vm{s}-{m}-{g}"
                out.append(
                    f"  {guest}: {{kind: lxc, parent: {machine}, vmid: {100 + g}, address: 10.{s}.{m}.{10 + g}, "
                    f'docker: {{api: "tcp://10.{s}.{m}.{10 + g}:2375"}}}}'
                )
                names = [f"c{s}-{m}-{g}-{c}" for c in range(containers)]
                for c, name in enumerate(names):
                    out.append(f"  {name}: {{kind: container, parent: {guest}, container: app{c}}}")
                    if c:
                        dependencies.append(f"  {name}: [{names[0]}]")
                pairs[s] += [names[i : i + 2] for i in range(0, containers, 2)]
    per_site = len(pairs[0]) // 2  # services whose first pair is on a site
    services: list[str] = []
    for s in range(sites):
        for j in range(per_site):
            k = s * per_site + j
            mode = ["always_on", "always_on", "scheduled", "on_demand", "on_demand"][k % 5]
            policy = {
                "always_on": "{mode: always_on}",
                "scheduled": "{mode: scheduled, timezone: Europe/Paris, windows: [{days: mon-fri, start: '07:00', "
                "end: '23:00'}]}",
                "on_demand": "{mode: on_demand, idle_after: 20m}",
            }[mode]
            services += [f"  svc{k}:", f"    domain: svc{k}.example.net", f"    policy: {policy}", "    backends:"]
            other = (s + 1) % sites
            for site, pair in ((s, pairs[s][j]), (other, pairs[other][per_site + j])):
                for name in pair:
                    _, m, g, c = name.split("-")
                    services.append(
                        f"      - {{node: {name}, address: 10.{site}.{m}.{10 + int(g)}, port: {8000 + int(c)}}}"
                    )
    return "\n".join([*out, "dependencies:", *dependencies, "services:", *services, ""])


def as_wanted(fleet, now: datetime) -> tuple[Observed, Memory]:
    """Observations where everything is as wanted, and a memory that knows the current pools."""
    index = _index(fleet)
    activity: dict[str, Activity] = {}
    up: set[str] = {site.gateway for site in fleet.sites.values()}
    for number, (name, service) in enumerate(fleet.services.items()):
        if service.policy.mode == "on_demand" and number % 2:
            activity[name] = Activity(0, now - timedelta(hours=3), "nothing in flight")  # asleep
            continue
        activity[name] = Activity(0, now - timedelta(minutes=1), "nothing in flight")
        for backend in service.backends:
            up |= index.closure[backend.node]
    power = {name: PowerState(name, "up" if name in up else "down", "synthetic") for name in fleet.nodes}
    health = {
        (name, i): Health("up", "200 in 2 ms") if backend.node in up else Health("down", f"node {backend.node} asleep")
        for name, service in fleet.services.items()
        for i, backend in enumerate(service.backends)
    }
    tunnels = {site: Tunnel("up", "handshake 5 s ago") for site in fleet.sites}
    tunnels["site0"] = Tunnel("down", "no handshake for 212 s (stale after 180 s)")  # some pools leave it out
    observed = Observed(at=now, power=power, health=health, tunnels=tunnels, activity=activity)
    memory = Memory(started_at=now - timedelta(days=1))
    first = decide(fleet, observed, now, memory)
    pools = {pool.service: pool.excluded for pool in first.pools}
    return observed, Memory(started_at=memory.started_at, pools=pools)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--ticks", type=lambda text: max(1, int(text)), default=50)
    parser.add_argument("--profile", action="store_true", help="print the 25 costliest functions of the ticks")
    args = parser.parse_args()

    began = time.process_time()
    fleet = parse_fleet(fleet_text(args.sites), source="<generated>")
    loaded = time.process_time() - began
    backends = sum(len(service.backends) for service in fleet.services.values())
    print(
        f"fleet: {len(fleet.sites)} sites, {len(fleet.nodes)} nodes, {len(fleet.services)} services, "
        f"{backends} backends (validated in {loaded * 1000:.0f} ms CPU)"
    )
    began = time.process_time()
    _index(fleet)
    print(f"per-fleet index (first tick only): {(time.process_time() - began) * 1000:.1f} ms CPU")
    observed, memory = as_wanted(fleet, NOW)
    asleep = sum(state.power == "down" for state in observed.power.values())
    print(
        f"as wanted: {len(fleet.nodes) - asleep} nodes up, {asleep} asleep, "
        f"{sum(bool(excluded) for excluded in memory.pools.values())} pools with a site left out"
    )

    profile = cProfile.Profile() if args.profile else None
    samples: list[float] = []
    decisions = None
    for tick in range(args.ticks):
        now = NOW + timedelta(seconds=2 * tick)
        tick_observed = Observed(
            at=now,
            power=observed.power,
            health=observed.health,
            tunnels=observed.tunnels,
            activity=observed.activity,
        )
        if profile:
            profile.enable()
        began = time.process_time()
        decisions = decide(fleet, tick_observed, now, memory)
        samples.append(time.process_time() - began)
        if profile:
            profile.disable()
    assert decisions is not None
    median, worst = statistics.median(samples) * 1000, max(samples) * 1000
    print(f"decide, no-change tick: CPU median {median:.1f} ms, max {worst:.1f} ms over {args.ticks} ticks", end="")
    print(" (goal ≤ 100 ms)")
    print(
        f"last tick: {len(decisions.starts)} starts, {len(decisions.stops)} stops, {len(decisions.pools)} pool changes "
        f"(goal 0); {len(decisions.log)} log lines"
    )
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
