"""The power observer, three-valued, driven through its ``Probes`` seam (no sockets):
what it cannot see is ``unknown`` with the reason, never ``down``; and the planner never
stops anything on such an observation."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from wakegrid.graph import stop_plan
from wakegrid.model import Fleet, load_fleet, parse_fleet
from wakegrid.observe.power import PowerState, ProbeError, Probes, observe_power, tcp_probe, unknown_nodes, up_nodes

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
PVE1_API = "https://10.231.1.20:8006"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(LAB_FLEET)


class Lab:
    """Answers like the lab would: machines by address, guests by vmid, containers by name."""

    def __init__(self, machines=(), guests=None, containers=None, dead_apis=(), refusing=()):
        self.machines = set(machines)
        self.refusing = set(refusing)
        self.guests = guests or {}
        self.containers = containers or {}
        self.dead_apis = set(dead_apis)

    def probes(self) -> Probes:
        return Probes(tcp=self.tcp, proxmox_guests=self.proxmox, docker_containers=self.docker)

    def tcp(self, host, port, timeout):
        if host in self.refusing:
            return "unknown", f"{host}:{port} refuses connections (booting or shutting down)"
        if host in self.machines:
            return "up", f"SSH port {host}:{port} accepts connections"
        return "down", f"no answer on {host}:{port} within {timeout:g}s"

    def proxmox(self, config, secret, timeout):
        if config["api"] in self.dead_apis:
            raise ProbeError(f"Proxmox API {config['api']} did not answer: timed out")
        return self.guests

    def docker(self, api, timeout):
        if api.api in self.dead_apis:
            raise ProbeError(f"Docker API {api.api} did not answer: refused")
        return self.containers


EVERY_MACHINE = {"10.231.1.2", "10.231.1.10", "10.231.1.20", "10.231.1.22", "10.231.2.2", "10.231.2.10"}


def observe(fleet, lab: Lab, names):
    return observe_power(fleet, names, proxmox_secret=lambda machine: "token", probes=lab.probes())


def test_stop_nas_is_blocked_while_pve1_api_times_out(fleet):
    """The issue's case: jellyfin on pve1 depends on the NAS, and pve1's Proxmox API times out."""
    lab = Lab(machines=EVERY_MACHINE, dead_apis={PVE1_API})
    states = observe(fleet, lab, ["nas", "jellyfin", "sandbox"])
    assert states["jellyfin"].power == "unknown"
    plan = stop_plan(fleet, "nas", up_nodes(states), unknown=unknown_nodes(states), confirmed=["nas"])
    assert plan.steps == ()
    assert plan.blocked == (
        f"nas may still be needed by jellyfin: power unknown (Proxmox API {PVE1_API} did not answer: timed out)",
    )


def test_an_api_that_does_not_answer_makes_its_guests_unknown_and_theirs_too(fleet):
    lab = Lab(machines=EVERY_MACHINE, dead_apis={PVE1_API})
    states = observe(fleet, lab, ["jellyfin", "sandbox"])
    assert states["pve1"].power == "up"
    assert states["jellyfin"] == PowerState("jellyfin", "unknown", f"Proxmox API {PVE1_API} did not answer: timed out")
    # a node whose host is unknown is unknown too, never down
    assert states["sandbox"].power == "unknown"
    assert states["sandbox"].detail.startswith("its host vm-docker is unknown: ")
    assert unknown_nodes(states) == {name: states[name].detail for name in ("vm-docker", "jellyfin", "sandbox")}


def test_a_docker_api_that_refuses_makes_its_containers_unknown(fleet):
    lab = Lab(machines=EVERY_MACHINE, guests={101: "running"}, dead_apis={"tcp://10.231.1.21:2375"})
    states = observe(fleet, lab, ["sandbox"])
    assert states["vm-docker"].power == "up"
    assert states["sandbox"] == PowerState(
        "sandbox", "unknown", "Docker API tcp://10.231.1.21:2375 did not answer: refused"
    )


def test_a_machine_without_an_address_is_unknown():
    data = yaml.safe_load(LAB_FLEET.read_text())
    del data["nodes"]["nas"]["address"]
    variant = parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<no address>")
    states = observe(variant, Lab(machines=EVERY_MACHINE), ["nas"])
    assert states["nas"] == PowerState("nas", "unknown", "no address to probe")


def test_a_machine_that_refuses_ssh_is_unknown_not_down(fleet):
    states = observe(fleet, Lab(machines=EVERY_MACHINE, refusing={"10.231.1.10"}), ["nas"])
    assert states["nas"].power == "unknown"
    assert "refuses connections" in states["nas"].detail


def test_an_unreadable_token_makes_the_guests_unknown_without_the_value(fleet):
    def secret(machine):
        raise ValueError("cannot read secret file /nowhere/pve-token")

    states = observe_power(fleet, ["jellyfin"], proxmox_secret=secret, probes=Lab(machines=EVERY_MACHINE).probes())
    assert states["jellyfin"].power == "unknown"
    assert "cannot read the Proxmox token secret of pve1" in states["jellyfin"].detail


@pytest.mark.parametrize(
    ("status", "power"),
    [("running", "up"), ("stopped", "down"), ("unknown", "unknown"), ("paused", "unknown")],
)
def test_guest_status_maps_to_three_values(fleet, status, power):
    lab = Lab(machines=EVERY_MACHINE, guests={201: status})
    assert observe(fleet, lab, ["jellyfin"])["jellyfin"].power == power


@pytest.mark.parametrize(
    ("state", "power"),
    [("running", "up"), ("exited", "down"), ("created", "down"), ("restarting", "unknown"), ("paused", "unknown")],
)
def test_container_state_maps_to_three_values(fleet, state, power):
    lab = Lab(machines=EVERY_MACHINE, guests={101: "running"}, containers={"sandbox": state})
    assert observe(fleet, lab, ["sandbox"])["sandbox"].power == power


def test_a_node_whose_host_is_down_is_down(fleet):
    states = observe(fleet, Lab(machines={"10.231.1.2"}), ["sandbox"])
    assert [states[n].power for n in ("pve1", "vm-docker", "sandbox")] == ["down", "down", "down"]
    assert states["sandbox"].detail == "its host vm-docker is down"


def test_the_real_tcp_probe_on_loopback():
    """Accepting is up; a refusal means something answers there (booting, shutting down): unknown."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        assert tcp_probe("127.0.0.1", port, 1.0)[0] == "up"
    finally:
        listener.close()
    power, detail = tcp_probe("127.0.0.1", port, 1.0)
    assert (power, detail) == ("unknown", f"127.0.0.1:{port} refuses connections (booting or shutting down)")
