"""Start and stop plans over the hosting tree and the dependency graph (pure).

A plan is a function of the fleet, the observed power state (the set of nodes
that are up) and, for stops, what live sessions still use. It names each step,
the channel that carries it and what to wait for before the next step; running
it is the actuator's business.

Start: ``ensure(node)`` brings up the node's dependencies first (deepest first),
then its hosts top-down (machine → guest → container), then the node; nodes
already up are skipped. A machine is woken by a magic packet sent from its
site's gateway, so the gateway is ensured first too.

Stop: the node's hosting subtree is stopped bottom-up (a dependant always before
what it depends on). Nothing is stopped while an active dependant outside the
cascade still needs it: the plan is blocked instead, naming who. Then each
dependency of what was stopped is re-evaluated: with no active dependant left it
is stopped too (or only proposed when its ``confirm_shutdown`` is on); one still
needed stays up, and the plan says by whom.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from wakegrid.model import Fleet

ChannelKind = Literal["wake_on_lan", "proxmox", "docker", "ssh"]


class PlanError(ValueError):
    """The request itself is wrong (e.g. an unknown node)."""


@dataclass(frozen=True)
class Channel:
    kind: ChannelKind
    via: str  # the host that carries the command: site gateway, parent, or the machine itself

    def describe(self, action: str) -> str:
        if self.kind == "wake_on_lan":
            return f"Wake-on-LAN magic packet sent from {self.via}"
        if self.kind == "ssh":
            return f"SSH poweroff on {self.via}"
        api = "Proxmox API" if self.kind == "proxmox" else "Docker API"
        return f"{api} of {self.via} ({'start' if action == 'start' else 'shutdown'})"


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


# --------------------------------------------------------------------------- start


def start_plan(fleet: Fleet, target: str, up: Collection[str]) -> Plan:
    _require(fleet, target)
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
        if name in up:
            skipped.setdefault(name, Note(name, "already up"))
        elif node.parent is not None:
            ensure(node.parent, f"host of {name}")
            steps.append(_start_step(fleet, name, reason))
        elif problem := _cannot_wake(fleet, name, up):
            blocked.append(problem)
        else:
            gateway = fleet.gateway_of(name)
            skipped.setdefault(gateway, Note(gateway, "already up"))  # type: ignore[arg-type]
            steps.append(_start_step(fleet, name, reason))
        in_progress.discard(name)
        done.add(name)

    ensure(target, "requested")
    if blocked:
        return Plan("start", target, skipped=tuple(skipped.values()), blocked=tuple(blocked))
    return Plan("start", target, steps=tuple(steps), skipped=tuple(skipped.values()))


def _start_step(fleet: Fleet, name: str, reason: str) -> Step:
    channel = start_channel(fleet, name)
    return Step("start", name, fleet.nodes[name].kind, channel, wait_condition(fleet, name, "start"), reason)


def _cannot_wake(fleet: Fleet, name: str, up: Collection[str]) -> str | None:
    """Why a machine that is down cannot be woken, if it cannot.

    The magic packet is sent from the site gateway, which must therefore be up;
    gateways are always-on infrastructure: nothing here can wake one.
    """
    node = fleet.nodes[name]
    gateway = fleet.gateway_of(name)
    if node.mac is None:
        return f"cannot start {name}: it is down and has no mac for Wake-on-LAN"
    if gateway == name:
        return f"cannot start {name}: it is the gateway of site {node.site} and sends that site's magic packets"
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
    include_dependants: bool = False,
    confirmed: Collection[str] = (),
) -> Plan:
    """Plan to stop ``target``.

    ``in_use`` maps a node to why a live session still uses it (never stopped);
    ``include_dependants`` stops active dependants outside the cascade first
    instead of blocking; ``confirmed`` lists ``confirm_shutdown`` nodes a person
    has agreed to stop.
    """
    _require(fleet, target)
    in_use = dict(in_use or {})
    order = {name: index for index, name in enumerate(fleet.nodes)}
    cascade = _with_subtrees(fleet, [target])
    if include_dependants:
        cascade = _close_over_dependants(fleet, cascade, up)

    members = sorted(cascade, key=order.__getitem__)
    blocked = [
        f"{name} is still needed by {', '.join(users)} (running, outside this shutdown)"
        for name in members
        if (users := _active_dependants(fleet, name, up, cascade))
    ]
    blocked += [f"{name} is in use: {in_use[name]}" for name in members if name in in_use]
    if blocked:
        return Plan("stop", target, blocked=tuple(blocked))

    stopping = _stop_order(fleet, cascade, [target, *members])
    # Re-evaluate the dependencies of what stops until nothing more can go: stopping one
    # may free another (a dependency of a dependency, or one its dependants shared).
    while True:
        verdicts = _dependency_verdicts(fleet, stopping, up, in_use, confirmed, cascade)
        freed = next((name for name, (verdict, _) in verdicts.items() if verdict == "stop"), None)
        if freed is None:
            break
        gone = set(stopping)
        stopping += [n for n in _stop_order(fleet, _with_subtrees(fleet, [freed]), [freed]) if n not in gone]
    kept = [note for verdict, note in verdicts.values() if verdict == "keep"]
    proposed = [note for verdict, note in verdicts.values() if verdict == "propose"]

    was_needed_by = {name: [d for d in fleet.dependants_of(name) if d in set(stopping)] for name in stopping}
    steps = [
        Step(
            "stop",
            name,
            fleet.nodes[name].kind,
            stop_channel(fleet, name),
            wait_condition(fleet, name, "stop"),
            _stop_reason(fleet, name, target, was_needed_by[name]),
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
    in_use: Mapping[str, str],
    confirmed: Collection[str],
    cascade: set[str],
) -> dict[str, tuple[str, Note]]:
    """For each running dependency of what is stopping: "stop", "keep" or "propose", with why."""
    gone = set(stopping)
    verdicts: dict[str, tuple[str, Note]] = {}
    # Only what really stops frees its dependencies; behind nodes already down, only the
    # dependencies a person confirmed (a shutdown re-run with --confirm after its proposal).
    candidates = _dependencies_of(fleet, [n for n in stopping if n in up])
    candidates += [n for n in _confirmed_behind(fleet, cascade, up, confirmed) if n not in candidates]
    for name in candidates:
        if name in gone or name not in up:
            continue
        users = _active_dependants(fleet, name, up, gone)
        hosted = [n for n in fleet.descendants(name) if n in up and n not in gone]
        busy = [n for n in (name, *fleet.descendants(name)) if n in in_use]
        if users:
            verdicts[name] = ("keep", Note(name, f"still needed by {', '.join(users)}", tuple(users)))
        elif hosted:
            verdicts[name] = ("keep", Note(name, f"hosts running {', '.join(hosted)}"))
        elif busy:
            verdicts[name] = ("keep", Note(name, "; ".join(f"{n} is in use: {in_use[n]}" for n in busy)))
        elif fleet.confirm_shutdown(name) and name not in confirmed:
            reason = "no active dependant left; confirm_shutdown is on, so it is only proposed"
            verdicts[name] = ("propose", Note(name, reason))
        else:
            verdicts[name] = ("stop", Note(name, "no active dependant left"))
    return verdicts


def _stop_reason(fleet: Fleet, name: str, target: str, was_needed_by: list[str]) -> str:
    if name == target:
        return "requested"
    ancestors = fleet.ancestors(name)
    if target in ancestors:
        return f"hosted on {ancestors[-1]}"
    if was_needed_by:
        return f"no active dependant left (was needed by {', '.join(was_needed_by)})"
    return f"dependant of {target}" if target in fleet.dependencies_of(name) else "stopped with its host"


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


def _close_over_dependants(fleet: Fleet, cascade: set[str], up: Collection[str]) -> set[str]:
    grown = set(cascade)
    while extra := {d for n in grown for d in _active_dependants(fleet, n, up, grown)}:
        grown |= _with_subtrees(fleet, extra)
    return grown


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


def _confirmed_behind(fleet: Fleet, cascade: set[str], up: Collection[str], confirmed: Collection[str]) -> list[str]:
    """Confirmed running dependencies reached from the down part of the requested cascade through down nodes."""
    order = {name: index for index, name in enumerate(fleet.nodes)}
    found: list[str] = []
    seen: set[str] = set()
    todo = sorted((name for name in cascade if name not in up), key=order.__getitem__)
    while todo:
        for dependency in fleet.dependencies_of(todo.pop(0)):
            if dependency in seen:
                continue
            seen.add(dependency)
            if dependency not in up:
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
    "Channel",
    "Note",
    "Plan",
    "PlanError",
    "Step",
    "start_channel",
    "start_plan",
    "stop_channel",
    "stop_plan",
    "wait_condition",
]
