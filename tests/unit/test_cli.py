"""The ``wakegrid`` command: output people read and exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from wakegrid.cli import EXIT_BLOCKED, EXIT_BROKEN_PIPE, EXIT_INVALID, EXIT_OK, EXIT_USAGE

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
    assert "valid fleet: 2 sites, 15 nodes, 3 services, 2 dependencies, 0 stacks" in result.stdout


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


def test_plan_prints_what_a_run_prints_from_what_it_assumes():
    """The preview reads as the plan of ``wakegrid wake`` / ``shutdown``, assumed instead of observed."""
    lines = wakegrid("plan", EXAMPLE, "--start", "jellyfin", "--up", "nas").stdout.splitlines()
    assert lines[:2] == ["plan: start jellyfin: 2 steps", "assuming up: pi-dijon, nas, nuc-thory"]
    assert lines[-1] == (
        "step 2/2: start lxc jellyfin via Proxmox API of pve1 (start), because: requested; "
        "then wait until Proxmox reports lxc 201 running (at most 300s)"
    )
    stop = wakegrid("plan", EXAMPLE, "--stop", "pve1", "--down", "vm-ubuntu").stdout.splitlines()
    assert "assuming down: vm-ubuntu (given with --down)" in stop
    assert stop[-1].startswith("proposed: shut down nas: ")
    assert stop[-1].endswith("(to do it: --confirm nas)")  # the command's flag, not the playbook's variable


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


# --------------------------------------------------------------------------- unknown power, infrastructure


def test_plan_stop_with_an_unknown_dependant_is_blocked_and_says_which_and_why():
    result = wakegrid("plan", EXAMPLE, "--stop", "nas", "--unknown", "pve1", "--confirm", "nas")
    assert result.returncode == EXIT_BLOCKED
    assert "assuming unknown: pve1 (given with --unknown); vm-docker (its host pve1 is unknown)" in result.stdout
    assert "nas may still be needed by jellyfin: power unknown (its host pve1 is unknown)" in result.stdout
    plan = json.loads(wakegrid("plan", EXAMPLE, "--stop", "nas", "--unknown", "jellyfin", "--json").stdout)
    assert plan["runnable"] is False and plan["steps"] == []
    assert plan["assumed_unknown"] == {"jellyfin": "given with --unknown"}
    assert "jellyfin" not in plan["assumed_up"]


def test_plan_start_of_an_unknown_node_says_starting_is_harmless():
    result = wakegrid("plan", EXAMPLE, "--start", "jellyfin", "--up", "nas,pve1", "--unknown", "jellyfin")
    assert result.returncode == EXIT_OK, result.stdout
    assert "power unknown (given with --unknown): starting is harmless if it is already up" in result.stdout


def test_plan_refuses_a_node_given_twice():
    result = wakegrid("plan", EXAMPLE, "--stop", "nas", "--up", "pve1", "--unknown", "pve1")
    assert result.returncode == EXIT_USAGE
    assert "pve1 is given with both --up and --unknown" in result.stderr


def test_plan_stop_of_a_gateway_is_refused_unless_forced():
    result = wakegrid("plan", EXAMPLE, "--stop", "pi-dijon")
    assert result.returncode == EXIT_BLOCKED
    assert (
        "pi-dijon is the gateway of site dijon: its Wake-on-LAN (nas, pve1, pve2) and its WireGuard tunnel "
        "would become unreachable" in result.stdout
    )
    assert "(--force-infrastructure stops infrastructure anyway" in result.stdout
    forced = json.loads(wakegrid("plan", EXAMPLE, "--stop", "pi-dijon", "--force-infrastructure", "--json").stdout)
    assert forced["runnable"] is True
    assert [s["node"] for s in forced["steps"]] == ["pi-dijon"]


# --------------------------------------------------------------------------- a reader that goes away


def wakegrid_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command with stdout a real pipe whose reader is already gone, as after `| head`."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "wakegrid.cli", *args], stdout=write, stderr=subprocess.PIPE, timeout=60, check=False
        )
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "args",
    [
        ("plan", EXAMPLE, "--stop", "pve1", "--json"),
        ("plan", EXAMPLE, "--start", "jellyfin"),
        ("validate", EXAMPLE, "--json"),
        ("validate", EXAMPLE),
    ],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(args):
    result = wakegrid_into_a_closed_pipe(*args)
    assert result.stderr == b""
    assert result.returncode == EXIT_BROKEN_PIPE == 141


@pytest.mark.parametrize(
    ("args", "count"),
    [(("plan", EXAMPLE, "--stop", "pve1", "--json"), 10), (("validate", EXAMPLE, "--json"), 1)],
)
def test_piped_into_head_prints_no_traceback(args, count):
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "wakegrid.cli", *args])
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -c {count}"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert len(result.stdout) == count
    assert b"Traceback" not in result.stderr and b"BrokenPipe" not in result.stderr
    assert result.returncode in (0, EXIT_BROKEN_PIPE)  # 0 when the output fitted in the pipe before head left
