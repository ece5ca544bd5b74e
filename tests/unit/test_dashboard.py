"""The admin dashboard's pages (wakegrid.web.dashboard) on the real app: login, session, CSRF, every page.

FastAPI's TestClient on :func:`wakegrid.daemon.app.create_app` with a real :class:`Reconciler` (dry
run: nothing is ever started) on a loopback fleet, a real SQLite journal in tmp_path, HTTPS as the
base URL (the session cookie is ``Secure``) and 127.0.0.1 as the peer (inside the admin networks).
What the rounds would observe is set as the reconciler's last observation, like a round does.
The pages in a browser, live, against a daemon process: tests/integration/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from loopback import loopback_edge
from starlette.testclient import TestClient

from wakegrid.daemon.app import create_app
from wakegrid.daemon.config import DaemonConfig
from wakegrid.daemon.reconciler import Reconciler
from wakegrid.journal import SqliteStore
from wakegrid.observe.power import PowerState
from wakegrid.state import Observed

TOKEN = "dashboard-test-token-5f1c2a"
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
PAGES = ["/admin", "/admin/hosts", "/admin/services", "/admin/history", "/admin/discovered"]


def _fleet() -> dict:
    return {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            "nas": {"kind": "machine", "site": "home", "address": "127.0.0.3", "mac": "52:54:00:00:00:03"},
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
                "policy": {
                    "mode": "scheduled",
                    "timezone": "Europe/Paris",
                    "windows": [{"days": "mon-fri", "start": "08:00", "end": "18:00"}],
                },
                "backends": [{"node": "gw", "port": 8080}],
            },
        },
    }


@pytest.fixture
def app(tmp_path: Path):
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(), sort_keys=False))
    config = DaemonConfig.model_validate(
        {
            "caddy": {"admin": "127.0.0.1:1", "access_log": None},
            "wireguard": {"command": ["false"]},
            "admin": {"token": TOKEN, "networks": ["127.0.0.0/8"], "wake_rate": {"requests": 5, "per": "60s"}},
        }
    )
    store = SqliteStore(tmp_path / "journal.sqlite3")
    reconciler = Reconciler(fleet, config, store, dry_run=True)
    now = datetime.now(UTC)
    reconciler.last_observed = Observed(
        at=now,
        power={
            "gw": PowerState("gw", "up", "SSH port 127.0.0.1:22 accepts connections"),
            "nas": PowerState("nas", "down", f"no answer: {HOSTILE}"),
            "dock": PowerState("dock", "up", "SSH port 127.0.0.4:22 accepts connections"),
            "app-box": PowerState("app-box", "unknown", "Docker API tcp://127.0.0.1:1 did not answer"),
        },
        health={},
        tunnels={},
        activity={},
    )
    store.log_decisions(now, [("node nas", "keep", HOSTILE)])
    yield create_app(reconciler)
    store.close()


def _client(app, peer: str = "127.0.0.1") -> TestClient:
    return TestClient(app, base_url="https://testserver", client=(peer, 50000), follow_redirects=False)


def _login(client: TestClient) -> str:
    """Log in; the session's CSRF token, as the page renders it for the script."""
    response = client.post("/admin/login", data={"token": TOKEN, "next": "/admin/hosts"})
    assert response.status_code == 303 and response.headers["location"] == "/admin/hosts"
    page = client.get("/admin/hosts")
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
    assert match, page.text[:500]
    return match.group(1)


@pytest.mark.parametrize("path", PAGES)
def test_a_page_without_a_session_sends_to_the_login_form(app, path):
    with _client(app) as client:
        response = client.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == f"/admin/login?next={path}"


def test_wrong_token_shows_the_form_again_right_token_opens_a_session(app):
    with _client(app) as client:
        form = client.get("/admin/login")
        assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
        assert "default-src 'none'" in form.headers["content-security-policy"]

        wrong = client.post("/admin/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text and 'name="token"' in wrong.text
        assert "set-cookie" not in wrong.headers and "guess" not in wrong.text

        right = client.post("/admin/login", data={"token": TOKEN})
        assert right.status_code == 303 and right.headers["location"] == "/admin"
        cookie = right.headers["set-cookie"]
        assert cookie.startswith("wakegrid_session=")
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags, cookie
        assert TOKEN not in cookie and TOKEN not in right.text
        # Logged in: the pages open, and the login form sends back to the dashboard.
        assert client.get("/admin").status_code == 200
        assert client.get("/admin/login").headers["location"] == "/admin"


def test_login_never_redirects_to_another_host(app):
    with _client(app) as client:
        for evil in ("https://evil.example/", "//evil.example/admin", "/\\evil.example", "/api/reload"):
            response = client.post("/admin/login", data={"token": TOKEN, "next": evil})
            assert response.headers["location"] == "/admin", evil


def test_login_attempts_are_rate_limited_per_client(app):
    with _client(app, "127.0.0.9") as client:
        statuses = [client.post("/admin/login", data={"token": "guess"}).status_code for _ in range(8)]
        assert 401 in statuses and statuses[-1] == 429, statuses
        limited = client.post("/admin/login", data={"token": TOKEN})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "set-cookie" not in limited.headers  # not even the right token, while limited
    with _client(app, "127.0.0.10") as other:  # another client is not slowed by the first one's guesses
        assert other.post("/admin/login", data={"token": TOKEN}).status_code == 303


def test_every_page_renders_the_fleet(app):
    with _client(app) as client:
        csrf = _login(client)
        front = client.get("/admin")
        assert front.status_code == 200 and front.headers["cache-control"] == "no-store"
        assert 'data-stat="nodes_total">4<' in front.text  # gw, nas, dock, app-box
        assert 'data-stat="nodes_up">2<' in front.text
        assert "Nothing pinned yet" in front.text
        assert "runs with <code>--dry-run</code>" in front.text  # its buttons would be refused: said up front
        for name in ("gw", "nas", "dock", "app-box", "stream", "www"):
            assert f">{name}</option>" in front.text  # offered for pinning

        hosts = client.get("/admin/hosts").text
        rows = re.findall(r'<tr class="depth-(\d)" data-node="([^"]+)" data-power="(\w+)"', hosts)
        assert ("1", "app-box", "unknown") in rows and ("0", "dock", "up") in rows and ("0", "nas", "down") in rows
        stop = re.search(r'data-action="stop" data-name="dock"\s+data-hosted="([^"]*)"', hosts)
        assert stop and stop.group(1) == "app-box"  # the stop dialog names what goes with it
        assert f'<meta name="csrf-token" content="{csrf}">' in hosts

        services = client.get("/admin/services").text
        assert 'data-service="stream"' in services and 'data-service="www"' in services
        assert "on demand, asleep after 20 min idle" in services
        assert "scheduled: mon,tue,wed,thu,fri 08:00\u201318:00 (Europe/Paris)" in services

        history = client.get("/admin/history")
        assert history.status_code == 200 and "Decision log" in history.text
        filtered = client.get("/admin/history", params={"node": "nas", "kind": "decision"})
        assert filtered.status_code == 200 and "node nas" in filtered.text and "Wakes by service" not in filtered.text
        bad = client.get("/admin/history", params={"since": "yesterday"})
        assert bad.status_code == 422 and "from: &#39;yesterday&#39; is not a date" in bad.text

        discovered = client.get("/admin/discovered")
        assert discovered.status_code == 200
        # dock's Docker API is closed: unknown, with why; never "nothing found".
        assert "cannot reach the Docker API at tcp://127.0.0.1:1" in discovered.text
        assert (
            "state-unknown" in discovered.text and "Everything the APIs report is in the fleet" not in discovered.text
        )


def test_pinned_nodes_and_services_are_tiles_on_the_front_page(app):
    with _client(app) as client:
        csrf = _login(client)
        for kind, name in (("node", "nas"), ("service", "stream")):
            response = client.put(f"/api/pins/{kind}/{name}", headers={"X-CSRF-Token": csrf})
            assert response.status_code in (200, 204), response.text
        front = client.get("/admin").text
        assert re.search(r'<li class="tile" data-node="nas" data-power="down">', front)
        assert re.search(r'<li class="tile" data-service="stream"', front)
        assert ">nas</option>" not in front  # pinned: no longer offered


def test_logout_needs_the_csrf_token(app):
    with _client(app) as client:
        csrf = _login(client)
        refused = client.post("/admin/logout", data={"csrf": "forged"})
        assert refused.status_code == 403
        assert client.get("/admin").status_code == 200  # still logged in
        missing = client.post("/admin/logout")
        assert missing.status_code == 403
        done = client.post("/admin/logout", data={"csrf": csrf})
        assert done.status_code == 303 and done.headers["location"] == "/admin/login"
        assert client.get("/admin").status_code == 303  # the session is gone
        # The old cookie, sent again by hand, opens nothing.
    with _client(app) as replay:
        assert replay.get("/admin").status_code == 303


def test_hostile_text_is_escaped_everywhere(app):
    with _client(app) as client:
        _login(client)
        for path in ("/admin/hosts", "/admin/history"):
            html = client.get(path).text
            assert HOSTILE not in html and "<script>alert" not in html and "onerror=alert(1)>" not in html
            assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html, path
        login = client.get("/admin/login", params={"next": '/admin"><script>alert(1)</script>'})
        assert "<script>alert(1)</script>" not in login.text


def test_anonymous_read_shows_the_pages_without_any_button(tmp_path):
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(), sort_keys=False))
    config = DaemonConfig.model_validate(
        {
            "caddy": {"admin": "127.0.0.1:1", "access_log": None},
            "wireguard": {"command": ["false"]},
            "admin": {"token": TOKEN, "networks": ["127.0.0.0/8"], "anonymous_read": True},
        }
    )
    with SqliteStore(tmp_path / "journal.sqlite3") as store:
        app = create_app(Reconciler(fleet, config, store, dry_run=True))
        with _client(app) as client:
            hosts = client.get("/admin/hosts")
            assert hosts.status_code == 200 and 'data-node="nas"' in hosts.text
            assert 'data-action="start"' not in hosts.text and "csrf-token" not in hosts.text
            assert 'href="/admin/login"' in hosts.text


def test_history_sums_wakes_and_boots_of_the_time_range(app):
    store = app.state.reconciler.store
    day = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    for at, seconds in ((day - timedelta(days=30), 300.0), (day, 40.0), (day + timedelta(hours=1), 20.0)):
        store.record_wake_request("stream", at, "10.0.0.9", "browser GET")
        store.finish_wake("stream", at + timedelta(seconds=seconds), True)
        store.record_boot("nas", at, at + timedelta(seconds=seconds))
    with _client(app) as client:
        _login(client)
        everything = client.get("/admin/history", params={"kind": "wake"}).text
        assert re.search(r"<th scope=\"row\">stream</th><td class=\"num\">3</td><td class=\"num\">3</td>", everything)
        march = client.get("/admin/history", params={"since": "2026-03-02", "until": "2026-03-02"})
        assert march.status_code == 200
        # Two wakes that day, 40 s and 20 s: 2 requests, 2 wakes, mean 30 s, last 20 s.
        assert re.search(
            r"<th scope=\"row\">stream</th><td class=\"num\">2</td><td class=\"num\">2</td>\s*"
            r"<td class=\"num\">0</td><td class=\"num\">30 s</td>\s*<td class=\"num\">20 s</td>",
            march.text,
        ), march.text
        assert re.search(r"<th scope=\"row\">nas</th><td class=\"num\">2</td><td class=\"num\">30 s</td>", march.text)
        assert "for service" not in march.text and "from 2026-03-02 00:00:00 UTC" in march.text
