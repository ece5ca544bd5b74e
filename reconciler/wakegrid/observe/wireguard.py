"""Each site's WireGuard tunnel, as the hub on the edge sees it: the latest handshake of its peer.

The edge is the hub; every site's gateway is a peer of it. ``wg show wg0 dump`` on the edge
prints the interface on its first line and one line per peer (tab-separated, as
wireguard-tools' ``dump_print`` writes them in src/show.c)::

    private-key  public-key  listen-port  fwmark
    public-key  preshared-key  endpoint  allowed-ips  latest-handshake  transfer-rx  transfer-tx  persistent-keepalive

``latest-handshake`` is in seconds since the epoch, ``0`` when there was none. A site's
peer is the one whose allowed IPs contain the site's WireGuard address (the most specific
one when several do). The site's tunnel is:

- ``up`` when that peer's handshake is at most ``stale_after`` seconds old (a live session
  renews it every two minutes; spokes keep it alive with persistent keepalives);
- ``down`` when it is older, when there was none, or when the hub has no such peer: the
  site is out of reach for routing decisions;
- ``unknown`` when the dump could not be read or parsed (the reason says why): **unknown
  is not down**.

The dump's first line holds the interface's private key and peer lines a preshared key:
neither is kept, and no error message quotes a line of the dump.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from wakegrid.model import Fleet
from wakegrid.observe.power import PowerState
from wakegrid.state import Tunnel

DEFAULT_COMMAND = ("wg", "show", "wg0", "dump")
DEFAULT_TIMEOUT = 5.0
DEFAULT_STALE_AFTER = 180.0  # a live session renews its handshake every 120 s (REKEY_AFTER_TIME)
_MAX_OUTPUT = 4 * 1024 * 1024  # ~20,000 peers; anything longer is not the dump of one interface
_KEY = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")  # base64 of 32 bytes
_INTERFACE_FIELDS = 4
_PEER_FIELDS = 8

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WireGuardError(Exception):
    """The dump could not be read or does not look like ``wg show <interface> dump`` (safe to print)."""


@dataclass(frozen=True)
class Peer:
    """One peer of the hub's interface (no key material but its public key)."""

    public_key: str
    allowed_ips: tuple[Network, ...]
    latest_handshake: int  # seconds since the epoch; 0: never


def parse_dump(text: str) -> list[Peer]:
    """The peers of ``wg show <interface> dump`` output; :class:`WireGuardError` when it is not that."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise WireGuardError("empty output: no interface line")
    interface = lines[0].split("\t")
    if len(interface) != _INTERFACE_FIELDS:
        raise WireGuardError(
            f"line 1: expected the interface line ({_INTERFACE_FIELDS} tab-separated fields), found "
            f"{len(interface)} field(s) (wg show all dump, or another tool's format?)"
        )
    if not interface[2].isdigit() or not (interface[3] == "off" or re.fullmatch(r"0x[0-9a-f]+", interface[3])):
        raise WireGuardError("line 1: listen-port or fwmark is not what wg prints")
    return [_peer(number, line) for number, line in enumerate(lines[1:], start=2)]


def _peer(number: int, line: str) -> Peer:
    fields = line.split("\t")
    if len(fields) != _PEER_FIELDS:
        raise WireGuardError(f"line {number}: expected {_PEER_FIELDS} tab-separated fields, found {len(fields)}")
    public_key, _preshared, _endpoint, allowed, handshake, received, sent, keepalive = fields
    if not _KEY.match(public_key):
        raise WireGuardError(f"line {number}: the peer's public key is not a WireGuard key")
    for name, value in (("latest-handshake", handshake), ("transfer-rx", received), ("transfer-tx", sent)):
        if not value.isdigit():
            raise WireGuardError(f"line {number}: {name} is not a number")
    if keepalive != "off" and not keepalive.isdigit():
        raise WireGuardError(f"line {number}: persistent-keepalive is neither a number nor 'off'")
    networks: list[Network] = []
    if allowed != "(none)":
        for item in allowed.split(","):
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise WireGuardError(f"line {number}: an allowed IP is not an address/prefix") from None
    return Peer(public_key, tuple(networks), int(handshake))


def tunnels(
    fleet: Fleet,
    peers: Sequence[Peer] | BaseException,
    now: datetime,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> dict[str, Tunnel]:
    """Each site's tunnel (fleet order) from the hub's peers, or unknown for all when ``peers`` is an error."""
    if isinstance(peers, BaseException):
        reason = str(peers) or type(peers).__name__
        return {site: Tunnel("unknown", f"wg show failed: {reason}") for site in fleet.sites}
    result: dict[str, Tunnel] = {}
    for name, site in fleet.sites.items():
        address = ipaddress.ip_interface(site.wireguard.address).ip
        candidates = [
            (network.prefixlen, peer)
            for peer in peers
            for network in peer.allowed_ips
            if network.version == address.version and address in network
        ]
        if not candidates:
            result[name] = Tunnel("down", f"no peer on the hub allows {address}")
            continue
        peer = max(candidates, key=lambda candidate: candidate[0])[1]
        result[name] = _tunnel(peer, now, stale_after)
    return result


def _tunnel(peer: Peer, now: datetime, stale_after: float) -> Tunnel:
    if peer.latest_handshake == 0:
        return Tunnel("down", "no handshake since the hub's interface came up")
    age = now.timestamp() - peer.latest_handshake
    if age > stale_after:
        return Tunnel("down", f"no handshake for {age:.0f} s (stale after {stale_after:g} s)")
    if age < 0:
        return Tunnel("up", f"handshake {-age:.0f} s in the future (clocks disagree)")
    return Tunnel("up", f"handshake {age:.0f} s ago")


async def read_dump(command: Sequence[str] = DEFAULT_COMMAND, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run ``command`` (default ``wg show wg0 dump``) and return its output; :class:`WireGuardError` if it fails."""
    if not command:
        raise WireGuardError("no command to run")
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as error:
        raise WireGuardError(f"cannot run {command[0]}: {error.strerror or error}") from None
    try:
        async with asyncio.timeout(timeout):
            output, errors = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise WireGuardError(f"{command[0]} did not finish within {timeout:g} s") from None
    if process.returncode != 0:
        message = errors.decode("utf-8", "replace").strip().splitlines()
        said = f": {message[0][:200]}" if message else ""
        raise WireGuardError(f"{command[0]} exited with status {process.returncode}{said}")
    if len(output) > _MAX_OUTPUT:
        raise WireGuardError(f"{command[0]} printed more than {_MAX_OUTPUT} bytes")
    return output.decode("utf-8", "replace")


async def observe_tunnels(
    fleet: Fleet,
    now: datetime,
    *,
    command: Sequence[str] = DEFAULT_COMMAND,
    timeout: float = DEFAULT_TIMEOUT,
    stale_after: float = DEFAULT_STALE_AFTER,
) -> dict[str, Tunnel]:
    """Read and interpret the dump in one call; never raises for a failed read (the sites are unknown)."""
    peers: list[Peer] | WireGuardError
    try:
        peers = parse_dump(await read_dump(command, timeout))
    except WireGuardError as error:
        peers = error
    return tunnels(fleet, peers, now, stale_after)


def unseen_behind_down_tunnels(
    fleet: Fleet, power: Mapping[str, PowerState], tunnels: Mapping[str, Tunnel]
) -> dict[str, PowerState]:
    """``power`` with every node of a site whose tunnel is down read as unknown instead of down.

    A machine behind a cut tunnel does not answer its probe, exactly as a sleeping one does: from the
    hub, "down" there only means "could not see". Up stays up (it answered), and an unknown tunnel
    changes nothing (the probes themselves say what they saw).
    """
    cut = {site: tunnel.detail for site, tunnel in tunnels.items() if tunnel.state == "down"}
    if not cut:
        return dict(power)
    seen: dict[str, PowerState] = {}
    for name, state in power.items():
        site = fleet.site_of(name) if name in fleet.nodes else None
        if state.power == "down" and site in cut:
            state = PowerState(name, "unknown", f"site {site} unreachable: WireGuard tunnel down ({cut[site]})")
        seen[name] = state
    return seen
