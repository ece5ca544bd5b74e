"""Property-based tests of the planner on random valid fleets.

A fleet is generated as plain data (a hosting forest that respects the kind rules,
a dependency DAG that stays acyclic together with the hosting links, per-node
confirm_shutdown), then validated through the model exactly like a file. Power
states are three-valued (up, down, unknown with a reason) and physically consistent,
as the observer reports them: a node up implies its hosts up, a node whose host is
down is down, one whose host is unknown is unknown. Each plan is checked by walking
its steps over a simulated power state.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wakegrid.graph import Plan, start_plan, stop_plan
from wakegrid.model import Fleet, parse_fleet, validate_document
from wakegrid.yamlsource import YamlDocument

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=150)


@dataclass(frozen=True)
class Case:
    fleet: Fleet
    up: frozenset[str]  # never holds an unknown node
    unknown: dict[str, str]  # node → why its power is unknown
    target: str
    in_use: dict[str, str]
    confirmed: frozenset[str]
    include_dependants: bool
    shuffle_seed: int
    force_infrastructure: bool = False

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        parents = {n: node.parent for n, node in self.fleet.nodes.items() if node.parent}
        return (
            f"Case(target={self.target!r}, up={sorted(self.up)}, unknown={sorted(self.unknown)}, parents={parents}, "
            f"dependencies={dict(self.fleet.dependencies)}, "
            f"confirm={[n for n in self.fleet.nodes if self.fleet.confirm_shutdown(n)]}, "
            f"in_use={self.in_use}, confirmed={sorted(self.confirmed)}, include_dependants={self.include_dependants}, "
            f"force_infrastructure={self.force_infrastructure})"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


# --------------------------------------------------------------------------- generating fleets


@st.composite
def fleet_data(
    draw, *, gateway_dependencies: bool = True, auto_stop: bool = True, clusters: bool = False
) -> dict[str, Any]:
    """``gateway_dependencies=False``: gateways depend on nothing; ``auto_stop=False``: every
    node has confirm_shutdown on, so a stop plan never stops a dependency by itself;
    ``clusters=True``: Proxmox machines join corosync clusters, some with a QDevice."""
    site_count = draw(st.integers(1, 2))
    sites = [f"site{i}" for i in range(site_count)]
    nodes: dict[str, dict[str, Any]] = {}
    counter = iter(range(1, 10_000))

    def machine(name: str, site: str, *, gateway: bool) -> None:
        node: dict[str, Any] = {"kind": "machine", "site": site}
        if draw(st.booleans()) if gateway else draw(st.integers(0, 9)) > 0:  # most machines can be woken
            number = next(counter)
            node["mac"] = f"52:54:00:00:{number // 256:02x}:{number % 256:02x}"
        if draw(st.booleans()):
            node["proxmox"] = {
                "api": f"https://{name}.lan:8006",
                "token_id": "root@pam!wakegrid",
                "token_secret": {"env": "PVE_TOKEN"},
            }
        if draw(st.booleans()):
            node["docker"] = {"api": f"tcp://{name}.lan:2375"}
        nodes[name] = node

    for site in sites:
        machine(f"gw-{site}", site, gateway=True)
    for i in range(draw(st.integers(0, 3))):
        machine(f"m{i}", draw(st.sampled_from(sites)), gateway=False)
    proxmox_hosts = [n for n, d in nodes.items() if "proxmox" in d]
    for i in range(draw(st.integers(0, 4)) if proxmox_hosts else 0):
        node = {"kind": draw(st.sampled_from(["vm", "lxc"])), "parent": draw(st.sampled_from(proxmox_hosts))}
        node["vmid"] = 100 + i
        if draw(st.booleans()):
            node["docker"] = {"api": f"tcp://g{i}.lan:2375"}
        nodes[f"g{i}"] = node
    docker_hosts = [n for n, d in nodes.items() if "docker" in d]
    for i in range(draw(st.integers(0, 4)) if docker_hosts else 0):
        nodes[f"c{i}"] = {"kind": "container", "parent": draw(st.sampled_from(docker_hosts))}
    for node in nodes.values():
        confirm = draw(st.sampled_from([None, None, True, False])) if auto_stop else True
        if confirm is not None:
            node["confirm_shutdown"] = confirm

    # A random order in which every host comes before what it hosts; a node may depend
    # only on nodes earlier in it, so dependencies and hosting links stay acyclic together.
    order: list[str] = []
    waiting = list(nodes)
    while waiting:
        ready = [n for n in waiting if nodes[n].get("parent") in (None, *order)]
        chosen = draw(st.sampled_from(ready))
        waiting.remove(chosen)
        order.append(chosen)
    dependencies: dict[str, list[str]] = {}
    for index, name in enumerate(order):
        if (index and draw(st.integers(0, 2)) == 0) or (name.startswith("gw-") and not gateway_dependencies):
            continue
        needs = draw(st.lists(st.sampled_from(order[:index]), unique=True, max_size=3)) if index else []
        if needs:
            dependencies[name] = needs

    arrangements: dict[str, dict[str, Any]] = {}
    for name in proxmox_hosts if clusters else []:
        cluster = draw(st.sampled_from([None, "ca", "ca", "cb"]))
        if cluster is not None:
            nodes[name]["proxmox"] = {**nodes[name]["proxmox"], "cluster": cluster, "votes": draw(st.integers(0, 2))}
    for cluster in sorted({d["proxmox"].get("cluster") for d in nodes.values() if "proxmox" in d} - {None}):
        outside = [
            n for n, d in nodes.items() if d["kind"] == "machine" and d.get("proxmox", {}).get("cluster") != cluster
        ]
        if outside and draw(st.booleans()):
            arrangements[cluster] = {"qdevice": draw(st.sampled_from(outside))}

    # File order is arbitrary too: the planner must not rely on it.
    names = draw(st.permutations(list(nodes)))
    return {
        **({"clusters": arrangements} if arrangements else {}),
        "edge": {"host": "vps", "domain": "example.net", "wireguard": {"address": "10.200.0.1/24", "endpoint": "v:1"}},
        "sites": {
            site: {"gateway": f"gw-{site}", "wireguard": {"address": f"10.200.{i + 1}.1/24"}}
            for i, site in enumerate(sites)
        },
        "nodes": {name: nodes[name] for name in names},
        "dependencies": {name: dependencies[name] for name in names if name in dependencies},
    }


def build(data: dict[str, Any]) -> Fleet:
    """Both validation passes of the model, minus the YAML round trip (kept for speed;
    the pinned examples below do go through YAML)."""
    return validate_document(YamlDocument(data, {}, []), "<generated>")


def build_from_yaml(data: dict[str, Any]) -> Fleet:
    return parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<pinned>")


@st.composite
def cases(draw, *, gateway_dependencies: bool = True, auto_stop: bool = True, clusters: bool = False) -> Case:
    fleet = build(draw(fleet_data(gateway_dependencies=gateway_dependencies, auto_stop=auto_stop, clusters=clusters)))
    up: set[str] = set()
    unknown: dict[str, str] = {}
    with_unknown = draw(st.booleans())
    for name in sorted(fleet.nodes, key=lambda n: len(fleet.ancestors(n))):  # hosts first
        parent = fleet.nodes[name].parent
        if parent in unknown:
            unknown[name] = f"its host {parent} is unknown"
        elif parent is None or parent in up:
            roll = draw(st.integers(0, 7))
            if roll == 2 and with_unknown:
                unknown[name] = f"{name} did not answer"
            elif roll > 1:
                up.add(name)
    in_use = {n: f"session on {n}" for n in sorted(up) if draw(st.integers(0, 9)) == 0}
    confirmed = {n for n in fleet.nodes if auto_stop and fleet.confirm_shutdown(n) and draw(st.booleans())}
    return Case(
        fleet=fleet,
        up=frozenset(up),
        unknown=unknown,
        target=draw(st.sampled_from(sorted(fleet.nodes))),
        in_use=in_use,
        confirmed=frozenset(confirmed),
        include_dependants=draw(st.booleans()),
        shuffle_seed=draw(st.integers(0, 2**16)),
        force_infrastructure=draw(st.booleans()),
    )


def shuffled(case: Case) -> list[str]:
    up = sorted(case.up)
    random.Random(case.shuffle_seed).shuffle(up)
    return up


def shuffled_unknown(case: Case) -> dict[str, str]:
    names = sorted(case.unknown)
    random.Random(case.shuffle_seed).shuffle(names)
    return {name: case.unknown[name] for name in names}


def only_the_unobserved(case: Case) -> dict[str, str]:
    """``case.unknown`` without the nodes that are unknown only because their host is."""
    return {name: why for name, why in case.unknown.items() if not why.startswith("its host ")}


def start(case: Case, up=None, unknown=None) -> Plan:
    return start_plan(
        case.fleet, case.target, case.up if up is None else up, unknown=case.unknown if unknown is None else unknown
    )


def stop(case: Case, up=None, unknown=None) -> Plan:
    return stop_plan(
        case.fleet,
        case.target,
        case.up if up is None else up,
        case.in_use,
        unknown=case.unknown if unknown is None else unknown,
        include_dependants=case.include_dependants,
        confirmed=case.confirmed,
        force_infrastructure=case.force_infrastructure,
    )


def gateways(fleet: Fleet) -> set[str]:
    return {site.gateway for site in fleet.sites.values()}


# --------------------------------------------------------------------------- start plans


def start_closure(fleet: Fleet, target: str, up: frozenset[str]) -> set[str]:
    """What starting ``target`` involves: its dependencies, and for a node that is down its host.
    (A machine's gateway is a prerequisite that must already be up, not part of the closure.)"""
    seen: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += fleet.dependencies_of(name)
        if name not in up and fleet.nodes[name].parent:
            todo.append(fleet.nodes[name].parent)
    return seen


def wakers(fleet: Fleet, closure: set[str], up: frozenset[str]) -> set[str]:
    """The gateways that send the magic packets for the closure's sleeping machines."""
    return {fleet.gateway_of(n) for n in closure if n not in up and fleet.nodes[n].kind == "machine"}


def cannot_be_woken(fleet: Fleet, name: str, up: frozenset[str]) -> bool:
    node = fleet.nodes[name]
    gateway = fleet.gateway_of(name)
    return name not in up and node.kind == "machine" and (node.mac is None or gateway == name or gateway not in up)


def check_start_order(case: Case, plan: Plan) -> None:
    """Walking the steps: nothing starts twice or while up, nor before its host, its
    dependencies, or (for a machine) the gateway that sends its magic packet."""
    fleet = case.fleet
    if plan.blocked:
        assert plan.steps == ()
        return
    state = set(case.up)
    for step in plan.steps:
        node = fleet.nodes[step.node]
        assert step.action == "start"
        assert step.node not in state, f"{step.node} is started while already up (or twice)"
        if node.parent is not None:
            assert node.parent in state, f"{step.node} starts before its host {node.parent}"
            expected = "proxmox" if node.kind in ("vm", "lxc") else "docker"
            assert (step.channel.kind, step.channel.via) == (expected, node.parent)
        else:
            gateway = fleet.gateway_of(step.node)
            assert gateway in state, f"{step.node} is woken while its gateway {gateway} is down"
            assert (step.channel.kind, step.channel.via) == ("wake_on_lan", gateway)
            assert node.mac is not None
        for dependency in fleet.dependencies_of(step.node):
            assert dependency in state, f"{step.node} starts before its dependency {dependency}"
        if step.node in case.unknown:
            # only where starting a node already up changes nothing, and the plan says so
            assert step.channel.kind in ("wake_on_lan", "proxmox", "docker")
            assert f"power unknown ({case.unknown[step.node]}): starting is harmless" in step.reason
        else:
            assert "power unknown" not in step.reason
        state.add(step.node)
    assert case.target in state


def check_start_closure(case: Case, plan: Plan) -> None:
    """Every node of the target's closure is started or skipped, once; nothing else is;
    the plan is blocked exactly when a machine of the closure cannot be woken."""
    fleet = case.fleet
    closure = start_closure(fleet, case.target, case.up)
    unwakeable = sorted(n for n in closure if cannot_be_woken(fleet, n, case.up))
    assert bool(plan.blocked) == bool(unwakeable), unwakeable
    for reason in plan.blocked:  # the first obstacle found is enough
        assert any(reason.startswith(f"cannot start {name}:") for name in unwakeable), reason
    if plan.blocked:
        return
    started = [s.node for s in plan.steps]
    skipped = [n.node for n in plan.skipped]
    assert len(started) == len(set(started)) and len(skipped) == len(set(skipped))
    assert set(started) == closure - case.up
    assert set(skipped) == (closure | wakers(fleet, closure, case.up)) & case.up
    assert all(n.reason == "already up" for n in plan.skipped)


def check_start_determinism(case: Case, plan: Plan) -> None:
    assert start(case) == plan
    assert start(case, up=shuffled(case), unknown=shuffled_unknown(case)) == plan
    assert start(case, up=set(shuffled(case))) == plan
    # an unknown node given as up too is still unknown; what an unknown node hosts is unknown unsaid
    assert start(case, up=case.up | set(case.unknown)) == plan
    assert start(case, unknown=only_the_unobserved(case)) == plan


@SETTINGS
@given(cases())
def test_start_plan_order_closure_and_determinism(case: Case):
    plan = start(case)
    check_start_order(case, plan)
    check_start_closure(case, plan)
    check_start_determinism(case, plan)


@FEWER
@given(cases())
def test_start_plan_closure_and_determinism_when_gateways_have_dependencies(case: Case):
    plan = start(case)
    check_start_closure(case, plan)
    check_start_determinism(case, plan)


# m1 depends on m0 and the (up) gateway depends on m1. Waking m0 ensures the gateway,
# which ensures m1, which finds m0 "handled" (in progress, not up yet): m1 starts first.
GATEWAY_NEEDS_A_DEPENDANT = {
    "edge": {"host": "vps", "domain": "example.net", "wireguard": {"address": "10.200.0.1/24", "endpoint": "v:1"}},
    "sites": {"site0": {"gateway": "gw-site0", "wireguard": {"address": "10.200.1.1/24"}}},
    "nodes": {
        "gw-site0": {"kind": "machine", "site": "site0"},
        "m0": {"kind": "machine", "site": "site0", "mac": "52:54:00:00:00:01"},
        "m1": {"kind": "machine", "site": "site0", "mac": "52:54:00:00:00:02"},
    },
    "dependencies": {"gw-site0": ["m1"], "m1": ["m0"]},
}


def _pinned(data: dict[str, Any], up: set[str], target: str) -> Case:
    return Case(build_from_yaml(data), frozenset(up), {}, target, {}, frozenset(), False, 0)


@FEWER
@given(cases())
@example(_pinned(GATEWAY_NEEDS_A_DEPENDANT, {"gw-site0"}, "m0"))
def test_start_plan_order_when_gateways_have_dependencies(case: Case):
    check_start_order(case, start(case))


# --------------------------------------------------------------------------- stop plans


def cascade_of(case: Case) -> set[str]:
    """The requested shutdown: the target's subtree, plus the subtrees of dependants that are up
    or unknown (they could be running)."""
    fleet = case.fleet
    cascade = {case.target, *fleet.descendants(case.target)}
    maybe_running = case.up | set(case.unknown)
    while case.include_dependants:
        extra = {d for n in cascade for d in fleet.dependants_of(n) if d in maybe_running and d not in cascade}
        if not extra:
            break
        for name in extra:
            cascade |= {name, *fleet.descendants(name)}
    return cascade


def subtree(fleet: Fleet, name: str) -> set[str]:
    return {name, *fleet.descendants(name)}


def confirmed_behind_down_nodes(case: Case) -> set[str]:
    """Confirmed running nodes that the cascade's down members need, directly or through down nodes:
    a person may stop those after the fact (a shutdown re-run with --confirm)."""
    fleet = case.fleet
    reached: set[str] = set()
    down = set(fleet.nodes) - case.up - set(case.unknown)
    todo = [n for n in cascade_of(case) if n in down]
    while todo:
        for dependency in fleet.dependencies_of(todo.pop()):
            if dependency not in reached:
                reached.add(dependency)
                if dependency in down:
                    todo.append(dependency)
    return {n for n in reached if n in case.up and n in case.confirmed}


def check_stop_order(case: Case, plan: Plan) -> None:
    """Walking the steps: each stops a node that is up, after everything it hosts and
    everything still up that depends on it; a node is never stopped while a dependant or a
    hosted child is up or unknown; unknown, in-use and proposed nodes never stop; a site
    gateway stops only when forced and asked for; each step says truly why it stops."""
    fleet = case.fleet
    if plan.blocked:
        assert (plan.steps, plan.kept, plan.proposed) == ((), (), ())
        return
    state = set(case.up)
    unknown = set(case.unknown)
    stopped: set[str] = set()
    proposed = {n.node for n in plan.proposed}
    cascade = cascade_of(case)
    later = [s.node for s in plan.steps]
    for index, step in enumerate(plan.steps):
        node = fleet.nodes[step.node]
        assert step.action == "stop"
        assert step.node in state, f"{step.node} is stopped while down, unknown (or twice)"
        assert step.node not in case.in_use and step.node not in proposed
        hosted = subtree(fleet, step.node) - {step.node}
        assert not hosted & state, f"{step.node} stops before what it hosts"
        assert not hosted & unknown, f"{step.node} stops while it hosts {sorted(hosted & unknown)}, power unknown"
        users = [d for d in fleet.dependants_of(step.node) if d in state or d in unknown]
        assert not users, f"{step.node} stops while {users} still (or may still) depend on it"
        if step.node in gateways(fleet):
            assert case.force_infrastructure and step.node in cascade, f"gateway {step.node} stopped"
        if node.kind == "machine":
            assert (step.channel.kind, step.channel.via) == ("ssh", step.node)
        else:
            expected = "proxmox" if node.kind in ("vm", "lxc") else "docker"
            assert (step.channel.kind, step.channel.via) == (expected, node.parent)
        check_stop_reason(case, step.node, step.reason.split("; infrastructure, forced: ")[0], later[index + 1 :])
        state.remove(step.node)
        stopped.add(step.node)
    assert not cascade & state, "part of the requested shutdown is still up"
    behind = confirmed_behind_down_nodes(case)
    for name in stopped - cascade:
        assert any(name in fleet.dependencies_of(s) for s in stopped) or name in behind, (
            f"{name} stops though nothing stopped needed it"
        )


def check_stop_reason(case: Case, name: str, reason: str, stopped_after: list[str]) -> None:
    """The reason names what really happens: the host it names stops after it, the dependency
    it names is part of the shutdown; only the target is "requested"."""
    fleet = case.fleet
    assert (reason == "requested") == (name == case.target), reason
    if reason.startswith("hosted on "):
        host = reason.removeprefix("hosted on ")
        assert host == fleet.nodes[name].parent and host in stopped_after, f"{name}: {reason}"
    elif reason.startswith("depends on "):
        dependency = reason.removeprefix("depends on ").split(",")[0]
        assert dependency in fleet.dependencies_of(name) and dependency in cascade_of(case), f"{name}: {reason}"
        assert name in cascade_of(case)
    elif reason != "requested":
        assert reason.startswith("no active dependant left"), f"{name}: {reason}"
        assert name not in cascade_of(case)


def check_stop_blocking(case: Case, plan: Plan) -> None:
    """Blocked exactly when the cascade holds a node in use, an unknown node, a node with an
    unknown dependant outside it, (without include_dependants) a node with a running
    dependant outside it, or (unless forced) a running site gateway; each block names the
    node and, for an unknown one, why it is unknown."""
    fleet = case.fleet
    cascade = cascade_of(case)
    needed = sorted(n for n in cascade if any(d in case.up and d not in cascade for d in fleet.dependants_of(n)))
    busy = sorted(n for n in cascade if n in case.in_use)
    unknown_inside = sorted(n for n in cascade if n in case.unknown)
    unknown_users = sorted(d for n in cascade for d in fleet.dependants_of(n) if d in case.unknown and d not in cascade)
    infra = [] if case.force_infrastructure else sorted(n for n in cascade & gateways(fleet) if n in case.up)
    assert bool(plan.blocked) == bool(needed or busy or unknown_inside or unknown_users or infra)
    for name in needed:
        assert any(b.startswith(f"{name} is still needed by ") for b in plan.blocked)
    for name in busy:
        assert f"{name} is in use: {case.in_use[name]}" in plan.blocked
    for name in [*unknown_inside, *unknown_users]:
        assert any(name in b and f"power unknown ({case.unknown[name]})" in b for b in plan.blocked), name
    for name in infra:
        assert any(b.startswith(f"{name} is the gateway of site ") for b in plan.blocked)
    assert ("force_infrastructure" in plan.overrides) == bool(infra)


def check_kept_and_proposed(case: Case, plan: Plan, *, hosted_nodes_count: bool = True) -> None:
    """A kept node has a running or unknown needer, hosts such a node, is in use, is unknown
    itself, or is a site gateway; a proposed node has no running or unknown dependant, and
    hosts nothing still running; every dependency of what stops is stopped, kept or proposed.
    ``hosted_nodes_count=False`` leaves out what a proposed node hosts (see HOSTS_A_RUNNING_NODE)."""
    fleet = case.fleet
    if plan.blocked:
        return
    stopped = {s.node for s in plan.steps}
    after = set(case.up) - stopped
    maybe = after | set(case.unknown)
    for note in plan.kept:
        if note.node in case.unknown:
            assert note.reason == f"power unknown ({case.unknown[note.node]}): not stopped"
            continue
        assert note.node in after
        if note.needed_by:
            for user in note.needed_by:
                assert user in maybe, f"{note.node} is kept for {user}, which this plan stops"
                assert set(fleet.dependencies_of(user)) & subtree(fleet, note.node)
        elif note.reason.startswith("hosts running "):
            assert (subtree(fleet, note.node) - {note.node}) & maybe
        elif note.reason.endswith("infrastructure is never stopped as a dependency"):
            assert note.node in gateways(fleet)
        else:
            assert "is in use: " in note.reason
    for note in plan.proposed:
        assert note.node in after and fleet.confirm_shutdown(note.node) and note.node not in case.confirmed
        assert note.node not in gateways(fleet)
        hosted = subtree(fleet, note.node) - {note.node}
        users = {d for d in fleet.dependants_of(note.node) if d in maybe}
        if hosted_nodes_count:
            assert not users, f"{note.node} is proposed while {sorted(users)} still depend on it"
            assert not hosted & maybe, f"{note.node} is proposed while it hosts running {sorted(hosted & maybe)}"
        else:
            assert not users - hosted, f"{note.node} is proposed while {sorted(users)} still depend on it"
    noted = {n.node for n in (*plan.kept, *plan.proposed)}
    for name in stopped:
        for dependency in fleet.dependencies_of(name):
            assert dependency not in maybe or dependency in noted, f"{dependency} left up without a word"
    cascade = cascade_of(case)
    for note in plan.skipped:
        assert note.node not in case.up and note.node not in case.unknown
        assert note.node in cascade or {note.node, *fleet.ancestors(note.node)} & stopped


def check_stop_determinism(case: Case, plan: Plan) -> None:
    assert stop(case) == plan
    assert stop(case, up=shuffled(case), unknown=shuffled_unknown(case)) == plan
    assert stop(case, up=set(shuffled(case))) == plan
    assert stop(case, up=case.up | set(case.unknown)) == plan  # unknown wins over up
    assert stop(case, unknown=only_the_unobserved(case)) == plan  # a host unknown: what it hosts too


@SETTINGS
@given(cases())
def test_stop_plan_order_blocking_notes_and_determinism(case: Case):
    plan = stop(case)
    check_stop_order(case, plan)
    check_stop_blocking(case, plan)
    check_kept_and_proposed(case, plan)
    check_stop_determinism(case, plan)


@SETTINGS
@given(cases())
def test_stop_plan_blocking_and_determinism_when_dependencies_stop_too(case: Case):
    plan = stop(case)
    check_stop_blocking(case, plan)
    check_stop_determinism(case, plan)


# c0 depends on c1 and c2, c2 on c1. c1 is evaluated first, while c2 still runs: kept
# "needed by c2"; then c2 is stopped, and c1 is never looked at again.
KEPT_FOR_A_STOPPED_DEPENDANT = {
    "edge": {"host": "vps", "domain": "example.net", "wireguard": {"address": "10.200.0.1/24", "endpoint": "v:1"}},
    "sites": {"site0": {"gateway": "gw-site0", "wireguard": {"address": "10.200.1.1/24"}}},
    "nodes": {
        "gw-site0": {"kind": "machine", "site": "site0", "docker": {"api": "tcp://gw.lan:2375"}},
        "c0": {"kind": "container", "parent": "gw-site0"},
        "c1": {"kind": "container", "parent": "gw-site0"},
        "c2": {"kind": "container", "parent": "gw-site0"},
    },
    "dependencies": {"c0": ["c1", "c2"], "c2": ["c1"]},
}
# c0 depends on its own host g0: g0 is stopped as a dependency with its subtree, c0 again.
STOPPED_TWICE = {
    **KEPT_FOR_A_STOPPED_DEPENDANT,
    "nodes": {
        "gw-site0": {
            "kind": "machine",
            "site": "site0",
            "proxmox": {"api": "https://gw.lan:8006", "token_id": "root@pam!w", "token_secret": "x"},
        },
        "g0": {"kind": "vm", "parent": "gw-site0", "vmid": 100, "docker": {"api": "tcp://g0.lan:2375"}},
        "c0": {"kind": "container", "parent": "g0"},
    },
    "dependencies": {"c0": ["g0"]},
}
# c0 depends on m0, a machine that also runs c1 (which needs nothing). Stopping c0 leaves
# m0 "without active dependant", though c1 still runs on it: m0 is proposed, or without
# confirm_shutdown stopped, and c1 goes down with it though nobody asked.
HOSTS_A_RUNNING_NODE = {
    **KEPT_FOR_A_STOPPED_DEPENDANT,
    "nodes": {
        "gw-site0": {"kind": "machine", "site": "site0", "docker": {"api": "tcp://gw.lan:2375"}},
        "c0": {"kind": "container", "parent": "gw-site0"},
        "m0": {"kind": "machine", "site": "site0", "mac": "52:54:00:00:00:01", "docker": {"api": "tcp://m0.lan:2375"}},
        "c1": {"kind": "container", "parent": "m0"},
    },
    "dependencies": {"c0": ["m0"]},
}
HOSTS_A_RUNNING_NODE_AUTO = {
    **HOSTS_A_RUNNING_NODE,
    "nodes": {
        **HOSTS_A_RUNNING_NODE["nodes"],
        "m0": {**HOSTS_A_RUNNING_NODE["nodes"]["m0"], "confirm_shutdown": False},
    },
}
ALL_UP = {"gw-site0", "m0", "c0", "c1"}


@FEWER
@given(cases())
@example(_pinned(STOPPED_TWICE, {"gw-site0", "g0", "c0"}, "c0"))
@example(_pinned(HOSTS_A_RUNNING_NODE_AUTO, ALL_UP, "c0"))
def test_stop_plan_order_when_dependencies_stop_too(case: Case):
    check_stop_order(case, stop(case))


@FEWER
@given(cases())
@example(_pinned(KEPT_FOR_A_STOPPED_DEPENDANT, {"gw-site0", "c0", "c1", "c2"}, "c0"))
@example(_pinned(HOSTS_A_RUNNING_NODE, ALL_UP, "c0"))
def test_stop_plan_notes_when_dependencies_stop_too(case: Case):
    check_kept_and_proposed(case, stop(case))


# --------------------------------------------------------------------------- quorum


def quorate(fleet: Fleet, guest: str, present: set[str]) -> bool:
    """corosync votequorum, written out independently: votes present >= expected // 2 + 1."""
    cluster = fleet.cluster_of(guest)
    members = {
        n: node.proxmox.votes for n, node in fleet.nodes.items() if node.proxmox and node.proxmox.cluster == cluster
    }
    qdevice = fleet.clusters[cluster].qdevice if cluster in fleet.clusters else None
    expected = sum(members.values()) + (1 if qdevice else 0)
    votes = sum(v for n, v in members.items() if n in present) + (1 if qdevice in present else 0)
    return votes >= expected // 2 + 1


def clustered_guests(fleet: Fleet) -> list[str]:
    return [n for n, node in fleet.nodes.items() if node.kind in ("vm", "lxc") and fleet.cluster_of(n)]


@SETTINGS
@given(cases(clusters=True))
def test_every_guest_start_happens_in_a_quorate_cluster(case: Case):
    plan = start(case)
    present = set(case.up)
    for step in plan.steps:
        if step.node in clustered_guests(case.fleet):
            assert quorate(case.fleet, step.node, present), (step, sorted(present))
        present.add(step.node)


@SETTINGS
@given(cases(clusters=True))
def test_a_stop_never_costs_quorum_to_a_guest_that_runs_or_may_run(case: Case):
    plan = stop(case)
    if not plan.runnable:
        return
    stopped = {s.node for s in plan.steps}
    after = set(case.up) - stopped
    for guest in clustered_guests(case.fleet):
        cluster = case.fleet.cluster_of(guest)
        qdevice = case.fleet.clusters[cluster].qdevice if cluster in case.fleet.clusters else None
        voters_stopped = stopped & {*case.fleet.cluster_members(cluster), qdevice}
        if voters_stopped and (guest in after or guest in case.unknown):
            assert quorate(case.fleet, guest, after), (guest, sorted(voters_stopped), sorted(after))
