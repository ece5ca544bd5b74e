"""The JSON API (wakegrid.api.routes) on the real app: every endpoint, its errors, the event stream.

FastAPI's TestClient on :func:`wakegrid.daemon.app.create_app` with a real :class:`Reconciler` on a
loopback fleet and a real SQLite journal in tmp_path; the admin token as ``Authorization: Bearer``.
A real round runs first (observing loopback addresses: up, down or unknown, whatever they are);
tests that need a given power state set the last observation as a round does. The event stream runs
on a real uvicorn server on loopback (the TestClient waits for a response's end, a stream has none).
The access matrix (token, networks, forwarded headers) is tests/unit/test_security.py's; the schema
is checked against a daemon process by tests/integration/test_api_schema.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from loopback import loopback_edge
from starlette.testclient import TestClient

from wakegrid.daemon.app import create_app
from wakegrid.daemon.config import DaemonConfig
from wakegrid.daemon.reconciler import Reconciler
from wakegrid.journal import SqliteStore
from wakegrid.observe.power import PowerState
from wakegrid.state import Observed

TOKEN = "api-test-token-8d41c7e2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SSH_KEY = "ssh-private-key-never-shown-0b9e"
SECUREON = "secureon-never-shown-77aa"


def _fleet() -> dict:
    return {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            "nas": {
                "kind": "machine",
                "site": "home",
                "address": "127.0.0.3",
                "mac": "52:54:00:00:00:03",
                "ssh": {"private_key": SSH_KEY},
            },
            "dock": {"kind": "machine", "site": "home", "address": "127.0.0.4", "docker": {"api": "tcp://127.0.0.1:1"}},
            "app-box": {"kind": "container", "parent": "dock", "container": "app"},
        },
        "dependencies": {"app-box": ["nas"]},
        "services": {
            "stream": {
                "domain": "stream.loop.test",
                "policy": {"mode": "on_demand", "idle_after": "20m"},
                "backends": [{"node": "app-box", "port": 8096}],
            },
            "www": {
                "domain": "www.loop.test",
                "policy": {"mode": "always_on"},
                "backends": [{"node": "gw", "port": 8080}],
            },
        },
    }


def _config(**extra) -> DaemonConfig:
    return DaemonConfig.model_validate(
        {
            "caddy": {"admin": "127.0.0.1:1", "access_log": None},
            "wireguard": {"command": ["false"]},
            "probe_timeout": 0.3,
            "api_timeout": 0.5,
            "admin": {"token": TOKEN, "networks": ["127.0.0.0/8"]},
            **extra,
        }
    )


def _reconciler(tmp_path: Path, *, dry_run: bool = True, **config) -> Reconciler:
    fleet = tmp_path / "loop.fleet.yml"
    data = _fleet()
    data["nodes"]["nas"]["wol"] = {"secureon": SECUREON}
    fleet.write_text(yaml.safe_dump(data, sort_keys=False))
    return Reconciler(fleet, _config(**config), SqliteStore(tmp_path / "journal.sqlite3"), dry_run=dry_run)


def _client(app) -> TestClient:
    return TestClient(app, base_url="https://testserver", client=("127.0.0.1", 50000), follow_redirects=False)


def _observe(reconciler: Reconciler, **power: str) -> None:
    """What a round would have seen: the given nodes' power (the others as the real round saw them)."""
    before = reconciler.last_observed
    assert before is not None, "a real round runs first"
    states = dict(before.power)
    for name, state in power.items():
        states[name] = PowerState(name, state, f"set by the test: {state}")
    reconciler.last_observed = Observed(
        at=datetime.now(UTC), power=states, health=before.health, tunnels=before.tunnels, activity=before.activity
    )


@pytest.fixture
def reconciler(tmp_path: Path):
    rec = _reconciler(tmp_path)
    yield rec
    rec.store.close()


@pytest.fixture
def client(reconciler):
    with _client(create_app(reconciler)) as test_client:
        test_client.portal.call(reconciler.run_round)  # a real round: observation, decisions, journal
        yield test_client


def _problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["detail"]
    return body


# --------------------------------------------------------------------------- reading


def test_status_lists_every_service_with_why_and_the_chains_power(client, reconciler):
    response = client.get("/api/status", headers=AUTH)
    assert response.status_code == 200, response.text
    services = {s["name"]: s for s in response.json()}
    assert set(services) == {"stream", "www"}
    stream = services["stream"]
    assert stream["policy"] == "on_demand" and stream["why"]
    assert [c["node"] for c in stream["chain"]] == ["dock", "app-box", "nas"] or {
        c["node"] for c in stream["chain"]
    } == {"dock", "app-box", "nas"}
    seen = reconciler.last_observed.power
    for link in stream["chain"]:
        assert link["power"] == seen[link["node"]].power and link["detail"]
    assert stream["backends"][0]["node"] == "app-box" and stream["backends"][0]["health"] in ("up", "down", "unknown")
    assert client.get("/api/status/www", headers=AUTH).json()["policy"] == "always_on"


def test_a_node_never_observed_is_unknown_with_a_reason_not_down(reconciler):
    with _client(create_app(reconciler)) as client:  # no round yet
        nodes = client.get("/api/nodes", headers=AUTH).json()
    assert {n["name"]: n["power"] for n in nodes} == dict.fromkeys(["gw", "nas", "dock", "app-box"], "unknown")
    assert all("not observed" in n["power_detail"] for n in nodes)


def test_nodes_show_the_tree_dependencies_dependants_and_channel(client):
    _observe(client.app.state.reconciler, dock="up", **{"app-box": "down"})
    nodes = {n["name"]: n for n in client.get("/api/nodes", headers=AUTH).json()}
    assert nodes["app-box"]["parent"] == "dock" and nodes["dock"]["children"] == ["app-box"]
    assert nodes["app-box"]["depends_on"] == ["nas"] and nodes["nas"]["dependants"] == ["app-box"]
    assert (nodes["dock"]["depth"], nodes["app-box"]["depth"]) == (0, 1)
    assert nodes["dock"]["power"] == "up" and nodes["app-box"]["power"] == "down"
    assert all(n["channel"] for n in nodes.values())
    one = client.get("/api/nodes/app-box", headers=AUTH)
    assert one.status_code == 200 and one.json() == nodes["app-box"]


@pytest.mark.parametrize(
    ("method", "path", "name"),
    [
        ("GET", "/api/status/jellyfin", "jellyfin"),
        ("GET", "/api/nodes/pve9", "pve9"),
        ("POST", "/api/nodes/pve9/start", "pve9"),
        ("POST", "/api/nodes/pve9/stop", "pve9"),
        ("POST", "/api/wake/jellyfin", "jellyfin"),
        ("POST", "/api/activity/jellyfin", "jellyfin"),
        ("PUT", "/api/pins/node/pve9", "pve9"),
        ("PUT", "/api/pins/service/jellyfin", "jellyfin"),
    ],
)
def test_an_unknown_service_or_node_is_a_404_naming_it(client, method, path, name):
    assert f"{name!r}" in _problem(client.request(method, path, headers=AUTH), 404)["detail"]


def test_an_unknown_action_is_a_404(client):
    assert "#999999" in _problem(client.get("/api/actions/999999", headers=AUTH), 404)["detail"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("/api/decisions?limit=0", "limit"),
        ("/api/decisions?limit=501", "limit"),
        ("/api/decisions?offset=-1", "offset"),
        # Past the journal's 64-bit integers: schemathesis found a 500 here (SQLite's OverflowError).
        ("/api/history?offset=1297949678458071416832", "offset"),
        ("/api/decisions?offset=9223372036854775808", "offset"),
        ("/api/history?since=0001-01-01T00:00:00%2B05:00", "since"),  # before year 1 once in UTC
        ("/api/decisions?since=yesterday", "since"),
        ("/api/decisions?verdict=explode", "verdict"),
        ("/api/history?kind=coffee", "kind"),
        ("/api/history?until=13h", "until"),
        ("/api/actions/seven", "action_id"),
    ],
)
def test_a_bad_query_parameter_is_a_422_naming_it(client, query, parameter):
    assert parameter in _problem(client.get(query, headers=AUTH), 422)["detail"]


def test_an_action_id_beyond_the_journals_integers_is_a_422_not_a_crash(client):
    assert "action_id" in _problem(client.get(f"/api/actions/{2**70}", headers=AUTH), 422)["detail"]


def test_a_body_that_is_not_json_is_a_400_problem(client):
    headers = {**AUTH, "Content-Type": "application/json"}
    _problem(client.post("/api/nodes/app-box/stop", headers=headers, content=b"\x18\r\xff\xcc\xb8"), 400)


def test_until_before_since_is_a_422_saying_so(client):
    body = _problem(client.get("/api/history?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", headers=AUTH), 422)
    assert "until" in body["detail"] and "before since" in body["detail"]


def test_stats_count_nodes_up_and_todays_wakes(client, reconciler):
    _observe(reconciler, gw="up", nas="down", dock="up", **{"app-box": "unknown"})
    now = datetime.now(UTC)
    store = reconciler.store
    store.record_wake_request("stream", now - timedelta(seconds=30), "192.0.2.7", "test")
    store.finish_wake("stream", now - timedelta(seconds=10), True)
    stats = client.get("/api/stats", headers=AUTH).json()
    assert stats == {
        "nodes_up": 2,
        "nodes_total": 4,
        "wakes_today": 1,
        "mean_wake_seconds_today": 20.0,
        "errors_today": 0,
    }


# --------------------------------------------------------------------------- the fleet


def test_config_shows_the_fleet_with_every_secret_masked(client):
    response = client.get("/api/config", headers=AUTH)
    assert response.status_code == 200
    assert set(response.json()["nodes"]) == {"gw", "nas", "dock", "app-box"}
    for secret in (SSH_KEY, SECUREON, TOKEN):
        assert secret not in response.text
    assert "<secret inline>" in response.text


def test_reload_applies_a_valid_fleet(client, reconciler):
    data = _fleet()
    data["services"]["extra"] = {"domain": "extra.loop.test", "backends": [{"node": "gw", "port": 9000}]}
    reconciler.fleet_path.write_text(yaml.safe_dump(data, sort_keys=False))
    response = client.post("/api/reload", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"reloaded": True, "services": 3, "nodes": 4}
    assert "extra" in reconciler.fleet.services


def test_reload_refuses_an_invalid_fleet_with_every_problem_and_keeps_the_running_one(client, reconciler):
    running = reconciler.fleet
    data = _fleet()
    data["services"]["stream"]["backends"][0]["port"] = "eighty"
    data["services"]["www"]["policy"]["mode"] = "nowhere"
    reconciler.fleet_path.write_text(yaml.safe_dump(data, sort_keys=False))
    body = _problem(client.post("/api/reload", headers=AUTH), 422)
    assert len(body["problems"]) >= 2
    assert all(": " in p for p in body["problems"]), body["problems"]
    assert any(p.startswith("services.www.policy") for p in body["problems"]), body["problems"]
    assert any(p.startswith("services.stream.backends[0].port: ") for p in body["problems"]), body["problems"]
    assert reconciler.fleet is running
    assert client.get("/api/status/stream", headers=AUTH).status_code == 200


# --------------------------------------------------------------------------- acting


def test_a_dry_run_daemon_refuses_to_act_409(client, reconciler):
    _observe(reconciler, gw="up", nas="down", dock="up", **{"app-box": "down"})
    for path in ("/api/wake/stream", "/api/nodes/nas/start", "/api/nodes/dock/stop"):
        assert "dry-run" in _problem(client.post(path, headers=AUTH), 409)["detail"]
    assert reconciler.store.actions() == []


@pytest.fixture
def acting(tmp_path: Path):
    """A daemon that acts (no --dry-run); the tests stop before anything would run a playbook."""
    rec = _reconciler(tmp_path, dry_run=False, hold_timeout="2s")
    with _client(create_app(rec)) as test_client:
        rec.last_observed = Observed(at=datetime.now(UTC), power={}, health={}, tunnels={}, activity={})
        yield test_client
    rec.store.close()


def test_stop_whose_plan_proposes_dependencies_needs_confirm_409(acting):
    reconciler = acting.app.state.reconciler
    _observe(reconciler, gw="up", nas="up", dock="up", **{"app-box": "up"})
    body = _problem(acting.post("/api/nodes/app-box/stop", headers=AUTH), 409)
    # nas is a machine (confirm_shutdown on by default) nobody else needs: proposed, as `wakegrid shutdown` says.
    assert [p["node"] for p in body["proposed"]] == ["nas"]
    assert "confirm_shutdown" in body["proposed"][0]["reason"]
    assert body["cascade"] == ["app-box"]
    assert "nas" in body["detail"] and "confirm" in body["detail"]
    assert reconciler.store.actions() == []


def test_stop_refuses_confirming_an_unknown_node(acting):
    _observe(acting.app.state.reconciler, gw="up", nas="up", dock="up", **{"app-box": "up"})
    response = acting.post("/api/nodes/app-box/stop", headers=AUTH, json={"confirm": ["ghost"]})
    assert "ghost" in _problem(response, 404)["detail"]


def test_stop_with_an_unknown_body_field_is_a_422_naming_it(acting):
    response = acting.post("/api/nodes/app-box/stop", headers=AUTH, json={"confirm": [], "force": True})
    assert "force" in _problem(response, 422)["detail"]


def test_start_of_a_node_already_up_is_a_409(acting):
    _observe(acting.app.state.reconciler, gw="up", nas="up", dock="up", **{"app-box": "up"})
    assert "already up" in _problem(acting.post("/api/nodes/app-box/start", headers=AUTH), 409)["detail"]


def test_wake_is_accepted_with_an_action_that_follows_it_to_ready(acting):
    reconciler = acting.app.state.reconciler
    response = acting.post("/api/wake/stream", headers=AUTH)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["kind"] == "wake" and accepted["target"] == "stream"
    assert accepted["follow"] == f"/api/actions/{accepted['action_id']}"
    assert "stream" in reconciler.store.memory(reconciler.started_at, datetime.now(UTC)).wake_requests
    action = acting.get(accepted["follow"], headers=AUTH).json()
    assert (action["kind"], action["target"], action["state"]) == ("wake", "stream", "running")
    acting.portal.call(_publish, reconciler, "node:app-box", {"kind": "power", "power": "up", "detail": "test"})
    acting.portal.call(_publish, reconciler, "service:stream", {"kind": "ready"})
    action = _wait_for_state(acting, accepted["follow"], "done")
    assert any(e["kind"] == "power" and e["data"]["node"] == "app-box" for e in action["events"]), action


def test_a_wake_not_ready_within_the_hold_timeout_fails_saying_so(acting):
    accepted = acting.post("/api/wake/stream", headers=AUTH).json()
    action = _wait_for_state(acting, accepted["follow"], "failed", timeout=6)
    assert "hold_timeout" in action["error"]


async def _publish(reconciler: Reconciler, topic: str, event: dict) -> None:
    reconciler.bus.publish(topic, event)


def _wait_for_state(client: TestClient, url: str, state: str, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        action = client.get(url, headers=AUTH).json()
        if action["state"] == state or time.monotonic() > deadline:
            assert action["state"] == state, action
            return action
        time.sleep(0.05)


def test_activity_is_journaled_204(client, reconciler):
    response = client.post("/api/activity/stream", headers=AUTH)
    assert response.status_code == 204 and response.content == b""
    assert "stream" in reconciler.store.memory(reconciler.started_at, datetime.now(UTC)).last_activity
    assert client.get("/api/status/stream", headers=AUTH).json()["last_activity"] is not None


# --------------------------------------------------------------------------- pins


def test_pins_persist_in_the_journal_across_a_new_store(client, reconciler, tmp_path):
    assert client.get("/api/pins", headers=AUTH).json() == []
    first = client.put("/api/pins/node/nas", headers=AUTH)
    assert first.status_code == 200 and first.json()["name"] == "nas"
    assert client.put("/api/pins/service/stream", headers=AUTH).status_code == 200
    assert client.put("/api/pins/node/nas", headers=AUTH).json() == first.json()  # pinning twice: the same pin
    assert client.get("/api/nodes/nas", headers=AUTH).json()["pinned"] is True
    assert client.get("/api/status/stream", headers=AUTH).json()["pinned"] is True
    with SqliteStore(tmp_path / "journal.sqlite3") as reopened:
        assert [(p["kind"], p["name"]) for p in reopened.pins()] == [("node", "nas"), ("service", "stream")]
    assert client.delete("/api/pins/node/nas", headers=AUTH).status_code == 204
    assert "not pinned" in _problem(client.delete("/api/pins/node/nas", headers=AUTH), 404)["detail"]
    assert [p["name"] for p in client.get("/api/pins", headers=AUTH).json()] == ["stream"]
    assert client.put("/api/pins/cluster/nas", headers=AUTH).status_code == 422


# --------------------------------------------------------------------------- history


def test_decisions_are_paginated_and_filtered(client, reconciler):
    base = datetime(2026, 3, 1, tzinfo=UTC)
    for minute in range(12):
        reconciler.store.log_decisions(
            base + timedelta(minutes=minute),
            [("node ledger", "keep" if minute % 2 else "wait", f"n{minute}"), ("service ledger", "keep", f"s{minute}")],
        )
    first = client.get("/api/decisions?subject=node%20ledger&limit=5", headers=AUTH).json()
    assert [d["reason"] for d in first["items"]] == ["n11", "n10", "n9", "n8", "n7"]
    assert (first["limit"], first["offset"], first["next_offset"]) == (5, 0, 5)
    last = client.get("/api/decisions?subject=node%20ledger&limit=5&offset=10", headers=AUTH).json()
    assert [d["reason"] for d in last["items"]] == ["n1", "n0"] and last["next_offset"] is None
    waits = client.get("/api/decisions?subject=node%20ledger&verdict=wait", headers=AUTH).json()["items"]
    assert [d["reason"] for d in waits] == ["n10", "n8", "n6", "n4", "n2", "n0"]
    window = client.get(
        "/api/decisions",
        params={"subject": "service ledger", "since": "2026-03-01T00:03:00Z", "until": "2026-03-01T00:05:00"},
        headers=AUTH,
    ).json()["items"]
    assert [d["reason"] for d in window] == ["s4", "s3"]


def test_history_lists_wakes_boots_and_actions_filtered(client, reconciler):
    store = reconciler.store
    base = datetime(2026, 3, 1, 8, tzinfo=UTC)
    for n in range(3):
        store.record_wake_request("stream", base + timedelta(hours=n), "192.0.2.9", "test")
        store.finish_wake("stream", base + timedelta(hours=n, seconds=40 + n), n != 1)
        store.record_boot("nas", base + timedelta(hours=n), base + timedelta(hours=n, seconds=30))
    store.record_wake_request("www", base, None, "test")
    store.finish_wake("www", base + timedelta(seconds=5), True)
    action_id = store.begin_action("start", "nas", "test")
    everything = client.get("/api/history", headers=AUTH).json()
    assert len(everything["wakes"]) == 4 and len(everything["boots"]) == 3
    assert [a["id"] for a in everything["actions"]] == [action_id]
    wakes = client.get("/api/history?kind=wake&service=stream&limit=2", headers=AUTH).json()
    assert wakes["boots"] == [] and wakes["actions"] == []
    assert [(w["ok"], w["seconds"]) for w in wakes["wakes"]] == [(True, 42.0), (False, 41.0)]
    assert [
        w["seconds"]
        for w in client.get("/api/history?kind=wake&service=stream&limit=2&offset=2", headers=AUTH).json()["wakes"]
    ] == [40.0]
    boots = client.get(
        "/api/history", params={"kind": "boot", "node": "nas", "since": "2026-03-01T09:00:00Z"}, headers=AUTH
    ).json()
    assert [b["up_at"][:19] for b in boots["boots"]] == ["2026-03-01T10:00:30", "2026-03-01T09:00:30"]
    assert boots["wakes"] == []


# --------------------------------------------------------------------------- the live stream


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_events_stream_a_published_bus_event(reconciler):
    server = uvicorn.Server(
        uvicorn.Config(create_app(reconciler), host="127.0.0.1", port=_free_port(), log_level="warning")
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    seen: list[str] = []

    def publish_until_seen() -> None:
        # The bus belongs to the server's loop: publish from inside it, until the stream shows the event.
        while not any("stream test" in line for line in seen) and time.monotonic() < deadline:
            event = {"kind": "power", "power": "up", "detail": "stream test"}
            loop.call_soon_threadsafe(reconciler.bus.publish, "node:nas", event)
            time.sleep(0.1)

    try:
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/api/events?topics=node:"
        with httpx.stream("GET", url, headers=AUTH, timeout=httpx.Timeout(5.0)) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            threading.Thread(target=publish_until_seen, daemon=True).start()
            for line in response.iter_lines():
                seen.append(line)
                if line.startswith("data: ") and "stream test" in line:
                    break
                assert time.monotonic() < deadline, seen
        event = json.loads(seen[-1][len("data: ") :])
        assert event["kind"] == "power" and event["power"] == "up" and event["topic"] == "node:nas"
        assert seen[-2] == "event: power"
    finally:
        server.should_exit = True
        thread.join(10)
        loop.close()
