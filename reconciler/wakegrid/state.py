"""What the reconciler knows at one moment: the observed world and the journal's memory (pure data).

The observers (:mod:`wakegrid.observe`) fill an :class:`Observed`; the journal
(:mod:`wakegrid.journal`) gives a :class:`Memory`; :func:`wakegrid.decide.decide` turns
both, with the fleet and the time, into decisions. Every reading is three-valued and
carries its reason: **unknown is not down**.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from wakegrid.observe.power import PowerState

Reading = Literal["up", "down", "unknown"]


@dataclass(frozen=True)
class Health:
    """One backend's HTTP health after hysteresis (``passes``/``fails`` of the service's ``health``)."""

    state: Reading
    detail: str  # "200 in 12 ms", "timed out after 1.0 s (2 of 2 fails)", "node asleep: not probed"


@dataclass(frozen=True)
class Tunnel:
    """A site's WireGuard peer on the hub: ``down`` when its latest handshake is stale."""

    state: Reading
    detail: str  # "handshake 42 s ago", "no handshake for 212 s (stale after 180 s)", "wg show failed: …"


@dataclass(frozen=True)
class Activity:
    """A service's use, seen on the edge (and reported through the API)."""

    in_flight: int | None  # requests open now (WebSockets and streams included); None: could not read
    last_request: datetime | None  # the last request that counts (monitoring excluded), aware UTC
    detail: str  # "2 requests in flight", "Caddy metrics unreadable: …"


@dataclass(frozen=True)
class Observed:
    """One observation round. Keys are fleet names; a missing key means "not observed" (unknown)."""

    at: datetime  # aware, UTC
    power: Mapping[str, PowerState] = field(default_factory=dict)  # node → power
    health: Mapping[tuple[str, int], Health] = field(default_factory=dict)  # (service, backend index) → health
    tunnels: Mapping[str, Tunnel] = field(default_factory=dict)  # site → its WireGuard peer on the hub
    activity: Mapping[str, Activity] = field(default_factory=dict)  # service → activity


@dataclass(frozen=True)
class WakeRequest:
    """Somebody asked for a service: a request through the edge, the API, a person."""

    service: str
    at: datetime
    client: str | None  # the client's address, when a request caused it
    reason: str  # "request from 10.231.9.5", "POST /api/wake by admin"


@dataclass(frozen=True)
class Backoff:
    """A node whose starts failed: not tried again before ``until``."""

    failures: int
    until: datetime
    last_error: str


@dataclass(frozen=True)
class Booting:
    """A node a journaled step started (a magic packet sent, a guest start requested) and not yet seen up."""

    since: datetime
    step: str  # "Wake-on-LAN magic packet sent from gw-dijon"


@dataclass(frozen=True)
class Memory:
    """What the journal remembers that decisions depend on."""

    started_at: datetime  # when this daemon process started: no idle timer runs from before it
    wake_requests: Mapping[str, WakeRequest] = field(default_factory=dict)  # service → latest pending wake
    woken_at: Mapping[str, datetime] = field(default_factory=dict)  # service → when its last wake finished
    last_activity: Mapping[str, datetime] = field(default_factory=dict)  # service → last activity journaled
    backoff: Mapping[str, Backoff] = field(default_factory=dict)  # node → start backoff
    booting: Mapping[str, Booting] = field(default_factory=dict)  # node → started, not yet up
    running: Mapping[str, str] = field(default_factory=dict)  # node → the action running on it ("start #12")
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # service → sites left out of its pool
