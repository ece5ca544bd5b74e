"""Site-cut rehearsal in the lab: steady HTTPS load through the edge while the preferred site is cut and restored.

    sudo .venv/bin/python tests/bench/failover.py [--fleet FLEET] [--rate N] [--cut-seconds S] [--method GET|POST]

Brings the lab of FLEET up (idempotent: a running lab is reused) and converges ``playbooks/site.yml``
unless ``--no-converge``; then runs ``loadgen.py`` in the lab's client host against the edge, cuts the
service's preferred site (``Lab.cut_site``: its gateway loses the WAN and its tunnel), keeps the load
for ``--cut-seconds``, restores the site, keeps the load until the site serves again (bounded), and
prints one table of figures. Nothing is asserted: the figures depend on the machine (see
``tests/integration/test_failover.py`` for the assertions).

The helpers here (:func:`rehearse`, :func:`figures`, :func:`table`, :class:`LoadRun`, ...) are shared
with that test, which imports this file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOADGEN = REPO / "reconciler" / "wakegrid" / "lab" / "files" / "loadgen.py"
DOCKER = "/usr/bin/docker"
BIN = Path(sys.executable).parent
ADMIN_SOCKET = "/run/caddy/admin.sock"
# Where the caddy_edge role keeps Caddy's data (XDG_DATA_HOME=/var/lib/caddy/data).
INTERNAL_ROOT = "/var/lib/caddy/data/caddy/pki/authorities/local/root.crt"
CLIENT_LOADGEN = "/tmp/wakegrid-loadgen.py"
CLIENT_ROOT = "/tmp/wakegrid-edge-root.crt"
RELOAD_METRIC = re.compile(r"^caddy_config_last_reload_success_timestamp_seconds (\S+)$", re.M)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
# An answer slower than this after a cut went through a dial timeout (or a hung request) first.
RETRY_LATENCY_MS = 500.0
PROBE_RATE = 5  # GETs per second beside a non-GET run

# Runs on the edge (its python3, standard library): every PERIOD seconds one JSON line with what Caddy
# has in flight per upstream (/reverse_proxy/upstreams: num_requests, fails) and, every second, its
# health gauge (caddy_reverse_proxy_upstreams_healthy, refreshed by Caddy every 10 s).
EDGE_MONITOR = r"""
import http.client, json, os, re, socket, sys, threading, time
SOCKET, PERIOD = sys.argv[1], float(sys.argv[2])
def end_on_eof():  # the controller closes our stdin (docker exec -i) to stop us
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)
threading.Thread(target=end_on_eof, daemon=True).start()
GAUGE = re.compile(r'^caddy_reverse_proxy_upstreams_healthy\{upstream="([^"]+)"\} (\S+)$', re.M)
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(2)
        self.sock.connect(SOCKET)
def get(path):
    conn = Unix("127.0.0.1")
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()
last_gauge = 0.0
while True:
    sample = {"t": time.time()}
    try:
        upstreams = json.loads(get("/reverse_proxy/upstreams"))
        sample["upstreams"] = {u["address"]: [u["num_requests"], u["fails"]] for u in upstreams}
        if sample["t"] - last_gauge >= 1:
            sample["healthy"] = {a: float(v) for a, v in GAUGE.findall(get("/metrics"))}
            last_gauge = sample["t"]
    except (OSError, ValueError) as exc:
        sample["error"] = repr(exc)
    print(json.dumps(sample), flush=True)
    time.sleep(PERIOD)
"""


# --------------------------------------------------------------------------- the lab's parts


def docker(*args: str, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode:
        raise RuntimeError(f"docker {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Backend:
    site: str
    dial: str  # address:port, as in Caddy's upstreams


@dataclass
class Target:
    """Where the load goes and where it should come from, read from the lab's plan and fleet."""

    service: str
    domain: str
    edge_container: str
    client_container: str
    edge_public: str  # the edge's address on the clients network
    backends: list[Backend]

    @property
    def url(self) -> str:
        return f"https://{self.domain}/"

    def dial_of(self, site: str) -> str:
        return next(b.dial for b in self.backends if b.site == site)

    def preferred_site(self, fleet) -> str:
        return fleet.site_order(fleet.services[self.service])[0]


def target(lab, service: str = "www") -> Target:
    """``lab``: a :class:`wakegrid.lab.runtime.Lab`."""
    fleet, plan = lab.fleet, lab.plan
    svc = fleet.services[service]
    clients = plan.network("clients").name
    edge = plan.host(fleet.edge.host)
    client = next(h for h in plan.hosts if h.role == "client")
    backends = []
    for backend in svc.backends:
        address = fleet.backend_address(backend) or plan.host(backend.node).address
        backends.append(Backend(site=fleet.backend_site(backend), dial=f"{address}:{backend.port}"))
    return Target(
        service=service,
        domain=svc.domain,
        edge_container=edge.container,
        client_container=client.container,
        edge_public=next(a.address for a in edge.networks if a.network == clients),
        backends=backends,
    )


def admin(tgt: Target, path: str) -> str:
    """GET on Caddy's admin API, on the edge (a unix socket: only root and caddy reach it)."""
    cmd = [
        "exec",
        tgt.edge_container,
        "curl",
        "-sS",
        "--fail",
        "--unix-socket",
        ADMIN_SOCKET,
        f"http://127.0.0.1{path}",
    ]
    return docker(*cmd).stdout


def last_reload(tgt: Target) -> str:
    """Caddy's caddy_config_last_reload_success_timestamp_seconds (changes with every config write)."""
    found = RELOAD_METRIC.findall(admin(tgt, "/metrics"))
    if len(found) != 1:
        raise RuntimeError("no caddy_config_last_reload_success_timestamp_seconds in Caddy's metrics")
    return found[0]


def install_loadgen(tgt: Target) -> None:
    """Copy loadgen.py and the edge's internal CA root into the client host."""
    docker("cp", str(LOADGEN), f"{tgt.client_container}:{CLIENT_LOADGEN}")
    root = docker("exec", tgt.edge_container, "cat", INTERNAL_ROOT).stdout
    docker("exec", "-i", tgt.client_container, "sh", "-c", f"cat > {CLIENT_ROOT}", input=root)


def run_playbook(lab, playbook: str, extra_vars: str = "", timeout: float = 900) -> tuple[str, dict[str, int]]:
    """``ansible-playbook -i FLEET playbooks/PLAYBOOK [-e EXTRA_VARS]``: (output, changed count per host).

    Fails when the run fails."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = [str(BIN / "ansible-playbook"), "-i", str(lab.fleet_path), str(REPO / "playbooks" / playbook)]
    if extra_vars:
        cmd += ["-e", extra_vars]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"{playbook} failed ({proc.returncode}):\n{out[-6000:]}")
    recap = {host: int(changed) for host, changed, _, _ in RECAP.findall(proc.stdout)}
    if not recap:
        raise RuntimeError(f"no play recap in the output of {playbook}:\n{out[-3000:]}")
    return out, recap


# --------------------------------------------------------------------------- live streams


class _Stream:
    """A ``docker exec -i`` process whose stdout is one JSON object a line, collected by a thread."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lock = threading.Lock()
        self.items: list[dict] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.items.append(item)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.items)

    def stop(self, timeout: float = 30) -> list[dict]:
        """Close stdin (the process's signal to finish), wait for it and return everything it wrote."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)
        self.stderr = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        return self.snapshot()


class LoadRun(_Stream):
    """loadgen.py running in the client host until :meth:`stop`."""

    def __init__(self, tgt: Target, rate: float, method: str = "GET", body_size: int = 512, timeout: float = 15):
        cmd = [DOCKER, "exec", "-i", tgt.client_container, "python3", CLIENT_LOADGEN, "--until-stdin-eof"]
        cmd += ["--url", tgt.url, "--connect", tgt.edge_public, "--cafile", CLIENT_ROOT, "--rate", str(rate)]
        cmd += ["--method", method, "--body-size", str(body_size), "--timeout", str(timeout)]
        self.started = time.time()
        super().__init__(cmd)

    def summary(self) -> dict:
        for line in reversed(self.stderr.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return {}


class EdgeMonitor(_Stream):
    """Samples Caddy's view of the upstreams on the edge (see EDGE_MONITOR)."""

    def __init__(self, tgt: Target, period: float = 0.2):
        cmd = [DOCKER, "exec", "-i", tgt.edge_container, "python3", "-c", EDGE_MONITOR, ADMIN_SOCKET, str(period)]
        super().__init__(cmd)


# --------------------------------------------------------------------------- the rehearsal


@dataclass
class Rehearsal:
    site: str
    method: str
    rate: float
    cut_at: float = 0.0  # wall clock: cut asked
    cut_done: float = 0.0  # the gateway is off the WAN, its tunnel down
    restore_at: float = 0.0
    restore_done: float = 0.0
    back_after: float | None = None  # seconds from restore_done to the first answer from the site (live view)
    records: list[dict] = field(default_factory=list)
    probe: list[dict] = field(default_factory=list)  # GETs alongside a non-GET run: which site serves
    edge: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def rehearse(
    lab,
    tgt: Target,
    site: str,
    rate: float = 50,
    method: str = "GET",
    lead_seconds: float = 5,
    cut_seconds: float = 15,
    recover_timeout: float = 60,
    tail_seconds: float = 3,
    log=print,
) -> Rehearsal:
    """Load → cut ``site`` → ``cut_seconds`` → restore → load until the site answers again (at most
    ``recover_timeout``) and ``tail_seconds`` more → stop. The site is restored whatever happens."""
    run = Rehearsal(site=site, method=method, rate=rate)
    monitor = EdgeMonitor(tgt)
    load = LoadRun(tgt, rate, method)
    # The lab app answers only GET with its site: a non-GET run gets a light GET probe beside it.
    probe = LoadRun(tgt, PROBE_RATE, "GET") if method != "GET" else load
    try:
        time.sleep(lead_seconds)
        log(f"cutting {site} under {rate:g} {method}/s")
        run.cut_at = time.time()
        lab.cut_site(site)
        run.cut_done = time.time()
        time.sleep(max(0.0, cut_seconds - (run.cut_done - run.cut_at)))
    finally:
        run.restore_at = time.time()
        lab.restore_site(site)
        run.restore_done = time.time()
    try:
        log(f"{site} restored; waiting for it to answer again (at most {recover_timeout:g}s)")
        # Under `first`, "answers again" means the preferred site takes the traffic back.
        deadline = run.restore_done + recover_timeout
        while time.time() < deadline:
            answered = [r["start"] for r in probe.snapshot() if r["start"] >= run.restore_done and r["site"] == site]
            if answered:
                run.back_after = min(answered) - run.restore_done
                break
            time.sleep(0.2)
        time.sleep(tail_seconds)
    finally:
        run.records = load.stop(timeout=60)
        run.summary = load.summary()
        if probe is not load:
            run.probe = sorted(probe.stop(timeout=60), key=lambda r: r["start"])
        run.edge = monitor.stop()
    run.records.sort(key=lambda r: r["start"])
    return run


def _in_flight(sample: dict, dial: str) -> bool:
    return (sample.get("upstreams") or {}).get(dial, [0, 0])[0] > 0


# --------------------------------------------------------------------------- figures


def failed(record: dict) -> bool:
    """No answer, or an error Caddy made up (502/503/504 without the backend's Server header)."""
    status = record["status"]
    return bool(record["error"]) or status is None or (status >= 500 and not record.get("upstream"))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def phases(run: Rehearsal) -> dict[str, list[dict]]:
    return {
        "before": [r for r in run.records if r["start"] < run.cut_at],
        "during": [r for r in run.records if run.cut_at <= r["start"] < run.restore_at],
        "after": [r for r in run.records if r["start"] >= run.restore_at],
    }


def figures(run: Rehearsal, tgt: Target) -> dict:
    """Everything the table shows, as numbers (seconds from the cut / the restore; latencies in ms)."""
    out: dict = {"method": run.method, "rate": run.rate, "site": run.site, "phases": {}}
    probe_phases = phases(Rehearsal(**{**run.__dict__, "records": run.probe}))
    for name, records in phases(run).items():
        latencies = [r["latency_ms"] for r in records if not failed(r)]
        sites: dict[str, int] = {}
        # The sites that answered: the GET probe's answers beside a non-GET run.
        for r in probe_phases[name] if run.probe else records:
            sites[r["site"] or "-"] = sites.get(r["site"] or "-", 0) + 1
        out["phases"][name] = {
            "sent": len(records),
            "failed": sum(failed(r) for r in records),
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies) if latencies else None,
            "sites": sites,
        }
    cut_records = [r for r in run.records if run.cut_done <= r["start"] < run.restore_at]
    out["answers_from_cut_site_during_cut"] = sum(r["site"] == run.site for r in cut_records)
    out["failures"] = [r for r in run.records if failed(r)]
    # Client view: the last request of the cut slowed down by a try on the dead site.
    slow = [r for r in cut_records if not failed(r) and r["latency_ms"] >= RETRY_LATENCY_MS]
    out["slow_during_cut"] = len(slow)
    out["last_slow_start"] = (slow[-1]["start"] - run.cut_at) if slow else None
    # Edge view: the last moment Caddy had a proxied request in flight to the dead site's upstream.
    dial = tgt.dial_of(run.site)
    in_flight = [s["t"] for s in run.edge if run.cut_at <= s["t"] < run.restore_at and _in_flight(s, dial)]
    out["last_in_flight"] = (in_flight[-1] - run.cut_at) if in_flight else None
    # The gauge lags (Caddy refreshes it every 10 s): count only a change seen after the cut.
    gauge = [(s["t"], s["healthy"].get(dial)) for s in run.edge if dial in (s.get("healthy") or {})]
    seen_healthy = [t for t, value in gauge if value == 1.0 and t < run.restore_at]
    unhealthy = [t for t, value in gauge if value == 0.0 and t >= run.cut_at and seen_healthy and t > seen_healthy[0]]
    out["gauge_unhealthy"] = (unhealthy[0] - run.cut_at) if unhealthy else None
    # Back: the first answer from the restored site (from the GET probe in a non-GET run).
    sited = run.probe or run.records
    back = [r["start"] for r in sited if r["start"] >= run.restore_done and r["site"] == run.site]
    out["back_after"] = (back[0] - run.restore_done) if back else None
    out["probe_sites_during_cut"] = sorted(
        {r["site"] or "-" for r in run.probe if run.cut_done <= r["start"] < run.restore_at}
    )
    out["restore_took"] = run.restore_done - run.restore_at
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def table(figs: dict, title: str = "") -> str:
    lines = [title] if title else []
    by_label = "answered by (GET probe)" if figs["method"] != "GET" else "answered by"
    lines.append(f"{'phase':<8} {'sent':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  {by_label}")
    for name, p in figs["phases"].items():
        by = ", ".join(f"{k} {v}" for k, v in sorted(p["sites"].items()))
        lines.append(
            f"{name:<8} {p['sent']:>6} {p['failed']:>6} {_ms(p['p50']):>8} {_ms(p['p99']):>8} {_ms(p['max']):>8}  {by}"
        )
    lines.append(
        f"cut site stops getting requests: client view (last retried request) {_s(figs['last_slow_start'])}, "
        f"edge view (last in flight) {_s(figs['last_in_flight'])}, health gauge 0 at {_s(figs['gauge_unhealthy'])}"
        f" [{figs['slow_during_cut']} slowed requests]"
    )
    lines.append(
        f"cut site serves again {_s(figs['back_after'])} after restore-site returned "
        f"(restore-site itself took {_s(figs['restore_took'])})"
    )
    return "\n".join(lines)


def median_of(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=str(REPO / "inventories" / "lab" / "lab.fleet.yml"))
    parser.add_argument("--service", default="www")
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--cut-seconds", type=float, default=15)
    parser.add_argument("--method", choices=("GET", "POST"), default="GET")
    parser.add_argument("--runs", type=int, default=1, help="repeat the rehearsal; medians at the end")
    parser.add_argument("--no-converge", action="store_true", help="skip lab up and site.yml")
    parser.add_argument(
        "--routes-vars",
        help="JSON extra vars for a playbooks/routes.yml run before the rehearsal, e.g. "
        '\'{"caddy_edge_dial_timeout": "1s"}\' (the routes keep them until the next plain run)',
    )
    parser.add_argument("--json", help="also write every run's figures (and failures) to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the lab needs root")
    sys.path.insert(0, str(REPO / "reconciler"))
    from wakegrid.lab.runtime import Lab

    lab = Lab(args.fleet)
    if not args.no_converge:
        lab.up()
        lab = Lab(args.fleet)
        started = time.monotonic()
        _, recap = run_playbook(lab, "site.yml")
        print(f"site.yml: {time.monotonic() - started:.0f}s, changed {recap}")
    if args.routes_vars:
        _, recap = run_playbook(lab, "routes.yml", extra_vars=args.routes_vars)
        print(f"routes.yml -e {args.routes_vars}: changed {recap}")
    tgt = target(lab, args.service)
    site = tgt.preferred_site(lab.fleet)
    if lab.is_cut(site):
        lab.restore_site(site)
    install_loadgen(tgt)
    all_figs = []
    for n in range(args.runs):
        run = rehearse(lab, tgt, site, rate=args.rate, method=args.method, cut_seconds=args.cut_seconds)
        figs = figures(run, tgt)
        all_figs.append(figs)
        print(
            table(
                figs,
                f"\n== run {n + 1}/{args.runs}: {args.method} at {args.rate:g}/s, {site} cut {args.cut_seconds:g}s",
            )
        )
        for r in figs["failures"][:10]:
            print(f"  failed: +{r['start'] - run.cut_at:.2f}s from the cut: {r['status']} {r['error']}")
        time.sleep(3)
    if args.runs > 1:
        print(f"\n== medians over {args.runs} runs")
        for key in ("last_slow_start", "last_in_flight", "gauge_unhealthy", "back_after"):
            print(f"  {key:<18} {_s(median_of(all_figs, key))}")
        failed_during = [f["phases"]["during"]["failed"] / max(1, f["phases"]["during"]["sent"]) for f in all_figs]
        print(f"  failed during cut  {statistics.median(failed_during):.2%} of requests")
    if args.json:
        Path(args.json).write_text(json.dumps(all_figs, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
