"""Fleet parent = preferred host, observed node = current host: a guest that migrated is found where it runs.

The observer is driven through its ``Probes`` seam with a cluster whose nodes each list their own
guests (no sockets); the drain plan of ``wakegrid shutdown --drain`` is a pure function of the
observation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wakegrid.cli.power import drain_plan
from wakegrid.model import Fleet, load_fleet
from wakegrid.observe.power import PowerState, ProbeError, Probes, observe_power

LAB_FLEET = Path(__file__).resolve().parents[2] / "inventories" / "lab" / "lab.fleet.yml"
# what `shutdown --drain` observes: the cluster's machines and its lxc guests
DRAIN_NAMES = ("pve1", "pve2", "jellyfin", "vm-docker")
ADDRESSES = {"pve1": "10.231.1.20", "pve2": "10.231.1.22"}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(LAB_FLEET)


class Cluster:
    """Each Proxmox node lists only its own guests; machines answer by address."""

    def __init__(self, listings: dict[str, dict[int, str]], down=(), dead=(), refusing=()):
        self.listings = listings
        self.down = {ADDRESSES.get(name, name) for name in down}
        self.refusing = {ADDRESSES.get(name, name) for name in refusing}
        self.dead = set(dead)
        self.asked: list[str] = []

    def probes(self) -> Probes:
        return Probes(tcp=self.tcp, proxmox_guests=self.proxmox, docker_containers=lambda api, timeout: {})

    def tcp(self, host, port, timeout):
        if host in self.refusing:
            return "unknown", f"{host}:{port} refuses connections (booting or shutting down)"
        if host in self.down:
            return "down", f"no answer on {host}:{port} within {timeout:g}s"
        return "up", f"SSH port {host}:{port} accepts connections"

    def proxmox(self, config, secret, timeout):
        self.asked.append(config["node"])
        if config["node"] in self.dead:
            raise ProbeError(f"Proxmox API {config['api']} did not answer: timed out")
        return self.listings.get(config["node"], {})


def observe(fleet: Fleet, cluster: Cluster, names=("jellyfin",)) -> dict[str, PowerState]:
    return observe_power(fleet, list(names), proxmox_secret=lambda machine: "token", probes=cluster.probes())


def test_a_guest_on_its_preferred_host_is_found_there_without_asking_the_peers(fleet):
    cluster = Cluster({"pve1": {201: "running", 101: "running"}, "pve2": {}})
    state = observe(fleet, cluster)["jellyfin"]
    assert (state.power, state.host) == ("up", None)
    assert state.detail == "Proxmox API of pve1: lxc 201 running"


def test_a_guest_that_moved_is_found_on_its_current_host(fleet):
    cluster = Cluster({"pve1": {101: "running"}, "pve2": {201: "running"}})
    state = observe(fleet, cluster)["jellyfin"]
    assert (state.power, state.host) == ("up", "pve2")
    assert state.detail == "Proxmox API of pve2: lxc 201 running (its preferred host is pve1)"


def test_a_moved_guest_keeps_running_while_its_preferred_host_sleeps(fleet):
    cluster = Cluster({"pve2": {201: "running"}}, down=["pve1"])
    states = observe(fleet, cluster)
    assert states["pve1"].power == "down"
    assert (states["jellyfin"].power, states["jellyfin"].host) == ("up", "pve2")


def test_a_guest_nowhere_with_its_host_down_is_down(fleet):
    cluster = Cluster({"pve2": {}}, down=["pve1"])
    state = observe(fleet, cluster)["jellyfin"]
    assert (state.power, state.detail) == ("down", "its host pve1 is down")


def test_unknown_is_not_down_when_a_peer_that_could_have_it_does_not_answer(fleet):
    cluster = Cluster({"pve1": {101: "running"}}, dead=["pve2"])
    state = observe(fleet, cluster)["jellyfin"]
    assert state.power == "unknown"
    assert "it may run on another machine of its cluster" in state.detail and "did not answer" in state.detail
    cluster = Cluster({}, down=["pve1"], refusing=["pve2"])
    state = observe(fleet, cluster)["jellyfin"]
    assert state.power == "unknown" and state.detail.startswith("its host pve1 is down, and it may run")


def test_a_parent_whose_api_fails_leaves_the_guest_unknown_even_if_a_peer_lists_nothing(fleet):
    cluster = Cluster({"pve2": {}}, dead=["pve1"])
    state = observe(fleet, cluster)["jellyfin"]
    assert state.power == "unknown" and "did not answer" in state.detail


def test_the_drain_plan_takes_the_lxc_guests_that_run_on_the_machine_now(fleet):
    states = observe(fleet, Cluster({"pve1": {101: "running", 201: "running"}, "pve2": {}}), DRAIN_NAMES)
    assert drain_plan(fleet, "pve1", states) == (["jellyfin"], "pve2", [])
    # jellyfin already moved: pve1 has nothing to drain, pve2 has it
    states = observe(fleet, Cluster({"pve1": {101: "running"}, "pve2": {201: "running"}}), DRAIN_NAMES)
    assert drain_plan(fleet, "pve1", states) == ([], "pve2", [])
    assert drain_plan(fleet, "pve2", states) == (["jellyfin"], "pve1", [])


def test_the_drain_is_blocked_without_a_machine_to_take_the_guests_or_when_a_guest_is_unknown(fleet):
    states = observe(fleet, Cluster({"pve1": {201: "running"}}, down=["pve2"]), DRAIN_NAMES)
    guests, target, blocked = drain_plan(fleet, "pve1", states)
    assert (guests, target) == (["jellyfin"], None)
    assert blocked == ["no other machine of cluster dijon is up to take jellyfin"]
    states = observe(fleet, Cluster({"pve1": {}}, dead=["pve2"]), DRAIN_NAMES)
    assert drain_plan(fleet, "pve1", states)[2][0].startswith("jellyfin is unknown (")


def test_only_a_proxmox_machine_of_a_cluster_can_be_drained(fleet):
    assert drain_plan(fleet, "nas", {})[2] == [
        "nas is not a Proxmox VE machine of a declared cluster (proxmox.cluster): nothing to drain to"
    ]
    assert drain_plan(fleet, "no-such-node", {})[2][0].startswith("no-such-node is not a Proxmox VE machine")


def test_plans_act_on_a_migrated_guest_where_it_runs_now():
    from wakegrid.graph import start_plan, stop_plan
    from wakegrid.model import load_fleet
    from wakegrid.observe.power import PowerState, as_observed

    fleet = load_fleet(Path(__file__).resolve().parents[2] / "inventories" / "lab" / "lab.fleet.yml")
    states = {
        "pve1": PowerState("pve1", "up", "SSH answers"),
        "pve2": PowerState("pve2", "up", "SSH answers"),
        "jellyfin": PowerState("jellyfin", "up", "Proxmox API of pve2: lxc 201 running", host="pve2"),
    }
    current = as_observed(fleet, states)
    assert current.nodes["jellyfin"].parent == "pve2" and fleet.nodes["jellyfin"].parent == "pve1"
    up = set(fleet.nodes)
    # Shutting its preferred host down leaves the guest alone; shutting the current one down stops it first.
    assert "jellyfin" not in [s.node for s in stop_plan(current, "pve1", up, confirmed=["nas"]).steps]
    assert next(s.node for s in stop_plan(current, "pve2", up).steps) == "jellyfin"
    # Started where it is: the Proxmox API of pve2, and pve2 is what must be up.
    others_up = up - {"jellyfin", "pve2"}
    plan = start_plan(current, "jellyfin", others_up)
    assert [(s.node, s.channel.via) for s in plan.steps][-1] == ("jellyfin", "pve2")
    assert "pve2" in [s.node for s in plan.steps]
    # Nothing moved: the very same fleet object.
    assert as_observed(fleet, {"jellyfin": PowerState("jellyfin", "up", "listed by pve1")}) is fleet
