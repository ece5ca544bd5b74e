"""The admin dashboard in a real browser, against ``wakegrid daemon`` as a process on loopback over HTTPS.

No lab. The fleet's machine ``dock`` is 127.0.0.4: "up" because the test listens on its SSH port,
and its Docker API is the host's Docker Engine, served on a loopback TCP port by a relay (as a
fleet's ``tcp://`` API). Its container ``box`` is a real container of this run, stopped at first.
The daemon (not in dry run) serves HTTPS with a self-signed certificate made here, so that the
session cookie (``Secure``) works; Chromium (Debian's, through Playwright) ignores the certificate.

The browser logs in (a wrong token first), pins ``box`` to the front page (it stays after a reload),
opens the hosts tree and starts ``box`` with its button: the daemon really starts the container
(ansible-runner, the collection's wake playbook, the Docker API), and the row turns ``up`` live,
from the event stream, without a reload. Screenshots of the front page and the hosts tree go to
tests/artifacts/ (the front page also to docs/dashboard.png, the README's picture).

Needs root (the Docker socket), Docker Engine, openssl and Debian's chromium.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode
from loopback import loopback_edge
from support import free_port, wait_for
from test_discovered_apis import DockerRelay  # one home for "the host's Docker Engine on a loopback TCP port"
from test_wake_request_path import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, WAKEGRID, _playwright

REPO = support.REPO
DOCK = "127.0.0.4"
RUN_ID = uuid.uuid4().hex[:8]
BOX = f"wg-dash-{RUN_ID}-box"


def _fleet(ssh_port: int, docker_url: str, backend_port: int) -> dict:
    return {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            "dock": {
                "kind": "machine",
                "site": "home",
                "address": DOCK,
                "ssh": {"port": ssh_port},
                "docker": {"api": docker_url},
            },
            "box": {"kind": "container", "parent": "dock", "container": BOX},
        },
        "services": {
            "web": {
                "domain": "web.loop.test",
                "policy": {"mode": "always_on"},
                "health": {"path": "/health"},
                "backends": [{"node": "gw", "port": backend_port}],
            }
        },
    }


def _certificate(root: Path) -> tuple[Path, Path]:
    cert, key = root / "tls.crt", root / "tls.key"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [*request, "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _backend() -> http.server.ThreadingHTTPServer:
    """The service's application on the gateway: answers its health check."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Daemon:
    port: int
    token: str
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _container_running() -> bool:
    return support.container_running(BOX)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    reason = support.root_reason("(the Docker socket)") or support.docker_cli_reason()
    if reason:
        pytest.skip(reason)
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    image = support.ensure_guest_image()
    support.create_guest_container(image, BOX, RUN_ID, False)
    relay = DockerRelay()
    ssh = socket.create_server((DOCK, 0))  # the machine is up: its SSH port accepts connections
    backend = _backend()
    port = free_port()
    token = secrets.token_urlsafe(24)
    (tmp_path / "admin-token").write_text(token + "\n")
    cert, key = _certificate(tmp_path)
    fleet = tmp_path / "loop.fleet.yml"
    fleet.write_text(
        yaml.safe_dump(_fleet(ssh.getsockname()[1], relay.url, backend.server_address[1]), sort_keys=False)
    )
    config = tmp_path / "daemon.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "interval": "1s",
                "caddy": {"admin": f"127.0.0.1:{free_port()}", "access_log": None},  # no Caddy here: unknown
                "wireguard": {"command": ["false"]},
                "admin": {"token": {"file": str(tmp_path / "admin-token")}, "networks": ["127.0.0.0/8"]},
                "tls": {"cert": str(cert), "key": str(key)},
            }
        )
    )
    proc = subprocess.Popen(
        [*WAKEGRID, "daemon", "--fleet", str(fleet), "--config", str(config), "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WAKEGRID_COLLECTION": str(REPO)},
    )
    handle = Daemon(port, token, proc)
    try:
        health = lambda: httpx.get(f"{handle.url}/healthz", verify=False, timeout=5).json()["last_round"]  # noqa: E731
        wait_for(health, timeout=30, what="the daemon's first round", errors=(httpx.HTTPError,))
        yield handle
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        logs = proc.stderr.read()
        (tmp_path / "daemon.log").write_text(logs)
        assert token not in logs, "the admin token reached the daemon's logs"
        ssh.close()
        backend.shutdown()
        backend.server_close()
        relay.close()
        support.remove_test_containers(RUN_ID)


def test_log_in_pin_a_node_and_start_it_from_the_hosts_tree_live(daemon: Daemon):
    playwright = _playwright()
    ARTIFACTS.mkdir(exist_ok=True)
    assert not _container_running()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 760})
            page = context.new_page()
            errors: list[str] = []
            # Script errors only: Chromium also logs every 4xx answer to fetch() as a console error.
            page.on(
                "console",
                lambda m: m.type == "error" and "Failed to load resource" not in m.text and errors.append(m.text),
            )
            page.on("pageerror", lambda e: errors.append(str(e)))

            # Logged out: the dashboard sends the browser to the login form.
            page.goto(f"{daemon.url}/admin/hosts")
            assert page.url.startswith(f"{daemon.url}/admin/login")
            page.fill("#token", "not-the-token")
            page.click("button[type=submit]")
            assert page.inner_text("#login-error") == "Wrong token."
            page.fill("#token", daemon.token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{daemon.url}/admin/hosts")
            cookie = next(c for c in context.cookies() if c["name"] == "wakegrid_session")
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            assert daemon.token not in page.content()

            # Pin box to the front page: its tile appears, and is still there after a reload.
            page.goto(f"{daemon.url}/admin")
            assert page.locator('.tiles [data-node="box"]').count() == 0
            page.select_option("#pin-what", "node/box")
            with page.expect_navigation():
                page.click("#pin-form button[type=submit]")
            page.wait_for_selector('.tiles [data-node="box"]')
            page.reload()
            tile = page.locator('.tiles [data-node="box"]')
            assert tile.count() == 1 and tile.get_attribute("data-power") == "down"

            # The hosts tree: dock up (its SSH port listens), box down (its container is stopped).
            page.goto(f"{daemon.url}/admin/hosts")
            page.wait_for_selector('#conn[data-conn="live"]', timeout=15_000)
            assert page.get_attribute('tr[data-node="dock"]', "data-power") == "up"
            row = 'tr[data-node="box"]'
            assert page.get_attribute(row, "data-power") == "down"
            assert "Docker API of dock" in page.inner_text(f"{row} td:nth-child(3)")
            navigations: list[str] = []
            page.on("framenavigated", lambda frame: navigations.append(frame.url))
            page.click(f'{row} button[data-action="start"]')
            # The action shows at once, then the daemon's run starts the container: the row turns up
            # from the event stream, the page never reloads.
            page.wait_for_selector(f"{row}[data-busy]", timeout=10_000)
            page.wait_for_selector(f'{row}[data-power="up"]', timeout=120_000)
            assert navigations == [], "the page reloaded instead of following the events"
            assert _container_running()
            assert page.inner_text(f'{row} [data-field="power"]') == "up"
            page.wait_for_selector(f"{row}:not([data-busy])", timeout=10_000)  # the run's words give way to its result
            page.screenshot(path=str(ARTIFACTS / "dashboard-hosts.png"), full_page=True)

            # The front page: box's tile is up too; pin the service and box's machine beside it.
            page.goto(f"{daemon.url}/admin")
            page.wait_for_selector('.tiles [data-node="box"][data-power="up"]')
            for what in ("service/web", "node/dock"):
                page.select_option("#pin-what", what)
                with page.expect_navigation():
                    page.click("#pin-form button[type=submit]")
            page.wait_for_selector('.tiles [data-service="web"][data-power="up"]')  # its backend answers
            assert page.get_attribute('.tiles [data-node="dock"]', "data-power") == "up"
            page.wait_for_selector('#conn[data-conn="live"]', timeout=15_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-front.png"), full_page=True)
            shutil.copyfile(ARTIFACTS / "dashboard-front.png", REPO / "docs" / "dashboard.png")
            assert errors == [], errors
        finally:
            browser.close()
    # The journal has the start, asked through the API by the logged-in admin.
    actions = httpx.get(
        f"{daemon.url}/api/history",
        params={"kind": "action", "node": "box"},
        headers={"Authorization": f"Bearer {daemon.token}"},
        verify=False,
        timeout=10,
    )
    assert actions.status_code == 200, actions.text
    assert "start" in json.dumps(actions.json())
