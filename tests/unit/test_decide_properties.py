"""Property-based tests of the reconciler's decision core (wakegrid.decide).

- scheduled services follow :func:`wakegrid.policy.window_open` over a year of moments in several
  zones, DST changes and windows crossing midnight included;
- on random valid fleets with services, and random observations (unknown and missing keys
  included, not even physically consistent) and memory, ``decide`` never raises, never stops a
  node that is not up, infrastructure, or needed by a service that is wanted or in use, never
  starts through an unknown, running or booting node, never empties a pool, and logs every
  service and node once;
- a naive datetime anywhere in the inputs is a clear ValueError.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_graph_properties import build, fleet_data  # the valid-fleet generator, next to this file

from wakegrid import graph
from wakegrid.decide import DecideSettings, Decisions, decide
from wakegrid.model import WEEKDAYS, Fleet
from wakegrid.observe.power import PowerState
from wakegrid.policy import window_open
from wakegrid.state import Activity, Backoff, Booting, Health, Memory, Observed, Tunnel, WakeRequest

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu", "UTC", "America/Santiago"]
YEAR_START = datetime(2026, 1, 1, tzinfo=UTC)


def _changes(zone: str) -> list[datetime]:
    """The moments of 2026 when the zone's UTC offset changes (found hour by hour, then minute by minute)."""
    tz = ZoneInfo(zone)
    found = []
    for hour in range(366 * 24):
        at = YEAR_START + timedelta(hours=hour)
        if at.astimezone(tz).utcoffset() != (at + timedelta(hours=1)).astimezone(tz).utcoffset():
            minute = next(
                m for m in range(1, 61) if (at + timedelta(minutes=m)).astimezone(tz).utcoffset() != at.utcoffset()
            )
            found.append(at + timedelta(minutes=minute))
    return found


DST_CHANGES = [at for zone in ZONES for at in _changes(zone)]
MOMENTS = st.one_of(
    st.integers(0, 365 * 24 * 60 - 1).map(lambda minute: YEAR_START + timedelta(minutes=minute)),
    st.tuples(st.sampled_from(DST_CHANGES), st.integers(-180, 180)).map(lambda p: p[0] + timedelta(minutes=p[1])),
)
TIMES = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))
DAYS = st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True)


@st.composite
def windows(draw) -> list[dict[str, Any]]:
    found = []
    for _ in range(draw(st.integers(1, 3))):
        start, end = draw(TIMES), draw(st.one_of(TIMES, st.just("24:00")))
        if start != end:
            found.append({"days": draw(DAYS), "start": start, "end": end})
    return found or [{"days": ["mon"], "start": "22:00", "end": "02:00"}]


def scheduled_fleet(zone: str, chosen: list[dict[str, Any]]) -> Fleet:
    return build(
        {
            "edge": {
                "host": "vps",
                "domain": "example.net",
                "wireguard": {"address": "10.200.0.1/24", "endpoint": "v:1"},
            },
            "sites": {"home": {"gateway": "gw", "wireguard": {"address": "10.200.1.1/24"}}},
            "nodes": {
                "gw": {"kind": "machine", "site": "home"},
                "box": {"kind": "machine", "site": "home", "mac": "52:54:00:00:00:01", "confirm_shutdown": False},
            },
            "services": {
                "app": {
                    "domain": "app.example.net",
                    "policy": {"mode": "scheduled", "timezone": zone, "windows": chosen},
                    "backends": [{"node": "box", "address": "10.0.0.2", "port": 80}],
                }
            },
        }
    )


@SETTINGS
@given(st.sampled_from(ZONES), windows(), MOMENTS, st.booleans())
def test_a_scheduled_service_is_wanted_exactly_while_a_window_is_open(zone, chosen, at, box_up):
    fleet = scheduled_fleet(zone, chosen)
    policy = fleet.services["app"].policy
    is_open = any(window_open(window, zone, at) for window in policy.windows or [])
    power = {"gw": PowerState("gw", "up", "ok"), "box": PowerState("box", "up" if box_up else "down", "ok")}
    observed = Observed(at=at, power=power, activity={"app": Activity(0, None, "nothing in flight")})
    decisions = decide(fleet, observed, at, Memory(started_at=at - timedelta(days=1)))
    assert decisions.wanted["app"].startswith("inside its window" if is_open else "outside its windows")
    assert decisions.wanted["app"].endswith(f"({zone})")
    assert [s.node for s in decisions.starts] == (["box"] if is_open and not box_up else [])
    assert [s.node for s in decisions.stops] == (["box"] if box_up and not is_open else [])


# --------------------------------------------------------------------------- random worlds

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
AGES = st.one_of(st.none(), st.integers(0, 3 * 3600).map(lambda s: NOW - timedelta(seconds=s)))


@st.composite
def fleets_with_services(draw) -> Fleet:
    data = draw(fleet_data(clusters=draw(st.booleans())))
    names = list(data["nodes"])
    services: dict[str, Any] = {}
    address = iter(range(1, 10_000))
    for i in range(draw(st.integers(1, 4))):
        mode = draw(st.sampled_from(["always_on", "scheduled", "on_demand"]))
        policy: dict[str, Any] = {"mode": mode}
        if mode == "scheduled":
            policy |= {"timezone": draw(st.sampled_from(ZONES)), "windows": draw(windows())}
        elif mode == "on_demand" and draw(st.booleans()):
            policy["idle_after"] = draw(st.sampled_from(["1m", "20m", "1h"]))
        backends = [
            {"node": node, "address": f"10.9.{next(address) // 250}.{next(address) % 250 + 1}", "port": 80}
            for node in draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        ]
        services[f"s{i}"] = {"domain": f"s{i}.example.net", "policy": policy, "backends": backends}
    return build({**data, "services": services})


@st.composite
def worlds(draw) -> tuple[Fleet, Observed, Memory]:
    fleet = draw(fleets_with_services())
    nodes, services = sorted(fleet.nodes), sorted(fleet.services)
    # A calm world (everything observed, little remembered) is where stops and starts happen.
    calm = draw(st.booleans())
    power = {}
    for name in nodes:
        readings = ["up", "up", "down"] if calm else ["up", "up", "down", "unknown", "missing", "odd"]
        reading = draw(st.sampled_from(readings))
        if reading != "missing":
            power[name] = PowerState(name, reading, f"{name} {reading}")  # type: ignore[arg-type]
    health = {}
    for name in services:
        for i in range(len(fleet.services[name].backends) + 1):  # one index beyond the last: stale
            reading = draw(st.sampled_from(["up", "down", "unknown", "missing"]))
            if reading != "missing":
                health[(name, i)] = Health(reading, f"backend {i} {reading}")  # type: ignore[arg-type]
    tunnels = {}
    for site in [*fleet.sites, "gone-site"]:
        reading = draw(st.sampled_from(["up", "down", "unknown", "missing"]))
        if reading != "missing":
            tunnels[site] = Tunnel(reading, f"tunnel {reading}")  # type: ignore[arg-type]
    activity = {}
    for name in [*services, "gone-service"]:
        if calm or draw(st.integers(0, 4)):
            in_flight = draw(st.sampled_from([0, 0, 0, 2] if calm else [None, 0, 0, 2, -1]))
            activity[name] = Activity(in_flight, draw(AGES), f"activity {in_flight}")
    observed = Observed(at=NOW, power=power, health=health, tunnels=tunnels, activity=activity)

    some_nodes = st.lists(st.sampled_from([*nodes, "gone-node"]), unique=True, max_size=1 if calm else 3)
    some_services = st.lists(st.sampled_from([*services, "gone-service"]), unique=True, max_size=2)
    moments = st.integers(-600, 600).map(lambda s: NOW + timedelta(seconds=s))
    memory = Memory(
        started_at=NOW - timedelta(seconds=draw(st.integers(3600 if calm else 0, 7200))),
        wake_requests={
            s: WakeRequest(s, draw(AGES) or NOW, None, "request from 10.0.0.9") for s in draw(some_services)
        },
        woken_at={s: draw(AGES) or NOW for s in draw(some_services)},
        last_activity={s: draw(AGES) or NOW for s in draw(some_services)},
        backoff={n: Backoff(draw(st.integers(1, 5)), draw(moments), "failed") for n in draw(some_nodes)},
        booting={n: Booting(draw(moments), "magic packet sent") for n in draw(some_nodes)},
        running={n: f"start #{i}" for i, n in enumerate(draw(some_nodes))},
        pools={
            s: tuple(draw(st.lists(st.sampled_from(sorted(fleet.sites)), unique=True))) for s in draw(some_services)
        },
    )
    return fleet, observed, memory


def closure(fleet: Fleet, name: str) -> set[str]:
    """A node, its dependencies (recursively) and the hosts of all of them."""
    found: set[str] = set()
    todo = [name]
    while todo:
        node = todo.pop()
        if node in found:
            continue
        found.add(node)
        todo += [*fleet.dependencies_of(node), *fleet.ancestors(node)]
    return found


def protected(fleet: Fleet, observed: Observed, memory: Memory, settings: DecideSettings) -> set[str]:
    """Nodes no stop may touch: what a service wanted by its policy, in use, or of unknown use needs."""
    found: set[str] = set()
    for name, service in fleet.services.items():
        policy = service.policy
        activity = observed.activity.get(name)
        busy = activity is None or activity.in_flight is None or activity.in_flight != 0
        if policy.mode == "always_on":
            wanted = True
        elif policy.mode == "scheduled":
            wanted = any(window_open(window, policy.timezone, NOW) for window in policy.windows or [])
        else:
            request = memory.wake_requests.get(name)
            moments = [
                activity.last_request if activity else None,
                memory.last_activity.get(name),
                memory.woken_at.get(name),
                request.at if request else None,
                memory.started_at,
            ]
            recent = NOW - max(m for m in moments if m is not None) < timedelta(
                seconds=policy.idle_after or settings.default_idle_after
            )
            # A wake request keeps asking while the service is not up; once it is, the request is
            # only activity at its time (the daemon resolves it then).
            up = any(
                (h := observed.health.get((name, i))) is not None and h.state == "up"
                for i in range(len(service.backends))
            )
            wanted = busy or recent or (request is not None and not up)
        for backend in service.backends:
            if backend.node is None:
                continue
            if wanted:
                found |= closure(fleet, backend.node)
            elif busy:
                found.add(backend.node)
    return found


def check(fleet: Fleet, observed: Observed, memory: Memory, decisions: Decisions) -> None:
    settings = DecideSettings()
    up = {n for n, state in observed.power.items() if state.power == "up"}
    keep = protected(fleet, observed, memory, settings)
    infrastructure = graph.infrastructure(fleet)
    stopped = [step.node for stop in decisions.stops for step in stop.plan.steps]
    assert len(stopped) == len(set(stopped)), "a node is in two stops"
    for stop in decisions.stops:
        assert stop.plan.runnable
        for step in stop.plan.steps:
            assert step.node in up, f"stops {step.node}, which is not up"
            assert step.node not in keep, f"stops {step.node}, which a wanted or busy service needs"
            assert step.node not in infrastructure, f"stops infrastructure {step.node}"
            assert step.node not in memory.running
    for start in decisions.starts:
        assert start.plan.runnable and start.plan.steps
        for step in start.plan.steps:
            state = observed.power.get(step.node)
            assert state is not None and state.power == "down", f"starts {step.node} through {state}"
            assert step.node not in memory.running
            booting = memory.booting.get(step.node)
            timeout = timedelta(seconds=fleet.nodes[step.node].timeouts.start)
            assert booting is None or NOW - booting.since >= timeout, f"starts {step.node} again while booting"
            backoff = memory.backoff.get(step.node)
            assert backoff is None or backoff.until <= NOW
    for pool in decisions.pools:
        service = fleet.services[pool.service]
        sites = {fleet.backend_site(b) for b in service.backends} - {None}
        assert set(pool.excluded) < sites or not pool.excluded, "a pool left empty"
        assert list(pool.excluded) == sorted(pool.excluded) and len(pool.reasons) == len(pool.excluded)
        assert pool.excluded != tuple(memory.pools.get(pool.service, ()))
        for site in pool.excluded:
            tunnel = observed.tunnels.get(site)
            readings = [observed.health.get((pool.service, i)) for i, b in enumerate(service.backends)]
            readings = [r for r, b in zip(readings, service.backends, strict=True) if fleet.backend_site(b) == site]
            assert (tunnel is not None and tunnel.state == "down") or all(r and r.state == "down" for r in readings)
    subjects = [d.subject for d in decisions.log]
    for name in fleet.services:
        assert subjects.count(f"service {name}") == 1
    for name in fleet.nodes:
        assert subjects.count(f"node {name}") == 1
    assert all(d.reason for d in decisions.log), "a decision without a reason"


@SETTINGS
@given(worlds())
def test_random_worlds_never_stop_what_is_unknown_needed_or_busy(world):
    fleet, observed, memory = world
    decisions = decide(fleet, observed, NOW, memory)
    check(fleet, observed, memory, decisions)
    assert decide(fleet, observed, NOW, memory) == decisions  # pure


# --------------------------------------------------------------------------- naive datetimes


NAIVE = datetime(2026, 12, 7, 10, 0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    worlds(), st.sampled_from(["now", "at", "started", "request", "woken", "activity", "backoff", "booting", "seen"])
)
def test_a_naive_datetime_anywhere_is_a_clear_value_error(world, where):
    fleet, observed, memory = world
    now = NAIVE if where == "now" else NOW
    service, node = sorted(fleet.services)[0], sorted(fleet.nodes)[0]
    if where == "at":
        observed = Observed(NAIVE, observed.power, observed.health, observed.tunnels, observed.activity)
    elif where == "seen":
        activity = {**observed.activity, service: Activity(0, NAIVE, "x")}
        observed = Observed(NOW, observed.power, observed.health, observed.tunnels, activity)
    else:
        fields = {
            "started": {"started_at": NAIVE},
            "request": {"wake_requests": {service: WakeRequest(service, NAIVE, None, "x")}},
            "woken": {"woken_at": {service: NAIVE}},
            "activity": {"last_activity": {service: NAIVE}},
            "backoff": {"backoff": {node: Backoff(1, NAIVE, "x")}},
            "booting": {"booting": {node: Booting(NAIVE, "x")}},
        }.get(where, {})
        memory = Memory(**{**memory.__dict__, **fields})
    try:
        decide(fleet, observed, now, memory)
    except ValueError as exc:
        assert "is a naive datetime; give an aware one (datetime.now(UTC))" in str(exc)
        assert str(exc).startswith("decide: ")
    else:
        raise AssertionError(f"a naive datetime at {where} was accepted")
