"""Start and stop plans on the example fleet (Dijon and Thory), step by step."""

from __future__ import annotations

import pytest

from wakegrid.graph import Channel, Note, PlanError, start_plan, stop_plan
from wakegrid.model import parse_fleet

GATEWAYS = {"pi-dijon", "nuc-thory"}


def steps_of(plan) -> list[tuple[str, str, str, str]]:
    """(action, node, channel kind, channel via) of each step."""
    return [(s.action, s.node, s.channel.kind, s.channel.via) for s in plan.steps]


@pytest.fixture
def all_up(example_fleet) -> set[str]:
    return set(example_fleet.nodes)


# --------------------------------------------------------------------------- start


def test_start_jellyfin_wakes_the_nas_then_pve1_then_the_lxc(example_fleet):
    plan = start_plan(example_fleet, "jellyfin", GATEWAYS)
    assert plan.runnable
    assert steps_of(plan) == [
        ("start", "nas", "wake_on_lan", "pi-dijon"),
        ("start", "pve1", "wake_on_lan", "pi-dijon"),
        ("start", "jellyfin", "proxmox", "pve1"),
    ]
    assert [s.reason for s in plan.steps] == ["dependency of jellyfin", "host of jellyfin", "requested"]
    assert [s.wait_for for s in plan.steps] == [
        "SSH answers on 192.168.1.10:22",
        "SSH answers on 192.168.1.3:22",
        "Proxmox reports lxc 201 running",
    ]
    assert plan.skipped == (Note("pi-dijon", "already up"),)
    assert plan.steps[0].describe() == (
        "start machine nas via Wake-on-LAN magic packet sent from pi-dijon; wait until SSH answers on 192.168.1.10:22"
    )


def test_start_skips_nodes_already_up(example_fleet):
    plan = start_plan(example_fleet, "jellyfin", GATEWAYS | {"nas"})
    assert steps_of(plan) == [
        ("start", "pve1", "wake_on_lan", "pi-dijon"),
        ("start", "jellyfin", "proxmox", "pve1"),
    ]
    assert [n.node for n in plan.skipped] == ["nas", "pi-dijon"]


def test_start_of_a_node_already_up_has_no_step(example_fleet):
    plan = start_plan(example_fleet, "jellyfin", GATEWAYS | {"nas", "pve1", "jellyfin"})
    assert plan.runnable and plan.steps == ()
    assert {n.node for n in plan.skipped} == {"nas", "jellyfin"}


def test_start_container_powers_machine_then_vm_then_container(example_fleet):
    plan = start_plan(example_fleet, "api", GATEWAYS)
    assert steps_of(plan) == [
        ("start", "pve1", "wake_on_lan", "pi-dijon"),
        ("start", "vm-docker", "proxmox", "pve1"),
        ("start", "api", "docker", "vm-docker"),
    ]
    assert plan.steps[-1].wait_for.startswith("Docker reports container api running")


def test_start_container_with_dependencies_resolves_them_deepest_first(example_fleet):
    plan = start_plan(example_fleet, "sandbox", GATEWAYS)
    assert steps_of(plan) == [
        ("start", "nas", "wake_on_lan", "pi-dijon"),
        ("start", "pve1", "wake_on_lan", "pi-dijon"),
        ("start", "jellyfin", "proxmox", "pve1"),
        ("start", "vm-docker", "proxmox", "pve1"),
        ("start", "sandbox", "docker", "vm-docker"),
    ]
    assert [s.node for s in plan.steps if s.reason == "host of sandbox"] == ["vm-docker"]


def test_start_on_another_site_uses_that_sites_gateway(example_fleet):
    plan = start_plan(example_fleet, "api-thory", GATEWAYS)
    assert steps_of(plan) == [
        ("start", "pve-thory", "wake_on_lan", "nuc-thory"),
        ("start", "docker-thory", "proxmox", "pve-thory"),
        ("start", "api-thory", "docker", "docker-thory"),
    ]


def test_start_machine_without_mac_is_blocked(example_data, build_fleet):
    del example_data["nodes"]["nas"]["mac"]
    del example_data["nodes"]["nas"]["wol"]
    plan = start_plan(build_fleet(example_data), "jellyfin", GATEWAYS)
    assert not plan.runnable
    assert plan.steps == ()
    assert plan.blocked == ("cannot start nas: it is down and has no mac for Wake-on-LAN",)


def test_start_with_the_gateway_down_is_blocked(example_fleet):
    plan = start_plan(example_fleet, "nas", {"nuc-thory"})  # pi-dijon is down and has no mac
    assert plan.steps == ()
    assert plan.blocked == ("cannot start nas: its site gateway pi-dijon is down (it sends the magic packets)",)


def test_start_with_a_wakeable_gateway_down_is_still_blocked(example_data, build_fleet):
    example_data["nodes"]["pi-dijon"]["mac"] = "52:54:00:12:34:02"
    plan = start_plan(build_fleet(example_data), "nas", {"nuc-thory"})
    assert plan.steps == ()
    assert plan.blocked == ("cannot start nas: its site gateway pi-dijon is down (it sends the magic packets)",)


def test_start_unknown_node_is_a_plan_error(example_fleet):
    with pytest.raises(PlanError, match="unknown node 'plex'"):
        start_plan(example_fleet, "plex", GATEWAYS)


# --------------------------------------------------------------------------- stop


def test_stop_pve1_stops_containers_then_guests_then_the_machine(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pve1", all_up)
    assert plan.runnable
    assert steps_of(plan) == [
        ("stop", "sandbox", "docker", "vm-docker"),
        ("stop", "api", "docker", "vm-docker"),
        ("stop", "vm-docker", "proxmox", "pve1"),
        ("stop", "vm-ubuntu", "proxmox", "pve1"),
        ("stop", "jellyfin", "proxmox", "pve1"),
        ("stop", "pve1", "ssh", "pve1"),
    ]
    assert plan.steps[-1].reason == "requested"
    assert plan.steps[-1].wait_for == "pve1 no longer answers on 192.168.1.3"
    assert plan.steps[0].reason == "hosted on vm-docker"
    # jellyfin needed the NAS; nobody else does, but a machine's shutdown waits for a person.
    assert [n.node for n in plan.proposed] == ["nas"]
    assert plan.kept == ()


def test_stop_with_confirmation_stops_the_proposed_dependency(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pve1", all_up, confirmed=["nas"])
    assert steps_of(plan)[-2:] == [("stop", "pve1", "ssh", "pve1"), ("stop", "nas", "ssh", "nas")]
    assert plan.steps[-1].reason == "no active dependant left (was needed by jellyfin)"
    assert plan.proposed == ()


def test_stop_auto_stops_an_unneeded_dependency_without_confirm_shutdown(example_data, build_fleet):
    example_data["nodes"]["nas"]["confirm_shutdown"] = False
    fleet = build_fleet(example_data)
    plan = stop_plan(fleet, "jellyfin", set(fleet.nodes) - {"sandbox"})
    assert steps_of(plan) == [("stop", "jellyfin", "proxmox", "pve1"), ("stop", "nas", "ssh", "nas")]


def test_stop_keeps_a_dependency_still_needed_outside_the_cascade(example_data, build_fleet):
    example_data["dependencies"]["homeassistant"] = ["nas"]
    fleet = build_fleet(example_data)
    plan = stop_plan(fleet, "pve1", set(fleet.nodes), confirmed=["nas"])
    assert "nas" not in [s.node for s in plan.steps]
    assert plan.kept == (Note("nas", "still needed by homeassistant", ("homeassistant",)),)


def test_stop_does_not_count_a_dependant_that_is_down(example_data, build_fleet):
    example_data["dependencies"]["homeassistant"] = ["nas"]
    fleet = build_fleet(example_data)
    plan = stop_plan(fleet, "pve1", set(fleet.nodes) - {"homeassistant"}, confirmed=["nas"])
    assert [s.node for s in plan.steps][-1] == "nas"
    assert plan.kept == ()


def test_stop_with_an_active_dependant_outside_is_blocked(example_fleet, all_up):
    plan = stop_plan(example_fleet, "jellyfin", all_up)
    assert plan.steps == () and plan.kept == () and plan.proposed == ()
    assert plan.blocked == ("jellyfin is still needed by sandbox (running, outside this shutdown)",)


def test_stop_including_dependants_stops_the_dependant_first(example_fleet, all_up):
    plan = stop_plan(example_fleet, "jellyfin", all_up, include_dependants=True)
    assert plan.runnable
    assert steps_of(plan) == [
        ("stop", "sandbox", "docker", "vm-docker"),
        ("stop", "jellyfin", "proxmox", "pve1"),
    ]
    assert plan.steps[0].reason == "depends on jellyfin, which is stopping"
    assert [n.node for n in plan.proposed] == ["nas"]


def test_stop_in_use_node_in_the_cascade_is_blocked(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pve1", all_up, {"jellyfin": "2 open streams from 10.200.0.1"})
    assert plan.steps == ()
    assert plan.blocked == ("jellyfin is in use: 2 open streams from 10.200.0.1",)


def test_stop_keeps_an_in_use_dependency(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pve1", all_up, {"nas": "SMB session from 192.168.1.50"}, confirmed=["nas"])
    assert "nas" not in [s.node for s in plan.steps]
    assert plan.kept == (Note("nas", "nas is in use: SMB session from 192.168.1.50"),)


def test_stop_skips_nodes_already_down(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pve1", all_up - {"sandbox", "api", "vm-docker"})
    assert [s.node for s in plan.steps] == ["vm-ubuntu", "jellyfin", "pve1"]
    assert {n.node for n in plan.skipped} == {"sandbox", "api", "vm-docker"}
    assert all(n.reason == "already down" for n in plan.skipped)


def test_stop_of_a_node_already_down_has_no_step(example_fleet):
    plan = stop_plan(example_fleet, "homeassistant", GATEWAYS | {"pve2"})
    assert plan.steps == () and plan.skipped == (Note("homeassistant", "already down"),)


def test_stop_unknown_node_is_a_plan_error(example_fleet, all_up):
    with pytest.raises(PlanError, match="unknown node 'plex'"):
        stop_plan(example_fleet, "plex", all_up)


def test_plan_to_dict_says_whether_it_can_run(example_fleet, all_up):
    blocked = stop_plan(example_fleet, "jellyfin", all_up).to_dict()
    assert blocked["runnable"] is False and blocked["steps"] == ()
    started = start_plan(example_fleet, "jellyfin", GATEWAYS).to_dict()
    assert started["runnable"] is True
    assert started["steps"][0]["channel"] == {"kind": "wake_on_lan", "via": "pi-dijon"}


def test_channels_describe_themselves():
    assert Channel("ssh", "nas").describe("stop") == "SSH poweroff on nas"
    assert Channel("proxmox", "pve1").describe("stop") == "Proxmox API of pve1 (shutdown)"
    assert Channel("docker", "vm-docker").describe("start") == "Docker API of vm-docker (start)"


# --------------------------------------------------------------------------- known planner defects
# Small fleets where the planner does the wrong thing today; each test states what it should do.

SMALL = """
edge: {host: vps, domain: example.net, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}
sites: {home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}}
nodes:
  gw: {kind: machine, site: home, docker: {api: "unix:///var/run/docker.sock"}}
  pve:
    kind: machine
    site: home
    mac: "52:54:00:00:00:03"
    proxmox: {api: "https://192.168.1.3:8006", token_id: "root@pam!wakegrid", token_secret: x}
  vmd: {kind: vm, parent: pve, vmid: 101, docker: {api: "tcp://192.168.1.21:2375"}}
  app: {kind: container, parent: vmd}
  other: {kind: container, parent: vmd}
  db: {kind: container, parent: gw}
  cache: {kind: container, parent: gw}
"""


def test_stop_does_not_keep_a_dependency_for_a_dependant_stopped_in_the_same_plan():
    fleet = parse_fleet(SMALL + "dependencies:\n  app: [cache, db]\n  db: [cache]\n")
    plan = stop_plan(fleet, "app", set(fleet.nodes))
    assert [s.node for s in plan.steps] == ["app", "db", "cache"]
    assert plan.kept == ()


def test_stop_never_stops_a_node_twice_when_it_depends_on_its_host():
    fleet = parse_fleet(SMALL + "dependencies:\n  app: [vmd]\n")
    plan = stop_plan(fleet, "app", set(fleet.nodes) - {"other"})
    nodes = [s.node for s in plan.steps]
    assert len(nodes) == len(set(nodes))
    assert nodes == ["app", "vmd"]


def test_stop_does_not_auto_stop_a_dependency_that_hosts_running_nodes():
    fleet = parse_fleet(SMALL + "dependencies:\n  db: [vmd]\n")
    plan = stop_plan(fleet, "db", set(fleet.nodes))
    assert [s.node for s in plan.steps] == ["db"]
    assert [n.node for n in plan.kept] == ["vmd"]


# --------------------------------------------------------------------------- confirming a proposal later


def test_confirming_after_the_proposal_stops_the_dependency_behind_a_cascade_already_down(example_fleet):
    # `stop pve1` proposed the NAS and pve1 went down; the person now confirms the NAS.
    up = GATEWAYS | {"nas"}
    plan = stop_plan(example_fleet, "pve1", up, confirmed=["nas"])
    assert [(s.node, s.channel.kind, s.reason) for s in plan.steps] == [
        ("nas", "ssh", "no active dependant left (was needed by jellyfin)")
    ]
    assert stop_plan(example_fleet, "pve1", up).steps == ()  # without confirmation nothing happens


def test_confirming_reaches_through_dependencies_already_down(example_fleet):
    # sandbox -> jellyfin -> nas: jellyfin went down with an earlier run, the NAS was proposed.
    up = GATEWAYS | {"nas", "pve1", "vm-docker"}
    plan = stop_plan(example_fleet, "sandbox", up, confirmed=["nas"])
    assert [s.node for s in plan.steps] == ["nas"]


def test_confirming_never_stops_a_dependency_still_needed(example_data, build_fleet):
    example_data["dependencies"]["vm-docker"] = ["nas"]
    fleet = build_fleet(example_data)
    up = GATEWAYS | {"nas", "pve1", "vm-docker"}
    plan = stop_plan(fleet, "jellyfin", up, confirmed=["nas"])
    assert plan.steps == ()
    assert [(n.node, n.needed_by) for n in plan.kept] == [("nas", ("vm-docker",))]


def test_confirming_an_unrelated_node_changes_nothing(example_fleet, all_up):
    assert stop_plan(example_fleet, "api", all_up, confirmed=["nas"]) == stop_plan(example_fleet, "api", all_up)


def test_confirming_reaches_only_behind_the_requested_cascade(example_data, build_fleet):
    # Stopping api frees its host vm-docker, which sweeps the sleeping sandbox along: that does
    # not make sandbox's confirmed dependency (jellyfin) part of this shutdown.
    example_data["dependencies"]["api"] = ["vm-docker"]
    fleet = build_fleet(example_data)
    up = set(fleet.nodes) - {"sandbox"}
    plan = stop_plan(fleet, "api", up, confirmed=["jellyfin"])
    assert [s.node for s in plan.steps] == ["api", "vm-docker"]


# --------------------------------------------------------------------------- why each node stops


def test_a_dependant_pulled_into_the_shutdown_says_what_it_depends_on(example_fleet, all_up):
    # stop nas, stopping its dependants first: jellyfin needs nas, sandbox needs jellyfin.
    # Neither host (pve1, vm-docker) stops: "stopped with its host" would be wrong.
    plan = stop_plan(example_fleet, "nas", all_up, include_dependants=True, confirmed=["nas"])
    assert [(s.node, s.reason) for s in plan.steps] == [
        ("sandbox", "depends on jellyfin, which is stopping"),
        ("jellyfin", "depends on nas, which is stopping"),
        ("nas", "requested"),
    ]


def test_what_a_dependant_hosts_stops_with_it_and_says_so(example_data, build_fleet):
    example_data["dependencies"]["vm-docker"] = ["nas"]
    fleet = build_fleet(example_data)
    plan = stop_plan(fleet, "nas", set(fleet.nodes), include_dependants=True)
    reasons = {s.node: s.reason for s in plan.steps}
    assert reasons["vm-docker"] == "depends on nas, which is stopping"
    assert reasons["api"] == "hosted on vm-docker"
    assert reasons["sandbox"] == "hosted on vm-docker"
    assert reasons["jellyfin"] == "depends on nas, which is stopping"


def test_a_hosted_node_names_its_host_only_when_the_host_stops(example_fleet, all_up):
    plan = stop_plan(example_fleet, "jellyfin", all_up, include_dependants=True)
    for step in plan.steps:
        if step.reason.startswith("hosted on "):
            host = step.reason.removeprefix("hosted on ")
            assert host == example_fleet.nodes[step.node].parent
            assert host in [s.node for s in plan.steps]


# --------------------------------------------------------------------------- unknown is not down

PVE1_API_DOWN = "Proxmox API https://192.168.1.3:8006 did not answer: timed out"


def test_stop_is_blocked_while_a_dependant_is_unknown(example_fleet, all_up):
    guests = {"vm-docker", "vm-ubuntu", "jellyfin", "sandbox", "api"}
    unknown = {name: PVE1_API_DOWN for name in guests}
    plan = stop_plan(example_fleet, "nas", all_up - guests, unknown=unknown, confirmed=["nas"])
    assert plan.steps == ()
    assert plan.blocked == (f"nas may still be needed by jellyfin: power unknown ({PVE1_API_DOWN})",)


def test_stop_is_blocked_while_something_it_would_take_down_is_unknown(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pve1", all_up - {"jellyfin"}, unknown={"jellyfin": PVE1_API_DOWN})
    assert plan.steps == ()
    assert plan.blocked == (f"jellyfin: power unknown ({PVE1_API_DOWN}); this shutdown would take it down",)


def test_including_dependants_never_stops_an_unknown_one(example_fleet, all_up):
    plan = stop_plan(
        example_fleet,
        "jellyfin",
        all_up - {"sandbox"},
        unknown={"sandbox": "Docker API refused"},
        include_dependants=True,
    )
    assert plan.steps == ()
    assert any(reason.startswith("sandbox: power unknown (Docker API refused)") for reason in plan.blocked)


def test_an_unknown_dependency_is_left_as_it_is_and_the_plan_says_so(example_data, build_fleet):
    example_data["nodes"]["nas"]["confirm_shutdown"] = False
    fleet = build_fleet(example_data)
    plan = stop_plan(fleet, "jellyfin", set(fleet.nodes) - {"sandbox", "nas"}, unknown={"nas": "no address to probe"})
    assert [s.node for s in plan.steps] == ["jellyfin"]
    assert plan.kept == (Note("nas", "power unknown (no address to probe): not stopped"),)


def test_a_dependency_is_kept_while_another_dependant_is_unknown(example_data, build_fleet):
    example_data["nodes"]["nas"]["confirm_shutdown"] = False
    example_data["dependencies"]["homeassistant"] = ["nas"]
    fleet = build_fleet(example_data)
    unknown = {"homeassistant": "Proxmox API of pve2 did not answer"}
    plan = stop_plan(fleet, "jellyfin", set(fleet.nodes) - {"sandbox", "homeassistant"}, unknown=unknown)
    assert [s.node for s in plan.steps] == ["jellyfin"]
    assert plan.kept == (
        Note(
            "nas",
            "may still be needed by homeassistant: power unknown (Proxmox API of pve2 did not answer)",
            ("homeassistant",),
        ),
    )


def test_start_treats_an_unknown_guest_as_to_be_started_and_says_why(example_fleet):
    up = GATEWAYS | {"nas", "pve1"}
    plan = start_plan(example_fleet, "jellyfin", up, unknown={"jellyfin": PVE1_API_DOWN})
    assert plan.runnable
    assert steps_of(plan) == [("start", "jellyfin", "proxmox", "pve1")]
    assert plan.steps[0].reason == (
        f"requested; power unknown ({PVE1_API_DOWN}): starting is harmless if it is already up"
    )


def test_start_sends_a_magic_packet_to_an_unknown_machine(example_fleet):
    plan = start_plan(example_fleet, "nas", GATEWAYS, unknown={"nas": "192.168.1.10:22 refuses connections"})
    assert steps_of(plan) == [("start", "nas", "wake_on_lan", "pi-dijon")]
    assert "starting is harmless if it is already up" in plan.steps[0].reason


def test_start_is_blocked_when_the_gateway_that_would_wake_is_unknown(example_fleet):
    plan = start_plan(example_fleet, "nas", {"nuc-thory"}, unknown={"pi-dijon": "no route to 192.168.1.2"})
    assert plan.steps == ()
    assert plan.blocked == (
        "cannot start nas: the power of its site gateway pi-dijon is unknown (no route to 192.168.1.2); "
        "it sends the magic packets",
    )


def test_start_is_blocked_for_an_unknown_machine_without_mac(example_data, build_fleet):
    del example_data["nodes"]["nas"]["mac"]
    del example_data["nodes"]["nas"]["wol"]
    plan = start_plan(build_fleet(example_data), "nas", GATEWAYS, unknown={"nas": "refused"})
    assert plan.blocked == ("cannot start nas: its power is unknown (refused) and it has no mac for Wake-on-LAN",)


# --------------------------------------------------------------------------- infrastructure stays up


def test_stopping_a_gateway_is_refused_and_says_what_becomes_unreachable(example_fleet, all_up):
    plan = stop_plan(example_fleet, "pi-dijon", all_up)
    assert plan.steps == ()
    assert plan.blocked == (
        "pi-dijon is the gateway of site dijon: its Wake-on-LAN (nas, pve1, pve2) and its WireGuard tunnel "
        "would become unreachable",
    )
    assert plan.overrides == ("force_infrastructure",)


def test_stopping_a_gateway_when_forced(example_fleet, all_up):
    plan = stop_plan(example_fleet, "nuc-thory", all_up, force_infrastructure=True)
    assert plan.runnable
    assert steps_of(plan) == [("stop", "nuc-thory", "ssh", "nuc-thory")]
    assert plan.steps[0].reason.startswith("requested; infrastructure, forced: nuc-thory is the gateway of site thory")


def test_a_dependant_gateway_pulled_into_a_shutdown_is_refused(example_data, build_fleet):
    example_data["dependencies"]["pi-dijon"] = ["nas"]
    fleet = build_fleet(example_data)
    plan = stop_plan(fleet, "nas", set(fleet.nodes), include_dependants=True, confirmed=["nas"])
    assert plan.steps == ()
    assert any(reason.startswith("pi-dijon is the gateway of site dijon") for reason in plan.blocked)


def test_a_gateway_is_never_auto_stopped_as_a_dependency(example_data, build_fleet):
    example_data["dependencies"]["jellyfin"] = ["nas", "pi-dijon"]
    example_data["nodes"]["pi-dijon"]["confirm_shutdown"] = False
    fleet = build_fleet(example_data)
    for force in (False, True):
        plan = stop_plan(fleet, "jellyfin", set(fleet.nodes) - {"sandbox"}, force_infrastructure=force)
        assert [s.node for s in plan.steps] == ["jellyfin"]
        kept = {n.node: n.reason for n in plan.kept}
        assert kept["pi-dijon"].startswith("pi-dijon is the gateway of site dijon: ")
        assert kept["pi-dijon"].endswith("infrastructure is never stopped as a dependency")


def test_a_node_whose_host_is_unknown_is_unknown_too(example_fleet, all_up):
    guests = {"vm-docker", "vm-ubuntu", "jellyfin", "sandbox", "api"}
    plan = stop_plan(example_fleet, "nas", all_up - guests - {"pve1"}, unknown={"pve1": "refused"}, confirmed=["nas"])
    assert plan.steps == ()
    assert plan.blocked == ("nas may still be needed by jellyfin: power unknown (its host pve1 is unknown)",)
