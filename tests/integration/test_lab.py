"""The lab itself, against real parts: WoL, SSH poweroff, site cuts, idempotent up, Ansible."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_second_up_changes_nothing_and_is_fast(lab):
    before = {h.container: lab.lab._container(h.container).id for h in lab.plan.hosts}
    messages: list[str] = []
    from wakegrid.lab.runtime import Lab

    again = Lab(lab.fleet_path, log=messages.append)
    started = time.monotonic()
    again.up()
    took = time.monotonic() - started
    after = {h.container: again._container(h.container).id for h in again.plan.hosts}
    assert after == before, "a second `up` recreated containers"
    assert any("0 created or recreated" in m for m in messages), messages
    assert not any(m.startswith(("created", "recreating", "creating network")) for m in messages), messages
    assert took < 20, f"second up took {took:.1f}s"


def test_every_app_answers_with_its_node(lab):
    for app in lab.plan.apps:
        with urllib.request.urlopen(f"http://{app.address}:{app.port}/", timeout=5) as resp:
            body = json.load(resp)
        assert (body["service"], body["node"], body["site"]) == (app.service, app.node, app.site)
        with urllib.request.urlopen(f"http://{app.address}:{app.port}{app.health_path}", timeout=5) as resp:
            assert resp.status == 200


def _ansible_ping(lab, inventory: str, pattern: str = "all") -> subprocess.CompletedProcess:
    ansible = VENV_BIN / "ansible"
    if not ansible.exists():
        pytest.skip("ansible is not installed next to this python")
    return lab.run(
        str(ansible), pattern, "-i", inventory, "-m", "ansible.builtin.ping", "-f", "10", check=False, timeout=180
    )


def _ssh_hosts(lab) -> list[str]:
    return [h.node for h in lab.plan.hosts if h.ssh and h.role != "client"]


def test_ansible_ping_through_the_fleet_file(lab):
    """`ansible all -i inventories/lab/lab.fleet.yml -m ping`: the fleet is the inventory."""
    listed = subprocess.run(
        [str(VENV_BIN / "ansible-inventory"), "-i", str(lab.fleet_path), "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert listed.returncode == 0, listed.stderr
    hostvars = json.loads(listed.stdout)["_meta"]["hostvars"]
    for node in _ssh_hosts(lab):
        address = hostvars[node]["ansible_host"]
        assert (address.get("__ansible_unsafe") if isinstance(address, dict) else address) == lab.address(node)
    # Container nodes answer too: through their parent's Docker API, not SSH.
    proc = _ansible_ping(lab, str(lab.fleet_path), "all")
    for node in [*_ssh_hosts(lab), "sandbox"]:
        assert f"{node} | SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0


def test_ansible_ping_through_the_generated_ini(lab, tmp_path):
    inventory = lab.lab.write_ini_inventory(tmp_path / "lab.ini")
    proc = _ansible_ping(lab, str(inventory))
    for node in _ssh_hosts(lab):
        assert f"{node} | SUCCESS" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0


def _send_magic_packet_from_gateway(lab, site: str, mac: str) -> None:
    """The wakeonlan library, run on the site gateway (where the real system sends from)."""
    import typing_extensions
    import wakeonlan

    gateway = lab.fleet.sites[site].gateway
    container = lab.plan.host(gateway).container
    lab.exec(gateway, "mkdir", "-p", "/tmp/wol")
    # wakeonlan is pure Python; it needs typing_extensions on Debian's python3.11.
    lab.run("/usr/bin/docker", "cp", str(Path(wakeonlan.__file__).parent), f"{container}:/tmp/wol/")
    lab.run("/usr/bin/docker", "cp", typing_extensions.__file__, f"{container}:/tmp/wol/")
    broadcast = str(lab.fleet.nodes[gateway].address).rsplit(".", 1)[0] + ".255"
    wol = next((n.wol for n in lab.fleet.nodes.values() if n.mac == mac), None)
    if wol and wol.broadcast:
        broadcast = wol.broadcast
    code = (
        "import sys; sys.path.insert(0, '/tmp/wol'); import wakeonlan; "
        f"wakeonlan.wake({mac!r}, host={broadcast!r}, interface={lab.address(gateway)!r})"
    )
    lab.exec(gateway, "python3", "-c", code)


def test_magic_packet_wakes_exactly_the_machine_it_names(lab):
    sleepers = ["nas", "pve2", "srv-thory"]  # two on the same LAN as the target, one on the other site
    try:
        for node in sleepers:
            lab.power(node, False)
        assert not any(lab.is_on(n) for n in sleepers)
        # A packet for a MAC nobody has wakes nothing.
        _send_magic_packet_from_gateway(lab, "dijon", "02:00:0a:e7:01:99")
        mac = lab.fleet.nodes["nas"].mac
        sent = time.monotonic()
        _send_magic_packet_from_gateway(lab, "dijon", mac)
        lab.wait_until(lambda: lab.is_on("nas"), 20, "nas to wake")
        woke_after = time.monotonic() - sent
        assert woke_after >= lab.plan.wol["dijon"][mac]["boot_delay"] - 0.2
        lab.lab.wait_ssh("nas", 30)
        assert lab.ssh("nas", "hostname").stdout.strip() == "nas"
        time.sleep(1.5)  # longer than every boot delay: a wrong wake would have shown by now
        assert not lab.is_on("pve2") and not lab.is_on("srv-thory")
    finally:
        lab.restore()


def test_ssh_poweroff_really_powers_off(lab):
    try:
        lab.lab.wait_ssh("nas", 30)
        lab.ssh("nas", "poweroff")
        took = lab.wait_until(lambda: not lab.is_on("nas"), 30, "nas to power off")
        container = lab.lab._container(lab.plan.host("nas").container)
        assert container.attrs["State"]["ExitCode"] == 0, "systemd did not exit cleanly"
        assert took < 15
    finally:
        lab.restore()


def test_site_cut_makes_the_site_unreachable_from_the_edge(lab):
    edge = lab.fleet.edge.host
    gw_dijon, gw_thory = (lab.fleet.sites[s].gateway for s in ("dijon", "thory"))
    # The gateway's WireGuard interface: the wireguard role's tunnel when site.yml ran (kept), else
    # a bare wireguard-go one made here (removed after).
    gw_container = lab.plan.host(gw_dijon).container
    made_here = lab.exec(gw_dijon, "ip", "link", "show", "wg0", check=False).returncode != 0
    if made_here:
        lab.exec(gw_dijon, "sh", "-c", "WG_PROCESS_FOREGROUND=0 wireguard-go wg0")
    lab.exec(gw_dijon, "ip", "link", "set", "wg0", "up")
    try:
        assert lab.ping(edge, lab.wan_address(gw_dijon))
        lab.lab.cut_site("dijon")
        assert lab.lab.is_cut("dijon")
        assert not lab.ping(edge, lab.wan_address(gw_dijon))
        assert lab.ping(edge, lab.wan_address(gw_thory)), "cutting dijon must not cut thory"
        assert "state DOWN" in lab.exec(gw_dijon, "ip", "link", "show", "wg0").stdout
        status = lab.run(sys.executable, "-m", "wakegrid.lab", "status", str(lab.fleet_path)).stdout
        assert "site cut" in next(line for line in status.splitlines() if line.startswith(gw_dijon))
        # The site itself keeps working on its LAN (it lost the Internet, not power).
        assert lab.ping(gw_dijon, lab.address("nas"))
        lab.lab.restore_site("dijon")
        assert not lab.lab.is_cut("dijon")
        assert lab.ping(edge, lab.wan_address(gw_dijon))
        assert "state DOWN" not in lab.exec(gw_dijon, "ip", "link", "show", "wg0").stdout
    finally:
        if made_here:
            if lab.lab.is_cut("dijon"):
                lab.lab.restore_site("dijon")
            lab.run("/usr/bin/docker", "exec", gw_container, "ip", "link", "del", "wg0", check=False)
        else:
            lab.restore()  # the role's tunnel back up and handshaken, as the next tests expect


def test_proxmox_api_sees_the_guests_and_drives_them(lab):
    proxmoxer = pytest.importorskip("proxmoxer")
    node = lab.fleet.nodes["pve1"].proxmox
    host = node.api.split("//")[1].split(":")[0]
    user, token = node.token_id.split("!")
    api = proxmoxer.ProxmoxAPI(
        host,
        port=8006,
        user=user,
        token_name=token,
        token_value=node.token_secret.reveal(),
        verify_ssl=False,
        timeout=10,
    )
    try:
        resources = {r["name"]: r for r in api.cluster.resources.get(type="vm")}
        assert resources["jellyfin"]["vmid"] == 201  # its status there is pvestatd's last broadcast (up to 10 s old)
        assert api.nodes("pve1").lxc(201).status.current.get()["status"] == "running"
        assert resources["vm-docker"]["type"] == "qemu"
        upid = api.nodes("pve1").lxc(201).status.shutdown.post()
        assert upid.startswith("UPID:pve1:")
        lab.wait_until(lambda: not lab.is_on("jellyfin"), 30, "jellyfin to stop")
        api.nodes("pve1").lxc(201).status.start.post()
        lab.wait_until(lambda: lab.is_on("jellyfin"), 30, "jellyfin to start")
    finally:
        lab.restore()


def test_containers_in_the_docker_guest_go_down_with_it(lab):
    docker = pytest.importorskip("docker")
    vm = lab.fleet.nodes["vm-docker"]
    try:
        assert lab.is_on("sandbox")
        lab.power("vm-docker", False)
        assert not lab.is_on("sandbox")
        lab.power("vm-docker", True)
        lab.wait_until(lambda: _pings(docker, vm.docker.api), 60, "vm-docker's Docker API")
        inner = docker.DockerClient(base_url=vm.docker.api, timeout=10)
        sandbox = inner.containers.get("sandbox")
        assert sandbox.status == "exited"  # it went down with its parent
        sandbox.start()  # through the guest's real Docker API, as the reconciler does
        app = next(a for a in lab.plan.apps if a.node == "sandbox")
        lab.wait_until(lambda: _http_ok(f"http://{app.address}:{app.port}/health"), 20, "the sandbox app")
    finally:
        lab.restore()


def test_down_after_a_failed_up_leaves_nothing(lab, tmp_path):
    """A second lab whose LAN collides with the running one fails half-way; down removes what it made."""
    import yaml

    from wakegrid.lab.runtime import Lab, LabError

    data = yaml.safe_load(lab.fleet_path.read_text())
    data["lab"] = {
        "name": "broken",
        "wan": {"subnet": "10.232.0.0/24"},
        "clients": {"subnet": "10.232.255.0/24"},
        "state_dir": str(tmp_path / "state"),
    }
    data["edge"]["address"] = "10.232.0.2"
    data["edge"]["wireguard"]["endpoint"] = "10.232.0.2:51820"
    data["defaults"]["ssh"]["private_key_file"] = str(tmp_path / "state" / "key")
    for node in data["nodes"].values():
        if "proxmox" in node:
            node["proxmox"]["token_secret"] = {"file": str(tmp_path / "state" / "token")}
    fleet = tmp_path / "broken.fleet.yml"
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))  # site LANs = the running lab's: Docker refuses
    broken = Lab(fleet, log=lambda _m: None)
    with pytest.raises(LabError, match="cannot create network"):
        broken.up()
    labelled = lab.run("/usr/bin/docker", "network", "ls", "-q", "--filter", "label=wakegrid.lab=broken").stdout
    assert labelled.strip(), "the failed up should have left its first networks behind"
    broken.down()
    for kind in ("network", "container", "volume"):
        left = lab.run(
            "/usr/bin/docker",
            kind,
            "ls",
            "-q",
            *(["-a"] if kind == "container" else []),
            "--filter",
            "label=wakegrid.lab=broken",
        ).stdout
        assert not left.strip(), f"{kind}s left after down"
    assert not (tmp_path / "state").exists()
    assert lab.is_on("gw-dijon"), "the other lab must be untouched"


def test_cli_status_lists_every_host_with_power_and_addresses(lab):
    out = lab.run(sys.executable, "-m", "wakegrid.lab", "status", str(lab.fleet_path)).stdout
    for host in lab.plan.hosts:
        line = next(line for line in out.splitlines() if line.split() and line.split()[0] == host.node)
        assert " on " in f" {line} " and host.address in line
    assert "ansible.builtin.ping" in out and "memory:" in out


def _pings(docker, url: str) -> bool:
    try:
        return docker.DockerClient(base_url=url, timeout=2).ping()
    except Exception:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
