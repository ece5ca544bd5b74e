# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Helpers shared by the wakegrid.fleet WireGuard modules.

All but the last section are pure: they take and return text and values, so parsing and
editing are unit-testable without root. The last section (Host, read_text, write_private) is
the thin I/O both modules share. Standard library only
(modules run on targets) and Python 3.8 compatible.

Two formats are handled:

* ``wg show <if> dump``: tab separated; the first line describes the interface
  (private key, public key, listen port, fwmark), each further line one peer (public key,
  preshared key, endpoint, allowed ips, latest handshake, rx, tx, persistent keepalive).
  The interface private key is dropped while parsing, so it can never reach a result.
* the wg-quick configuration file (``/etc/wireguard/<if>.conf``): INI-like, repeated
  ``[Peer]`` sections, repeated keys, ``#`` comments. It is edited line by line so that an
  untouched section comes back byte for byte, with its comments: a peer written by a human,
  or by another run managing another peer, is never rewritten.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import binascii
import ipaddress
import json
import os
import re
import shlex
import tempfile

MARKER_PREFIX = "# wakegrid:"
REDACTED = "<redacted>"

# Keys understood by `wg setconf`; everything else in a wg-quick file (Address, MTU, PostUp,
# DNS, Table, ...) is for wg-quick only and must be stripped before handing the file to `wg`.
WG_INTERFACE_KEYS = ("privatekey", "listenport", "fwmark")
WG_PEER_KEYS = ("publickey", "presharedkey", "allowedips", "endpoint", "persistentkeepalive")
SECRET_KEYS = ("privatekey", "presharedkey")

_SECTION_RE = re.compile(r"^\s*\[\s*([A-Za-z]+)\s*\]\s*(#.*)?$")
_KEY_VALUE_RE = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")


class WireGuardError(ValueError):
    """Input that cannot be parsed or a value WireGuard would reject."""


# ----------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------


def is_valid_key(value):
    """True for a base64 Curve25519 key as `wg` prints them (44 characters, 32 bytes)."""
    if not isinstance(value, str) or len(value) != 44:
        return False
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    # canonical only (unused trailing bits zero), as `wg` requires: re-encoding must give it back
    return len(raw) == 32 and base64.b64encode(raw).decode("ascii") == value


def split_list(value):
    """'a, b,c' -> ['a', 'b', 'c'] (wg-quick lists are comma separated)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def normalize_network(value):
    """An allowed IP or address as WireGuard stores it: host bits masked, prefix explicit."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise WireGuardError("invalid IP network %r" % value)


def normalize_networks(values):
    """Sorted, de-duplicated canonical networks: order does not matter to WireGuard."""
    return sorted(set(normalize_network(v) for v in values), key=_network_sort_key)


def _network_sort_key(value):
    net = ipaddress.ip_network(value)
    return (net.version, net.network_address, net.prefixlen)


def normalize_interface_address(value):
    """An interface address keeps its host part: '10.0.0.1/24' stays, '10.0.0.1' -> /32."""
    try:
        return str(ipaddress.ip_interface(value.strip()))
    except ValueError:
        raise WireGuardError("invalid interface address %r (expected CIDR, e.g. 10.200.0.1/24)" % value)


def normalize_interface_addresses(values):
    """Sorted, de-duplicated canonical interface addresses (IPv4 first)."""
    return sorted(set(normalize_interface_address(v) for v in values), key=_interface_sort_key)


def _interface_sort_key(value):
    iface = ipaddress.ip_interface(value)
    return (iface.version, iface.ip, iface.network.prefixlen)


def parse_endpoint(value):
    """'host:port', '1.2.3.4:51820' or '[::1]:51820' -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise WireGuardError("invalid endpoint %r (expected [IPv6]:port)" % value)
        port = rest[1:]
    else:
        host, sep, port = value.rpartition(":")
        if not sep or not host or ":" in host:
            raise WireGuardError("invalid endpoint %r (expected host:port or [IPv6]:port)" % value)
    try:
        port = int(port)
    except ValueError:
        raise WireGuardError("invalid endpoint port in %r" % value)
    if not 0 < port < 65536:
        raise WireGuardError("endpoint port out of range in %r" % value)
    return host, port


def format_endpoint(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


# ----------------------------------------------------------------------------------------
# `wg show <if> dump`
# ----------------------------------------------------------------------------------------


class InterfaceState:
    """Live interface as `wg` reports it. The private key is deliberately not kept."""

    def __init__(self, public_key, listen_port, fwmark):
        self.public_key = public_key
        self.listen_port = listen_port
        self.fwmark = fwmark


class PeerState:
    """Live peer. `preshared_key` is kept only to compare; callers must never return it."""

    def __init__(self, public_key, preshared_key, endpoint, allowed_ips, latest_handshake,
                 rx_bytes, tx_bytes, persistent_keepalive):
        self.public_key = public_key
        self.preshared_key = preshared_key
        self.endpoint = endpoint
        self.allowed_ips = allowed_ips
        self.latest_handshake = latest_handshake
        self.rx_bytes = rx_bytes
        self.tx_bytes = tx_bytes
        self.persistent_keepalive = persistent_keepalive


def _none(value):
    return None if value in ("(none)", "") else value


def parse_dump(text):
    """Parse `wg show <if> dump` -> (InterfaceState, {public_key: PeerState}), peers in order."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise WireGuardError("empty `wg show dump` output")
    fields = lines[0].split("\t")
    if len(fields) != 4:
        raise WireGuardError("unexpected interface line in `wg show dump` (%d fields)" % len(fields))
    # fields[0] is the private key: never stored
    interface = InterfaceState(
        public_key=_none(fields[1]),
        listen_port=int(fields[2]) if fields[2].isdigit() else None,
        fwmark=None if fields[3] == "off" else fields[3],
    )
    peers = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 8:
            raise WireGuardError("unexpected peer line %d in `wg show dump` (%d fields)" % (number, len(fields)))
        allowed = _none(fields[3])
        peers[fields[0]] = PeerState(
            public_key=fields[0],
            preshared_key=_none(fields[1]),
            endpoint=_none(fields[2]),
            allowed_ips=normalize_networks(split_list(allowed)) if allowed else [],
            latest_handshake=int(fields[4]),
            rx_bytes=int(fields[5]),
            tx_bytes=int(fields[6]),
            persistent_keepalive=0 if fields[7] == "off" else int(fields[7]),
        )
    return interface, peers


# ----------------------------------------------------------------------------------------
# wg-quick configuration file
# ----------------------------------------------------------------------------------------


class Section:
    """One ``[Name]`` section: its raw header line and the raw lines that follow it."""

    def __init__(self, name, header=None, lines=None):
        self.name = name
        self.header = header if header is not None else "[%s]" % name
        self.lines = list(lines or [])

    @property
    def kind(self):
        return self.name.lower()

    def values(self, key):
        """Every value of `key` (case-insensitive, as `wg` reads keys), in file order."""
        found = []
        for line in self.lines:
            match = _KEY_VALUE_RE.match(_strip_comment(line))
            if match and match.group(1).lower() == key.lower():
                found.append(match.group(2))
        return found

    def get(self, key):
        found = self.values(key)
        return found[-1] if found else None

    def set(self, key, values):
        """Give `key` exactly `values` (a list; empty removes it). The first existing line of
        the key keeps its place, so a hand-ordered section stays in its order."""
        new_lines = ["%s = %s" % (key, value) for value in values]
        out, placed = [], False
        for line in self.lines:
            match = _KEY_VALUE_RE.match(_strip_comment(line))
            if match and match.group(1).lower() == key.lower():
                if not placed:
                    out.extend(new_lines)
                    placed = True
                continue
            out.append(line)
        if not placed and new_lines:
            # after the last key line: trailing comments/blank lines stay the section's tail
            last = max([i for i, line in enumerate(out) if _KEY_VALUE_RE.match(_strip_comment(line))] or [-1])
            out[last + 1:last + 1] = new_lines
        self.lines = out

    @property
    def marker(self):
        """The name after '# wakegrid:' in this section, or None for an unmanaged section."""
        for line in self.lines:
            stripped = line.strip()
            if stripped.startswith(MARKER_PREFIX):
                return stripped[len(MARKER_PREFIX):].strip() or None
        return None

    def render(self):
        return "\n".join([self.header] + self.lines)


def _strip_comment(line):
    return line.split("#", 1)[0]


class WgConfig:
    """A parsed wg-quick file: lines before the first section, then the sections in order."""

    def __init__(self, preamble=None, sections=None):
        self.preamble = list(preamble or [])
        self.sections = list(sections or [])

    @property
    def interface(self):
        for section in self.sections:
            if section.kind == "interface":
                return section
        return None

    def ensure_interface(self):
        section = self.interface
        if section is None:
            section = Section("Interface")
            self.sections.insert(0, section)
        return section

    @property
    def peers(self):
        return [s for s in self.sections if s.kind == "peer"]


def parse_config(text):
    """Parse wg-quick text. Lossless: render_config(parse_config(t)) == t for any t."""
    config = WgConfig()
    if text == "":
        return config
    current = None
    lines = text.split("\n")
    # a final newline yields a last empty string; render_config joins with "\n" and restores it
    for line in lines:
        match = _SECTION_RE.match(line)
        if match:
            current = Section(match.group(1), header=line)
            config.sections.append(current)
        elif current is None:
            config.preamble.append(line)
        else:
            current.lines.append(line)
    return config


def render_config(config):
    parts = list(config.preamble)
    for section in config.sections:
        parts.append(section.header)
        parts.extend(section.lines)
    return "\n".join(parts)


def _ensure_trailing_newline(text):
    return text if text.endswith("\n") else text + "\n"


def redact(text):
    """The file with PrivateKey/PresharedKey values masked: safe for diffs and errors."""
    out = []
    for line in text.split("\n"):
        match = _KEY_VALUE_RE.match(_strip_comment(line))
        if match and match.group(1).lower() in SECRET_KEYS:
            line = "%s = %s" % (match.group(1), REDACTED)
        out.append(line)
    return "\n".join(out)


def strip_config(config):
    """What `wg setconf`/`wg addconf` accept (like `wg-quick strip`): wg-native keys only."""
    out = []
    for section in config.sections:
        allowed = WG_INTERFACE_KEYS if section.kind == "interface" else WG_PEER_KEYS
        out.append("[%s]" % ("Interface" if section.kind == "interface" else "Peer"))
        for line in section.lines:
            match = _KEY_VALUE_RE.match(_strip_comment(line))
            if match and match.group(1).lower() in allowed:
                out.append("%s = %s" % (match.group(1), match.group(2)))
    return "\n".join(out) + "\n"


def config_addresses(config):
    """Interface addresses listed in the file (Address may be repeated or comma separated)."""
    section = config.interface
    if section is None:
        return []
    return [a for value in section.values("Address") for a in split_list(value)]


# ----------------------------------------------------------------------------------------
# Peer sections
# ----------------------------------------------------------------------------------------


def render_peer_section(name, public_key, allowed_ips, endpoint=None, persistent_keepalive=0,
                        preshared_key=None):
    """The [Peer] section a managed peer gets. The marker names it for later runs."""
    lines = ["%s %s" % (MARKER_PREFIX, name), "PublicKey = %s" % public_key]
    if preshared_key:
        lines.append("PresharedKey = %s" % preshared_key)
    if allowed_ips:
        lines.append("AllowedIPs = %s" % ", ".join(allowed_ips))
    if endpoint:
        lines.append("Endpoint = %s" % endpoint)
    if persistent_keepalive:
        lines.append("PersistentKeepalive = %d" % persistent_keepalive)
    return Section("Peer", lines=lines + [""])


def find_peer_sections(config, name=None, public_key=None):
    """Indexes (into config.sections) of [Peer] sections carrying marker `name`, or whose
    PublicKey is `public_key`: both identify the same managed peer (a renamed key or an
    adopted hand-written section)."""
    found = []
    for index, section in enumerate(config.sections):
        if section.kind != "peer":
            continue
        if (name is not None and section.marker == name) or (
                public_key is not None and section.get("PublicKey") == public_key):
            found.append(index)
    return found


def upsert_peer(config, section, name, public_key):
    """Put `section` in place of the peer's existing section(s), else append it.

    Returns the public keys of the sections it replaced whose key differs from `public_key`
    (a rotated key): the caller removes those peers from the live interface too.
    Sections of other peers, managed or not, are left exactly as they were, and so are the
    comments that introduce the next section (they sit at the end of the replaced one).
    """
    indexes = find_peer_sections(config, name=name, public_key=public_key)
    replaced_keys = []
    for index in indexes:
        old_key = config.sections[index].get("PublicKey")
        if old_key and old_key != public_key:
            replaced_keys.append(old_key)
    if indexes:
        first = indexes[0]
        tail = _split_tail(config.sections[first])[1]
        for index in reversed(indexes[1:]):
            _drop_section(config, index)
        body = _split_tail(section)[0]
        config.sections[first] = Section(section.name, section.header, body + (tail or [""]))
    else:
        _separate_from_previous(config)
        config.sections.append(section)
    return replaced_keys


def managed_peers(config):
    """The peers this collection manages in the file (sections with a marker), in file order:
    [{'name', 'public_key', 'allowed_ips'}]. Hand-written sections are not listed."""
    found = []
    for section in config.peers:
        if section.marker is None:
            continue
        allowed = [a for value in section.values("AllowedIPs") for a in split_list(value)]
        found.append({"name": section.marker, "public_key": section.get("PublicKey"),
                      "allowed_ips": normalize_networks(allowed)})
    return found


def remove_peer(config, name=None, public_key=None):
    """Drop the peer's section(s); returns the public keys they held."""
    indexes = find_peer_sections(config, name=name, public_key=public_key)
    keys = [config.sections[i].get("PublicKey") for i in indexes]
    for index in reversed(indexes):
        _drop_section(config, index)
    return [k for k in keys if k]


def _split_tail(section):
    """(body, tail): the tail is the run of blank and comment lines after the last key line,
    which in a hand-written file introduces the next section rather than ending this one."""
    lines = section.lines
    end = len(lines)
    while end > 0 and (lines[end - 1].strip() == "" or
                       (lines[end - 1].lstrip().startswith("#") and not lines[end - 1].strip().startswith(MARKER_PREFIX))):
        end -= 1
    return lines[:end], lines[end:]


def _drop_section(config, index):
    """Delete a section, handing the comments of its tail to whatever precedes it."""
    tail = _split_tail(config.sections[index])[1]
    del config.sections[index]
    if any(line.strip() for line in tail):
        previous = config.sections[index - 1].lines if index > 0 else config.preamble
        while tail and previous and previous[-1].strip() == "" and tail[0].strip() == "":
            tail = tail[1:]  # one blank line between sections is enough
        previous.extend(tail)


def _separate_from_previous(config):
    """Leave one blank line between the previous last section and an appended one."""
    if not config.sections:
        return
    lines = config.sections[-1].lines
    while lines and lines[-1].strip() == "":
        lines.pop()
    lines.append("")


def public_view(peer):
    """Settings safe to show (diff, return values): the preshared key becomes a flag."""
    if peer is None:
        return None
    view = dict((k, v) for k, v in peer.items() if k != "preshared_key")
    view["preshared_key"] = "set" if peer.get("preshared_key") else "none"
    return view


def format_view(view):
    """Stable YAML-like text of a settings dict, for --diff."""
    if view is None:
        return ""
    out = []
    for key in sorted(view):
        value = view[key]
        if isinstance(value, list):
            value = "[" + ", ".join(str(v) for v in value) + "]"
        elif value is None:
            value = "null"
        out.append("%s: %s" % (key, value))
    return "\n".join(out) + "\n"


def interface_section_update(config, addresses, listen_port, mtu, private_key_path):
    """Set the keys wireguard_interface owns in [Interface]; keep any other key (DNS, Table,
    other PostUp lines) as the operator wrote it. A None value keeps what the file says.
    The private key is referenced by path, never copied into the file."""
    section = config.ensure_interface()
    section.set("PrivateKey", [])
    if addresses is not None:
        section.set("Address", [", ".join(addresses)] if addresses else [])
    if listen_port is not None:
        section.set("ListenPort", [str(listen_port)])
    if mtu is not None:
        section.set("MTU", [str(mtu)])
    post_up = [v for v in section.values("PostUp") if not _is_private_key_postup(v) and v != HANDSHAKE_POSTUP]
    section.set("PostUp", [private_key_postup(private_key_path), HANDSHAKE_POSTUP] + post_up)
    if section is not config.sections[-1] and (not section.lines or section.lines[-1].strip()):
        section.lines.append("")
    return config


def _is_private_key_postup(value):
    return value.startswith("wg set %i private-key ")


def private_key_postup(private_key_path):
    return "wg set %%i private-key %s" % shlex.quote(private_key_path)


# `wg-quick up` raises the link before its PostUp hooks run, so the first handshake initiation
# (sent when the link comes up, for peers with a persistent keepalive) fails for want of a
# private key, and WireGuard holds the next one back for its 5 s REKEY_TIMEOUT. Turning each
# such peer's keepalive off and on again, once the key is set, sends one at once (a keepalive
# turned on sends immediately; setting the key resets the hold-back). It never fails wg-quick:
# the tunnel would come up later without it, not never. No '#': wg-quick cuts lines there.
HANDSHAKE_POSTUP = (
    'wg show %i persistent-keepalive | while read -r peer every; do [ "$every" = off ] || '
    '{ wg set %i peer "$peer" persistent-keepalive 0 && wg set %i peer "$peer" persistent-keepalive "$every"; }; '
    'done || true'
)


def new_config_text(config):
    return _ensure_trailing_newline(render_config(config).rstrip("\n"))


# ----------------------------------------------------------------------------------------
# Thin I/O shared by the modules (everything above is pure). Takes the AnsibleModule so that
# commands go through run_command and failures through fail_json.
# ----------------------------------------------------------------------------------------


class Host:
    """The `wg` and `ip` commands the modules run, with errors turned into clear failures."""

    def __init__(self, module):
        self.module = module
        self.wg = module.get_bin_path("wg", required=True)
        self.ip = module.get_bin_path("ip", required=True)

    def run(self, args, what, data=None, check=True):
        # binary_data: send `data` as is; run_command would otherwise append a newline
        rc, out, err = self.module.run_command(args, data=data, binary_data=data is not None)
        if check and rc != 0:
            self.module.fail_json(msg="%s failed (rc=%d): %s" % (what, rc, (err or out).strip()), rc=rc)
        return rc, out, err

    def link(self, name):
        """`ip -d -j link show` of the interface in this network namespace, or None.

        Asked of `ip`, not `wg`: wireguard-go's control sockets live in /var/run/wireguard,
        shared by all network namespaces, so `wg show` may answer for another namespace."""
        rc, out, dummy = self.run([self.ip, "-d", "-j", "link", "show", "dev", name], "ip link show", check=False)
        if rc != 0:
            return None
        links = json.loads(out)
        return links[0] if links else None

    def addresses(self, name):
        dummy, out, dummy2 = self.run([self.ip, "-j", "address", "show", "dev", name], "ip address show")
        found = []
        for link in json.loads(out):
            for info in link.get("addr_info", []):
                if info.get("scope") == "link":
                    continue  # kernel-made IPv6 link-local: not ours to manage
                found.append("%s/%s" % (info["local"], info["prefixlen"]))
        return normalize_interface_addresses(found)

    def dump(self, name):
        """(InterfaceState, peers) of a live interface; WireGuardError if unparsable."""
        dummy, out, dummy2 = self.run([self.wg, "show", name, "dump"], "wg show %s dump" % name)
        return parse_dump(out)


def link_implementation(link):
    """'kernel' or 'userspace' from `ip -d -j link show` (wireguard-go runs on a tun device)."""
    kind = (link.get("linkinfo") or {}).get("info_kind")
    if kind == "wireguard":
        return "kernel"
    if kind == "tun":
        return "userspace"
    return kind or "unknown"


def read_text(path):
    """A file's text, or None if it does not exist."""
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return handle.read()


def write_private(path, text):
    """Atomic write of a file only its owner may read: created 0600 and renamed into place, so
    no reader ever sees a partial file or a moment of looser permissions."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s." % os.path.basename(path))
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
