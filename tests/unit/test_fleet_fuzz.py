"""Fuzzing the fleet model with broken fleets: it answers with a fleet or a FleetError, quickly.

The property tests of the planner draw only valid fleets. Here a valid fleet (the planner's
generator, plus services) is mutated the way people and editors break files: a node dropped or
renamed (unicode included), a parent or a dependency pointed anywhere (itself, unknown names,
sites), cycles, values of the wrong type, huge numbers and strings, then the YAML text itself
(duplicated keys, truncation, tabs and stray characters). Whatever comes out, ``parse_fleet``
returns a Fleet or raises FleetError, within a second of CPU, and never anything else (a
traceback or a hang in ``wakegrid validate`` and in ``ansible-inventory``).
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_graph_properties import fleet_data  # the valid-fleet generator, next to this file

from wakegrid.model import Fleet, FleetError, parse_fleet

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
TIME_LIMIT = 1.0  # seconds of CPU: a correctness bound (a hang or a quadratic walk), not a benchmark


@contextmanager
def cpu_time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block once it has used ``seconds`` of CPU (unlike wall time, not fooled by a busy machine)."""

    def expire(signum, frame):
        raise TimeoutError(f"parse_fleet used more than {seconds} s of CPU")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def check(text: str) -> Fleet | FleetError:
    """The property: a Fleet or a FleetError (every problem with a reason), in bounded time."""
    with cpu_time_limit(TIME_LIMIT):
        try:
            return parse_fleet(text, source="<fuzz>")
        except FleetError as exc:
            assert exc.problems and all(p.reason for p in exc.problems)
            assert str(exc)  # renders
            return exc


# --------------------------------------------------------------------------- valid fleets with services


@st.composite
def valid_fleets(draw) -> dict[str, Any]:
    data = draw(fleet_data())
    names = list(data["nodes"])
    for index, name in enumerate(names):
        if draw(st.booleans()):
            data["nodes"][name]["address"] = f"10.0.{index // 250}.{index % 250 + 1}"
    services = {}
    for index in range(draw(st.integers(0, 3))):
        backends = []
        for port in range(draw(st.integers(1, 3))):
            backend: dict[str, Any] = {"port": 8000 + port}
            shape = draw(st.sampled_from(["node", "site", "both"]))
            if shape in ("node", "both"):
                backend["node"] = draw(st.sampled_from(names))
            if shape == "site":
                backend["site"] = draw(st.sampled_from(list(data["sites"])))
            elif shape == "both":
                top = backend["node"]
                while "parent" in data["nodes"][top]:
                    top = data["nodes"][top]["parent"]
                backend["site"] = data["nodes"][top]["site"]
            if shape == "site" or "address" not in data["nodes"][backend["node"]] or draw(st.booleans()):
                backend["address"] = f"10.9.{index}.{port + 1}"
            backends.append(backend)
        policy = draw(
            st.sampled_from(
                [
                    {"mode": "always_on"},
                    {"mode": "on_demand", "idle_after": "20m"},
                    {
                        "mode": "scheduled",
                        "timezone": "Europe/Paris",
                        "windows": [{"days": "fri", "start": "22:00", "end": "02:00"}],
                    },
                ]
            )
        )
        services[f"svc{index}"] = {"domain": f"s{index}.example.net", "policy": policy, "backends": backends}
    data["services"] = services
    return data


# --------------------------------------------------------------------------- mutations

UNICODE_NAMES = st.text(min_size=1, max_size=12)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.just(10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.just("x" * 1_000_000),
    st.just("nas" * 300_000),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just({"env": ""}),
)


def _paths(value: Any, path: tuple = ()) -> Iterator[tuple]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*path, index))


def _set(data: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    if isinstance(data, dict) or (isinstance(data, list) and isinstance(path[-1], int)):
        data[path[-1]] = value  # else an earlier mutation replaced the container by junk


@st.composite
def mutated(draw, fleet: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(fleet)
    for _ in range(draw(st.integers(1, 4))):
        nodes, dependencies = data.get("nodes"), data.get("dependencies")
        if not isinstance(nodes, dict) or not isinstance(dependencies, dict) or not nodes:
            break  # an earlier mutation replaced them: the junk is the test
        names = list(nodes)
        sites = list(data["sites"]) if isinstance(data.get("sites"), dict) else []
        anywhere = st.one_of(st.sampled_from([*names, *sites, "ghost"]), UNICODE_NAMES)
        kind = draw(
            st.sampled_from(["drop", "rename", "parent", "dependency", "hosting-cycle", "dependency-cycle", "junk"])
        )
        if kind == "drop":
            del nodes[draw(st.sampled_from(names))]
        elif kind == "rename":
            old = draw(st.sampled_from(names))
            nodes[draw(UNICODE_NAMES)] = nodes.pop(old)
        elif kind == "parent":
            _set(nodes, (draw(st.sampled_from(names)), "parent"), draw(anywhere))
        elif kind == "dependency":
            dependencies[draw(anywhere)] = draw(st.lists(anywhere, max_size=3))
        elif kind == "hosting-cycle":
            ring = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
            for a, b in zip(ring, [*ring[1:], ring[0]], strict=True):
                _set(nodes, (a, "parent"), b)
        elif kind == "dependency-cycle" and len(names) >= 2:
            ring = draw(st.lists(st.sampled_from(names), min_size=2, max_size=4, unique=True))
            for a, b in zip(ring, [*ring[1:], ring[0]], strict=True):
                dependencies[a] = [*dependencies.get(a, []), b]
        elif kind == "junk":
            _set(data, draw(st.sampled_from([p for p in _paths(data) if p])), draw(JUNK))
    return data


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@st.composite
def broken_texts(draw) -> str:
    """Text-level damage: a duplicated line (a duplicate key), truncation, stray characters."""
    text = _dump(draw(valid_fleets()))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        damage = draw(st.sampled_from(["duplicate-line", "truncate", "insert"]))
        if damage == "duplicate-line":
            index = draw(st.integers(0, len(lines) - 1))
            lines.insert(index, lines[index])
        else:
            text = "".join(lines)
            at = draw(st.integers(0, len(text)))
            if damage == "truncate":
                text = text[:at]
            else:
                junk = st.sampled_from(["\t", ":", "- ", "{", "}", "[", "&a ", "*a", "!!python/object ", "%", "'", '"'])
                text = text[:at] + draw(st.one_of(junk, st.text(max_size=4))) + text[at:]
            lines = text.splitlines(keepends=True) or [""]
    return "".join(lines)


# --------------------------------------------------------------------------- the properties


@SETTINGS
@given(valid_fleets())
def test_the_generated_fleets_are_valid(data):
    assert isinstance(check(_dump(data)), Fleet)


@SETTINGS
@given(st.data())
@example(None)  # the pinned shape below, through the same property
def test_a_mutated_fleet_is_a_fleet_or_a_fleet_error(data):
    check(_dump(PINNED if data is None else data.draw(mutated(data.draw(valid_fleets())))))


@SETTINGS
@given(broken_texts())
def test_a_damaged_file_is_a_fleet_or_a_fleet_error(text):
    check(text)


# A hosting cycle and a backend naming both node and site: validation walked the cycle forever.
PINNED = {
    "edge": {"host": "vps", "domain": "example.net", "wireguard": {"address": "10.200.0.1/24", "endpoint": "v:1"}},
    "sites": {"home": {"gateway": "gw", "wireguard": {"address": "10.200.1.1/24"}}},
    "nodes": {
        "gw": {"kind": "machine", "site": "home"},
        "a": {"kind": "vm", "parent": "b", "vmid": 100},
        "b": {"kind": "vm", "parent": "a", "vmid": 101},
    },
    "services": {"web": {"domain": "w.example.net", "backends": [{"node": "a", "site": "home", "port": 80}]}},
}


def _long_chain(count: int, link: str) -> dict[str, Any]:
    data = copy.deepcopy(PINNED)
    nodes = {"gw": {"kind": "machine", "site": "home", "docker": {"api": "tcp://gw:2375"}}}
    dependencies: dict[str, list[str]] = {}
    for index in range(count):
        above = f"n{index - 1}" if index else "gw"
        if link == "parent":
            nodes[f"n{index}"] = {"kind": "container", "parent": above}
        else:
            nodes[f"n{index}"] = {"kind": "container", "parent": "gw"}
            dependencies[f"n{index}"] = [above]
    data["nodes"], data["dependencies"], data["services"] = nodes, dependencies, {}
    return data


@pytest.mark.parametrize("link", ["parent", "dependency"])
def test_long_chains_are_neither_deep_recursion_nor_quadratic(link):
    """5,000 nodes each hosted on (or depending on) the previous one: answered, without RecursionError."""
    text = _dump(_long_chain(5000, link))
    # 5,000 nodes: the bound scales with the size, not with its square.
    with cpu_time_limit(10 * TIME_LIMIT), suppress(FleetError):
        parse_fleet(text)
