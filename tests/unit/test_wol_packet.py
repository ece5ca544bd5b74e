"""The lab Wake-on-LAN listener's pure core: magic packet parsing, config validation, decisions."""

from __future__ import annotations

import pytest
from wakeonlan import create_magic_packet

from wakegrid.lab.wol_listener import (
    Ignored,
    Machine,
    decide,
    load_machines,
    match_machine,
    parse_magic_packet,
)

MAC = "52:54:00:12:34:56"
MAC_BYTES = bytes.fromhex("525400123456")


def magic(mac: bytes = MAC_BYTES, password: bytes = b"") -> bytes:
    return b"\xff" * 6 + mac * 16 + password


# --- parse_magic_packet ---------------------------------------------------------------


def test_plain_packet_gives_mac_and_no_password():
    assert parse_magic_packet(magic()) == (MAC, None)


def test_packet_built_by_the_wakeonlan_library_parses():
    # the sender the reconciler really uses; guards against a format drift on either side
    assert parse_magic_packet(create_magic_packet("52-54-00-12-34-56")) == (MAC, None)
    packet = create_magic_packet("52:54:00:12:34:56/01:02:03:04:05:06")
    assert parse_magic_packet(packet) == (MAC, bytes.fromhex("010203040506"))


@pytest.mark.parametrize("password", [b"\x01\x02\x03\x04", b"\xa1\xb2\xc3\xd4\xe5\xf6"], ids=["4-bytes", "6-bytes"])
def test_secureon_password_is_returned(password):
    assert parse_magic_packet(magic(password=password)) == (MAC, password)


def test_accepts_bytearray_and_memoryview():
    assert parse_magic_packet(bytearray(magic()))[0] == MAC
    assert parse_magic_packet(memoryview(magic()))[0] == MAC


@pytest.mark.parametrize("length", [0, 6, 101, 103, 104, 105, 107, 109, 204])
def test_wrong_length_is_rejected(length):
    data = (magic() + b"\x00" * 200)[:length]
    with pytest.raises(ValueError, match=f"length {length} bytes"):
        parse_magic_packet(data)


@pytest.mark.parametrize("sync", [b"\x00" * 6, b"\xff" * 5 + b"\xfe", b"\xfe" + b"\xff" * 5])
def test_wrong_sync_stream_is_rejected(sync):
    data = sync + MAC_BYTES * 16
    with pytest.raises(ValueError, match="sync stream"):
        parse_magic_packet(data)


@pytest.mark.parametrize("bad_repeat", [1, 7, 15])
def test_inconsistent_mac_repeat_is_rejected(bad_repeat):
    repeats = [MAC_BYTES] * 16
    repeats[bad_repeat] = bytes.fromhex("525400123457")
    with pytest.raises(ValueError, match=f"repeat {bad_repeat + 1}/16 is 52:54:00:12:34:57"):
        parse_magic_packet(b"\xff" * 6 + b"".join(repeats))


def test_inconsistent_repeat_with_password_is_still_rejected():
    data = bytearray(magic(password=b"\x01\x02\x03\x04"))
    data[100] ^= 0x01  # last byte of the 16th repeat
    with pytest.raises(ValueError, match="repeat 16/16"):
        parse_magic_packet(bytes(data))


# --- load_machines --------------------------------------------------------------------


def test_config_is_normalized():
    machines = load_machines(
        {
            "52-54-00-12-34-56": {"container": "lab-nas", "boot_delay": 2, "secureon": "0102.0304"},
            "52:54:00:AB:CD:EF": {"container": "lab-pve1"},
        }
    )
    assert machines == {
        MAC: Machine(MAC, "lab-nas", 2.0, b"\x01\x02\x03\x04"),
        "52:54:00:ab:cd:ef": Machine("52:54:00:ab:cd:ef", "lab-pve1", 0.0, None),
    }


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ([], "must be an object"),
        ({"nope": {"container": "x"}}, "not hexadecimal"),
        ({"52:54:00:12:34": {"container": "x"}}, "has 5 bytes"),
        ({MAC: {"container": ""}}, "container: must be a non-empty string"),
        ({MAC: {"container": "x", "boot_delay": -1}}, "boot_delay"),
        ({MAC: {"container": "x", "boot_delay": True}}, "boot_delay"),
        ({MAC: {"container": "x", "boot_delay": "3"}}, "boot_delay"),
        ({MAC: {"container": "x", "secureon": "0102030405"}}, "has 5 bytes, expected 4 or 6"),
        ({MAC: {"container": "x", "colour": "red"}}, "unknown keys"),
        ({"52:54:00:ab:cd:ef": {"container": "a"}, "52-54-00-AB-CD-EF": {"container": "b"}}, "configured twice"),
    ],
)
def test_bad_config_is_refused_whole(config, reason):
    with pytest.raises(ValueError, match=reason):
        load_machines(config)


# --- match_machine / decide -----------------------------------------------------------

PLAIN = Machine(MAC, "lab-nas", 1.5)
LOCKED = Machine("52:54:00:00:00:02", "lab-pve1", 0.0, b"\x01\x02\x03\x04\x05\x06")
MACHINES = {PLAIN.mac: PLAIN, LOCKED.mac: LOCKED}


def test_known_mac_matches_its_machine():
    assert match_machine(MACHINES, MAC, None) is PLAIN


def test_extra_password_bytes_do_not_matter_without_secureon():
    assert match_machine(MACHINES, MAC, b"\x00\x00\x00\x00") is PLAIN


def test_unknown_mac_is_ignored():
    with pytest.raises(Ignored, match="no lab machine has MAC 52:54:00:99:99:99"):
        match_machine(MACHINES, "52:54:00:99:99:99", None)


@pytest.mark.parametrize("password", [None, b"\x01\x02\x03\x04", b"\x01\x02\x03\x04\x05\x07"])
def test_wrong_or_missing_secureon_is_ignored(password):
    with pytest.raises(Ignored, match="wrong SecureOn password"):
        match_machine(MACHINES, LOCKED.mac, password)


def test_right_secureon_matches():
    assert match_machine(MACHINES, LOCKED.mac, b"\x01\x02\x03\x04\x05\x06") is LOCKED


def test_stopped_machine_boots_after_its_delay():
    decision = decide(PLAIN, running=False, wake_pending=False)
    assert decision.start and decision.delay == 1.5


@pytest.mark.parametrize(("running", "pending"), [(True, False), (False, True), (True, True)])
def test_running_or_booting_machine_is_left_alone(running, pending):
    assert not decide(PLAIN, running=running, wake_pending=pending).start
