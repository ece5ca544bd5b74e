"""The lab's pure core: fleet → networks, containers, addresses, files (no Docker here)."""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from wakegrid.lab import topology as topo
from wakegrid.model import Fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIlab wakegrid-lab-test"


def build(data: dict[str, Any]) -> Fleet:
    return parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<test>")


@pytest.fixture
def data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(LAB_FLEET.read_text()))


@pytest.fixture
def plan(data) -> topo.LabPlan:
    return topo.plan_lab(build(data), fleet_path=LAB_FLEET, ssh_public_key=PUBKEY)


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(topo.LabConfigError) as exc:
        topo.plan_lab(build(data), fleet_path=LAB_FLEET)
    return exc.value.problems


# --------------------------------------------------------------------------- the lab fleet as shipped


def test_the_lab_fleet_covers_what_the_tests_need(data):
    fleet = build(data)
    kinds = {node.kind for node in fleet.nodes.values()}
    assert kinds == {"machine", "vm", "lxc", "container"}
    assert {s.policy.mode for s in fleet.services.values()} == {"always_on", "scheduled", "on_demand"}
    for service in fleet.services.values():  # backends on both sites
        assert {fleet.backend_site(b) for b in service.backends} == {"dijon", "thory"}
    pve_at_dijon = [n for n, node in fleet.nodes.items() if node.proxmox and node.site == "dijon"]
    assert len(pve_at_dijon) == 2  # an LXC migration target
    assert fleet.dependencies["jellyfin"] == ["nas"]
    assert any(node.docker for node in fleet.nodes.values() if node.kind == "vm")


def test_networks_one_lan_per_site_a_wan_and_clients(plan):
    by_role = {(n.role, n.site): n for n in plan.networks}
    assert by_role[("lan", "dijon")].subnet == "10.231.1.0/24"
    assert by_role[("lan", "thory")].subnet == "10.231.2.0/24"
    assert by_role[("wan", None)].subnet == "10.231.0.0/24"
    assert by_role[("clients", None)].subnet == "10.231.255.0/24"
    for net in plan.networks:  # the host takes the last address of each network
        assert net.gateway == str(list(ipaddress.ip_network(net.subnet).hosts())[-1])
    assert len({n.name for n in plan.networks}) == len(plan.networks)
    assert all(n.name.startswith("wakegrid-lab-") for n in plan.networks)


def test_every_fleet_node_but_containers_is_a_host_at_its_address(plan, data):
    fleet = build(data)
    for name, node in fleet.nodes.items():
        if node.kind == "container":
            assert name not in {h.node for h in plan.hosts}
            continue
        host = plan.host(name)
        assert host.container == f"wakegrid-lab-{name}"
        assert host.address == node.address
        assert host.networks[0].network == f"wakegrid-lab-lan-{fleet.site_of(name)}"
        assert host.mac == node.mac  # the NIC really has the fleet's MAC


def test_edge_and_gateways_get_wan_tun_and_forwarding(plan):
    edge = plan.host("vps")
    assert [(a.network, a.address) for a in edge.networks] == [
        ("wakegrid-lab-wan", "10.231.0.2"),
        ("wakegrid-lab-clients", "10.231.255.2"),
    ]
    for gw, wan in (("gw-dijon", "10.231.0.11"), ("gw-thory", "10.231.0.12")):
        host = plan.host(gw)
        assert host.role == "gateway" and host.keep_running
        assert ("wakegrid-lab-wan", wan) in [(a.network, a.address) for a in host.networks]
        assert "/dev/net/tun" in host.devices and "NET_ADMIN" in host.cap_add
        assert ("net.ipv4.ip_forward", "1") in host.sysctls
    assert "/dev/net/tun" in edge.devices


def test_site_hosts_route_the_wireguard_range_through_their_gateway(plan):
    routes = next(f.content for f in plan.host("nas").files if f.path.endswith("routes.sh"))
    for net in ("10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24", "10.231.2.0/24"):
        assert f"ip route replace {net} via 10.231.1.2" in routes
    assert "10.231.1.0/24" not in routes  # its own LAN is on-link
    gw_routes = next(f.content for f in plan.host("gw-dijon").files if f.path.endswith("routes.sh"))
    assert "ip route" not in gw_routes
    assert "wakegrid-lab-routes.service" in plan.host("nas").units


def test_systemd_hosts_get_the_verified_recipe_and_the_lab_key(plan):
    for host in plan.hosts:
        if host.systemd:
            assert "SYS_ADMIN" in host.cap_add
            auth = next(f for f in host.files if f.path == "/root/.ssh/authorized_keys")
            assert auth.content.strip() == PUBKEY and auth.mode == 0o600
        else:
            assert host.role == "listener" and host.command


def test_wol_listener_config_per_site_lists_only_that_sites_machines(plan):
    assert set(plan.wol["dijon"]) == {"02:00:0a:e7:01:0a", "02:00:0a:e7:01:14", "02:00:0a:e7:01:16"}
    assert plan.wol["thory"] == {"02:00:0a:e7:02:0a": {"container": "wakegrid-lab-srv-thory", "boot_delay": 0.5}}
    assert plan.wol["dijon"]["02:00:0a:e7:01:0a"]["boot_delay"] == 1.0  # lab.nodes.nas.boot_delay
    listener = plan.host("wol-dijon")
    config = json.loads(next(f.content for f in listener.files if f.path.endswith("wol.json")))
    assert config == plan.wol["dijon"]
    assert listener.address == "10.231.1.253"
    assert ("/var/run/docker.sock", "/var/run/docker.sock", "rw") in listener.binds
    assert {f.resource for f in listener.files if f.resource} == {"wol_listener.py", "engine.py"}


def test_secureon_goes_into_the_listener_config(data):
    data["nodes"]["nas"]["wol"]["secureon"] = "01:02:03:04:05:06"
    plan = topo.plan_lab(build(data), secureon={"nas": "01:02:03:04:05:06"})
    assert plan.wol["dijon"]["02:00:0a:e7:01:0a"]["secureon"] == "01:02:03:04:05:06"


def test_proxmox_cluster_per_site_with_its_guests(plan):
    (cluster,) = plan.clusters
    assert cluster.site == "dijon" and cluster.hosts == ("pve1", "pve2")
    assert cluster.nodes == (("pve1", "10.231.1.20"), ("pve2", "10.231.1.22"))
    assert cluster.token_ids == ("root@pam!wakegrid",)
    guests = {g.node: g for g in cluster.guests}
    assert guests["vm-docker"] == topo.PveGuestPlan("vm-docker", 101, "qemu", "pve1", "wakegrid-lab-vm-docker")
    assert guests["jellyfin"].type == "lxc" and guests["jellyfin"].vmid == 201
    for name in cluster.hosts:
        host = plan.host(name)
        assert (cluster.directory, "/etc/pve", "rw") in host.binds
        assert "wakegrid-lab-pve.service" in host.units
    assert plan.pve_token_file == "/var/lib/wakegrid-lab/lab/pve-token"


def test_docker_guest_gets_the_dind_recipe_and_its_container(plan):
    vm = plan.host("vm-docker")
    assert "seccomp=unconfined" in vm.security_opt
    assert ("wakegrid-lab-vm-docker-docker", "/var/lib/docker") in vm.volumes
    assert {"containerd.service", "docker.service"} <= set(vm.units)
    daemon = json.loads(next(f.content for f in vm.files if f.path == "/etc/docker/daemon.json"))
    assert "tcp://0.0.0.0:2375" in daemon["hosts"]
    (inner,) = plan.inner
    assert inner.node == "sandbox" and inner.parent_container == "wakegrid-lab-vm-docker"
    assert "--serve" in inner.command and "sandbox:8081:/health" in inner.command


def test_an_app_for_every_backend_on_its_node(plan, data):
    fleet = build(data)
    expected = {(svc, b.node, b.port) for svc, s in fleet.services.items() for b in s.backends}
    assert {(a.service, a.node, a.port) for a in plan.apps} == expected
    srv = plan.host("srv-thory")
    assert {f"wakegrid-lab-app@{s}.service" for s in ("www", "stream", "sandbox")} <= set(srv.units)
    env = next(f.content for f in srv.files if f.path == "/etc/wakegrid-lab/apps/stream.env")
    assert "APP_PORT=8096" in env and "APP_NODE=srv-thory" in env and "APP_SITE=thory" in env
    assert plan.skipped_backends == ()


def test_guests_and_machines_start_on_unless_the_lab_says_off(data):
    data["lab"]["nodes"]["srv-thory"] = {"power": "off"}
    plan = topo.plan_lab(build(data))
    assert plan.host("srv-thory").power is False
    assert plan.host("nas").power is True
    assert all(h.keep_running for h in plan.hosts if h.role in ("edge", "gateway", "listener", "client"))


def test_plan_is_deterministic_and_spec_hash_tracks_changes(data):
    a = topo.plan_lab(build(data), ssh_public_key=PUBKEY)
    b = topo.plan_lab(build(data), ssh_public_key=PUBKEY)
    assert a == b
    image = "wakegrid-lab/host:x"
    assert topo.spec_hash(a.host("nas"), image, {}) == topo.spec_hash(b.host("nas"), image, {})
    data["nodes"]["nas"]["address"] = "10.231.1.11"
    c = topo.plan_lab(build(data), ssh_public_key=PUBKEY)
    assert topo.spec_hash(c.host("nas"), image, {}) != topo.spec_hash(a.host("nas"), image, {})
    assert topo.spec_hash(c.host("pve1"), image, {}) == topo.spec_hash(a.host("pve1"), image, {})
    assert topo.spec_hash(a.host("nas"), "other:image", {}) != topo.spec_hash(a.host("nas"), image, {})
    data["lab"]["nodes"]["nas"]["power"] = "off"  # initial power only: nothing to recreate
    d = topo.plan_lab(build(data), ssh_public_key=PUBKEY)
    assert topo.spec_hash(d.host("nas"), image, {}) == topo.spec_hash(c.host("nas"), image, {})


def test_unit_wants_links_like_systemctl_enable():
    assert topo.unit_wants(("wakegrid-lab-app@www.service", "docker.service")) == [
        (
            "/etc/systemd/system/multi-user.target.wants/wakegrid-lab-app@www.service",
            "/etc/systemd/system/wakegrid-lab-app@.service",
        ),
        ("/etc/systemd/system/multi-user.target.wants/docker.service", "/lib/systemd/system/docker.service"),
    ]


def test_ini_inventory_lists_every_ssh_host(plan, data):
    text = topo.ini_inventory(build(data), plan)
    for name in ("vps", "gw-dijon", "nas", "pve1", "pve2", "vm-docker", "jellyfin", "gw-thory", "srv-thory"):
        assert f"\n{name} ansible_host={plan.host(name).address} " in text
    assert "wol-dijon" not in text and "\nclient " not in text
    assert "ansible_ssh_private_key_file=/var/lib/wakegrid-lab/lab/id_ed25519" in text


def test_lab_name_defaults_to_the_file_stem(data):
    del data["lab"]["name"]
    data["defaults"]["ssh"]["private_key_file"] = "/tmp/k"
    for node in data["nodes"].values():
        if "proxmox" in node:
            node["proxmox"]["token_secret"] = {"file": "/tmp/t"}
    plan = topo.plan_lab(build(data), fleet_path="inventories/ci/ci-lab.fleet.yml")
    assert plan.config.name == "ci-lab"
    assert plan.host("nas").container == "wakegrid-ci-lab-nas"
    assert plan.config.state_dir == "/var/lib/wakegrid-lab/ci-lab"


def test_defaults_allocate_wan_addresses_after_the_edge(data):
    del data["lab"]["wan"]["addresses"]
    cfg = topo.parse_lab_config(build(data))
    assert cfg.wan_addresses == {"gw-dijon": "10.231.0.1", "gw-thory": "10.231.0.3"}  # .2 is the edge


# --------------------------------------------------------------------------- problems, named by path


def test_unknown_lab_keys_are_reported(data):
    data["lab"]["colour"] = "blue"
    data["lab"]["nodes"]["ghost"] = {"power": "off"}
    data["lab"]["nodes"]["nas"]["speed"] = 3
    problems = problems_of(data)
    assert any(p.startswith("lab.colour: unknown key") for p in problems)
    assert "lab.nodes.ghost: unknown node" in problems
    assert any(p.startswith("lab.nodes.nas.speed: unknown key") for p in problems)


def test_bad_values_in_lab_are_reported(data):
    data["lab"]["name"] = "Bad Name"
    data["lab"]["boot_delay"] = "soon"
    data["lab"]["nodes"]["nas"] = {"power": "maybe"}
    data["lab"]["wan"]["addresses"]["gw-dijon"] = "10.9.9.9"
    problems = problems_of(data)
    assert any(p.startswith("lab.name: 'Bad Name'") for p in problems)
    assert any(p.startswith("lab.boot_delay: 'soon' is not a duration") for p in problems)
    assert "lab.nodes.nas.power: must be on or off" in problems
    assert "lab.wan.addresses.gw-dijon: 10.9.9.9 is outside the lab WAN 10.231.0.0/24" in problems


def test_node_addresses_must_fit_the_lab(data):
    data["nodes"]["nas"]["address"] = "10.231.2.50"
    data["nodes"]["srv-thory"]["address"] = "10.231.2.253"  # the listener's
    del data["nodes"]["pve2"]["address"]
    problems = problems_of(data)
    assert "nodes.nas.address: 10.231.2.50 is outside site dijon's lan 10.231.1.0/24" in problems
    assert any(p.startswith("nodes.srv-thory.address: 10.231.2.253 is the WoL listener of thory") for p in problems)
    assert any(p.startswith("nodes.pve2.address: required in a lab") for p in problems)


def test_fleet_fields_the_lab_needs(data):
    del data["edge"]["address"]
    del data["sites"]["thory"]["lan"]
    problems = problems_of(data)
    assert any(p.startswith("edge.address: required in a lab") for p in problems)
    assert any(p.startswith("sites.thory.lan: required in a lab") for p in problems)


def test_token_and_docker_api_shapes(data):
    data["nodes"]["pve1"]["proxmox"]["token_secret"] = "inline-secret"
    data["nodes"]["vm-docker"]["docker"]["api"] = "unix:///var/run/docker.sock"
    problems = problems_of(data)
    assert any(p.startswith("nodes.pve1.proxmox.token_secret: must be {file: PATH}") for p in problems)
    docker_api = "nodes.vm-docker.docker.api: 'unix:///var/run/docker.sock' must be tcp://"
    assert any(p.startswith(docker_api) for p in problems)


def test_overlapping_networks_are_refused(data):
    data["lab"]["clients"] = {"subnet": "10.231.1.0/25"}
    problems = problems_of(data)
    assert any("lab.clients.subnet: 10.231.1.0/25 overlaps sites.dijon.lan" in p for p in problems)


def test_the_client_name_must_not_shadow_a_node(data):
    data["lab"]["clients"]["name"] = "nas"
    assert "lab.clients.name: 'nas' is already a node of the fleet" in problems_of(data)


def test_hosts_come_before_what_they_host(data):
    # Put a guest before its Proxmox parent in the file: the plan still orders parent first.
    nodes = data["nodes"]
    data["nodes"] = {"jellyfin": nodes.pop("jellyfin"), **nodes}
    plan = topo.plan_lab(build(data))
    order = [h.node for h in plan.hosts]
    assert order.index("pve1") < order.index("jellyfin")
    assert order.index("pve1") < order.index("vm-docker")
