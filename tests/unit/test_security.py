"""The admin surface's security layer (wakegrid.api.security) and the daemon config's ``admin:``/``tls:``.

The dependencies and the network guard run in a real FastAPI app (TestClient, the peer address set
per client); the rate limiter and the sessions with a clock the test moves. The whole matrix against
a real ``wakegrid daemon`` process: tests/integration/test_api_security.py.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from fastapi import Depends, FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.testclient import TestClient

from wakegrid.api.security import (
    CSRF_HEADER,
    SESSION_COOKIE,
    Access,
    AdminNetworkGuard,
    Guard,
    RateLimiter,
    SessionStore,
    admin_access,
    guarded,
    read_access,
    set_session_cookie,
)
from wakegrid.daemon.config import ConfigError, DaemonConfig, load_config
from wakegrid.daemon.service import tls_problem

TOKEN = "unit-test-admin-token-7b3e91d2"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _config(**admin: Any) -> DaemonConfig:
    return DaemonConfig.model_validate(
        {
            "edge_addresses": ["127.0.0.3"],
            "admin": {"token": TOKEN, "networks": ["127.0.0.1/32", "10.0.0.0/8"], **admin},
        }
    )


# --------------------------------------------------------------------------- rate limiter


def test_a_client_gets_its_requests_then_waits_while_another_is_unaffected():
    clock = Clock()
    limiter = RateLimiter(3, 60.0, clock=clock)
    assert [limiter.allow("198.51.100.7") for _ in range(3)] == [None, None, None]
    wait = limiter.allow("198.51.100.7")
    assert wait == pytest.approx(20.0)  # one more every 60 s / 3
    assert limiter.allow("198.51.100.8") is None
    clock.now += 19.0
    assert limiter.allow("198.51.100.7") == pytest.approx(1.0)
    clock.now += 1.0
    assert limiter.allow("198.51.100.7") is None
    assert limiter.allow("198.51.100.7") is not None
    clock.now += 3600.0  # a long pause refills to the burst, never beyond
    assert [limiter.allow("198.51.100.7") for _ in range(4)][-1] is not None


def test_the_rate_limiter_forgets_the_least_recently_seen_client_past_its_bound():
    clock = Clock()
    limiter = RateLimiter(1, 60.0, max_clients=100, clock=clock)
    assert limiter.allow("busy") is None
    for n in range(50):
        limiter.allow(f"10.0.{n // 256}.{n % 256}")
    assert limiter.allow("busy") is not None  # seen again: now the most recent
    for n in range(50, 100_000):
        limiter.allow(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        assert len(limiter) <= 100
    assert len(limiter) == 100
    assert limiter.allow("busy") is None  # forgotten: a fresh (full) bucket


@pytest.mark.parametrize("arguments", [(0, 60.0), (1, 0.0), (1, -1.0)])
def test_a_rate_limit_that_allows_nothing_is_refused(arguments):
    with pytest.raises(ValueError, match="requests >= 1"):
        RateLimiter(*arguments)


# --------------------------------------------------------------------------- sessions


def test_sessions_expire_and_are_dropped():
    clock = Clock()
    sessions = SessionStore(ttl=600.0, clock=clock)
    session = sessions.create()
    assert session.expires == 1600.0
    assert len(session.id) >= 40 and len(session.csrf) >= 40 and session.id != session.csrf
    assert sessions.get(session.id) is session
    assert sessions.get("forged") is None and sessions.get("") is None and sessions.get(None) is None
    clock.now += 599.0
    assert sessions.get(session.id) is session
    clock.now += 1.0
    assert sessions.get(session.id) is None and len(sessions) == 0
    other = sessions.create()
    sessions.drop(other.id)
    sessions.drop(other.id)  # twice: nothing to drop
    assert sessions.get(other.id) is None


def test_sessions_are_bounded_the_oldest_going_first():
    clock = Clock()
    sessions = SessionStore(ttl=600.0, limit=5, clock=clock)
    created = []
    for _ in range(12):
        created.append(sessions.create())
        clock.now += 1.0
        assert len(sessions) <= 5
    assert [sessions.get(s.id) for s in created[:7]] == [None] * 7
    assert all(sessions.get(s.id) is s for s in created[7:])
    assert len({s.id for s in created}) == 12


def test_expired_sessions_make_room_before_live_ones_are_evicted():
    clock = Clock()
    sessions = SessionStore(ttl=10.0, limit=2, clock=clock)
    old = sessions.create()
    clock.now += 5.0
    live = sessions.create()
    clock.now += 6.0  # old has expired, live has not
    sessions.create()
    assert sessions.get(old.id) is None and sessions.get(live.id) is live


def test_the_session_cookie_is_secure_httponly_strict_and_site_wide():
    session = SessionStore(ttl=3600.0).create()
    response = Response()
    set_session_cookie(response, session, 3600)
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={session.id};")
    parts = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "secure", "samesite=strict", "path=/", "max-age=3600"} <= parts
    response = Response()
    set_session_cookie(response, session)  # without a ttl: what the session has left
    assert (
        "max-age=3599" in response.headers["set-cookie"].lower()
        or "max-age=3600" in response.headers["set-cookie"].lower()
    )


# --------------------------------------------------------------------------- the token


def test_the_token_is_compared_and_never_kept_in_clear(caplog):
    caplog.set_level(logging.DEBUG, logger="wakegrid")
    guard = Guard(_config())
    assert guard.check_token(TOKEN)
    for wrong in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "é" * 40, "\udcff", "\x00" * 32):
        assert not guard.check_token(wrong)
    held = repr(vars(guard)) + repr(guard.__dict__.get("_token_digest"))
    assert TOKEN not in held and TOKEN.encode() not in guard._token_digest
    assert TOKEN not in caplog.text


def test_without_a_token_nothing_matches_and_the_start_says_so(caplog):
    caplog.set_level(logging.WARNING, logger="wakegrid")
    guard = Guard(DaemonConfig())
    assert not guard.has_token
    assert not guard.check_token("") and not guard.check_token("anything")
    assert "no admin token configured" in caplog.text


def test_a_token_from_a_file_beside_the_config_and_from_the_environment(tmp_path, monkeypatch):
    (tmp_path / "admin-token").write_text(TOKEN + "\n")
    config_file = tmp_path / "daemon.yml"
    config_file.write_text("admin:\n  token: {file: admin-token}\n")
    config = load_config(config_file)
    assert config.admin.token.file == str(tmp_path / "admin-token")
    assert Guard(config).check_token(TOKEN)

    monkeypatch.setenv("WAKEGRID_TEST_ADMIN_TOKEN", TOKEN)
    config_file.write_text("admin:\n  token: {env: WAKEGRID_TEST_ADMIN_TOKEN}\n")
    assert Guard(load_config(config_file)).check_token(TOKEN)


def test_an_unreadable_token_refuses_admin_access_and_is_named_not_shown(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="wakegrid")
    config_file = tmp_path / "daemon.yml"
    config_file.write_text("admin:\n  token: {file: missing-token}\n")
    guard = Guard(load_config(config_file))
    assert not guard.has_token and not guard.check_token(TOKEN)
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "admin token cannot be read" in logged
    assert "admin.token" in logged and "missing-token" in logged, logged


def test_a_short_token_is_accepted_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="wakegrid")
    guard = Guard(DaemonConfig.model_validate({"admin": {"token": "short"}}))
    assert guard.check_token("short")
    assert "shorter than 16" in caplog.text and "short" not in caplog.text.replace("shorter", "")


# --------------------------------------------------------------------------- the client's address


def _scope(peer: str | None, *forwarded: str) -> dict:
    headers = [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded]
    return {
        "type": "http",
        "method": "GET",
        "path": "/api/status",
        "headers": headers,
        "client": (peer, 40000) if peer is not None else None,
    }


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        # Not the edge: the header is a claim, the peer is the client.
        ("127.0.0.2", ["127.0.0.1"], "127.0.0.2"),
        ("198.51.100.9", ["10.0.0.1, 127.0.0.1"], "198.51.100.9"),
        # The edge: the rightmost entry is the address it saw; what is left of it the client wrote.
        ("127.0.0.3", ["203.0.113.5"], "203.0.113.5"),
        ("127.0.0.3", ["127.0.0.1, 203.0.113.5"], "203.0.113.5"),
        ("127.0.0.3", ["127.0.0.1", "203.0.113.5"], "203.0.113.5"),
        ("127.0.0.3", ["2001:db8::7"], "2001:db8::7"),
        ("127.0.0.3", ["::ffff:10.1.2.3"], "10.1.2.3"),
        ("127.0.0.3", [], "127.0.0.3"),  # the edge host itself, nothing proxied
        ("::ffff:127.0.0.3", ["10.1.2.3"], "10.1.2.3"),
        # From the edge, an entry that is no address: unknown, refused.
        ("127.0.0.3", ["not-an-address"], None),
        ("127.0.0.3", ["203.0.113.5, "], None),
        ("127.0.0.3", ["203.0.113.5:443"], None),
        ("127.0.0.3", [""], None),
        ("127.0.0.3", ["\xff\xfe"], None),
        (None, ["127.0.0.1"], None),
        ("testclient", [], None),
    ],
)
def test_the_client_address(peer, forwarded, client):
    guard = Guard(_config())
    found = guard.client_of(_scope(peer, *forwarded))
    assert found == (ipaddress.ip_address(client) if client else None)
    request = Request(_scope(peer, *forwarded))
    assert guard.client(request) == found


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    peer=st.sampled_from(["127.0.0.3", "127.0.0.2", "::1", "x"]),
    forwarded=st.lists(st.text(st.characters(codec="latin-1"), max_size=40), max_size=3),
)
def test_any_forwarded_header_gives_an_address_or_none_never_an_error(peer, forwarded):
    guard = Guard(_config())
    client = guard.client_of(_scope(peer, *forwarded))
    assert client is None or isinstance(client, ipaddress.IPv4Address | ipaddress.IPv6Address)
    if peer != "127.0.0.3":
        assert client == (ipaddress.ip_address(peer) if peer != "x" else None)


# --------------------------------------------------------------------------- the dependencies and the guard


@pytest.fixture
def app_factory():
    def make(**admin: Any) -> tuple[FastAPI, Guard]:
        guard = Guard(_config(**admin))
        app = FastAPI()
        app.state.guard = guard
        app.add_middleware(AdminNetworkGuard, guard=guard)

        @app.get("/api/thing")
        async def read(access: Annotated[Access, Depends(read_access)]) -> dict:
            return {"via": access.via, "client": str(access.client)}

        @app.post("/api/thing")
        async def change(access: Annotated[Access, Depends(admin_access)]) -> dict:
            return {"via": access.via}

        @app.get("/api/login")  # stands for the dashboard's login: a session for the right token
        async def login(request: Request) -> Response:
            session = guard.sessions.create()
            response = Response(json.dumps({"csrf": session.csrf}), media_type="application/json")
            set_session_cookie(response, session)
            return response

        @app.get("/healthz")
        async def healthz() -> dict:
            return {"status": "ok"}

        @app.get("/apiary")
        async def apiary() -> dict:
            return {"guarded": False}

        return app, guard

    return make


def _client(app: FastAPI, peer: str = "127.0.0.1") -> TestClient:
    return TestClient(app, base_url="https://testserver", client=(peer, 40000))


def _problem(response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["type"] == f"urn:wakegrid:problem:{kind}", body
    return body


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token"}, 401, "unauthorized"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": f"bearer   {TOKEN}  "}, 200, None),
        (BEARER, 200, None),
    ],
)
def test_reads_and_changes_need_the_token_inside_the_networks(app_factory, method, headers, status, kind):
    app, _ = app_factory()
    with _client(app) as client:
        response = client.request(method, "/api/thing", headers=headers)
    if kind:
        _problem(response, status, kind)
        assert response.headers["www-authenticate"] == 'Bearer realm="wakegrid"'
        assert TOKEN not in response.text
    else:
        assert response.status_code == 200 and response.json()["via"] == "token"


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("headers", [{}, BEARER, {"Authorization": "Bearer wrong"}])
@pytest.mark.parametrize(
    "path", ["/api/thing", "/api/nowhere", "/docs", "/redoc", "/openapi.json", "/metrics", "/admin"]
)
def test_outside_the_networks_everything_guarded_is_403_whatever_the_token(app_factory, method, headers, path):
    app, _ = app_factory()
    with _client(app, peer="192.0.2.10") as client:
        response = client.request(method, path, headers=headers)
    body = _problem(response, 403, "outside-admin-networks")
    assert "192.0.2.10" in body["detail"]


def test_what_the_guard_covers():
    assert all(guarded(p) for p in ["/api", "/api/", "/api/status", "/admin", "/admin/login", "/docs", "/redoc"])
    assert all(guarded(p) for p in ["/docs/oauth2-redirect", "/openapi.json", "/metrics", "/api/../healthz"])
    assert not any(guarded(p) for p in ["/healthz", "/apiary", "/administrator", "/", "/metricsx", "/_wakegrid/x"])


def test_healthz_and_unguarded_paths_answer_anyone(app_factory):
    app, _ = app_factory()
    with _client(app, peer="192.0.2.10") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/apiary").status_code == 200


def test_a_forged_forwarded_header_from_a_non_edge_peer_is_ignored(app_factory):
    app, _ = app_factory()
    with _client(app, peer="127.0.0.2") as client:
        response = client.get("/api/thing", headers={**BEARER, "X-Forwarded-For": "127.0.0.1"})
    _problem(response, 403, "outside-admin-networks")


def test_the_edge_forwarding_an_inside_client_is_let_in_with_the_token(app_factory):
    app, _ = app_factory()
    with _client(app, peer="127.0.0.3") as client:
        inside = client.get("/api/thing", headers={**BEARER, "X-Forwarded-For": "198.51.100.1, 10.9.8.7"})
        outside = client.get("/api/thing", headers={**BEARER, "X-Forwarded-For": "10.9.8.7, 198.51.100.1"})
        malformed = client.get("/api/thing", headers={**BEARER, "X-Forwarded-For": "10.9.8.7, junk"})
        itself = client.get("/api/thing", headers=BEARER)  # 127.0.0.3 is not in the admin networks
    assert inside.status_code == 200 and inside.json() == {"via": "token", "client": "10.9.8.7"}
    _problem(outside, 403, "outside-admin-networks")
    _problem(malformed, 403, "outside-admin-networks")
    _problem(itself, 403, "outside-admin-networks")


def test_wake_path_requests_are_left_to_the_wake_path(app_factory):
    # A sleeping app's own /api/… handed over by the edge is not the admin API: the network guard lets
    # the wake path (in the daemon, WakePath, which checks its own peer) have it.
    app, _ = app_factory()
    with _client(app, peer="192.0.2.10") as client:
        response = client.get("/apiary", headers={"X-Wakegrid-Service": "app"})
    assert response.status_code == 200


def test_anonymous_read_opens_reads_inside_only_never_changes(app_factory):
    app, _ = app_factory(anonymous_read=True)
    with _client(app) as client:
        assert client.get("/api/thing").json()["via"] == "anonymous"
        _problem(client.post("/api/thing"), 401, "unauthorized")
        _problem(client.get("/api/thing", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    with _client(app, peer="192.0.2.10") as client:
        _problem(client.get("/api/thing"), 403, "outside-admin-networks")


def test_a_session_reads_and_changes_with_its_csrf_token_only(app_factory):
    app, guard = app_factory()
    with _client(app) as client:
        csrf = client.get("/api/login").json()["csrf"]
        assert client.get("/api/thing").json()["via"] == "session"
        _problem(client.post("/api/thing"), 403, "bad-csrf")
        _problem(client.post("/api/thing", headers={CSRF_HEADER: "forged"}), 403, "bad-csrf")
        _problem(client.post("/api/thing", headers={CSRF_HEADER: "é".encode("latin-1")}), 403, "bad-csrf")
        assert client.post("/api/thing", headers={CSRF_HEADER: csrf}).json() == {"via": "session"}
        assert client.post("/api/thing", data={"csrf": csrf}).json() == {"via": "session"}
        _problem(client.post("/api/thing", data={"csrf": "forged"}), 403, "bad-csrf")
        _problem(
            client.post(
                "/api/thing", content=b"%%%\xff", headers={"content-type": "application/x-www-form-urlencoded"}
            ),
            403,
            "bad-csrf",
        )
        session_id = client.cookies[SESSION_COOKIE]
        guard.sessions.drop(session_id)
        _problem(client.get("/api/thing"), 401, "unauthorized")
        _problem(client.post("/api/thing", headers={CSRF_HEADER: csrf}), 401, "unauthorized")
    with _client(app) as client:
        client.cookies.set(SESSION_COOKIE, "forged-session")
        _problem(client.get("/api/thing"), 401, "unauthorized")


def test_without_a_token_configured_admin_access_is_refused_and_says_why(app_factory):
    guard = Guard(DaemonConfig())
    app = FastAPI()
    app.state.guard = guard
    app.add_middleware(AdminNetworkGuard, guard=guard)

    @app.get("/api/thing", dependencies=[Depends(read_access)])
    async def read() -> dict:
        return {}

    with _client(app) as client:
        body = _problem(client.get("/api/thing", headers={"Authorization": "Bearer anything"}), 401, "unauthorized")
    assert body["detail"] == "no admin token is configured"


def test_an_app_without_its_guard_refuses_admin_access():
    app = FastAPI()
    app.add_middleware(AdminNetworkGuard, guard=Guard(_config()))

    @app.get("/api/thing", dependencies=[Depends(read_access)])
    async def read() -> dict:
        return {}

    with _client(app) as client:
        _problem(client.get("/api/thing", headers=BEARER), 403, "no-guard")


def test_refusals_are_logged_without_the_token(app_factory, caplog):
    caplog.set_level(logging.INFO, logger="wakegrid")
    app, _ = app_factory()
    with _client(app) as client:
        client.get("/api/thing", headers={"Authorization": f"Bearer {TOKEN}-guess"})
        client.get("/api/thing", headers=BEARER)
    with _client(app, peer="192.0.2.10") as client:
        client.get("/api/thing", headers=BEARER)
    refusals = [r for r in caplog.records if r.getMessage() == "admin request refused"]
    assert [r.fields["status"] for r in refusals] == [401, 403]
    assert refusals[1].fields["client"] == "192.0.2.10" and refusals[1].fields["path"] == "/api/thing"
    assert TOKEN not in caplog.text and all(TOKEN not in json.dumps(r.fields) for r in refusals)


# --------------------------------------------------------------------------- config: admin and tls


def _load(tmp_path: Path, text: str) -> DaemonConfig:
    path = tmp_path / "daemon.yml"
    path.write_text(text)
    return load_config(path)


def test_the_admin_defaults_are_closed():
    admin = DaemonConfig().admin
    assert admin.token is None and admin.anonymous_read is False
    assert admin.networks == ["127.0.0.0/8", "::1"]
    assert (admin.wake_rate.requests, admin.wake_rate.per, admin.session_ttl) == (120, 60.0, 43200.0)
    assert DaemonConfig().tls is None


def test_a_full_admin_and_tls_section(tmp_path):
    config = _load(
        tmp_path,
        "admin:\n"
        "  token: {file: /etc/wakegrid/admin-token}\n"
        "  networks: [192.168.1.0/24, '::1', 10.200.0.5]\n"
        "  anonymous_read: true\n"
        "  wake_rate: {requests: 10, per: 2m}\n"
        "  session_ttl: 8h\n"
        "tls: {cert: tls/daemon.crt, key: /etc/wakegrid/tls.key}\n",
    )
    admin = config.admin
    assert admin.token.source == "file:/etc/wakegrid/admin-token" and admin.token.where == "admin.token"
    assert admin.networks == ["192.168.1.0/24", "::1", "10.200.0.5"] and admin.anonymous_read
    assert (admin.wake_rate.requests, admin.wake_rate.per, admin.session_ttl) == (10, 120.0, 28800.0)
    assert config.tls.cert == str(tmp_path / "tls" / "daemon.crt") and config.tls.key == "/etc/wakegrid/tls.key"


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("admin:\n  token: 12345\n", 2, "admin.token: a secret is a string, {env: VAR}, {file: PATH} or an Ansible"),
        ("admin:\n  token: {env: ''}\n", 2, "admin.token: a secret is"),
        ("admin:\n  token: {vault: x, file: y}\n", 2, "admin.token: a secret is"),
        ("admin:\n  token: ''\n", 2, "admin.token: secret is empty"),
        ("admin:\n  networks: [192.168.1.0/33]\n", 2, "admin.networks: '192.168.1.0/33' is neither an IP"),
        ("admin:\n  networks: lan\n", 2, "admin.networks: must be a list"),
        ("admin:\n  anonymous_read: sometimes\n", 2, "admin.anonymous_read: must be true or false"),
        ("admin:\n  wake_rate: {requests: 0}\n", 2, "admin.wake_rate.requests: must be greater than or equal to 1"),
        ("admin:\n  wake_rate: {per: soon}\n", 2, "admin.wake_rate.per: 'soon' is not a duration"),
        ("admin:\n  wake_rate: {per: 2d}\n", 2, "admin.wake_rate.per"),
        ("admin:\n  wake_rate: {per: 1y}\n", 2, "admin.wake_rate.per"),
        ("admin:\n  wake_rate: {per: .nan}\n", 2, "admin.wake_rate.per"),
        ("admin:\n  session_ttl: 0s\n", 2, "admin.session_ttl: '0s' is not a positive duration"),
        ("admin:\n  session_ttl: 400d\n", 2, "admin.session_ttl"),
        ("admin:\n  tokn: x\n", 2, "admin.tokn: unknown field"),
        ("admin: open\n", 1, "admin: must be a mapping"),
        ("tls: {cert: a.crt}\n", 1, "tls.key: required"),
        ("tls:\n  cert: a.crt\n  key: ''\n", 3, "tls.key: '' is not a file path"),
        ("tls:\n  cert: [a]\n  key: b\n", 2, "tls.cert: ['a'] is not a file path"),
        ("tls: yes\n", 1, "tls: must be a mapping"),
    ],
)
def test_invalid_admin_and_tls_values_name_the_key_and_line(tmp_path, text, line, expected):
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    message = str(caught.value)
    assert f"daemon.yml:{line}: {expected}" in message, message


def test_a_token_never_appears_in_config_errors(tmp_path):
    secret = "inline-admin-token-that-must-stay-hidden"
    text = (
        f"admin:\n  token: {secret}\n  networks: [nowhere]\n  anonymous_read: {secret}\n"
        f"  wake_rate: {{requests: 0}}\ninterval: {secret}x\n"
    )
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text.replace(f"interval: {secret}x\n", "interval: never\n"))
    message = str(caught.value)
    assert "admin.networks" in message and "admin.anonymous_read" in message and secret not in message
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"admin:\n  token:\n    {secret}: {secret}\n")
    assert "admin.token" in str(caught.value) and secret not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"admin:\n  token: [{secret}]\n")
    assert "admin.token" in str(caught.value) and secret not in str(caught.value)


VALID = {
    "listen": "127.0.0.1:9380",
    "edge_addresses": ["127.0.0.3"],
    "admin": {
        "token": {"env": "WAKEGRID_ADMIN_TOKEN"},
        "networks": ["127.0.0.1/32", "::1"],
        "anonymous_read": False,
        "wake_rate": {"requests": 30, "per": "60s"},
        "session_ttl": "12h",
    },
    "tls": {"cert": "/etc/wakegrid/tls.crt", "key": "/etc/wakegrid/tls.key"},
}

_JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _mutate(data: Any, path: tuple, replacement: Any, drop: bool) -> Any:
    if not path:
        return replacement
    head, *rest = path
    copy = dict(data) if isinstance(data, dict) else list(data)
    if drop and not rest:
        del copy[head]
    else:
        copy[head] = _mutate(copy[head], tuple(rest), replacement, drop)
    return copy


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), junk=_JUNK, drop=st.booleans())
def test_any_mutation_of_a_valid_config_loads_or_is_a_config_error(tmp_path, data, junk, drop):
    paths = [p for p in _paths(VALID) if p and p[0] in ("admin", "tls", "edge_addresses")]
    path = data.draw(st.sampled_from(paths))
    mutated = _mutate(VALID, path, junk, drop)
    config_file = tmp_path / "mutated.yml"
    config_file.write_text(yaml.safe_dump(mutated, allow_unicode=True))
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        assert all(problem.path or problem.line for problem in exc.problems), str(exc)
        return
    Guard(config)  # a config that loads builds its guard


# --------------------------------------------------------------------------- tls: what the daemon checks before serving


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pems(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    for name in ("a", "b"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)  # fmt: skip
    _openssl("rsa", "-in", "a.key", "-aes256", "-passout", "pass:secret", "-out", "a-encrypted.key", cwd=directory)
    return directory


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("a.crt", "a.key", None),
        ("missing.crt", "a.key", "tls.cert: cannot read {d}/missing.crt: No such file or directory"),
        ("a.crt", "missing.key", "tls.key: cannot read {d}/missing.key: No such file or directory"),
        ("a.key", "a.key", "tls.cert: {d}/a.key is not a PEM certificate"),
        ("a.crt", "a.crt", "tls.key: {d}/a.crt is not a PEM private key"),
        ("a.crt", "b.key", "tls.key: {d}/b.key is not the key of {d}/a.crt"),
        # Never a passphrase prompt on a terminal nobody watches: refused at once.
        ("a.crt", "a-encrypted.key", "tls.key: {d}/a-encrypted.key is encrypted: the daemon needs it unencrypted"),
        (".", "a.key", "tls.cert: cannot read {d}/.: Is a directory"),
    ],
)
def test_what_stops_the_daemon_from_serving_https(pems, cert, key, expected):
    config = DaemonConfig.model_validate({"tls": {"cert": f"{pems}/{cert}", "key": f"{pems}/{key}"}})
    assert tls_problem(config) == (expected.format(d=pems) if expected else None)
    assert tls_problem(DaemonConfig()) is None
