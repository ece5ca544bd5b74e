# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Wake-on-LAN for the wakegrid.fleet modules: magic packets and "does it answer yet?" probes.

Packets are built here, not by the ``wakeonlan`` library, because the library only knows
6-byte SecureOn passwords and NICs also accept 4-byte ones. The library sends them when it is
installed (its ``create_socket`` resolves IPv4 or IPv6 and binds the source address); without
it the standard library sends the very same datagram, so a site gateway needs nothing but
Python (Debian has no package of the library, and bookworm's system Python refuses pip).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import re
import socket
import subprocess
import time

try:
    import wakeonlan
except Exception:  # optional; wakeonlan 4 does not even import on Python < 3.10 (PEP 604 annotations)
    wakeonlan = None

SYNC_STREAM = b"\xff" * 6
MAC_REPEAT = 16
PLAIN_PACKET_LENGTH = len(SYNC_STREAM) + 6 * MAC_REPEAT  # 102

_HEX2 = "[0-9A-Fa-f]{2}"
# aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff (one separator throughout), aabb.ccdd.eeff, aabbccddeeff
_SIX_BYTES = re.compile(
    r"^(?:{h}([:-]){h}(?:\1{h}){{4}}|[0-9A-Fa-f]{{4}}\.[0-9A-Fa-f]{{4}}\.[0-9A-Fa-f]{{4}}|[0-9A-Fa-f]{{12}})$".format(
        h=_HEX2
    )
)
# aa:bb:cc:dd, aa-bb-cc-dd, aabbccdd
_FOUR_BYTES_HEX = re.compile(r"^(?:{h}([:-]){h}\1{h}\1{h}|[0-9A-Fa-f]{{8}})$".format(h=_HEX2))
# 192.168.1.1: the dotted decimal form ether-wake accepts for 4-byte passwords
_FOUR_BYTES_DECIMAL = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


def _hex_digits(text):
    return re.sub(r"[:.\-]", "", text)


def parse_mac(text):
    """The 6 bytes of a MAC address written as aa:bb:cc:dd:ee:ff, aa-bb-..., aabb.ccdd.eeff or aabbccddeeff."""
    value = (text or "").strip()
    if not _SIX_BYTES.match(value):
        raise ValueError(
            "invalid MAC address %r: expected 6 bytes as aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, "
            "aabb.ccdd.eeff or aabbccddeeff" % (text,)
        )
    return bytes(bytearray.fromhex(_hex_digits(value)))


def format_mac(mac_bytes):
    """aa:bb:cc:dd:ee:ff, lower case: the form every result reports."""
    return ":".join("%02x" % b for b in bytearray(mac_bytes))


def parse_secureon(text):
    """The 4 or 6 bytes of a SecureOn password.

    6 bytes are written like a MAC address; 4 bytes as aa:bb:cc:dd, aa-bb-cc-dd, aabbccdd or, as
    ether-wake accepts them, dotted decimal (192.168.1.1). Error messages never repeat the value:
    it is a secret.
    """
    value = (text or "").strip()
    if _SIX_BYTES.match(value) or _FOUR_BYTES_HEX.match(value):
        return bytes(bytearray.fromhex(_hex_digits(value)))
    decimal = _FOUR_BYTES_DECIMAL.match(value)
    if decimal and all(int(part) <= 255 for part in decimal.groups()):
        return bytes(bytearray(int(part) for part in decimal.groups()))
    raise ValueError(
        "invalid SecureOn password: expected 6 bytes (aa:bb:cc:dd:ee:ff, aa-bb-cc-dd-ee-ff, "
        "aabbccddeeff) or 4 bytes (aa:bb:cc:dd, aabbccdd, or dotted decimal like 192.168.1.1)"
    )


def build_magic_packet(mac_bytes, password=b""):
    """6 x 0xFF, the MAC 16 times, then the SecureOn password if any: 102, 106 or 108 bytes."""
    mac_bytes = bytes(mac_bytes)
    password = bytes(password or b"")
    if len(mac_bytes) != 6:
        raise ValueError("a MAC address has 6 bytes, got %d" % len(mac_bytes))
    if len(password) not in (0, 4, 6):
        raise ValueError("a SecureOn password has 4 or 6 bytes, got %d" % len(password))
    return SYNC_STREAM + mac_bytes * MAC_REPEAT + password


def send_magic_packet(packet, broadcast, port, interface=None):
    """Send one magic packet (a UDP datagram) to ``broadcast``:``port``, from ``interface`` if set.

    Raises OSError when the network refuses (no route, unknown source address, ...).
    """
    create_socket = getattr(wakeonlan, "create_socket", None)  # wakeonlan >= 4.0
    if create_socket is not None:
        sock = create_socket(host=broadcast, port=port, interface=interface or None)
    else:
        found = socket.getaddrinfo(broadcast, port, 0, socket.SOCK_DGRAM)[0]
        family, address = found[0], found[4]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if interface:
            sock.bind((interface, 0))
        sock.connect(address)
    try:
        sock.send(packet)
    finally:
        sock.close()


def tcp_answers(host, port, timeout):
    """(True, None) when a TCP connection to host:port is accepted within timeout, else (False, why)."""
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except (OSError, socket.timeout) as exc:
        return False, str(exc) or exc.__class__.__name__
    conn.close()
    return True, None


def icmp_answers(ping_path, host, timeout):
    """(True, None) when one ICMP echo to host is answered within timeout (whole seconds), else (False, why)."""
    wait = str(max(1, int(math.ceil(timeout))))
    try:
        proc = subprocess.run(
            [ping_path, "-c", "1", "-W", wait, host],
            check=False,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=float(wait) + 5,
        )
    except subprocess.TimeoutExpired:
        return False, "ping did not return"
    if proc.returncode == 0:
        return True, None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    return False, "ping exited %d%s" % (proc.returncode, (": " + lines[-1]) if lines else "")


class Resender(object):
    """Sends the magic packet again, every ``interval`` seconds, at most ``count`` times.

    A NIC can miss one packet (a switch still learning, a link coming up). Call it between two
    checks that got no answer; it is never called once the machine answered.
    """

    def __init__(self, send, interval, count, clock=time.monotonic):
        self.send = send
        self.interval = interval
        self.left = count if interval > 0 else 0
        self.clock = clock
        self.last = clock()  # the first packet has just gone
        self.sent = 1

    def __call__(self):
        if self.left > 0 and self.clock() - self.last >= self.interval:
            self.send()
            self.last = self.clock()
            self.left -= 1
            self.sent += 1


def wait_until_answers(
    probe,
    timeout,
    delay=0.0,
    sleep=1.0,
    probe_timeout=2.0,
    started=None,
    clock=time.monotonic,
    pause=time.sleep,
    between=None,
):
    """Call ``probe(limit) -> (ok, why)`` until ok or ``timeout`` seconds after ``started``.

    The first probe comes ``delay`` seconds after ``started``, then one every ``sleep`` seconds;
    each may take ``probe_timeout`` seconds, cut to what is left (at least 0.1 s, so that the
    last check may happen at the deadline itself). ``between()``, if given, runs after each
    probe that got no answer (a :class:`Resender`), never after one that did.
    Returns ``(answered, seconds since started, last reason)``.
    """
    started = clock() if started is None else started
    deadline = started + timeout
    if delay > 0:
        pause(max(0.0, min(started + delay, deadline) - clock()))
    while True:
        ok, why = probe(max(0.1, min(probe_timeout, deadline - clock())))
        if ok:
            return True, clock() - started, None
        remaining = deadline - clock()
        if remaining <= 0:
            return False, clock() - started, why
        if between is not None:
            between()
        pause(min(sleep, remaining))
