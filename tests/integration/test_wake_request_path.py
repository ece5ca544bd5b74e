"""The wake request path of ``wakegrid daemon``, as a process on loopback, with a real browser.

No lab: the requests go straight to the daemon with the headers the edge's Caddy sets (from
127.0.0.1, an edge address), which is the contract between the two (docs/wake-on-demand.md).
The fleet's on_demand service ``app`` runs on machine ``srv`` (127.0.0.3): its "SSH port" is a
listener the test opens when the machine "boots" (power refused = unknown before it, up after),
and its backend is a real HTTP server the test starts only after the first request arrived,
standing for the application coming up; the daemon sees it through its own health observer.
Nothing here is woken for real (the machine's power is never "down" on loopback, so the daemon
starts nothing): what is tested is the request path around a wake.

Chromium is Debian's ``chromium`` driven by Playwright for Python (no browser download).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from loopback import loopback_edge
from support import free_port, wait_for

from wakegrid.journal import SqliteStore

WAKEGRID = [sys.executable, "-m", "wakegrid.cli"]
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SRV = "127.0.0.3"  # the sleeping machine and its app
OUTSIDER = "127.0.0.2"  # a peer that is not the edge
EDGE_HEADERS = {"X-Wakegrid-Service": "app", "X-Wakegrid-Client": "127.0.0.1", "X-Wakegrid-Error": "503"}


def _fleet(ssh_port: int, app_port: int) -> dict:
    return {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            "srv": {
                "kind": "machine",
                "site": "home",
                "address": SRV,
                "mac": "52:54:00:00:00:03",
                "ssh": {"port": ssh_port},
            },
        },
        "services": {
            "app": {
                "domain": "app.loop.test",
                "policy": {"mode": "on_demand", "idle_after": "1h"},
                "allow": ["127.0.0.0/8", "10.0.0.0/8"],
                "health": {"path": "/health"},
                "backends": [{"node": "srv", "port": app_port}],
            }
        },
    }


class App:
    """The service's application: a real HTTP server on the sleeping machine's address, started on demand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests: list[tuple[str, str, bytes]] = []  # what it served, health checks left out
        self._server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == "/health":
                    payload, kind = b"ok", "text/plain"
                else:
                    app.requests.append((self.command, self.path, body))
                    if self.headers.get("Accept", "").startswith("text/html"):
                        payload = f"<!doctype html><title>the app</title><h1 id=app>app at {self.path}</h1>".encode()
                        kind = "text/html"
                    else:
                        payload = json.dumps(
                            {
                                "method": self.command,
                                "path": self.path,
                                "echo": body.decode(),
                                "host": self.headers["Host"],
                            }
                        ).encode()
                        kind = "application/json"
                self.send_response(201 if self.command == "POST" else 200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("X-App", "yes")
                self.send_header("Connection", "close")  # stop() really stops it: no kept-alive connection answers
                self.send_header("Set-Cookie", "a=1")
                self.send_header("Set-Cookie", "b=2")
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # fifty requests at once: the default backlog of 5 would reset some

        self._server = Server((SRV, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class Daemon:
    port: int
    state: Path
    proc: subprocess.Popen
    app: App
    ssh_port: int
    _ssh: socket.socket | None = None
    logs: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def boot_machine(self) -> None:
        """The machine comes up: its SSH port accepts connections."""
        self._ssh = socket.create_server((SRV, self.ssh_port))

    def close(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logs = [json.loads(line) for line in self.proc.stderr.read().splitlines() if line.startswith("{")]
        self.app.stop()


def now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def store_epoch():
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def daemon(tmp_path: Path, request) -> Iterator[Daemon]:
    ssh_port, app_port, port = free_port(), free_port(), free_port()
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(yaml.safe_dump(_fleet(ssh_port, app_port), sort_keys=False))
    settings = {
        "listen": f"127.0.0.1:{port}",
        "interval": "1s",
        "hold_timeout": "60s",
        "max_held_body": 1024,
        "caddy": {"admin": f"127.0.0.1:{free_port()}", "access_log": None},  # no Caddy here: unknown
        "wireguard": {"command": ["false"]},
        **getattr(request, "param", {}),
    }
    config = tmp_path / "daemon.yml"
    config.write_text(yaml.safe_dump(settings))
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [*WAKEGRID, "daemon", "--fleet", str(fleet), "--config", str(config), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    handle = Daemon(port, state, proc, App(app_port), ssh_port)
    try:

        def first_round():
            health = httpx.get(f"{handle.url}/healthz", timeout=5).json()
            return health["last_round"]

        wait_for(first_round, timeout=30, what="the daemon's first round", errors=(httpx.HTTPError,))
        yield handle
    finally:
        handle.close()


def _wake_state(d: Daemon):
    with SqliteStore(d.state / "journal.sqlite3") as store:
        history = store.wake_history("app").get("app")
        pending = store.memory(store_epoch(), now()).wake_requests
    return history, pending


def _held(d: Daemon) -> bool:
    """The daemon journaled a wake request for app (the first request arrived)."""
    history, pending = _wake_state(d)
    return bool(pending) or history is not None


# --------------------------------------------------------------------------- browsers


def _playwright():
    """Playwright's sync API, driving Debian's chromium (never a downloaded browser)."""
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    return playwright


def test_browser_waits_on_a_live_page_and_lands_on_the_requested_url(daemon: Daemon):
    playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(extra_http_headers=EDGE_HEADERS, viewport={"width": 900, "height": 640})
            page = context.new_page()
            statuses = []
            page.on("response", lambda r: statuses.append((r.url, r.status, r.headers)))
            page.goto(f"{daemon.url}/some/page?x=1", wait_until="domcontentloaded")

            # The waiting page, served at the URL asked for: every layer of the chain, with its state.
            first = next(s for s in statuses if s[0].endswith("/some/page?x=1"))
            assert first[1] == 503 and first[2]["cache-control"] == "no-store" and int(first[2]["retry-after"]) >= 1
            assert page.title() == "Waking app.loop.test…"
            keys = page.eval_on_selector_all("#layers li", "items => items.map(i => i.dataset.key)")
            assert keys == ["srv", "application"]
            assert "first wake of this service" in page.inner_text("#estimate")
            # The live stream is connected: the machine's power (refused: unknown) arrives in words.
            page.wait_for_selector('li[data-key="srv"][data-state="unknown"]', timeout=15_000)
            assert "refuses connections" in page.inner_text('li[data-key="srv"] .detail')

            # The machine boots: the page shows it up without a reload (server-sent events).
            navigations = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url))
            daemon.boot_machine()
            page.wait_for_selector('li[data-key="srv"][data-state="up"]', timeout=15_000)
            page.wait_for_selector('li[data-key="application"][data-state="starting"]', timeout=15_000)
            assert navigations == [], "the page reloaded instead of following the events"
            page.screenshot(path=str(ARTIFACTS / "waiting-page-mid-wake.png"), full_page=True)
            assert "health check" in page.inner_text('li[data-key="application"] .detail')
            assert "127.0.0.1" not in page.inner_text("main")  # one visitor never sees another's address

            # The application comes up: the browser continues to the URL it asked for, served by the app.
            daemon.app.start()
            page.wait_for_selector("#app", timeout=20_000)
            assert page.url == f"{daemon.url}/some/page?x=1"
            assert page.inner_text("#app") == "app at /some/page?x=1"
            assert [r for r in daemon.app.requests if r[1] == "/some/page?x=1"]
        finally:
            browser.close()
    history, pending = _wake_state(daemon)
    assert history is not None and history.wakes == 1 and not pending
    assert history.last_requests[0].client == "127.0.0.1"


def test_without_javascript_the_page_refreshes_itself_onto_the_app(daemon: Daemon):
    playwright = _playwright()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(extra_http_headers=EDGE_HEADERS, java_script_enabled=False)
            page = context.new_page()
            page.goto(f"{daemon.url}/no/js?y=2", wait_until="domcontentloaded")
            assert page.title() == "Waking app.loop.test…"
            daemon.boot_machine()
            daemon.app.start()
            page.wait_for_selector("#app", timeout=20_000)  # the meta refresh, every 3 s
            assert page.url == f"{daemon.url}/no/js?y=2" and page.inner_text("#app") == "app at /no/js?y=2"
        finally:
            browser.close()


def test_waiting_page_works_without_javascript(daemon: Daemon):
    response = httpx.get(
        f"{daemon.url}/docs/?q=a%20b", headers={**EDGE_HEADERS, "Accept": "text/html,*/*;q=0.8"}, timeout=10
    )
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store" and response.headers["retry-after"].isdigit()
    html = response.text
    assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in html
    assert 'href="/docs/?q=a%20b"' in html  # the retry button goes back to the URL asked for
    assert 'src="/_wakegrid/static/waiting.js"' in html and "http" not in html.split("<main>")[1].split("</main>")[0]
    script = httpx.get(f"{daemon.url}/_wakegrid/static/waiting.js", headers=EDGE_HEADERS, timeout=5)
    assert script.status_code == 200 and "EventSource" in script.text
    missing = httpx.get(f"{daemon.url}/_wakegrid/static/../app.py", headers=EDGE_HEADERS, timeout=5)
    assert missing.status_code == 404


# --------------------------------------------------------------------------- API clients


def test_held_post_gets_the_apps_real_answer_delivered_once(daemon: Daemon):
    body = json.dumps({"hello": "world", "n": 1})
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            httpx.post,
            f"{daemon.url}/api/items?id=7",
            content=body,
            headers={**EDGE_HEADERS, "Content-Type": "application/json", "Host": "app.loop.test"},
            timeout=60,
        )
        wait_for(lambda: _held(daemon), timeout=10, what="the wake request")
        time.sleep(1.5)  # a round or two while the request is held: nothing is sent anywhere yet
        assert not future.done()
        daemon.boot_machine()
        daemon.app.start()
        response = future.result(timeout=60)
    assert response.status_code == 201, response.text
    assert response.json() == {"method": "POST", "path": "/api/items?id=7", "echo": body, "host": "app.loop.test"}
    assert response.headers["x-app"] == "yes"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert daemon.app.requests == [("POST", "/api/items?id=7", body.encode())]  # exactly once
    # Served at once now that it is up (the edge's health checks may lag behind): no new wake.
    again = httpx.put(f"{daemon.url}/x", content=b"2", headers=EDGE_HEADERS, timeout=10)
    assert again.status_code == 200 and again.json()["echo"] == "2"
    history, pending = _wake_state(daemon)
    assert history.wakes == 1 and history.requests == 1 and not pending


def test_fifty_concurrent_requests_one_wake_fifty_answers(daemon: Daemon):
    def call(i: int) -> httpx.Response:
        return httpx.post(f"{daemon.url}/n/{i}", content=str(i), headers=EDGE_HEADERS, timeout=60)

    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(call, i) for i in range(50)]
        wait_for(lambda: _held(daemon), timeout=10, what="the wake request")
        time.sleep(1.0)
        daemon.boot_machine()
        daemon.app.start()
        responses = [f.result(timeout=60) for f in futures]
    assert [r.status_code for r in responses] == [201] * 50, [r.text for r in responses if r.status_code != 201][:3]
    assert sorted(r.json()["echo"] for r in responses) == sorted(str(i) for i in range(50))
    assert sorted(path for _, path, _ in daemon.app.requests) == sorted(f"/n/{i}" for i in range(50))
    history, pending = _wake_state(daemon)
    assert history.wakes == 1 and history.requests == 1 and not pending, history


def test_a_service_that_fell_asleep_again_is_woken_again_with_an_estimate(daemon: Daemon):
    daemon.boot_machine()
    daemon.app.start()
    first = httpx.get(f"{daemon.url}/one", headers=EDGE_HEADERS, timeout=30)
    assert first.status_code == 200 and first.json()["path"] == "/one"
    # The app stops; the daemon's last observation still says healthy. The request is not lost:
    # the refused connection sent nothing, so it waits for a new wake, which has an estimate now.
    daemon.app.stop()
    daemon.app = App(daemon.app.port)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, f"{daemon.url}/two", content=b"2", headers=EDGE_HEADERS, timeout=60)
        page = httpx.get(f"{daemon.url}/three", headers={**EDGE_HEADERS, "Accept": "text/html"}, timeout=10)
        assert page.status_code == 503 and "usually ready in ~" in page.text, page.text
        daemon.app.start()
        second = held.result(timeout=60)
    assert second.status_code == 201 and second.json()["echo"] == "2"
    assert [path for _, path, _ in daemon.app.requests] == ["/two"]
    history, pending = _wake_state(daemon)
    assert history.wakes == 2 and not pending


def test_a_websocket_handshake_wakes_the_service_and_is_told_to_come_back(daemon: Daemon):
    headers = {**EDGE_HEADERS, "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.get, f"{daemon.url}/ws", headers=headers, timeout=60)
        wait_for(lambda: _held(daemon), timeout=10, what="the wake request")
        daemon.boot_machine()
        daemon.app.start()
        response = future.result(timeout=60)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["type"] == "urn:wakegrid:problem:reconnect"
    assert daemon.app.requests == []  # a handshake is never half-delivered


@pytest.mark.parametrize("daemon", [{"interval": "30s"}], indirect=True)
def test_an_app_coming_up_is_seen_at_once_not_at_the_next_scheduled_round(daemon: Daemon):
    # The machine is up, the application not yet: rounds are 30 s apart, yet the held request is
    # answered within a second of the app answering its health check (the wake tries the check
    # itself and asks for a round when it passes; the round's health observer makes it official).
    daemon.boot_machine()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(httpx.get, f"{daemon.url}/fast", headers=EDGE_HEADERS, timeout=60)
        wait_for(lambda: _held(daemon), timeout=10, what="the wake request")
        time.sleep(1.0)
        up = time.monotonic()
        daemon.app.start()
        response = future.result(timeout=60)
        answered = time.monotonic() - up
    assert response.status_code == 200 and response.json()["path"] == "/fast"
    assert answered < 2.0, f"answered {answered:.2f} s after the app came up"


@pytest.mark.parametrize("daemon", [{"hold_timeout": "2s"}], indirect=True)
def test_hold_timeout_is_a_503_problem_with_retry_after(daemon: Daemon):
    started = time.monotonic()
    response = httpx.post(f"{daemon.url}/slow", content=b"{}", headers=EDGE_HEADERS, timeout=30)
    assert 1.9 <= time.monotonic() - started < 10
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"].isdigit()
    problem = response.json()
    assert problem["type"] == "urn:wakegrid:problem:wake-timeout" and problem["status"] == 503
    assert "app is still waking after 2 s" in problem["detail"]
    assert [layer["title"] for layer in problem["layers"]] == ["machine srv", "application health (GET /health)"]
    assert daemon.app.requests == []


# --------------------------------------------------------------------------- refusals


def test_a_client_outside_the_allowlist_gets_403_and_wakes_nothing(daemon: Daemon):
    response = httpx.get(
        f"{daemon.url}/", headers={**EDGE_HEADERS, "X-Wakegrid-Client": "192.0.2.7", "Accept": "text/html"}, timeout=5
    )
    assert response.status_code == 403 and response.json()["type"] == "urn:wakegrid:problem:client-not-allowed"
    time.sleep(1.5)
    history, pending = _wake_state(daemon)
    assert history is None and not pending
    daemon.close()
    refusal = next(e for e in daemon.logs if e["msg"] == "wake refused: client outside the service's allowlist")
    assert refusal["client"] == "192.0.2.7" and refusal["service"] == "app"


def test_forged_headers_from_a_peer_that_is_not_the_edge_are_refused(daemon: Daemon):
    with httpx.Client(transport=httpx.HTTPTransport(local_address=OUTSIDER), timeout=5) as outsider:
        response = outsider.post(f"{daemon.url}/api", content=b"x", headers=EDGE_HEADERS)
        assert response.status_code == 403 and response.json()["type"] == "urn:wakegrid:problem:not-the-edge"
        # Without the headers it is just a client of the daemon's own API.
        assert outsider.get(f"{daemon.url}/healthz").status_code == 200
    time.sleep(1.5)
    history, pending = _wake_state(daemon)
    assert history is None and not pending
    daemon.close()
    refusal = next(e for e in daemon.logs if e["msg"].startswith("wake path refused: the X-Wakegrid headers"))
    assert refusal["peer"] == OUTSIDER


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({**EDGE_HEADERS, "X-Wakegrid-Service": "nope"}, 404, "unknown-service"),
        # Caddy adds X-Forwarded-For: the edge stays the edge (the TCP peer is what is checked),
        # it is not taken for the client it names (uvicorn would, with its proxy headers on).
        ({**EDGE_HEADERS, "X-Wakegrid-Service": "nope", "X-Forwarded-For": "10.9.9.9"}, 404, "unknown-service"),
        ({**EDGE_HEADERS, "X-Wakegrid-Client": "not an address"}, 400, "no-client"),
        ({"X-Wakegrid-Service": "app"}, 400, "no-client"),
    ],
)
def test_bad_handovers_are_clear_errors(daemon: Daemon, headers, status, kind):
    response = httpx.get(f"{daemon.url}/healthz", headers=headers, timeout=5)
    assert response.status_code == status and response.json()["type"] == f"urn:wakegrid:problem:{kind}"
    history, pending = _wake_state(daemon)
    assert history is None and not pending


def test_a_body_too_large_to_hold_is_refused(daemon: Daemon):
    response = httpx.post(f"{daemon.url}/upload", content=b"x" * 4096, headers=EDGE_HEADERS, timeout=5)
    assert response.status_code == 413 and response.json()["type"] == "urn:wakegrid:problem:too-large"
