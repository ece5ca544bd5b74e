"""Fleet validation speed on a large generated fleet.

    .venv/bin/python tests/bench/validate.py [--sites N] [--runs N] [--keep FILE]

Generates a block-style fleet of about 2 MB (50 sites, ~17,000 nodes: machines with Proxmox, guests
with Docker, containers, dependencies, a service for one container of each guest), then
prints the median and the spread (wall and CPU time) of ``load_fleet`` in this process and of
``wakegrid validate`` as a command (interpreter start-up and imports included). Nothing is asserted:
the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WAKEGRID = Path(sys.executable).parent / "wakegrid"


def fleet_text(sites: int = 50, machines: int = 8, guests: int = 6, containers: int = 6) -> str:
    """Each site: a gateway and ``machines`` Proxmox hosts, each with ``guests`` Docker guests of
    ``containers`` containers; every container depends on its guest's first one, the second is a backend."""
    out = [
        "plugin: wakegrid.fleet.fleet",
        "defaults:",
        "  ssh: {user: root, private_key_file: ~/.ssh/wakegrid_ed25519}",
        "edge:",
        "  host: vps",
        "  domain: example.net",
        "  wireguard: {address: 10.200.0.1/24, endpoint: 'vps.example.net:51820'}",
        "sites:",
    ]
    for s in range(sites):
        out += [
            f"  site{s}:",
            f"    gateway: gw{s}",
            f"    lan: 10.{s}.0.0/16",
            f"    priority: {s}",
            f"    wireguard: {{address: 10.201.{s}.1/16}}",
        ]
    out.append("nodes:")
    dependencies: list[str] = []
    services: list[str] = []
    for s in range(sites):
        out += [f"  gw{s}:", "    kind: machine", f"    site: site{s}", f"    address: 10.{s}.255.1"]
        for m in range(machines):
            machine = f"pve{s}-{m}"
            out += [
                f"  {machine}:",
                "    kind: machine",
                f"    site: site{s}",
                f"    address: 10.{s}.{m}.1",
                f'    mac: "52:54:{s // 256:02x}:{s % 256:02x}:{m:02x}:01"',
                "    proxmox:",
                f'      api: "https://10.{s}.{m}.1:8006"',
                '      token_id: "root@pam!wakegrid"',
                "      token_secret: {env: WAKEGRID_PVE_TOKEN}",
            ]
            for g in range(guests):
                guest = f"vm{s}-{m}-{g}"
                out += [
                    f"  {guest}:",
                    f"    kind: {'vm' if g % 2 else 'lxc'}",
                    f"    parent: {machine}",
                    f"    vmid: {100 + g}",
                    f"    address: 10.{s}.{m}.{10 + g}",
                    f'    docker: {{api: "tcp://10.{s}.{m}.{10 + g}:2375"}}',
                    "    timeouts: {start: 2m, stop: 1m}",
                ]
                for c in range(containers):
                    name = f"c{s}-{m}-{g}-{c}"
                    out.append(f"  {name}: {{kind: container, parent: {guest}, container: app{c}}}")
                    if c:
                        dependencies.append(f"  {name}: [c{s}-{m}-{g}-0]")
                    if c == 1:
                        services += [
                            f"  svc-{name}:",
                            f"    domain: {name}.example.net",
                            "    policy: {mode: on_demand, idle_after: 20m}",
                            "    backends:",
                            f"      - {{node: {name}, address: 10.{s}.{m}.{10 + g}, port: {8000 + c}}}",
                        ]
    return "\n".join([*out, "dependencies:", *dependencies, "services:", *services, ""])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median_ms(samples: list[float]) -> str:
    median, low, high = (1000 * f(samples) for f in (statistics.median, min, max))
    return f"median {median:7.0f} ms  (min {low:.0f}, max {high:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--runs", type=lambda text: max(1, int(text)), default=5)
    parser.add_argument("--keep", metavar="FILE", help="write the generated fleet there instead of a temporary file")
    args = parser.parse_args()

    from wakegrid.model import load_fleet

    text = fleet_text(args.sites)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(args.keep or Path(folder) / "big.fleet.yml")
        path.write_text(text)
        fleet = load_fleet(path)
        print(
            f"fleet: {len(text) / 1e6:.1f} MB, {text.count(chr(10))} lines, {len(fleet.nodes)} nodes, "
            f"{len(fleet.services)} services"
        )
        loads, load_cpu, commands, command_cpu = [], [], [], []
        for _ in range(args.runs):
            began, cpu = time.perf_counter(), time.process_time()
            load_fleet(path)
            loads.append(time.perf_counter() - began)
            load_cpu.append(time.process_time() - cpu)
        for _ in range(args.runs):
            began, cpu = time.perf_counter(), _children_cpu()
            subprocess.run([str(WAKEGRID), "validate", str(path)], check=True, capture_output=True)
            commands.append(time.perf_counter() - began)
            command_cpu.append(_children_cpu() - cpu)
    # CPU time is what a busy machine distorts least (wall time there includes waiting for a core).
    print(f"load_fleet:        wall {_median_ms(loads)}, CPU {_median_ms(load_cpu)}  over {args.runs} runs")
    print(f"wakegrid validate: wall {_median_ms(commands)}, CPU {_median_ms(command_cpu)}  over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
