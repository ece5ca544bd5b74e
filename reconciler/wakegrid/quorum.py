"""Proxmox cluster quorum as corosync votequorum counts it (pure; imports only ``model``).

A PVE cluster's guests start and migrate only while it is quorate: pve-container and
qemu-server call ``PVE::Cluster::check_cfs_quorum()`` first, which dies with
``cluster not ready - no quorum?`` (pve-cluster src/PVE/Cluster.pm). Quorate means the votes
present reach ``expected_votes // 2 + 1`` (corosync exec/votequorum.c ``calculate_quorum``:
``(highest_expected + 2) / 2``). A QDevice (corosync-qnetd on an outside machine) casts one
vote while it is up (pve-cluster src/PVE/CLI/pvecm.pm ``setup_qdevice``: ffsplit, ``votes 1``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wakegrid.model import Fleet

QDEVICE_VOTES = 1


@dataclass(frozen=True)
class Arrangement:
    cluster: str
    members: dict[str, int]  # machine → votes, in file order
    qdevice: str | None
    expected: int

    @property
    def needed(self) -> int:
        return self.expected // 2 + 1

    def voters(self) -> list[tuple[str, int]]:
        """Who can cast votes: the QDevice first (an always-on witness is the cheap way), then the members."""
        extra = [(self.qdevice, QDEVICE_VOTES)] if self.qdevice else []
        return [*extra, *self.members.items()]

    def present(self, available: Callable[[str], bool]) -> int:
        return sum(votes for name, votes in self.voters() if available(name))

    def quorate(self, available: Callable[[str], bool]) -> bool:
        return self.present(available) >= self.needed

    def describe(self) -> str:
        return f"cluster {self.cluster} needs {self.needed} of {self.expected} votes for quorum"


def arrangement(fleet: Fleet, name: str) -> Arrangement | None:
    """The quorum arrangement of the cluster ``name`` belongs to (a member machine or a guest on one)."""
    cluster = fleet.cluster_of(name)
    if cluster is None:
        return None
    members = fleet.cluster_members(cluster)
    declared = fleet.clusters.get(cluster)
    qdevice = declared.qdevice if declared else None
    expected = (declared.expected_votes if declared else None) or sum(members.values()) + (
        QDEVICE_VOTES if qdevice else 0
    )
    return Arrangement(cluster, members, qdevice, expected)


def voting_in(fleet: Fleet, machine: str) -> list[Arrangement]:
    """The clusters in which ``machine`` casts votes: as a member or as a QDevice."""
    found = []
    for cluster in dict.fromkeys(node.proxmox.cluster for node in fleet.nodes.values() if node.proxmox):
        if cluster is None:
            continue
        members = fleet.cluster_members(cluster)
        declared = fleet.clusters.get(cluster)
        if machine in members or (declared is not None and declared.qdevice == machine):
            found.append(arrangement(fleet, next(iter(members))))  # type: ignore[arg-type]
    return found


__all__ = ["QDEVICE_VOTES", "Arrangement", "arrangement", "voting_in"]
