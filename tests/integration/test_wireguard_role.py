"""The ``wakegrid.fleet.wireguard`` role on the lab: the edge is the hub, each site gateway a spoke.

The role runs as people and the reconciler run it: ``ansible-playbook -i <lab fleet>`` on
``hosts: wireguard``, over SSH, from a tiny playbook written in the test's temporary directory.
The tests share one converged lab (the module fixture runs the role once) and run in file order:

* the edge reaches a host on each site's LAN through the tunnels (so the gateways forward);
* a second run changes nothing;
* a run limited to one gateway converges its peer on the hub (re-added here after being
  removed live) and leaves the hub's other peers in place;
* after ``lab cut-site`` (which brings the gateway's ``wg*`` interfaces down) the next run
  brings the tunnel back up;
* with a fleet from which a site was removed, the run removes that gateway's peer and routes on
  the hub (never a hand-written peer or route), the removed gateway can no longer handshake and the
  other site still works; the full fleet is converged again at the end.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
PLAYBOOK = """\
- name: WireGuard hub and spokes
  hosts: wireguard
  gather_facts: false
  roles:
    - role: wakegrid.fleet.wireguard
"""
HUB_CONF = "/etc/wireguard/wg0.conf"
RECAP_RE = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


class Play:
    def __init__(self, lab, directory: Path):
        self.lab = lab
        self.path = directory / "wireguard.yml"
        self.path.write_text(PLAYBOOK)

    def run(self, *args: str, inventory: Path | None = None) -> dict[str, dict[str, int]]:
        """Run the role; return the recap per host, failing the test when a host failed."""
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        inventory = inventory or self.lab.fleet_path
        proc = subprocess.run(
            [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(self.path), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        recap = {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP_RE.finditer(proc.stdout)
        }
        assert proc.returncode == 0 and recap, (
            f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
        return recap


def wg_dump(lab, node: str) -> dict[str, list[str]]:
    """Peers of wg0 on ``node``: public key -> the fields of `wg show wg0 dump`."""
    lines = lab.exec(node, "wg", "show", "wg0", "dump").stdout.splitlines()
    return {fields[0]: fields for fields in (line.split("\t") for line in lines[1:])}


def public_key(lab, node: str) -> str:
    return lab.exec(node, "wg", "show", "wg0", "public-key").stdout.strip()


def handshake(lab, node: str, peer_key: str) -> int:
    """Latest handshake (Unix time, 0 for none) of ``node``'s wg0 with the peer ``peer_key``."""
    return int(wg_dump(lab, node)[peer_key][4])


def restart_tunnel(lab, node: str) -> None:
    """What a reboot or `lab restore-site` does: wg-quick re-creates wg0 from the file (no handshake yet)."""
    lab.exec(node, "systemctl", "restart", "wg-quick@wg0")


def routes_through_tunnel(lab, node: str) -> set[str]:
    """Destinations routed through wg0 on ``node``, as CIDR (`ip route` prints a host route bare)."""
    lines = lab.exec(node, "ip", "route", "show", "dev", "wg0").stdout.splitlines()
    return {str(ipaddress.ip_network(line.split()[0])) for line in lines if not line.startswith("default")}


def fleet_without_site(lab, site: str, directory: Path) -> Path:
    """The lab fleet as a user edits it to decommission ``site``: the site goes, with its nodes
    and the backends and dependencies that named them."""
    data = yaml.safe_load(lab.fleet_path.read_text())
    del data["sites"][site]
    gone = {name for name, node in data["nodes"].items() if node.get("site") == site}
    while more := {n for n, node in data["nodes"].items() if node.get("parent") in gone} - gone:
        gone |= more
    data["nodes"] = {name: node for name, node in data["nodes"].items() if name not in gone}
    for service in data.get("services", {}).values():
        service["backends"] = [b for b in service["backends"] if b.get("node") not in gone and b.get("site") != site]
    dependencies = data.get("dependencies", {}).items()
    data["dependencies"] = {name: [d for d in deps if d not in gone] for name, deps in dependencies if name not in gone}
    path = directory / f"without-{site}.fleet.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def lan_host(lab, site: str) -> str:
    """A machine of the site's LAN other than its gateway (the fixture's restore() powered it on)."""
    gateway = lab.fleet.sites[site].gateway
    return next(h.node for h in lab.plan.hosts if h.site == site and h.role == "machine" and h.node != gateway)


@pytest.fixture(scope="module")
def play(lab, tmp_path_factory):
    play = Play(lab, tmp_path_factory.mktemp("wireguard-role"))
    play.first_recap = play.run()
    return play


@pytest.fixture(scope="module")
def names(lab):
    sites = sorted(lab.fleet.sites)
    assert len(sites) >= 2, "the lab fleet needs two sites"
    return {"edge": lab.fleet.edge.host, "sites": sites, "gateways": [lab.fleet.sites[s].gateway for s in sites]}


def test_edge_reaches_every_site_lan_through_the_tunnels(lab, play, names):
    edge = names["edge"]
    assert set(play.first_recap) == {edge, *names["gateways"]}
    hub_peers = wg_dump(lab, edge)
    for site, gateway in zip(names["sites"], names["gateways"], strict=True):
        wanted = lab.fleet.sites[site]
        fields = hub_peers.get(public_key(lab, gateway))
        assert fields is not None, f"the hub has no peer for {gateway}: {hub_peers}"
        tunnel_ip = str(wanted.wireguard.address).split("/")[0]
        assert fields[3] == f"{tunnel_ip}/32,{wanted.lan}"
        target = lab.address(lan_host(lab, site))
        route = lab.exec(edge, "ip", "route", "get", target).stdout
        assert " dev wg0 " in route, f"the edge does not route {target} through the tunnel: {route}"
        try:
            lab.wait_until(lambda t=target: lab.ping(edge, t), 15, f"{edge} -> {target} ({site} LAN), tunnel")
        except AssertionError:
            gw_lan = lab.address(gateway)
            hint = (
                "the gateway itself answers, so the tunnel works and the gateway forwards: the lab's Docker "
                "bridge drops frames whose source is outside the LAN (DOCKER-ISOLATION rules on internal "
                "networks)"
                if lab.ping(edge, gw_lan)
                else "the gateway's own LAN address does not answer either"
            )
            raise AssertionError(f"{edge} cannot reach {target} on the {site} LAN through the tunnel; {hint}") from None


def test_second_run_changes_nothing(play):
    recap = play.run()
    assert {host: r["changed"] for host, r in recap.items()} == dict.fromkeys(recap, 0)


def test_limit_to_one_gateway_keeps_the_other_peers(lab, play, names):
    edge = names["edge"]
    kept, limited = names["gateways"][0], names["gateways"][-1]
    before = wg_dump(lab, edge)
    kept_key, limited_key = public_key(lab, kept), public_key(lab, limited)
    # Drop the limited gateway's peer on the hub, live only: the limited run must put it back.
    lab.exec(edge, "wg", "set", "wg0", "peer", limited_key, "remove")
    assert limited_key not in wg_dump(lab, edge)

    recap = play.run("--limit", limited)

    assert set(recap) == {limited}
    after = wg_dump(lab, edge)
    assert limited_key in after, f"the hub's peer for {limited} was not converged from a run limited to it"
    assert after[limited_key][3] == before[limited_key][3]
    assert kept_key in after, f"a run limited to {limited} dropped the hub's peer for {kept}"
    assert after[kept_key][3] == before[kept_key][3]
    config = lab.exec(edge, "cat", "/etc/wireguard/wg0.conf").stdout
    assert f"# wakegrid: {kept}" in config and f"# wakegrid: {limited}" in config
    # The hub lost its session with the peer it re-created: the spoke notices no reply to its
    # data packets after WireGuard's 15 s rekey timeout, then handshakes again.
    lab.wait_until(
        lambda: lab.ping(limited, str(lab.fleet.edge.wireguard.address).split("/")[0]),
        45,
        f"{limited} -> hub through the tunnel",
    )


def test_run_after_a_site_cut_brings_the_tunnel_back(lab, play, names):
    site, gateway = names["sites"][0], names["gateways"][0]
    try:
        lab.lab.cut_site(site)
        assert "UP" not in lab.exec(gateway, "ip", "-o", "link", "show", "wg0").stdout.split(">")[0]

        play.run("--limit", gateway)

        flags = lab.exec(gateway, "ip", "-o", "link", "show", "wg0").stdout.split(">")[0]
        assert "UP" in flags.split("<")[1].split(","), f"wg0 on {gateway} is still down: {flags}"
    finally:
        lab.restore()
    target = lab.address(lan_host(lab, site))
    lab.wait_until(lambda: lab.ping(names["edge"], target), 30, f"{names['edge']} -> {target} after restore-site")


def test_a_site_removed_from_the_fleet_loses_its_peer_and_routes_on_the_hub(lab, play, names, tmp_path):
    edge, hub_ip = names["edge"], str(lab.fleet.edge.wireguard.address).split("/")[0]
    (kept_site, removed_site), (kept, removed) = names["sites"][:2], names["gateways"][:2]
    kept_key, removed_key, edge_key = public_key(lab, kept), public_key(lab, removed), public_key(lab, edge)
    removed_tunnel = str(lab.fleet.sites[removed_site].wireguard.address).split("/")[0] + "/32"
    removed_lan = str(lab.fleet.sites[removed_site].lan)
    # A peer and a route someone added by hand on the hub (no marker): never wakegrid's to remove.
    hand_key = lab.exec(edge, "sh", "-c", "wg genkey | wg pubkey").stdout.strip()
    hand_section = f"\n# the office, by hand\n[Peer]\nPublicKey = {hand_key}\nAllowedIPs = 10.200.99.1/32\n"
    try:
        lab.exec(edge, "wg", "set", "wg0", "peer", hand_key, "allowed-ips", "10.200.99.1/32")
        lab.exec(edge, "python3", "-c", f"import sys; open({HUB_CONF!r}, 'a').write(sys.argv[1])", hand_section)
        lab.exec(edge, "ip", "route", "replace", "10.200.99.1/32", "dev", "wg0")
        # Control: the gateway about to be removed handshakes at once after a restart of its tunnel.
        restart_tunnel(lab, removed)
        lab.wait_until(lambda: handshake(lab, removed, edge_key) > 0, 5, f"{removed}'s handshake with the hub")
        assert {removed_tunnel, removed_lan} <= routes_through_tunnel(lab, edge)

        recap = play.run(inventory=fleet_without_site(lab, removed_site, tmp_path))

        assert set(recap) == {edge, kept}
        hub_peers = wg_dump(lab, edge)
        assert removed_key not in hub_peers, "the removed site's key is still authorised on the hub"
        assert kept_key in hub_peers and hand_key in hub_peers
        config = lab.exec(edge, "cat", HUB_CONF).stdout
        assert f"# wakegrid: {removed}" not in config and removed_key not in config
        assert f"# wakegrid: {kept}" in config and hand_section.strip() in config
        hub_routes = routes_through_tunnel(lab, edge)
        assert not {removed_tunnel, removed_lan} & hub_routes
        assert "10.200.99.1/32" in hub_routes, "a route added by hand was removed"
        assert str(lab.fleet.sites[kept_site].lan) in hub_routes
        # the kept gateway no longer sends the removed site's networks to the hub, nor routes them
        assert wg_dump(lab, kept)[edge_key][3] == str(ipaddress.ip_interface(lab.fleet.edge.wireguard.address).network)
        assert not {removed_tunnel, removed_lan} & routes_through_tunnel(lab, kept)

        # The removed gateway still has its key and the hub as its peer: it cannot get a session.
        restart_tunnel(lab, removed)
        assert not any(lab.ping(removed, hub_ip) for _ in range(3)), "the removed gateway reaches the hub"
        assert handshake(lab, removed, edge_key) == 0, "the hub answered a handshake from the removed gateway"
        # ...while the site that stays works through the tunnel.
        target = lab.address(lan_host(lab, kept_site))
        lab.wait_until(lambda: lab.ping(edge, target), 15, f"{edge} -> {target} ({kept_site} LAN)")

        again = play.run(inventory=fleet_without_site(lab, removed_site, tmp_path))
        assert {host: r["changed"] for host, r in again.items()} == dict.fromkeys(again, 0)
    finally:
        lab.exec(edge, "wg", "set", "wg0", "peer", hand_key, "remove", check=False)
        lab.exec(edge, "ip", "route", "del", "10.200.99.1/32", "dev", "wg0", check=False)
        drop = f"import sys; t = open({HUB_CONF!r}).read(); open({HUB_CONF!r}, 'w').write(t.replace(sys.argv[1], ''))"
        lab.exec(edge, "python3", "-c", drop, hand_section, check=False)
        play.run()  # the full fleet again: the removed site's peer and routes come back
        restart_tunnel(lab, removed)
    lab.wait_until(lambda: handshake(lab, removed, edge_key) > 0, 10, f"{removed}'s handshake once its site is back")
    assert hand_key not in wg_dump(lab, edge)
    target = lab.address(lan_host(lab, removed_site))
    lab.wait_until(lambda: lab.ping(edge, target), 30, f"{edge} -> {target} ({removed_site} LAN) after re-adding it")
