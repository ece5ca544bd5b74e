"""Quorum-aware plans: a Proxmox guest starts only in a quorate cluster, and a machine does
not sleep when that would cost quorum to guests still running or wanted.

Quorate = votes present >= expected_votes // 2 + 1 (corosync exec/votequorum.c,
calculate_quorum); without quorum pve-container and qemu-server refuse starts and migrations
with ``cluster not ready - no quorum?`` (pve-cluster src/PVE/Cluster.pm, check_cfs_quorum).
"""

from __future__ import annotations

import pytest

from wakegrid.graph import start_plan, stop_plan
from wakegrid.model import FleetError, parse_fleet
from wakegrid.quorum import arrangement

PVE = (
    '{{kind: machine, site: dijon, address: {address}, mac: "{mac}", '
    'proxmox: {{api: "https://{address}:8006", token_id: "root@pam!w", token_secret: s, cluster: dijon{extra}}}}}'
)


def fleet_text(clusters: str = "", pve2_extra: str = "", pve3: bool = False) -> str:
    nodes = {
        "gw": "{kind: machine, site: dijon, address: 10.0.0.2}",
        "pve1": PVE.format(address="10.0.0.20", mac="02:00:00:00:00:14", extra=""),
        "pve2": PVE.format(address="10.0.0.22", mac="02:00:00:00:00:16", extra=pve2_extra),
        "jellyfin": "{kind: lxc, parent: pve1, vmid: 201}",
        "vm-app": "{kind: vm, parent: pve2, vmid: 301}",
    }
    if pve3:
        nodes["pve3"] = PVE.format(address="10.0.0.23", mac="02:00:00:00:00:17", extra="")
    body = "\n".join(f"  {name}: {value}" for name, value in nodes.items())
    return f"""
edge: {{host: vps, domain: example.test, wireguard: {{address: 10.200.0.1/24, endpoint: "vps:51820"}}}}
sites:
  dijon: {{gateway: gw, wireguard: {{address: 10.200.1.1/24}}}}
nodes:
{body}
{clusters}
"""


@pytest.fixture
def two_nodes():
    return parse_fleet(fleet_text())


@pytest.fixture
def with_qdevice():
    return parse_fleet(fleet_text("clusters:\n  dijon: {qdevice: gw}"))


def steps(plan) -> list[tuple[str, str]]:
    return [(s.action, s.node) for s in plan.steps]


# --------------------------------------------------------------------------- the arrangement


def test_two_nodes_need_both_votes_and_a_qdevice_makes_either_enough(two_nodes, with_qdevice):
    plain = arrangement(two_nodes, "jellyfin")
    assert (plain.expected, plain.needed) == (2, 2)
    witnessed = arrangement(with_qdevice, "jellyfin")
    assert (witnessed.expected, witnessed.needed) == (3, 2)
    assert witnessed.quorate({"pve1", "gw"}.__contains__)
    assert not plain.quorate({"pve1", "gw"}.__contains__)


def test_a_machine_outside_any_cluster_has_no_arrangement(two_nodes):
    assert arrangement(two_nodes, "gw") is None


# --------------------------------------------------------------------------- start


def test_start_of_a_guest_wakes_the_partner_the_cluster_needs_for_quorum(two_nodes):
    plan = start_plan(two_nodes, "jellyfin", {"gw"})
    assert plan.runnable
    assert steps(plan) == [("start", "pve1"), ("start", "pve2"), ("start", "jellyfin")]
    assert (
        plan.steps[1].reason == "cluster dijon needs 2 of 2 votes for quorum; jellyfin starts only while it is quorate"
    )


def test_start_of_a_guest_relies_on_the_qdevice_when_it_is_up(with_qdevice):
    plan = start_plan(with_qdevice, "jellyfin", {"gw"})
    assert steps(plan) == [("start", "pve1"), ("start", "jellyfin")]


def test_start_with_the_partner_already_up_wakes_nothing_more(two_nodes):
    plan = start_plan(two_nodes, "jellyfin", {"gw", "pve2"})
    assert steps(plan) == [("start", "pve1"), ("start", "jellyfin")]


def test_an_unknown_partner_is_not_counted_and_is_woken_harmlessly(two_nodes):
    plan = start_plan(two_nodes, "jellyfin", {"gw", "pve1"}, unknown={"pve2": "SSH timed out"})
    assert steps(plan) == [("start", "pve2"), ("start", "jellyfin")]
    assert "power unknown (SSH timed out)" in plan.steps[0].reason


def test_start_is_blocked_when_quorum_cannot_be_reached(two_nodes):
    fleet = parse_fleet(fleet_text().replace('mac: "02:00:00:00:00:16", ', ""))
    plan = start_plan(fleet, "jellyfin", {"gw", "pve1"})
    assert not plan.runnable
    assert plan.blocked == (
        "cannot start jellyfin: cluster dijon needs 2 of 2 votes for quorum and only 1 can be present "
        "(pve1: 1 vote, up; pve2: 1 vote, down, cannot be woken)",
    )


def test_votes_and_expected_votes_are_honoured():
    # pve2 carries 2 votes: it alone is quorate (3 expected, 2 needed), pve1 alone is not.
    fleet = parse_fleet(fleet_text(pve2_extra=", votes: 2"))
    assert steps(start_plan(fleet, "vm-app", {"gw"})) == [("start", "pve2"), ("start", "vm-app")]
    assert steps(start_plan(fleet, "jellyfin", {"gw"})) == [("start", "pve1"), ("start", "pve2"), ("start", "jellyfin")]


# --------------------------------------------------------------------------- stop


def test_sleeping_a_partner_that_would_cost_quorum_to_a_running_guest_is_refused(two_nodes):
    plan = stop_plan(two_nodes, "pve2", {"gw", "pve1", "pve2", "jellyfin"})
    assert not plan.runnable
    assert plan.blocked == (
        "pve2: stopping it leaves cluster dijon 1 of the 2 votes it needs for quorum (2 expected); "
        "jellyfin (running) could then neither start nor migrate (cluster not ready - no quorum?)",
    )


def test_a_wanted_guest_that_is_down_also_keeps_the_quorum(two_nodes):
    plan = stop_plan(two_nodes, "pve2", {"gw", "pve1", "pve2"}, wanted={"jellyfin"})
    assert not plan.runnable and "jellyfin (wanted)" in plan.blocked[0]


def test_an_unknown_guest_keeps_the_quorum(two_nodes):
    plan = stop_plan(two_nodes, "pve2", {"gw", "pve1", "pve2"}, unknown={"jellyfin": "API timed out"})
    assert not plan.runnable and "jellyfin (power unknown)" in plan.blocked[0]


def test_with_a_qdevice_either_node_may_sleep(with_qdevice):
    up = {"gw", "pve1", "pve2", "jellyfin"}
    plan = stop_plan(with_qdevice, "pve2", up, confirmed=["pve2"])
    assert plan.runnable and steps(plan) == [("stop", "pve2")]


def test_a_qdevice_whose_power_is_unknown_does_not_count(with_qdevice):
    plan = stop_plan(with_qdevice, "pve2", {"pve1", "pve2", "jellyfin"}, unknown={"gw": "no answer"})
    assert not plan.runnable


def test_a_cluster_with_no_guest_running_or_wanted_may_lose_quorum(two_nodes):
    plan = stop_plan(two_nodes, "pve2", {"gw", "pve1", "pve2"})
    assert plan.runnable


def test_stopping_the_node_that_hosts_the_only_running_guest_is_not_a_quorum_loss(two_nodes):
    plan = stop_plan(two_nodes, "pve1", {"gw", "pve1", "pve2", "jellyfin"})
    assert plan.runnable and steps(plan) == [("stop", "jellyfin"), ("stop", "pve1")]


def test_three_nodes_keep_quorum_with_one_asleep():
    fleet = parse_fleet(fleet_text(pve3=True))
    assert stop_plan(fleet, "pve2", {"gw", "pve1", "pve2", "pve3", "jellyfin"}).runnable
    assert not stop_plan(fleet, "pve2", {"gw", "pve1", "pve2", "jellyfin"}).runnable


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("clusters", "path", "reason"),
    [
        ("clusters:\n  dijon: {qdevice: nope}", "clusters.dijon.qdevice", "unknown node 'nope'"),
        (
            "clusters:\n  dijon: {qdevice: jellyfin}",
            "clusters.dijon.qdevice",
            "'jellyfin' is an lxc; a QDevice runs on a machine",
        ),
        (
            "clusters:\n  dijon: {qdevice: pve2}",
            "clusters.dijon.qdevice",
            "'pve2' is a member of cluster 'dijon', not an outside witness",
        ),
        ("clusters:\n  thory: {qdevice: gw}", "clusters.thory", "no Proxmox machine declares proxmox.cluster: thory"),
        (
            "clusters:\n  dijon: {qdevice: gw, expected_votes: 2}",
            "clusters.dijon.expected_votes",
            "2 is fewer than the 3 votes its members and QDevice cast",
        ),
    ],
)
def test_a_wrong_arrangement_is_rejected_with_path_and_reason(clusters, path, reason):
    with pytest.raises(FleetError) as caught:
        parse_fleet(fleet_text(clusters))
    assert [(p.path, p.reason) for p in caught.value.problems] == [(path, reason)]


def test_guests_of_one_cluster_share_a_vmid_space():
    text = fleet_text().replace(
        "vm-app: {kind: vm, parent: pve2, vmid: 301}", "vm-app: {kind: vm, parent: pve2, vmid: 201}"
    )
    with pytest.raises(FleetError) as caught:
        parse_fleet(text)
    assert [p.path for p in caught.value.problems] == ["nodes.vm-app.vmid"]
