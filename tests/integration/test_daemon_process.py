"""``wakegrid daemon`` as a process on loopback: HTTP endpoints, signals, bad input at start and on reload.

No lab: the fleet's one site lives on 127.0.0.1 (its gateway's SSH port is closed here, so its
power is unknown: the daemon must say so and act on nothing), its one service's backend is a
real HTTP server on a free loopback port. The lab tests (test_daemon_lab.py) drive the daemon
against real machines.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml
from loopback import loopback_edge
from support import free_port, wait_for

WAKEGRID = [sys.executable, "-m", "wakegrid.cli"]
TOKEN = "daemon-process-test-token-4f9a2c"  # /metrics needs read access (docs/security.md)


def _fleet(backend_port: int) -> dict:
    return {
        **loopback_edge(),
        "nodes": {"gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"}},
        "services": {
            "web": {
                "domain": "web.loop.test",
                "policy": {"mode": "always_on"},
                "health": {"path": "/health"},
                "backends": [{"node": "gw", "port": backend_port}],
            }
        },
    }


@pytest.fixture(scope="module")
def backend():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def files(tmp_path: Path, backend: int):
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(backend), sort_keys=False))
    port = free_port()
    config = tmp_path / "daemon.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "interval": "1s",
                "caddy": {"admin": f"127.0.0.1:{free_port()}", "access_log": None},  # no Caddy here: unknown
                "wireguard": {"command": ["false"]},
                "admin": {"token": TOKEN},
            }
        )
    )
    return fleet, config, port, tmp_path / "state"


def _get(port: int, path: str) -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read().decode()


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _start(fleet: Path, config: Path, state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*WAKEGRID, "daemon", "--fleet", str(fleet), "--config", str(config), "--state-dir", str(state), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logs(proc: subprocess.Popen) -> list[dict]:
    return [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]


def test_daemon_serves_reloads_and_stops_cleanly(files):
    fleet, config, port, state = files
    proc = _start(fleet, config, state, "--dry-run")
    try:
        wait_for(lambda: _get(port, "/healthz")[0] == 200, timeout=20, what="/healthz", errors=(OSError,))
        health = wait_for(
            lambda: (h := json.loads(_get(port, "/healthz")[1]))["last_round"] and h, timeout=20, what="a round"
        )
        assert health["fleet_valid"] is True and health["dry_run"] is True
        metrics = _get(port, "/metrics")[1]
        assert _metric(metrics, "wakegrid_round_seconds_count") >= 1
        assert _metric(metrics, 'wakegrid_observations_total{kind="health",result="up"}') >= 1
        # The gateway's SSH port is closed on loopback: its power is unknown, never down.
        assert 'wakegrid_observations_total{kind="power",result="unknown"}' in metrics
        assert _metric(metrics, "wakegrid_journal_bytes") > 0
        assert (state / "journal.sqlite3").exists()

        # An invalid fleet on SIGHUP is refused; the daemon keeps running on the old one.
        good = fleet.read_text()
        fleet.write_text(good.replace("kind: machine", "kind: toaster"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _metric(_get(port, "/metrics")[1], "wakegrid_fleet_valid") == 0, what="the refusal")
        problems = json.loads(_get(port, "/healthz")[1])["fleet_problems"]
        assert any("nodes.gw.kind" in p for p in problems), problems
        fleet.write_text(good)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _metric(_get(port, "/metrics")[1], "wakegrid_fleet_valid") == 1, what="the reload")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logs = _logs(proc)
    messages = [entry["msg"] for entry in logs]
    assert "wakegrid daemon started" in messages and messages[-1] == "stopped"
    refused = next(entry for entry in logs if entry["msg"].startswith("fleet reload refused"))
    assert refused["level"] == "error" and any("toaster" in p or "kind" in p for p in refused["problems"])


def test_invalid_fleet_at_start_exits_1_with_its_problems(files):
    fleet, config, _port, state = files
    fleet.write_text(fleet.read_text().replace("port: ", "port: -"))
    proc = _start(fleet, config, state)
    assert proc.wait(timeout=30) == 1
    err = proc.stderr.read()
    assert "invalid fleet" in err and "services.web.backends[0].port" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("interval: often\n", "interval"),
        ("listen: nowhere\n", "listen: 'nowhere' must be host:port"),
        ("monitoring: {user_agents: ['(']}\n", "is not a regular expression"),
        ("surprise: 1\n", "surprise: unknown field"),
        ("- a list\n", "must be a mapping"),
    ],
)
def test_invalid_config_exits_1_naming_the_key(files, content, expected):
    fleet, config, _port, state = files
    config.write_text(content)
    proc = _start(fleet, config, state)
    assert proc.wait(timeout=30) == 1
    err = proc.stderr.read()
    assert "invalid daemon config" in err and expected in err, err
    assert "Traceback" not in err


def test_a_journal_that_cannot_be_opened_is_a_clear_error(files):
    fleet, config, _port, state = files
    state.write_text("not a directory")
    proc = _start(fleet, config, state)
    assert proc.wait(timeout=30) == 4
    err = proc.stderr.read()
    assert str(state) in err and "Traceback" not in err, err


def test_a_port_in_use_stops_the_daemon_with_a_clear_error(files):
    fleet, config, port, state = files
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = _start(fleet, config, state)
        assert proc.wait(timeout=30) == 1
    logs = _logs(proc)
    refusal = next(entry for entry in logs if entry["msg"] == "cannot listen")
    assert refusal["listen"] == f"127.0.0.1:{port}" and "in use" in refusal["error"], refusal


def test_reconcile_once_prints_every_decision_with_its_reason(files):
    fleet, config, _port, _state = files
    proc = subprocess.run(
        [*WAKEGRID, "reconcile", "--fleet", str(fleet), "--config", str(config), "--once", "--dry-run", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    subjects = {d["subject"]: d for d in report["decisions"]}
    # Its backend answers, but its node's power cannot be seen: the daemon waits, and says why.
    assert subjects["service web"]["verdict"] == "wait"
    assert "gw: power unknown (127.0.0.1:22 refuses connections" in subjects["service web"]["reason"]
    assert report["observed"]["health"]["web[0]"]["state"] == "up"
    assert report["observed"]["power"]["gw"]["power"] == "unknown"
    assert report["starts"] == [] and report["stops"] == []
    text = subprocess.run(
        [*WAKEGRID, "reconcile", "--fleet", str(fleet), "--config", str(config), "--once", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert text.returncode == 0 and "dry run: nothing is done" in text.stdout
    assert "node gw:" in text.stdout
