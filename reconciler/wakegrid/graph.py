"""Start and stop plans over the hosting tree and the dependency graph (pure).

A plan is a function of the fleet, the observed power state and, for stops, what
live sessions still use. Power is three-valued: a node is ``up`` (in ``up``),
``unknown`` (in ``unknown``, with the reason it could not be observed) or else
``down``. A plan names each step, the channel that carries it and what to wait
for before the next step; running it is the actuator's business.

Start: ``ensure(node)`` brings up the node's dependencies first (deepest first),
then its hosts top-down (machine → guest → container), then the node; nodes
already up are skipped. A machine is woken by a magic packet sent from its
site's gateway, so the gateway is ensured first too. An unknown node is started
only through a channel where starting a node that is already up changes nothing
(a magic packet, an idempotent API start), and the step says so.

Stop: the node's hosting subtree is stopped bottom-up (a dependant always before
what it depends on). Nothing is stopped while an active dependant outside the
cascade still needs it, while anything that could need it is unknown, or while
the cascade holds infrastructure (a site gateway, the edge) that nobody forced:
the plan is blocked instead, naming who and why. Then each dependency of what
was stopped is re-evaluated: with no active dependant left it is stopped too (or
only proposed when its ``confirm_shutdown`` is on); one still needed, possibly
needed (an unknown dependant) or infrastructure stays up, and the plan says why.

Quorum (see ``wakegrid.quorum``): a Proxmox guest starts only while its cluster is quorate,
so starting one also ensures the voters its cluster needs (the declared QDevice first, then
partner machines). A machine is not stopped when that would leave its cluster without quorum
while a guest of the cluster is running, unknown or wanted: that guest could then neither
start nor migrate. Unknown voters count as absent.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from wakegrid.model import Fleet
from wakegrid.quorum import arrangement, voting_in

ChannelKind = Literal["wake_on_lan", "proxmox", "docker", "ssh"]
Power = Literal["up", "down", "unknown"]

# Start channels where starting a node that is already up changes nothing: a running machine
# ignores a magic packet, and the Proxmox and Docker APIs start a running guest or container as
# a no-op. Only through these may a start treat an unknown node as "to be started".
HARMLESS_STARTS: frozenset[str] = frozenset({"wake_on_lan", "proxmox", "docker"})
# The options that lift a kind of block; nothing lifts "unknown" or "in use".
OVERRIDE_DEPENDANTS = "include_dependants"
OVERRIDE_INFRASTRUCTURE = "force_infrastructure"


class PlanError(ValueError):
    """The request itself is wrong (e.g. an unknown node)."""


@dataclass(frozen=True)
class Channel:
    kind: ChannelKind
    via: str  # the host that carries the command: site gateway, parent, or the machine itself

    def describe(self, action: str | None = None) -> str:
        """``Proxmox API of pve1``; given the step's action, what it sends: ``Proxmox API of pve1 (start)``.

        The short form names a step in its title and failure messages; the long one is the plan's.
        """
        if self.kind == "wake_on_lan":
            return f"Wake-on-LAN {'magic packet sent ' if action else ''}from {self.via}"
        if self.kind == "ssh":
            return f"SSH {'poweroff ' if action else ''}on {self.via}"
        api = f"{'Proxmox' if self.kind == 'proxmox' else 'Docker'} API of {self.via}"
        return f"{api} ({'start' if action == 'start' else 'shutdown'})" if action else api


@dataclass(frozen=True)
class Step:
    action: Literal["start", "stop"]
    node: str
    kind: str
    channel: Channel
    wait_for: str
    reason: str

    def describe(self) -> str:
        channel = self.channel.describe(self.action)
        return f"{self.action} {self.kind} {self.node} via {channel}; wait until {self.wait_for}"


@dataclass(frozen=True)
class Note:
    """A node the plan leaves as it is, and why."""

    node: str
    reason: str
    needed_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    operation: Literal["start", "stop"]
    target: str
    steps: tuple[Step, ...] = ()
    skipped: tuple[Note, ...] = ()  # already in the wanted state
    kept: tuple[Note, ...] = ()  # dependencies that stay up, and who needs them
    proposed: tuple[Note, ...] = ()  # shutdowns that wait for a person's confirmation
    blocked: tuple[str, ...] = ()  # why the plan cannot run at all; no step runs then
    overrides: tuple[str, ...] = ()  # options that would lift some of the blocks (OVERRIDE_*)

    @property
    def runnable(self) -> bool:
        return not self.blocked

    def to_dict(self) -> dict:
        data = asdict(self)
        data["runnable"] = self.runnable
        return data


# --------------------------------------------------------------------------- channels and waits


def start_channel(fleet: Fleet, name: str) -> Channel:
    node = fleet.nodes[name]
    if node.kind == "machine":
        return Channel("wake_on_lan", fleet.gateway_of(name) or name)
    return Channel("proxmox" if node.kind in ("vm", "lxc") else "docker", node.parent)  # type: ignore[arg-type]


def stop_channel(fleet: Fleet, name: str) -> Channel:
    node = fleet.nodes[name]
    if node.kind == "machine":
        return Channel("ssh", name)
    return Channel("proxmox" if node.kind in ("vm", "lxc") else "docker", node.parent)  # type: ignore[arg-type]


def wait_condition(fleet: Fleet, name: str, action: str) -> str:
    node = fleet.nodes[name]
    if node.kind == "machine":
        if action == "stop":
            return f"{name} no longer answers" + (f" on {node.address}" if node.address else "")
        port = fleet.ssh_of(name).port
        return f"SSH answers on {node.address}:{port}" if node.address else f"{name} answers over SSH"
    if node.kind in ("vm", "lxc"):
        state = "running" if action == "start" else "stopped"
        return f"Proxmox reports {node.kind} {node.vmid} {state}"
    container = node.container or name
    if action == "start":
        return f"Docker reports container {container} running (and healthy, if it has a health check)"
    return f"Docker reports container {container} stopped"


# --------------------------------------------------------------------------- power


def power_of(name: str, up: Collection[str], unknown: Mapping[str, str]) -> Power:
    """``unknown`` wins over ``up``: what could not be observed is never assumed either way."""
    if name in unknown:
        return "unknown"
    return "up" if name in up else "down"


def _settle(fleet: Fleet, up: Collection[str], unknown: Mapping[str, str] | None) -> tuple[set[str], dict[str, str]]:
    """The planner's view of power: ``unknown`` wins over ``up``, and a node not known to be up
    whose host is unknown is unknown too (never down), as the observer reports it."""
    unseen = dict(unknown or {})
    for name in sorted(fleet.nodes, key=lambda n: len(fleet.ancestors(n))):  # hosts first
        if name in unseen or name in up:
            continue
        host = next((a for a in reversed(fleet.ancestors(name)) if a in unseen), None)
        if host is not None:
            unseen[name] = f"its host {host} is unknown"
    return {name for name in up if name not in unseen}, unseen


# --------------------------------------------------------------------------- infrastructure


def infrastructure(fleet: Fleet) -> dict[str, str]:
    """Nodes a plan must not stop unless forced, each with what would become unreachable.

    A site gateway sends every magic packet of its site and holds the site's WireGuard tunnel;
    the edge host carries every service. A node hosting one of them takes it down too.
    """
    found: dict[str, str] = {}
    for site_name, site in fleet.sites.items():
        if site.gateway not in fleet.nodes:
            continue
        wakeable = [
            name
            for name, node in fleet.nodes.items()
            if node.kind == "machine" and node.site == site_name and node.mac and name != site.gateway
        ]
        wol = f"its Wake-on-LAN ({', '.join(wakeable)})" if wakeable else "its Wake-on-LAN"
        found[site.gateway] = (
            f"{site.gateway} is the gateway of site {site_name}: "
            f"{wol} and its WireGuard tunnel would become unreachable"
        )
    if fleet.edge.host in fleet.nodes:
        found[fleet.edge.host] = f"{fleet.edge.host} is the edge: every service and every site would become unreachable"
    for name, why in list(found.items()):
        for host in fleet.ancestors(name):
            found.setdefault(host, f"{host} hosts {name}; {why}")
    return found


# --------------------------------------------------------------------------- start


def start_plan(fleet: Fleet, target: str, up: Collection[str], *, unknown: Mapping[str, str] | None = None) -> Plan:
    """Plan to start ``target``; ``unknown`` maps each node whose power is unknown to why."""
    _require(fleet, target)
    up, unknown = _settle(fleet, up, unknown)
    steps: list[Step] = []
    skipped: dict[str, Note] = {}
    blocked: list[str] = []
    done: set[str] = set()
    in_progress: set[str] = set()

    def ensure(name: str, reason: str) -> None:
        if name in done:
            return
        if name in in_progress:  # only a fleet that skipped validation can loop
            blocked.append(f"cannot start {name}: it needs itself ({reason})")
            return
        in_progress.add(name)
        for dependency in fleet.dependencies_of(name):
            ensure(dependency, f"dependency of {name}")
        node = fleet.nodes[name]
        power = power_of(name, up, unknown)
        if power == "up":
            skipped.setdefault(name, Note(name, "already up"))
        elif power == "unknown" and start_channel(fleet, name).kind not in HARMLESS_STARTS:
            blocked.append(f"cannot start {name}: its power is unknown ({unknown[name]})")
        elif node.parent is not None:
            ensure(node.parent, f"host of {name}")
            if node.kind in ("vm", "lxc"):
                ensure_quorum(name)
            steps.append(_start_step(fleet, name, _unknown_start(reason, name, unknown)))
        elif problem := _cannot_wake(fleet, name, up, unknown):
            blocked.append(problem)
        else:
            gateway = fleet.gateway_of(name)
            skipped.setdefault(gateway, Note(gateway, "already up"))  # type: ignore[arg-type]
            steps.append(_start_step(fleet, name, _unknown_start(reason, name, unknown)))
        in_progress.discard(name)
        done.add(name)

    def ensure_quorum(guest: str) -> None:
        cluster = arrangement(fleet, guest)
        if cluster is None:
            return

        def present(name: str) -> bool:
            return name in up or any(step.node == name for step in steps)

        for voter, _votes in cluster.voters():
            if cluster.quorate(present):
                return
            if not present(voter) and _cannot_wake(fleet, voter, up, unknown) is None:
                ensure(voter, f"{cluster.describe()}; {guest} starts only while it is quorate")
        if not cluster.quorate(present):
            blocked.append(
                f"cannot start {guest}: {cluster.describe()} and only {cluster.present(present)} can be present "
                f"({_voters_in_words(fleet, cluster.voters(), up, unknown)})"
            )

    ensure(target, "requested")
    if blocked:
        return Plan("start", target, skipped=tuple(skipped.values()), blocked=tuple(blocked))
    return Plan("start", target, steps=tuple(steps), skipped=tuple(skipped.values()))


def _voters_in_words(
    fleet: Fleet, voters: list[tuple[str, int]], up: Collection[str], unknown: Mapping[str, str]
) -> str:
    words = []
    for name, votes in voters:
        power = power_of(name, up, unknown)
        why = _cannot_wake(fleet, name, up, unknown) if power != "up" else None
        state = "up" if power == "up" else f"{power}, cannot be woken" if why else power
        words.append(f"{name}: {votes} vote{'s' if votes != 1 else ''}, {state}")
    return "; ".join(words)


def _unknown_start(reason: str, name: str, unknown: Mapping[str, str]) -> str:
    if name not in unknown:
        return reason
    return f"{reason}; power unknown ({unknown[name]}): starting is harmless if it is already up"


def _start_step(fleet: Fleet, name: str, reason: str) -> Step:
    channel = start_channel(fleet, name)
    return Step("start", name, fleet.nodes[name].kind, channel, wait_condition(fleet, name, "start"), reason)


def _cannot_wake(fleet: Fleet, name: str, up: Collection[str], unknown: Mapping[str, str]) -> str | None:
    """Why a machine that is down (or unknown) cannot be woken, if it cannot.

    The magic packet is sent from the site gateway, which must therefore be up;
    gateways are always-on infrastructure: nothing here can wake one.
    """
    node = fleet.nodes[name]
    gateway = fleet.gateway_of(name)
    if node.mac is None:
        if name in unknown:
            return f"cannot start {name}: its power is unknown ({unknown[name]}) and it has no mac for Wake-on-LAN"
        return f"cannot start {name}: it is down and has no mac for Wake-on-LAN"
    if gateway == name:
        return f"cannot start {name}: it is the gateway of site {node.site} and sends that site's magic packets"
    if gateway in unknown:
        return (
            f"cannot start {name}: the power of its site gateway {gateway} is unknown ({unknown[gateway]}); "
            "it sends the magic packets"
        )
    if gateway not in up:
        return f"cannot start {name}: its site gateway {gateway} is down (it sends the magic packets)"
    return None


# --------------------------------------------------------------------------- stop


def stop_plan(
    fleet: Fleet,
    target: str,
    up: Collection[str],
    in_use: Mapping[str, str] | None = None,
    *,
    unknown: Mapping[str, str] | None = None,
    include_dependants: bool = False,
    confirmed: Collection[str] = (),
    force_infrastructure: bool = False,
    wanted: Collection[str] = (),
) -> Plan:
    """Plan to stop ``target``.

    ``unknown`` maps each node whose power is unknown to why (never stopped, and nothing
    it could need is stopped while it is unknown); ``in_use`` maps a node to why a live
    session still uses it (never stopped); ``include_dependants`` stops active dependants
    outside the cascade first instead of blocking; ``confirmed`` lists ``confirm_shutdown``
    nodes a person has agreed to stop; ``force_infrastructure`` lets the requested cascade
    stop site gateways and the edge (never a dependency stopped by re-evaluation);
    ``wanted`` lists guests the policy wants running (their cluster keeps its quorum).
    """
    _require(fleet, target)
    in_use = dict(in_use or {})
    up, unknown = _settle(fleet, up, unknown)
    order = {name: index for index, name in enumerate(fleet.nodes)}
    cascade = _with_subtrees(fleet, [target])
    pulled: dict[str, str] = {}  # a dependant stopped first (include_dependants) → what it depends on
    if include_dependants:
        cascade, pulled = _close_over_dependants(fleet, cascade, up, unknown)
    infra = infrastructure(fleet)

    members = sorted(cascade, key=order.__getitem__)
    blocked = [
        f"{name} is still needed by {', '.join(users)} (running, outside this shutdown)"
        for name in members
        if (users := _active_dependants(fleet, name, up, cascade))
    ]
    overrides = [OVERRIDE_DEPENDANTS] if blocked else []
    blocked += [
        f"{name}: power unknown ({unknown[name]}); this shutdown would take it down"
        for name in members
        if name in unknown
    ]
    blocked += [
        f"{name} may still be needed by {user}: power unknown ({unknown[user]})"
        for name in members
        for user in _unknown_dependants(fleet, name, unknown, cascade)
    ]
    blocked += [f"{name} is in use: {in_use[name]}" for name in members if name in in_use]
    blocked += _quorum_losses(fleet, cascade, up, unknown, wanted)
    refused = [infra[name] for name in members if name in infra and name in up]
    if refused and not force_infrastructure:
        blocked += refused
        overrides.append(OVERRIDE_INFRASTRUCTURE)
    if blocked:
        return Plan("stop", target, blocked=tuple(blocked), overrides=tuple(overrides))

    stopping = _stop_order(fleet, cascade, [target, *members])
    # Re-evaluate the dependencies of what stops until nothing more can go: stopping one
    # may free another (a dependency of a dependency, or one its dependants shared).
    while True:
        verdicts = _dependency_verdicts(fleet, stopping, up, unknown, in_use, confirmed, cascade, infra, wanted)
        freed = next((name for name, (verdict, _) in verdicts.items() if verdict == "stop"), None)
        if freed is None:
            break
        gone = set(stopping)
        stopping += [n for n in _stop_order(fleet, _with_subtrees(fleet, [freed]), [freed]) if n not in gone]
    kept = [note for verdict, note in verdicts.values() if verdict == "keep"]
    proposed = [note for verdict, note in verdicts.values() if verdict == "propose"]

    steps = [
        Step(
            "stop",
            name,
            fleet.nodes[name].kind,
            stop_channel(fleet, name),
            wait_condition(fleet, name, "stop"),
            _stop_reason(fleet, name, target, stopping, pulled, up, infra if force_infrastructure else {}),
        )
        for name in stopping
        if name in up
    ]
    skipped = [Note(name, "already down") for name in stopping if name not in up]
    return Plan("stop", target, tuple(steps), tuple(skipped), tuple(kept), tuple(proposed))


def _dependency_verdicts(
    fleet: Fleet,
    stopping: list[str],
    up: Collection[str],
    unknown: Mapping[str, str],
    in_use: Mapping[str, str],
    confirmed: Collection[str],
    cascade: set[str],
    infra: Mapping[str, str],
    wanted: Collection[str] = (),
) -> dict[str, tuple[str, Note]]:
    """For each running (or unknown) dependency of what is stopping: "stop", "keep" or "propose", with why."""
    gone = set(stopping)
    verdicts: dict[str, tuple[str, Note]] = {}
    # Only what really stops frees its dependencies; behind nodes already down, only the
    # dependencies a person confirmed (a shutdown re-run with --confirm after its proposal).
    candidates = _dependencies_of(fleet, [n for n in stopping if n in up])
    candidates += [n for n in _confirmed_behind(fleet, cascade, up, unknown, confirmed) if n not in candidates]
    for name in candidates:
        if name in gone:
            continue
        if name in unknown:
            verdicts[name] = ("keep", Note(name, f"power unknown ({unknown[name]}): not stopped"))
            continue
        if name not in up:
            continue
        users = _active_dependants(fleet, name, up, gone)
        maybe = _unknown_dependants(fleet, name, unknown, gone)
        hosted = [n for n in fleet.descendants(name) if n in up and n not in gone]
        hosted_unknown = [n for n in fleet.descendants(name) if n in unknown]
        busy = [n for n in (name, *fleet.descendants(name)) if n in in_use]
        if users:
            verdicts[name] = ("keep", Note(name, f"still needed by {', '.join(users)}", tuple(users)))
        elif maybe:
            why = "; ".join(f"by {user}: power unknown ({unknown[user]})" for user in maybe)
            verdicts[name] = ("keep", Note(name, f"may still be needed {why}", tuple(maybe)))
        elif hosted or hosted_unknown:
            words = [*hosted, *(f"{n} (power unknown: {unknown[n]})" for n in hosted_unknown)]
            verdicts[name] = ("keep", Note(name, f"hosts running {', '.join(words)}"))
        elif busy:
            verdicts[name] = ("keep", Note(name, "; ".join(f"{n} is in use: {in_use[n]}" for n in busy)))
        elif losses := _quorum_losses(fleet, {*gone, name, *fleet.descendants(name)}, up, unknown, wanted):
            verdicts[name] = ("keep", Note(name, "; ".join(losses)))
        elif name in infra:
            verdicts[name] = ("keep", Note(name, f"{infra[name]}: infrastructure is never stopped as a dependency"))
        elif fleet.confirm_shutdown(name) and name not in confirmed:
            reason = "no active dependant left; confirm_shutdown is on, so it is only proposed"
            verdicts[name] = ("propose", Note(name, reason))
        else:
            verdicts[name] = ("stop", Note(name, "no active dependant left"))
    return verdicts


def _quorum_losses(
    fleet: Fleet, leaving: Collection[str], up: Collection[str], unknown: Mapping[str, str], wanted: Collection[str]
) -> list[str]:
    """Why stopping ``leaving`` would cost a cluster the quorum its guests need (unknown voters count as absent)."""
    losses: list[str] = []
    seen: set[str] = set()
    for machine in [n for n in fleet.nodes if n in leaving and n in up and fleet.nodes[n].kind == "machine"]:
        for cluster in voting_in(fleet, machine):
            if cluster.cluster in seen:
                continue

            def after(name: str) -> bool:
                return name in up and name not in leaving

            if cluster.quorate(after):
                continue
            guests = [
                f"{g} ({'running' if g in up else 'power unknown' if g in unknown else 'wanted'})"
                for g, node in fleet.nodes.items()
                if node.kind in ("vm", "lxc") and g not in leaving and fleet.cluster_of(g) == cluster.cluster
                if g in up or g in unknown or g in wanted
            ]
            if guests:
                seen.add(cluster.cluster)
                losses.append(
                    f"{machine}: stopping it leaves cluster {cluster.cluster} {cluster.present(after)} of the "
                    f"{cluster.needed} votes it needs for quorum ({cluster.expected} expected); "
                    f"{', '.join(guests)} could then neither start nor migrate (cluster not ready - no quorum?)"
                )
    return losses


def _stop_reason(
    fleet: Fleet,
    name: str,
    target: str,
    stopping: list[str],
    pulled: Mapping[str, str],
    up: Collection[str],
    forced: Mapping[str, str],
) -> str:
    """Why ``name`` stops: requested, with its host, because it depends on what stops, or freed."""
    parent = fleet.nodes[name].parent
    users = [d for d in fleet.dependants_of(name) if d in stopping]
    if name == target:
        reason = "requested"
    elif parent is not None and parent in stopping:
        reason = f"hosted on {parent}"
    elif name in pulled:
        dependency = pulled[name]
        state = "which is stopping" if dependency in up else "part of this shutdown (already down)"
        reason = f"depends on {dependency}, {state}"
    elif users:
        reason = f"no active dependant left (was needed by {', '.join(users)})"
    else:
        reason = "no active dependant left"
    return f"{reason}; infrastructure, forced: {forced[name]}" if name in forced else reason


def _require(fleet: Fleet, name: str) -> None:
    if name not in fleet.nodes:
        known = ", ".join(fleet.nodes) or "none"
        raise PlanError(f"unknown node {name!r} (nodes: {known})")


def _with_subtrees(fleet: Fleet, names: Iterable[str]) -> set[str]:
    result: set[str] = set()
    for name in names:
        result.add(name)
        result.update(fleet.descendants(name))
    return result


def _active_dependants(fleet: Fleet, name: str, up: Collection[str], leaving: Collection[str]) -> list[str]:
    return [d for d in fleet.dependants_of(name) if d in up and d not in leaving]


def _unknown_dependants(fleet: Fleet, name: str, unknown: Mapping[str, str], leaving: Collection[str]) -> list[str]:
    return [d for d in fleet.dependants_of(name) if d in unknown and d not in leaving]


def _close_over_dependants(
    fleet: Fleet, cascade: set[str], up: Collection[str], unknown: Mapping[str, str]
) -> tuple[set[str], dict[str, str]]:
    """The cascade grown by every dependant that is up or unknown (it could be running), with
    their subtrees; and for each dependant pulled in, the first of its dependencies in it."""
    grown = set(cascade)
    while extra := {
        d
        for n in grown
        for d in [*_active_dependants(fleet, n, up, grown), *_unknown_dependants(fleet, n, unknown, grown)]
    }:
        grown |= _with_subtrees(fleet, extra)
    pulled = {
        name: next(d for d in fleet.dependencies_of(name) if d in grown)
        for name in grown - cascade
        if any(d in grown for d in fleet.dependencies_of(name))
    }
    return grown, pulled


def _stop_order(fleet: Fleet, members: set[str], roots: list[str]) -> list[str]:
    """Members in an order where hosted children and dependants come before their node."""
    order: list[str] = []
    visited: set[str] = set()

    def visit(name: str) -> None:
        if name in visited:
            return
        visited.add(name)
        for child in fleet.children(name):
            if child in members:
                visit(child)
        for dependant in fleet.dependants_of(name):
            if dependant in members:
                visit(dependant)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def _confirmed_behind(
    fleet: Fleet, cascade: set[str], up: Collection[str], unknown: Mapping[str, str], confirmed: Collection[str]
) -> list[str]:
    """Confirmed running dependencies reached from the down part of the requested cascade through down nodes."""
    order = {name: index for index, name in enumerate(fleet.nodes)}
    found: list[str] = []
    seen: set[str] = set()
    todo = sorted((name for name in cascade if name not in up and name not in unknown), key=order.__getitem__)
    while todo:
        for dependency in fleet.dependencies_of(todo.pop(0)):
            if dependency in seen:
                continue
            seen.add(dependency)
            if dependency not in up and dependency not in unknown:
                todo.append(dependency)
            elif dependency in confirmed:
                found.append(dependency)
    return found


def _dependencies_of(fleet: Fleet, names: Iterable[str]) -> list[str]:
    found: list[str] = []
    for name in names:
        for dependency in fleet.dependencies_of(name):
            if dependency not in found:
                found.append(dependency)
    return found


__all__ = [
    "HARMLESS_STARTS",
    "OVERRIDE_DEPENDANTS",
    "OVERRIDE_INFRASTRUCTURE",
    "Channel",
    "Note",
    "Plan",
    "PlanError",
    "Power",
    "Step",
    "infrastructure",
    "power_of",
    "start_channel",
    "start_plan",
    "stop_channel",
    "stop_plan",
    "wait_condition",
]
