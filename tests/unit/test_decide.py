"""The reconciler's decision core (wakegrid.decide) over the lab fleet and small variants of it.

The lab fleet (inventories/lab/lab.fleet.yml): www (always_on: gw-dijon, srv-thory), stream
(on_demand, idle_after 20m: jellyfin on pve1 depending on nas, srv-thory), sandbox (scheduled
mon-fri 08:00-19:00 Europe/Paris: container sandbox on vm-docker on pve1, srv-thory). Reasons are
part of the output: they are asserted word for word.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from wakegrid.decide import DecideSettings, Decision, Decisions, Pool, decide
from wakegrid.model import Fleet, load_fleet
from wakegrid.observe.power import PowerState
from wakegrid.state import Activity, Backoff, Booting, Health, Memory, Observed, Tunnel, WakeRequest

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
MONDAY = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # 11:00 in Paris: sandbox's window is open
SATURDAY = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)  # sandbox's window is closed
DIJON = ("gw-dijon", "nas", "pve1", "pve2", "vm-docker", "jellyfin", "sandbox")


@pytest.fixture(scope="module")
def lab() -> Fleet:
    return load_fleet(LAB_FLEET)


@pytest.fixture
def lab_data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(LAB_FLEET.read_text()))


def observe(
    fleet: Fleet,
    now: datetime,
    *,
    down: Iterable[str] = (),
    unknown: Mapping[str, str] | None = None,
    missing: Iterable[str] = (),
    health: Mapping[tuple[str, int], Health] | None = None,
    tunnels: Mapping[str, Tunnel] | None = None,
    activity: Mapping[str, Activity | None] | None = None,
    idle_since: timedelta = timedelta(hours=1),
) -> Observed:
    """Every node up unless said otherwise; every service observed with nothing in flight and
    its last request ``idle_since`` ago unless ``activity`` says otherwise (None: not observed)."""
    unknown = dict(unknown or {})
    power = {}
    for name in fleet.nodes:
        if name in missing:
            continue
        if name in unknown:
            power[name] = PowerState(name, "unknown", unknown[name])
        else:
            power[name] = PowerState(name, "down" if name in down else "up", "observed")
    seen = {name: Activity(0, now - idle_since, "nothing in flight") for name in fleet.services}
    seen.update(activity or {})
    return Observed(
        at=now,
        power=power,
        health=dict(health or {}),
        tunnels=dict(tunnels if tunnels is not None else {s: Tunnel("up", "handshake 5 s ago") for s in fleet.sites}),
        activity={name: a for name, a in seen.items() if a is not None},
    )


def memory(now: datetime, **fields: Any) -> Memory:
    return Memory(started_at=fields.pop("started_at", now - timedelta(days=1)), **fields)


def entry(decisions: Decisions, subject: str) -> Decision:
    found = [d for d in decisions.log if d.subject == subject]
    assert len(found) == 1, f"{subject}: {found}"
    return found[0]


def said(decisions: Decisions, subject: str) -> tuple[str, str]:
    d = entry(decisions, subject)
    return d.verdict, d.reason


def steps(plan) -> list[tuple[str, str]]:
    return [(step.action, step.node) for step in plan.steps]


# --------------------------------------------------------------------------- a quiet fleet


def test_a_fleet_as_wanted_needs_nothing_and_says_why_for_everything(lab):
    down = ["nas", "jellyfin", "pve2"]  # stream asleep (and pve2, which nothing uses)
    decisions = decide(lab, observe(lab, MONDAY, down=down), MONDAY, memory(MONDAY))
    assert decisions.idle
    assert decisions.at == MONDAY
    assert decisions.wanted == {
        "www": "always_on",
        "stream": "idle since 09:00:00 (last request; idle_after 20m), nothing in flight",
        "sandbox": "inside its window mon-fri 08:00-19:00 (Europe/Paris)",
    }
    assert [(d.subject, d.verdict, d.reason) for d in decisions.log] == [
        ("service www", "keep", "always_on"),
        (
            "service stream",
            "keep",
            "idle since 09:00:00 (last request; idle_after 20m), nothing in flight; srv-thory: needed by www, sandbox",
        ),
        ("service sandbox", "keep", "inside its window mon-fri 08:00-19:00 (Europe/Paris)"),
        ("node gw-dijon", "keep", "needed by www"),
        ("node nas", "leave", "down; no wanted service needs it"),
        ("node pve1", "keep", "needed by sandbox"),
        ("node pve2", "leave", "no service uses it"),
        ("node vm-docker", "keep", "needed by sandbox"),
        ("node jellyfin", "leave", "down; no wanted service needs it"),
        ("node sandbox", "keep", "needed by sandbox"),
        ("node gw-thory", "leave", "no service uses it"),
        ("node srv-thory", "keep", "needed by www, sandbox"),
    ]


# --------------------------------------------------------------------------- policies


def test_always_on_starts_a_node_that_fell(lab):
    decisions = decide(lab, observe(lab, SATURDAY, down=["srv-thory"]), SATURDAY, memory(SATURDAY))
    (start,) = decisions.starts
    assert start.node == "srv-thory"
    assert start.services == ("www",)
    assert steps(start.plan) == [("start", "srv-thory")]
    assert start.reason == "wanted by www (always_on); down: srv-thory"
    assert said(decisions, "node srv-thory") == ("start", "wanted by www (always_on); down: srv-thory")
    assert said(decisions, "service www") == ("start", "always_on; starting srv-thory")
    assert not decisions.idle


def test_scheduled_inside_its_window_starts_its_whole_chain(lab):
    down = ["pve1", "vm-docker", "sandbox", "jellyfin", "nas"]
    decisions = decide(lab, observe(lab, MONDAY, down=down), MONDAY, memory(MONDAY))
    (start,) = decisions.starts
    assert start.node == "sandbox"
    assert steps(start.plan) == [("start", "pve1"), ("start", "vm-docker"), ("start", "sandbox")]
    assert start.reason == (
        "wanted by sandbox (inside its window mon-fri 08:00-19:00 (Europe/Paris)); down: pve1, vm-docker, sandbox"
    )
    # One start per backend node: its hosts are in its plan, logged as such.
    assert said(decisions, "node pve1") == ("start", "host of vm-docker (start of sandbox)")
    assert not decisions.stops


def test_scheduled_outside_its_window_stops_its_nodes_and_proposes_the_machine(lab):
    decisions = decide(lab, observe(lab, SATURDAY, down=["nas", "jellyfin"]), SATURDAY, memory(SATURDAY))
    assert decisions.wanted["sandbox"] == "outside its windows mon-fri 08:00-19:00 (Europe/Paris)"
    (stop,) = decisions.stops
    assert stop.node == "vm-docker"
    assert steps(stop.plan) == [("stop", "sandbox"), ("stop", "vm-docker")]
    assert stop.services == ("sandbox",)
    assert stop.reason == "nobody needs it (sandbox: outside its windows mon-fri 08:00-19:00 (Europe/Paris))"
    assert said(decisions, "node sandbox") == ("stop", "hosted on vm-docker (stop of vm-docker)")
    # pve1 is a machine: confirm_shutdown is on by default, so it is only proposed.
    assert said(decisions, "node pve1") == (
        "leave",
        "proposed: nobody needs pve1; it asks for confirmation (confirm_shutdown)",
    )
    assert said(decisions, "service sandbox") == (
        "stop",
        "outside its windows mon-fri 08:00-19:00 (Europe/Paris); stopping sandbox",
    )
    # srv-thory is shared: www (always_on) still wants it.
    assert said(decisions, "node srv-thory") == ("keep", "needed by www")


def test_scheduled_window_crossing_midnight_and_named_with_its_timezone(lab_data, build_fleet):
    lab_data["services"]["sandbox"]["policy"] = {
        "mode": "scheduled",
        "timezone": "America/New_York",
        "windows": [{"days": ["fri", "sat"], "start": "22:00", "end": "02:00"}],
    }
    fleet = build_fleet(lab_data)
    sunday_1am_new_york = datetime(2026, 12, 6, 6, 0, tzinfo=UTC)
    decisions = decide(fleet, observe(fleet, sunday_1am_new_york), sunday_1am_new_york, memory(sunday_1am_new_york))
    assert decisions.wanted["sandbox"] == "inside its window fri,sat 22:00-02:00 (America/New_York)"
    sunday_2am_new_york = sunday_1am_new_york + timedelta(hours=1)
    decisions = decide(fleet, observe(fleet, sunday_2am_new_york), sunday_2am_new_york, memory(sunday_2am_new_york))
    assert decisions.wanted["sandbox"] == "outside its windows fri,sat 22:00-02:00 (America/New_York)"


def test_on_demand_idle_for_its_idle_after_is_stopped_along_its_chain(lab):
    decisions = decide(lab, observe(lab, MONDAY, idle_since=timedelta(minutes=21)), MONDAY, memory(MONDAY))
    assert decisions.wanted["stream"] == "idle since 09:39:00 (last request; idle_after 20m), nothing in flight"
    (stop,) = decisions.stops
    assert stop.node == "jellyfin"
    assert steps(stop.plan) == [("stop", "jellyfin")]
    assert stop.services == ("stream",)
    assert (
        stop.reason == "nobody needs it (stream: idle since 09:39:00 (last request; idle_after 20m), nothing in flight)"
    )
    # nas, freed, asks for confirmation; pve1 still hosts the scheduled sandbox.
    assert said(decisions, "node nas") == (
        "leave",
        "proposed: nobody needs nas; it asks for confirmation (confirm_shutdown)",
    )
    assert said(decisions, "node pve1") == ("keep", "needed by sandbox")


def test_on_demand_idle_timer_counts_from_the_latest_moment_known(lab):
    now = MONDAY
    cases = [
        ({}, {}, "kept awake: last request at 09:50:00 (idle_after 20m: until 10:10:00)"),
        ({"last_activity": {"stream": now - timedelta(minutes=5)}}, {}, "kept awake: last activity at 09:55:00"),
        ({"woken_at": {"stream": now - timedelta(minutes=3)}}, {}, "kept awake: woken at 09:57:00"),
        ({}, {"started_at": now - timedelta(minutes=2)}, "kept awake: daemon started at 09:58:00"),
    ]
    for fields, start, expected in cases:
        observed = observe(lab, now, idle_since=timedelta(minutes=10))
        decisions = decide(lab, observed, now, memory(now, **start, **fields))
        assert decisions.wanted["stream"].startswith(expected), decisions.wanted["stream"]
        assert not decisions.stops


def test_on_demand_idle_exactly_idle_after_is_idle(lab):
    decisions = decide(lab, observe(lab, MONDAY, idle_since=timedelta(minutes=20)), MONDAY, memory(MONDAY))
    assert decisions.wanted["stream"] == "idle since 09:40:00 (last request; idle_after 20m), nothing in flight"
    assert [stop.node for stop in decisions.stops] == ["jellyfin"]


def test_on_demand_without_idle_after_uses_the_settings(lab_data, build_fleet):
    lab_data["services"]["stream"]["policy"] = {"mode": "on_demand"}
    fleet = build_fleet(lab_data)
    observed = observe(fleet, MONDAY, idle_since=timedelta(minutes=30))
    assert decide(fleet, observed, MONDAY, memory(MONDAY)).wanted["stream"] == (
        "idle since 09:30:00 (last request; idle_after 20m), nothing in flight"
    )
    later = decide(fleet, observed, MONDAY, memory(MONDAY), DecideSettings(default_idle_after=3600))
    assert later.wanted["stream"] == "kept awake: last request at 09:30:00 (idle_after 1h: until 10:30:00)"
    assert not later.stops


def test_recent_activity_keeps_an_on_demand_service_but_wakes_nothing(lab):
    # The daemon just started: no idle timer runs from before it, and no wake storm either.
    observed = observe(lab, MONDAY, down=["nas", "jellyfin"])
    decisions = decide(lab, observed, MONDAY, memory(MONDAY, started_at=MONDAY - timedelta(seconds=30)))
    assert decisions.wanted["stream"] == "kept awake: daemon started at 09:59:30 (idle_after 20m: until 10:19:30)"
    assert not decisions.starts
    assert said(decisions, "node jellyfin") == (
        "leave",
        "down; stream: kept while it runs, started only on a wake request",
    )


def test_a_wake_request_starts_the_first_site_in_failover_order(lab):
    request = WakeRequest("stream", MONDAY - timedelta(seconds=2), "10.231.255.10", "request from 10.231.255.10")
    observed = observe(lab, SATURDAY, down=["nas", "pve1", "vm-docker", "jellyfin", "sandbox", "pve2"])
    decisions = decide(lab, observed, SATURDAY, memory(SATURDAY, wake_requests={"stream": request}))
    assert decisions.wanted["stream"] == "waking: request from 10.231.255.10 at 2026-12-07 09:59:58"
    (start,) = decisions.starts
    assert start.node == "jellyfin"
    assert start.services == ("stream",)
    assert steps(start.plan) == [("start", "nas"), ("start", "pve1"), ("start", "jellyfin")]
    assert start.reason == (
        "wanted by stream (waking: request from 10.231.255.10 at 2026-12-07 09:59:58); down: nas, pve1, jellyfin"
    )


def test_a_wake_request_goes_to_the_next_site_when_the_first_tunnel_is_down(lab):
    request = WakeRequest("stream", SATURDAY, None, "POST /api/wake by admin")
    tunnels = {"dijon": Tunnel("down", "no handshake for 212 s (stale after 180 s)"), "thory": Tunnel("up", "ok")}
    observed = observe(lab, SATURDAY, down=["nas", "jellyfin", "srv-thory"], tunnels=tunnels)
    decisions = decide(lab, observed, SATURDAY, memory(SATURDAY, wake_requests={"stream": request}))
    assert [(s.node, s.services) for s in decisions.starts] == [("srv-thory", ("www", "stream"))]


def test_a_wake_request_for_a_service_already_up_counts_as_activity(lab):
    request = WakeRequest("stream", MONDAY - timedelta(minutes=4), None, "POST /api/wake by admin")
    health = {("stream", 0): Health("up", "200 in 3 ms")}
    observed = observe(lab, MONDAY, health=health)
    decisions = decide(lab, observed, MONDAY, memory(MONDAY, wake_requests={"stream": request}))
    assert decisions.wanted["stream"] == "kept awake: wake requested at 09:56:00 (idle_after 20m: until 10:16:00)"
    assert not decisions.starts and not decisions.stops


# --------------------------------------------------------------------------- never stopped


def test_never_stopped_while_a_request_is_in_flight(lab):
    observed = observe(lab, MONDAY, activity={"stream": Activity(2, MONDAY - timedelta(hours=3), "2 in flight")})
    decisions = decide(lab, observed, MONDAY, memory(MONDAY))
    assert decisions.wanted["stream"] == "kept awake: 2 requests in flight"
    assert said(decisions, "service stream") == ("keep", "kept awake: 2 requests in flight")
    assert said(decisions, "node jellyfin") == ("keep", "needed by stream")
    assert decisions.idle


def test_a_scheduled_service_outside_its_window_is_not_stopped_under_a_live_request(lab):
    busy = {"sandbox": Activity(1, SATURDAY, "1 in flight")}
    decisions = decide(lab, observe(lab, SATURDAY, down=["nas", "jellyfin"], activity=busy), SATURDAY, memory(SATURDAY))
    assert not decisions.stops
    assert said(decisions, "node vm-docker") == (
        "keep",
        "not stopped: sandbox is in use: 1 request in flight on sandbox",
    )
    assert said(decisions, "node sandbox") == (
        "keep",
        "not stopped: sandbox is in use: 1 request in flight on sandbox",
    )
    assert said(decisions, "service sandbox") == (
        "keep",
        "outside its windows mon-fri 08:00-19:00 (Europe/Paris); "
        "sandbox: not stopped: sandbox is in use: 1 request in flight on sandbox; srv-thory: needed by www",
    )


@pytest.mark.parametrize(
    ("activity", "reason"),
    [
        (None, "not stopped: activity unknown (not observed)"),
        (Activity(None, None, "Caddy metrics unreadable: connection refused"), None),
    ],
)
def test_never_stopped_while_its_activity_is_unknown(lab, activity, reason):
    observed = observe(lab, MONDAY, activity={"stream": activity})
    decisions = decide(lab, observed, MONDAY, memory(MONDAY))
    expected = reason or "not stopped: activity unknown (Caddy metrics unreadable: connection refused)"
    assert decisions.wanted["stream"] == expected
    assert said(decisions, "service stream") == ("keep", expected)
    assert decisions.idle


def test_a_scheduled_service_with_unknown_activity_is_not_stopped(lab):
    observed = observe(
        lab, SATURDAY, down=["nas", "jellyfin"], activity={"sandbox": Activity(None, None, "no metrics")}
    )
    decisions = decide(lab, observed, SATURDAY, memory(SATURDAY))
    assert not decisions.stops
    assert said(decisions, "node sandbox") == (
        "keep",
        "not stopped: sandbox is in use: activity of sandbox unknown (no metrics)",
    )


def test_never_stops_a_node_whose_power_is_unknown(lab):
    unknown = {"jellyfin": "Proxmox API of pve1 timed out"}
    decisions = decide(lab, observe(lab, MONDAY, unknown=unknown), MONDAY, memory(MONDAY))
    assert not decisions.stops
    assert said(decisions, "node jellyfin") == ("keep", "not stopped: power unknown (Proxmox API of pve1 timed out)")
    assert said(decisions, "service stream") == (
        "keep",
        "idle since 09:00:00 (last request; idle_after 20m), nothing in flight; "
        "jellyfin: not stopped: power unknown (Proxmox API of pve1 timed out); srv-thory: needed by www, sandbox",
    )


def test_a_node_not_observed_is_unknown_and_so_is_what_it_hosts(lab):
    down = ["jellyfin", "vm-docker", "sandbox"]
    decisions = decide(lab, observe(lab, SATURDAY, down=down, missing=["pve1"]), SATURDAY, memory(SATURDAY))
    assert not decisions.stops
    assert said(decisions, "node pve1") == ("keep", "not stopped: power unknown (not observed)")
    assert said(decisions, "node vm-docker") == ("keep", "not stopped: power unknown (its host pve1 is unknown)")


def test_never_stops_what_an_unknown_dependant_may_need(lab_data, build_fleet):
    lab_data["nodes"]["nas"]["confirm_shutdown"] = False
    fleet = build_fleet(lab_data)
    unknown = {"jellyfin": "Proxmox API of pve1 timed out"}
    decisions = decide(fleet, observe(fleet, MONDAY, unknown=unknown), MONDAY, memory(MONDAY))
    assert not decisions.stops
    assert said(decisions, "node nas") == (
        "keep",
        "not stopped: nas may still be needed by jellyfin: power unknown (Proxmox API of pve1 timed out)",
    )


def test_never_stops_what_an_active_dependant_needs(lab_data, build_fleet):
    # photos is no service's node but runs, and depends on nas.
    lab_data["nodes"]["nas"]["confirm_shutdown"] = False
    lab_data["nodes"]["photos"] = {"kind": "lxc", "parent": "pve1", "vmid": 202}
    lab_data["dependencies"]["photos"] = ["nas"]
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, MONDAY), MONDAY, memory(MONDAY))
    assert [steps(stop.plan) for stop in decisions.stops] == [[("stop", "jellyfin")]]
    assert said(decisions, "node nas") == (
        "keep",
        "not stopped: still needed by photos",  # judged by jellyfin's shutdown, which frees it
    )
    assert said(decisions, "node photos") == ("leave", "no service uses it")


def test_a_freed_dependency_without_confirmation_stops_with_its_dependant(lab_data, build_fleet):
    lab_data["nodes"]["nas"]["confirm_shutdown"] = False
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, MONDAY), MONDAY, memory(MONDAY))
    (stop,) = decisions.stops
    assert steps(stop.plan) == [("stop", "jellyfin"), ("stop", "nas")]
    assert said(decisions, "node nas") == (
        "stop",
        "no active dependant left (was needed by jellyfin) (stop of jellyfin)",
    )


def test_a_node_a_wanted_service_needs_is_never_stopped_as_a_freed_dependency(lab_data, build_fleet):
    # nas serves files for an always_on service too: stopping jellyfin must not take it.
    lab_data["nodes"]["nas"]["confirm_shutdown"] = False
    lab_data["services"]["files"] = {
        "domain": "files.lab.wakegrid.test",
        "policy": {"mode": "always_on"},
        "backends": [{"node": "nas", "port": 445}],
    }
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, MONDAY), MONDAY, memory(MONDAY))
    (stop,) = decisions.stops
    assert steps(stop.plan) == [("stop", "jellyfin")]
    assert said(decisions, "node nas") == ("keep", "needed by files")
    assert [note.reason for note in stop.plan.kept] == ["nas is in use: needed by files"]


def test_infrastructure_is_never_stopped(lab_data, build_fleet):
    lab_data["services"]["www"]["policy"] = {"mode": "on_demand", "idle_after": "5m"}
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, SATURDAY, down=["nas", "jellyfin"]), SATURDAY, memory(SATURDAY))
    assert "gw-dijon" not in [step.node for stop in decisions.stops for step in stop.plan.steps]
    assert said(decisions, "node gw-dijon") == (
        "keep",
        "not stopped: gw-dijon is the gateway of site dijon: its Wake-on-LAN (nas, pve1, pve2) "
        "and its WireGuard tunnel would become unreachable",
    )
    # srv-thory (no confirm_shutdown set: a machine asks for confirmation) is proposed.
    assert said(decisions, "node srv-thory") == (
        "leave",
        "proposed: nobody needs srv-thory; it asks for confirmation (confirm_shutdown)",
    )


def test_a_machine_without_confirmation_is_stopped_with_everything_it_hosts(lab_data, build_fleet):
    lab_data["nodes"]["pve1"]["confirm_shutdown"] = False
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, SATURDAY, down=["nas", "jellyfin", "pve2"]), SATURDAY, memory(SATURDAY))
    (stop,) = decisions.stops
    assert stop.node == "pve1"
    assert steps(stop.plan) == [("stop", "sandbox"), ("stop", "vm-docker"), ("stop", "pve1")]
    assert stop.services == ("stream", "sandbox")


def test_a_machine_hosting_a_running_node_no_service_uses_is_not_stopped(lab_data, build_fleet):
    lab_data["nodes"]["pve1"]["confirm_shutdown"] = False
    lab_data["nodes"]["photos"] = {"kind": "lxc", "parent": "pve1", "vmid": 202}
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, SATURDAY, down=["nas", "jellyfin", "pve2"]), SATURDAY, memory(SATURDAY))
    assert said(decisions, "node pve1") == ("keep", "not stopped: it hosts photos, which no service uses")
    # What it hosts for services is still stopped on its own.
    assert [stop.node for stop in decisions.stops] == ["vm-docker"]


def test_a_stop_waits_for_an_action_running_on_the_node(lab):
    running = {"jellyfin": "start #12"}
    decisions = decide(lab, observe(lab, MONDAY), MONDAY, memory(MONDAY, running=running))
    assert not decisions.stops
    assert said(decisions, "node jellyfin") == ("wait", "start #12 running")


# --------------------------------------------------------------------------- starts held back

WOKEN = WakeRequest("stream", SATURDAY - timedelta(minutes=1), "10.231.255.10", "request from 10.231.255.10")
ASLEEP = ["nas", "pve1", "vm-docker", "jellyfin", "sandbox", "pve2"]


def wake(lab: Fleet, *, down: Iterable[str] = ASLEEP, **fields: Any) -> Decisions:
    unknown = fields.pop("unknown", None)
    observed = observe(lab, SATURDAY, down=down, unknown=unknown)
    return decide(lab, observed, SATURDAY, memory(SATURDAY, wake_requests={"stream": WOKEN}, **fields))


def test_a_start_waits_while_one_runs(lab):
    decisions = wake(lab, running={"jellyfin": "start #12"})
    assert not decisions.starts
    assert said(decisions, "node jellyfin") == ("wait", "start #12 running")
    decisions = wake(lab, running={"pve1": "stop #11"})
    assert said(decisions, "node jellyfin") == ("wait", "stop #11 running on pve1")
    assert said(decisions, "service stream") == (
        "wait",
        "waking: request from 10.231.255.10 at 09:59:00; jellyfin: stop #11 running on pve1",
    )


def test_a_start_waits_out_its_backoff(lab):
    backoff = {"jellyfin": Backoff(3, SATURDAY + timedelta(minutes=2, seconds=11), "pve1: task failed")}
    decisions = wake(lab, backoff=backoff)
    assert not decisions.starts
    assert said(decisions, "node jellyfin") == (
        "wait",
        "3 failed starts, next try at 10:02:11 (last error: pve1: task failed)",
    )
    over = {"jellyfin": Backoff(1, SATURDAY - timedelta(seconds=1), "pve1: task failed")}
    assert [s.node for s in wake(lab, backoff=over).starts] == ["jellyfin"]


def test_a_start_waits_for_a_machine_still_booting_within_its_timeout(lab):
    booting = {"pve1": Booting(SATURDAY - timedelta(seconds=40), "Wake-on-LAN magic packet sent from gw-dijon")}
    decisions = wake(lab, booting=booting)
    assert not decisions.starts
    assert said(decisions, "node jellyfin") == (
        "wait",
        "pve1 booting since 09:59:20 (Wake-on-LAN magic packet sent from gw-dijon), "
        "given until 10:04:20 (timeouts.start 5m)",
    )
    assert said(decisions, "node pve1") == (
        "wait",
        "needed by stream; jellyfin: pve1 booting since 09:59:20 (Wake-on-LAN magic packet sent from gw-dijon), "
        "given until 10:04:20 (timeouts.start 5m)",
    )
    # Its start timeout ran out: the chain is started again.
    late = {"pve1": Booting(SATURDAY - timedelta(seconds=301), "Wake-on-LAN magic packet sent from gw-dijon")}
    assert [s.node for s in wake(lab, booting=late).starts] == ["jellyfin"]


def test_a_booting_machine_that_refuses_ssh_is_still_waited_for(lab):
    booting = {"pve1": Booting(SATURDAY - timedelta(seconds=10), "Wake-on-LAN magic packet sent from gw-dijon")}
    unknown = {"pve1": "connection refused (booting or shutting down)"}
    decisions = wake(lab, booting=booting, unknown=unknown)
    assert said(decisions, "node jellyfin")[1].startswith("pve1 booting since 09:59:50")


def test_no_start_while_a_needed_node_is_unknown(lab):
    decisions = wake(lab, unknown={"nas": "connection refused (booting or shutting down)"})
    assert not decisions.starts
    assert said(decisions, "node jellyfin") == (
        "wait",
        "power of nas unknown (connection refused (booting or shutting down))",
    )
    decisions = wake(lab, unknown={"jellyfin": "Proxmox API of pve1 timed out"}, down=["pve2"])
    assert said(decisions, "node jellyfin") == ("wait", "power unknown (Proxmox API of pve1 timed out)")


def test_a_blocked_start_says_what_blocks_it(lab):
    decisions = wake(lab, down=[*ASLEEP, "gw-dijon"])
    assert not decisions.starts
    assert said(decisions, "node jellyfin") == (
        "wait",
        "cannot start nas: its site gateway gw-dijon is down (it sends the magic packets); "
        "cannot start pve1: its site gateway gw-dijon is down (it sends the magic packets); "
        "cannot start jellyfin: cluster dijon needs 2 of 3 votes for quorum and only 0 can be present "
        "(gw-dijon: 1 vote, down, cannot be woken; pve1: 1 vote, down, cannot be woken; "
        "pve2: 1 vote, down, cannot be woken)",
    )


def test_two_backends_sharing_a_chain_start_one_at_a_time(lab):
    request = WakeRequest("stream", MONDAY, None, "POST /api/wake by admin")
    decisions = decide(
        lab, observe(lab, MONDAY, down=ASLEEP), MONDAY, memory(MONDAY, wake_requests={"stream": request})
    )
    assert [s.node for s in decisions.starts] == ["jellyfin"]
    assert said(decisions, "node sandbox") == ("wait", "waits for the start of jellyfin, which starts pve1 too")
    assert said(decisions, "service sandbox") == (
        "wait",
        "inside its window mon-fri 08:00-19:00 (Europe/Paris); "
        "sandbox: waits for the start of jellyfin, which starts pve1 too",
    )
    # Once pve1 is up, the two chains are disjoint and start together.
    decisions = decide(
        lab,
        observe(lab, MONDAY, down=["nas", "vm-docker", "jellyfin", "sandbox"]),
        MONDAY,
        memory(MONDAY, wake_requests={"stream": request}),
    )
    assert [(s.node, steps(s.plan)) for s in decisions.starts] == [
        ("jellyfin", [("start", "nas"), ("start", "jellyfin")]),
        ("sandbox", [("start", "vm-docker"), ("start", "sandbox")]),
    ]


# --------------------------------------------------------------------------- shared nodes


def test_a_shared_node_stays_up_while_any_service_wants_it(lab):
    # Saturday: sandbox is outside its window and stream idle, www still wants srv-thory.
    decisions = decide(lab, observe(lab, SATURDAY, down=["nas", "jellyfin"]), SATURDAY, memory(SATURDAY))
    assert "srv-thory" not in [step.node for stop in decisions.stops for step in stop.plan.steps]
    assert said(decisions, "node srv-thory") == ("keep", "needed by www")


def test_a_node_shared_by_two_on_demand_services_follows_the_busier(lab_data, build_fleet):
    lab_data["services"]["music"] = {
        "domain": "music.lab.wakegrid.test",
        "policy": {"mode": "on_demand", "idle_after": "20m"},
        "backends": [{"node": "jellyfin", "port": 4533}],
    }
    fleet = build_fleet(lab_data)
    busy = {"music": Activity(0, MONDAY - timedelta(minutes=1), "nothing in flight")}
    decisions = decide(fleet, observe(fleet, MONDAY, activity=busy), MONDAY, memory(MONDAY))
    assert not decisions.stops
    assert said(decisions, "node jellyfin") == ("keep", "needed by music")


# --------------------------------------------------------------------------- pools

STALE = Tunnel("down", "no handshake for 212 s (stale after 180 s)")


def test_a_site_with_a_stale_tunnel_leaves_every_pool_it_serves(lab):
    tunnels = {"dijon": STALE, "thory": Tunnel("up", "handshake 3 s ago")}
    decisions = decide(lab, observe(lab, MONDAY, tunnels=tunnels), MONDAY, memory(MONDAY))
    reason = "dijon: WireGuard tunnel down (no handshake for 212 s (stale after 180 s))"
    assert decisions.pools == (
        Pool("www", ("dijon",), (reason,)),
        Pool("stream", ("dijon",), (reason,)),
        Pool("sandbox", ("dijon",), (reason,)),
    )
    assert said(decisions, "route www") == ("route", f"leave out {reason}")
    # Already so in memory: nothing to push.
    same = memory(MONDAY, pools={"www": ("dijon",), "stream": ("dijon",), "sandbox": ("dijon",)})
    assert decide(lab, observe(lab, MONDAY, tunnels=tunnels), MONDAY, same).pools == ()


def test_a_site_whose_backends_are_all_down_leaves_the_pool_and_comes_back(lab):
    health = {("www", 0): Health("down", "timed out after 1.0 s (2 of 2 fails)"), ("www", 1): Health("up", "200")}
    decisions = decide(lab, observe(lab, MONDAY, health=health), MONDAY, memory(MONDAY))
    assert decisions.pools == (
        Pool("www", ("dijon",), ("dijon: its backend down (gw-dijon:8080 timed out after 1.0 s (2 of 2 fails))",)),
    )
    health[("www", 0)] = Health("up", "200 in 2 ms")
    decisions = decide(lab, observe(lab, MONDAY, health=health), MONDAY, memory(MONDAY, pools={"www": ("dijon",)}))
    assert decisions.pools == (Pool("www", (), ()),)
    assert said(decisions, "route www") == ("route", "back in: dijon")


def test_unknown_never_excludes_a_site(lab):
    health = {("www", 0): Health("unknown", "1 of 2 passes"), ("www", 1): Health("up", "200")}
    tunnels = {"dijon": Tunnel("unknown", "wg show failed: timed out"), "thory": Tunnel("up", "ok")}
    decisions = decide(lab, observe(lab, MONDAY, health=health, tunnels=tunnels), MONDAY, memory(MONDAY))
    assert decisions.pools == ()
    # Not observed at all is unknown too.
    assert decide(lab, observe(lab, MONDAY, tunnels={}), MONDAY, memory(MONDAY)).pools == ()


def test_a_pool_is_never_emptied(lab):
    health = {("www", 0): Health("down", "refused"), ("www", 1): Health("down", "timed out")}
    decisions = decide(lab, observe(lab, MONDAY, health=health), MONDAY, memory(MONDAY))
    assert decisions.pools == ()  # nothing left out, as memory says already
    decisions = decide(lab, observe(lab, MONDAY, health=health), MONDAY, memory(MONDAY, pools={"www": ("thory",)}))
    assert decisions.pools == (Pool("www", (), ()),)
    assert said(decisions, "route www") == (
        "route",
        "back in: thory; every site looks down (dijon: its backend down (gw-dijon:8080 refused); "
        "thory: its backend down (srv-thory:8080 timed out)): the pool keeps them all, Caddy's own health checks "
        "answer",
    )


def test_a_site_with_several_backends_leaves_only_when_all_are_down(lab_data, build_fleet):
    lab_data["services"]["www"]["backends"].append({"node": "nas", "port": 8080})
    fleet = build_fleet(lab_data)
    health = {("www", 0): Health("down", "refused"), ("www", 2): Health("up", "200")}
    assert decide(fleet, observe(fleet, MONDAY, health=health), MONDAY, memory(MONDAY)).pools == ()
    health[("www", 2)] = Health("down", "node nas asleep")
    (pool,) = decide(fleet, observe(fleet, MONDAY, health=health), MONDAY, memory(MONDAY)).pools
    assert pool == Pool(
        "www", ("dijon",), ("dijon: every backend down (gw-dijon:8080 refused; nas:8080 node nas asleep)",)
    )


# --------------------------------------------------------------------------- odd inputs


def test_naive_datetimes_are_refused_with_a_clear_error(lab):
    naive = datetime(2026, 12, 7, 10, 0)
    with pytest.raises(ValueError, match=r"^decide: now is a naive datetime; give an aware one"):
        decide(lab, observe(lab, MONDAY), naive, memory(MONDAY))
    with pytest.raises(ValueError, match=r"^decide: memory.started_at is a naive datetime"):
        decide(lab, observe(lab, MONDAY), MONDAY, Memory(started_at=naive))
    with pytest.raises(ValueError, match=r"^decide: observed.at is a naive datetime"):
        decide(lab, Observed(at=naive), MONDAY, memory(MONDAY))
    activity = {"stream": Activity(0, naive, "x")}
    with pytest.raises(ValueError, match=r"observed.activity\['stream'\].last_request is a naive datetime"):
        decide(lab, observe(lab, MONDAY, activity=activity), MONDAY, memory(MONDAY))
    booting = {"pve1": Booting(naive, "x")}
    with pytest.raises(ValueError, match=r"memory.booting\['pve1'\].since is a naive datetime"):
        decide(lab, observe(lab, MONDAY), MONDAY, memory(MONDAY, booting=booting))
    with pytest.raises(ValueError, match=r"memory.backoff\['pve1'\].until is a naive datetime"):
        decide(lab, observe(lab, MONDAY), MONDAY, memory(MONDAY, backoff={"pve1": Backoff(1, naive, "x")}))
    with pytest.raises(ValueError, match=r"memory.wake_requests\['stream'\].at is a naive datetime"):
        decide(
            lab,
            observe(lab, MONDAY),
            MONDAY,
            memory(MONDAY, wake_requests={"stream": WakeRequest("s", naive, None, "x")}),
        )


def test_wrong_types_are_refused_with_a_clear_error(lab):
    with pytest.raises(ValueError, match=r"^decide: now must be a datetime, not str"):
        decide(lab, observe(lab, MONDAY), "2026-12-07T10:00:00Z", memory(MONDAY))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^decide: observed must be a wakegrid.state.Observed, not dict"):
        decide(lab, {}, MONDAY, memory(MONDAY))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^decide: fleet must be a wakegrid.model.Fleet, not NoneType"):
        decide(None, observe(lab, MONDAY), MONDAY, memory(MONDAY))  # type: ignore[arg-type]


def test_nothing_observed_at_all_stops_nothing_and_starts_nothing(lab):
    decisions = decide(lab, Observed(at=MONDAY), MONDAY, memory(MONDAY))
    assert decisions.idle
    assert said(decisions, "node srv-thory") == ("wait", "power unknown (not observed)")
    assert said(decisions, "service stream") == ("keep", "not stopped: activity unknown (not observed)")


def test_observations_of_names_the_fleet_does_not_have_are_ignored(lab):
    observed = observe(lab, MONDAY)
    stale = Observed(
        at=MONDAY,
        power={**observed.power, "old-node": PowerState("old-node", "up", "x")},
        health={("old", 0): Health("down", "x"), ("www", 9): Health("down", "x")},
        tunnels={**observed.tunnels, "old-site": STALE},
        activity={**observed.activity, "old": Activity(1, MONDAY, "x")},
    )
    old = memory(
        MONDAY, running={"old-node": "start #1"}, pools={"old": ("x",)}, booting={"gone": Booting(MONDAY, "x")}
    )
    decisions = decide(lab, stale, MONDAY, old)
    assert [s.node for s in decisions.stops] == ["jellyfin"]
    assert decisions.pools == ()


def test_a_new_fleet_object_is_indexed_anew(lab_data, build_fleet):
    first = build_fleet(lab_data)
    assert decide(first, observe(first, MONDAY), MONDAY, memory(MONDAY)).wanted["stream"].startswith("idle")
    lab_data["services"]["stream"]["policy"] = {"mode": "always_on"}
    second = build_fleet(lab_data)
    decisions = decide(second, observe(second, MONDAY), MONDAY, memory(MONDAY))
    assert decisions.wanted["stream"] == "always_on"
    assert decisions.idle
    assert decide(first, observe(first, MONDAY), MONDAY, memory(MONDAY)).wanted["stream"].startswith("idle")


def test_decide_is_pure(lab):
    observed, remembered = observe(lab, SATURDAY), memory(SATURDAY)
    assert decide(lab, observed, SATURDAY, remembered) == decide(lab, observed, SATURDAY, remembered)


def test_a_wanted_node_whose_dependency_fell_is_started_through_its_own_chain(lab_data, build_fleet):
    lab_data["services"]["stream"]["policy"] = {"mode": "always_on"}
    fleet = build_fleet(lab_data)
    decisions = decide(fleet, observe(fleet, SATURDAY, down=["nas"]), SATURDAY, memory(SATURDAY))
    (start,) = decisions.starts
    assert (start.node, steps(start.plan)) == ("jellyfin", [("start", "nas")])
    assert said(decisions, "node nas") == ("start", "dependency of jellyfin (start of jellyfin)")


def test_a_machine_whose_sleep_would_cost_quorum_is_kept_and_its_guest_still_stopped(lab_data, build_fleet):
    lab_data["nodes"]["pve2"]["confirm_shutdown"] = False
    lab_data["nodes"]["photos"] = {"kind": "lxc", "parent": "pve2", "vmid": 202, "address": "10.231.1.40"}
    lab_data["services"]["photos"] = {
        "domain": "photos.lab.wakegrid.test",
        "policy": {"mode": "on_demand", "idle_after": "20m"},
        "backends": [{"node": "photos", "port": 2342}],
    }
    fleet = build_fleet(lab_data)
    busy = {"stream": Activity(1, MONDAY, "1 in flight")}
    # The QDevice (on gw-dijon) is down: pve1 and pve2 hold the cluster's quorum between them.
    observed = observe(fleet, MONDAY, down=["gw-dijon"], activity=busy)
    decisions = decide(fleet, observed, MONDAY, memory(MONDAY))
    assert [(stop.node, steps(stop.plan)) for stop in decisions.stops] == [("photos", [("stop", "photos")])]
    assert said(decisions, "node pve2") == (
        "keep",
        "not stopped: pve2: stopping it leaves cluster dijon 1 of the 2 votes it needs for quorum (3 expected); "
        "vm-docker (running), jellyfin (running) could then neither start nor migrate "
        "(cluster not ready - no quorum?)",
    )


def test_a_pool_change_alone_makes_a_tick_not_idle(lab):
    tunnels = {"dijon": STALE, "thory": Tunnel("up", "ok")}
    decisions = decide(lab, observe(lab, MONDAY, tunnels=tunnels, down=["nas", "jellyfin"]), MONDAY, memory(MONDAY))
    assert decisions.pools and not decisions.starts and not decisions.stops
    assert not decisions.idle
