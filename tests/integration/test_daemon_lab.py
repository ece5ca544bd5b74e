"""The reconciler daemon against the lab's real parts: the "Done when" list of issue 11, end to end.

Each test writes a fleet of its own (the lab fleet copied and changed with yaml: only the services it
needs, a short ``idle_after``, …) and a daemon config (a round every 2 s, listening on the edge's WAN
address so this machine reads its ``/healthz`` and ``/metrics``), installs both in the lab's edge
(:class:`wakegrid.lab.daemon.LabDaemon`, what ``wakegrid lab daemon install`` runs: quick once the
venv is there) and starts ``wakegrid.service`` there with an empty journal. The daemon then drives the
lab from inside the edge as it would drive real machines (SSH, Wake-on-LAN from the site gateways, the
Proxmox and Docker APIs, ``routes.yml`` on Caddy), while the tests act from outside as a person would:
``wakegrid lab power``, ``lab cut-site``, a streaming request from the lab's client through the edge,
the Proxmox API port of pve1 blocked. They wait on conditions — the daemon's ``/healthz`` (time of its
last round) and ``/metrics``, its journal (decision log, actions, booting nodes; read with the edge's
python3), the lab's containers, the Wake-on-LAN listener's log — never on fixed sleeps; and they put
the lab back as they found it (daemon stopped, ``lab.restore()``, the edge's routes as the lab fleet
has them: a push from a test fleet drops the routes of the services it does not name).

1. ``on_demand`` (stream, idle_after 20 s, nas confirm_shutdown off, vm-docker depending on nas):
   kept awake while a stream through the edge is open; after it closes, stopped once idle (jellyfin)
   but the nas stays while vm-docker depends on it; with vm-docker gone the chain ends with the nas.
2. ``scheduled`` (sandbox, UTC window opening a minute or two after the test starts): comes up when
   the window opens, goes down when it closes. Real clock.
3. ``always_on`` (www): srv-thory powered off behind the daemon's back is woken again.
4. A site cut: dijon leaves the edge's pool of www and comes back after ``restore-site``; Caddy's
   config is pushed exactly twice.
5. The daemon SIGKILLed while srv-thory boots (magic packet sent, a long boot delay given to its lab
   NIC) and started again: the wake completes, without a second burst of magic packets.
6. pve1's Proxmox API unreachable while stream's idle time runs out: nothing is stopped and the
   decision log says why (power unknown); once the API answers again, jellyfin is stopped.

``-s`` prints each test's decision log and the daemon's last log lines. The test without the lab
checks the lab app's streaming endpoint through a real Caddy on loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import failover as rehearsal

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "reconciler" / "wakegrid" / "lab" / "files" / "app.py"
CADDY = Path(sys.executable).with_name("caddy")
DOCKER = "/usr/bin/docker"
WAKEGRID = str(Path(sys.executable).with_name("wakegrid"))

INTERVAL = 2.0  # seconds between the daemon's rounds in every test
JOURNAL = "/var/lib/wakegrid/journal.sqlite3"  # wakegrid.lab.daemon.STATE_DIR + daemon.service.JOURNAL_FILE
ADMIN_SOCKET = "/run/caddy/admin.sock"
STREAM_PIDFILE = "/tmp/wakegrid-test-stream.pid"
WOL_CONFIG = "/etc/wakegrid-lab/wol.json"  # in each site's listener (wakegrid.lab.topology)
PVE_PORT_RULE = ["INPUT", "-p", "tcp", "--dport", "8006", "-m", "comment", "--comment", "wakegrid-test-api-down"]

# Run with the edge's python3 (no sqlite3 CLI there): rows of a read-only query as JSON.
JOURNAL_QUERY = r"""
import json, os, sqlite3, sys
path, query, params = sys.argv[1], sys.argv[2], sys.argv[3:]
if not os.path.exists(path):
    print("[]")  # no journal yet: connecting would create an empty file
    sys.exit(0)
conn = sqlite3.connect(path, timeout=10)
conn.row_factory = sqlite3.Row
print(json.dumps([dict(row) for row in conn.execute(query, params)]))
"""


# --------------------------------------------------------------------------- the daemon in the edge


class Daemon:
    """``wakegrid.service`` in the lab's edge, started on a fleet and config of the test's own."""

    def __init__(self, lab, tmp: Path):
        from wakegrid.lab.daemon import LabDaemon

        self.lab = lab
        self.tmp = tmp
        self.unit = LabDaemon(lab.lab, log=lambda line: print(f"  {line}"))
        self.url = ""
        self.started_at: datetime | None = None

    # -- running it
    def start(self, name: str, fleet: dict, **config: Any) -> None:
        """Install ``fleet`` (as NAME.fleet.yml) and the config with ``config`` on top; start on an empty journal."""
        from wakegrid.lab.daemon import admin_section

        fleet_path = self.tmp / f"{name}.fleet.yml"
        fleet_path.write_text(yaml.safe_dump(fleet, sort_keys=False))
        config_path = self.tmp / f"{name}.daemon.yml"
        settings = {
            "listen": f"{self.lab.fleet.edge.address}:9380",
            "interval": f"{INTERVAL:g}s",
            "stop_grace": "5s",
            "admin": admin_section(self.lab.lab),  # this machine reads /metrics and /healthz
        }
        config_path.write_text(yaml.safe_dump({**settings, **config}, sort_keys=False))
        self.stop()
        report = self.unit.install(fleet_path, config_path)
        print(f"\n{name}: {report.summary()}")
        # Every test starts from an empty journal: no memory of another test's pools, backoffs or boots.
        self._edge("rm", "-f", JOURNAL, f"{JOURNAL}-wal", f"{JOURNAL}-shm")
        self.started_at = datetime.now(UTC)
        self.unit.start()
        self.url = self.unit.url()

    def restart(self) -> None:
        self.started_at = datetime.now(UTC)
        self.unit.start()

    def kill(self) -> None:
        self.unit.kill()

    def stop(self) -> None:
        if self.unit.exec(["test", "-f", "/etc/systemd/system/wakegrid.service"]).returncode == 0:
            self.unit.exec(["systemctl", "stop", "wakegrid.service"], timeout=120)

    def _edge(self, *cmd: str) -> str:
        proc = self.unit.exec(list(cmd))
        assert proc.returncode == 0, f"{' '.join(cmd)} in the edge failed ({proc.returncode}): {proc.stderr}"
        return proc.stdout

    # -- what it says
    def _get(self, path: str) -> str:
        from wakegrid.lab.daemon import lab_credentials

        # The lab's admin token: /metrics is for admins (docs/security.md); /healthz takes it too.
        token = lab_credentials(self.lab.lab).token
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode()

    def healthz(self) -> dict:
        return json.loads(self._get("/healthz"))

    def last_round(self) -> datetime | None:
        try:
            stamp = self.healthz().get("last_round")
        except OSError:
            return None  # restarting
        return datetime.fromisoformat(stamp) if stamp else None

    def metric(self, name: str, **labels: str) -> float:
        """A sample of /metrics (0 when the series does not exist yet: counters with labels appear on first use)."""
        for family in text_string_to_metric_families(self._get("/metrics")):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def journal(self, query: str, *params: object) -> list[dict]:
        out = self._edge("python3", "-c", JOURNAL_QUERY, JOURNAL, query, *(str(p) for p in params))
        return json.loads(out)

    def decisions(self, subject: str | None = None) -> list[dict]:
        """The decision log, oldest first (a row per change of a subject's verdict or reason)."""
        if subject is None:
            return self.journal("SELECT id, at, subject, verdict, reason FROM decisions ORDER BY id")
        return self.journal(
            "SELECT id, at, subject, verdict, reason FROM decisions WHERE subject = ? ORDER BY id", subject
        )

    def said(self, subject: str, pattern: str, verdict: str | None = None) -> dict | None:
        """The first decision about ``subject`` whose reason matches ``pattern`` (and verdict), if any."""
        for row in self.decisions(subject):
            if re.search(pattern, row["reason"]) and (verdict is None or row["verdict"] == verdict):
                return row
        return None

    def actions(self, kind: str | None = None) -> list[dict]:
        rows = self.journal(
            "SELECT id, kind, target, reason, state, error, created_at, finished_at FROM actions ORDER BY id"
        )
        return [row for row in rows if kind is None or row["kind"] == kind]

    def booting(self) -> dict[str, dict]:
        return {row["node"]: row for row in self.journal("SELECT node, since, step FROM booting")}

    # -- waiting
    def wait(self, predicate, timeout: float, what: str) -> float:
        """LabHandle.wait_until, with what the daemon decided and logged when it times out."""
        try:
            return self.lab.wait_until(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.report()}") from None

    def wait_round_after(self, moment: datetime, timeout: float | None = None) -> None:
        """Until a round observed the world at ``moment`` or later (its decisions are then journaled)."""
        seconds = max(0.0, (moment - datetime.now(UTC)).total_seconds())
        timeout = timeout if timeout is not None else seconds + 6 * INTERVAL + 20
        self.wait(
            lambda: (last := self.last_round()) is not None and last >= moment,
            timeout,
            f"a round of the daemon at or after {moment:%H:%M:%S}",
        )

    def report(self) -> str:
        """The decision log and the daemon's last log lines, for failures and ``-s``."""
        lines = ["decision log:"]
        try:
            lines += [f"  {r['at'][11:19]} {r['subject']}: {r['verdict']}: {r['reason']}" for r in self.decisions()]
            lines.append("actions:")
            lines += [
                f"  #{a['id']} {a['kind']} {a['target']} {a['state']} at {a['created_at'][11:19]}: {a['reason']}"
                + (f" ({a['error']})" if a["error"] else "")
                for a in self.actions()
            ]
        except AssertionError as exc:
            lines.append(f"  (journal unreadable: {exc})")
        try:
            lines += ["daemon log (last 40 lines):", self.unit.logs(40)]
        except Exception as exc:
            lines.append(f"  (no log: {exc})")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def edge(lab) -> Iterator:
    """The lab with every host on and no daemon running; afterwards also Caddy's routes as the lab fleet has them.

    The tests that go through the edge converge its routes first (:func:`ensure_edge_routes`).
    """
    from wakegrid.lab.daemon import LabDaemon

    unit = LabDaemon(lab.lab, log=lambda line: print(f"  {line}"))
    unit.exec(["systemctl", "stop", "wakegrid.service"], timeout=120)  # another test module's daemon
    lab.restore()
    # Once here (a cold venv takes minutes): each test's own install is then a matter of seconds.
    print(f"\n{unit.install(lab.fleet_path).summary()}")
    yield lab
    unit.exec(["systemctl", "stop", "wakegrid.service"], timeout=120)
    lab.restore()
    ensure_edge_routes(lab)


@pytest.fixture
def daemon(edge, tmp_path) -> Iterator[Daemon]:
    """A daemon for one test: stopped at the end, and the lab restored after it (not before: it would react)."""
    handle = Daemon(edge, tmp_path)
    try:
        yield handle
    finally:
        if handle.url:
            print(handle.report())
        handle.stop()
        edge.restore()


# --------------------------------------------------------------------------- fleets of the tests


def fleet_variant(
    lab,
    services: dict[str, dict],
    nodes: dict[str, dict] | None = None,
    dependencies: dict[str, list[str]] | None = None,
) -> dict:
    """The lab fleet with only ``services`` (name → changes merged into the lab's definition)."""
    document = yaml.safe_load(Path(lab.fleet_path).read_text())
    document["services"] = {name: {**document["services"][name], **changes} for name, changes in services.items()}
    for name, changes in (nodes or {}).items():
        document["nodes"][name] = {**document["nodes"][name], **changes}
    if dependencies is not None:
        document["dependencies"] = dependencies
    return document


# --------------------------------------------------------------------------- the lab's parts


def edge_admin(lab, path: str) -> Any:
    """GET on Caddy's admin API in the edge (its unix socket), as JSON."""
    proc = lab.exec("vps", "curl", "-sS", "--fail", "--unix-socket", ADMIN_SOCKET, f"http://127.0.0.1{path}")
    return json.loads(proc.stdout)


def _dials(item: Any) -> Iterator[str]:
    if isinstance(item, dict):
        for key, value in item.items():
            if key == "dial" and isinstance(value, str):
                yield value
            else:
                yield from _dials(value)
    elif isinstance(item, list):
        for value in item:
            yield from _dials(value)


def edge_pools(lab) -> dict[str, set[str]]:
    """Host → the backends (fleet addresses) in its route in Caddy's running config.

    Only the fleet's backends: a sleepable service's route also holds the reconciler's address
    (the wake fallback), which is no member of its pool.
    """
    backends = {dial for name in lab.fleet.services for dial in expected_pool(lab, name)}
    pools: dict[str, set[str]] = {}
    for server in (edge_admin(lab, "/config/apps/http/servers") or {}).values():
        for route in server.get("routes") or []:
            hosts = [h for match in route.get("match") or [] for h in match.get("host") or []]
            for host in hosts:
                pools.setdefault(host, set()).update(set(_dials(route.get("handle"))) & backends)
    return pools


def expected_pool(lab, service: str) -> set[str]:
    return {backend.dial for backend in rehearsal.target(lab.lab, service).backends}


def ensure_edge_routes(lab) -> None:
    """Caddy in the edge has per-host metrics and every lab service's full pool (site.yml or routes.yml if not)."""
    metrics = edge_admin(lab, "/config/apps/http/metrics") or {}
    if not metrics.get("per_host"):
        out, _ = rehearsal.run_playbook(lab.lab, "site.yml")
        print(f"\nsite.yml converged the edge (per-host metrics were off):\n{out[-800:]}")
    pools = edge_pools(lab)
    wanted = {svc.domain: expected_pool(lab, name) for name, svc in lab.fleet.services.items()}
    if any(pools.get(domain) != dials for domain, dials in wanted.items()):
        rehearsal.run_playbook(lab.lab, "routes.yml")
        pools = edge_pools(lab)
    assert all(pools.get(domain) == dials for domain, dials in wanted.items()), pools


class Listener:
    """The Wake-on-LAN listener of one site (a container on its LAN playing the machines' NICs)."""

    def __init__(self, lab, site: str):
        self.container = next(h.container for h in lab.plan.hosts if h.role == "listener" and h.site == site)
        self.original: str | None = None

    def lines(self, since: float) -> list[tuple[float, str]]:
        """(epoch, line) of what it logged since ``since`` (epoch seconds), from Docker's own timestamps."""
        proc = support.docker("logs", "--timestamps", "--since", f"{since - 1:.3f}", self.container)
        found = []
        for line in (proc.stdout + proc.stderr).splitlines():
            stamp, _, text = line.partition(" ")
            head, _, fraction = stamp.rstrip("Z").partition(".")
            at = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or 0}")
            if at >= since:
                found.append((at, text))
        return sorted(found)

    def packets(self, mac: str, since: float) -> list[tuple[float, str]]:
        return [(at, text) for at, text in self.lines(since) if f"magic packet for {mac}" in text]

    def set_boot_delay(self, lab, container: str, seconds: float) -> None:
        """The lab NIC of ``container`` boots its machine ``seconds`` after a magic packet (config + SIGHUP)."""
        current = support.docker("exec", self.container, "cat", WOL_CONFIG).stdout
        if self.original is None:
            self.original = current
        config = json.loads(current)
        entry = next(e for e in config.values() if e["container"] == container)
        entry["boot_delay"] = seconds
        self._load(lab, json.dumps(config, indent=2, sort_keys=True) + "\n", len(config))

    def restore(self, lab) -> None:
        if self.original is not None:
            self._load(lab, self.original, len(json.loads(self.original)))
            self.original = None

    def _load(self, lab, text: str, machines: int) -> None:
        since = time.time()
        write = f"cat > {WOL_CONFIG}.new && mv {WOL_CONFIG}.new {WOL_CONFIG}"
        subprocess.run(
            [DOCKER, "exec", "-i", self.container, "sh", "-c", write],
            input=text, text=True, check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        support.docker("kill", "--signal", "HUP", self.container)
        lab.wait_until(
            lambda: any(f"config reloaded: {machines} machine" in t for _, t in self.lines(since)),
            10,
            f"{self.container} to reload its config",
        )


class Stream:
    """``GET /stream`` of a service through the edge, from the lab's client: a request in flight until closed."""

    def __init__(self, lab, service: str, seconds: int = 600):
        target = rehearsal.target(lab.lab, service)
        self.container = target.client_container
        url = f"https://{target.domain}/stream?seconds={seconds}"
        curl = f"curl -sS -N -k --max-time {seconds + 30} --resolve {target.domain}:443:{target.edge_public} '{url}'"
        # The shell writes its pid and becomes curl: closing the stream is killing that one process.
        self.proc = subprocess.Popen(
            [DOCKER, "exec", self.container, "sh", "-c", f"echo $$ > {STREAM_PIDFILE}; exec {curl}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.chunks: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.closed_at: datetime | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.strip():
                self.chunks.append(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            support.docker("exec", self.container, "sh", "-c", f"kill $(cat {STREAM_PIDFILE})", check=False)
            self.proc.wait(15)
        self.closed_at = datetime.now(UTC)
        self.reader.join(5)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def lab_cli(*args: str) -> None:
    """``wakegrid lab …`` as a person types it (the lab fleet is the default)."""
    proc = subprocess.run([WAKEGRID, "lab", *args], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, f"wakegrid lab {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"


def at(row: dict, key: str = "created_at") -> datetime:
    return datetime.fromisoformat(row[key])


# --------------------------------------------------------------------------- 1. on_demand


IDLE = 20  # seconds of idle_after in the on_demand test


def test_on_demand_sleeps_after_idle_never_under_an_open_stream_nor_under_a_dependant(daemon, edge):
    lab = edge
    fleet = fleet_variant(
        lab,
        {"stream": {"policy": {"mode": "on_demand", "idle_after": f"{IDLE}s"}}},
        nodes={"nas": {"confirm_shutdown": False}},  # the chain may end with the nas
        dependencies={"jellyfin": ["nas"], "vm-docker": ["nas"]},  # vm-docker: no service uses it
    )
    assert all(lab.is_on(n) for n in ("jellyfin", "nas", "pve1", "vm-docker"))
    ensure_edge_routes(lab)  # before the stream: a Caddy reload hides the requests in flight from its metrics
    stream = Stream(lab, "stream")
    try:
        lab.wait_until(lambda: stream.chunks, 15, "the first chunk of the stream through the edge")
        daemon.start("ondemand", fleet)

        # -- a request in flight: kept past idle_after
        daemon.wait(
            lambda: daemon.said("service stream", r"kept awake: 1 request in flight"),
            30,
            "the decision 'kept awake: 1 request in flight' on stream",
        )
        daemon.wait_round_after(daemon.started_at + timedelta(seconds=IDLE + 2 * INTERVAL))
        assert stream.proc.poll() is None and len(stream.chunks) >= IDLE, "the stream did not stay open"
        assert not daemon.actions("stop"), daemon.report()
        assert lab.is_on("jellyfin") and lab.is_on("nas")
        assert daemon.decisions("service stream")[-1]["reason"] == "kept awake: 1 request in flight"
    finally:
        stream.close()

    # -- the stream closed: idle after idle_after; jellyfin stops, the nas stays for vm-docker
    daemon.wait(lambda: not lab.is_on("jellyfin"), IDLE + 90, "jellyfin stopped once stream was idle")
    (stop,) = daemon.actions("stop")
    assert stop["target"] == "jellyfin", stop
    idle_for = (at(stop) - stream.closed_at).total_seconds()
    assert idle_for >= IDLE - 1, f"stopped {idle_for:.1f}s after the last request ended (idle_after {IDLE}s)"
    daemon.wait(
        lambda: daemon.said("node nas", r"^not stopped: .*vm-docker", verdict="keep"),
        30,
        "the decision that the nas is kept for vm-docker",
    )
    daemon.wait_round_after(datetime.now(UTC) + timedelta(seconds=2 * INTERVAL))
    assert lab.is_on("nas"), "the nas was stopped while vm-docker, which depends on it, runs"
    assert [a["target"] for a in daemon.actions("stop")] == ["jellyfin"]

    # -- the dependant gone (behind the daemon's back): the chain ends with the nas
    lab.power("vm-docker", False)
    daemon.wait(lambda: not lab.is_on("nas"), 90, "the nas stopped once vm-docker was off")
    assert [a["target"] for a in daemon.actions("stop")] == ["jellyfin", "nas"]
    # The machine is off before shutdown.yml has seen it go: the run then ends.
    daemon.wait(lambda: daemon.actions("stop")[-1]["state"] != "running", 60, "the stop of the nas to finish")
    assert all(a["state"] == "done" for a in daemon.actions("stop")), daemon.report()
    assert daemon.said("node nas", r"nobody needs it", verdict="stop")
    assert lab.is_on("pve1"), "pve1 asks for confirmation (confirm_shutdown): only proposed"
    assert daemon.said("node pve1", r"^proposed: ", verdict="leave")


# --------------------------------------------------------------------------- 2. scheduled


def _window(now: datetime) -> tuple[datetime, datetime]:
    """From the next whole minute at least 30 s away, for two minutes."""
    start = (now + timedelta(seconds=30)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    return start, start + timedelta(minutes=2)


def _hhmm(moment: datetime, end: bool = False) -> str:
    text = moment.strftime("%H:%M")
    return "24:00" if end and text == "00:00" else text


def test_scheduled_comes_up_when_its_window_opens_and_goes_down_when_it_closes(daemon, edge):
    lab = edge
    app = f"http://{lab.address('vm-docker')}:8081/health"
    lab.power("vm-docker", False)  # takes sandbox with it: asleep before its window
    daemon.unit.install(lab.fleet_path)  # a changed package reinstalls now, not between the window and its start
    start, end = _window(datetime.now(UTC))
    window = {"days": "daily", "start": _hhmm(start), "end": _hhmm(end, end=True)}
    fleet = fleet_variant(lab, {"sandbox": {"policy": {"mode": "scheduled", "timezone": "UTC", "windows": [window]}}})
    print(f"\nsandbox's window: {window} UTC")
    daemon.start("scheduled", fleet)
    assert datetime.now(UTC) < start - timedelta(seconds=INTERVAL), "the daemon started too late for the window"
    daemon.wait(lambda: daemon.said("service sandbox", r"outside its windows"), 30, "sandbox outside its window")

    seen: dict[str, object] = {}

    def sandbox_up() -> bool:
        seen["on"], seen["answers"] = lab.is_on("sandbox"), answers(app)
        return bool(seen["on"] and seen["answers"])

    try:
        daemon.wait(sandbox_up, (end - datetime.now(UTC)).total_seconds(), "sandbox up inside its window")
    except AssertionError as exc:
        inner = lab.exec("vm-docker", "sh", "-c", "docker ps -a; docker logs --tail 30 sandbox 2>&1", check=False)
        raise AssertionError(f"{exc}\nlast seen: {seen}\nin vm-docker:\n{inner.stdout}{inner.stderr}") from None
    up_at = datetime.now(UTC)
    (begin,) = daemon.actions("start")
    assert at(begin) >= start, f"started at {begin['created_at']}, before the window opened ({start:%H:%M})"
    assert daemon.said("service sandbox", r"inside its window")
    print(f"sandbox up {(up_at - start).total_seconds():.1f}s after its window opened")

    daemon.wait(lambda: not lab.is_on("sandbox"), (end - datetime.now(UTC)).total_seconds() + 90,
                "sandbox down after its window")  # fmt: skip
    daemon.wait(
        lambda: (stops := daemon.actions("stop")) and all(s["state"] != "running" for s in stops),
        90,
        "the stop to finish",
    )
    stops = daemon.actions("stop")
    assert all(at(s) >= end for s in stops), f"stopped before the window closed ({end:%H:%M}): {stops}"
    assert [(s["target"], s["state"]) for s in stops] in ([("vm-docker", "done")], [("sandbox", "done")]), stops
    daemon.wait(
        lambda: daemon.decisions("service sandbox")[-1]["reason"].startswith("outside its windows"),
        30,
        "the decision that sandbox is outside its window",
    )
    assert lab.is_on("srv-thory"), "srv-thory asks for confirmation (confirm_shutdown): only proposed"


# --------------------------------------------------------------------------- 3. always_on


def test_always_on_node_powered_off_behind_the_daemons_back_is_started_again(daemon, edge):
    lab = edge
    listener = Listener(lab, "thory")
    mac = lab.fleet.nodes["srv-thory"].mac
    daemon.start("alwayson", fleet_variant(lab, {"www": {}}))
    daemon.wait_round_after(daemon.started_at)
    assert not daemon.actions("start")

    since = time.time()
    lab_cli("power", "srv-thory", "off")
    daemon.wait(lambda: lab.is_on("srv-thory"), 90, "srv-thory started again")
    took = time.time() - since
    (start,) = daemon.actions("start")
    assert start["target"] == "srv-thory", start
    daemon.wait(lambda: daemon.actions("start")[0]["state"] == "done", 60, "the start of srv-thory to finish")
    gateway = re.escape(lab.address("gw-thory"))
    packets = listener.packets(mac, since)
    assert packets and all(re.search(rf"from {gateway}:", text) for _, text in packets), packets
    assert daemon.said("node srv-thory", r".", verdict="start")
    assert daemon.metric("wakegrid_actions_total", kind="start", result="done") == 1
    print(f"srv-thory back on {took:.1f}s after `wakegrid lab power srv-thory off`")


# --------------------------------------------------------------------------- 4. site cut


def test_a_cut_site_leaves_the_edge_pool_and_comes_back_with_exactly_two_pushes(daemon, edge):
    lab = edge
    www = lab.fleet.services["www"]
    dijon = rehearsal.target(lab.lab, "www").dial_of("dijon")
    full = expected_pool(lab, "www")
    # fails 2: one slow probe of a healthy backend (a busy machine) is not a dead site
    fleet = fleet_variant(lab, {"www": {"health": {**www.health.model_dump(mode="json"), "fails": 2}}})
    ensure_edge_routes(lab)  # another test's daemon may have left a site out
    daemon.start("sitecut", fleet)
    daemon.wait_round_after(daemon.started_at + timedelta(seconds=2 * INTERVAL))
    assert edge_pools(lab)[www.domain] == full
    assert daemon.metric("wakegrid_caddy_pushes_total") == 0, "a push with nothing changed"

    try:
        lab_cli("cut-site", "dijon")
        daemon.wait(lambda: edge_pools(lab)[www.domain] == full - {dijon}, 60, "dijon out of www's pool")
        assert daemon.said("route www", r"leave out dijon", verdict="route")
        daemon.wait(lambda: daemon.metric("wakegrid_caddy_pushes_total") == 1, 30, "the push counted")
    finally:
        lab_cli("restore-site", "dijon")
    daemon.wait(lambda: edge_pools(lab)[www.domain] == full, 90, "dijon back in www's pool")
    daemon.wait(lambda: daemon.metric("wakegrid_caddy_pushes_total") == 2, 30, "the second push counted")
    assert daemon.said("route www", r"back in: dijon", verdict="route")
    # Nothing more to push: a few more rounds change nothing.
    daemon.wait_round_after(datetime.now(UTC) + timedelta(seconds=3 * INTERVAL))
    assert daemon.metric("wakegrid_caddy_pushes_total") == 2
    routes = daemon.actions("routes")
    assert [a["state"] for a in routes] == ["done", "done"], routes


# --------------------------------------------------------------------------- 5. SIGKILL mid-wake


BOOT_DELAY = 30.0  # seconds srv-thory's lab NIC waits before booting it: the daemon is killed meanwhile


def test_a_daemon_killed_mid_wake_finishes_it_after_a_restart_without_a_second_burst(daemon, edge):
    lab = edge
    listener = Listener(lab, "thory")
    mac = lab.fleet.nodes["srv-thory"].mac
    container = lab.plan.host("srv-thory").container
    try:
        listener.set_boot_delay(lab, container, BOOT_DELAY)
        lab.power("srv-thory", False)
        since = time.time()
        daemon.start("midwake", fleet_variant(lab, {"www": {}}))
        daemon.wait(lambda: listener.packets(mac, since), 60, "the magic packet for srv-thory")
        daemon.wait(lambda: "srv-thory" in daemon.booting(), 10, "the journal to know srv-thory boots")
        daemon.kill()
        killed_at = time.time()
        assert not lab.is_on("srv-thory"), "srv-thory booted before the daemon was killed: no boot delay?"
        (interrupted,) = daemon.actions("start")

        daemon.restart()
        daemon.wait_round_after(datetime.now(UTC))
        assert daemon.actions("start")[0]["id"] == interrupted["id"]
        assert daemon.actions("start")[0]["state"] == "interrupted", daemon.actions("start")
        assert daemon.said("service www", r"srv-thory booting since", verdict="wait") or daemon.said(
            "node srv-thory", r"booting since", verdict="wait"
        ), "no decision says the restarted daemon waits for the boot"
        daemon.wait(lambda: lab.is_on("srv-thory"), BOOT_DELAY + 60, "srv-thory booted")
        daemon.wait(lambda: "srv-thory" not in daemon.booting(), 30, "the boot seen and journaled")
        boots = daemon.journal("SELECT node, seconds FROM boots WHERE node = 'srv-thory'")
        assert len(boots) == 1 and boots[0]["seconds"] >= BOOT_DELAY - 2, boots

        # One burst, before the kill: nothing for srv-thory since, and no second start.
        daemon.wait_round_after(datetime.now(UTC) + timedelta(seconds=2 * INTERVAL))
        packets = listener.packets(mac, since)
        after = [text for moment, text in packets if moment > killed_at]
        assert not after, f"the restarted daemon sent magic packets again: {after}"
        assert packets[-1][0] - packets[0][0] < 3, f"more than one burst before the kill: {packets}"
        assert len(daemon.actions("start")) == 1, daemon.actions("start")
    finally:
        listener.restore(lab)


# --------------------------------------------------------------------------- 6. Proxmox API unreachable


API_IDLE = 30  # idle_after of stream while pve1's API is blocked


def _pve_api(lab, blocked: bool) -> None:
    """Drop (or stop dropping) TCP to pve1's Proxmox API port: the emulator keeps running with its guests."""
    if blocked:
        lab.exec("pve1", "iptables", "-I", *PVE_PORT_RULE, "-j", "DROP")
    else:
        while lab.exec("pve1", "iptables", "-D", *PVE_PORT_RULE, "-j", "DROP", check=False).returncode == 0:
            pass  # every copy of the rule, should a failed run have left one


def test_nothing_stops_while_the_proxmox_api_is_unreachable_and_the_decision_says_why(daemon, edge):
    lab = edge
    fleet = fleet_variant(lab, {"stream": {"policy": {"mode": "on_demand", "idle_after": f"{API_IDLE}s"}}})
    try:
        daemon.start("apidown", fleet, api_timeout="3s")
        daemon.wait_round_after(daemon.started_at)
        assert daemon.said("node jellyfin", r"needed by stream", verdict="keep"), "not wanted at start?"
        _pve_api(lab, blocked=True)
        blocked_at = datetime.now(UTC)
        assert blocked_at < daemon.started_at + timedelta(seconds=API_IDLE - 2 * INTERVAL), "blocked too late"

        daemon.wait(
            lambda: daemon.said("node jellyfin", r"^not stopped: power unknown \(.+\)", verdict="keep"),
            API_IDLE + 30,
            "the decision that jellyfin is kept: its power is unknown",
        )
        daemon.wait_round_after(daemon.started_at + timedelta(seconds=API_IDLE + 2 * INTERVAL))
        assert not daemon.actions("stop"), daemon.report()
        assert lab.is_on("jellyfin") and lab.is_on("nas")
        assert re.match(r"idle (for|since) ", daemon.decisions("service stream")[-1]["reason"]), daemon.report()
        assert "unknown" in daemon.decisions("node jellyfin")[-1]["reason"]
    finally:
        _pve_api(lab, blocked=False)
    # The only thing that kept it: once the API answers, the idle jellyfin is stopped.
    daemon.wait(lambda: not lab.is_on("jellyfin"), 90, "jellyfin stopped once the Proxmox API answered")
    assert [a["target"] for a in daemon.actions("stop")] == ["jellyfin"]
    assert lab.is_on("nas"), "the nas asks for confirmation in the lab fleet: only proposed"


# --------------------------------------------------------------------------- the lab app's stream, no lab


def test_the_lab_apps_stream_goes_through_caddy_line_by_line_and_counts_in_flight(tmp_path):
    """What test 1 relies on, with the real caddy on loopback: each line as it is sent, one request in flight."""
    app_port, proxy_port, admin_port = support.free_port(), support.free_port(), support.free_port()
    config = {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "apps": {
            "http": {
                "metrics": {"per_host": True},
                "servers": {
                    "edge": {
                        "listen": [f"127.0.0.1:{proxy_port}"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            {
                                "match": [{"host": ["stream.test"]}],
                                "handle": [
                                    {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{app_port}"}]}
                                ],
                            }
                        ],
                    }
                },
            }
        },
    }
    (tmp_path / "caddy.json").write_text(json.dumps(config))
    app = subprocess.Popen(
        [sys.executable, "-I", str(APP), "--node", "n1", "--site", "s1", "--serve", f"stream:{app_port}:/health"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    caddy = subprocess.Popen(
        [str(CADDY), "run", "--config", str(tmp_path / "caddy.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{proxy_port}"
        support.wait_for(lambda: answers(f"http://127.0.0.1:{app_port}/health"), 10, what="the app")

        def get(path: str) -> urllib.request.Request:
            return urllib.request.Request(base + path, headers={"Host": "stream.test"})

        support.wait_for(lambda: urllib.request.urlopen(get("/health"), timeout=1).status == 200, 10,
                         what="caddy", errors=(OSError,))  # fmt: skip

        def in_flight() -> float:
            text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2).read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "caddy_http_requests_in_flight" and sample.labels.get("host") == "stream.test":
                        return sample.value
            return 0.0

        started = time.monotonic()
        with urllib.request.urlopen(get("/stream?seconds=3"), timeout=10) as response:
            assert response.status == 200
            assert response.headers.get("Content-Length") is None
            first = json.loads(response.readline())
            first_after = time.monotonic() - started
            assert first["chunk"] == 0 and first["node"] == "n1"
            assert in_flight() == 1, "an open stream is not a request in flight"
            second = json.loads(response.readline())
            second_after = time.monotonic() - started
            rest = [json.loads(line) for line in response.read().decode().splitlines()]
        total = time.monotonic() - started
        assert first_after < 0.8, f"the first line took {first_after:.2f}s: buffered by the proxy?"
        assert second["chunk"] == 1 and 0.8 < second_after < 1.8, second_after
        assert [c["chunk"] for c in rest] == [2, 3] and 2.8 < total < 4.5, (rest, total)
        support.wait_for(lambda: in_flight() == 0, 5, what="the stream no longer in flight")

        # Bad input: a clear 400, never a hang.
        for bad in ("0", "-1", "abc", "3601", ""):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(get(f"/stream?seconds={bad}"), timeout=5)
            assert refused.value.code == 400
            assert "seconds must be a whole number from 1 to 3600" in refused.value.read().decode()
    finally:
        for proc in (caddy, app):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
