"""Schemathesis against a real ``wakegrid daemon`` on loopback: every operation of its own OpenAPI document.

The daemon runs with ``--dry-run`` (a POST that would act is refused 409: nothing is ever started or
stopped) on a loopback fleet, with an admin token; schemathesis (its CLI, as CI runs it) reads
``/openapi.json`` with that token and sends generated requests to every operation, checking that
none is a server error, that every response matches the schema of its status code and that every
status code is one the document declares. Bounded: a few examples per operation and a time budget.
The live event stream never ends, so it is left out here (tests/unit/test_api.py reads it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from loopback import loopback_edge
from support import free_port, wait_for

WAKEGRID = [sys.executable, "-m", "wakegrid.cli"]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
TOKEN = "schema-test-token-1f7d0c"
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def _fleet() -> dict:
    return {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            "nas": {"kind": "machine", "site": "home", "address": "127.0.0.3", "mac": "52:54:00:00:00:03"},
            "dock": {"kind": "machine", "site": "home", "address": "127.0.0.4", "docker": {"api": "tcp://127.0.0.1:1"}},
            "app-box": {"kind": "container", "parent": "dock", "container": "app"},
        },
        "dependencies": {"app-box": ["nas"]},
        "services": {
            "stream": {
                "domain": "stream.loop.test",
                "policy": {"mode": "on_demand", "idle_after": "20m"},
                "backends": [{"node": "app-box", "port": 8096}],
            },
            "www": {
                "domain": "www.loop.test",
                "policy": {"mode": "always_on"},
                "backends": [{"node": "gw", "port": 1}],
            },
        },
    }


def _get(port: int, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, response.read()


@pytest.fixture
def daemon(tmp_path: Path):
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(), sort_keys=False))
    port = free_port()
    config = tmp_path / "daemon.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "interval": "2s",
                "probe_timeout": 0.5,
                "caddy": {"admin": f"127.0.0.1:{free_port()}", "access_log": None},
                "wireguard": {"command": ["false"]},
                "admin": {"token": TOKEN, "networks": ["127.0.0.0/8"]},
            }
        )
    )
    command = [*WAKEGRID, "daemon", "--fleet", str(fleet), "--config", str(config)]
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        [*command, "--state-dir", str(tmp_path / "state"), "--dry-run"], stdout=subprocess.DEVNULL, stderr=log
    )

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        return _get(port, "/healthz")[0] == 200

    try:
        wait_for(healthy, timeout=30, what="/healthz", errors=(OSError,))
        wait_for(lambda: json.loads(_get(port, "/healthz")[1])["last_round"], timeout=30, what="a first round")
        yield port, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_every_operation_answers_what_its_schema_says_and_never_a_server_error(daemon):
    port, workdir = daemon
    status, document = _get(port, "/openapi.json")
    assert status == 200
    operations = [(m.upper(), p) for p, methods in json.loads(document)["paths"].items() for m in methods]
    assert ("GET", "/api/status") in operations and ("POST", "/api/nodes/{node}/stop") in operations
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--checks",
            CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--max-time",
            "60",
            "--seed",
            "13",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--exclude-path",
            "/api/events",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workdir,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    logs = (workdir / "daemon.log").read_text()
    assert TOKEN not in logs
    assert "Traceback" not in logs, logs[-4000:]
