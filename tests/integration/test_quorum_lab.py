"""Quorum in the lab's two-node cluster (pve1 + pve2, dijon): planner and emulator together.

The lab fleet declares a QDevice on the site gateway (``clusters: {dijon: {qdevice: gw-dijon}}``),
as a homelab would; the same fleet without it is the plain two-node cluster, where either node
asleep costs the other its quorum (corosync exec/votequorum.c: 2 votes expected, 2 needed) and
PVE then refuses guest starts with ``cluster not ready - no quorum?`` (pve-cluster
src/PVE/Cluster.pm check_cfs_quorum, called by pve-container src/PVE/API2/LXC/Status.pm vm_start).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from wakegrid.graph import start_plan, stop_plan
from wakegrid.lab import pve
from wakegrid.model import parse_fleet
from wakegrid.observe.power import observe_power, unknown_nodes, up_nodes

NO_QUORUM = "cluster not ready - no quorum?"


def without_qdevice(lab):
    text = Path(lab.fleet_path).read_text()
    text, removed = re.subn(r"\nclusters:\n(?:  .*\n)+", "\n", text)
    assert removed == 1
    return parse_fleet(text, str(lab.fleet_path), base_dir=Path(lab.fleet_path).parent)


def observed(fleet):
    states = observe_power(fleet, list(fleet.nodes))
    return up_nodes(states), unknown_nodes(states)


def api(lab) -> ProxmoxAPI:
    proxmox = lab.fleet.nodes["pve1"].proxmox
    user, token = proxmox.token_id.split("!")
    return ProxmoxAPI(
        lab.address("pve1"), user=user, token_name=token, token_value=proxmox.token_secret.reveal(), verify_ssl=False
    )


def quorate(client: ProxmoxAPI) -> int:
    return next(e for e in client.cluster.status.get() if e["type"] == "cluster")["quorate"]


def test_sleeping_pve2_is_refused_without_a_qdevice_and_accepted_with_one(lab):
    plain = without_qdevice(lab)
    up, unknown = observed(lab.fleet)
    assert {"pve1", "pve2", "jellyfin", "gw-dijon"} <= up
    refused = stop_plan(plain, "pve2", up, unknown=unknown, confirmed=["pve2"])
    assert not refused.runnable
    assert any("cluster dijon" in b and "jellyfin (running)" in b for b in refused.blocked), refused.blocked
    accepted = stop_plan(lab.fleet, "pve2", up, unknown=unknown, confirmed=["pve2"])
    assert accepted.runnable and [s.node for s in accepted.steps] == ["pve2"]


@pytest.fixture
def pve2_asleep_jellyfin_stopped(lab):
    client = api(lab)
    directory = next(c for c in lab.plan.clusters if "pve1" in c.hosts).directory
    current = pve.ClusterState(directory).cluster()
    Tasks.blocking_status(client, client.nodes("pve1").lxc(201).status.stop.post(), timeout=60)
    lab.power("pve2", False)
    try:
        yield client, directory, current
    finally:
        pve.init_cluster(directory, current["name"], current["nodes"], qdevice=current.get("qdevice"))
        lab.restore()
        lab.wait_until(lambda: quorate(client) == 1, 30, "quorum back")
        if client.nodes("pve1").lxc(201).status.current.get()["status"] != "running":
            Tasks.blocking_status(client, client.nodes("pve1").lxc(201).status.start.post(), timeout=60)


def test_without_a_qdevice_the_plan_wakes_pve2_and_pve1_alone_refuses_the_start(lab, pve2_asleep_jellyfin_stopped):
    client, directory, current = pve2_asleep_jellyfin_stopped
    up, unknown = observed(lab.fleet)
    assert "pve2" not in up and "jellyfin" not in up and "pve1" in up

    plan = start_plan(without_qdevice(lab), "jellyfin", up, unknown=unknown)
    assert [(s.node, s.reason) for s in plan.steps] == [
        ("pve2", "cluster dijon needs 2 of 2 votes for quorum; jellyfin starts only while it is quorate"),
        ("jellyfin", "requested"),
    ]
    assert [s.node for s in start_plan(lab.fleet, "jellyfin", up, unknown=unknown).steps] == ["jellyfin"]

    # The QDevice on gw-dijon keeps pve1 quorate; without it pve1 refuses like PVE.
    lab.wait_until(lambda: not any(e.get("online") for e in client.cluster.status.get() if e.get("name") == "pve2"))
    assert quorate(client) == 1
    pve.init_cluster(directory, current["name"], current["nodes"])
    assert quorate(client) == 0
    with pytest.raises(ResourceException) as refused:
        client.nodes("pve1").lxc(201).status.start.post()
    assert refused.value.status_code == 500 and NO_QUORUM in str(refused.value)
