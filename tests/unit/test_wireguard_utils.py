"""The pure core of the WireGuard modules (plugins/module_utils/wireguard.py).

It is standard library only, as the modules need on their targets.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

wg = module_utils("wireguard")

# Real keys produced by `wg genkey | wg pubkey` and `wg genpsk` (test material only).
PRIV = "YO8lSfzV9kEx5OYCk6iIUHRsVFf3X+IgocgheXSiaFw="
PUB_A = "mGn6SqP/7gs/GIhtkcuq7jaV2OrfoCAFD9F1oRGLzHg="
PUB_B = "iO8XroB0QXbHxC6Ol5kMCBlV1gFcWLOX78Zp3jRWVWQ="
PUB_C = "r/WosQ96VFokVyoMQwXQg3OUuptQ/tGSVAl3dPXLKi4="
PSK = "W1k+NThdVmwwTADc/y8VRxuxrO4IDDUjuM0+y5tf6ps="

DUMP = (
    f"{PRIV}\t{PUB_A}\t51820\toff\n"
    f"{PUB_B}\t(none)\t10.241.1.2:51820\t10.242.0.2/32\t1795353673\t1234\t5678\toff\n"
    f"{PUB_C}\t{PSK}\t[fd00::3]:41000\t10.242.0.3/32,10.242.9.0/24\t0\t0\t0\t25\n"
)

HAND_WRITTEN = f"""# wg0 on the hub, edited by hand before wakegrid existed
[Interface]
Address = 10.200.0.1/24
ListenPort = 51820
DNS = 10.200.0.53  # wg-quick only
PostUp = iptables -A FORWARD -i %i -j ACCEPT

[Peer]
# wakegrid: pi-dijon
PublicKey = {PUB_B}
AllowedIPs = 10.200.1.0/24

# Thory, managed by hand: keep me
[Peer]
PublicKey = {PUB_C}
PresharedKey = {PSK}
AllowedIPs = 10.200.2.0/24
Endpoint = thory.example.net:51820
"""


# --- values ------------------------------------------------------------------------------


def test_valid_keys_are_canonical_base64_of_32_bytes():
    assert wg.is_valid_key(PUB_A) and wg.is_valid_key(PSK)
    assert not wg.is_valid_key(PUB_A[:-2] + "=")
    assert not wg.is_valid_key("not a key")
    assert not wg.is_valid_key(base64.b64encode(b"x" * 31).decode())
    # same bytes when decoded leniently, but `wg` rejects a non-zero padding bit
    assert not wg.is_valid_key(PUB_A[:-2] + "h=")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.1", "10.0.0.1/32"),
        ("10.0.0.7/24", "10.0.0.0/24"),
        ("fd00::1/64", "fd00::/64"),
    ],
)
def test_networks_are_masked_like_wireguard_stores_them(value, expected):
    assert wg.normalize_network(value) == expected


def test_network_lists_are_sets_ipv4_first():
    assert wg.normalize_networks(["fd00::/64", "10.0.1.0/24", "10.0.0.0/24", "10.0.0.0/24"]) == [
        "10.0.0.0/24",
        "10.0.1.0/24",
        "fd00::/64",
    ]


def test_interface_addresses_keep_their_host_part():
    assert wg.normalize_interface_addresses(["10.200.0.1/24", "10.200.0.1"]) == ["10.200.0.1/24", "10.200.0.1/32"]
    with pytest.raises(wg.WireGuardError):
        wg.normalize_interface_address("10.200.0.300/24")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("vps.example.net:51820", ("vps.example.net", 51820)),
        ("10.241.0.1:51820", ("10.241.0.1", 51820)),
        ("[fd00::1]:51820", ("fd00::1", 51820)),
    ],
)
def test_endpoints_parse(value, expected):
    assert wg.parse_endpoint(value) == expected
    assert wg.format_endpoint(*expected) == value


@pytest.mark.parametrize("value", ["vps.example.net", "fd00::1:51820", "[fd00::1]51820", "host:0", "host:port"])
def test_bad_endpoints_are_rejected(value):
    with pytest.raises(wg.WireGuardError):
        wg.parse_endpoint(value)


# --- wg show dump ------------------------------------------------------------------------


def test_dump_parses_interface_without_keeping_the_private_key():
    interface, peers = wg.parse_dump(DUMP)
    assert (interface.public_key, interface.listen_port, interface.fwmark) == (PUB_A, 51820, None)
    assert PRIV not in repr(vars(interface))
    assert list(peers) == [PUB_B, PUB_C]


def test_dump_parses_peers():
    _, peers = wg.parse_dump(DUMP)
    b, c = peers[PUB_B], peers[PUB_C]
    assert (
        b.preshared_key,
        b.endpoint,
        b.allowed_ips,
        b.latest_handshake,
        b.rx_bytes,
        b.tx_bytes,
        b.persistent_keepalive,
    ) == (None, "10.241.1.2:51820", ["10.242.0.2/32"], 1795353673, 1234, 5678, 0)
    assert (c.preshared_key, c.endpoint, c.allowed_ips, c.persistent_keepalive) == (
        PSK,
        "[fd00::3]:41000",
        ["10.242.0.3/32", "10.242.9.0/24"],
        25,
    )


def test_dump_of_a_fresh_interface_and_a_peer_without_anything():
    interface, peers = wg.parse_dump(f"{PRIV}\t{PUB_A}\t43127\t0xca6c\n{PUB_B}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n")
    assert interface.fwmark == "0xca6c"
    assert (peers[PUB_B].endpoint, peers[PUB_B].allowed_ips) == (None, [])


@pytest.mark.parametrize("text", ["", "only\tthree\tfields\n", f"{PRIV}\t{PUB_A}\t1\toff\n{PUB_B}\tshort\n"])
def test_malformed_dump_is_an_error(text):
    with pytest.raises(wg.WireGuardError):
        wg.parse_dump(text)


# --- config file: parsing and rendering ----------------------------------------------------


@pytest.mark.parametrize("text", [HAND_WRITTEN, "", "[Interface]\n", "# only a comment", HAND_WRITTEN + "\n\n"])
def test_config_round_trips_byte_for_byte(text):
    assert wg.render_config(wg.parse_config(text)) == text


def test_config_sections_and_values():
    config = wg.parse_config(HAND_WRITTEN)
    assert config.preamble == ["# wg0 on the hub, edited by hand before wakegrid existed"]
    assert [s.kind for s in config.sections] == ["interface", "peer", "peer"]
    assert config.interface.get("dns") == "10.200.0.53"  # keys are case-insensitive, comments dropped
    assert [p.marker for p in config.peers] == ["pi-dijon", None]
    assert wg.config_addresses(config) == ["10.200.0.1/24"]


def test_redact_hides_private_and_preshared_keys_only():
    text = wg.redact(HAND_WRITTEN + f"PrivateKey = {PRIV}\n")
    assert PSK not in text and PRIV not in text
    assert PUB_B in text and "PresharedKey = <redacted>" in text and "PrivateKey = <redacted>" in text


def test_strip_keeps_only_what_wg_setconf_accepts():
    stripped = wg.strip_config(wg.parse_config(HAND_WRITTEN))
    assert stripped == (
        "[Interface]\nListenPort = 51820\n"
        f"[Peer]\nPublicKey = {PUB_B}\nAllowedIPs = 10.200.1.0/24\n"
        f"[Peer]\nPublicKey = {PUB_C}\nPresharedKey = {PSK}\nAllowedIPs = 10.200.2.0/24\n"
        "Endpoint = thory.example.net:51820\n"
    )


def test_interface_update_sets_owned_keys_and_keeps_the_others():
    config = wg.parse_config(HAND_WRITTEN)
    wg.interface_section_update(config, ["10.200.0.1/24", "fd00::1/64"], 51821, 1380, "/etc/wireguard/wg0.key")
    section = config.interface
    assert section.values("Address") == ["10.200.0.1/24, fd00::1/64"]
    assert (section.get("ListenPort"), section.get("MTU")) == ("51821", "1380")
    assert section.values("PostUp") == [
        "wg set %i private-key /etc/wireguard/wg0.key",
        wg.HANDSHAKE_POSTUP,
        "iptables -A FORWARD -i %i -j ACCEPT",
    ]
    assert section.get("DNS") == "10.200.0.53"
    text = wg.new_config_text(config)
    assert text.endswith(HAND_WRITTEN[HAND_WRITTEN.index("[Peer]") :])  # peers untouched


def test_interface_update_moves_an_inline_key_out_and_is_idempotent():
    config = wg.parse_config(f"[Interface]\nPrivateKey = {PRIV}\nAddress = 10.0.0.1/24\n")
    wg.interface_section_update(config, None, None, None, "/k")
    once = wg.new_config_text(config)
    assert PRIV not in once and "Address = 10.0.0.1/24" in once
    again = wg.parse_config(once)
    wg.interface_section_update(again, None, None, None, "/k")
    assert wg.new_config_text(again) == once


def test_interface_update_quotes_a_key_path_for_wg_quick():
    config = wg.interface_section_update(wg.parse_config(""), [], None, None, "/etc/wire guard/wg0.key")
    assert config.interface.values("PostUp")[0] == "wg set %i private-key '/etc/wire guard/wg0.key'"


def test_a_file_of_an_earlier_release_gains_the_handshake_right_after_the_key_once():
    earlier = "[Interface]\nAddress = 10.0.0.1/24\nPostUp = wg set %i private-key /k\nPostUp = echo up\n"
    config = wg.interface_section_update(wg.parse_config(earlier), None, None, None, "/k")
    once = wg.new_config_text(config)
    post_up = wg.parse_config(once).interface.values("PostUp")
    assert post_up == ["wg set %i private-key /k", wg.HANDSHAKE_POSTUP, "echo up"]
    again = wg.interface_section_update(wg.parse_config(once), None, None, None, "/k")
    assert wg.new_config_text(again) == once


def test_the_handshake_line_survives_wg_quick_parsing():
    # wg-quick drops everything after a '#' and splits key and value at the first '='
    config = wg.interface_section_update(wg.parse_config(""), [], None, None, "/k")
    line = next(line for line in config.interface.lines if wg.HANDSHAKE_POSTUP in line)
    assert "#" not in line and line.split("=", 1)[1].strip() == wg.HANDSHAKE_POSTUP
    assert "%i" in wg.HANDSHAKE_POSTUP  # wg-quick puts the interface name there


# --- config file: peer sections ----------------------------------------------------------


def _section(name, key, allowed, **kwargs):
    return wg.render_peer_section(name, key, allowed, **kwargs)


def test_new_peer_is_appended_with_its_marker_and_the_rest_is_untouched():
    config = wg.parse_config(HAND_WRITTEN)
    assert (
        wg.upsert_peer(
            config,
            _section("vps", PUB_A, ["10.200.0.0/16"], endpoint="vps.example.net:51820", persistent_keepalive=25),
            "vps",
            PUB_A,
        )
        == []
    )
    text = wg.new_config_text(config)
    assert text.startswith(HAND_WRITTEN)
    assert text[len(HAND_WRITTEN) :] == (
        f"\n[Peer]\n# wakegrid: vps\nPublicKey = {PUB_A}\nAllowedIPs = 10.200.0.0/16\n"
        "Endpoint = vps.example.net:51820\nPersistentKeepalive = 25\n"
    )


def test_updating_a_peer_keeps_the_comment_introducing_the_next_section():
    config = wg.parse_config(HAND_WRITTEN)
    wg.upsert_peer(config, _section("pi-dijon", PUB_B, ["10.200.1.0/24", "192.168.1.0/24"]), "pi-dijon", PUB_B)
    text = wg.new_config_text(config)
    assert text == HAND_WRITTEN.replace("AllowedIPs = 10.200.1.0/24\n", "AllowedIPs = 10.200.1.0/24, 192.168.1.0/24\n")


def test_rendering_the_same_peer_again_changes_nothing():
    config = wg.parse_config(HAND_WRITTEN)
    wg.upsert_peer(config, _section("pi-dijon", PUB_B, ["10.200.1.0/24"]), "pi-dijon", PUB_B)
    assert wg.new_config_text(config) == HAND_WRITTEN


def test_a_hand_written_peer_is_adopted_by_public_key():
    config = wg.parse_config(HAND_WRITTEN)
    wg.upsert_peer(config, _section("nuc-thory", PUB_C, ["10.200.2.0/24"], preshared_key=PSK), "nuc-thory", PUB_C)
    thory = config.peers[1]
    assert thory.marker == "nuc-thory"
    assert thory.get("Endpoint") is None  # the section is now fully owned
    assert len(config.peers) == 2


def test_a_rotated_key_replaces_the_section_of_the_same_name():
    config = wg.parse_config(HAND_WRITTEN)
    replaced = wg.upsert_peer(config, _section("pi-dijon", PUB_A, ["10.200.1.0/24"]), "pi-dijon", PUB_A)
    assert replaced == [PUB_B]
    assert [p.get("PublicKey") for p in config.peers] == [PUB_A, PUB_C]


def test_removing_a_peer_keeps_the_other_peers_and_comments():
    config = wg.parse_config(HAND_WRITTEN)
    assert wg.remove_peer(config, name="pi-dijon") == [PUB_B]
    text = wg.new_config_text(config)
    assert PUB_B not in text
    assert text.endswith(HAND_WRITTEN[HAND_WRITTEN.index("# Thory") :])
    assert "\n\n\n" not in text
    assert wg.remove_peer(config, name="pi-dijon") == []


def test_managed_peers_are_the_marked_sections_only():
    config = wg.parse_config(HAND_WRITTEN)
    wg.upsert_peer(config, _section("vps", PUB_A, ["10.200.0.7/16", "fd00::/64"]), "vps", PUB_A)
    assert wg.managed_peers(config) == [
        {"name": "pi-dijon", "public_key": PUB_B, "allowed_ips": ["10.200.1.0/24"]},
        {"name": "vps", "public_key": PUB_A, "allowed_ips": ["10.200.0.0/16", "fd00::/64"]},
    ]  # thory's section, written by hand, is not ours to list (nor to remove)
    assert wg.managed_peers(wg.parse_config("")) == []


def test_public_view_shows_only_whether_a_preshared_key_is_set():
    settings = {
        "public_key": PUB_C,
        "preshared_key": PSK,
        "allowed_ips": ["10.200.2.0/24"],
        "endpoint": "thory.example.net:51820",
        "persistent_keepalive": 0,
    }
    view = wg.public_view(settings)
    assert view["preshared_key"] == "set" and PSK not in wg.format_view(view)
    assert wg.format_view(view).splitlines()[0] == "allowed_ips: [10.200.2.0/24]"
    assert wg.public_view(dict(settings, preshared_key=None))["preshared_key"] == "none"
    assert wg.format_view(None) == ""
