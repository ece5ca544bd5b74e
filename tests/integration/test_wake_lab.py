"""Wake on the first request, end to end in the lab (issue 12), tested as a person would.

The daemon runs in the lab's edge (``wakegrid lab daemon``) on the lab fleet's wake chains
(tests/bench/wake.py :func:`wake_fleet`: ``stream`` = nas → pve1 → LXC jellyfin → app, ``sandbox`` =
pve1 → VM vm-docker → container sandbox → app, both ``on_demand``, allowlist = the lab's client),
listening on 0.0.0.0:9380: the edge's Caddy hands sleeping services' requests over on 127.0.0.1 (the
only edge address it trusts); this machine reads ``/metrics`` and ``/healthz`` on the edge's WAN address.
Routes are pushed from this machine with ``routes.yml`` (every sleepable service gets the fallback).

Every request comes from the lab's client host (10.231.255.10), through the edge, as a visitor's would:
``curl``/python3 run in the client with ``docker exec``; the browser (Debian's chromium, Playwright)
runs on this machine but its traffic goes through an SSH SOCKS tunnel to the client host (``ssh -D``;
SOCKS4, so that chromium resolves the lab's names itself with ``--host-resolver-rules``), so the edge
sees the client's address. This machine's own address on the clients network (10.231.255.254) is
outside the allowlist: the refused visitor.

Run under the lab lock (``flock /tmp/wakegrid-lab.lock .venv/bin/pytest tests/integration/test_wake_lab.py``).
The screenshot of the waiting page mid-wake is saved under tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import wake as bench

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
INTERVAL = "2s"
HOLD_TIMEOUT = 120  # the default; the failing wake's test restarts the daemon with a short one
SHORT_HOLD = 20

# Runs in the client host: N requests at once through the edge (the first a JSON POST), answers as JSON lines.
CONCURRENT = r"""
import http.client, json, socket, ssl, sys, threading
host, edge, cafile, token, count = sys.argv[1:6]
results = [None] * int(count)
def one(i):
    body = json.dumps({"token": token}).encode() if i == 0 else None
    path = f"/api/echo?run={token}" if i == 0 else f"/?run={token}&n={i}"
    try:
        ctx = ssl.create_default_context(cafile=cafile)
        conn = http.client.HTTPSConnection(host, 443, context=ctx, timeout=300)
        conn.sock = ctx.wrap_socket(socket.create_connection((edge, 443), timeout=300), server_hostname=host)
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        conn.request("POST" if i == 0 else "GET", path, body=body, headers=headers)
        response = conn.getresponse()
        results[i] = {"status": response.status, "body": response.read().decode(),
                      "retry_after": response.getheader("Retry-After")}
    except Exception as exc:
        results[i] = {"status": None, "error": repr(exc)}
threads = [threading.Thread(target=one, args=(i,)) for i in range(int(count))]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""
CONCURRENT_PATH = "/tmp/wakegrid-wake-concurrent.py"


@pytest.fixture(scope="module")
def wl(lab, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    tmp = tmp_path_factory.mktemp("wake")
    handle = bench.WakeLab(lab.lab, bench.write_wake_fleet(tmp / "wake.fleet.yml"))
    handle.tmp = tmp
    try:
        handle.push_routes()
        handle.install_client_root()
        bench.run(
            [bench.DOCKER, "exec", "-i", handle.client.container, "sh", "-c", f"cat > {CONCURRENT_PATH}"],
            input=CONCURRENT,
        )
        handle.start_daemon(tmp, interval=INTERVAL, hold_timeout=f"{HOLD_TIMEOUT}s")
        yield handle
    finally:
        handle.stop_daemon()
        for site in lab.fleet.sites:
            if lab.lab.is_cut(site):
                lab.lab.restore_site(site)
        # The edge's routes as the lab fleet has them (two-site stream and sandbox, no allowlist).
        bench.WakeLab(lab.lab, Path(lab.fleet_path)).push_routes()
        lab.restore()


def domain(wl, service: str) -> str:
    from wakegrid.model import load_fleet

    return load_fleet(wl.fleet_path).services[service].domain


def magic_packets(wl, since: float) -> list[str]:
    """What the dijon Wake-on-LAN listener logged since ``since`` (Docker's timestamps), magic packets only."""
    container = next(h.container for h in wl.lab.plan.hosts if h.role == "listener" and h.site == "dijon")
    proc = bench.run([bench.DOCKER, "logs", "--timestamps", "--since", f"{since - 1:.3f}", container])
    lines = []
    for line in (proc.stdout + proc.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        head, _, fraction = stamp.rstrip("Z").partition(".")
        at = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or 0}")
        if at >= since and "magic packet" in text:
            lines.append(text)
    return lines


class Tunnel:
    """``ssh -D``: a SOCKS proxy on this machine whose connections leave from the lab's client host."""

    def __init__(self, wl):
        self.port = _free_port()
        key = wl.lab.fleet.defaults.ssh.private_key_file
        self.proc = subprocess.Popen(
            [
                "ssh",
                "-N",
                "-D",
                f"127.0.0.1:{self.port}",
                "-i",
                key,
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ExitOnForwardFailure=yes",
                f"root@{wl.client.address}",
            ]
        )
        bench.wait_until(lambda: _port_open(self.port), 15, "the SSH SOCKS tunnel through the client host")

    def chromium_args(self, wl) -> list[str]:
        # SOCKS4: chromium resolves names itself, so the lab's names can be mapped to the edge here.
        zone = wl.lab.fleet.edge.domain
        return [
            *CHROMIUM_ARGS,
            f"--proxy-server=socks4://127.0.0.1:{self.port}",
            f"--host-resolver-rules=MAP *.{zone} {wl.edge_public}",
        ]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def _playwright():
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    return pytest.importorskip("playwright.sync_api")


def layer_states(page) -> dict[str, str]:
    return page.eval_on_selector_all(
        "#layers li",
        "items => Object.fromEntries(items.map(i => [i.dataset.key, i.dataset.state || i.className.slice(6)]))",
    )


# --------------------------------------------------------------------------- the tests


def test_a_client_outside_the_allowlist_gets_403_and_wakes_nothing(wl):
    wl.put_to_sleep("stream")
    assert not wl.lab.is_on("nas") and not wl.lab.is_on("pve1")
    since = time.time()
    wakes = wl.metric("wakegrid_wakes_total")
    # This machine on the clients network (10.231.255.254) is a visitor outside stream's allowlist.
    proc = subprocess.run(
        [
            "curl",
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            f"{domain(wl, 'stream')}:443:{wl.edge_public}",
            f"https://{domain(wl, 'stream')}/some/page?x=1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout == "403"
    # Straight to the daemon with the edge's headers from a peer that is not the edge: refused too.
    request = urllib.request.Request(
        f"{wl.url}/some/page", headers={"X-Wakegrid-Service": "stream", "X-Wakegrid-Client": wl.client.address}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403 and json.loads(refused.value.read())["type"].endswith("not-the-edge")
    moment = datetime.now(UTC)
    bench.wait_until(lambda: (r := wl.last_round()) is not None and r > moment, 30, "a daemon round after")
    assert magic_packets(wl, since) == []
    assert not wl.lab.is_on("nas") and not wl.lab.is_on("pve1")
    assert wl.metric("wakegrid_wakes_total") == wakes
    assert wl.journal("SELECT id FROM wake_requests") == []


def test_a_browser_follows_the_wake_layer_by_layer_and_lands_on_the_page_it_asked_for(wl):
    playwright = _playwright()
    wl.put_to_sleep("stream")
    ARTIFACTS.mkdir(exist_ok=True)
    url = f"https://{domain(wl, 'stream')}/some/page?x=1"
    tunnel = Tunnel(wl)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=tunnel.chromium_args(wl))
            try:
                page = browser.new_page(ignore_https_errors=True, viewport={"width": 900, "height": 700})
                responses = []
                page.on("response", lambda r: responses.append((r.url, r.status, r.headers)))
                started = time.monotonic()
                page.goto(url, wait_until="domcontentloaded", timeout=30_000)
                first = responses[0]
                assert first[0] == url and first[1] == 503 and first[2]["cache-control"] == "no-store"
                keys = page.eval_on_selector_all("#layers li", "items => items.map(i => i.dataset.key)")
                assert keys == ["nas", "pve1", "jellyfin", "application"]
                # The layers come up one by one, pushed live: note when each is first seen up.
                up_at: dict[str, float] = {}
                shot = False
                while "application" not in up_at or len(up_at) < 4:
                    if time.monotonic() - started > 180:
                        raise AssertionError(f"the wake did not finish within 180 s: layers seen up {up_at}")
                    try:
                        states = layer_states(page)
                    except Exception:  # the page is navigating
                        time.sleep(0.1)
                        continue
                    if not states:
                        break  # on the app's page: no layers any more
                    for key, state in states.items():
                        if state == "up" and key not in up_at:
                            up_at[key] = time.monotonic() - started
                    # Mid-wake: some layer up, the application not yet (pve1 and jellyfin may come up
                    # within one poll of each other on a fast run).
                    if not shot and up_at and "application" not in up_at:
                        page.screenshot(path=str(ARTIFACTS / "waiting-page-lab-mid-wake.png"), full_page=True)
                        shot = True
                    time.sleep(0.1)
                page.wait_for_function("() => !document.querySelector('#layers')", timeout=60_000)
                landed = time.monotonic() - started
                print(
                    f"\nlayers seen up after (s): { {k: round(v, 1) for k, v in up_at.items()} }, landed {landed:.1f}"
                )
                assert shot, "no screenshot mid-wake (a layer up, the application not yet)"
                # jellyfin's power and the app's health may be seen by the same round: the page then goes
                # straight on to the app, its last layers up at once.
                order = [up_at.get(key, landed) for key in ("nas", "pve1", "jellyfin")]
                assert "nas" in up_at and "pve1" in up_at and order == sorted(order) and order[-1] <= landed, up_at
                assert page.url == url
                final = [r for r in responses if r[0] == url][-1]
                assert final[2].get("x-lab-node") == "jellyfin"  # the app's own answer (its 404 for this path)
                assert '"node": "jellyfin"' in page.inner_text("body")
            finally:
                browser.close()
    finally:
        tunnel.close()
    rows = wl.journal("SELECT client FROM wake_requests WHERE service = 'stream'")
    assert rows and {row["client"] for row in rows} == {wl.client.address}


def test_a_held_post_and_forty_nine_more_requests_share_one_wake(wl):
    wl.put_to_sleep("sandbox")
    assert not wl.lab.is_on("vm-docker")
    token = uuid.uuid4().hex
    wakes = wl.metric("wakegrid_wakes_total", service="sandbox")
    requests_before = len(wl.journal("SELECT id FROM wake_requests WHERE service = 'sandbox'"))
    proc = wl.client_exec(
        "python3",
        CONCURRENT_PATH,
        domain(wl, "sandbox"),
        wl.edge_public,
        bench.CLIENT_ROOT,
        token,
        "50",
        timeout=300,
        check=True,
    )
    results = json.loads(proc.stdout)
    assert [r["status"] for r in results] == [200] * 50, results[:3]
    post = json.loads(results[0]["body"])
    assert post["node"] == "sandbox" and post["received"] == len(json.dumps({"token": token}))
    assert all(json.loads(r["body"])["node"] == "sandbox" for r in results[1:])
    # The app saw the POST exactly once (its access log in the container, through vm-docker's Docker API).
    api = wl.lab.fleet.nodes["vm-docker"].docker.api.replace("tcp://", "")
    logs = bench.run([bench.DOCKER, "-H", f"tcp://{api}", "logs", "sandbox"]).stderr
    assert sum(f"POST /api/echo?run={token}" in line for line in logs.splitlines()) == 1
    assert wl.metric("wakegrid_wakes_total", service="sandbox") == wakes + 1
    assert len(wl.journal("SELECT id FROM wake_requests WHERE service = 'sandbox'")) == requests_before + 1


def test_a_wake_that_cannot_finish_names_the_failing_layer_and_the_api_client_gets_503(wl):
    playwright = _playwright()
    wl.start_daemon(wl.tmp, fresh_journal=False, interval=INTERVAL, hold_timeout=f"{SHORT_HOLD}s")
    wl.put_to_sleep("stream")
    wl.lab.cut_site("dijon")  # the magic packets of dijon are sent from gw-dijon: now unreachable
    held: dict = {}

    def api_client() -> None:
        started = time.monotonic()
        held["result"] = json.loads(
            wl.client_exec(
                "python3",
                CONCURRENT_PATH,
                domain(wl, "stream"),
                wl.edge_public,
                bench.CLIENT_ROOT,
                "cut",
                "1",
                timeout=300,
                check=True,
            ).stdout
        )[0]
        held["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=api_client)
    thread.start()
    tunnel = Tunnel(wl)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=tunnel.chromium_args(wl))
            try:
                page = browser.new_page(ignore_https_errors=True, viewport={"width": 900, "height": 700})
                page.goto(f"https://{domain(wl, 'stream')}/some/page?x=1", wait_until="domcontentloaded")
                # Either a step failed (the error box, with its layer marked failed and "Try again"), or the
                # reconciler knows the chain cannot start now and says why, naming the layer, in its status line.
                page.wait_for_function(
                    """() => !document.querySelector('#error').hidden
                         || /cannot start (nas|pve1)/.test(document.querySelector('#status').textContent)""",
                    timeout=150_000,
                )
                failed = page.eval_on_selector_all(
                    '#layers li[data-state="failed"] .title', "items => items.map(i => i.textContent)"
                )
                said = page.inner_text("#error-text") if page.is_visible("#error") else page.inner_text("#status")
                page.screenshot(path=str(ARTIFACTS / "waiting-page-lab-failed.png"), full_page=True)
                print(f"\nfailed layers: {failed}; the page says: {said}")
                if failed:
                    assert failed[0] in ("machine nas", "machine pve1") and page.is_visible("#retry"), (failed, said)
                else:
                    assert "cannot start nas" in said and "gw-dijon" in said, said
            finally:
                browser.close()
    finally:
        tunnel.close()
        thread.join(200)
        wl.lab.restore_site("dijon")
    result = held["result"]
    assert result["status"] == 503 and result["retry_after"] and int(result["retry_after"]) >= 1, result
    assert json.loads(result["body"])["type"] == "urn:wakegrid:problem:wake-timeout"
    assert held["seconds"] >= SHORT_HOLD
