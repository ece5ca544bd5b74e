"""wake.yml and shutdown.yml against the lab's real parts, run as the CLI runs them (ansible-runner).

Real magic packets from the site gateway caught by the lab's WoL listener, the PVE API
emulator starting and stopping guest containers, the Docker API inside ``vm-docker``,
SSH power-off. Each test puts the lab's power back as it found it (``lab.restore()``).

Timings: every run prints its steps with their wall time, the time inside the modules that
act and wait, and the rest, Ansible's overhead (start-up, inventory, observing and planning,
includes, facts). ``-s`` shows them.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from wakegrid import actuate
from wakegrid.cli import power as cli_power

DOCKER = "/usr/bin/docker"


@pytest.fixture(scope="module")
def power_lab(lab):
    """The shared lab with everything powered on (the tests power things off and back on)."""
    lab.restore()
    return lab


def run(lab, playbook: str, fleet: Path | None = None, *, check: bool = False, **extravars) -> actuate.RunResult:
    lines: list[str] = []
    result = actuate.run_playbook(playbook, fleet or lab.fleet_path, extravars, check=check, on_line=lines.append)
    print(f"\n$ {playbook} {extravars}{' --check' if check else ''}")
    for line in lines:
        print(f"  {line}")
    progress = result.progress
    print(
        f"  -> rc={result.rc} changed={result.changed} wall {result.seconds:.1f}s: "
        f"{progress.working:.1f}s in the modules that act and wait, {result.overhead:.1f}s overhead "
        f"(observe+plan {progress.plan_seconds or 0:.1f}s)"
    )
    for step in progress.steps:
        print(f"     step {step.index}/{step.total} {step.title}: {step.seconds:.1f}s (modules {step.working:.1f}s)")
    return result


def titles(result: actuate.RunResult) -> list[str]:
    return [step["title"] for step in (result.progress.plan or {}).get("steps", [])]


def answers_http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def listener_log(lab, site: str, since: float) -> str:
    listener = next(h for h in lab.plan.hosts if h.role == "listener" and h.site == site)
    proc = subprocess.run(
        [DOCKER, "logs", "--since", str(int(since) - 1), listener.container], capture_output=True, text=True
    )
    return proc.stdout + proc.stderr


def power_off(lab, *nodes: str) -> None:
    for node in nodes:
        lab.power(node, False)
    lab.wait_until(lambda: not any(lab.is_on(n) for n in nodes), 60, f"{', '.join(nodes)} off")


def test_wake_jellyfin_wakes_the_nas_through_the_gateway_then_pve1_then_the_guest(power_lab):
    lab = power_lab
    fleet = lab.fleet
    app = f"http://{lab.address('jellyfin')}:8096/health"
    try:
        power_off(lab, "pve1", "nas")  # pve1 takes jellyfin with it
        assert not lab.is_on("jellyfin")
        since = time.time()

        check = run(lab, "wake", check=True, node="jellyfin")
        assert check.rc == 0 and check.changed == 0 and check.progress.steps == []
        assert not lab.is_on("nas")  # --check printed the plan and did nothing

        started = time.monotonic()
        result = run(lab, "wake", node="jellyfin")
        assert result.rc == 0, result.progress.failure
        assert titles(result) == [
            "start machine nas via Wake-on-LAN from gw-dijon",
            "start machine pve1 via Wake-on-LAN from gw-dijon",
            "start lxc jellyfin via Proxmox API of pve1",
        ]
        assert [step.changed for step in result.progress.steps] == [True, True, True]
        assert lab.is_on("nas") and lab.is_on("pve1") and lab.is_on("jellyfin")
        app_took = lab.wait_until(lambda: answers_http(app), 60, "jellyfin's app on port 8096")
        print(
            f"  jellyfin's app answered {app_took:.1f}s after the playbook ended "
            f"({time.monotonic() - started:.1f}s after the wake began)"
        )

        # The packets really left from the gateway, the NAS's before pve1's.
        gateway = re.escape(lab.address("gw-dijon"))
        log = listener_log(lab, "dijon", since)
        nas = re.search(rf"magic packet for {fleet.nodes['nas'].mac} from {gateway}:", log)
        pve1 = re.search(rf"magic packet for {fleet.nodes['pve1'].mac} from {gateway}:", log)
        assert nas and pve1 and nas.start() < pve1.start(), log

        again = run(lab, "wake", node="jellyfin")
        assert again.rc == 0 and again.changed == 0 and again.progress.steps == []
        assert any(line.startswith("nothing to do: jellyfin is already up") for line in again.progress.plan["lines"])
    finally:
        lab.restore()


def test_shutdown_pve1_stops_its_guests_first_and_only_proposes_the_nas(power_lab):
    lab = power_lab
    try:
        check = run(lab, "shutdown", check=True, node="pve1")
        assert check.rc == 0 and check.progress.steps == [] and lab.is_on("pve1")

        result = run(lab, "shutdown", node="pve1")
        assert result.rc == 0, result.progress.failure
        assert titles(result) == [
            "stop container sandbox via Docker API of vm-docker",
            "stop vm vm-docker via Proxmox API of pve1",
            "stop lxc jellyfin via Proxmox API of pve1",
            "stop machine pve1 via SSH on pve1",
        ]
        assert [note["node"] for note in result.progress.plan["proposed"]] == ["nas"]
        assert not lab.is_on("pve1") and not lab.is_on("jellyfin") and not lab.is_on("vm-docker")
        assert lab.is_on("nas")  # only proposed
        assert _ssh_closed(lab.address("pve1"))

        confirmed = run(lab, "shutdown", node="pve1", confirm=["nas"])
        assert confirmed.rc == 0, confirmed.progress.failure
        assert titles(confirmed) == ["stop machine nas via SSH on nas"]
        lab.wait_until(lambda: not lab.is_on("nas"), 30, "the NAS container to stop")

        again = run(lab, "shutdown", node="pve1", confirm="nas")  # the -e confirm=nas string form
        assert again.rc == 0 and again.changed == 0 and again.progress.steps == []
    finally:
        lab.restore()


def test_a_nas_still_needed_by_another_running_guest_is_never_shut_down(power_lab, tmp_path):
    lab = power_lab
    # A test-only fleet over the same lab hosts: vm-docker needs the NAS too.
    text = Path(lab.fleet_path).read_text()
    shared = tmp_path / "shared-nas.fleet.yml"
    shared.write_text(text.replace("  jellyfin: [nas]\n", "  jellyfin: [nas]\n  vm-docker: [nas]\n", 1))
    assert "vm-docker: [nas]" in shared.read_text()
    try:
        result = run(lab, "shutdown", shared, node="jellyfin", confirm="nas")
        assert result.rc == 0, result.progress.failure
        assert titles(result) == ["stop lxc jellyfin via Proxmox API of pve1"]
        assert result.progress.plan["kept"] == [
            {"node": "nas", "reason": "still needed by vm-docker", "needed_by": ["vm-docker"]}
        ]
        assert "stays up: nas: still needed by vm-docker" in result.progress.plan["lines"]
        assert lab.is_on("nas") and not lab.is_on("jellyfin")

        blocked = run(lab, "shutdown", shared, node="nas")
        assert blocked.rc != 0 and blocked.blocked
        assert blocked.progress.plan["blocked"] == ["nas is still needed by vm-docker (running, outside this shutdown)"]
        assert "include_dependants=true" in blocked.progress.failure
        assert blocked.progress.steps == [] and lab.is_on("nas")

        cascade = run(lab, "shutdown", shared, node="nas", include_dependants=True)
        assert cascade.rc == 0, cascade.progress.failure
        assert titles(cascade) == [
            "stop container sandbox via Docker API of vm-docker",
            "stop vm vm-docker via Proxmox API of pve1",
            "stop machine nas via SSH on nas",
        ]
        assert lab.is_on("pve1") and not lab.is_on("nas")
    finally:
        lab.restore()


def test_a_container_in_the_docker_vm_stops_and_starts_through_its_parent(power_lab):
    lab = power_lab
    app = f"http://{lab.address('vm-docker')}:8081/health"
    try:
        stopped = run(lab, "shutdown", node="sandbox")
        assert stopped.rc == 0, stopped.progress.failure
        assert titles(stopped) == ["stop container sandbox via Docker API of vm-docker"]
        assert not lab.is_on("sandbox") and lab.is_on("vm-docker")

        started = run(lab, "wake", node="sandbox")
        assert started.rc == 0, started.progress.failure
        assert titles(started) == ["start container sandbox via Docker API of vm-docker"]
        assert lab.is_on("sandbox")
        lab.wait_until(lambda: answers_http(app), 30, "the sandbox app on vm-docker:8081")

        again = run(lab, "wake", node="sandbox")
        assert again.rc == 0 and again.changed == 0
    finally:
        lab.restore()


def test_wake_of_a_container_whose_whole_tree_sleeps(power_lab):
    lab = power_lab
    try:
        power_off(lab, "pve1")
        result = run(lab, "wake", node="sandbox")
        assert result.rc == 0, result.progress.failure
        assert titles(result) == [
            "start machine pve1 via Wake-on-LAN from gw-dijon",
            "start vm vm-docker via Proxmox API of pve1",
            "start container sandbox via Docker API of vm-docker",
        ]
        assert lab.is_on("sandbox")
    finally:
        lab.restore()


def test_a_failing_step_is_named(power_lab, tmp_path):
    lab = power_lab
    # The same lab, but the fleet gives the NAS a MAC nobody listens to: the wake times out.
    text = Path(lab.fleet_path).read_text()
    mac = lab.fleet.nodes["nas"].mac
    broken = tmp_path / "deaf-nas.fleet.yml"
    broken.write_text(
        text.replace(f'mac: "{mac}"', 'mac: "02:00:0a:ff:ff:fe"', 1).replace(
            "    confirm_shutdown: true\n", "    confirm_shutdown: true\n    timeouts: {start: 3s}\n", 1
        )
    )
    try:
        power_off(lab, "nas")
        result = run(lab, "wake", broken, node="nas")
        assert result.rc != 0
        assert result.progress.failure.startswith("step 1/1: start machine nas via Wake-on-LAN from gw-dijon: ")
        assert cli_power.report(result) == cli_power.EXIT_FAILED
    finally:
        lab.restore()


def _ssh_closed(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=1):
            return False
    except OSError:
        return True
