"""LXC migration in the lab: jellyfin moves pve1 → pve2 under load through the edge, and back.

Real parts only: the lab's two PVE emulators (docs/lab-pve-emulator.md) moving the real jellyfin
container, ``playbooks/migrate_lxc.yml`` run by the actuator (:func:`wakegrid.cli.migrate.run_migration`,
what ``wakegrid migrate`` and the daemon call), the lab client sending HTTPS through the edge's Caddy
(``loadgen.py``, shared with tests/bench/failover.py). Every test leaves jellyfin on pve1 and the lab
as ``lab up`` leaves it. Run under the lab's lock:

    flock /tmp/wakegrid-lab.lock .venv/bin/pytest tests/integration/test_migrate_lab.py -s
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wakegrid.cli.migrate import run_migration
from wakegrid.lab import pve

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import failover as rehearsal  # tests/bench/failover.py
import support  # the helper next to this file, whatever the rootdir or import mode

GUEST, VMID, SOURCE, TARGET = "jellyfin", 201, "pve1", "pve2"
SERVICE = "stream"
RATE = 20  # requests per second through the edge
# 8 GiB (jellyfin's rootfs) at 1,200,000 KiB/s: a 7 s copy, so PVE logs dd's progress at 3 s and 6 s
BWLIMIT = 1_200_000
WAKEGRID = str(Path(sys.executable).parent / "wakegrid")


def cluster_state(lab) -> pve.ClusterState:
    return pve.ClusterState(lab.plan.clusters[0].directory)


def current_node(lab) -> str:
    return cluster_state(lab).guest(VMID)["node"]


def jellyfin_running(lab) -> bool:
    return support.container_running(lab.plan.host(GUEST).container)


@pytest.fixture
def home(lab):
    """Put jellyfin back on pve1, running, and the lab as `lab up` leaves it, whatever the test did."""
    yield lab
    lab.restore()
    if current_node(lab) != SOURCE:
        outcome = run_migration(lab.fleet_path, GUEST, SOURCE)
        assert outcome.ok, outcome.failure
    lab.wait_until(lambda: jellyfin_running(lab), 60, "jellyfin running on pve1")


@pytest.fixture(scope="module")
def edge(lab):
    target = rehearsal.target(lab.lab, SERVICE)
    rehearsal.install_loadgen(target)
    return target


def served_by_jellyfin(edge) -> bool:
    proc = rehearsal.docker(
        "exec", edge.client_container, "python3", rehearsal.CLIENT_LOADGEN, "--url", edge.url, "--connect",
        edge.edge_public, "--cafile", rehearsal.CLIENT_ROOT, "--duration", "0.2", "--rate", "10", check=False,
    )  # fmt: skip
    return '"node":"jellyfin"' in proc.stdout


def test_jellyfin_moves_under_load_and_the_service_answers_through_the_edge_after(home, edge):
    lab = home
    assert current_node(lab) == SOURCE
    lab.wait_until(lambda: served_by_jellyfin(edge), 60, "stream served by jellyfin through the edge")
    events: list[dict] = []
    load = rehearsal.LoadRun(edge, RATE, timeout=10)
    try:
        time.sleep(2)
        outcome = run_migration(lab.fleet_path, GUEST, TARGET, bwlimit=BWLIMIT, on_event=events.append)
        moved_at = time.time()
        # keep the load until the edge sends requests to jellyfin again (its health check: every 2 s)
        lab.wait_until(lambda: any(r.get("node") == GUEST and r["start"] > moved_at for r in load.snapshot()), 30,
                       "a request served by jellyfin on pve2")  # fmt: skip
        time.sleep(1)
    finally:
        records = load.stop()
    assert outcome.ok, outcome.failure
    assert outcome.result["source"] == SOURCE and outcome.result["node"] == TARGET
    assert outcome.result["status_after"] == "running" and current_node(lab) == TARGET and jellyfin_running(lab)

    # the events: in order, phases in PVE's order, the percentage rising, the copy reported on the way
    assert events == outcome.events and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    phases = [p for i, p in enumerate(e["phase"] for e in events) if i == 0 or events[i - 1]["phase"] != p]
    assert phases == ["prepare", "shutdown", "copy", "start", "done"]
    percents = [e["percent"] for e in events]
    assert percents == sorted(percents) and percents[-1] == 100
    copying = [e["copy_percent"] for e in events if e.get("bytes")]
    assert len([c for c in copying if 0 < c < 100]) >= 2, copying  # dd's lines at 3 s and 6 s
    assert copying == sorted(copying)
    assert all(e["guest"] == GUEST and e["target"] == TARGET for e in events)

    # the client's view: answered by jellyfin after the move; the downtime, for the record
    after = [r for r in records if r["start"] > moved_at]
    assert any(r.get("node") == GUEST and r["status"] == 200 for r in after)
    figures = client_downtime(records, outcome)
    print(f"\nmigration {GUEST} {SOURCE} → {TARGET}: {json.dumps(figures)}")
    assert figures["pve_restart_s"] is not None and figures["pve_restart_s"] >= 7  # the 7 s copy at least

    # a second run finds it there: nothing moves
    again = run_migration(lab.fleet_path, GUEST, TARGET)
    assert again.ok and not again.changed and again.result["node"] == TARGET
    assert again.events == []


def client_downtime(records: list[dict], outcome) -> dict:
    """What the edge's clients saw: failures, and jellyfin's absence (tests/bench/migration.py explains)."""
    stopped_at = outcome.stopped_at
    ended_at = outcome.events[-1]["time"] if outcome.events else None
    before = [r for r in records if stopped_at and r["start"] < stopped_at and r.get("node") == GUEST]
    back = [r for r in records if ended_at and r["start"] >= ended_at and r.get("node") == GUEST]
    last_jellyfin = max((r["start"] for r in before), default=None)
    first_back = min((r["start"] for r in back), default=None)
    failed = [r for r in records if rehearsal.failed(r)]
    return {
        "requests": len(records),
        "failed": len(failed),
        "served_by": sorted({str(r.get("node")) for r in records}),
        "pve_restart_s": outcome.result.get("downtime"),
        "jellyfin_absent_s": round(first_back - last_jellyfin, 1) if first_back and last_jellyfin else None,
        "edge_noticed_after_s": round(first_back - ended_at, 1) if first_back and ended_at else None,
    }


def test_a_running_guest_is_not_moved_without_restart_mode(home):
    outcome = run_migration(home.fleet_path, GUEST, TARGET, restart=False)
    assert not outcome.ok
    assert "can't migrate running container without --online or --restart" in outcome.failure
    assert "set restart: true" in outcome.failure
    assert current_node(home) == SOURCE and jellyfin_running(home)


def test_an_unknown_target_is_refused_before_anything_starts(home):
    outcome = run_migration(home.fleet_path, GUEST, "pve9")
    assert not outcome.ok
    assert "no such cluster node 'pve9' (the cluster's nodes: pve1, pve2)" in outcome.failure
    assert outcome.events == [] and current_node(home) == SOURCE and jellyfin_running(home)
    # the command refuses it too, before any playbook: not a machine of the fleet
    proc = subprocess.run([WAKEGRID, "migrate", GUEST, "pve9", "--fleet", str(home.fleet_path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and "'pve9' is not a fleet machine with proxmox" in proc.stderr


def test_a_target_equal_to_the_source_is_refused_by_the_module(home, tmp_path):
    collections = support.collections_path(tmp_path / "collections")
    proxmox = home.fleet.nodes[SOURCE].proxmox
    secret = Path(home.plan.pve_token_file).read_text().strip()
    args = {
        "api_host": "10.231.1.20", "api_token_id": proxmox.token_id, "api_token_secret": secret,
        "validate_certs": False, "vmid": VMID, "node": SOURCE, "target": SOURCE, "restart": True,
    }  # fmt: skip
    status, result, output = support.run_adhoc(
        support.adhoc_command("proxmox_lxc_migrate", args), support.ansible_env(collections), tmp_path
    )
    assert status == "FAILED!", output
    assert result["msg"] == "target pve1 is the source node given in node: nothing to migrate to"
    assert secret not in output
    assert current_node(home) == SOURCE and jellyfin_running(home)


def test_a_bind_mounted_guest_fails_with_pves_text_and_stays_running_on_the_source(home):
    state = cluster_state(home)
    state.update_guest(VMID, lambda g: g.setdefault("mounts", {}).update(mp0={"volume": "/srv/media", "mp": "/media",
                                                                              "bind": True}))  # fmt: skip
    try:
        outcome = run_migration(home.fleet_path, GUEST, TARGET)
    finally:
        state.update_guest(VMID, lambda g: g["mounts"].pop("mp0", None))
    assert not outcome.ok
    assert outcome.result["error"] == "cannot migrate local bind mount point 'mp0'"
    assert "cannot migrate local bind mount point 'mp0'" in outcome.failure
    assert "the container is on node pve1, running" in outcome.failure
    assert outcome.result["node"] == SOURCE and outcome.result["status_after"] == "running"
    assert [e["phase"] for e in outcome.events][-1] == "failed"
    assert current_node(home) == SOURCE and jellyfin_running(home)


def test_drain_moves_the_guests_to_the_other_machine_then_powers_the_machine_off(home, edge):
    lab = home
    proc = subprocess.run(
        [WAKEGRID, "shutdown", SOURCE, "--drain", "--fleet", str(lab.fleet_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"drain: migrating {GUEST} from {SOURCE} to {TARGET}" in proc.stdout
    assert f"{GUEST} moved from {SOURCE} to {TARGET}" in proc.stdout
    assert current_node(lab) == TARGET and jellyfin_running(lab)
    lab.wait_until(lambda: not lab.is_on(SOURCE), 60, "pve1 powered off")
    # the service stays reachable, from jellyfin on pve2
    lab.wait_until(lambda: served_by_jellyfin(edge), 30, "stream served by jellyfin on pve2")
