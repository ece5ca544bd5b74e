"""One health round over many HTTP backends on loopback: wall time of HealthObserver.round.

    .venv/bin/python tests/bench/health.py [--backends N] [--rounds N] [--concurrency N]

The backends are N listening ports on 127.0.0.1 served by one asyncio process (a child, so
the servers' CPU is not the observer's); the fleet has N/4 services of 4 backends each. The
goal of issue 11 is <= 1 s for 2,000 backends. Prints each round and the median, min and max.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "reconciler"))

from wakegrid.model import Fleet, parse_fleet
from wakegrid.observe.health import DEFAULT_CONCURRENCY, HealthObserver

SERVER = r"""
import asyncio, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def handle(reader, writer):
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    except Exception:
        pass
    writer.close()

async def main(count):
    servers = [await asyncio.start_server(handle, "127.0.0.1", 0, backlog=64) for _ in range(count)]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin

asyncio.run(main(int(sys.argv[1])))
"""


def generated_fleet(ports: list[int]) -> Fleet:
    lines = [
        'edge: {host: vps, domain: example.net, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}',
        "sites: {home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}}",
        "nodes: {gw: {kind: machine, site: home, address: 127.0.0.2}}",
        "services:",
    ]
    for first in range(0, len(ports), 4):
        lines += [
            f"  s{first // 4}:",
            f"    domain: s{first // 4}.example.net",
            "    health: {path: /health, timeout: 2s}",
            "    backends:",
        ]
        lines += [f"      - {{site: home, address: 127.0.0.1, port: {port}}}" for port in ports[first : first + 4]]
    return parse_fleet("\n".join(lines) + "\n", source="<bench>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.backends)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        ports = [int(port) for port in server.stdout.readline().split()]
        if len(ports) != args.backends:
            raise SystemExit(f"the server opened {len(ports)} ports of {args.backends}")
        fleet = generated_fleet(ports)
        observer = HealthObserver(concurrency=args.concurrency)
        walls = []
        print(f"{args.backends} backends on loopback, {len(fleet.services)} services, concurrency {args.concurrency}")
        for number in range(1, args.rounds + 1):
            started, cpu = time.perf_counter(), time.process_time()
            health = asyncio.run(observer.round(fleet, {}))
            wall, used = time.perf_counter() - started, time.process_time() - cpu
            states = {state: sum(h.state == state for h in health.values()) for state in ("up", "down", "unknown")}
            print(f"round {number}: {wall * 1000:7.1f} ms wall, {used * 1000:7.1f} ms CPU  {states}")
            walls.append(wall)
        print(
            f"median {statistics.median(walls) * 1000:.1f} ms, min {min(walls) * 1000:.1f} ms, "
            f"max {max(walls) * 1000:.1f} ms (goal <= 1000 ms)"
        )
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
