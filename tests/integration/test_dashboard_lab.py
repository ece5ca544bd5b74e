"""The API and the admin dashboard of the daemon in the lab's edge (issue 13), used as an admin would.

The daemon runs the lab's wake fleet (tests/bench/wake.py: ``stream`` = nas → pve1 → LXC jellyfin →
app, ``sandbox`` = pve1 → VM vm-docker → container sandbox → app) with the lab's admin settings
(``wakegrid lab daemon``: HTTPS with the lab's own certificate, the lab's token, this machine among
the admin networks). Everything here goes from this machine to the edge's WAN address, over HTTPS,
as from an admin's laptop on the LAN; the browser is Debian's chromium driven by Playwright.

Run under the lab lock (``flock /tmp/wakegrid-lab.lock .venv/bin/pytest tests/integration/test_dashboard_lab.py``).
Screenshots of the front page and the hosts tree are saved under tests/artifacts/.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import wake as bench

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


@pytest.fixture(scope="module")
def dl(lab, tmp_path_factory):
    from wakegrid.lab.daemon import TLS_SECTION, lab_credentials

    tmp = tmp_path_factory.mktemp("dashboard")
    handle = bench.WakeLab(lab.lab, bench.write_wake_fleet(tmp / "wake.fleet.yml"))
    handle.credentials = lab_credentials(lab.lab)
    try:
        handle.start_daemon(tmp, interval="2s", tls=TLS_SECTION)
        assert handle.url.startswith("https://"), handle.url
        yield handle
    finally:
        handle.stop_daemon()
        lab.restore()


def call(dl, path: str, method: str = "GET", body: dict | None = None, token: bool = True) -> tuple[int, object]:
    status, raw = dl.daemon.request(
        path, method=method, body=None if body is None else json.dumps(body).encode(), token=token
    )
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def lab_secrets(dl) -> list[str]:
    """The values a leak would show: the admin token and the Proxmox API token of the lab fleet."""
    from wakegrid.model import load_fleet

    fleet = load_fleet(dl.fleet_path)
    values = {dl.credentials.token}
    for node in fleet.nodes.values():
        if node.proxmox is not None and node.proxmox.token_secret is not None:
            values.add(node.proxmox.token_secret.reveal())
    return sorted(v for v in values if v)


# --------------------------------------------------------------------------- the API, endpoint by endpoint


def test_every_read_endpoint_answers_with_the_fleet_it_runs(dl):
    from wakegrid.model import load_fleet

    fleet = load_fleet(dl.fleet_path)
    status, document = call(dl, "/openapi.json")
    assert status == 200
    paths = set(document["paths"])
    for path in (
        "/api/status",
        "/api/status/{service}",
        "/api/nodes",
        "/api/nodes/{node}",
        "/api/wake/{service}",
        "/api/nodes/{node}/start",
        "/api/nodes/{node}/stop",
        "/api/actions/{action_id}",
        "/api/activity/{service}",
        "/api/config",
        "/api/reload",
        "/api/events",
        "/api/decisions",
        "/api/history",
    ):
        assert any(p.replace("{action_id}", "{id}") == path.replace("{action_id}", "{id}") for p in paths), path

    status, services = call(dl, "/api/status")
    assert status == 200 and {s["name"] for s in services} == set(fleet.services)
    status, stream = call(dl, "/api/status/stream")
    assert status == 200 and [n["node"] for n in stream["chain"]][:3] == ["nas", "pve1", "jellyfin"]
    assert all(n["power"] in ("up", "down", "unknown") for n in stream["chain"])
    status, problem = call(dl, "/api/status/no-such-service")
    assert status == 404 and "no-such-service" in json.dumps(problem)

    status, nodes = call(dl, "/api/nodes")
    assert status == 200 and {n["name"] for n in nodes} == set(fleet.nodes)
    status, pve1 = call(dl, "/api/nodes/pve1")
    assert status == 200 and "jellyfin" in pve1["children"] and pve1["power"] in ("up", "down", "unknown")
    assert call(dl, "/api/nodes/no-such-node")[0] == 404

    status, config = call(dl, "/api/config")
    assert status == 200
    text = json.dumps(config)
    assert "pve1" in text and not any(secret in text for secret in lab_secrets(dl))

    assert call(dl, "/api/decisions?limit=5")[0] == 200
    status, problem = call(dl, "/api/decisions?limit=many")
    assert status == 422 and "limit" in json.dumps(problem)
    assert call(dl, "/api/history?limit=5")[0] == 200
    status, stats = call(dl, "/api/stats")
    assert status == 200 and stats["nodes_total"] == len(fleet.nodes)
    assert call(dl, "/api/discovered")[0] == 200


def test_pins_activity_and_reload_change_what_they_say(dl):
    assert call(dl, "/api/pins/node/pve1", method="PUT")[0] in (200, 201, 204)
    status, pins = call(dl, "/api/pins")
    assert status == 200 and "pve1" in json.dumps(pins)
    assert call(dl, "/api/pins/node/pve1", method="DELETE")[0] in (200, 204)
    assert "pve1" not in json.dumps(call(dl, "/api/pins")[1])
    assert call(dl, "/api/pins/node/no-such-node", method="PUT")[0] == 404

    assert call(dl, "/api/activity/stream", method="POST")[0] in (200, 202, 204)
    assert call(dl, "/api/activity/stream", method="POST", token=False)[0] == 401
    status, reloaded = call(dl, "/api/reload", method="POST")
    assert status == 200, reloaded


def test_an_invalid_fleet_is_refused_by_reload_and_the_running_one_kept(dl):
    installed = dl.daemon.installed_fleet()
    good = dl.edge_exec("cat", installed)
    try:
        bad = good.replace("kind: machine", "kind: toaster", 1)
        assert bad != good
        dl.daemon.exec(["sh", "-c", f"cat > {installed}"], stdin=bad.encode())
        status, problem = call(dl, "/api/reload", method="POST")
        assert status == 422, problem
        assert "toaster" in json.dumps(problem) or "kind" in json.dumps(problem)
        assert call(dl, "/api/status/stream")[0] == 200  # still the running fleet
    finally:
        dl.daemon.exec(["sh", "-c", f"cat > {installed}"], stdin=good.encode())
        assert call(dl, "/api/reload", method="POST")[0] == 200


# --------------------------------------------------------------------------- the dashboard, in a browser


def _playwright():
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    return pytest.importorskip("playwright.sync_api")


def test_an_admin_logs_in_pins_a_node_and_wakes_a_sleeping_chain_from_the_hosts_tree(dl):
    playwright = _playwright()
    dl.put_to_sleep("stream")
    assert not dl.lab.is_on("nas") and not dl.lab.is_on("pve1")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
            page.goto(f"{dl.url}/admin", wait_until="domcontentloaded")
            assert "/admin/login" in page.url
            page.fill("input[name=token]", "not the token")
            page.click("button[type=submit]")
            assert "/admin/login" in page.url and page.locator(".error, [role=alert]").count() >= 1
            page.fill("input[name=token]", dl.credentials.token)
            page.click("button[type=submit]")
            page.wait_for_url(f"{dl.url}/admin", timeout=10_000)
            cookie = next(c for c in page.context.cookies() if c["name"] == "wakegrid_session")
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"

            # Pin pve1 from the hosts tree: it is a tile of the front page, and stays one after a reload.
            page.goto(f"{dl.url}/admin/hosts", wait_until="domcontentloaded")
            page.click("tr[data-node=pve1] button[data-action=pin]")
            page.wait_for_selector("tr[data-node=pve1] button[data-action=unpin]", timeout=10_000)
            page.goto(f"{dl.url}/admin", wait_until="domcontentloaded")
            page.wait_for_selector("li.tile[data-node=pve1]", timeout=10_000)
            page.reload(wait_until="domcontentloaded")
            page.wait_for_selector("li.tile[data-node=pve1]", timeout=10_000)

            # Start jellyfin (nas → pve1 → jellyfin) from the hosts tree; its rows turn up live.
            page.goto(f"{dl.url}/admin/hosts", wait_until="domcontentloaded")
            assert page.get_attribute("tr[data-node=nas]", "data-power") == "down"
            page.evaluate("window.__notReloaded = true")
            started = time.monotonic()
            page.click("tr[data-node=jellyfin] button[data-action=start]")
            for node in ("nas", "pve1", "jellyfin"):
                page.wait_for_selector(f"tr[data-node={node}][data-power=up]", timeout=240_000)
                print(f"\n{node} up on the page after {time.monotonic() - started:.1f}s")
            assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of updating live"
            page.screenshot(path=str(ARTIFACTS / "dashboard-lab-hosts.png"), full_page=True)
            page.goto(f"{dl.url}/admin", wait_until="domcontentloaded")
            page.wait_for_selector("li.tile[data-node=pve1][data-power=up]", timeout=10_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-lab-front.png"), full_page=True)
        finally:
            browser.close()
    assert dl.lab.is_on("nas") and dl.lab.is_on("pve1")
    # The start the dashboard asked for is an action of the journal, done.
    status, history = call(dl, "/api/history?kind=action&limit=50")
    assert status == 200 and "jellyfin" in json.dumps(history)


def test_no_secret_of_the_lab_reaches_the_daemons_logs_or_pages(dl):
    logs = dl.daemon.logs(2000, all_runs=True)
    pages = [call(dl, path)[1] for path in ("/api/status", "/api/nodes", "/api/config", "/api/history")]
    with urllib.request.urlopen(dl.url + "/healthz", context=dl.tls, timeout=5) as response:
        pages.append(response.read().decode())
    for secret in lab_secrets(dl):
        assert secret not in logs
        assert all(secret not in json.dumps(page) for page in pages)
