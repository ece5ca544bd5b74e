"""The lab's Proxmox VE emulator against real parts: real proxmoxer over HTTPS, real Docker containers as guests.

Two emulators (pve1, pve2) share one cluster directory, like two nodes sharing /etc/pve. They run
as loose scripts with ``python -I -S`` (no site-packages), as they will inside lab hosts that only
have Debian's python3. The tests share that one cluster and run in file order (SIGTERM last).

Each fidelity test names the PVE source it follows (repository and file, read with the search/fetch tools).
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.core import AuthenticationError
from proxmoxer.tools import Tasks

from wakegrid.lab import pve
from wakegrid.observe.power import proxmox_guests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode
from support import wait_for

TOKEN_USER, TOKEN_NAME = "root@pam", "wakegrid"


class Cluster:
    """Two emulator processes and their guests; ``api()``/``password_api()`` give proxmoxer clients."""

    def __init__(self, root: Path, image: str):
        self.root = root
        self.run_id = uuid.uuid4().hex[:8]
        self.secret = secrets.token_hex(16)
        self.password = secrets.token_hex(8)
        self.ports = {"pve1": support.free_port(), "pve2": support.free_port()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.image = image
        self.dir = root / "etc-pve"

    def container(self, vmid: int) -> str:
        return f"wg-pve-{self.run_id}-{vmid}"

    def build(self) -> None:
        nodes = {name: {"ip": "127.0.0.1", "port": port} for name, port in self.ports.items()}
        pve.init_cluster(
            self.dir,
            "wakegrid-test",
            nodes,
            tokens={f"{TOKEN_USER}!{TOKEN_NAME}": self.secret},
            users={"root@pam": self.password},
        )
        guests = [
            # vmid, type, node, running now, onboot, mounts
            (201, "lxc", "pve1", False, 1, {}),  # started by the node's onboot at boot
            (202, "lxc", "pve1", False, 0, {"mp0": {"volume": "/srv/media", "mp": "/media", "bind": True}}),
            (101, "qemu", "pve1", False, 0, {}),
            (301, "lxc", "pve2", True, 0, {}),
        ]
        for vmid, kind, node, running, onboot, mounts in guests:
            support.create_guest_container(self.image, self.container(vmid), self.run_id, running)
            pve.write_guest(
                self.dir,
                vmid,
                type=kind,
                node=node,
                name=f"guest{vmid}",
                container=self.container(vmid),
                onboot=onboot,
                mounts=mounts,
                tags="lab;test",
                maxmem=256 * 1024 * 1024,
                cpus=2,
            )

    def start(self, node: str) -> None:
        # one status broadcast only, at boot: what /cluster/resources says about status is then known exactly
        options = ("--migrate-delay", "1.5", "--stop-timeout", "5", "--status-interval", "3600", "--log-level", "DEBUG")
        self.procs[node] = support.start_emulator(self.root, node, self.dir, self.ports[node], *options)

    def log(self, node: str) -> str:
        return (self.root / f"{node}.log").read_text()

    def api(self, node: str = "pve1") -> ProxmoxAPI:
        return ProxmoxAPI(
            "127.0.0.1",
            port=self.ports[node],
            user=TOKEN_USER,
            token_name=TOKEN_NAME,
            token_value=self.secret,
            verify_ssl=False,
            service="PVE",
        )

    def password_api(self, node: str = "pve1") -> ProxmoxAPI:
        return ProxmoxAPI("127.0.0.1", port=self.ports[node], user="root@pam", password=self.password, verify_ssl=False)

    def url(self, node: str, path: str) -> str:
        return f"https://127.0.0.1:{self.ports[node]}/api2/json{path}"

    def stop_all(self) -> None:
        support.stop_emulators(self.procs, self.run_id)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = support.root_reason("to drive the Docker Engine") or support.docker_cli_reason()
    if reason:
        pytest.skip(reason)
    image = support.ensure_guest_image()
    lab = Cluster(tmp_path_factory.mktemp("pve"), image)
    try:
        lab.build()
        lab.start("pve1")
        lab.start("pve2")
        yield lab
    finally:
        lab.stop_all()


def run_task(api: ProxmoxAPI, upid: str) -> tuple[dict, str]:
    """Wait for a task with proxmoxer's own helper; return its final status and its whole log."""
    status = Tasks.blocking_status(api, upid, timeout=60, polling_interval=0.2)
    assert status is not None, f"task {upid} did not finish"
    node = Tasks.decode_upid(upid)["node"]
    lines = api.nodes(node).tasks(upid).log.get(limit=0)
    return status, Tasks.decode_log(lines)


def expect_error(call, status: int) -> ResourceException:
    with pytest.raises(ResourceException) as info:
        call()
    assert info.value.status_code == status, info.value
    return info.value


# --------------------------------------------------------------------------- discovery and auth


def test_nodes_and_cluster_resources(cluster):
    api = cluster.api()
    nodes = {n["node"]: n for n in api.nodes.get()}
    assert nodes["pve1"]["status"] == nodes["pve2"]["status"] == "online"
    assert nodes["pve1"]["id"] == "node/pve1" and nodes["pve1"]["maxmem"] > 0

    # onboot=1: the node started guest 201 when it came up, in a "startall" task
    wait_for(lambda: support.container_running(cluster.container(201)))
    resources = {r["id"]: r for r in api.cluster.resources.get(type="vm")}
    assert set(resources) == {"lxc/201", "lxc/202", "qemu/101", "lxc/301"}
    ct = resources["lxc/201"]
    assert (ct["type"], ct["vmid"], ct["node"], ct["name"], ct["tags"]) == ("lxc", 201, "pve1", "guest201", "lab;test")
    assert ct["maxmem"] == 256 * 1024 * 1024 and ct["maxcpu"] == 2 and ct["template"] == 0
    assert resources["qemu/101"]["status"] == "stopped"
    assert resources["lxc/301"]["node"] == "pve2" and resources["lxc/301"]["status"] == "running"

    lxc = {g["vmid"]: g for g in api.nodes("pve1").lxc.get()}
    assert set(lxc) == {201, 202} and lxc[201]["status"] == "running" and lxc[201]["uptime"] >= 0
    assert [g["vmid"] for g in api.nodes("pve1").qemu.get()] == [101]
    # a request for another node is forwarded to it, like pveproxy does
    assert [g["vmid"] for g in api.nodes("pve2").lxc.get()] == [301]
    assert api.nodes("pve2").status.get()["pveversion"].startswith("pve-manager/")

    startall = [t for t in api.nodes("pve1").tasks.get(source="all") if t["type"] == "startall"]
    assert startall and startall[0]["user"] == "root@pam"


def test_cluster_resources_status_is_the_last_broadcast(cluster):
    """pve-manager PVE/API2/Cluster.pm resources + PVE/API2Tools.pm extract_vm_stats: a guest's status and usage
    come from pvestatd's broadcast (every 10 s, PVE/Service/pvestatd.pm), for the local node too; where the
    guest is and its lock are the cluster's configuration, live. Only a guest's own status/current is live.
    """
    api = cluster.api()
    wait_for(lambda: support.container_running(cluster.container(201)))  # onboot started it after the broadcast
    assert api.nodes("pve1").lxc(201).status.current.get()["status"] == "running"
    assert {g["vmid"]: g["status"] for g in api.nodes("pve1").lxc.get()}[201] == "running"
    assert {r["vmid"]: r for r in api.cluster.resources.get(type="vm")}[201]["status"] == "stopped"


def test_the_observer_reads_the_live_status_of_the_guests_node(cluster):
    """wakegrid's observer asks the parent node for its guests, so it is not a broadcast behind."""
    config = {"api": f"https://127.0.0.1:{cluster.ports['pve1']}", "token_id": f"{TOKEN_USER}!{TOKEN_NAME}"}
    observed = proxmox_guests({**config, "verify_tls": False, "node": "pve1"}, cluster.secret, 10)
    assert observed == {201: "running", 202: "stopped", 101: "stopped"}  # 301 is on pve2


def test_status_broadcasts_reach_cluster_resources(tmp_path):
    """The broadcast does come: with a short interval, /cluster/resources catches up with status/current."""
    image = support.ensure_guest_image()
    run_id, secret, port = uuid.uuid4().hex[:8], secrets.token_hex(16), support.free_port()
    name = f"wg-pve-{run_id}-401"
    state = tmp_path / "etc-pve"
    pve.init_cluster(state, "fresh", {"pve9": {"ip": "127.0.0.1", "port": port}}, tokens={"root@pam!t": secret})
    support.create_guest_container(image, name, run_id, False)
    pve.write_guest(state, 401, type="lxc", node="pve9", name="guest401", container=name)
    procs = {"pve9": support.start_emulator(tmp_path, "pve9", state, port, "--status-interval", "0.5")}
    try:
        api = ProxmoxAPI("127.0.0.1", port=port, user="root@pam", token_name="t", token_value=secret, verify_ssl=False)
        run_task(api, api.nodes("pve9").lxc(401).status.start.post())
        assert api.nodes("pve9").lxc(401).status.current.get()["status"] == "running"
        wait_for(lambda: api.cluster.resources.get(type="vm")[0]["status"] == "running", timeout=5)
    finally:
        support.stop_emulators(procs, run_id)


def test_password_auth_ticket_and_csrf(cluster):
    api = cluster.password_api()
    assert {n["node"] for n in api.nodes.get()} == {"pve1", "pve2"}
    ticket, csrf = api.get_tokens()
    assert ticket.startswith("PVE:root@pam:") and csrf

    # a write with the ticket cookie but without the CSRF token is refused, with it accepted
    cookies = {"PVEAuthCookie": ticket}
    url = cluster.url("pve1", "/nodes/pve1/qemu/101/status/stop")
    resp = requests.post(url, cookies=cookies, verify=False, timeout=10)
    assert resp.status_code == 401 and "csrf" in resp.reason.lower()
    resp = requests.post(url, cookies=cookies, headers={"CSRFPreventionToken": csrf}, verify=False, timeout=10)
    assert resp.status_code == 200 and resp.json()["data"].startswith("UPID:pve1:")
    run_task(cluster.api(), resp.json()["data"])


def test_missing_or_bad_credentials_are_401(cluster):
    resp = requests.get(cluster.url("pve1", "/nodes"), verify=False, timeout=10)
    assert resp.status_code == 401 and resp.json() == {"data": None}
    bad = ProxmoxAPI(
        "127.0.0.1",
        port=cluster.ports["pve1"],
        user=TOKEN_USER,
        token_name=TOKEN_NAME,
        token_value="not-the-secret",
        verify_ssl=False,
    )
    expect_error(lambda: bad.nodes.get(), 401)
    bad_ticket = requests.get(
        cluster.url("pve1", "/nodes"), cookies={"PVEAuthCookie": "PVE:root@pam:00000000::x"}, verify=False, timeout=10
    )
    assert bad_ticket.status_code == 401
    with pytest.raises(AuthenticationError):
        ProxmoxAPI("127.0.0.1", port=cluster.ports["pve1"], user="root@pam", password="wrong", verify_ssl=False)


# --------------------------------------------------------------------------- power


def test_lxc_shutdown_start_stop(cluster):
    api = cluster.api()
    ct = api.nodes("pve1").lxc(201)
    name = cluster.container(201)
    wait_for(lambda: support.container_running(name))
    current = ct.status.current.get()
    assert current["status"] == "running" and current["type"] == "lxc" and current["mem"] >= 0
    assert "lock" not in current and current["ha"] == {"managed": 0}
    # pve-container src/PVE/LXC.pm vmstatus: a running CT has the pid of its init (an integer)
    assert isinstance(current["pid"], int) and current["pid"] > 0

    upid = ct.status.shutdown.post(timeout=10)
    decoded = Tasks.decode_upid(upid)
    assert (decoded["node"], decoded["type"], decoded["id"], decoded["user"]) == (
        "pve1",
        "vzshutdown",
        "201",
        "root@pam",
    )
    assert upid.endswith(f":{TOKEN_USER}!{TOKEN_NAME}:")
    first = api.nodes("pve1").tasks(upid).status.get()
    assert first["status"] in ("running", "stopped") and first["upid"] == upid and first["type"] == "vzshutdown"
    status, text = run_task(api, upid)
    assert status["exitstatus"] == "OK" and text.endswith("TASK OK")
    assert not support.container_running(name) and ct.status.current.get()["status"] == "stopped"
    assert "pid" not in ct.status.current.get()

    # PVE refuses at once (no task) what cannot apply
    err = expect_error(lambda: ct.status.stop.post(), 500)
    assert err.content == "CT 201 not running"

    status, _ = run_task(api, ct.status.start.post())
    assert status["exitstatus"] == "OK" and support.container_running(name)
    assert expect_error(lambda: ct.status.start.post(), 500).content == "CT 201 already running"

    status, _ = run_task(api, ct.status.stop.post())
    assert status["exitstatus"] == "OK" and not support.container_running(name)
    status, _ = run_task(api, ct.status.start.post())
    assert status["exitstatus"] == "OK" and support.container_running(name)


def test_qemu_start_shutdown_stop(cluster):
    api = cluster.api()
    vm = api.nodes("pve1").qemu(101)
    name = cluster.container(101)
    status, _ = run_task(api, vm.status.start.post())
    assert status["type"] == "qmstart" and status["exitstatus"] == "OK" and support.container_running(name)
    current = vm.status.current.get()
    assert current["status"] == current["qmpstatus"] == "running" and current["cpus"] == 2
    assert isinstance(current["pid"], int) and current["pid"] > 0  # qemu-server PVE/QemuServer.pm vmstatus

    # qemu-server checks inside the worker: the task fails, the request does not
    status, text = run_task(api, vm.status.start.post())
    assert status["exitstatus"] == "VM 101 already running" and text.endswith("TASK ERROR: VM 101 already running")

    status, _ = run_task(api, vm.status.shutdown.post(timeout=10, forceStop=1))
    assert status["type"] == "qmshutdown" and status["exitstatus"] == "OK" and not support.container_running(name)
    run_task(api, vm.status.start.post())
    status, _ = run_task(api, vm.status.stop.post())
    assert status["type"] == "qmstop" and status["exitstatus"] == "OK" and not support.container_running(name)


def test_python_true_is_rejected_like_pve(cluster):
    err = expect_error(lambda: cluster.api().nodes("pve1").lxc(201).status.shutdown.post(forceStop=True), 400)
    assert err.content == "Parameter verification failed."
    assert err.errors == {"forceStop": "type check ('boolean') failed - got 'True'"}
    err = expect_error(lambda: cluster.api().nodes("pve1").lxc(201).status.shutdown.post(bogus=1), 400)
    assert "bogus" in err.errors


def test_unknown_vmid_or_wrong_node_or_kind(cluster):
    api = cluster.api()
    err = expect_error(lambda: api.nodes("pve1").lxc(999).status.current.get(), 500)
    assert err.content == "Configuration file 'nodes/pve1/lxc/999.conf' does not exist"
    err = expect_error(lambda: api.nodes("pve1").lxc(301).status.current.get(), 500)  # 301 lives on pve2
    assert err.content == "Configuration file 'nodes/pve1/lxc/301.conf' does not exist"
    err = expect_error(lambda: api.nodes("pve1").qemu(201).status.start.post(), 500)
    assert err.content == "Configuration file 'nodes/pve1/qemu-server/201.conf' does not exist"
    err = expect_error(lambda: api.nodes("pve1").lxc(201).snapshot.get(), 501)
    assert "not implemented" in err.content


# --------------------------------------------------------------------------- migration


def test_migrate_running_ct_without_restart_is_refused(cluster):
    api = cluster.api()
    assert support.container_running(cluster.container(201))
    err = expect_error(lambda: api.nodes("pve1").lxc(201).migrate.post(target="pve2"), 500)
    assert err.content == "can't migrate running container without --online or --restart"
    err = expect_error(lambda: api.nodes("pve1").lxc(201).migrate.post(target="pve1"), 400)
    assert err.errors == {"target": "target is local node."}


def test_online_migration_fails_in_the_task(cluster):
    api = cluster.api()
    status, text = run_task(api, api.nodes("pve1").lxc(201).migrate.post(target="pve2", online=1))
    assert status["type"] == "vzmigrate" and status["exitstatus"] == "migration aborted"
    assert "lxc live migration is currently not implemented" in text and text.endswith("TASK ERROR: migration aborted")
    assert api.nodes("pve1").lxc(201).status.current.get()["status"] == "running"


def test_local_bind_mount_blocks_migration(cluster):
    api = cluster.api()
    status, text = run_task(api, api.nodes("pve1").lxc(202).migrate.post(target="pve2"))
    assert status["exitstatus"] == "migration aborted"
    assert "cannot migrate local bind mount point 'mp0'" in text
    assert api.nodes("pve1").lxc(202).status.current.get().get("lock") is None


def test_restart_migration_moves_the_running_ct(cluster):
    api = cluster.api()
    name = cluster.container(201)
    upid = (
        api.nodes("pve1").lxc(201).migrate.post(target="pve2", restart=1, timeout=10, **{"target-storage": "local-zfs"})
    )
    assert Tasks.decode_upid(upid)["type"] == "vzmigrate"

    # while the disks "copy", the CT carries lock: migrate, in its status and in the cluster resources
    wait_for(
        lambda: api.nodes("pve1").lxc(201).status.current.get().get("lock") == "migrate", timeout=10, interval=0.05
    )
    resources = {r["id"]: r for r in api.cluster.resources.get(type="vm")}
    assert resources["lxc/201"]["lock"] == "migrate"
    assert api.nodes("pve1").tasks(upid).status.get()["status"] == "running"
    assert not support.container_running(name)  # restart mode: shut down before the move
    # pve-manager PVE/API2/Tasks.pm node_tasks: a running task of the active list has status "RUNNING" (upper
    # case), no endtime, the user as written in its UPID; the status filter sees it as "unknown"
    active = api.nodes("pve1").tasks.get(source="active", vmid=201)
    assert [(t["upid"], t["status"], t["user"]) for t in active] == [(upid, "RUNNING", f"{TOKEN_USER}!{TOKEN_NAME}")]
    assert "endtime" not in active[0]
    assert api.nodes("pve1").tasks.get(source="active", vmid=201, statusfilter="ok") == []
    assert [t["upid"] for t in api.nodes("pve1").tasks.get(source="active", vmid=201, errors=1)] == [upid]
    assert upid not in [t["upid"] for t in api.nodes("pve1").tasks.get(vmid=201)]  # source=archive: finished only
    status, text = run_task(api, upid)
    assert status["exitstatus"] == "OK", text
    for expected in (
        "shutdown CT 201",
        "starting migration of CT 201 to node 'pve2'",
        "start container on target node",
        "migration finished successfully",
    ):
        assert expected in text

    assert support.container_running(name)
    current = api.nodes("pve2").lxc(201).status.current.get()
    assert current["status"] == "running" and "lock" not in current
    err = expect_error(lambda: api.nodes("pve1").lxc(201).status.current.get(), 500)
    assert err.content == "Configuration file 'nodes/pve1/lxc/201.conf' does not exist"
    resources = {r["id"]: r for r in api.cluster.resources.get(type="vm")}
    assert resources["lxc/201"]["node"] == "pve2"
    assert pve.ClusterState(cluster.dir).guest(201)["rootfs"] == "local-zfs:vm-201-disk-0"


# --------------------------------------------------------------------------- task lists and task ids


def task_list(cluster, node: str = "pve1", **params) -> dict:
    """The whole answer of GET /nodes/{node}/tasks: proxmoxer keeps only ``data``, not ``total``."""
    url = cluster.url(node, f"/nodes/{node}/tasks")
    headers = {"Authorization": f"PVEAPIToken={TOKEN_USER}!{TOKEN_NAME}={cluster.secret}"}
    resp = requests.get(url, params=params, headers=headers, verify=False, timeout=10)
    assert resp.status_code in (200, 400), resp.reason
    return {"status": resp.status_code, **resp.json()}


def test_task_list_filters(cluster):
    """pve-manager PVE/API2/Tasks.pm node_tasks: finished tasks carry their exit status as ``status`` and an
    ``endtime``, the token split off into ``tokenid``; filters combine; ``total`` counts every match before
    start/limit; statusfilter takes ok/warning/error/unknown (pve-common src/PVE/UPID.pm normalize_status_type).
    """
    api = cluster.api()
    finished = api.nodes("pve1").tasks.get(limit=1000)
    assert finished and all(t["status"] != "RUNNING" and t["endtime"] >= t["starttime"] for t in finished)
    assert [t["endtime"] for t in finished] == sorted((t["endtime"] for t in finished), reverse=True)
    mine = [t for t in finished if t.get("tokenid") == TOKEN_NAME]
    assert mine and all(t["user"] == TOKEN_USER for t in mine)

    errors = {t["type"]: t["status"] for t in api.nodes("pve1").tasks.get(statusfilter="error", limit=1000)}
    assert errors["qmstart"] == "VM 101 already running" and errors["vzmigrate"] == "migration aborted"
    assert all(t["status"] == "OK" for t in api.nodes("pve1").tasks.get(statusfilter="ok", limit=1000))
    assert {t["status"] for t in api.nodes("pve1").tasks.get(errors=1, limit=1000)} >= set(errors.values())
    assert "OK" not in {t["status"] for t in api.nodes("pve1").tasks.get(errors=1, limit=1000)}

    shutdowns = api.nodes("pve1").tasks.get(typefilter="vzshutdown", vmid=201)
    assert shutdowns and {(t["type"], t["id"]) for t in shutdowns} == {("vzshutdown", "201")}
    first = min(t["starttime"] for t in finished)
    assert len(api.nodes("pve1").tasks.get(since=first, limit=1000)) == len(finished)
    assert api.nodes("pve1").tasks.get(until=first - 1) == []
    assert api.nodes("pve1").tasks.get(userfilter="ROOT@PAM", limit=1000)  # a case-insensitive substring
    assert api.nodes("pve1").tasks.get(userfilter="nobody@pve") == []

    page = task_list(cluster, start=1, limit=2)
    assert page["total"] == len(finished) and [t["upid"] for t in page["data"]] == [t["upid"] for t in finished[1:3]]
    assert task_list(cluster, limit=0) == {"status": 200, "data": [], "total": len(finished)}

    bad = task_list(cluster, statusfilter="ok,fine")
    assert bad["status"] == 400 and bad["errors"] == {"statusfilter": "invalid format - invalid status 'fine'\n"}
    assert task_list(cluster, vmid=5)["errors"] == {"vmid": "value must have a minimum value of 100"}


def test_unknown_or_malformed_upid(cluster):
    """pve-manager PVE/API2/Tasks.pm: read_task_status raises a parameter error for an UPID that
    PVE::UPID::decode cannot parse and for one without a task file ("no such task"); read_task_log does not
    check, and PVE::Tools::dump_logfile (pve-common src/PVE/Tools.pm) answers its open error as the one line.
    """
    api = cluster.api()
    unknown = "UPID:pve1:0000ABCD:00001234:6740A1B2:vzstart:201:root@pam:"
    err = expect_error(lambda: api.nodes("pve1").tasks(unknown).status.get(), 400)
    assert err.content == "Parameter verification failed." and err.errors == {"upid": "no such task"}
    err = expect_error(lambda: api.nodes("pve1").tasks("UPID:nonsense").status.get(), 400)
    assert err.errors == {"upid": "unable to parse worker upid"}
    assert api.nodes("pve1").tasks(unknown).log.get() == [
        {"n": 1, "t": "unable to open file - No such file or directory"}
    ]
    # each node keeps its own task files: pve2 does not know a task of pve1
    upid = api.nodes("pve1").tasks.get(limit=1)[0]["upid"]
    assert expect_error(lambda: api.nodes("pve2").tasks(upid).status.get(), 400).errors == {"upid": "no such task"}


# --------------------------------------------------------------------------- node poweroff


def test_sigterm_stops_the_node_guests(cluster):
    api = cluster.api()
    on_pve2 = [cluster.container(301), cluster.container(201)]
    assert all(support.container_running(name) for name in on_pve2)
    run_task(api, api.nodes("pve1").qemu(101).status.start.post())
    proc = cluster.procs["pve2"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, cluster.log("pve2")
    assert not any(support.container_running(name) for name in on_pve2)
    assert support.container_running(cluster.container(101))  # another node's guests are untouched

    nodes = {n["node"]: n["status"] for n in api.nodes.get()}
    assert nodes == {"pve1": "online", "pve2": "offline"}
    # pmxcfs keeps a node's last broadcast for 5 minutes (pve-cluster src/pmxcfs/status.c rrd_entry_is_old):
    # the guests of a powered-off node still look running in /cluster/resources
    resources = {r["id"]: r for r in api.cluster.resources.get(type="vm")}
    assert resources["lxc/301"]["status"] == "running" and resources["lxc/301"]["node"] == "pve2"
    # pveproxy cannot forward to a powered-off node
    assert expect_error(lambda: api.nodes("pve2").lxc.get(), 595).status_code == 595


# --------------------------------------------------------------------------- quorum
# PVE sources followed (read with the search/fetch tools):
# - pve-cluster src/PVE/Cluster.pm ``check_cfs_quorum``: ``die "cluster not ready - no quorum?\\n"``
#   (a plain die: HTTP 500 with the text as reason phrase);
# - pve-container src/PVE/API2/LXC/Status.pm ``vm_start`` (after "CT N already running") and
#   src/PVE/API2/LXC.pm ``migrate_vm`` (after "target is local node."), qemu-server
#   src/PVE/API2/Qemu.pm ``vm_start``: each calls ``check_cfs_quorum()`` before forking a task;
# - pve-manager PVE/API2/Cluster.pm ``get_status``: the cluster entry has ``quorate``, ``nodes``,
#   ``version``, ``name``; node entries ``nodeid``, ``local``, ``online``, ``ip`` and ``level``;
# - corosync exec/votequorum.c ``calculate_quorum``: quorum = (expected + 2) / 2, a QDevice's vote
#   counting while it casts it (pve-cluster src/PVE/CLI/pvecm.pm ``setup_qdevice``: 1 vote).

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
