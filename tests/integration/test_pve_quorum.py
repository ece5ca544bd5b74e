"""Quorum in the lab's PVE emulator, driven by proxmoxer as on real PVE.

PVE sources followed (read with the search/fetch tools):
- pve-cluster src/PVE/Cluster.pm ``check_cfs_quorum``: ``die "cluster not ready - no quorum?\\n"``
  (a plain die: HTTP 500 with the text as reason phrase);
- pve-container src/PVE/API2/LXC/Status.pm ``vm_start`` (after "CT N already running") and
  src/PVE/API2/LXC.pm ``migrate_vm`` (after "target is local node."), qemu-server
  src/PVE/API2/Qemu.pm ``vm_start``: each calls ``check_cfs_quorum()`` before forking a task;
- pve-manager PVE/API2/Cluster.pm ``get_status``: the cluster entry has ``quorate``, ``nodes``,
  ``version``, ``name``; node entries ``nodeid``, ``local``, ``online``, ``ip`` and ``level``;
- corosync exec/votequorum.c ``calculate_quorum``: quorum = (expected + 2) / 2, a QDevice's vote
  counting while it casts it (pve-cluster src/PVE/CLI/pvecm.pm ``setup_qdevice``: 1 vote).
"""

from __future__ import annotations

import secrets
import socket
import sys
import uuid
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from wakegrid.lab import pve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode

NO_QUORUM = "cluster not ready - no quorum?"


@pytest.fixture
def two_nodes(tmp_path):
    """pve1 running, its partner pve2 never booted (a sleeping machine): 1 of 2 votes, no QDevice yet."""
    reason = support.root_reason("to drive the Docker Engine") or support.docker_cli_reason()
    if reason:
        pytest.skip(reason)
    image = support.ensure_guest_image()
    run_id, secret = uuid.uuid4().hex[:8], secrets.token_hex(16)
    ports = {"pve1": support.free_port(), "pve2": support.free_port()}
    state = tmp_path / "etc-pve"
    nodes = {name: {"ip": "127.0.0.1", "port": port, "votes": 1} for name, port in ports.items()}
    pve.init_cluster(state, "dijon", nodes, tokens={"root@pam!t": secret})
    name = f"wg-pve-{run_id}-201"
    support.create_guest_container(image, name, run_id, False)
    pve.write_guest(state, 201, type="lxc", node="pve1", name="jellyfin", container=name)
    procs = {"pve1": support.start_emulator(tmp_path, "pve1", state, ports["pve1"])}
    api = ProxmoxAPI(
        "127.0.0.1", port=ports["pve1"], user="root@pam", token_name="t", token_value=secret, verify_ssl=False
    )
    try:
        yield api, state, nodes, secret
    finally:
        support.stop_emulators(procs, run_id)


def test_a_node_without_its_partner_is_not_quorate_and_refuses_starts_and_migrations(two_nodes):
    api, _state, _nodes, _secret = two_nodes
    status = api.cluster.status.get()
    cluster = next(e for e in status if e["type"] == "cluster")
    assert {k: cluster[k] for k in ("name", "nodes", "quorate")} == {"name": "dijon", "nodes": 2, "quorate": 0}
    partner = next(e for e in status if e["type"] == "node" and e["name"] == "pve2")
    assert partner["online"] == 0 and "level" not in partner
    with pytest.raises(ResourceException) as start:
        api.nodes("pve1").lxc(201).status.start.post()
    assert start.value.status_code == 500 and NO_QUORUM in str(start.value)
    with pytest.raises(ResourceException) as migrate:
        api.nodes("pve1").lxc(201).migrate.post(target="pve2", restart=1)
    assert migrate.value.status_code == 500 and NO_QUORUM in str(migrate.value)


def test_a_live_qdevice_casts_the_missing_vote(two_nodes):
    api, state, nodes, secret = two_nodes
    with socket.create_server(("127.0.0.1", 0)) as qnetd:  # stands in for corosync-qnetd
        qdevice = {"ip": "127.0.0.1", "port": qnetd.getsockname()[1], "votes": 1}
        pve.init_cluster(state, "dijon", nodes, tokens={"root@pam!t": secret}, qdevice=qdevice)
        cluster = next(e for e in api.cluster.status.get() if e["type"] == "cluster")
        assert cluster["quorate"] == 1
        upid = api.nodes("pve1").lxc(201).status.start.post()
        assert Tasks.blocking_status(api, upid, timeout=30, polling_interval=0.2)["exitstatus"] == "OK"
    # the QDevice host asleep: its vote is gone again
    cluster = next(e for e in api.cluster.status.get() if e["type"] == "cluster")
    assert cluster["quorate"] == 0
