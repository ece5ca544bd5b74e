"""The reconciler's request path: what the edge hands over when no backend of a sleeping service can answer.

The edge's Caddy proxies such a request here unchanged (method, URI, ``Host``, body) with headers
it sets itself (docs/wake-on-demand.md): ``X-Wakegrid-Service`` (the fleet service),
``X-Wakegrid-Client`` (the client's address as the edge saw it) and ``X-Wakegrid-Error`` (what
Caddy would have answered). Any request carrying ``X-Wakegrid-Service`` takes this path, before the
daemon's own routes; in order:

1. **trust**: the headers count only from a peer in ``edge_addresses``; from anyone else, 403;
2. **allowlist**: a client outside the service's ``allow`` gets 403 and never wakes anything;
3. ``/_wakegrid/…`` is the waiting page's own: its script and its server-sent events;
4. a service seen healthy is **served at once** (Caddy's health checks have not caught up yet);
5. otherwise the request **joins the service's wake** (one per service, however many requests
   come: :class:`WakeDesk`), started with :meth:`Reconciler.request_wake` (journaled: client,
   time, service; the journal times it to ready). A **browser** gets the waiting page, which
   follows the wake's layers live (:class:`Wake`, over server-sent events) and reloads the URL
   it asked for once the service is ready. **Anything else is held** until the service is
   ready, then delivered once to a healthy backend and answered with its real response (streamed
   back, hop-by-hop headers removed) — or 503 + ``Retry-After`` + an RFC 9457 problem after
   ``hold_timeout``. A held request is never replayed: only a backend that refused the
   connection (nothing was sent) is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from wakegrid.daemon.logs import get_logger
from wakegrid.journal import WAKE_REQUEST_TTL, JournalError
from wakegrid.model import Backend
from wakegrid.web.chain import (
    APPLICATION,
    Layer,
    address_in,
    chain_layers,
    client_allowed,
    estimate_seconds,
    estimate_words,
    networks,
    parse_address,
    retry_after,
    wake_backend,
    wants_page,
)

if TYPE_CHECKING:
    from wakegrid.daemon.reconciler import Reconciler

log = get_logger("wake")

RESERVED = "/_wakegrid/"
SERVICE_HEADER = "x-wakegrid-service"
CLIENT_HEADER = "x-wakegrid-client"
ERROR_HEADER = "x-wakegrid-error"
# RFC 9110 §7.6.1: never forwarded, either way (plus what a Connection header names).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"trailers", "transfer-encoding", "upgrade"}
)
PAGE_REFRESH = 3  # seconds: the waiting page's reload without JavaScript
HEARTBEAT = 15.0  # seconds between SSE comments: proxies and browsers see a live stream
FOLLOW_TICK = 1.0  # the wake re-reads the last observation this often between bus events (memory only)
# Once every node of the chain is up, the application's health check is tried this often; a pass asks
# for a round at once, whose health observer makes it official: the wait after the app is up is one
# round, not up to a whole `interval`.
APP_PROBE_INTERVAL = 0.25
# A backend the wake probed healthy itself is trusted this long, while the rounds catch up.
PROVEN_FOR = 30.0
HERE = Path(__file__).resolve().parent
STATIC = {path.name: path for path in (HERE / "static").glob("*.js")}
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8"}
CSP = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:"

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), enable_async=False
)


# --------------------------------------------------------------------------- one wake, as the requests see it


@dataclass
class LayerState:
    layer: Layer
    state: str  # up | asleep | unknown | starting | failed | waiting
    detail: str
    since: float  # epoch seconds: when it entered this state, as seen here
    took: float | None = None  # from its start step to up, in this wake
    started: float | None = None  # epoch of its start step, in this wake

    def to_dict(self) -> dict[str, Any]:
        layer = self.layer
        return {
            "key": layer.key,
            "kind": layer.kind,
            "title": layer.title,
            "state": self.state,
            "detail": self.detail,
            "since": round(self.since, 3),
            "took": None if self.took is None else round(self.took, 1),
        }


@dataclass
class Wake:
    """One wake of one service, shared by every request that joined it; follows the bus, tells its listeners."""

    desk: WakeDesk
    service: str
    layers: list[LayerState]
    backend: Backend
    estimate: float | None
    requested_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    error: str | None = None  # a failed step, in words (the reconciler may still retry: not the end)
    message: str = "wake requested"
    requests: int = 1  # requests that joined it (the first included)
    pages: int = 0  # waiting pages served for it
    held: int = 0  # API requests waiting on it now
    listeners: int = 0  # waiting pages following it now (server-sent events)
    version: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task | None = None
    _probed: float = 0.0  # monotonic time of the last probe of the application

    @property
    def active(self) -> bool:
        """Joinable: not ready, and younger than the journal keeps a wake request pending."""
        age = time.monotonic() - self.started_monotonic
        return not self.ready.is_set() and age < WAKE_REQUEST_TTL.total_seconds()

    def elapsed(self) -> float:
        return time.monotonic() - self.started_monotonic

    def changed(self) -> asyncio.Event:
        """Set at the next change (take it before reading the state)."""
        return self._changed

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def snapshot(self) -> dict[str, Any]:
        state = "ready" if self.ready.is_set() else "failed" if self.error else "waking"
        return {
            "service": self.service,
            "state": state,
            "error": self.error,
            "message": self.message,
            "started": round(self.started, 3),
            "now": round(time.time(), 3),
            "elapsed": round(self.elapsed(), 1),
            "estimate": None if self.estimate is None else round(self.estimate, 1),
            "estimate_words": estimate_words(self.estimate),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    # ---- following the wake

    def follow(self, subscription) -> None:
        self._task = asyncio.ensure_future(self._follow(subscription))

    async def _follow(self, subscription) -> None:
        try:
            self.refresh()
            async with subscription:
                events = subscription.__aiter__()
                while not self.ready.is_set() and self.active:
                    tick = APP_PROBE_INTERVAL if self._app_starting() else FOLLOW_TICK
                    try:
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                        async with asyncio.timeout(tick):
                            event = await events.__anext__()
                    except TimeoutError:
                        self.refresh()
                        await self._probe_application()
                        continue
                    except StopAsyncIteration:
                        return
                    self.apply(event)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the held requests down with it: they time out
            log.exception("following a wake failed", extra={"fields": {"service": self.service}})

    def _app_starting(self) -> bool:
        app = self._layer(APPLICATION)
        return app is not None and app.state == "starting"

    async def _probe_application(self) -> None:
        """Every node is up and the app's health check still fails: try it now. When it passes, the
        waiting requests go to that backend at once, and a round follows for everything else (pools,
        the journal): waiting for the round's own health observer would add a whole round to the wake."""
        if not self._app_starting() or time.monotonic() - self._probed < APP_PROBE_INTERVAL:
            return
        if not (self.held or self.listeners):
            return  # nobody waits now: the scheduled rounds are soon enough
        self._probed = time.monotonic()
        reconciler = self.desk.reconciler
        fleet = reconciler.fleet
        svc = fleet.services.get(self.service)
        address = fleet.backend_address(self.backend)
        if svc is None or address is None:
            return
        host = f"[{address}]" if ":" in address else address
        try:
            response = await self.desk.client.get(
                f"http://{host}:{self.backend.port}{svc.health.path}", timeout=svc.health.timeout
            )
        except httpx.HTTPError:
            return
        if response.status_code == svc.health.status:
            index = next((i for i, b in enumerate(svc.backends) if b == self.backend), 0)
            self.desk.proven[self.service] = (time.monotonic(), index, self.backend)
            reconciler.kick()
            self.mark_ready()

    def _layer(self, key: str | None) -> LayerState | None:
        return next((layer for layer in self.layers if layer.layer.key == key), None)

    def apply(self, event: dict[str, Any]) -> None:
        """One bus event: a power change, a step of a start, its failure, a decision, ``ready``.

        An event names all its topics (``action:12``, ``node:jellyfin``, ``node:pve1``…): what it is
        about is in its fields (``node`` for a step, the topic for a power change).
        """
        kind = event.get("kind")
        topics = event.get("topics") or [event.get("topic", "")]
        now = time.time()
        changed = False
        if kind == "ready" and f"service:{self.service}" in topics:
            self.mark_ready()
            return
        if "decision" in topics:
            # What the reconciler decided about this service or a node of its chain, in its words.
            subject, reason = event.get("subject", ""), str(event.get("reason", ""))
            chain = {f"node {layer.layer.key}" for layer in self.layers}
            if subject == f"service {self.service}":
                self.message, changed = reason, True
            elif subject in chain and event.get("verdict") in ("start", "wait"):
                self.message, changed = f"{subject.removeprefix('node ')}: {reason}", True
        elif kind == "power":
            for topic in topics:
                layer = self._layer(topic.removeprefix("node:")) if topic.startswith("node:") else None
                if layer is not None:
                    changed |= self._set_power(layer, event.get("power", "unknown"), event.get("detail", ""), now)
        elif event.get("operation") == "start":  # the actuator's run waking (part of) the chain
            layer = self._layer(event.get("node"))
            if kind == "step_started" and layer is not None:
                layer.state, layer.since, layer.started = "starting", now, now
                layer.detail = str(event.get("line") or event.get("title") or "starting")
                self.error, changed = None, True
            elif kind == "booting" and layer is not None:
                layer.state = "starting"
                layer.started = layer.started or now
                layer.detail = str(event.get("step") or layer.detail)
                changed = True
            elif kind == "step_done" and layer is not None:
                layer.state, layer.since = "up", now
                layer.took = float(event["seconds"]) if event.get("seconds") is not None else layer.took
                layer.detail = str(event.get("line") or "up")
                changed = True
            elif kind == "plan" and event.get("blocked"):
                self.error, changed = "; ".join(map(str, event["blocked"])), True
            elif kind == "failed" or (kind == "finished" and event.get("state") == "failed"):
                self.error = str(event.get("message") or event.get("failure") or "the wake failed")
                for candidate in self.layers:
                    if candidate.state == "starting":
                        candidate.state, candidate.since = "failed", now
                changed = True
        if changed:
            self._bump()
        self.refresh()

    def _set_power(self, layer: LayerState, power: str, detail: str, now: float) -> bool:
        before = (layer.state, layer.detail)
        if power == "up":
            if layer.state != "up":
                if layer.started is not None and layer.took is None:
                    layer.took = now - layer.started
                layer.state, layer.since = "up", now
            layer.detail = detail or "up"
        elif layer.state in ("starting", "failed"):
            pass  # still booting (or its step failed): the step's words say more than "down"
        else:
            state = "asleep" if power == "down" else "unknown"
            if layer.state != state:
                layer.since = now
            layer.state, layer.detail = state, detail
        return (layer.state, layer.detail) != before

    def refresh(self) -> None:
        """Re-read the last observation (power of the chain, the application's health, readiness)."""
        if self.ready.is_set():
            return
        reconciler = self.desk.reconciler
        observed = reconciler.last_observed
        now = time.time()
        changed = False
        if observed is not None:
            for layer in self.layers:
                if layer.layer.key != APPLICATION and layer.layer.key in observed.power:
                    state = observed.power[layer.layer.key]
                    changed |= self._set_power(layer, state.power, state.detail, now)
            fresh = observed.at >= self.requested_at
            if fresh and self.desk.healthy_backends(self.service):
                self.mark_ready()
                return
        app = self._layer(APPLICATION)
        if app is not None:
            waiting_for = next((la for la in self.layers if la.layer.key != APPLICATION and la.state != "up"), None)
            if waiting_for is not None:
                state, detail = "waiting", f"waits for {waiting_for.layer.title}"
            else:
                health = None
                svc = reconciler.fleet.services.get(self.service)
                if observed is not None and svc is not None:
                    index = next((i for i, b in enumerate(svc.backends) if b == self.backend), 0)
                    health = observed.health.get((self.service, index))
                state, detail = "starting", f"health check: {health.detail}" if health else "health check pending"
            if (app.state, app.detail) != (state, detail):
                if app.state != state:
                    app.since = now
                app.state, app.detail = state, detail
                changed = True
        if changed:
            self._bump()

    def mark_ready(self) -> None:
        if self.ready.is_set():
            return
        now = time.time()
        for layer in self.layers:
            if layer.state != "up":
                if layer.started is not None and layer.took is None:
                    layer.took = now - layer.started
                layer.state, layer.since = "up", now
                layer.detail = "healthy" if layer.layer.key == APPLICATION else layer.detail or "up"
        self.error = None
        self.message = "ready"
        self.ready.set()
        self._bump()
        reconciler = self.desk.reconciler
        if self.pages:
            # A visit through the waiting page is use: the idle timer starts now, not at the wake.
            reconciler.note_activity(self.service)
        log.info(
            "service ready for its requests",
            extra={
                "fields": {
                    "service": self.service,
                    "seconds": round(self.elapsed(), 3),
                    "requests": self.requests,
                    "pages": self.pages,
                    "held": self.held,
                }
            },
        )
        self.desk.forget(self)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


# --------------------------------------------------------------------------- the desk: one wake per service


class WakeDesk:
    """The request path's state: the wakes in progress (one per service) and the HTTP client to backends."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        config = reconciler.config
        self.edges = networks(config.edge_addresses)
        # Imported here: security.py answers with this module's problem(), so it imports this module.
        from wakegrid.api.security import RateLimiter

        # Wakes each end-user client may ask for (admin.wake_rate); 429 past it.
        self.rate = RateLimiter(config.admin.wake_rate.requests, config.admin.wake_rate.per)
        self.wakes: dict[str, Wake] = {}
        # service → (when, index, backend) the wake's own probe found healthy, before any round saw it
        self.proven: dict[str, tuple[float, int, Backend]] = {}
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = self.reconciler.config.forward_timeout
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
                follow_redirects=False,  # the client gets the backend's redirects as they are
                trust_env=False,  # never through a proxy from the environment: backends are on the fleet's network
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=20),
            )
        return self._client

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        for wake in list(self.wakes.values()):
            wake.close()
        self.wakes.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def healthy_backends(self, service: str) -> list[tuple[int, Backend]]:
        """The service's backends the last observation saw healthy, in its failover order."""
        observed = self.reconciler.last_observed
        fleet = self.reconciler.fleet
        svc = fleet.services.get(service)
        if observed is None or svc is None:
            return []
        order = {site: rank for rank, site in enumerate(fleet.site_order(svc))}
        healthy = [
            (index, backend)
            for index, backend in enumerate(svc.backends)
            if (health := observed.health.get((service, index))) is not None and health.state == "up"
        ]
        ranked = sorted(healthy, key=lambda item: (order.get(fleet.backend_site(item[1]), len(order)), item[0]))
        proven = self.proven.get(service)
        if proven is not None and time.monotonic() - proven[0] < PROVEN_FOR:
            # Just seen healthy by the wake itself: first, until the rounds' observer catches up.
            ranked = [(proven[1], proven[2]), *(item for item in ranked if item[0] != proven[1])]
        return ranked

    def forget(self, wake: Wake) -> None:
        if self.wakes.get(wake.service) is wake:
            del self.wakes[wake.service]

    async def join(self, service: str, client: str, reason: str) -> Wake:
        """The service's wake in progress, or a new one (journaled, a round at once).

        ``reason`` says what asked ("browser GET", "held POST") without the client's address: it
        shows in the decisions every waiting page displays; the journal keeps the client apart.

        A wake whose last step failed is asked again (a person pressed "try again"): the reconciler's
        backoff still decides when the next start may run.
        """
        wake = self.wakes.get(service)
        if wake is not None and wake.active:
            wake.requests += 1
            if wake.error is not None:
                wake.error, wake.message = None, "asked again"
                wake._bump()
                await self._request(service, client, f"{reason} (again)")
            return wake
        reconciler = self.reconciler
        fleet = reconciler.fleet
        observed = reconciler.last_observed
        tunnels = observed.tunnels if observed is not None else None
        layers = chain_layers(fleet, service, tunnels)
        nodes = [layer.key for layer in layers if layer.key != APPLICATION]
        try:
            estimate = estimate_seconds(
                reconciler.store.wake_history(service).get(service), reconciler.store.boot_history(), nodes
            )
        except JournalError as exc:
            log.warning("no estimate: the journal cannot be read", extra={"fields": {"error": str(exc)}})
            estimate = None
        now = time.time()
        wake = Wake(
            self,
            service,
            [LayerState(layer, "waiting", "", now) for layer in layers],
            wake_backend(fleet, service, tunnels),
            estimate,
        )
        # In the desk and subscribed before anything is published: no second wake, no lost event.
        self.wakes[service] = wake
        wake.follow(reconciler.bus.subscribe([f"service:{service}", *(f"node:{n}" for n in nodes), "decision"]))
        await self._request(service, client, reason)
        return wake

    async def _request(self, service: str, client: str, reason: str) -> None:
        try:
            await self.reconciler.request_wake(service, client, reason)
        except JournalError as exc:
            # Not journaled, yet wanted now: the round still runs; the wake is followed from observations.
            log.error(
                "a wake request could not be journaled", extra={"fields": {"service": service, "error": str(exc)}}
            )
            self.reconciler.kick()

    # ---- delivering a request to the service

    async def forward(self, request: Request, service: str, body: bytes) -> Response | None:
        """Deliver ``request`` once to a healthy backend; its response streamed back.

        None when no backend took the connection (nothing was sent: the caller may wait again).
        A backend that took it and then failed gets a 502/504 problem: the request is not replayed.
        """
        fleet = self.reconciler.fleet
        for index, backend in self.healthy_backends(service):
            address = fleet.backend_address(backend)
            if address is None:
                continue
            host = f"[{address}]" if ":" in address else address
            target = request.scope.get("raw_path") or request.url.path.encode()
            query = request.scope.get("query_string", b"")
            url = f"http://{host}:{backend.port}{target.decode('latin-1')}" + (
                f"?{query.decode('latin-1')}" if query else ""
            )
            outgoing = httpx.Request(
                request.method, url, headers=forwarded_headers(request.headers.raw), content=body or None
            )
            try:
                upstream = await self.client.send(outgoing, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.warning(
                    "a healthy-looking backend refused the connection",
                    extra={"fields": {"service": service, "backend": index, "error": str(exc) or type(exc).__name__}},
                )
                continue
            except httpx.TimeoutException:
                return problem(504, "Gateway Timeout", f"{service} did not answer in time", kind="backend-timeout")
            except httpx.HTTPError as exc:
                # It may have been sent: never replayed (a POST is delivered at most once).
                error = str(exc) or type(exc).__name__
                log.warning(
                    "a backend failed a delivered request", extra={"fields": {"service": service, "error": error}}
                )
                return problem(502, "Bad Gateway", f"{service} failed: {error}", kind="backend-failed")
            response = StreamingResponse(
                upstream.aiter_raw(), status_code=upstream.status_code, background=BackgroundTask(upstream.aclose)
            )
            response.raw_headers = without_hop_by_hop(upstream.headers.raw)
            return response
        return None


def without_hop_by_hop(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }
    return [
        (name, value)
        for name, value in headers
        if (lower := name.decode("latin-1").lower()) not in HOP_BY_HOP and lower not in named
    ]


def forwarded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The client's request headers for the backend: no hop-by-hop, none of the edge's own, no length
    (the body is sent whole, with its own)."""
    return [
        (name, value)
        for name, value in without_hop_by_hop(headers)
        if not name.lower().startswith(b"x-wakegrid-") and name.lower() != b"content-length"
    ]


def problem(status: int, title: str, detail: str, *, kind: str, headers: dict[str, str] | None = None, **extra: Any):
    """An RFC 9457 problem response (``application/problem+json``)."""
    body = {"type": f"urn:wakegrid:problem:{kind}", "title": title, "status": status, "detail": detail, **extra}
    return Response(
        json.dumps(body),
        status_code=status,
        media_type="application/problem+json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def requested_url(scope: Scope) -> str:
    """The path and query the client asked for, as it sent them, for a link on the page. Leading slashes
    are collapsed: ``//evil.example/x`` would be a link to another host."""
    path = (scope.get("raw_path") or scope.get("path", "/").encode()).decode("latin-1")
    query = scope.get("query_string", b"").decode("latin-1")
    return "/" + path.lstrip("/") + (f"?{query}" if query else "")


async def read_body(request: Request, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- the ASGI front


class WakePath:
    """ASGI middleware: a request with ``X-Wakegrid-Service`` is the wake path; the rest go to the app."""

    def __init__(self, app: ASGIApp, desk: WakeDesk) -> None:
        self.app = app
        self.desk = desk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not any(
            name == SERVICE_HEADER.encode() for name, _ in scope.get("headers", ())
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    def _admit(self, scope: Scope, headers) -> tuple[str, str] | Response:
        """(service, client) when the edge sent it and the client may use the service; else the refusal."""
        desk = self.desk
        peer = parse_address((scope.get("client") or ("",))[0])
        service = headers.get(SERVICE_HEADER, "").strip()
        path = scope.get("path", "")
        if peer is None or not address_in(peer, desk.edges):
            log.warning(
                "wake path refused: the X-Wakegrid headers come only from the edge",
                extra={"fields": {"peer": str(peer), "service": service, "path": path}},
            )
            return problem(403, "Forbidden", "this address may not hand requests over", kind="not-the-edge")
        if service not in desk.reconciler.fleet.services:
            log.warning("wake path: unknown service", extra={"fields": {"service": service, "path": path}})
            return problem(404, "Not Found", f"no service named {service!r}", kind="unknown-service")
        client = parse_address(headers.get(CLIENT_HEADER))
        if client is None:
            log.warning(
                "wake path refused: no client address from the edge",
                extra={"fields": {"service": service, "header": headers.get(CLIENT_HEADER)}},
            )
            return problem(400, "Bad Request", "the edge sent no valid X-Wakegrid-Client", kind="no-client")
        if not client_allowed(desk.reconciler.fleet.services[service].allow, client):
            log.warning(
                "wake refused: client outside the service's allowlist",
                extra={"fields": {"client": str(client), "service": service, "path": path}},
            )
            return problem(403, "Forbidden", f"{client} may not use {service}", kind="client-not-allowed")
        return service, str(client)

    async def handle(self, request: Request) -> Response:
        admitted = self._admit(request.scope, request.headers)
        if isinstance(admitted, Response):
            return admitted
        service, client = admitted
        path = request.url.path
        if path.startswith(RESERVED):
            return await self._reserved(request, service, client, path.removeprefix(RESERVED))
        desk = self.desk
        # Only requests that would wait on a wake count: a service already up is served as usual.
        if not desk.healthy_backends(service) and (refusal := self._rate_limited(service, client)) is not None:
            return refusal
        page = wants_page(request.method, request.headers.get("accept"))
        body = b"" if page else await read_body(request, desk.reconciler.config.max_held_body)
        if body is None:
            limit = desk.reconciler.config.max_held_body
            return problem(
                413, "Content Too Large", f"a held request may carry at most {limit} bytes", kind="too-large"
            )
        if request.headers.get("upgrade", "").lower() == "websocket":
            # A WebSocket handshake cannot be held and replayed through here: its wake starts, and the
            # client is told when to come back (by then the edge routes it to the app itself).
            return await self._upgrade(request, service, client)
        if desk.healthy_backends(service):
            response = await desk.forward(request, service, body)
            if response is not None:
                desk.reconciler.note_activity(service)
                log.info(
                    "served at once: the service is up",
                    extra={
                        "fields": {"service": service, "client": client, "error": request.headers.get(ERROR_HEADER)}
                    },
                )
                return response
        if page:
            return await self._page(request, service, client)
        return await self._hold(request, service, client, body)

    def _rate_limited(self, service: str, client: str) -> Response | None:
        """The 429 for a client past its wake rate (admin.wake_rate); None while it is within."""
        wait = self.desk.rate.allow(client)
        if wait is None:
            return None
        rate = self.desk.reconciler.config.admin.wake_rate
        seconds = retry_after(wait, 0.0, cap=math.ceil(rate.per))
        log.warning(
            "wake refused: too many requests from this client",
            extra={"fields": {"service": service, "client": client, "retry_after": seconds}},
        )
        return problem(
            429,
            "Too Many Requests",
            f"{client} asked for more than {rate.requests} wakes in {rate.per:g} s: try again in {seconds} s",
            kind="rate-limited",
            headers={"Retry-After": str(seconds)},
            service=service,
        )

    async def _page(self, request: Request, service: str, client: str) -> Response:
        wake = await self.desk.join(service, client, f"browser {request.method}")
        wake.pages += 1
        snapshot = wake.snapshot()
        svc = self.desk.reconciler.fleet.services[service]
        html = _templates.get_template("waiting.html").render(
            service=service,
            domain=svc.domain,
            wake=snapshot,
            state_json=json.dumps(snapshot),
            events_url=f"{RESERVED}events/{service}",
            script_url=f"{RESERVED}static/waiting.js",
            retry_url=requested_url(request.scope),
            refresh=PAGE_REFRESH,
        )
        seconds = retry_after(wake.estimate, wake.elapsed())
        return Response(
            html,
            status_code=503,
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-store", "Retry-After": str(seconds), "Content-Security-Policy": CSP},
        )

    async def _hold(self, request: Request, service: str, client: str, body: bytes) -> Response:
        desk = self.desk
        arrived = time.monotonic()
        deadline = arrived + desk.reconciler.config.hold_timeout
        while True:
            wake = await desk.join(service, client, f"held {request.method}")
            wake.held += 1
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await wake.ready.wait()
            except TimeoutError:
                return self._timed_out(wake, client)
            finally:
                wake.held -= 1
            if await request.is_disconnected():
                log.info("held client left before its service was ready", extra={"fields": {"service": service}})
                return Response(status_code=499)
            response = await desk.forward(request, service, body)
            if response is not None:
                desk.reconciler.note_activity(service)
                log.info(
                    "held request delivered",
                    extra={
                        "fields": {
                            "service": service,
                            "client": client,
                            "method": request.method,
                            "waited": round(time.monotonic() - arrived, 3),
                        }
                    },
                )
                return response
            # Ready, yet every backend refused the connection (nothing was sent): it fell again; wait anew.
            if time.monotonic() >= deadline:
                return self._timed_out(wake, client)

    def _timed_out(self, wake: Wake, client: str) -> Response:
        timeout = self.desk.reconciler.config.hold_timeout
        log.warning(
            "held request timed out",
            extra={"fields": {"service": wake.service, "client": client, "hold_timeout": timeout}},
        )
        return problem(
            503,
            "Service Unavailable",
            f"{wake.service} is still waking after {timeout:g} s"
            + (f"; last error: {wake.error}" if wake.error else f"; {wake.message}"),
            kind="wake-timeout",
            headers={"Retry-After": str(retry_after(wake.estimate, wake.elapsed(), default=10))},
            service=wake.service,
            layers=[{k: layer[k] for k in ("title", "state", "detail")} for layer in wake.snapshot()["layers"]],
        )

    async def _upgrade(self, request: Request, service: str, client: str) -> Response:
        desk = self.desk
        if not desk.healthy_backends(service):
            wake = await desk.join(service, client, "WebSocket upgrade")
            wake.held += 1
            try:
                async with asyncio.timeout(desk.reconciler.config.hold_timeout):
                    await wake.ready.wait()
            except TimeoutError:
                return self._timed_out(wake, client)
            finally:
                wake.held -= 1
        return problem(
            503,
            "Service Unavailable",
            f"{service} is up: connect again",
            kind="reconnect",
            headers={"Retry-After": "1"},
            service=service,
        )

    async def _reserved(self, request: Request, service: str, client: str, rest: str) -> Response:
        if rest.startswith("static/") and request.method in ("GET", "HEAD"):
            path = STATIC.get(rest.removeprefix("static/"))
            if path is None:
                return problem(404, "Not Found", "no such file", kind="not-found")
            return Response(
                path.read_bytes(),
                media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                headers={"Cache-Control": "no-store"},
            )
        if rest == f"events/{service}" and request.method == "GET":
            return await self._events(service, client)
        return problem(404, "Not Found", f"nothing at {RESERVED}{rest}", kind="not-found")

    async def _events(self, service: str, client: str) -> Response:
        desk = self.desk
        wake = desk.wakes.get(service)
        if wake is None or not wake.active:
            if desk.healthy_backends(service):
                # Ready already (or never asleep): one last state, and the page goes on to its URL.
                return _sse_once({"service": service, "state": "ready", "layers": [], "now": time.time()})
            # A page whose wake this process does not know (the daemon restarted): the visitor still waits.
            wake = await desk.join(service, client, "waiting page reconnected")

        async def stream() -> AsyncIterator[str]:
            wake.listeners += 1
            try:
                yield "retry: 2000\n\n"
                seen = -1
                while True:
                    changed = wake.changed()
                    if wake.version != seen:
                        seen = wake.version
                        yield f"event: state\ndata: {json.dumps(wake.snapshot())}\n\n"
                    if wake.ready.is_set():
                        return
                    try:
                        async with asyncio.timeout(HEARTBEAT):
                            await changed.wait()
                    except TimeoutError:
                        yield ": still waking\n\n"
            finally:
                wake.listeners -= 1

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket to a sleeping service: its wake starts (if allowed), the client is told to come back."""
        await receive()  # websocket.connect
        admitted = self._admit(scope, _Headers(scope))
        if isinstance(admitted, Response):
            await send({"type": "websocket.close", "code": 1008})
            return
        service, client = admitted
        limited = not self.desk.healthy_backends(service) and self._rate_limited(service, client) is not None
        if not limited:
            await self.desk.join(service, client, "WebSocket upgrade")
        await send({"type": "websocket.close", "code": 1013})  # try again later


SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _sse_once(state: dict[str, Any]) -> Response:
    return Response(
        f"retry: 2000\n\nevent: state\ndata: {json.dumps(state)}\n\n",
        media_type="text/event-stream",
        headers=SSE_HEADERS,
    )


class _Headers:
    """Header lookup on a raw ASGI scope (lower-case names)."""

    def __init__(self, scope: Scope) -> None:
        self._headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", ())}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name, default)
