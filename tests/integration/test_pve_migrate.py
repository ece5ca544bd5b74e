"""The PVE emulator's LXC migration against real parts: two emulators, real busybox containers, real proxmoxer.

Fidelity to Proxmox VE's own sources (read with the search/fetch tools), cited in each test:

- pve-container ``src/PVE/API2/LXC.pm`` ``migrate_vm`` (checks before the task, ``$check_storage_access_migrate``);
- pve-container ``src/PVE/LXC/Migrate.pm`` ``prepare``, ``phase1``, ``phase1_cleanup``, ``final_cleanup``;
- pve-guest-common ``src/PVE/AbstractMigrate.pm`` ``migrate`` (log format, ``migration aborted``);
- pve-storage ``src/PVE/Storage.pm`` ``storage_migrate`` (``$match_volid_and_log``: dd progress every 3 s in the
  first minute), ``$volume_export_prepare`` (the bandwidth limit line), ``storage_check_enabled``;
- pve-manager ``PVE/API2/Tasks.pm`` ``read_task_status`` and ``read_task_log`` (the peer check with proxmoxer).

The tests share one cluster and run in file order; the target going offline comes last.
"""

from __future__ import annotations

import re
import secrets
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from wakegrid.lab import pve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode
from support import wait_for

TOKEN = "root@pam!wakegrid"
MIB = 1 << 20
COPY_RATE = 128 * MIB  # bytes per second of the simulated migration link
STORAGES = {
    **pve.DEFAULT_STORAGES,
    "pve1only": {"type": "lvmthin", "content": "rootdir,images", "nodes": "pve1"},
}
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


class Cluster:
    GUESTS = (
        # vmid, running, rootfs size, extra write_guest options
        (201, True, 768 * MIB, {}),  # a restart migration: 6 s of copy
        (202, True, 64 * MIB, {"mounts": {"mp0": {"volume": "/srv/media", "mp": "/media", "bind": True}}}),
        (203, False, 64 * MIB, {"rootfs": "pve1only:vm-203-disk-0"}),
        (204, True, 1024 * MIB, {}),  # the target goes offline during its 8 s copy
        (205, False, 256 * MIB, {}),  # offline migration, with and without a bandwidth limit
    )

    def __init__(self, root: Path, image: str):
        self.root = root
        self.image = image
        self.run_id = uuid.uuid4().hex[:8]
        self.secret = secrets.token_hex(16)
        self.ports = {"pve1": support.free_port(), "pve2": support.free_port()}
        self.dir = root / "etc-pve"
        self.procs: dict = {}

    def container(self, vmid: int) -> str:
        return f"wg-pvemig-{self.run_id}-{vmid}"

    def build(self) -> None:
        nodes = {name: {"ip": "127.0.0.1", "port": port} for name, port in self.ports.items()}
        pve.init_cluster(self.dir, "wakegrid-migrate", nodes, tokens={TOKEN: self.secret}, storages=STORAGES)
        for vmid, _running, size, extra in self.GUESTS:
            # created stopped: the emulator's boot-time status broadcast reads every running guest's memory use
            # (a docker stats call each) before it serves; they are started once both nodes answer
            support.create_guest_container(self.image, self.container(vmid), self.run_id, False)
            pve.write_guest(
                self.dir, vmid, type="lxc", node="pve1", name=f"ct{vmid}", container=self.container(vmid),
                maxdisk=size, **extra,
            )  # fmt: skip

    def start(self, node: str) -> None:
        options = ("--copy-rate", str(COPY_RATE), "--stop-timeout", "5", "--status-interval", "3600")
        self.procs[node] = support.start_emulator(self.root, node, self.dir, self.ports[node], *options)

    def api(self, node: str = "pve1") -> ProxmoxAPI:
        user, token = TOKEN.split("!")
        return ProxmoxAPI(
            "127.0.0.1", port=self.ports[node], user=user, token_name=token, token_value=self.secret,
            verify_ssl=False, service="PVE",
        )  # fmt: skip

    def guest(self, vmid: int) -> dict:
        return pve.ClusterState(self.dir).guest(vmid) or {}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = support.root_reason("to drive the Docker Engine") or support.docker_cli_reason()
    if reason:
        pytest.skip(reason)
    lab = Cluster(tmp_path_factory.mktemp("pvemig"), support.ensure_guest_image())
    try:
        lab.build()
        lab.start("pve1")
        lab.start("pve2")
        for vmid, running, _size, _extra in lab.GUESTS:
            if running:
                support.docker("start", lab.container(vmid))
        yield lab
    finally:
        support.stop_emulators(lab.procs, lab.run_id)


def migrate(cluster: Cluster, vmid: int, source: str = "pve1", **params) -> tuple[dict, list[str], float]:
    """Run a migration to the other node; its final status, its log lines and its duration."""
    api = cluster.api(source)
    target = "pve2" if source == "pve1" else "pve1"
    started = time.monotonic()
    upid = api.nodes(source).lxc(vmid).migrate.post(target=target, **params)
    status = Tasks.blocking_status(api, upid, timeout=60, polling_interval=0.2)
    assert status is not None, f"migration {upid} did not finish"
    lines = [entry["t"] for entry in api.nodes(source).tasks(upid).log.get(start=0, limit=1000)]
    return status, lines, time.monotonic() - started


def unstamped(lines: list[str]) -> list[str]:
    """The log without AbstractMigrate's time stamps (``$msg2text``: ``%F %H:%M:%S``)."""
    out = []
    for line in lines:
        assert line.startswith("TASK ") or line.startswith("  ") or re.match(STAMP + " ", line), line
        out.append(re.sub("^" + STAMP + " ", "", line))
    return out


def test_restart_migration_shuts_down_copies_with_progress_and_starts_on_the_target(cluster):
    """Migrate.pm prepare (shutdown CT), phase1 (found local volume, the copy, volume … on the target),
    final_cleanup (start container on target node); Storage.pm storage_migrate's dd lines every 3 s."""
    status, lines, seconds = migrate(cluster, 201, restart=1)
    assert status["exitstatus"] == "OK", lines
    text = unstamped(lines)
    expected_order = [
        "shutdown CT 201",
        "starting migration of CT 201 to node 'pve2' (127.0.0.1)",
        "found local volume 'local-lvm:vm-201-disk-0' (in current VM config)",
        '  Logical volume "vm-201-disk-0" created.',
        "successfully imported 'local-lvm:vm-201-disk-0'",
        "volume 'local-lvm:vm-201-disk-0' is 'local-lvm:vm-201-disk-0' on the target",
        "start final cleanup",
        "start container on target node",
    ]
    positions = [text.index(line) for line in expected_order]
    assert positions == sorted(positions), text
    assert re.fullmatch(r"migration finished successfully \(duration 00:00:0[6-9]\)", text[-2]), text
    assert text[-1] == "TASK OK"
    # 768 MiB at 128 MiB/s: 6 s; dd's once-a-second lines are logged at 3 s only (6 s is the end)
    progress = [line for line in text if re.fullmatch(r"\d+ bytes \(.*\) copied, \d+ s, .*/s", line)]
    assert progress == ["402653184 bytes (403 MB, 384 MiB) copied, 3 s, 134 MB/s"], text
    assert [line for line in text if line.endswith(" records in")] == ["12288+0 records in", "0+24576 records in"]
    assert 6 <= seconds < 15
    assert cluster.guest(201)["node"] == "pve2" and cluster.guest(201)["lock"] is None
    assert support.container_running(cluster.container(201))
    current = cluster.api("pve2").nodes("pve2").lxc(201).status.current.get()
    assert current["status"] == "running"


def test_the_copy_follows_the_disk_size_and_the_bandwidth_limit(cluster):
    """$volume_export_prepare logs the limit in bytes per second (the API's KiB/s times 1024, Migrate.pm phase1)."""
    _status, lines, limited = migrate(cluster, 205, bwlimit=65536)  # 64 MiB/s: 256 MiB in 4 s
    text = unstamped(lines)
    assert "using a bandwidth limit of 67108864 bytes per second for transferring 'local-lvm:vm-205-disk-0'" in text
    assert "shutdown CT 205" not in text, "a stopped CT moves offline"
    assert [line for line in text if " copied, 3 s, " in line] == [
        "201326592 bytes (201 MB, 192 MiB) copied, 3 s, 67 MB/s"
    ]
    _status, lines, unlimited = migrate(cluster, 205, source="pve2")  # 128 MiB/s: 2 s
    assert not any("bandwidth limit" in line for line in lines)
    assert limited >= 4 and unlimited < limited - 1.0
    assert cluster.guest(205)["node"] == "pve1"
    assert not support.container_running(cluster.container(205)), "an offline migration does not start it"


def test_a_bind_mount_fails_with_pves_text_and_the_guest_keeps_running_on_the_source(cluster):
    """Migrate.pm prepare: die "cannot migrate local $type mount point '$ms'" before any shutdown."""
    status, lines, _ = migrate(cluster, 202, restart=1)
    assert status["exitstatus"] == "migration aborted"
    text = unstamped(lines)
    assert text == ["ERROR: migration aborted (duration 00:00:00): cannot migrate local bind mount point 'mp0'",
                    "TASK ERROR: migration aborted"]  # fmt: skip
    assert cluster.guest(202)["node"] == "pve1"
    assert support.container_running(cluster.container(202))


def test_a_target_storage_that_is_missing_is_refused(cluster):
    """API2/LXC.pm migrate_vm: $check_storage_access_migrate before the task; Migrate.pm prepare: the volume's
    storage must be enabled on the target node (Storage.pm storage_check_node)."""
    api = cluster.api()
    with pytest.raises(ResourceException) as info:
        api.nodes("pve1").lxc(203).migrate.post(target="pve2", **{"target-storage": "nosuch"})
    assert (info.value.status_code, info.value.content) == (500, "storage 'nosuch' does not exist")
    with pytest.raises(ResourceException) as info:
        api.nodes("pve1").lxc(203).migrate.post(target="pve2", **{"target-storage": "local"})
    assert info.value.content == "storage 'local' does not support CT rootdirs"
    status, lines, _ = migrate(cluster, 203)
    assert status["exitstatus"] == "migration aborted"
    assert unstamped(lines)[0] == (
        "ERROR: migration aborted (duration 00:00:00): storage 'pve1only' is not available on node 'pve2'"
    )
    # mapped to a storage the target has, it moves
    status, lines, _ = migrate(cluster, 203, **{"target-storage": "pve1only:local-lvm"})
    assert status["exitstatus"] == "OK", lines
    assert "volume 'pve1only:vm-203-disk-0' is 'local-lvm:vm-203-disk-0' on the target" in unstamped(lines)
    assert cluster.guest(203)["rootfs"] == "local-lvm:vm-203-disk-0"


def test_the_configuration_shows_the_volumes_with_their_sizes(cluster):
    """pve-container API2/LXC/Config.pm vm_config; sizes as PVE::JSONSchema::format_size prints them."""
    config = cluster.api().nodes("pve1").lxc(202).config.get()
    assert config["rootfs"] == "local-lvm:vm-202-disk-0,size=64M"
    assert config["mp0"] == "/srv/media,mp=/media"
    assert config["hostname"] == "ct202"
    with pytest.raises(ResourceException) as info:
        cluster.api().nodes("pve1").lxc(201).config.get()  # it lives on pve2 now
    assert info.value.content == "Configuration file 'nodes/pve1/lxc/201.conf' does not exist"


def test_peer_check_proxmoxer_task_helpers_and_log_paging_behave_as_on_real_pve(cluster):
    """pve-manager PVE/API2/Tasks.pm read_task_status (fields, token split off into tokenid) and read_task_log
    (``n`` counts from 1 over the whole log, start/limit page it, the envelope's total counts every line)."""
    api = cluster.api()
    upid = api.nodes("pve1").lxc(205).migrate.post(target="pve2")
    status = Tasks.blocking_status(api, upid, timeout=30, polling_interval=0.2)
    assert set(status) == {"upid", "node", "pid", "pstart", "starttime", "type", "id", "user", "tokenid", "status",
                           "exitstatus"}  # fmt: skip
    assert (status["status"], status["exitstatus"], status["type"], status["id"]) == (
        "stopped",
        "OK",
        "vzmigrate",
        "205",
    )
    assert (status["user"], status["tokenid"]) == ("root@pam", "wakegrid")
    decoded = Tasks.decode_upid(upid)
    assert {k: decoded[k] for k in ("node", "pid", "pstart", "starttime", "type", "id")} == {
        k: status[k] for k in ("node", "pid", "pstart", "starttime", "type", "id")
    }
    whole = api.nodes("pve1").tasks(upid).log.get(limit=0)
    assert [entry["n"] for entry in whole] == list(range(1, len(whole) + 1))
    assert Tasks.decode_log(whole).splitlines()[-1] == "TASK OK"
    page = api.nodes("pve1").tasks(upid).log.get(start=2, limit=3)
    assert page == whole[2:5]
    assert api.nodes("pve1").tasks(upid).log.get(start=len(whole)) == []
    assert len(api.nodes("pve1").tasks(upid).log.get()) == min(50, len(whole))  # limit defaults to 50
    # the envelope's total, which proxmoxer drops: read it raw
    session = api._store["session"]
    url = f"https://127.0.0.1:{cluster.ports['pve1']}/api2/json/nodes/pve1/tasks/{upid}/log?start=2&limit=3"
    body = session.request("GET", url).json()
    assert body["total"] == len(whole) and [entry["n"] for entry in body["data"]] == [3, 4, 5]
    with pytest.raises(ResourceException) as info:
        api.nodes("pve1").tasks(upid).log.get(start=-1)
    assert info.value.status_code == 400
    api.nodes("pve2").lxc(205).migrate.post(target="pve1")  # back, for whoever comes next
    wait_for(lambda: cluster.guest(205)["node"] == "pve1" and not cluster.guest(205)["lock"], timeout=30)


def test_the_target_going_offline_mid_copy_fails_the_migration_and_restarts_the_guest_on_the_source(cluster):
    """Storage.pm storage_migrate: the ssh pipe breaks (exit code 255); Migrate.pm phase1 dies "storage migration
    for '$volid' to storage '$targetsid' failed - $err", phase1_cleanup reports the stale copy, final_cleanup starts
    the CT on the source node; AbstractMigrate.pm: "migration aborted (duration …): …"."""
    api = cluster.api()
    upid = api.nodes("pve1").lxc(204).migrate.post(target="pve2", restart=1)

    def copying() -> bool:
        lines = [entry["t"] for entry in api.nodes("pve1").tasks(upid).log.get(limit=0)]
        return any("found local volume" in line for line in lines)

    wait_for(copying, timeout=30)
    cluster.procs["pve2"].send_signal(signal.SIGTERM)  # the node powers off: its heartbeat says offline at once
    cluster.procs["pve2"].wait(60)
    status = Tasks.blocking_status(api, upid, timeout=60, polling_interval=0.2)
    assert status["exitstatus"] == "migration aborted"
    text = unstamped([entry["t"] for entry in api.nodes("pve1").tasks(upid).log.get(limit=0)])
    failure = next(line for line in text if line.startswith("ERROR: storage migration for"))
    assert failure.startswith(
        "ERROR: storage migration for 'local-lvm:vm-204-disk-0' to storage 'local-lvm' failed - command "
        "'set -o pipefail && pvesm export local-lvm:vm-204-disk-0 raw+size - -with-snapshots 0 | /usr/bin/ssh"
    )
    assert failure.endswith("failed: exit code 255")
    after = text[text.index(failure) + 1 :]
    assert after[:4] == [
        "aborting phase 1 - cleanup resources",
        "ERROR: found stale volume copy 'local-lvm:vm-204-disk-0' on node 'pve2'",
        "start final cleanup",
        "start container on source node",
    ]
    assert after[4].startswith("ERROR: migration aborted (duration 00:00:0")
    assert after[4].endswith("failed: exit code 255") and after[5] == "TASK ERROR: migration aborted"
    assert cluster.guest(204)["node"] == "pve1" and cluster.guest(204)["lock"] is None
    assert support.container_running(cluster.container(204))
