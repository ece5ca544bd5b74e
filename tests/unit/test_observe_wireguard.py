"""The WireGuard observer: `wg show <interface> dump` parsed exactly, tunnels up/down/unknown by
handshake age, and garbage or a failing command giving unknown with a reason, never a traceback.

The format is wireguard-tools' ``dump_print`` (src/show.c, lines 253-288 at commit
025f00454fec8fd0816607a28c1ee6cd9a54b134 of github.com/WireGuard/wireguard-tools): the
interface line ``private-key public-key listen-port fwmark``, then per peer ``public-key
preshared-key endpoint allowed-ips latest-handshake transfer-rx transfer-tx
persistent-keepalive``, tab-separated, ``(none)`` for a missing key/endpoint/allowed-ips,
``off`` for no fwmark/keepalive, allowed-ips joined by commas. The last test runs the real
``wg`` against ``wireguard-go`` interfaces in two network namespaces.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wakegrid.model import Fleet, parse_fleet
from wakegrid.observe.wireguard import (
    Peer,
    WireGuardError,
    observe_tunnels,
    parse_dump,
    read_dump,
    tunnels,
)
from wakegrid.state import Tunnel

KEY_EDGE_PRIVATE = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
KEY_EDGE = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
KEY_DIJON = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
KEY_THORY = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
KEY_PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="

# What `wg show wg0 dump` prints on a hub with two site peers (keys from wg(8)'s examples).
DUMP = (
    f"{KEY_EDGE_PRIVATE}\t{KEY_EDGE}\t51820\toff\n"
    f"{KEY_DIJON}\t{KEY_PSK}\t198.51.100.7:40123\t10.200.1.0/24,192.168.1.0/24\t1796546600\t92840\t120312\t25\n"
    f"{KEY_THORY}\t(none)\t(none)\t10.200.2.1/32\t0\t0\t0\toff\n"
)
NOW = datetime.fromtimestamp(1796546642, UTC)

FLEET = """
edge: {host: vps, domain: example.net, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}
sites:
  dijon: {gateway: gw-dijon, wireguard: {address: 10.200.1.1/24}}
  thory: {gateway: gw-thory, wireguard: {address: 10.200.2.1/24}}
  lyon: {gateway: gw-lyon, wireguard: {address: 10.200.3.1/24}}
nodes:
  gw-dijon: {kind: machine, site: dijon}
  gw-thory: {kind: machine, site: thory}
  gw-lyon: {kind: machine, site: lyon}
"""


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return parse_fleet(FLEET, source="<test>")


def test_the_dump_gives_each_peer_its_public_key_allowed_ips_and_handshake():
    dijon, thory = parse_dump(DUMP)
    assert dijon.public_key == KEY_DIJON
    assert [str(n) for n in dijon.allowed_ips] == ["10.200.1.0/24", "192.168.1.0/24"]
    assert dijon.latest_handshake == 1796546600
    assert (thory.public_key, [str(n) for n in thory.allowed_ips], thory.latest_handshake) == (
        KEY_THORY,
        ["10.200.2.1/32"],
        0,
    )


def test_no_key_material_but_public_keys_is_kept():
    assert KEY_EDGE_PRIVATE not in repr(parse_dump(DUMP))
    assert KEY_PSK not in repr(parse_dump(DUMP))


def test_an_interface_without_peers_and_ipv6_and_a_fwmark():
    assert parse_dump("(none)\t(none)\t0\t0xca6c\n") == []
    (peer,) = parse_dump(f"(none)\t(none)\t0\toff\n{KEY_DIJON}\t(none)\t[2001:db8::1]:51820\tfd00::/64\t5\t1\t2\toff\n")
    assert [str(n) for n in peer.allowed_ips] == ["fd00::/64"]


def test_tunnels_by_handshake_age(fleet):
    result = tunnels(fleet, parse_dump(DUMP), NOW)
    assert result["dijon"] == Tunnel("up", "handshake 42 s ago")
    assert result["thory"] == Tunnel("down", "no handshake since the hub's interface came up")
    assert result["lyon"] == Tunnel("down", "no peer on the hub allows 10.200.3.1")
    stale = tunnels(fleet, parse_dump(DUMP), datetime.fromtimestamp(1796546600 + 212, UTC))
    assert stale["dijon"] == Tunnel("down", "no handshake for 212 s (stale after 180 s)")
    assert tunnels(fleet, parse_dump(DUMP), NOW, stale_after=30)["dijon"].state == "down"
    assert list(result) == ["dijon", "thory", "lyon"]


def test_the_most_specific_allowed_ip_names_the_sites_peer(fleet):
    peers = [
        Peer(KEY_DIJON, (ipaddress.ip_network("10.200.0.0/16"),), 0),
        Peer(KEY_THORY, (ipaddress.ip_network("10.200.1.0/24"),), 1796546630),
    ]
    assert tunnels(fleet, peers, NOW)["dijon"] == Tunnel("up", "handshake 12 s ago")
    assert tunnels(fleet, peers, NOW)["lyon"].detail == "no handshake since the hub's interface came up"


def test_an_error_makes_every_tunnel_unknown_never_down(fleet):
    error = WireGuardError("wg exited with status 1: Unable to access interface: No such device")
    result = tunnels(fleet, error, NOW)
    assert {t.state for t in result.values()} == {"unknown"}
    assert result["dijon"].detail == f"wg show failed: {error}"


GARBAGE = [
    ("", "empty output"),
    ("\n\n", "empty output"),
    ("interface: wg0\n  public key: x\n", "line 1: expected the interface line"),
    (f"wg0\t(none)\t{KEY_EDGE}\t51820\toff\n", "wg show all dump"),
    ("(none)\t(none)\tport\toff\n", "listen-port or fwmark"),
    (f"(none)\t(none)\t51820\toff\n{KEY_DIJON}\t(none)\n", "line 2: expected 8 tab-separated fields, found 2"),
    ("(none)\t(none)\t51820\toff\nnot-a-key\t(none)\t(none)\t10.0.0.0/8\t0\t0\t0\toff\n", "not a WireGuard key"),
    (f"(none)\t(none)\t51820\toff\n{KEY_DIJON}\t(none)\t(none)\t10.0.0.0/8\t-1\t0\t0\toff\n", "latest-handshake"),
    (f"(none)\t(none)\t51820\toff\n{KEY_DIJON}\t(none)\t(none)\t10.0.0.0/8\t1\t0\tx\toff\n", "transfer-tx"),
    (f"(none)\t(none)\t51820\toff\n{KEY_DIJON}\t(none)\t(none)\t10.0.0.0/8\t1\t0\t0\tever\n", "persistent-keepalive"),
    (f"(none)\t(none)\t51820\toff\n{KEY_DIJON}\t(none)\t(none)\t10.0.0.300/8\t1\t0\t0\toff\n", "allowed IP"),
    ("\x00\xff\x1b[31m" * 50, "line 1"),
]


@pytest.mark.parametrize(("text", "message"), GARBAGE)
def test_garbage_is_a_clear_error_that_quotes_no_key(text, message, fleet):
    with pytest.raises(WireGuardError, match=message.replace("(", r"\(")) as caught:
        parse_dump(text)
    assert KEY_EDGE not in str(caught.value) and KEY_DIJON not in str(caught.value)
    assert tunnels(fleet, caught.value, NOW)["dijon"].state == "unknown"


def test_a_private_key_on_a_bad_line_is_never_quoted():
    with pytest.raises(WireGuardError) as caught:
        parse_dump(f"{KEY_EDGE_PRIVATE}\t{KEY_EDGE}\t51820\n")
    assert KEY_EDGE_PRIVATE not in str(caught.value)


def test_a_command_that_fails_is_a_clear_error(fleet, tmp_path):
    with pytest.raises(WireGuardError, match="cannot run /nonexistent/wg"):
        asyncio.run(read_dump(["/nonexistent/wg", "show"]))
    with pytest.raises(WireGuardError, match="exited with status 3: nope"):
        asyncio.run(read_dump(["sh", "-c", "echo nope >&2; exit 3"]))
    with pytest.raises(WireGuardError, match="no command"):
        asyncio.run(read_dump([]))
    started = time.monotonic()
    with pytest.raises(WireGuardError, match=r"did not finish within 0\.3 s"):
        asyncio.run(read_dump(["sleep", "30"], timeout=0.3))
    assert time.monotonic() - started < 5
    unknown = asyncio.run(observe_tunnels(fleet, NOW, command=["sh", "-c", "echo garbage"]))
    assert {t.state for t in unknown.values()} == {"unknown"}
    dump = tmp_path / "dump"
    dump.write_text(DUMP)
    known = asyncio.run(observe_tunnels(fleet, NOW, command=["cat", str(dump)]))
    assert known["dijon"].state == "up"


# --------------------------------------------------------------------------- the real wg


def _real_wireguard_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("wg", "wireguard-go", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    return None


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def two_namespaces(tmp_path) -> Iterator[tuple[str, str, str]]:
    """A hub and a spoke, each a wireguard-go interface in its own network namespace, linked by a veth.

    Interface names are unique (wireguard-go's control socket, /var/run/wireguard/NAME.sock, is
    shared by every namespace). Yields (hub namespace, hub interface, spoke's public key).
    """
    missing = _real_wireguard_missing()
    if missing:
        pytest.skip(missing)
    tag = f"{os.getpid() % 100000}"
    hub_ns, spoke_ns, hub_if, spoke_if = f"wgh2h{tag}", f"wgh2s{tag}", f"wgh{tag}", f"wgs{tag}"
    try:
        for ns in (hub_ns, spoke_ns):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        veth = ["type", "veth", "peer", "name", f"vs{tag}", "netns", spoke_ns]
        _run("ip", "link", "add", f"vh{tag}", "netns", hub_ns, *veth)
        _run("ip", "-n", hub_ns, "addr", "add", "10.78.0.1/24", "dev", f"vh{tag}")
        _run("ip", "-n", spoke_ns, "addr", "add", "10.78.0.2/24", "dev", f"vs{tag}")
        _run("ip", "-n", hub_ns, "link", "set", f"vh{tag}", "up")
        _run("ip", "-n", spoke_ns, "link", "set", f"vs{tag}", "up")
        keys = {}
        for side in ("hub", "spoke"):
            private = _run("wg", "genkey").strip()
            public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True).stdout
            keys[side] = (private, public.strip())
        environment = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        for ns, interface, side, address, peer_side, peer_allowed, endpoint in (
            (hub_ns, hub_if, "hub", "10.77.0.1/24", "spoke", "10.77.0.2/32", None),
            (spoke_ns, spoke_if, "spoke", "10.77.0.2/24", "hub", "10.77.0.0/24", "10.78.0.1:51999"),
        ):
            subprocess.run(
                ["ip", "netns", "exec", ns, "wireguard-go", interface],
                check=True,
                env=environment,
                capture_output=True,
                timeout=30,
            )
            key_file = tmp_path / f"{interface}.key"
            key_file.write_text(keys[side][0])
            key_file.chmod(0o600)
            setting = ["ip", "netns", "exec", ns, "wg", "set", interface, "private-key", str(key_file)]
            if side == "hub":
                setting += ["listen-port", "51999"]
            setting += ["peer", keys[peer_side][1], "allowed-ips", peer_allowed]
            if endpoint:
                setting += ["endpoint", endpoint]
            _run(*setting)
            key_file.unlink()
            _run("ip", "-n", ns, "addr", "add", address, "dev", interface)
            _run("ip", "-n", ns, "link", "set", interface, "up")
        # a second peer on the hub that never shakes hands
        _run("ip", "netns", "exec", hub_ns, "wg", "set", hub_if, "peer", KEY_THORY, "allowed-ips", "10.77.0.3/32")
        yield hub_ns, hub_if, keys["spoke"][1]
    finally:
        for ns in (hub_ns, spoke_ns):
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in listed.stdout.split():
                os.kill(int(pid), 15)  # the wireguard-go this fixture started in its own namespace
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_the_real_wg_dump_of_a_wireguard_go_hub(two_namespaces):
    hub_ns, hub_if, spoke_key = two_namespaces
    command = ["ip", "netns", "exec", hub_ns, "wg", "show", hub_if, "dump"]
    before = parse_dump(asyncio.run(read_dump(command)))
    assert {p.public_key: p.latest_handshake for p in before}[spoke_key] == 0
    spoke_ns = hub_ns.replace("wgh2h", "wgh2s")
    _run("ip", "netns", "exec", spoke_ns, "ping", "-c", "1", "-W", "5", "10.77.0.1")  # makes the handshake
    fleet = parse_fleet(
        """
edge: {host: vps, domain: example.net, wireguard: {address: 10.77.0.1/24, endpoint: "vps:51999"}}
sites:
  near: {gateway: gw-near, wireguard: {address: 10.77.0.2/24}}
  silent: {gateway: gw-silent, wireguard: {address: 10.77.0.3/24}}
  absent: {gateway: gw-absent, wireguard: {address: 10.77.0.9/24}}
nodes:
  gw-near: {kind: machine, site: near}
  gw-silent: {kind: machine, site: silent}
  gw-absent: {kind: machine, site: absent}
""",
        source="<test>",
    )
    result = asyncio.run(observe_tunnels(fleet, datetime.now(UTC), command=command))
    assert result["near"].state == "up", result["near"]
    assert result["silent"] == Tunnel("down", "no handshake since the hub's interface came up")
    assert result["absent"] == Tunnel("down", "no peer on the hub allows 10.77.0.9")
    missing = asyncio.run(observe_tunnels(fleet, datetime.now(UTC), command=[*command[:5], "wgnope0", "dump"]))
    assert missing["near"].state == "unknown"
    assert "exited with status" in missing["near"].detail


def test_nodes_behind_a_down_tunnel_are_unknown_not_down():
    from wakegrid.model import load_fleet
    from wakegrid.observe.power import PowerState
    from wakegrid.observe.wireguard import unseen_behind_down_tunnels

    fleet = load_fleet(Path(__file__).resolve().parents[2] / "inventories" / "lab" / "lab.fleet.yml")
    power = {
        "nas": PowerState("nas", "down", "10.231.1.10:22 did not answer within 1s"),
        "gw-dijon": PowerState("gw-dijon", "up", "SSH answers"),
        "srv-thory": PowerState("srv-thory", "down", "10.231.2.10:22 did not answer within 1s"),
    }
    tunnels = {"dijon": Tunnel("down", "no handshake for 212 s"), "thory": Tunnel("unknown", "wg show failed")}
    seen = unseen_behind_down_tunnels(fleet, power, tunnels)
    # Behind dijon's cut tunnel a silent machine could not be seen: unknown, with why.
    assert seen["nas"] == PowerState(
        "nas", "unknown", "site dijon unreachable: WireGuard tunnel down (no handshake for 212 s)"
    )
    assert seen["gw-dijon"] == power["gw-dijon"]  # it answered: up is up
    assert seen["srv-thory"] == power["srv-thory"]  # an unknown tunnel proves nothing either way
    assert unseen_behind_down_tunnels(fleet, power, {}) == power
