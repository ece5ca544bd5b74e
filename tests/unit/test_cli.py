"""The ``wakegrid`` command: output people read and exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wakegrid.cli import EXIT_BLOCKED, EXIT_INVALID, EXIT_OK, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "inventories/example/example.fleet.yml")


def wakegrid(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console entry point as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "wakegrid.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_validate_example_summarises_the_fleet():
    result = wakegrid("validate", EXAMPLE)
    assert result.returncode == EXIT_OK, result.stderr
    assert "valid fleet: 2 sites, 15 nodes, 3 services, 2 dependencies" in result.stdout


def test_validate_lists_every_problem_with_file_line_and_path(tmp_path):
    broken = tmp_path / "broken.fleet.yml"
    text = Path(EXAMPLE).read_text()
    text = text.replace("parent: pve1, vmid: 201", "parent: pve3, vmid: 201")
    text = text.replace('mac: "52:54:00:12:34:56"', 'mac: "52:54:00:12:34"')
    broken.write_text(text)
    result = wakegrid("validate", str(broken))
    assert result.returncode == EXIT_INVALID
    assert "mac: '52:54:00:12:34' is not a MAC address" in result.stderr
    assert result.stdout == ""
    # The structural pass fails first; fix it and the reference problem shows with its line.
    broken.write_text(text.replace('mac: "52:54:00:12:34"', 'mac: "52:54:00:12:34:56"'))
    result = wakegrid("validate", str(broken), "--json")
    assert result.returncode == EXIT_INVALID
    report = json.loads(result.stdout)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "parent: pve3" in row)
    assert report["problems"] == [{"path": "nodes.jellyfin.parent", "reason": "unknown node 'pve3'", "line": line}]


def test_validate_never_prints_secrets(tmp_path):
    secret = "s3cr3t-token-value-7f1c"
    broken = tmp_path / "leaky.fleet.yml"
    text = Path(EXAMPLE).read_text().replace("{env: WAKEGRID_PVE1_TOKEN}", f'"{secret}"')
    broken.write_text(text.replace("vmid: 201", "vmid: 20"))
    result = wakegrid("validate", str(broken))
    assert result.returncode == EXIT_INVALID
    assert secret not in result.stdout + result.stderr


def test_plan_start_jellyfin_wakes_nas_through_gateway_before_proxmox_then_lxc():
    result = wakegrid("plan", EXAMPLE, "--start", "jellyfin", "--json")
    assert result.returncode == EXIT_OK, result.stderr
    plan = json.loads(result.stdout)
    steps = [(s["node"], s["channel"]["kind"], s["channel"]["via"]) for s in plan["steps"]]
    assert steps == [
        ("nas", "wake_on_lan", "pi-dijon"),
        ("pve1", "wake_on_lan", "pi-dijon"),
        ("jellyfin", "proxmox", "pve1"),
    ]
    text = wakegrid("plan", EXAMPLE, "--start", "jellyfin").stdout
    assert text.index("start machine nas") < text.index("start machine pve1") < text.index("start lxc jellyfin")
    assert "Wake-on-LAN magic packet sent from pi-dijon" in text


def test_plan_skips_what_is_already_up():
    plan = json.loads(wakegrid("plan", EXAMPLE, "--start", "jellyfin", "--up", "nas,pve1", "--json").stdout)
    assert [s["node"] for s in plan["steps"]] == ["jellyfin"]
    assert {n["node"] for n in plan["skipped"]} == {"nas", "pve1"}


def test_plan_stop_proxmox_machine_stops_guests_first_and_only_proposes_nas():
    result = wakegrid("plan", EXAMPLE, "--stop", "pve1", "--json")
    assert result.returncode == EXIT_OK
    plan = json.loads(result.stdout)
    stopped = [s["node"] for s in plan["steps"]]
    assert stopped[-1] == "pve1"
    assert set(stopped[:-1]) == {"sandbox", "api", "vm-docker", "vm-ubuntu", "jellyfin"}
    assert stopped.index("sandbox") < stopped.index("vm-docker")
    assert "nas" not in stopped
    assert [n["node"] for n in plan["proposed"]] == ["nas"]
    confirmed = json.loads(wakegrid("plan", EXAMPLE, "--stop", "pve1", "--confirm", "nas", "--json").stdout)
    assert [s["node"] for s in confirmed["steps"]][-1] == "nas"


def test_plan_blocked_exits_3_and_says_who_needs_it():
    result = wakegrid("plan", EXAMPLE, "--stop", "jellyfin")
    assert result.returncode == EXIT_BLOCKED
    assert "jellyfin is still needed by sandbox" in result.stdout
    result = wakegrid("plan", EXAMPLE, "--stop", "jellyfin", "--include-dependants")
    assert result.returncode == EXIT_OK
    assert result.stdout.index("stop container sandbox") < result.stdout.index("stop lxc jellyfin")


@pytest.mark.parametrize(
    "args",
    [
        ("plan", EXAMPLE, "--start", "nope"),
        ("plan", EXAMPLE, "--start", "jellyfin", "--up", "ghost"),
        ("plan", EXAMPLE),
        ("frobnicate",),
    ],
)
def test_usage_errors_exit_2(args):
    result = wakegrid(*args)
    assert result.returncode == EXIT_USAGE
    assert result.stderr


def test_missing_file_is_an_invalid_fleet():
    result = wakegrid("validate", "/nonexistent/x.fleet.yml")
    assert result.returncode == EXIT_INVALID
    assert "cannot read the fleet file" in result.stderr
