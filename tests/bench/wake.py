"""Wake on the first request in the lab: what wakegrid adds to the chain's own boot time.

    sudo .venv/bin/python tests/bench/wake.py [--runs N] [--service stream|sandbox] [--interval S]

Each run puts the service's whole chain to sleep (``wakegrid shutdown``), then sends ONE request from
the lab's client host through the edge while it sleeps, either as an API client (``curl``, held by
the daemon until the app answers) or as a browser (the waiting page, then the reload of the URL it
asked for once its server-sent events say "ready"), and measures:

- ``first byte``: from the request to the first byte of the application's real response;
- ``chain boot``: the chain's own boot, from the start of the daemon's wake run (journal: the start
  action's ``started_at``) to the first answer of the application's health check, probed every 50 ms
  from this machine straight at the backend (the daemon's own observer probes once per round);
- ``overhead`` = first byte - chain boot: the edge handing over, the daemon's round that starts the
  run, and the time from "the app answers" to "the client has its answer".

A 5 s poll (what Sablier's blocking mode and waiting page do: look again every 5 s) is computed in
the same runs from the same chain boot: its client learns that the app is up at the first multiple of
5 s after it is, so its overhead is the wait to that poll (plus the same hand-over).

The lab's services as this file changes them (:func:`wake_fleet`): ``stream`` (nas → pve1 → LXC
jellyfin → app) and ``sandbox`` (pve1 → VM vm-docker → container sandbox → app) become ``on_demand``
with only their dijon backend and an allowlist naming the lab's client; nas and pve1 may sleep without
a person's confirmation. The daemon runs in the edge (``wakegrid lab daemon``) listening on
``0.0.0.0:9380``: Caddy's fallback reaches it on 127.0.0.1 (the only edge address it trusts), this
machine reads its ``/metrics`` on the edge's WAN address. Shared with tests/integration/test_wake_lab.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
DOCKER = "/usr/bin/docker"
LOCK = "/tmp/wakegrid-lab.lock"
JOURNAL = "/var/lib/wakegrid/journal.sqlite3"
INTERNAL_ROOT = "/var/lib/caddy/data/caddy/pki/authorities/local/root.crt"  # the edge's Caddy internal CA
CLIENT_ROOT = "/tmp/wakegrid-edge-root.crt"  # its copy in the client host
DAEMON_PORT = 9380
POLL = 5.0  # Sablier's refresh / blocking poll
# service -> (the node of its backend, the node to shut down to put the whole chain to sleep)
WAKE_SERVICES = {"stream": ("jellyfin", "pve1"), "sandbox": ("sandbox", "pve1")}

# Run with the edge's python3 (no sqlite3 CLI there): rows of a read-only query as JSON.
JOURNAL_QUERY = r"""
import json, os, sqlite3, sys
path, query, params = sys.argv[1], sys.argv[2], sys.argv[3:]
if not os.path.exists(path):
    print("[]")
    sys.exit(0)
conn = sqlite3.connect(path, timeout=10)
conn.row_factory = sqlite3.Row
print(json.dumps([dict(row) for row in conn.execute(query, params)]))
"""


# --------------------------------------------------------------------------- the lab, as the wake needs it


def wake_fleet(lab_fleet: Path = LAB_FLEET, idle_after: str = "10m") -> dict:
    """The lab fleet with its two wake chains: every node of them may sleep, only the client may wake them."""
    document = yaml.safe_load(lab_fleet.read_text())
    client = document["lab"]["clients"]["address"]
    for machine in ("nas", "pve1"):  # pve1's sleep costs no quorum: the QDevice on gw-dijon keeps pve2's
        document["nodes"][machine]["confirm_shutdown"] = False
    for service, (node, _) in WAKE_SERVICES.items():
        svc = document["services"][service]
        svc["policy"] = {"mode": "on_demand", "idle_after": idle_after}
        svc["allow"] = [f"{client}/32"]
        svc["backends"] = [b for b in svc["backends"] if b.get("node") == node]
    return document


def write_wake_fleet(path: Path, lab_fleet: Path = LAB_FLEET, idle_after: str = "10m") -> Path:
    path.write_text(
        "# Written by tests/bench/wake.py from the lab fleet: its wake chains (docs/wake-on-demand.md).\n"
        + yaml.safe_dump(wake_fleet(lab_fleet, idle_after), sort_keys=False)
    )
    return path


def daemon_config(**overrides: Any) -> dict:
    """Listening on every address: Caddy's fallback reaches it on 127.0.0.1, the only trusted edge."""
    return {"listen": f"0.0.0.0:{DAEMON_PORT}", "edge_addresses": ["127.0.0.1", "::1"], "stop_grace": "5s", **overrides}


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


class WakeLab:
    """The lab with the daemon in its edge running a wake fleet; requests sent from the client host."""

    def __init__(self, lab, fleet_path: Path):
        from wakegrid.lab.daemon import LabDaemon

        self.lab = lab  # wakegrid.lab.runtime.Lab
        self.fleet_path = fleet_path
        self.daemon = LabDaemon(lab, log=lambda line: print(f"  {line}", file=sys.stderr))
        plan = lab.plan
        clients = plan.network("clients").name
        self.client = next(h for h in plan.hosts if h.role == "client")
        edge = plan.host(lab.fleet.edge.host)
        self.edge_container = edge.container
        self.edge_public = next(a.address for a in edge.networks if a.network == clients)
        self.url = ""

    # -- the edge
    def push_routes(self) -> None:
        """routes.yml from this machine with the wake fleet: every sleepable service gets the fallback."""
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        run(
            [str(BIN / "ansible-playbook"), "-i", str(self.fleet_path), str(REPO / "playbooks" / "routes.yml")],
            cwd=REPO,
            env=env,
            timeout=600,
        )

    def edge_exec(self, *cmd: str, check: bool = True) -> str:
        proc = run([DOCKER, "exec", self.edge_container, *cmd], check=check)
        return proc.stdout

    # -- the daemon
    def start_daemon(self, tmp: Path, fresh_journal: bool = True, **config: Any) -> None:
        config_path = tmp / "wake.daemon.yml"
        from wakegrid.lab.daemon import admin_section

        # This machine reads /metrics: it is one of the lab daemon's admin networks.
        config = {"admin": admin_section(self.lab), **config}
        config_path.write_text(yaml.safe_dump(daemon_config(**config), sort_keys=False))
        self.stop_daemon()
        report = self.daemon.install(self.fleet_path, config_path)
        print(f"daemon: {report.summary()}", file=sys.stderr)
        if fresh_journal:
            self.edge_exec("rm", "-f", JOURNAL, f"{JOURNAL}-wal", f"{JOURNAL}-shm")
        self.daemon.start()
        self.url = self.daemon.url()
        self.tls = self.daemon.ssl_context()  # trusts the lab daemon's certificate when it serves HTTPS

    def stop_daemon(self) -> None:
        if self.daemon.exec(["test", "-f", "/etc/systemd/system/wakegrid.service"]).returncode == 0:
            self.daemon.exec(["systemctl", "stop", "wakegrid.service"], timeout=120)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        from wakegrid.lab.daemon import lab_credentials

        token = lab_credentials(self.lab).token  # /metrics is for admins (docs/security.md)
        request = urllib.request.Request(self.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5, context=self.tls) as response:
            text = response.read().decode()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def last_round(self) -> datetime | None:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=5, context=self.tls) as response:
                stamp = json.loads(response.read()).get("last_round")
        except OSError:
            return None
        return datetime.fromisoformat(stamp) if stamp else None

    def journal(self, query: str, *params: object) -> list[dict]:
        return json.loads(self.edge_exec("python3", "-c", JOURNAL_QUERY, JOURNAL, query, *map(str, params)))

    def logs(self, lines: int = 40) -> str:
        return self.daemon.logs(lines)

    # -- the chain
    def chain_nodes(self, service: str) -> list[str]:
        from wakegrid.model import load_fleet
        from wakegrid.web.chain import APPLICATION, chain_layers

        return [
            layer.key for layer in chain_layers(load_fleet(self.fleet_path), service, None) if layer.key != APPLICATION
        ]

    def put_to_sleep(self, service: str) -> None:
        """The whole chain of ``service`` down (``wakegrid shutdown`` of its machine), then a daemon round sees it."""
        node, machine = WAKE_SERVICES[service]
        if self.lab.is_on(machine):
            run([str(BIN / "wakegrid"), "shutdown", "--fleet", str(self.fleet_path), machine], timeout=600)
        if node == "jellyfin" and self.lab.is_on("nas"):
            run([str(BIN / "wakegrid"), "shutdown", "--fleet", str(self.fleet_path), "nas"], timeout=600)
        if self.url:
            # Two rounds: the first one ending after now may have observed power before the shutdown.
            for _ in range(2):
                moment = datetime.now(UTC)
                wait_until(lambda m=moment: (r := self.last_round()) is not None and r > m, 60, "a daemon round")

    def backend_url(self, service: str) -> str:
        from wakegrid.model import load_fleet

        fleet = load_fleet(self.fleet_path)
        svc = fleet.services[service]
        backend = svc.backends[0]
        return f"http://{fleet.backend_address(backend)}:{backend.port}{svc.health.path}"

    # -- the client host
    def install_client_root(self) -> None:
        root = run([DOCKER, "exec", self.edge_container, "cat", INTERNAL_ROOT]).stdout
        run([DOCKER, "exec", "-i", self.client.container, "sh", "-c", f"cat > {CLIENT_ROOT}"], input=root)

    def curl_args(self, domain: str) -> list[str]:
        return ["curl", "-sS", "--cacert", CLIENT_ROOT, "--resolve", f"{domain}:443:{self.edge_public}"]

    def client_exec(self, *cmd: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
        return run([DOCKER, "exec", self.client.container, *cmd], timeout=timeout, check=check)


def restore_lab(lab) -> None:
    """The lab as ``lab up`` leaves it: the lab fleet's routes on the edge, every host and container on."""
    WakeLab(lab, LAB_FLEET).push_routes()
    for host in lab.plan.hosts:  # plan order: parents before children
        if host.power and not lab.is_on(host.node):
            lab.power(host.node, True)
    for inner in lab.plan.inner:
        if inner.power and not lab.is_on(inner.node):
            wait_until(lambda i=inner: lab.inner_status(i) != "absent", 60, f"{inner.parent}'s dockerd")
            lab.power(inner.node, True)


def wait_until(predicate, timeout: float, what: str, step: float = 0.1) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class AppProbe:
    """The application's health check probed every 50 ms straight at the backend: when it first answers."""

    def __init__(self, url: str):
        self.url = url
        self.up_at: float | None = None  # epoch seconds
        self._stop = False
        import threading

        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AppProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join(5)

    def _run(self) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop and self.up_at is None:
            try:
                with opener.open(self.url, timeout=0.5) as response:
                    if response.status == 200:
                        self.up_at = time.time()
                        return
            except OSError:
                pass
            time.sleep(0.05)


# --------------------------------------------------------------------------- one measured wake


def _client_script() -> str:
    # SNI and Host are the service's domain, the TCP peer the edge's client-side address.
    return r"""
import json, socket, ssl, sys, time
host, edge, cafile, path, mode, body = sys.argv[1:7]
def request(method, target, accept, data=b""):
    ctx = ssl.create_default_context(cafile=cafile)
    raw = socket.create_connection((edge, 443), timeout=300)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\nConnection: close\r\n"
    if data:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    sent = time.time()
    sock.sendall(head.encode() + b"\r\n" + data)
    first = sock.recv(1)
    first_at = time.time()
    chunks = [first]
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    text = b"".join(chunks).decode("latin-1")
    status = int(text.split(" ", 2)[1])
    headers, _, content = text.partition("\r\n\r\n")
    return sent, first_at, status, headers, content
out = {}
if mode == "api":
    sent, first_at, status, headers, content = request("POST", path, "application/json", body.encode())
    out = {"sent": sent, "first_byte": first_at, "status": status, "body": content, "headers": headers}
else:  # a browser: the waiting page, its events until ready, then the URL again
    sent, _, status, headers, content = request("GET", path, "text/html")
    page_status = status
    events_at = None
    if status == 503 and "_wakegrid/events/" in content:
        service = content.split("_wakegrid/events/", 1)[1].split('"', 1)[0]
        ctx = ssl.create_default_context(cafile=cafile)
        sock = ctx.wrap_socket(socket.create_connection((edge, 443), timeout=300), server_hostname=host)
        head = f"GET /_wakegrid/events/{service} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        sock.sendall(head.encode() + b"Connection: close\r\n\r\n")
        buffer = b""
        while b'"state": "ready"' not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
        events_at = time.time()
        sock.close()
    _, first_at, status, headers, content = request("GET", path, "text/html")
    out = {"sent": sent, "first_byte": first_at, "status": status, "page_status": page_status,
           "ready_event": events_at, "body": content, "headers": headers}
print(json.dumps(out))
"""


CLIENT_SCRIPT = "/tmp/wakegrid-wake-client.py"


@dataclass
class Run:
    mode: str  # api | browser
    first_byte: float  # seconds from the request
    chain_boot: float  # seconds: the start run's start to the app's first health answer
    status: int
    handover: float  # request -> the daemon's start run started

    @property
    def overhead(self) -> float:
        return self.first_byte - self.chain_boot

    @property
    def poll_overhead(self) -> float:
        """The same wake seen by a client that looks every POLL seconds from its request."""
        app_up = self.handover + self.chain_boot
        polls = int(app_up // POLL) + 1
        return polls * POLL - self.chain_boot


def measure(wl: WakeLab, service: str, mode: str) -> Run:
    """One wake of ``service`` from sleep by one request (``api`` or ``browser``) from the client host."""
    from wakegrid.model import load_fleet

    domain = load_fleet(wl.fleet_path).services[service].domain
    run([DOCKER, "exec", "-i", wl.client.container, "sh", "-c", f"cat > {CLIENT_SCRIPT}"], input=_client_script())
    with AppProbe(wl.backend_url(service)) as probe:
        proc = wl.client_exec(
            "python3",
            CLIENT_SCRIPT,
            domain,
            wl.edge_public,
            CLIENT_ROOT,
            "/bench?x=1",
            mode,
            '{"bench": true}',
            timeout=400,
            check=True,
        )
    result = json.loads(proc.stdout)
    sent = result["sent"]
    starts = wl.journal(
        "SELECT started_at FROM actions WHERE kind = 'start' AND started_at >= ? ORDER BY id",
        datetime.fromtimestamp(sent - 1, UTC).isoformat(),
    )
    if not starts or probe.up_at is None:
        raise RuntimeError(f"no start run or no app answer for {service}: {starts} {probe.up_at}\n{wl.logs()}")
    started = datetime.fromisoformat(starts[0]["started_at"]).timestamp()
    return Run(mode, result["first_byte"] - sent, probe.up_at - started, result["status"], started - sent)


def table(runs: list[Run]) -> str:
    lines = [
        f"{'client':<10}{'runs':>5}{'first byte':>12}{'chain boot':>12}{'overhead med':>14}"
        f"{'overhead max':>14}{'5 s poll med':>14}{'5 s poll max':>14}{'hand-over':>11}"
    ]
    for mode in ("api", "browser"):
        chosen = [r for r in runs if r.mode == mode]
        if not chosen:
            continue
        over = [r.overhead for r in chosen]
        poll = [r.poll_overhead for r in chosen]
        lines.append(
            f"{mode:<10}{len(chosen):>5}{statistics.median(r.first_byte for r in chosen):>11.2f}s"
            f"{statistics.median(r.chain_boot for r in chosen):>11.2f}s{statistics.median(over):>13.2f}s"
            f"{max(over):>13.2f}s{statistics.median(poll):>13.2f}s{max(poll):>13.2f}s"
            f"{statistics.median(r.handover for r in chosen):>10.2f}s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="wakes per client kind (default 3)")
    parser.add_argument("--service", choices=sorted(WAKE_SERVICES), default="sandbox")
    parser.add_argument("--interval", default="5s", help="the daemon's round interval (default 5s, its default)")
    parser.add_argument("--write-fleet", metavar="PATH", help="only write the wake fleet to PATH and exit")
    args = parser.parse_args(argv)
    if args.write_fleet:
        write_wake_fleet(Path(args.write_fleet))
        return 0
    from wakegrid.lab.runtime import Lab

    with tempfile.TemporaryDirectory(prefix="wake-bench-") as tmp:
        fleet_path = write_wake_fleet(Path(tmp) / "wake.fleet.yml")
        wl = WakeLab(Lab(LAB_FLEET, log=lambda *_: None), fleet_path)
        wl.push_routes()
        wl.install_client_root()
        wl.start_daemon(Path(tmp), interval=args.interval)
        runs: list[Run] = []
        try:
            for index in range(args.runs):
                for mode in ("api", "browser"):
                    wl.put_to_sleep(args.service)
                    one = measure(wl, args.service, mode)
                    print(
                        f"run {index + 1} {mode}: first byte {one.first_byte:.2f}s, chain boot {one.chain_boot:.2f}s, "
                        f"overhead {one.overhead:.2f}s (hand-over {one.handover:.2f}s), status {one.status}",
                        flush=True,
                    )
                    runs.append(one)
        finally:
            wl.stop_daemon()
            restore_lab(wl.lab)
        print(f"\nwake of {args.service} from sleep, daemon interval {args.interval}, goal: overhead <= 0.5 s")
        print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
