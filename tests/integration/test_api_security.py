"""The security matrix against a real ``wakegrid daemon`` process on loopback, over HTTPS.

No lab. The daemon listens on 127.0.0.1 with a self-signed certificate (``tls:``), its admin
networks are ``127.0.0.1/32`` and its edge is ``127.0.0.3``; the test connects from distinct
loopback source addresses to be inside (127.0.0.1), outside (127.0.0.2) or the edge (127.0.0.3).
Every route the daemon serves — the API as its own OpenAPI document lists it, the docs, the
metrics, the dashboard's pages — is asked with no token, a wrong token and the right one, from
inside and outside, with a forged ``X-Forwarded-For`` from a non-edge peer and through the edge.
The wake path's per-client rate limit is driven as the edge drives it. At the end, the daemon's
log and every response are searched for the admin token and the fleet's secret: none may appear.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from loopback import loopback_edge
from support import free_port, wait_for

WAKEGRID = [sys.executable, "-m", "wakegrid.cli"]
INSIDE = "127.0.0.1"
OUTSIDE = "127.0.0.2"
EDGE = "127.0.0.3"
TOKEN = f"api-security-token-{secrets.token_hex(12)}"
FLEET_SECRET = f"pve-token-secret-{secrets.token_hex(12)}"
WAKE_RATE = 10  # also the dashboard's login attempts per client (guard.rate): the matrix logs in a few times
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# Path parameters: names the fleet knows (an unknown one is a 404, which says nothing about access).
PARAMETERS = {"service": "web", "node": "gw", "name": "gw", "kind": "node", "id": "1", "action_id": "1"}
# The dashboard's pages are no part of the OpenAPI document (include_in_schema=False).
PAGES = ["/admin", "/admin/hosts", "/admin/services", "/admin/history", "/admin/discovered"]
# Served beside the API, not listed in the document.
DOCS = ["/openapi.json", "/docs"]
# Guarded whether served or not: an outsider learns nothing, not even which routes exist.
UNSERVED = ["/redoc", "/api/no-such-route", "/admin/no-such-page", "/docs/oauth2-redirect"]


def _fleet(closed_port: int) -> dict:
    return {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            "pve": {
                "kind": "machine",
                "site": "home",
                "address": "127.0.0.4",
                "mac": "52:54:00:00:00:04",
                # A secret the daemon holds (and tries to use: nothing answers there).
                "proxmox": {
                    "api": f"https://127.0.0.1:{closed_port}",
                    "token_id": "root@pam!wakegrid",
                    "token_secret": FLEET_SECRET,
                },
            },
        },
        "services": {
            "web": {
                "domain": "web.loop.test",
                "policy": {"mode": "on_demand", "idle_after": "1h"},
                "health": {"path": "/health"},
                # Nothing listens there: the service is never healthy, every request waits on a wake.
                "backends": [{"node": "gw", "port": closed_port}],
            }
        },
    }


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _config(port: int) -> dict:
    return {
        "listen": f"127.0.0.1:{port}",
        "interval": "1s",
        "edge_addresses": [EDGE],
        "hold_timeout": "2s",
        "caddy": {"admin": f"127.0.0.1:{free_port()}", "access_log": None},  # no Caddy here
        "wireguard": {"command": ["false"]},
        "admin": {
            "token": {"file": "admin-token"},  # beside the config file
            "networks": ["127.0.0.1/32"],
            "wake_rate": {"requests": WAKE_RATE, "per": "60s"},
            "session_ttl": "1h",
        },
        "tls": {"cert": "tls.crt", "key": "tls.key"},
        "log_format": "json",
    }


@dataclass
class Daemon:
    port: int
    cert: Path
    log: Path
    proc: subprocess.Popen
    seen: list[str] = field(default_factory=list)  # every response, headers and body, for the secret grep

    def client(self, source: str) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.cert))
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}",
            transport=httpx.HTTPTransport(local_address=source, verify=context),
            timeout=20,
            follow_redirects=False,
        )

    def send(self, source: str, method: str, path: str, stream: bool = False, **kwargs) -> httpx.Response:
        with self.client(source) as client:
            if stream:  # an event stream never ends: its status and headers are the answer
                with client.stream(method, path, **kwargs) as response:
                    text = ""
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        text = response.read().decode("utf-8", "replace")  # a refusal: a whole problem document
                    self.seen.append(f"{method} {path} {response.status_code} {dict(response.headers)}\n{text}")
                    return response
            response = client.request(method, path, **kwargs)
        self.seen.append(f"{method} {path} {response.status_code} {dict(response.headers)}\n{response.text}")
        return response

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("api-security")
    fleet = root / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(free_port()), sort_keys=False))
    (root / "admin-token").write_text(TOKEN + "\n")
    cert, _key = _certificate(root)
    port = free_port()
    config = root / "daemon.yml"
    config.write_text(yaml.safe_dump(_config(port), sort_keys=False))
    log = root / "daemon.log"
    command = [*WAKEGRID, "daemon", "--dry-run", "--fleet", str(fleet), "--config", str(config)]
    with log.open("w") as stderr:  # a file, not a pipe: a chatty daemon never blocks on a full pipe
        proc = subprocess.Popen(
            [*command, "--state-dir", str(root / "state")],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    handle = Daemon(port, cert, log, proc)

    def healthy() -> bool:
        assert proc.poll() is None, f"the daemon exited {proc.returncode}:\n{log.read_text()}"
        return handle.send(OUTSIDE, "GET", "/healthz").status_code == 200

    try:
        wait_for(healthy, timeout=30, what="the daemon's /healthz over HTTPS", errors=(httpx.TransportError,))
        yield handle
    finally:
        handle.stop()


# --------------------------------------------------------------------------- the routes


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with its parameters filled in
    template: str
    stream: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


def _fill(template: str) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: PARAMETERS.get(m.group(1), "x"), template)


def _api_routes(daemon: Daemon) -> list[Route]:
    """Every operation of the served OpenAPI document (fetched from inside, with the token)."""
    response = daemon.send(INSIDE, "GET", "/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    routes = []
    for template, operations in response.json()["paths"].items():
        for method, operation in operations.items():
            if method.upper() not in {"GET", "HEAD", *MUTATING}:
                continue
            content = {
                media for answer in operation.get("responses", {}).values() for media in (answer.get("content") or {})
            }
            stream = "text/event-stream" in content or template == "/api/events"
            routes.append(Route(method.upper(), _fill(template), template, stream))
    assert routes, "the OpenAPI document lists no operation"
    return routes


@pytest.fixture(scope="module")
def routes(daemon: Daemon) -> list[Route]:
    api = _api_routes(daemon)
    assert any(r.template.startswith("/api/") for r in api), [str(r) for r in api]
    extra = [Route("GET", path, path) for path in [*DOCS, "/metrics", *PAGES, "/admin/login", "/healthz"]]
    extra += [Route("POST", "/admin/login", "/admin/login"), Route("POST", "/admin/logout", "/admin/logout")]
    return api + extra


TOKENS = {
    "no token": {},
    "wrong token": {"Authorization": f"Bearer {TOKEN[:-4]}0000"},
    "right token": {"Authorization": f"Bearer {TOKEN}"},
}


def _ask(daemon: Daemon, source: str, route: Route, headers: dict[str, str]) -> httpx.Response:
    return daemon.send(source, route.method, route.path, stream=route.stream, headers=headers)


def _is_problem(response: httpx.Response, status: int, kind: str) -> bool:
    if response.status_code != status or response.headers.get("content-type") != "application/problem+json":
        return False
    body = response.json()
    return body.get("status") == status and body.get("type") == f"urn:wakegrid:problem:{kind}"


def test_outside_the_admin_networks_every_route_but_healthz_is_403_whatever_the_token(daemon, routes):
    wrong = []
    for route in [*routes, *(Route(method, path, path) for path in UNSERVED for method in ("GET", "POST"))]:
        for name, headers in TOKENS.items():
            response = _ask(daemon, OUTSIDE, route, headers)
            if route.path == "/healthz":
                ok = response.status_code == 200
            else:
                ok = _is_problem(response, 403, "outside-admin-networks") and OUTSIDE in response.json()["detail"]
            if not ok:
                wrong.append(f"{route} ({name}): {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_a_forwarded_header_from_a_non_edge_peer_is_not_believed(daemon, routes):
    forged = {**TOKENS["right token"], "X-Forwarded-For": INSIDE}
    wrong = [
        f"{route}: {response.status_code}"
        for route in routes
        if route.path != "/healthz"
        and not _is_problem(response := _ask(daemon, OUTSIDE, route, forged), 403, "outside-admin-networks")
    ]
    assert not wrong, "\n".join(wrong)


def _allowed(response: httpx.Response) -> bool:
    return response.status_code not in (401, 403) and response.status_code < 500


def test_through_the_edge_the_forwarded_client_decides(daemon, routes):
    right = TOKENS["right token"]
    wrong = []
    for route in routes:
        if route.path in ("/healthz", "/admin/login", "/admin/logout"):
            continue  # open, or the dashboard's own form (its token is a form field)
        inside = _ask(daemon, EDGE, route, {**right, "X-Forwarded-For": f"198.51.100.9, {INSIDE}"})
        if not _allowed(inside):
            wrong.append(f"{route} via the edge for {INSIDE}: {inside.status_code} {inside.text[:200]}")
        outside = _ask(daemon, EDGE, route, {**right, "X-Forwarded-For": f"{INSIDE}, 198.51.100.9"})
        if not _is_problem(outside, 403, "outside-admin-networks"):
            wrong.append(f"{route} via the edge for 198.51.100.9: {outside.status_code}")
        itself = _ask(daemon, EDGE, route, right)  # the edge host is not an admin network here
        if not _is_problem(itself, 403, "outside-admin-networks"):
            wrong.append(f"{route} from the edge itself: {itself.status_code}")
        malformed = _ask(daemon, EDGE, route, {**right, "X-Forwarded-For": "127.0.0.1, not-an-address"})
        if not _is_problem(malformed, 403, "outside-admin-networks"):
            wrong.append(f"{route} via the edge with a malformed header: {malformed.status_code}")
    assert not wrong, "\n".join(wrong)


def test_inside_every_route_asks_for_the_token(daemon, routes):
    wrong = []
    for route in routes:
        for name, headers in TOKENS.items():
            response = _ask(daemon, INSIDE, route, headers)
            status = response.status_code
            if route.path == "/healthz" or (route.method, route.path) == ("GET", "/admin/login"):
                ok = status == 200  # liveness; the login form
            elif route.path == "/admin/login":
                ok = status == 401  # the form carries no token field: refused whatever the header says
            elif route.path == "/admin/logout":
                ok = status == 303 and response.headers["location"] == "/admin/login"  # no session to end
            elif route.path in PAGES:
                # A page sends a reader without a session or the token to the login form.
                ok = (
                    status == 200
                    if name == "right token"
                    else status == 303 and response.headers["location"].startswith("/admin/login")
                )
            elif name == "right token":
                ok = _allowed(response)
            else:
                ok = _is_problem(response, 401, "unauthorized") and "Bearer" in response.headers["www-authenticate"]
            if not ok:
                wrong.append(f"{route} ({name}): {status} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)


def test_mutating_routes_need_the_token_even_inside(daemon, routes):
    mutating = [r for r in routes if r.method in MUTATING and r.template.startswith("/api/")]
    assert mutating, "the API has no mutating route"
    for route in mutating:
        assert _is_problem(_ask(daemon, INSIDE, route, {}), 401, "unauthorized"), route
        response = _ask(daemon, INSIDE, route, TOKENS["right token"])
        assert _allowed(response), f"{route}: {response.status_code} {response.text[:300]}"


def test_a_dashboard_session_reads_and_changes_with_its_csrf_token(daemon, routes):
    change = next(
        r for r in routes if r.method in MUTATING and r.template.startswith("/api/") and "{" not in r.template
    )
    read = next(
        r
        for r in routes
        if r.method == "GET" and r.template.startswith("/api/") and "{" not in r.template and not r.stream
    )
    with daemon.client(INSIDE) as client:
        login = client.post("/admin/login", data={"token": TOKEN, "next": "/admin"})
        daemon.seen.append(f"{login.headers}\n{login.text}")
        assert login.status_code == 303, login.text
        cookie = login.headers["set-cookie"]
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert cookie.startswith("wakegrid_session=") and {"httponly", "secure", "samesite=strict", "path=/"} <= flags
        page = client.get("/admin")
        daemon.seen.append(page.text)
        assert page.status_code == 200
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text).group(1)
        assert client.get(read.path).status_code == 200
        refused = client.request(change.method, change.path)
        assert _is_problem(refused, 403, "bad-csrf"), refused.text
        forged = client.request(change.method, change.path, headers={"X-CSRF-Token": "forged"})
        assert _is_problem(forged, 403, "bad-csrf"), forged.text
        accepted = client.request(change.method, change.path, headers={"X-CSRF-Token": csrf})
        daemon.seen.append(accepted.text)
        assert _allowed(accepted), accepted.text
        session = client.cookies["wakegrid_session"]
        assert client.post("/admin/logout", data={"csrf": csrf}).status_code == 303
        client.cookies.set("wakegrid_session", session)  # the cookie replayed after logout
        assert _is_problem(client.get(read.path), 401, "unauthorized")
    with daemon.client(OUTSIDE) as client:  # a session from outside is still outside
        client.cookies.set("wakegrid_session", session)
        assert _is_problem(client.get(read.path), 403, "outside-admin-networks")


# --------------------------------------------------------------------------- the wake path


def _wake(daemon: Daemon, source: str, client: str, path: str = "/") -> httpx.Response:
    headers = {
        "X-Wakegrid-Service": "web",
        "X-Wakegrid-Client": client,
        "X-Wakegrid-Error": "503",
        "Accept": "text/html",  # a browser: the waiting page at once, nothing held
    }
    return daemon.send(source, "GET", path, headers=headers)


def test_the_wake_path_limits_each_client_and_only_that_client(daemon):
    first = [_wake(daemon, EDGE, "198.51.100.20") for _ in range(WAKE_RATE)]
    assert [r.status_code for r in first] == [503] * WAKE_RATE
    assert all("text/html" in r.headers["content-type"] for r in first)  # the waiting page
    limited = _wake(daemon, EDGE, "198.51.100.20")
    assert _is_problem(limited, 429, "rate-limited"), limited.text
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "198.51.100.20" in limited.json()["detail"]
    other = _wake(daemon, EDGE, "198.51.100.21")
    assert other.status_code == 503 and "text/html" in other.headers["content-type"]


def test_the_wake_path_is_the_edge_s_only(daemon):
    refused = _wake(daemon, OUTSIDE, "198.51.100.22")
    assert _is_problem(refused, 403, "not-the-edge")
    # A sleeping app's own /api/… handed over by the edge is the wake path's, not the admin API's.
    handed = _wake(daemon, EDGE, "198.51.100.23", path="/api/status")
    assert handed.status_code == 503 and "text/html" in handed.headers["content-type"]


# --------------------------------------------------------------------------- last: what the daemon said


def test_no_secret_in_the_daemon_s_log_or_any_response(daemon):
    if len(daemon.seen) < 10:  # run alone: exercise the routes first, so that there is something to search
        for name, headers in TOKENS.items():
            for source in (INSIDE, OUTSIDE):
                daemon.send(source, "GET", "/api/config", headers=headers)
                daemon.send(source, "GET", "/openapi.json", headers=headers)
                daemon.send(source, "POST", "/admin/login", data={"token": TOKEN if name != "no token" else ""})
    config = daemon.send(INSIDE, "GET", "/api/config", headers=TOKENS["right token"])
    assert config.status_code == 200 and "pve" in config.text
    log = daemon.stop()
    assert daemon.proc.returncode == 0, log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e["msg"] == "admin request refused" for e in entries)  # refusals are logged…
    for secret in (TOKEN, FLEET_SECRET, TOKEN.rsplit("-", 1)[1], FLEET_SECRET.rsplit("-", 1)[1]):
        assert secret not in log, f"a secret is in the daemon's log: {secret[:6]}…"  # …without any secret
        leaked = [entry[:200] for entry in daemon.seen if secret in entry]
        assert not leaked, leaked
    assert "Traceback" not in log


# --------------------------------------------------------------------------- TLS that cannot be served


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "tls.cert: cannot read"),
        (lambda d: (d / "tls.crt").write_text("not a certificate\n"), "tls.cert:"),
        (lambda d: _certificate(d) and (d / "tls.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n"), "tls"),
    ],
    ids=["missing", "not-pem", "bad-key"],
)
def test_a_certificate_that_cannot_serve_stops_the_daemon_with_a_clear_error(tmp_path, setup, expected):
    setup(tmp_path)
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(free_port()), sort_keys=False))
    (tmp_path / "admin-token").write_text(TOKEN)
    config = tmp_path / "daemon.yml"
    config.write_text(yaml.safe_dump(_config(free_port())))
    proc = subprocess.run(
        [*WAKEGRID, "daemon", "--fleet", str(fleet), "--config", str(config), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    error = next(json.loads(line) for line in proc.stderr.splitlines() if "cannot serve HTTPS" in line)
    assert expected in error["error"] and str(tmp_path) in error["error"], error
    assert "Traceback" not in proc.stderr and TOKEN not in proc.stderr
