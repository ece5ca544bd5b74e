"""plugins/module_utils/proxmox.py: the pure helpers (lookup, power planning, tags, fleet classification).

The client itself is exercised against the PVE emulator in tests/integration/test_proxmox_modules.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

px = module_utils("proxmox")
fe = module_utils("fleet_entries")


def resource(vmid, name, type="lxc", node="pve1", status="stopped", **extra):
    return {"id": f"{type}/{vmid}", "vmid": vmid, "name": name, "type": type, "node": node, "status": status, **extra}


RESOURCES = [
    resource(201, "jellyfin", tags="media;video", maxmem=2 << 30, maxcpu=2, uptime=0),
    resource(101, "vm-docker", type="qemu", status="running", uptime=50),
    resource(202, "web", node="pve2"),
    resource(203, "web"),
    resource(900, "tmpl", type="qemu", template=1),
    {"id": "node/pve1", "type": "node", "node": "pve1"},
]


# --- connection -------------------------------------------------------------------------


def test_token_id_forms():
    assert px.split_token_id(None, "root@pam!wakegrid") == ("root@pam", "wakegrid")
    assert px.split_token_id("root@pam", "root@pam!wakegrid") == ("root@pam", "wakegrid")
    assert px.split_token_id("ops@pve", "ansible") == ("ops@pve", "ansible")


@pytest.mark.parametrize(
    ("user", "token", "message"),
    [
        ("ops@pve", "root@pam!wakegrid", "belongs to user 'root@pam' but api_user is 'ops@pve'"),
        (None, "wakegrid", "api_user is required"),
        ("root", "wakegrid", "has no realm"),
        ("root@pam", "root@pam!", "empty token name"),
    ],
)
def test_token_id_errors(user, token, message):
    with pytest.raises(px.ProxmoxError, match=message):
        px.split_token_id(user, token)


def test_secrets_are_no_log_and_token_id_is_not():
    spec = px.proxmox_argument_spec()
    assert spec["api_token_secret"]["no_log"] is True and spec["api_password"]["no_log"] is True
    assert spec["api_token_id"]["no_log"] is False
    assert spec["api_port"]["default"] == 8006 and spec["validate_certs"]["default"] is True


# --- lookup -----------------------------------------------------------------------------


def test_find_by_vmid_ignores_other_resource_types():
    assert px.find_guest(RESOURCES, vmid=101)["node"] == "pve1"
    assert px.find_guest(RESOURCES, vmid="202")["node"] == "pve2"
    with pytest.raises(px.ProxmoxError, match="no VM or CT with vmid 999 in this Proxmox VE cluster"):
        px.find_guest(RESOURCES, vmid=999)


def test_find_by_name_must_be_unique_and_not_a_template():
    assert px.find_guest(RESOURCES, name="jellyfin")["vmid"] == 201
    with pytest.raises(px.ProxmoxError, match=r"2 guests are named 'web' \(vmids 202, 203\); give vmid instead"):
        px.find_guest(RESOURCES, name="web")
    with pytest.raises(px.ProxmoxError, match="no VM or CT named 'tmpl'"):
        px.find_guest(RESOURCES, name="tmpl")


def test_vmid_and_name_must_agree():
    assert px.find_guest(RESOURCES, vmid=201, name="jellyfin")["vmid"] == 201
    with pytest.raises(px.ProxmoxError, match="CT 201 is named 'jellyfin', not 'plex'"):
        px.find_guest(RESOURCES, vmid=201, name="plex")


# --- power ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status", "actions"),
    [
        ("started", "stopped", ["start"]),
        ("started", "running", []),
        ("stopped", "running", ["stop"]),
        ("stopped", "stopped", []),
        ("shutdown", "running", ["shutdown"]),
        ("shutdown", "stopped", []),
        ("restarted", "running", ["shutdown", "start"]),
        ("restarted", "stopped", ["start"]),
    ],
)
def test_plan_power(state, status, actions):
    assert px.plan_power(state, status) == actions


def test_plan_power_rejects_unknown_states():
    with pytest.raises(ValueError):
        px.plan_power("paused", "running")


def test_task_outcome_and_log():
    assert not px.task_failed({"status": "stopped", "exitstatus": "OK"})
    assert not px.task_failed({"status": "stopped", "exitstatus": "WARNINGS: 2"})
    assert px.task_failed({"status": "stopped", "exitstatus": "container did not stop"})
    assert px.log_lines([{"n": 2, "t": "TASK OK"}, {"n": 1, "t": "starting"}]) == ["starting", "TASK OK"]
    assert px.upid_node("UPID:pve2:00001234:00005678:6740A1B2:vzstart:201:root@pam!wakegrid:") == "pve2"
    with pytest.raises(px.ProxmoxError, match="not a Proxmox VE task id"):
        px.upid_node("OK")

    assert px.task_failed({"status": "stopped", "exitstatus": "unexpected status"})
    assert px.task_failed({"status": "stopped", "exitstatus": "WARNINGS: many"})


# Entries of GET /nodes/{node}/tasks exactly as PVE sends them. Source: pve-manager PVE/API2/Tasks.pm
# node_tasks (a task of the active list gets ``status => 'RUNNING'`` when it has none; archived ones carry
# ``endtime`` and the exit status as ``status``, and the token split off by $convert_token_task), with the
# fields of pve-common src/PVE/UPID.pm decode and src/PVE/INotify.pm read_active_workers (``saved``).
RUNNING_MIGRATION = {
    "upid": "UPID:pve1:000B5E4A:0225E8F2:6740A1B2:vzmigrate:201:root@pam!wakegrid:",
    "node": "pve1",
    "pid": 745034,
    "pstart": 36038898,
    "starttime": 1732288946,
    "type": "vzmigrate",
    "id": "201",
    "user": "root@pam!wakegrid",
    "saved": "0",
    "status": "RUNNING",
}
FINISHED_START = {
    "upid": "UPID:pve1:000B5F10:0225F0AA:6740A1D0:vzstart:201:root@pam!wakegrid:",
    "node": "pve1",
    "pid": 745232,
    "pstart": 36040874,
    "starttime": 1732288976,
    "type": "vzstart",
    "id": "201",
    "user": "root@pam",
    "tokenid": "wakegrid",
    "endtime": 1732288978,
    "status": "OK",
}
FAILED_SHUTDOWN = dict(FINISHED_START, upid=FINISHED_START["upid"].replace("vzstart", "vzshutdown"), type="vzshutdown")
FAILED_SHUTDOWN["status"] = "container did not stop"


@pytest.mark.parametrize(
    ("task", "running"),
    [
        (RUNNING_MIGRATION, True),
        (FINISHED_START, False),
        (FAILED_SHUTDOWN, False),
        ({**FINISHED_START, "status": "WARNINGS: 1"}, False),
    ],
)
def test_task_list_entries_running_or_finished(task, running):
    assert px.task_running(task) is running


class _TaskListApi:
    """PVE's answers to GET /nodes and GET /nodes/{node}/tasks, in proxmoxer's call shape (no PVE runs here)."""

    def __init__(self, nodes, tasks):
        self._nodes, self._tasks, self.queries = nodes, tasks, []

    @property
    def nodes(self):
        api = self

        class Nodes:
            def get(self):
                return api._nodes

            def __call__(self, node):
                def tasks(**params):
                    api.queries.append((node, params))
                    return api._tasks[node]

                return type("Node", (), {"tasks": type("Tasks", (), {"get": staticmethod(tasks)})})()

        return Nodes()


def test_active_tasks_keeps_the_running_tasks_pve_lists():
    client = px.ProxmoxClient.__new__(px.ProxmoxClient)  # no connection: only the task listing is under test
    client.endpoint, client.identity = "https://pve1:8006", "API token root@pam!wakegrid"
    client.api = _TaskListApi(
        [{"node": "pve1", "status": "online"}, {"node": "pve2", "status": "offline"}],
        {"pve1": [RUNNING_MIGRATION, FINISHED_START, FAILED_SHUTDOWN]},
    )
    assert client.active_tasks(201) == [RUNNING_MIGRATION]  # a guest mid-migration is busy
    assert client.api.queries == [("pve1", {"source": "active", "vmid": 201})]  # an offline node is not asked
    assert client.active_tasks(202) == []


def test_live_status_replaces_the_broadcast_one():
    """/cluster/resources has pvestatd's last broadcast (pve-manager PVE/API2/Cluster.pm resources and
    PVE/API2Tools.pm extract_vm_stats: without one, only id/vmid/node/type and status "unknown")."""
    resources = [
        resource(201, "jellyfin", status="stopped", uptime=0),  # started a second ago
        {"id": "lxc/203", "vmid": 203, "node": "pve1", "type": "lxc", "status": "unknown"},  # not broadcast yet
        resource(202, "web", node="pve2", status="running", uptime=900),  # pve2 powered off 2 minutes ago
        {"id": "node/pve1", "type": "node", "node": "pve1"},
    ]
    nodes = [{"node": "pve1", "status": "online"}, {"node": "pve2", "status": "offline"}]
    listings = {
        "pve1": [
            {"vmid": 201, "name": "jellyfin", "status": "running", "uptime": 1, "pid": 4242},
            {"vmid": 203, "name": "web", "status": "stopped", "uptime": 0},
        ]
    }
    merged = {r["id"]: r for r in px.with_live_status(resources, nodes, listings)}
    assert (merged["lxc/201"]["status"], merged["lxc/201"]["uptime"]) == ("running", 1)
    assert (merged["lxc/203"]["status"], merged["lxc/203"]["name"]) == ("stopped", "web")
    assert merged["lxc/202"]["status"] == "unknown" and merged["node/pve1"] == resources[3]
    assert resources[0]["status"] == "stopped"  # the input is left as it was


def test_tags():
    assert px.split_tags("media;video") == ["media", "video"]
    assert px.split_tags("a, b c") == ["a", "b", "c"]
    assert px.split_tags(None) == [] and px.split_tags("") == []
    assert px.split_tags(["x", ""]) == ["x"]


# --- fleet ------------------------------------------------------------------------------

FLEET = {
    "pve1": {"kind": "machine", "site": "dijon", "proxmox": {"api": "https://10.0.0.2:8006", "token_secret": "s3cr3t"}},
    "nuc": {"kind": "machine", "site": "thory", "proxmox": {"node": "pve2", "token_secret": {"env": "PVE2_TOKEN"}}},
    "nas": {"kind": "machine", "site": "dijon", "wol": {"secureon": "01:02:03:04:05:06"}},
    "jellyfin": {"kind": "lxc", "parent": "pve1", "vmid": 201},
    "vm-docker": {"kind": "lxc", "parent": "pve1", "vmid": 101},  # wrong kind on purpose
    "other-cluster-guest": {"kind": "vm", "parent": "elsewhere", "vmid": 203},
    "gone": {"kind": "lxc", "parent": "nuc", "vmid": 555},
    "sandbox": {"kind": "container", "parent": "vm-docker", "container": "sandbox"},
}


def test_fleet_parents_and_secrets():
    assert px.fleet_parents(FLEET) == {"pve1": "pve1", "pve2": "nuc"}
    assert sorted(fe.fleet_secret_values(FLEET)) == ["01:02:03:04:05:06", "s3cr3t"]


def test_classify_against_a_fleet():
    found = px.classify_guests(RESOURCES, ["pve1", "pve2"], fleet_nodes=FLEET)
    guests = {g["vmid"]: g for g in found["guests"]}
    assert list(guests) == [101, 201, 202, 203, 900]
    assert guests[201]["configured"] and guests[201]["fleet_node"] == "jellyfin" and guests[201]["notes"] == []
    assert guests[201]["tags"] == ["media", "video"] and guests[201]["maxmem"] == 2 << 30 and guests[201]["cpus"] == 2
    assert guests[101]["notes"] == ["the fleet says kind lxc, Proxmox VE has a vm"]
    # 203 belongs to a fleet guest of another cluster (parent 'elsewhere'): not configured here
    assert not guests[203]["configured"]
    assert guests[202]["parent"] == "nuc"  # on pve2, which the fleet machine 'nuc' carries
    assert found["unconfigured"] == {
        "web": {"kind": "lxc", "parent": "nuc", "vmid": 202, "tags": []},
        "web-203": {"kind": "lxc", "parent": "pve1", "vmid": 203, "tags": []},
    }
    assert guests[900]["fleet_entry"] is None and "template" in guests[900]["notes"][0]
    assert found["missing"] == [{"fleet_node": "gone", "vmid": 555}]
    assert found["warnings"] == []


def test_classify_notes_a_guest_that_moved():
    moved = [resource(201, "jellyfin", node="pve2")]
    guest = px.classify_guests(moved, ["pve1", "pve2"], fleet_nodes=FLEET)["guests"][0]
    assert guest["configured"] and guest["parent"] == "nuc"
    assert guest["notes"] == ["the fleet says parent pve1, the guest is on node pve2 (nuc)"]


def test_classify_with_vmids_only():
    found = px.classify_guests(RESOURCES, ["pve1", "pve2"], known_vmids=[201, 101, 777])
    assert [g["vmid"] for g in found["guests"] if g["configured"]] == [101, 201]
    assert found["unconfigured"]["web"]["parent"] == "pve2"  # no fleet machines: the PVE node name
    assert found["missing"] == [{"fleet_node": None, "vmid": 777}]


def test_classify_falls_back_to_vmids_when_no_machine_carries_the_cluster():
    found = px.classify_guests(RESOURCES, ["pve7"], fleet_nodes=FLEET)
    assert found["warnings"] and "matched by vmid alone" in found["warnings"][0]
    assert {g["vmid"] for g in found["guests"] if g["configured"]} == {101, 201, 203}


def test_classify_reports_a_shared_vmid():
    fleet = {**FLEET, "twin": {"kind": "lxc", "parent": "pve1", "vmid": 201}}
    found = px.classify_guests(RESOURCES, ["pve1", "pve2"], fleet_nodes=fleet)
    assert found["warnings"] == ["fleet nodes jellyfin and twin share vmid 201"]


@pytest.mark.parametrize(
    ("name", "taken", "expected"),
    [
        ("jellyfin", set(), "jellyfin"),
        ("jellyfin", {"jellyfin"}, "jellyfin-201"),
        ("jellyfin", {"jellyfin", "jellyfin-201"}, "jellyfin-201-2"),
        ("Home Assistant (OS)", set(), "Home-Assistant-OS"),
        ("", set(), "lxc-201"),
        ("edge", set(), "edge-201"),  # a group the inventory plugin creates
    ],
)
def test_suggested_names(name, taken, expected):
    guest = {"vmid": 201, "kind": "lxc", "name": name}
    suggestion = px.suggest_fleet_name(guest, set(taken))
    assert suggestion == expected and fe.FLEET_NAME_RE.match(suggestion)
