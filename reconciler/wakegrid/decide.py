"""What the fleet should do now: the reconciler's pure decision core (no I/O).

``decide(fleet, observed, now, memory)`` looks at every service and every node and
returns :class:`Decisions`: the starts, the stops and the Caddy pool changes to make,
and a log with one :class:`Decision` per service, per node and per pool change, each
with its reason in words, the non-actions included ("kept awake: 2 requests in flight",
"not stopped: nas is still needed by jellyfin (running, outside this shutdown)").

Which services are wanted: ``always_on`` always; ``scheduled`` while one of its windows
is open (:func:`wakegrid.policy.scheduled_open`); ``on_demand`` while a wake request is
pending, and kept (not started) while a request is in flight, its activity is unknown,
or its last activity (request, wake, journaled activity, or the daemon's own start: no
idle timer runs from before it) is more recent than ``idle_after``. Only a wake request
starts an ``on_demand`` service: recent activity keeps what runs, it wakes nothing.

A wanted service needs the nodes of its backends (an ``on_demand`` one, when woken, those
of the first site in its failover order whose tunnel is not down), their dependencies and
their hosts. A needed node that is down is started through :func:`wakegrid.graph.start_plan`,
one start per backend node (the plan wakes the whole chain), unless an action runs on the
chain, a start there failed recently (backoff), a node of it is still booting within its
start timeout, its power is unknown, or an earlier start of this tick already wakes part of
the chain (the next one follows once that part is up). Nodes used by services, up, and needed
by no wanted service are stopped through :func:`wakegrid.graph.stop_plan` from the topmost ones,
except infrastructure (never), nodes that ask for confirmation (only proposed) and nodes hosting
a running node no service uses. The planner keeps out of every shutdown what a wanted service
needs, and the nodes of a service with a request in flight or whose activity is unknown,
whatever its policy. The planners order every step; this module never does.

A site leaves a service's pool when its WireGuard tunnel is down or every backend there is
down; unknown never excludes, and a pool is never emptied (Caddy's own health checks answer
then). A pool is reported only when it differs from the one in memory.

Per-fleet indexes (closures, users of each node, ...) are computed once per fleet object
and cached, so a tick where nothing changes costs little more than reading the observations.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from wakegrid import graph
from wakegrid.model import WEEKDAYS, Fleet, Service, Window
from wakegrid.policy import scheduled_open, window_open
from wakegrid.state import Activity, Memory, Observed

Verdict = Literal["start", "stop", "keep", "wait", "route", "leave"]

NOT_OBSERVED = "not observed"


@dataclass(frozen=True)
class Decision:
    """One line of the decision log: what happens to a subject (or why nothing does)."""

    subject: str  # "service stream", "node jellyfin", "route stream"
    verdict: Verdict
    reason: str


@dataclass(frozen=True)
class Start:
    """Start ``node`` (a backend's node) with its whole chain: ``wake.yml node=<node>``."""

    node: str
    plan: graph.Plan
    reason: str
    services: tuple[str, ...]  # the wanted services it is started for


@dataclass(frozen=True)
class Stop:
    """Stop ``node`` and what its plan stops with it: ``shutdown.yml node=<node>``."""

    node: str
    plan: graph.Plan
    reason: str
    services: tuple[str, ...]  # the services whose nodes this stops
    # What the plan kept out of the shutdown, and why: the playbook replans with the same.
    in_use: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Pool:
    """A service's pool changed: the sites left out of it now (sorted), one reason each."""

    service: str
    excluded: tuple[str, ...]
    reasons: tuple[str, ...]  # "dijon: WireGuard tunnel down (no handshake for 212 s (stale after 180 s))"


@dataclass(frozen=True)
class Decisions:
    at: datetime
    log: tuple[Decision, ...]
    starts: tuple[Start, ...]
    stops: tuple[Stop, ...]
    pools: tuple[Pool, ...]  # only the services whose pool differs from memory.pools
    wanted: Mapping[str, str]  # service → why it is wanted, kept, or not wanted now
    wanted_now: frozenset[str] = frozenset()  # the services the policy wants running now

    @property
    def idle(self) -> bool:
        """Nothing to do: no start, no stop, no pool change."""
        return not self.starts and not self.stops and not self.pools


@dataclass(frozen=True)
class DecideSettings:
    # An on_demand policy without idle_after sleeps after this long without activity.
    default_idle_after: float = 20 * 60.0


# --------------------------------------------------------------------------- per-fleet indexes


@dataclass(frozen=True)
class _ServiceIndex:
    name: str
    service: Service
    leaves: tuple[str, ...]  # backend nodes, once each, in backend order
    site_order: tuple[str, ...]  # failover order (fleet.site_order)
    site_leaves: Mapping[str, tuple[str, ...]]  # site → backend nodes there
    site_backends: Mapping[str, tuple[tuple[int, str], ...]]  # site → (backend index, label), in pool order


@dataclass(frozen=True)
class _Index:
    position: Mapping[str, int]  # node → file order
    hosts_first: tuple[str, ...]  # every node after its hosts
    closure: Mapping[str, frozenset[str]]  # node → itself, its hosts, its dependencies (recursively), their hosts
    users: Mapping[str, tuple[str, ...]]  # node → services whose backends need it
    used: frozenset[str]
    children: Mapping[str, tuple[str, ...]]
    stop_rank: Mapping[str, int]  # higher: holds nodes that depend on more; stopped (and evaluated) first
    infrastructure: Mapping[str, str]
    services: Mapping[str, _ServiceIndex]


_CACHE: dict[int, tuple[Fleet, _Index]] = {}
_CACHE_SIZE = 4  # a reload makes a new fleet; the old one's index goes after a few


def _index(fleet: Fleet) -> _Index:
    cached = _CACHE.get(id(fleet))
    if cached is not None and cached[0] is fleet:
        return cached[1]
    index = _build_index(fleet)
    while len(_CACHE) >= _CACHE_SIZE:
        del _CACHE[next(iter(_CACHE))]
    _CACHE[id(fleet)] = (fleet, index)
    return index


def _build_index(fleet: Fleet) -> _Index:
    nodes = fleet.nodes
    position = {name: i for i, name in enumerate(nodes)}
    children: dict[str, list[str]] = {}
    for name, node in nodes.items():
        if node.parent in nodes:
            children.setdefault(node.parent, []).append(name)

    def needs(name: str) -> list[str]:
        found = [d for d in fleet.dependencies.get(name, []) if d in nodes and d != name]
        parent = nodes[name].parent
        return [*found, parent] if parent in nodes else found

    # Kahn's order over "must run before" links (dependencies and hosts first); a validated
    # fleet has no cycle, and nodes of a cycle would only lose their closure's far end.
    waiting = {name: len(needs(name)) for name in nodes}
    needed_by: dict[str, list[str]] = {}
    for name in nodes:
        for need in needs(name):
            needed_by.setdefault(need, []).append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        name = ready.pop()
        order.append(name)
        for other in needed_by.get(name, []):
            waiting[other] -= 1
            if waiting[other] == 0:
                ready.append(other)
    order += [name for name in nodes if waiting[name] > 0]

    closure: dict[str, frozenset[str]] = {}
    level: dict[str, int] = {}
    for name in order:
        parts = [closure[need] for need in needs(name) if need in closure]
        closure[name] = frozenset({name}.union(*parts)) if parts else frozenset({name})
        level[name] = 1 + max((level[need] for need in needs(name) if need in level), default=-1)
    stop_rank = dict(level)
    for name in reversed(order):  # what is hosted comes after its host in ``order``
        parent = nodes[name].parent
        if parent in stop_rank:
            stop_rank[parent] = max(stop_rank[parent], stop_rank[name])

    services: dict[str, _ServiceIndex] = {}
    users: dict[str, list[str]] = {}
    for service_name, service in fleet.services.items():
        leaves = tuple(dict.fromkeys(b.node for b in service.backends if b.node in nodes))
        site_leaves: dict[str, list[str]] = {}
        site_backends: dict[str, list[tuple[int, str]]] = {}
        for i, backend in enumerate(service.backends):
            site = fleet.backend_site(backend)
            if site is None:
                continue
            label = f"{backend.node or fleet.backend_address(backend)}:{backend.port}"
            site_backends.setdefault(site, []).append((i, label))
            if backend.node in nodes and backend.node not in site_leaves.get(site, []):
                site_leaves.setdefault(site, []).append(backend.node)
        services[service_name] = _ServiceIndex(
            service_name,
            service,
            leaves,
            tuple(fleet.site_order(service)),
            {site: tuple(names) for site, names in site_leaves.items()},
            {site: tuple(entries) for site, entries in site_backends.items()},
        )
        for node in frozenset().union(*(closure[leaf] for leaf in leaves)):
            users.setdefault(node, []).append(service_name)
    return _Index(
        position=position,
        hosts_first=tuple(sorted(nodes, key=lambda n: len(fleet.ancestors(n)))),
        closure=closure,
        users={name: tuple(names) for name, names in users.items()},
        used=frozenset(users),
        children={name: tuple(names) for name, names in children.items()},
        stop_rank=stop_rank,
        infrastructure=graph.infrastructure(fleet),
        services=services,
    )


# --------------------------------------------------------------------------- words


def _span(seconds: float) -> str:
    """``45s``, ``21m``, ``21m5s``, ``1h5m``, ``2d3h``: the two largest units."""
    total = max(0, int(seconds))
    parts = [(total // 86400, "d"), (total % 86400 // 3600, "h"), (total % 3600 // 60, "m"), (total % 60, "s")]
    if not total:
        return "0s"
    first = next(i for i, (value, _) in enumerate(parts) if value)
    return "".join(f"{value}{unit}" for value, unit in parts[first : first + 2] if value)


def _clock(at: datetime, now: datetime) -> str:
    """A moment in UTC: the time of day, with the date when it is not today's."""
    moment, today = at.astimezone(UTC), now.astimezone(UTC)
    return moment.strftime("%H:%M:%S" if moment.date() == today.date() else "%Y-%m-%d %H:%M:%S")


def _days(days: Iterable[str]) -> str:
    chosen = sorted(set(days), key=WEEKDAYS.index)
    if len(chosen) == 7:
        return "daily"
    runs: list[list[str]] = []
    for day in chosen:
        if runs and WEEKDAYS.index(day) == WEEKDAYS.index(runs[-1][-1]) + 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(run) for run in runs)


def _window(window: Window) -> str:
    return f"{_days(window.days)} {window.start}-{window.end}"


def _names(names: Iterable[str]) -> str:
    return ", ".join(names)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------- inputs


def _aware(value: object, what: str) -> None:
    if not isinstance(value, datetime):
        raise ValueError(f"decide: {what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"decide: {what} is a naive datetime; give an aware one (datetime.now(UTC))")


def _check_inputs(fleet: Fleet, observed: Observed, now: datetime, memory: Memory) -> None:
    """Refuse what cannot be compared (naive datetimes, wrong types) with a clear ValueError."""
    if not isinstance(fleet, Fleet):
        raise ValueError(f"decide: fleet must be a wakegrid.model.Fleet, not {type(fleet).__name__}")
    if not isinstance(observed, Observed):
        raise ValueError(f"decide: observed must be a wakegrid.state.Observed, not {type(observed).__name__}")
    if not isinstance(memory, Memory):
        raise ValueError(f"decide: memory must be a wakegrid.state.Memory, not {type(memory).__name__}")
    _aware(now, "now")
    _aware(observed.at, "observed.at")
    _aware(memory.started_at, "memory.started_at")
    for service, activity in observed.activity.items():
        if isinstance(activity, Activity) and activity.last_request is not None:
            _aware(activity.last_request, f"observed.activity[{service!r}].last_request")
    for service, request in memory.wake_requests.items():
        _aware(request.at, f"memory.wake_requests[{service!r}].at")
    for service, at in memory.woken_at.items():
        _aware(at, f"memory.woken_at[{service!r}]")
    for service, at in memory.last_activity.items():
        _aware(at, f"memory.last_activity[{service!r}]")
    for node, backoff in memory.backoff.items():
        _aware(backoff.until, f"memory.backoff[{node!r}].until")
    for node, booting in memory.booting.items():
        _aware(booting.since, f"memory.booting[{node!r}].since")


def _power(fleet: Fleet, index: _Index, observed: Observed) -> tuple[set[str], dict[str, str]]:
    """Up nodes, and unknown ones with why: a node not observed is unknown; a node not up whose
    host is unknown is unknown too (as the planners see it)."""
    up: set[str] = set()
    unknown: dict[str, str] = {}
    power = observed.power
    for name in fleet.nodes:
        state = power.get(name)
        if state is None:
            unknown[name] = NOT_OBSERVED
        elif state.power == "up":
            up.add(name)
        elif state.power != "down":
            unknown[name] = state.detail if state.power == "unknown" else f"unreadable power {state.power!r}"
    if unknown:
        for name in index.hosts_first:
            if name in unknown or name in up:
                continue
            host = next((a for a in reversed(fleet.ancestors(name)) if a in unknown), None)
            if host is not None:
                unknown[name] = f"its host {host} is unknown"
    return up, unknown


# --------------------------------------------------------------------------- services


@dataclass(frozen=True)
class _Want:
    keep: bool  # its nodes are not stopped
    start: tuple[str, ...]  # backend nodes to start when down
    reason: str


def _want(info: _ServiceIndex, observed: Observed, now: datetime, memory: Memory, settings: DecideSettings) -> _Want:
    policy = info.service.policy
    if policy.mode == "always_on":
        return _Want(True, info.leaves, "always_on")
    if policy.mode == "scheduled":
        if scheduled_open(policy, now):
            window = next(w for w in policy.windows or [] if window_open(w, policy.timezone or "UTC", now))
            return _Want(True, info.leaves, f"inside its window {_window(window)} ({policy.timezone})")
        windows = "; ".join(_window(w) for w in policy.windows or [])
        return _Want(False, (), f"outside its windows {windows} ({policy.timezone})")
    return _on_demand(info, observed, now, memory, settings)


def _on_demand(
    info: _ServiceIndex, observed: Observed, now: datetime, memory: Memory, settings: DecideSettings
) -> _Want:
    name = info.name
    request = memory.wake_requests.get(name)
    if request is not None and not _service_up(info, observed):
        return _Want(True, _first_site_leaves(info, observed), f"waking: {request.reason} at {_clock(request.at, now)}")
    activity = observed.activity.get(name)
    if activity is None or not isinstance(activity, Activity):
        return _Want(True, (), "not stopped: activity unknown (not observed)")
    if activity.in_flight is None or activity.in_flight < 0:
        return _Want(True, (), f"not stopped: activity unknown ({activity.detail})")
    if activity.in_flight > 0:
        return _Want(True, (), f"kept awake: {_plural(activity.in_flight, 'request')} in flight")
    idle_after = info.service.policy.idle_after or settings.default_idle_after
    moments = [
        (activity.last_request, "last request"),
        (memory.last_activity.get(name), "last activity"),
        (request.at if request is not None else None, "wake requested"),
        (memory.woken_at.get(name), "woken"),
        (memory.started_at, "daemon started"),
    ]
    last, what = max(((at, what) for at, what in moments if at is not None), key=lambda pair: pair[0])
    idle = (now - last).total_seconds()
    # Moments, not counters: the reason stays the same from one round to the next, and the
    # decision log (which keeps changes only) gets one line per real change.
    if idle < idle_after:
        until = _clock(last + timedelta(seconds=idle_after), now)
        return _Want(
            True, (), f"kept awake: {what} at {_clock(last, now)} (idle_after {_span(idle_after)}: until {until})"
        )
    return _Want(
        False, (), f"idle since {_clock(last, now)} ({what}; idle_after {_span(idle_after)}), nothing in flight"
    )


def _service_up(info: _ServiceIndex, observed: Observed) -> bool:
    health = observed.health
    for entries in info.site_backends.values():
        for i, _ in entries:
            reading = health.get((info.name, i))
            if reading is not None and reading.state == "up":
                return True
    return False


def _first_site_leaves(info: _ServiceIndex, observed: Observed) -> tuple[str, ...]:
    """The backend nodes of the first site, in failover order, whose tunnel is not down."""
    for site in info.site_order:
        tunnel = observed.tunnels.get(site)
        if site in info.site_leaves and (tunnel is None or tunnel.state != "down"):
            return info.site_leaves[site]
    return ()


# --------------------------------------------------------------------------- the decision


def decide(
    fleet: Fleet,
    observed: Observed,
    now: datetime,
    memory: Memory,
    settings: DecideSettings = DecideSettings(),  # frozen: safe to share
) -> Decisions:
    """Decide what to start, stop and re-route now, and why every other thing stays as it is.

    Pure: the same arguments give the same decisions. Raises ValueError for inputs that
    cannot be compared (a naive datetime, a wrong type); a missing observation is unknown.
    """
    _check_inputs(fleet, observed, now, memory)
    index = _index(fleet)
    up, unknown = _power(fleet, index, observed)
    tick = _Tick(fleet, index, observed, now, memory, up, unknown)

    wants = {name: _want(info, observed, now, memory, settings) for name, info in index.services.items()}
    tick.needs(wants)
    starts = tick.starts(wants)
    stops = tick.stops(wants)
    pools, route_log = tick.pools()
    service_log = [tick.service_decision(name, want) for name, want in wants.items()]
    node_log = [tick.node_decision(name) for name in fleet.nodes]
    return Decisions(
        at=now,
        log=(*service_log, *node_log, *route_log),
        starts=tuple(starts),
        stops=tuple(stops),
        pools=tuple(pools),
        wanted={name: want.reason for name, want in wants.items()},
        wanted_now=frozenset(name for name, want in wants.items() if want.keep),
    )


@dataclass
class _Tick:
    fleet: Fleet
    index: _Index
    observed: Observed
    now: datetime
    memory: Memory
    up: set[str]
    unknown: dict[str, str]
    needed: dict[str, list[str]] = field(default_factory=dict)  # node → services that keep it
    to_start: dict[str, list[str]] = field(default_factory=dict)  # backend node → services that start it
    node_log: dict[str, Decision] = field(default_factory=dict)
    started: dict[str, str] = field(default_factory=dict)  # node in a start plan → the backend node started
    waiting: dict[str, str] = field(default_factory=dict)  # backend node → why its start waits
    stopping: dict[str, str] = field(default_factory=dict)  # node in a stop plan → the root
    held: dict[str, str] = field(default_factory=dict)  # node not stopped → why
    judged: set[str] = field(default_factory=set)  # kept or proposed by a stop plan's re-evaluation

    # ---- what wanted services need

    def needs(self, wants: Mapping[str, _Want]) -> None:
        closure = self.index.closure
        for name, want in wants.items():
            if not want.keep:
                continue
            for leaf in self.index.services[name].leaves:
                for node in closure[leaf]:
                    users = self.needed.setdefault(node, [])
                    if not users or users[-1] != name:
                        users.append(name)
            for leaf in want.start:
                self.to_start.setdefault(leaf, []).append(name)

    # ---- starts

    def starts(self, wants: Mapping[str, _Want]) -> list[Start]:
        starts: list[Start] = []
        planned: dict[str, str] = {}  # node in an emitted start plan → its backend node
        for leaf in sorted(self.to_start, key=self.index.position.__getitem__):
            chain = self.index.closure[leaf]
            if all(node in self.up for node in chain):
                continue
            services = tuple(self.to_start[leaf])
            why = self._start_waits(leaf, chain)
            plan = None
            if why is None:
                plan = graph.start_plan(self.fleet, leaf, self.up, unknown=self.unknown)
                others = [step.node for step in plan.steps if step.node not in chain]
                why = self._start_waits(leaf, others)
                if why is None and plan.blocked:
                    why = "; ".join(plan.blocked)
                if why is None and (shared := [step.node for step in plan.steps if step.node in planned]):
                    first = planned[shared[0]]
                    why = f"waits for the start of {first}, which starts {_names(shared)} too"
            if why is not None:
                self.waiting[leaf] = why
                continue
            assert plan is not None
            if not plan.steps:
                continue
            down = [step.node for step in plan.steps]
            reason = f"wanted by {_names(services)} ({wants[services[0]].reason}); down: {_names(down)}"
            starts.append(Start(leaf, plan, reason, services))
            for step in plan.steps:
                planned[step.node] = leaf
                self.started[step.node] = leaf
                text = reason if step.node == leaf else f"{step.reason} (start of {leaf})"
                self.node_log[step.node] = Decision(f"node {step.node}", "start", text)
        return starts

    def _start_waits(self, leaf: str, chain: Collection[str]) -> str | None:
        """Why a start touching ``chain`` must not be sent now, if it must not."""
        memory, now = self.memory, self.now
        ordered = sorted(chain, key=self.index.position.__getitem__)
        for node in ordered:
            if node in memory.running:
                return f"{memory.running[node]} running" + ("" if node == leaf else f" on {node}")
        for node in ordered:
            booting = memory.booting.get(node)
            if booting is None or node in self.up:
                continue
            timeout = self.fleet.nodes[node].timeouts.start
            elapsed = (now - booting.since).total_seconds()
            if elapsed < timeout:
                # Moments, not counters: a reason that does not change is journaled once.
                until = booting.since + timedelta(seconds=timeout)
                return (
                    f"{node} booting since {_clock(booting.since, now)} ({booting.step}), "
                    f"given until {_clock(until, now)} (timeouts.start {_span(timeout)})"
                )
        for node in ordered:
            if node in self.unknown:
                where = "" if node == leaf else f" of {node}"
                return f"power{where} unknown ({self.unknown[node]})"
        for node in ordered:
            backoff = memory.backoff.get(node)
            if backoff is not None and backoff.until > now:
                where = "" if node == leaf else f" of {node}"
                return (
                    f"{_plural(backoff.failures, 'failed start')}{where}, next try at {_clock(backoff.until, now)} "
                    f"(last error: {backoff.last_error})"
                )
        return None

    # ---- stops

    def stops(self, wants: Mapping[str, _Want]) -> list[Stop]:
        index = self.index
        candidates = {name for name in index.used if name in self.up and name not in self.needed}
        if not candidates:
            return []
        in_use = self._in_use()
        tops = [name for name in candidates if self.fleet.nodes[name].parent not in candidates]
        todo = sorted(tops, key=lambda n: (-index.stop_rank[n], index.position[n]))
        stops: list[Stop] = []
        while todo:
            root = todo.pop(0)
            if root in self.stopping or root in self.judged:
                continue  # already in a stop, or kept or proposed by one: judged once per tick
            stop, descend = self._stop(root, in_use, wants)
            if stop is not None:
                stops.append(stop)
            if descend:
                below = [c for c in index.children.get(root, ()) if c in candidates and c not in self.stopping]
                todo = sorted([*todo, *below], key=lambda n: (-index.stop_rank[n], index.position[n]))
        return stops

    def _in_use(self) -> dict[str, str]:
        """Why a live session, an unreadable activity or a wanted service keeps each node: the
        planner then keeps it out of any shutdown, dependencies re-evaluated included."""
        in_use: dict[str, list[str]] = {}
        for name, info in self.index.services.items():
            activity = self.observed.activity.get(name)
            if activity is None or not isinstance(activity, Activity):
                why = f"activity of {name} unknown (not observed)"
            elif activity.in_flight is None or activity.in_flight < 0:
                why = f"activity of {name} unknown ({activity.detail})"
            elif activity.in_flight > 0:
                why = f"{_plural(activity.in_flight, 'request')} in flight on {name}"
            else:
                continue
            for leaf in info.leaves:
                in_use.setdefault(leaf, []).append(why)
        for node, users in self.needed.items():
            in_use.setdefault(node, []).append(f"needed by {_names(users)}")
        return {node: "; ".join(whys) for node, whys in in_use.items()}

    def _stop(self, root: str, in_use: Mapping[str, str], wants: Mapping[str, _Want]) -> tuple[Stop | None, bool]:
        """The stop of ``root``, or why not (logged); and whether its children are evaluated on their own."""
        fleet, memory = self.fleet, self.memory
        subject = f"node {root}"
        if root in memory.running:
            self._hold(root, Decision(subject, "wait", f"{memory.running[root]} running"))
            return None, False
        if root in self.index.infrastructure:
            self._hold(root, Decision(subject, "keep", f"not stopped: {self.index.infrastructure[root]}"))
            return None, True
        if fleet.confirm_shutdown(root):
            why = f"proposed: nobody needs {root}; it asks for confirmation (confirm_shutdown)"
            self._hold(root, Decision(subject, "leave", why))
            return None, True
        unmanaged = [n for n in self._below(root) if n in self.up and n not in self.index.used]
        if unmanaged:
            why = f"not stopped: it hosts {_names(unmanaged)}, which no service uses"
            self._hold(root, Decision(subject, "keep", why))
            return None, True
        # wanted: guests wanted services need, running or not, keep their cluster's quorum.
        plan = graph.stop_plan(fleet, root, self.up, in_use, unknown=self.unknown, wanted=self.needed.keys())
        if plan.blocked:
            self._hold(root, Decision(subject, "keep", f"not stopped: {'; '.join(plan.blocked)}"))
            return None, True
        steps = [step.node for step in plan.steps]
        if not steps:
            return None, True
        busy = [n for n in steps if n in memory.running]
        if busy:
            why = f"{memory.running[busy[0]]} running on {busy[0]}"
            self._hold(root, Decision(subject, "wait", why))
            return None, True
        shared = [n for n in steps if n in self.stopping]
        if shared:
            why = f"waits for the stop of {self.stopping[shared[0]]}, which stops {_names(shared)} too"
            self._hold(root, Decision(subject, "wait", why))
            return None, False
        users = {s for n in steps for s in self.index.users.get(n, ())}
        services = tuple(s for s in self.index.services if s in users)
        whys = "; ".join(f"{s}: {wants[s].reason}" for s in services)
        reason = f"nobody needs it ({whys})" if whys else "nobody needs it"
        for step in plan.steps:
            self.stopping[step.node] = root
            text = reason if step.node == root else f"{step.reason} (stop of {root})"
            self.node_log[step.node] = Decision(f"node {step.node}", "stop", text)
        for note in [*plan.kept, *plan.proposed]:
            self.judged.add(note.node)
        for note in plan.kept:
            if note.node not in self.stopping and note.node not in self.needed:
                self._hold(note.node, Decision(f"node {note.node}", "keep", f"not stopped: {note.reason}"))
        for note in plan.proposed:
            if note.node not in self.stopping:
                why = f"proposed: nobody needs {note.node}; it asks for confirmation (confirm_shutdown)"
                self._hold(note.node, Decision(f"node {note.node}", "leave", why))
        return Stop(root, plan, reason, services, dict(in_use)), False

    def _hold(self, node: str, decision: Decision) -> None:
        if node not in self.stopping:
            self.node_log[node] = decision
            self.held[node] = decision.reason

    def _below(self, root: str) -> list[str]:
        found: list[str] = []
        todo = list(self.index.children.get(root, ()))
        while todo:
            name = todo.pop()
            found.append(name)
            todo.extend(self.index.children.get(name, ()))
        return sorted(found, key=self.index.position.__getitem__)

    # ---- pools

    def pools(self) -> tuple[list[Pool], list[Decision]]:
        pools: list[Pool] = []
        log: list[Decision] = []
        tunnels, health = self.observed.tunnels, self.observed.health
        for name, info in self.index.services.items():
            excluded: dict[str, str] = {}
            for site, entries in info.site_backends.items():
                tunnel = tunnels.get(site)
                if tunnel is not None and tunnel.state == "down":
                    excluded[site] = f"{site}: WireGuard tunnel down ({tunnel.detail})"
                    continue
                readings = [(label, health.get((name, i))) for i, label in entries]
                if all(reading is not None and reading.state == "down" for _, reading in readings):
                    details = "; ".join(f"{label} {reading.detail}" for label, reading in readings if reading)
                    excluded[site] = (
                        f"{site}: {'every backend' if len(entries) > 1 else 'its backend'} down ({details})"
                    )
            everything = len(excluded) == len(info.site_backends) and excluded
            chosen = () if everything else tuple(sorted(excluded))
            if chosen == tuple(sorted(self.memory.pools.get(name, ()))):
                continue
            reasons = tuple(excluded[site] for site in chosen)
            pools.append(Pool(name, chosen, reasons))
            before = set(self.memory.pools.get(name, ()))
            words = []
            if chosen:
                words.append(f"leave out {'; '.join(reasons)}")
            if back := sorted(before - set(chosen)):
                words.append(f"back in: {_names(back)}")
            if everything:
                words.append(
                    f"every site looks down ({'; '.join(excluded.values())}): the pool keeps them all, "
                    "Caddy's own health checks answer"
                )
            log.append(Decision(f"route {name}", "route", "; ".join(words)))
        return pools, log

    # ---- the log

    def service_decision(self, name: str, want: _Want) -> Decision:
        subject = f"service {name}"
        info = self.index.services[name]
        if want.keep:
            starting = [leaf for leaf in want.start if leaf in self.started]
            if starting:
                return Decision(subject, "start", f"{want.reason}; starting {_names(starting)}")
            waiting = [leaf for leaf in want.start if leaf in self.waiting]
            if waiting:
                whys = "; ".join(f"{leaf}: {self.waiting[leaf]}" for leaf in waiting)
                return Decision(subject, "wait", f"{want.reason}; {whys}")
            return Decision(subject, "keep", want.reason)
        stopping = [leaf for leaf in info.leaves if leaf in self.stopping]
        if stopping:
            return Decision(subject, "stop", f"{want.reason}; stopping {_names(stopping)}")
        running = [leaf for leaf in info.leaves if leaf in self.up or leaf in self.unknown]
        if running:
            held = "; ".join(
                f"{leaf}: {self.held[leaf] if leaf in self.held else self._kept_why(leaf)}" for leaf in running
            )
            return Decision(subject, "keep", f"{want.reason}; {held}")
        return Decision(subject, "leave", want.reason)

    def _kept_why(self, node: str) -> str:
        if node in self.needed:
            return f"needed by {_names(self.needed[node])}"
        if node in self.unknown:
            return f"not stopped: power unknown ({self.unknown[node]})"
        holder = next((a for a in self.fleet.ancestors(node) if a in self.held), None)
        if holder is not None:
            return f"on {holder}: {self.held[holder]}"
        return "not stopped"

    def node_decision(self, name: str) -> Decision:
        if name in self.node_log:
            return self.node_log[name]
        subject = f"node {name}"
        if name not in self.index.used:
            return Decision(subject, "leave", "no service uses it")
        if name in self.needed:
            users = _names(self.needed[name])
            if name in self.up:
                return Decision(subject, "keep", f"needed by {users}")
            leaf = next((leaf for leaf in self.waiting if name in self.index.closure[leaf]), None)
            if leaf is not None:
                why = self.waiting[leaf]
                return Decision(subject, "wait", why if leaf == name else f"needed by {users}; {leaf}: {why}")
            if name in self.unknown:
                return Decision(subject, "wait", f"needed by {users}; power unknown ({self.unknown[name]})")
            return Decision(subject, "leave", f"down; {users}: kept while it runs, started only on a wake request")
        if name in self.unknown:
            return Decision(subject, "keep", f"not stopped: power unknown ({self.unknown[name]})")
        if name not in self.up:
            return Decision(subject, "leave", "down; no wanted service needs it")
        return Decision(subject, "keep", f"not stopped: {self._kept_why(name)}")


__all__ = ["DecideSettings", "Decision", "Decisions", "Pool", "Start", "Stop", "Verdict", "decide"]
