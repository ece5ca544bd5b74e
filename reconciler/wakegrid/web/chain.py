"""What the request path decides without I/O: who may wake a service, who gets a page, what the page shows.

- :func:`wants_page` — a browser (``GET`` that prefers ``text/html``) gets the waiting page;
  anything else (``application/json``, ``curl``'s ``*/*``, a webhook's ``POST``) is held;
- :func:`client_allowed` — the service's ``allow`` list (addresses and CIDRs; empty: everyone);
- :func:`wake_backend` and :func:`chain_layers` — the layers a wake goes through, from the
  fleet: the dependencies of the backend's node (each with its hosts), the node's hosts from the
  machine down, the node, then the application's health. The NAS a Jellyfin LXC depends on
  comes first, as :func:`wakegrid.graph.start_plan` would start it;
- :func:`estimate_seconds` and :func:`estimate_words` — "usually ready in ~38 s", from the
  journal's past wakes of the service, else from the boot times of its chain's nodes.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wakegrid.journal import NodeBoots, ServiceWakes
from wakegrid.model import Backend, Fleet
from wakegrid.state import Tunnel

APPLICATION = "application"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_KIND_WORDS = {"machine": "machine", "vm": "guest (VM)", "lxc": "guest (LXC)", "container": "container"}


@dataclass(frozen=True)
class Layer:
    """One layer of a wake: a node of the chain, or the application's health check (``key`` "application")."""

    key: str
    kind: str  # machine | vm | lxc | container | application
    title: str  # "machine nas", "guest (LXC) jellyfin", "application health (GET /health)"


# --------------------------------------------------------------------------- who gets what


def _media_ranges(accept: str) -> Iterable[tuple[str, float]]:
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0  # a malformed weight accepts nothing rather than everything
                if not 0.0 <= quality <= 1.0 or math.isnan(quality):
                    quality = 0.0
        yield media.lower(), quality


def wants_page(method: str, accept: str | None) -> bool:
    """A browser: a ``GET`` whose ``Accept`` names ``text/html`` (or XHTML) at least as high as JSON.

    ``*/*`` alone (curl, most libraries) is not a browser: it is held and answered by the app.
    """
    if method.upper() != "GET" or not accept:
        return False
    html = json = 0.0
    for media, quality in _media_ranges(accept):
        if media in ("text/html", "application/xhtml+xml"):
            html = max(html, quality)
        elif media in ("application/json", "application/problem+json") or media.endswith("+json"):
            json = max(json, quality)
    return html > 0 and html >= json


def parse_address(text: str | None) -> IPAddress | None:
    """An IP address (IPv4-mapped IPv6 taken as IPv4, a zone index dropped); None when it is not one."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses and CIDRs as networks (``ValueError`` naming the bad entry)."""
    result = []
    for entry in entries:
        try:
            result.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is neither an IP address nor a CIDR") from None
    return tuple(result)


def address_in(address: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    return any(address.version == network.version and address in network for network in allowed)


def client_allowed(allow: Iterable[str], client: IPAddress) -> bool:
    """Whether ``client`` may use (and so wake) a service whose ``allow`` list is ``allow`` (empty: anyone)."""
    allowed = networks(allow)
    return not allowed or address_in(client, allowed)


# --------------------------------------------------------------------------- the chain


def wake_backend(fleet: Fleet, service: str, tunnels: Mapping[str, Tunnel] | None = None) -> Backend:
    """The backend a wake of ``service`` brings up: on the first site of its failover order whose tunnel
    is not down (as the decision core picks it), the first backend on a node; else its first backend."""
    svc = fleet.services[service]
    tunnels = tunnels or {}
    for site in fleet.site_order(svc):
        tunnel = tunnels.get(site)
        if tunnel is not None and tunnel.state == "down":
            continue
        on_site = [b for b in svc.backends if fleet.backend_site(b) == site]
        for backend in on_site:
            if backend.node is not None:
                return backend
        if on_site:
            return on_site[0]
    return next((b for b in svc.backends if b.node is not None), svc.backends[0])


def chain_nodes(fleet: Fleet, node: str) -> list[str]:
    """Every node a start of ``node`` goes through, in start order: dependencies first (deepest first,
    each after its own hosts), then the hosts from the machine down, then ``node``."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order or name in visiting or name not in fleet.nodes:
            return  # a cycle or an unknown name only in a fleet that skipped validation
        visiting.add(name)
        for member in [*fleet.ancestors(name), name]:
            for dependency in fleet.dependencies_of(member):
                visit(dependency)
        for member in [*fleet.ancestors(name), name]:
            if member not in order:
                order.append(member)
        visiting.discard(name)

    visit(node)
    return order


def chain_layers(fleet: Fleet, service: str, tunnels: Mapping[str, Tunnel] | None = None) -> list[Layer]:
    """The layers of a wake of ``service``: its chain's nodes, then the application's health."""
    backend = wake_backend(fleet, service, tunnels)
    layers = []
    if backend.node is not None and backend.node in fleet.nodes:
        for name in chain_nodes(fleet, backend.node):
            kind = fleet.nodes[name].kind
            layers.append(Layer(name, kind, f"{_KIND_WORDS.get(kind, kind)} {name}"))
    health = fleet.services[service].health
    layers.append(Layer(APPLICATION, APPLICATION, f"application health (GET {health.path})"))
    return layers


# --------------------------------------------------------------------------- how long it usually takes


def estimate_seconds(wakes: ServiceWakes | None, boots: Mapping[str, NodeBoots], nodes: Iterable[str]) -> float | None:
    """How long a wake of this chain usually takes: the mean of the service's past successful wakes
    (request to ready); with none, the sum of the mean boot times of its nodes that have booted before;
    None when the journal knows neither."""
    if wakes is not None and wakes.mean_seconds is not None and wakes.mean_seconds >= 0:
        return wakes.mean_seconds
    known = [boots[name].mean_seconds for name in nodes if name in boots]
    return sum(known) if known else None


def duration_words(seconds: float) -> str:
    """``38 s``, ``2 min``, ``1 h 5 min``: rounded for people."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def estimate_words(seconds: float | None) -> str:
    if seconds is None:
        return "first wake of this service: no estimate yet"
    return f"usually ready in ~{duration_words(seconds)}"


def retry_after(estimate: float | None, elapsed: float, *, default: int = 5, cap: int = 60) -> int:
    """Seconds for ``Retry-After``: what the estimate leaves (at least 1 s, at most ``cap``), else ``default``."""
    if estimate is None:
        return default
    remaining = estimate - elapsed
    return max(1, min(cap, math.ceil(remaining))) if remaining > 0 else min(default, cap)
