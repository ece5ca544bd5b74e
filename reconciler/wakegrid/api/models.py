"""What the API answers: every response of ``/api`` is one of these (the OpenAPI document shows them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from wakegrid.observe.discovered import Discovered, Discovery, DiscoverySource

__all__ = [
    "ActionAccepted",
    "ActionEvent",
    "ActionSummary",
    "ActionView",
    "BackendStatus",
    "BootEntry",
    "ChainNode",
    "DecisionEntry",
    "DecisionPage",
    "Discovered",
    "Discovery",
    "DiscoverySource",
    "History",
    "NodeView",
    "Pin",
    "ProblemDetail",
    "Reloaded",
    "ServiceStatus",
    "Stats",
    "StopRequest",
    "WakeEntry",
    "WakeLayer",
    "WakeProgress",
]

Reading = Literal["up", "down", "unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class BackendStatus(_Model):
    index: int
    site: str | None
    node: str | None
    url: str
    health: Reading
    detail: str


class ChainNode(_Model):
    """One node a service's backend needs, hosts first (machine → guest → container)."""

    node: str
    kind: str
    power: Reading
    detail: str


class WakeLayer(_Model):
    key: str
    label: str
    state: str  # up | asleep | unknown | starting | failed | waiting
    detail: str


class WakeProgress(_Model):
    """The wake the request path is following for a service (a visitor or an API client asked)."""

    state: Literal["waking", "ready", "failed"]
    requested_at: datetime
    elapsed_seconds: float
    error: str | None
    layers: list[WakeLayer]


class ServiceStatus(_Model):
    name: str
    domain: str
    policy: str  # always_on | scheduled | on_demand
    wanted: bool | None  # None: no round has decided yet
    why: str
    backends: list[BackendStatus]
    chain: list[ChainNode]
    in_flight: int | None  # None: Caddy's metrics could not be read
    last_activity: datetime | None
    wake: WakeProgress | None
    pinned: bool


class NodeView(_Model):
    name: str
    kind: str
    site: str | None
    parent: str | None
    children: list[str]
    depends_on: list[str]
    dependants: list[str]
    power: Reading
    power_detail: str
    channel: str  # what starts and stops it
    pinned: bool
    depth: int  # 0 for a machine, 1 for its guests, …


class ActionAccepted(_Model):
    action_id: int
    kind: str
    target: str
    follow: str  # the URL that follows it


class ActionEvent(_Model):
    at: datetime
    kind: str
    data: dict[str, Any]


class ActionSummary(_Model):
    id: int
    kind: str  # start | stop | routes | wake
    target: str | None
    state: str  # planned | running | done | failed | interrupted
    reason: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ActionView(ActionSummary):
    events: list[ActionEvent]


class StopRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    confirm: list[str] | None = Field(
        None, description="the proposed (confirm_shutdown) dependencies to stop too; [] for none; absent: ask first"
    )
    include_dependants: bool = False


class Stats(_Model):
    nodes_up: int
    nodes_total: int
    wakes_today: int
    mean_wake_seconds_today: float | None
    errors_today: int  # failed actions and failed wakes since midnight UTC


class Reloaded(_Model):
    reloaded: bool
    services: int
    nodes: int


class DecisionEntry(_Model):
    id: int
    at: datetime
    subject: str
    verdict: str
    reason: str


class DecisionPage(_Model):
    items: list[DecisionEntry]
    limit: int
    offset: int
    next_offset: int | None  # None: this is the last page


class WakeEntry(_Model):
    id: int
    service: str
    requested_at: datetime
    finished_at: datetime
    ok: bool
    seconds: float
    requests: int


class BootEntry(_Model):
    id: int
    node: str
    started_at: datetime
    up_at: datetime
    seconds: float


class History(_Model):
    wakes: list[WakeEntry]
    boots: list[BootEntry]
    actions: list[ActionSummary]
    limit: int
    offset: int


class Pin(_Model):
    kind: Literal["node", "service"]
    name: str
    pinned_at: datetime


class ProblemDetail(BaseModel):
    """RFC 9457 problem details: every error of the API."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
