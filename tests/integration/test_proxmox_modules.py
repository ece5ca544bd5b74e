"""wakegrid.fleet.proxmox_guest and proxmox_guest_info, run by ansible-playbook against the lab's PVE emulator.

Real parts only: two emulator nodes (pve1, pve2) on loopback sharing one cluster directory, real busybox
containers as guests, the modules run by ansible-playbook through a collections path that links this
repository, proxmoxer inside the modules. Each play registers every task result and writes them to a
JSON file at the end; the tests read that file (plus the play's own output for the secret checks).

Guests: 201 "web" (lxc, pve1, stopped), 202 "web" too (lxc, pve1, running, ignores its stop signal),
101 "vm-docker" (qemu, pve1, stopped), 301 "cloudflared" (lxc, pve2, stopped, migrated to pve1 by the
fixture), 302 "mover" (lxc, pve2, running, restart-migrated to pve1 by the second play).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.tools import Tasks

from wakegrid.lab import pve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode

TOKEN_ID = "root@pam!wakegrid"
MAXMEM = 256 << 20
MIGRATE_DELAY = 6  # long enough for the next task of a (slow, loaded) play to see the migration under way


def _skip_reason() -> str | None:
    if reason := support.root_reason("to drive the Docker Engine"):
        return reason
    if not Path(support.ANSIBLE_PLAYBOOK).exists():
        return f"no ansible-playbook next to {sys.executable}"
    return support.docker_cli_reason()


class Lab:
    """Two emulator nodes, their guests, and a way to run plays of the collection against them."""

    GUESTS = (
        # vmid, type, node, name, running, tags, extra `docker create` options
        (201, "lxc", "pve1", "web", False, "", ()),
        (202, "lxc", "pve1", "web", True, "", ("--stop-signal", "SIGUSR1")),  # PID 1 ignores it: never shuts down
        (101, "qemu", "pve1", "vm-docker", False, "docker", ()),
        (301, "lxc", "pve2", "cloudflared", False, "net;dns", ()),
        (302, "lxc", "pve2", "mover", True, "", ()),
    )

    def __init__(self, root: Path, image: str):
        self.root = root
        self.image = image
        self.run_id = uuid.uuid4().hex[:8]
        self.secret = secrets.token_hex(16)
        self.password = secrets.token_hex(12)
        self.ports = {"pve1": support.free_port(), "pve2": support.free_port()}
        self.dir = root / "etc-pve"
        self.procs: dict[str, subprocess.Popen] = {}
        self.collections = support.collections_path(root / "collections")
        self.plays = 0
        self.migration = ""  # UPID of the fixture's migration of CT 301

    def container(self, vmid: int) -> str:
        return f"wg-pvemod-{self.run_id}-{vmid}"

    def build(self) -> None:
        nodes = {name: {"ip": "127.0.0.1", "port": port} for name, port in self.ports.items()}
        users = {"root@pam": self.password}
        pve.init_cluster(self.dir, "wakegrid-modules", nodes, tokens={TOKEN_ID: self.secret}, users=users)
        for vmid, kind, node, name, running, tags, options in self.GUESTS:
            container = self.container(vmid)
            support.create_guest_container(self.image, container, self.run_id, running, *options)
            pve.write_guest(
                self.dir, vmid, type=kind, node=node, name=name, container=container, tags=tags, cpus=2, maxmem=MAXMEM
            )

    def start(self, node: str) -> None:
        options = ("--migrate-delay", str(MIGRATE_DELAY), "--stop-timeout", "5")
        self.procs[node] = support.start_emulator(self.root, node, self.dir, self.ports[node], *options)

    def stop(self) -> None:
        support.stop_emulators(self.procs, self.run_id)

    def api(self, node: str = "pve2") -> ProxmoxAPI:
        user, token = TOKEN_ID.split("!")
        return ProxmoxAPI(
            "127.0.0.1", port=self.ports[node], user=user, token_name=token, token_value=self.secret, verify_ssl=False
        )

    def connection(self, node: str = "pve1", **overrides) -> dict:
        """Module options to reach the cluster through ``node``'s API, as a fleet would give them."""
        args = {
            "api_host": "127.0.0.1",
            "api_port": self.ports[node],
            "api_token_id": TOKEN_ID,
            "api_token_secret": self.secret,
            "validate_certs": False,
        }
        args.update(overrides)
        return args

    def running(self, vmid: int) -> dict:
        """A play task that records whether the guest's container really runs (Docker's view)."""
        name = self.container(vmid)
        argv = [support.DOCKER, "ps", "-q", "--filter", f"name=^{name}$", "--filter", "status=running"]
        return {"ansible.builtin.command": {"argv": argv}, "changed_when": False}

    def play(self, tasks: list[dict], verbosity: int = 0) -> tuple[list[dict], str]:
        """Run ``tasks`` in one play; return every task's registered result and the play's output.

        A task is a plain Ansible task dict; each gets ``register`` and ``ignore_errors`` so that a
        failure is a result to inspect, not the end of the play.
        """
        self.plays += 1
        out = self.root / f"results-{self.plays}.json"
        names = [f"r{i}" for i in range(len(tasks))]
        play_tasks = [{**task, "register": reg, "ignore_errors": True} for task, reg in zip(tasks, names, strict=True)]
        content = "{{ [" + ", ".join(names) + "] | to_json }}"
        play_tasks.append({"ansible.builtin.copy": {"content": content, "dest": str(out)}})
        playbook = self.root / f"play-{self.plays}.yml"
        play = {"hosts": "localhost", "gather_facts": False, "tasks": play_tasks}
        playbook.write_text(json.dumps([play]))  # JSON is YAML
        env = support.ansible_env(
            self.collections,
            ANSIBLE_LOCALHOST_WARNING="False",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
            ANSIBLE_PYTHON_INTERPRETER=sys.executable,  # the venv: it has proxmoxer
            ANSIBLE_PIPELINING="True",  # no temporary module files: faster, same module code path
        )
        cmd = [support.ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(playbook)]
        if verbosity:
            cmd.append("-" + "v" * verbosity)
        proc = subprocess.run(cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=240)
        output = proc.stdout + proc.stderr
        assert out.exists(), f"the play did not finish (rc {proc.returncode}):\n{output[-4000:]}"
        return json.loads(out.read_text()), output


def guest(lab: Lab, vmid: int | None = None, state: str = "started", **options) -> dict:
    args = lab.connection(**options.pop("connection", {}))
    if vmid is not None:
        args["vmid"] = vmid
    args.update(state=state, **options)
    return {"wakegrid.fleet.proxmox_guest": args}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    image = support.ensure_guest_image()
    lab = Lab(tmp_path_factory.mktemp("pvemod"), image)
    try:
        lab.build()
        lab.start("pve1")
        lab.start("pve2")
        # Move the stopped CT 301 to pve1 now; the second play finds it there with a stale "pve2" hint.
        lab.migration = lab.api("pve2").nodes("pve2").lxc(301).migrate.post(target="pve1")
        yield lab
    finally:
        lab.stop()


# --------------------------------------------------------------------------- power, errors, secrets


@pytest.fixture(scope="module")
def power(lab):
    """One play (at -vvv) through the power life cycle, the stubborn guest and the error cases."""
    tasks = {
        "check_start": {**guest(lab, 201, "started"), "check_mode": True},
        "start": guest(lab, 201, "started"),
        "running_after_start": lab.running(201),
        "start_again": guest(lab, 201, "started", node="pve1"),
        "shutdown": guest(lab, 201, "shutdown", timeout=10),
        "restart_stopped": guest(lab, 201, "restarted"),
        "restart_running": guest(lab, 201, "restarted", timeout=10),
        "stop": guest(lab, 201, "stopped"),
        "vm_by_name": guest(lab, state="started", name="vm-docker"),
        "stubborn": guest(lab, 202, "shutdown", timeout=2),
        "stubborn_forced": guest(lab, 202, "shutdown", timeout=2, force_stop=True),
        "unknown_vmid": guest(lab, 999, "started"),
        "wrong_token": guest(lab, 201, "started", connection={"api_token_secret": "0" * 32}),
    }
    results, output = lab.play(list(tasks.values()), verbosity=3)
    return dict(zip(tasks, results, strict=True)), output


def test_start_changes_once_and_really_starts(power):
    results, _ = power
    start = results["start"]
    assert start["changed"] is True and not start.get("failed"), start
    assert (start["vmid"], start["type"], start["node"]) == (201, "lxc", "pve1")
    assert (start["status_before"], start["status_after"]) == ("stopped", "running")
    assert start["actions"] == ["start"] and start["upid"].startswith("UPID:pve1:")
    assert start["tasks"] == [{"action": "start", "upid": start["upid"], "exitstatus": "OK"}]
    assert ":vzstart:201:" in start["upid"]
    assert results["running_after_start"]["stdout"].strip()  # Docker says the container runs

    again = results["start_again"]
    assert again["changed"] is False and again["actions"] == [] and again["tasks"] == []
    assert again["status_before"] == again["status_after"] == "running" and "upid" not in again


def test_check_mode_reports_without_acting(power):
    results, _ = power
    check = results["check_start"]
    assert check["changed"] is True and check["actions"] == ["start"] and check["tasks"] == []
    assert (check["status_before"], check["status_after"]) == ("stopped", "running")
    assert results["start"]["status_before"] == "stopped"  # the check-mode start left it stopped


def test_shutdown_stop_and_restart(lab, power):
    results, _ = power
    shutdown = results["shutdown"]
    assert shutdown["changed"] is True and shutdown["status_after"] == "stopped", shutdown
    assert ":vzshutdown:201:" in shutdown["upid"]

    # restarted: a stopped guest is only started, a running one is shut down then started
    stopped = results["restart_stopped"]
    assert stopped["status_before"] == "stopped" and stopped["changed"] is True and stopped["actions"] == ["start"]
    restart = results["restart_running"]
    assert restart["changed"] is True and restart["actions"] == ["shutdown", "start"]
    assert [t["action"] for t in restart["tasks"]] == ["shutdown", "start"]
    assert all(t["exitstatus"] == "OK" for t in restart["tasks"]) and restart["status_after"] == "running"

    stop = results["stop"]
    assert stop["changed"] is True and ":vzstop:201:" in stop["upid"] and stop["status_after"] == "stopped"
    assert not support.container_running(lab.container(201))


def test_vm_found_by_name(lab, power):
    results, _ = power
    start = results["vm_by_name"]
    assert start["changed"] is True and (start["vmid"], start["type"]) == (101, "qemu"), start
    assert ":qmstart:101:" in start["upid"] and start["status_after"] == "running"
    assert support.container_running(lab.container(101))


def test_guest_ignoring_shutdown_fails_with_task_log_unless_forced(lab, power):
    results, _ = power
    failed = results["stubborn"]
    assert failed["failed"] is True and failed["changed"] is False, failed
    assert failed["msg"].startswith("Failed to shutdown CT 202 on node pve1: task UPID:pve1:")
    assert "container did not stop" in failed["msg"] and failed["step"] == "shutdown CT 202 on node pve1"
    assert failed["task_log"][-1] == "TASK ERROR: container did not stop"
    assert failed["upid"] == failed["tasks"][0]["upid"] and failed["status_before"] == "running"

    forced = results["stubborn_forced"]
    assert forced["status_before"] == "running"  # the failed clean shutdown left it running
    assert forced["changed"] is True and forced["status_after"] == "stopped", forced
    assert forced["tasks"][0]["exitstatus"] == "OK"
    assert not support.container_running(lab.container(202))


def test_clear_errors(power):
    results, _ = power
    unknown = results["unknown_vmid"]
    assert unknown["failed"] is True and unknown["msg"] == "no VM or CT with vmid 999 in this Proxmox VE cluster"
    auth = results["wrong_token"]
    assert auth["failed"] is True, auth
    assert auth["msg"].startswith("Proxmox VE authentication failed (check the credentials at https://127.0.0.1:")
    assert "as API token root@pam!wakegrid" in auth["msg"] and "api_token_secret" in auth["msg"]


def test_token_secret_never_shown(lab, power):
    results, output = power
    assert "<localhost> EXEC" in output  # really -vvv
    assert '"api_token_secret": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"' in output
    assert lab.secret not in output
    assert lab.secret not in json.dumps(results)


# --------------------------------------------------------------------------- migration, lock, discovery


def fleet_nodes(lab: Lab) -> dict:
    proxmox = {"api": f"https://127.0.0.1:{lab.ports['pve1']}", "token_id": TOKEN_ID, "token_secret": lab.secret}
    return {
        "pve1": {"kind": "machine", "site": "dijon", "proxmox": proxmox},
        "nuc": {"kind": "machine", "site": "thory", "proxmox": {**proxmox, "node": "pve2"}},
        "web": {"kind": "lxc", "parent": "pve1", "vmid": 201},
        "vm-docker": {"kind": "vm", "parent": "pve1", "vmid": 101},
        "mover": {"kind": "lxc", "parent": "nuc", "vmid": 302},
        "ghost": {"kind": "lxc", "parent": "pve1", "vmid": 999},
    }


@pytest.fixture(scope="module")
def moved(lab, power):
    """The second play: a restart migration under way, then the guests found where they are now."""
    status = Tasks.blocking_status(lab.api("pve2"), lab.migration, timeout=60, polling_interval=0.2)
    assert status and status["exitstatus"] == "OK", status
    migrate_url = f"https://127.0.0.1:{lab.ports['pve2']}/api2/json/nodes/pve2/lxc/302/migrate"
    tasks = {
        # through the API from inside the play, so that the next tasks run while it is under way
        "migrate": {
            "ansible.builtin.uri": {
                "url": migrate_url,
                "method": "POST",
                "headers": {"Authorization": f"PVEAPIToken={TOKEN_ID}={lab.secret}"},
                "body_format": "form-urlencoded",
                "body": {"target": "pve1", "restart": "1", "timeout": "10"},
                "validate_certs": False,
            },
            "no_log": True,
        },
        "busy_fail_fast": guest(lab, 302, "started", node="pve2", lock_timeout=0),
        "busy_waited": guest(lab, 302, "started", node="pve2", lock_timeout=40),
        "stale_hint": guest(lab, 301, "started", node="pve2", connection={"api_port": lab.ports["pve2"]}),
        "discover": {"wakegrid.fleet.proxmox_guest_info": {**lab.connection(), "fleet_nodes": fleet_nodes(lab)}},
        "discover_password": {
            "wakegrid.fleet.proxmox_guest_info": {
                **{k: v for k, v in lab.connection().items() if not k.startswith("api_token")},
                "api_user": "root@pam",
                "api_password": lab.password,
                "node": "pve2",
            }
        },
        "discover_vmids": {
            "wakegrid.fleet.proxmox_guest_info": {**lab.connection("pve2"), "known_vmids": [201, 101], "node": "pve1"}
        },
    }
    results, output = lab.play(list(tasks.values()))
    return dict(zip(tasks, results, strict=True)), output


def test_busy_guest_fails_fast_or_is_waited_for(lab, moved):
    results, _ = moved
    assert not results["migrate"].get("failed"), results["migrate"]  # no_log: only the outcome is kept
    fast = results["busy_fail_fast"]
    assert fast["failed"] is True, fast
    assert fast["msg"].startswith("CT 302 on node pve") and "is busy:" in fast["msg"]
    assert "vzmigrate" in fast["msg"] or "locked (migrate)" in fast["msg"]
    assert "still busy after 0s (lock_timeout)" in fast["msg"]

    waited = results["busy_waited"]
    assert not waited.get("failed"), waited.get("msg")
    # the restart migration started it again on pve1: nothing left to do, found on its new node
    assert waited["changed"] is False and waited["node"] == "pve1" and waited["node_hint"] == "pve2"
    assert waited["status_after"] == "running"
    assert support.container_running(lab.container(302))


def test_guest_found_on_its_new_node_despite_a_stale_hint(lab, moved):
    results, _ = moved
    hint = results["stale_hint"]
    assert hint["changed"] is True and hint["node"] == "pve1" and hint["node_hint"] == "pve2", hint
    assert hint["upid"].startswith("UPID:pve1:") and hint["status_after"] == "running"
    assert support.container_running(lab.container(301))


def test_discover_flags_unconfigured_guests_and_prefills_them(lab, moved):
    results, output = moved
    found = results["discover"]
    assert found["changed"] is False and not found.get("failed"), found
    guests = {g["vmid"]: g for g in found["guests"]}
    assert list(guests) == [101, 201, 202, 301, 302]
    web = guests[201]
    assert (web["name"], web["type"], web["kind"], web["node"], web["parent"]) == ("web", "lxc", "lxc", "pve1", "pve1")
    assert web["configured"] is True and web["fleet_node"] == "web" and web["fleet_entry"] is None
    assert web["maxmem"] == MAXMEM and web["cpus"] == 2 and web["tags"] == [] and web["status"] == "stopped"
    assert guests[101]["kind"] == "vm" and guests[101]["tags"] == ["docker"] and guests[101]["configured"] is True
    assert guests[302]["configured"] is True and guests[302]["uptime"] >= 0 and guests[302]["status"] == "running"
    assert guests[302]["notes"] == ["the fleet says parent nuc, the guest is on node pve1 (pve1)"]

    # discovered but not configured: a pre-filled fleet entry under a free, valid name
    assert found["unconfigured"] == {
        "web-202": {"kind": "lxc", "parent": "pve1", "vmid": 202, "tags": []},
        "cloudflared": {"kind": "lxc", "parent": "pve1", "vmid": 301, "tags": ["net", "dns"]},
    }
    assert guests[301]["configured"] is False and guests[301]["suggested_name"] == "cloudflared"
    assert guests[301]["fleet_entry"] == found["unconfigured"]["cloudflared"]
    assert found["missing"] == [{"fleet_node": "ghost", "vmid": 999}]
    assert found["counts"] == {"guests": 5, "configured": 3, "unconfigured": 2}
    assert found["nodes"] == [
        {"node": "pve1", "status": "online", "parent": "pve1"},
        {"node": "pve2", "status": "online", "parent": "nuc"},
    ]
    # the fleet's inline token secret is hidden like a no_log option
    assert lab.secret not in output and lab.secret not in json.dumps(results)


def test_discover_with_known_vmids_and_a_node_filter(moved):
    results, _ = moved
    found = results["discover_vmids"]
    assert [g["vmid"] for g in found["guests"]] == [101, 201, 202, 301, 302]  # all on pve1 by now
    assert [g["vmid"] for g in found["guests"] if g["configured"]] == [101, 201]
    assert found["unconfigured"] == {
        "web": {"kind": "lxc", "parent": "pve1", "vmid": 202, "tags": []},
        "cloudflared": {"kind": "lxc", "parent": "pve1", "vmid": 301, "tags": ["net", "dns"]},
        "mover": {"kind": "lxc", "parent": "pve1", "vmid": 302, "tags": []},
    }


def test_discover_with_a_password_login(lab, moved):
    results, output = moved
    found = results["discover_password"]
    assert not found.get("failed"), found
    assert found["guests"] == [] and found["counts"] == {"guests": 0, "configured": 0, "unconfigured": 0}  # all moved
    assert [n["node"] for n in found["nodes"]] == ["pve1", "pve2"]
    assert lab.password not in output and lab.password not in json.dumps(results)
