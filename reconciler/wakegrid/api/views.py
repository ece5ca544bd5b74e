"""The reconciler's state as the API and the dashboard show it: one place turns it into :mod:`wakegrid.api.models`.

Everything comes from what the daemon already holds: the fleet, the last round's observation and
decisions, the journal (pins, history) and the request path's wakes in progress. Nothing here
observes or acts. A node no round has seen yet is ``unknown`` with that reason, never ``down``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

from wakegrid.api.models import (
    BackendStatus,
    ChainNode,
    NodeView,
    ServiceStatus,
    Stats,
    WakeLayer,
    WakeProgress,
)
from wakegrid.graph import start_channel, stop_channel
from wakegrid.web.chain import chain_nodes

if TYPE_CHECKING:
    from wakegrid.daemon.reconciler import Reconciler

NOT_OBSERVED = "not observed yet: the daemon's first round has not finished"


def power_of(reconciler: Reconciler, node: str) -> tuple[str, str]:
    """(up | down | unknown, why) as the last round saw ``node``."""
    observed = reconciler.last_observed
    state = observed.power.get(node) if observed is not None else None
    if state is None:
        return "unknown", NOT_OBSERVED
    return state.power, state.detail


def _pinned(reconciler: Reconciler) -> set[tuple[str, str]]:
    return {(pin["kind"], pin["name"]) for pin in reconciler.store.pins()}


# --------------------------------------------------------------------------- nodes


def channel_words(reconciler: Reconciler, node: str) -> str:
    """How the daemon starts and stops ``node``: "Wake-on-LAN from gw-dijon / SSH on pve1"."""
    fleet = reconciler.fleet
    start, stop = start_channel(fleet, node).describe(), stop_channel(fleet, node).describe()
    return start if start == stop else f"{start} / {stop}"


def _tree(reconciler: Reconciler) -> Iterator[tuple[str, int]]:
    """Every node after its host, each machine followed by what it hosts (file order), with its depth."""
    fleet = reconciler.fleet

    def walk(name: str, depth: int) -> Iterator[tuple[str, int]]:
        yield name, depth
        for child in fleet.children(name):
            yield from walk(child, depth + 1)

    for name, node in fleet.nodes.items():
        if node.parent is None:
            yield from walk(name, 0)


def _node(reconciler: Reconciler, name: str, depth: int, pinned: set[tuple[str, str]]) -> NodeView:
    fleet = reconciler.fleet
    node = fleet.nodes[name]
    power, detail = power_of(reconciler, name)
    return NodeView(
        name=name,
        kind=node.kind,
        site=fleet.site_of(name),
        parent=node.parent,
        children=fleet.children(name),
        depends_on=fleet.dependencies_of(name),
        dependants=fleet.dependants_of(name),
        power=power,  # type: ignore[arg-type]
        power_detail=detail,
        channel=channel_words(reconciler, name),
        pinned=("node", name) in pinned,
        depth=depth,
    )


def all_nodes(reconciler: Reconciler) -> list[NodeView]:
    """The hosting tree, machine → guest → container, in file order."""
    pinned = _pinned(reconciler)
    return [_node(reconciler, name, depth, pinned) for name, depth in _tree(reconciler)]


def node_view(reconciler: Reconciler, name: str) -> NodeView:
    """One node; KeyError when the fleet has no such node."""
    if name not in reconciler.fleet.nodes:
        raise KeyError(name)
    depth = len(reconciler.fleet.ancestors(name))
    return _node(reconciler, name, depth, _pinned(reconciler))


# --------------------------------------------------------------------------- services


def _wanted(reconciler: Reconciler, name: str) -> tuple[bool | None, str]:
    decisions = reconciler.last
    if decisions is None or name not in decisions.wanted:
        return None, "not decided yet: the daemon's first round has not finished"
    return name in decisions.wanted_now, decisions.wanted[name]


def _wake(reconciler: Reconciler, name: str) -> WakeProgress | None:
    wake = reconciler.wakes.get(name)
    if wake is None or not (wake.active or wake.error):
        return None
    snapshot: dict[str, Any] = wake.snapshot()
    return WakeProgress(
        state=snapshot["state"],
        requested_at=wake.requested_at,
        elapsed_seconds=snapshot["elapsed"],
        error=snapshot["error"],
        layers=[
            WakeLayer(key=layer["key"], label=layer["title"], state=layer["state"], detail=layer["detail"])
            for layer in snapshot["layers"]
        ],
    )


def _service(reconciler: Reconciler, name: str, pinned: set[tuple[str, str]]) -> ServiceStatus:
    fleet = reconciler.fleet
    service = fleet.services[name]
    observed = reconciler.last_observed
    backends = []
    chain: dict[str, ChainNode] = {}
    for index, backend in enumerate(service.backends):
        health = observed.health.get((name, index)) if observed is not None else None
        address = fleet.backend_address(backend)
        backends.append(
            BackendStatus(
                index=index,
                site=fleet.backend_site(backend),
                node=backend.node,
                url=f"http://{address}:{backend.port}{service.health.path}" if address else "",
                health=health.state if health is not None else "unknown",  # type: ignore[arg-type]
                detail=health.detail if health is not None else NOT_OBSERVED,
            )
        )
        for node in chain_nodes(fleet, backend.node) if backend.node else ():
            if node not in chain:
                power, detail = power_of(reconciler, node)
                chain[node] = ChainNode(node=node, kind=fleet.nodes[node].kind, power=power, detail=detail)  # type: ignore[arg-type]
    activity = observed.activity.get(name) if observed is not None else None
    remembered = reconciler.memory().last_activity.get(name)
    seen = activity.last_request if activity is not None else None
    wanted, why = _wanted(reconciler, name)
    return ServiceStatus(
        name=name,
        domain=service.domain,
        policy=service.policy.mode,
        wanted=wanted,
        why=why,
        backends=backends,
        chain=list(chain.values()),
        in_flight=activity.in_flight if activity is not None else None,
        last_activity=max((t for t in (seen, remembered) if t is not None), default=None),
        wake=_wake(reconciler, name),
        pinned=("service", name) in pinned,
    )


def all_status(reconciler: Reconciler) -> list[ServiceStatus]:
    pinned = _pinned(reconciler)
    return [_service(reconciler, name, pinned) for name in reconciler.fleet.services]


def service_status(reconciler: Reconciler, name: str) -> ServiceStatus:
    """One service; KeyError when the fleet has no such service."""
    if name not in reconciler.fleet.services:
        raise KeyError(name)
    return _service(reconciler, name, _pinned(reconciler))


# --------------------------------------------------------------------------- the front page's figures


def stats(reconciler: Reconciler, now: datetime | None = None) -> Stats:
    """Nodes up now; wakes, their mean time and errors since midnight (UTC)."""
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.astimezone(UTC).date(), time(0), tzinfo=UTC)
    store = reconciler.store
    wakes = store.wakes(limit=10_000, since=midnight)
    done = [w["seconds"] for w in wakes if w["ok"]]
    failed_actions = [a for a in store.actions(limit=10_000, state="failed") if a["created_at"] >= midnight]
    observed = reconciler.last_observed
    up = sum(1 for name in reconciler.fleet.nodes if observed and (s := observed.power.get(name)) and s.power == "up")
    return Stats(
        nodes_up=up,
        nodes_total=len(reconciler.fleet.nodes),
        wakes_today=len(wakes),
        mean_wake_seconds_today=round(sum(done) / len(done), 1) if done else None,
        errors_today=len(failed_actions) + sum(1 for w in wakes if not w["ok"]),
    )


def config_view(reconciler: Reconciler) -> dict[str, Any]:
    """The fleet as loaded; each secret shows where it comes from (``<secret file:…>``), never its value."""
    return reconciler.fleet.model_dump(mode="json", exclude_none=True)
