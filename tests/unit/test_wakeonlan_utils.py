"""plugins/module_utils/wakeonlan.py: MAC and SecureOn parsing, packet building, the wait loop."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest
import wakeonlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

wol = module_utils("wakeonlan")

MAC = bytes.fromhex("525400123456")


# --- parse_mac ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["52:54:00:12:34:56", "52-54-00-12-34-56", "5254.0012.3456", "525400123456", "  52:54:00:12:34:56\n"],
)
def test_mac_forms(text):
    assert wol.parse_mac(text) == MAC


def test_mac_upper_case_and_normalized_output():
    assert wol.format_mac(wol.parse_mac("AA:BB:CC:DD:EE:0F")) == "aa:bb:cc:dd:ee:0f"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "52:54:00:12:34",  # 5 bytes
        "52:54:00:12:34:56:78",  # 7 bytes
        "52:54-00:12:34:56",  # mixed separators
        "52:54:00:12:34:5g",  # not hex
        "5254001234567",  # 13 digits
        "525.400.123.456",
        "52 54 00 12 34 56",
    ],
)
def test_bad_mac_is_rejected_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"invalid MAC address.*aa:bb:cc:dd:ee:ff"):
        wol.parse_mac(text)


# --- parse_secureon -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("01:02:03:04:05:06", "010203040506"),
        ("a1-b2-c3-d4-e5-f6", "a1b2c3d4e5f6"),
        ("A1B2C3D4E5F6", "a1b2c3d4e5f6"),
        ("c0:a8:01:01", "c0a80101"),
        ("c0-a8-01-01", "c0a80101"),
        ("c0a80101", "c0a80101"),
        ("192.168.1.1", "c0a80101"),
        ("0.0.0.255", "000000ff"),
    ],
)
def test_secureon_forms(text, expected):
    assert wol.parse_secureon(text) == bytes.fromhex(expected)


@pytest.mark.parametrize("text", ["01:02:03", "01:02:03:04:05", "192.168.1.256", "1.2.3", "c0a801", "zz:zz:zz:zz"])
def test_bad_secureon_is_rejected_without_echoing_it(text):
    with pytest.raises(ValueError, match="invalid SecureOn password") as info:
        wol.parse_secureon(text)
    assert text not in str(info.value)  # a secret never goes into an error message


# --- build_magic_packet ---------------------------------------------------------------


def test_plain_packet_layout():
    packet = wol.build_magic_packet(MAC)
    assert len(packet) == 102
    assert packet[:6] == b"\xff" * 6
    assert all(packet[6 + 6 * i : 12 + 6 * i] == MAC for i in range(16))


@pytest.mark.parametrize("password", [bytes.fromhex("c0a80101"), bytes.fromhex("a1b2c3d4e5f6")], ids=["4", "6"])
def test_secureon_packet_appends_the_password(password):
    packet = wol.build_magic_packet(MAC, password)
    assert len(packet) == 102 + len(password)
    assert packet == b"\xff" * 6 + MAC * 16 + password


def test_packets_match_the_wakeonlan_library():
    # the library builds plain and 6-byte SecureOn packets itself: ours must be byte-identical
    assert wol.build_magic_packet(MAC) == wakeonlan.create_magic_packet("52:54:00:12:34:56")
    assert wol.build_magic_packet(MAC, bytes.fromhex("a1b2c3d4e5f6")) == wakeonlan.create_magic_packet(
        "52:54:00:12:34:56/a1:b2:c3:d4:e5:f6"
    )


def test_the_library_cannot_build_4_byte_secureon_packets():
    # the reason this module builds packets itself; if this starts passing, the library caught up
    with pytest.raises(ValueError):
        wakeonlan.create_magic_packet("52:54:00:12:34:56/c0:a8:01:01")


@pytest.mark.parametrize(("mac", "password"), [(b"\x00" * 5, b""), (MAC, b"\x01\x02\x03"), (MAC, b"\x01" * 8)])
def test_packet_rejects_wrong_sizes(mac, password):
    with pytest.raises(ValueError):
        wol.build_magic_packet(mac, password)


# --- send_magic_packet (loopback) -----------------------------------------------------


def test_send_delivers_the_exact_bytes_on_loopback():
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    try:
        packet = wol.build_magic_packet(MAC, bytes.fromhex("c0a80101"))
        wol.send_magic_packet(packet, "127.0.0.1", receiver.getsockname()[1], interface="127.0.0.1")
        data, source = receiver.recvfrom(2048)
    finally:
        receiver.close()
    assert data == packet
    assert source[0] == "127.0.0.1"


# --- probes ---------------------------------------------------------------------------


def test_tcp_probe_accepted_and_refused():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        assert wol.tcp_answers("127.0.0.1", port, 1) == (True, None)
    finally:
        listener.close()
    ok, why = wol.tcp_answers("127.0.0.1", port, 1)
    assert not ok
    assert "refused" in why.lower()


# --- wait_until_answers (fake clock) --------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.pauses = []

    def __call__(self):
        return self.now

    def pause(self, seconds):
        self.pauses.append(round(seconds, 6))
        self.now += seconds


def test_wait_answers_after_delay_and_retries():
    clock = FakeClock()
    calls = []

    def probe(limit):
        calls.append((round(clock.now - 100, 6), limit))
        clock.now += 0.25  # each check takes a little time
        return len(calls) == 3, "refused"

    answered, elapsed, why = wol.wait_until_answers(
        probe, timeout=30, delay=5, sleep=1, probe_timeout=2, clock=clock, pause=clock.pause
    )
    assert answered and why is None
    assert [at for at, _ in calls] == [5, 6.25, 7.5]
    assert all(limit == 2 for _, limit in calls)
    assert elapsed == pytest.approx(7.75)


def test_wait_gives_up_at_the_deadline_with_the_last_reason():
    clock = FakeClock()
    limits = []

    def probe(limit):
        limits.append(limit)
        clock.now += limit
        return False, "timed out"

    answered, elapsed, why = wol.wait_until_answers(
        probe, timeout=5.5, delay=0, sleep=1, probe_timeout=2, clock=clock, pause=clock.pause
    )
    assert not answered
    assert why == "timed out"
    # checks at 0, 3 and, cut to what is left (with a 0.1 s floor), at the deadline itself
    assert limits == [2, 2, 0.1]
    assert elapsed == pytest.approx(5.6)


def test_wait_with_a_real_clock_and_a_listener_that_appears_later():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    timer = threading.Timer(0.4, listener.listen, args=(1,))
    timer.start()
    try:
        answered, elapsed, _ = wol.wait_until_answers(
            lambda limit: wol.tcp_answers("127.0.0.1", port, limit), timeout=5, sleep=0.05, probe_timeout=0.5
        )
    finally:
        timer.cancel()
        listener.close()
    assert answered
    assert 0.35 <= elapsed < 3


def test_resends_every_interval_while_unanswered_and_never_after_the_answer():
    clock = FakeClock()
    sent = []
    resend = wol.Resender(lambda: sent.append(round(clock.now - 100, 6)), interval=2, count=10, clock=clock)

    def probe(limit):
        return clock.now - 100 >= 5, "refused"  # the machine answers from t=5

    answered, _, _ = wol.wait_until_answers(probe, timeout=30, sleep=1, clock=clock, pause=clock.pause, between=resend)
    assert answered
    assert sent == [2, 4]  # the first packet went at 0; none after the answer at 5
    assert resend.sent == 3


def test_resends_stop_at_the_count_and_zero_interval_sends_none():
    for interval, count, expected in ((1, 2, [1, 2]), (0, 5, [])):
        clock = FakeClock()
        sent: list[float] = []

        def send(sent=sent, clock=clock):
            sent.append(round(clock.now - 100, 6))

        resend = wol.Resender(send, interval, count, clock=clock)
        wol.wait_until_answers(
            lambda limit: (False, "refused"), timeout=10, sleep=1, clock=clock, pause=clock.pause, between=resend
        )
        assert sent == expected
