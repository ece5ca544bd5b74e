"""``/api``: the reconciler's JSON API (docs/api.md).

Reads need :func:`~wakegrid.api.security.read_access`, changes :func:`~wakegrid.api.security.admin_access`
(docs/security.md). Every error is an RFC 9457 problem naming what is wrong. Changes go through
the same parts as the daemon's own rounds: the planner (:mod:`wakegrid.graph`) on the last
observation, the actuator (locks, journal), :meth:`Reconciler.request_wake`; a daemon started with
``--dry-run`` checks them (unknown names, blocked plans, confirmations) and then refuses (409): it
decides and logs, it never acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from wakegrid.api import views
from wakegrid.api.models import (
    ActionAccepted,
    ActionEvent,
    ActionSummary,
    ActionView,
    BootEntry,
    DecisionEntry,
    DecisionPage,
    Discovery,
    History,
    NodeView,
    Pin,
    ProblemDetail,
    Reloaded,
    ServiceStatus,
    Stats,
    StopRequest,
    WakeEntry,
)
from wakegrid.api.security import Access, admin_access, read_access
from wakegrid.daemon.logs import get_logger
from wakegrid.graph import start_plan, stop_plan
from wakegrid.observe.discovered import discover
from wakegrid.web.wake import SSE_HEADERS, problem

if TYPE_CHECKING:
    from wakegrid.daemon.reconciler import Reconciler

log = get_logger("api")

router = APIRouter(prefix="/api", tags=["api"])

PAGE_MAX = 500
HEARTBEAT = 15.0  # seconds between comments on an idle event stream (proxies keep it open)
Read = Annotated[Access, Depends(read_access)]
Admin = Annotated[Access, Depends(admin_access)]
Limit = Annotated[int, Query(ge=1, le=PAGE_MAX, description=f"rows per page (at most {PAGE_MAX})")]
SQL_INT_MAX = 2**63 - 1  # the journal's integers (SQLite, PostgreSQL bigint)
Offset = Annotated[int, Query(ge=0, le=SQL_INT_MAX, description="rows to skip (newest first)")]
Since = Annotated[datetime | None, Query(description="ISO 8601; rows at or after")]
Until = Annotated[datetime | None, Query(description="ISO 8601; rows before")]

PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "model": ProblemDetail,
        "description": words,
        # Errors are RFC 9457 problems: that is their media type (clients and schemathesis check it).
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}},
    }
    for code, words in (
        (400, "a body that is not JSON"),
        (401, "no valid token or session"),
        (403, "outside the admin networks, or a bad CSRF token"),
        (404, "no such service, node, action or pin"),
        (409, "refused as things are now (dry run, blocked plan, confirmation needed)"),
        (422, "an invalid parameter or body, each problem named"),
    )
}


def _reconciler(request: Request) -> Reconciler:
    return request.app.state.reconciler


def _unknown(kind: str, name: str, known: Any) -> Response:
    names = ", ".join(sorted(known)) or "none"
    return problem(404, "Not Found", f"no {kind} named {name!r} (the fleet's: {names})", kind=f"unknown-{kind}")


def _utc(name: str, moment: datetime | None) -> datetime | None:
    """A query time in UTC (without a zone it is UTC); ValueError naming the parameter when it cannot be."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name}: {moment.isoformat()} is outside the calendar once moved to UTC") from None


def _dry_run(reconciler: Reconciler) -> Response | None:
    if reconciler.dry_run:
        return problem(
            409, "Conflict", "the daemon runs with --dry-run: it decides and logs, it never acts", kind="dry-run"
        )
    return None


def _audit(what: str, access: Access, **fields: Any) -> None:
    log.info(f"api: {what}", extra={"fields": {"client": str(access.client), "via": access.via, **fields}})


def _power_sets(reconciler: Reconciler) -> tuple[set[str], dict[str, str]]:
    """(nodes up, nodes unknown → why) as the last round saw them; never seen is unknown."""
    up: set[str] = set()
    unknown: dict[str, str] = {}
    for name in reconciler.fleet.nodes:
        power, detail = views.power_of(reconciler, name)
        if power == "up":
            up.add(name)
        elif power == "unknown":
            unknown[name] = detail
    return up, unknown


# --------------------------------------------------------------------------- status and nodes


@router.get("/status", response_model=list[ServiceStatus], responses=PROBLEMS)
def status(request: Request, _: Read) -> Any:
    """Every service: policy and why it is wanted or not now, backends' health, its chain's power, wake."""
    return views.all_status(_reconciler(request))


@router.get("/status/{service}", response_model=ServiceStatus, responses=PROBLEMS)
def service_status(request: Request, service: str, _: Read) -> Any:
    reconciler = _reconciler(request)
    if service not in reconciler.fleet.services:
        return _unknown("service", service, reconciler.fleet.services)
    return views.service_status(reconciler, service)


@router.get("/nodes", response_model=list[NodeView], responses=PROBLEMS)
def nodes(request: Request, _: Read) -> Any:
    """The hosting tree (machine → guest → container) with power state, dependencies and dependants."""
    return views.all_nodes(_reconciler(request))


@router.get("/nodes/{node}", response_model=NodeView, responses=PROBLEMS)
def node(request: Request, node: str, _: Read) -> Any:
    reconciler = _reconciler(request)
    if node not in reconciler.fleet.nodes:
        return _unknown("node", node, reconciler.fleet.nodes)
    return views.node_view(reconciler, node)


@router.get("/stats", response_model=Stats, responses=PROBLEMS)
def stats(request: Request, _: Read) -> Any:
    """Nodes up now; wakes, mean wake time and errors today (UTC)."""
    return views.stats(_reconciler(request))


# --------------------------------------------------------------------------- actions


def _accepted(action_id: int, kind: str, target: str) -> Any:
    body = ActionAccepted(action_id=action_id, kind=kind, target=target, follow=f"/api/actions/{action_id}")
    return Response(body.model_dump_json(), status_code=202, media_type="application/json")


@router.post("/wake/{service}", status_code=202, response_model=ActionAccepted, responses=PROBLEMS)
async def wake(request: Request, service: str, access: Admin) -> Any:
    """Wake a service's chain now (as its first request would); follow it at ``/api/actions/{id}``."""
    reconciler = _reconciler(request)
    if service not in reconciler.fleet.services:
        return _unknown("service", service, reconciler.fleet.services)
    if (refused := _dry_run(reconciler)) is not None:
        return refused
    reason = f"POST /api/wake by {access.client}"
    handle = await reconciler.request_wake(service, str(access.client), reason)
    action_id = reconciler.store.begin_action("wake", service, reason)
    reconciler.store.set_action_state(action_id, "running")
    follower = asyncio.ensure_future(_follow_wake(reconciler, action_id, handle))
    request.app.state.api_tasks.add(follower)
    follower.add_done_callback(request.app.state.api_tasks.discard)
    _audit("wake", access, service=service, action=action_id)
    return _accepted(action_id, "wake", service)


async def _follow_wake(reconciler: Reconciler, action_id: int, handle) -> None:
    """The wake action ends when the service is ready, or fails after the hold timeout."""
    store = reconciler.store
    timeout = reconciler.config.hold_timeout
    subscription = handle.events()
    try:
        async with asyncio.timeout(timeout):
            async for event in subscription:
                kind = event.get("kind")
                if event.get("topic", "").startswith("node:") and kind == "power":
                    store.add_event(action_id, "power", {"node": event["topic"][5:], "power": event.get("power")})
                elif kind in ("step_started", "step_done", "failed"):
                    store.add_event(action_id, kind, {k: v for k, v in event.items() if k not in ("topics",)})
                elif kind == "ready":
                    store.set_action_state(action_id, "done")
                    return
        store.set_action_state(action_id, "failed", "the daemon stopped before the service was ready")
    except TimeoutError:
        store.set_action_state(action_id, "failed", f"not ready within {timeout:g} s (hold_timeout)")
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            store.set_action_state(action_id, "interrupted", "the daemon stopped")
        raise
    except Exception as exc:  # a journal failure: logged, the wake itself goes on
        log.error("following a wake failed", extra={"fields": {"action": action_id, "error": str(exc)}})
    finally:
        subscription.close()


@router.post("/nodes/{node}/start", status_code=202, response_model=ActionAccepted, responses=PROBLEMS)
async def start(request: Request, node: str, access: Admin) -> Any:
    """Start a node and whatever it needs (hosts first), as ``wakegrid wake`` does."""
    reconciler = _reconciler(request)
    fleet = reconciler.fleet
    if node not in fleet.nodes:
        return _unknown("node", node, fleet.nodes)
    up, unknown = _power_sets(reconciler)
    plan = start_plan(fleet, node, up, unknown=unknown)
    if plan.blocked:
        return problem(409, "Conflict", f"cannot start {node}: {'; '.join(plan.blocked)}", kind="blocked",
                       blocked=list(plan.blocked))  # fmt: skip
    if not plan.steps:
        return problem(409, "Conflict", f"{node} is already up", kind="nothing-to-do")
    if (refused := _dry_run(reconciler)) is not None:
        return refused
    handle = await reconciler.actuator.submit(
        "start",
        node,
        f"POST /api/nodes/{node}/start by {access.client}",
        timeout=reconciler.config.run_timeout,
        nodes=[step.node for step in plan.steps],
    )
    _audit("start", access, node=node, action=handle.id)
    return _accepted(handle.id, "start", node)


@router.post("/nodes/{node}/stop", status_code=202, response_model=ActionAccepted, responses=PROBLEMS)
async def stop(request: Request, node: str, access: Admin, body: Annotated[StopRequest | None, Body()] = None) -> Any:
    """Stop a node and what it hosts (deepest first). Without ``confirm``, a plan that proposes stopping
    ``confirm_shutdown`` dependencies is answered 409 with the cascade and the proposals: send again with
    ``confirm`` (the proposals to stop too, or ``[]`` for none)."""
    reconciler = _reconciler(request)
    fleet = reconciler.fleet
    if node not in fleet.nodes:
        return _unknown("node", node, fleet.nodes)
    body = body or StopRequest()
    if missing := [name for name in body.confirm or () if name not in fleet.nodes]:
        return _unknown("node", missing[0], fleet.nodes)
    up, unknown = _power_sets(reconciler)
    plan = stop_plan(
        fleet, node, up, unknown=unknown, confirmed=body.confirm or (), include_dependants=body.include_dependants
    )
    cascade = [step.node for step in plan.steps]
    if plan.blocked:
        return problem(409, "Conflict", f"cannot stop {node}: {'; '.join(plan.blocked)}", kind="blocked",
                       blocked=list(plan.blocked), overrides=list(plan.overrides))  # fmt: skip
    if plan.proposed and body.confirm is None:
        proposed = [{"node": note.node, "reason": note.reason} for note in plan.proposed]
        return problem(
            409,
            "Conflict",
            f"stopping {node} also proposes {', '.join(p['node'] for p in proposed)}: "
            "send confirm with those to stop too (or [] for none)",
            kind="confirm-needed",
            cascade=cascade,
            proposed=proposed,
        )
    if not cascade:
        return problem(409, "Conflict", f"{node} is already down", kind="nothing-to-do")
    if (refused := _dry_run(reconciler)) is not None:
        return refused
    handle = await reconciler.actuator.submit(
        "stop",
        node,
        f"POST /api/nodes/{node}/stop by {access.client}",
        extravars={"confirm": list(body.confirm or ()), "include_dependants": body.include_dependants},
        timeout=reconciler.config.run_timeout,
        nodes=cascade,
    )
    _audit("stop", access, node=node, action=handle.id, cascade=cascade)
    return _accepted(handle.id, "stop", node)


@router.get("/actions/{action_id}", response_model=ActionView, responses=PROBLEMS)
def action(request: Request, action_id: Annotated[int, PathParam(ge=1, le=SQL_INT_MAX)], _: Read) -> Any:
    """One action and its events (plan, steps, boot, outcome), as the journal has them."""
    try:
        row = _reconciler(request).store.action(action_id)
    except KeyError:
        return problem(404, "Not Found", f"no action #{action_id}", kind="unknown-action")
    return ActionView(
        **{k: row[k] for k in ActionSummary.model_fields},
        events=[ActionEvent(at=e["at"], kind=e["kind"], data=e["data"]) for e in row.get("events", [])],
    )


@router.post("/activity/{service}", status_code=204, responses=PROBLEMS)
def activity(request: Request, service: str, access: Admin) -> Response:
    """ "This service is in use": keeps an ``on_demand`` service awake (its idle timer starts again)."""
    reconciler = _reconciler(request)
    if service not in reconciler.fleet.services:
        return _unknown("service", service, reconciler.fleet.services)
    reconciler.note_activity(service)
    _audit("activity", access, service=service)
    return Response(status_code=204)


# --------------------------------------------------------------------------- the fleet


@router.get("/config", response_model=dict[str, Any], responses=PROBLEMS)
def config(request: Request, _: Read) -> Any:
    """The fleet as loaded; secrets show where they come from, never their value."""
    return views.config_view(_reconciler(request))


@router.post("/reload", response_model=Reloaded, responses=PROBLEMS)
def reload(request: Request, access: Admin) -> Any:
    """Re-read the fleet file. An invalid one is refused (422, every problem) and the running one kept."""
    reconciler = _reconciler(request)
    if not reconciler.reload():
        _audit("reload refused", access, problems=len(reconciler.fleet_problems))
        return problem(
            422,
            "Unprocessable Content",
            f"{reconciler.fleet_path} is invalid: the running fleet is kept",
            kind="invalid-fleet",
            problems=reconciler.fleet_problems,
        )
    _audit("reload", access)
    return Reloaded(reloaded=True, services=len(reconciler.fleet.services), nodes=len(reconciler.fleet.nodes))


# --------------------------------------------------------------------------- live events and history


@router.get(
    "/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}},
)
async def events(
    request: Request,
    _: Read,
    topics: Annotated[
        str | None, Query(description="comma-separated topic prefixes (node:, service:, decision, action:); all")
    ] = None,
) -> StreamingResponse:
    """The live stream: power changes, wake progress per layer, decisions, actions (each event a JSON object)."""
    prefixes = [t.strip() for t in (topics or "").split(",") if t.strip()]
    subscription = _reconciler(request).bus.subscribe(prefixes)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            iterator = aiter(subscription)
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        event = await anext(iterator)
                except TimeoutError:
                    yield ": idle\n\n"
                    continue
                except StopAsyncIteration:
                    return
                name = str(event.get("kind") or event.get("topic", "message")).replace("\n", " ")
                yield f"event: {name}\ndata: {json.dumps(event, default=str)}\n\n"
        finally:
            subscription.close()

    return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/decisions", response_model=DecisionPage, responses=PROBLEMS)
def decisions(
    request: Request,
    _: Read,
    limit: Limit = 100,
    offset: Offset = 0,
    subject: Annotated[str | None, Query(description='"service stream", "node pve1", "route stream"')] = None,
    verdict: Annotated[
        Literal["start", "stop", "keep", "wait", "route", "leave"] | None, Query(description="one verdict")
    ] = None,
    since: Since = None,
    until: Until = None,
) -> Any:
    """The decision log, newest first: each row a change of a subject's verdict or reason."""
    try:
        since, until = _utc("since", since), _utc("until", until)
        rows = _reconciler(request).store.decisions(
            limit=limit + 1, offset=offset, subject=subject, verdict=verdict, since=since, until=until
        )
    except ValueError as exc:
        return problem(422, "Unprocessable Content", str(exc), kind="invalid-query")
    return DecisionPage(
        items=[DecisionEntry(**row) for row in rows[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(rows) > limit else None,
    )


@router.get("/history", response_model=History, responses=PROBLEMS)
def history(
    request: Request,
    _: Read,
    kind: Annotated[Literal["wake", "boot", "action"] | None, Query(description="only this kind of row")] = None,
    service: Annotated[str | None, Query(description="wakes of this service")] = None,
    node: Annotated[str | None, Query(description="boots and actions of this node")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
    since: Since = None,
    until: Until = None,
) -> Any:
    """Wakes (time to ready), boots (time to up) and actions, newest first, filtered and paged."""
    store = _reconciler(request).store
    try:
        since, until = _utc("since", since), _utc("until", until)
        wakes = store.wakes(limit, offset, service, since, until) if kind in (None, "wake") else []
        boots = store.boots(limit, offset, node, since, until) if kind in (None, "boot") and not service else []
        actions = (
            [
                a
                for a in store.actions(limit=limit, offset=offset, node=node or service)
                if (since is None or a["created_at"] >= since) and (until is None or a["created_at"] < until)
            ]
            if kind in (None, "action")
            else []
        )
    except ValueError as exc:
        return problem(422, "Unprocessable Content", str(exc), kind="invalid-query")
    return History(
        wakes=[WakeEntry(**row) for row in wakes],
        boots=[BootEntry(**row) for row in boots],
        actions=[ActionSummary(**{k: a[k] for k in ActionSummary.model_fields}) for a in actions],
        limit=limit,
        offset=offset,
    )


# --------------------------------------------------------------------------- pins and discovery


@router.get("/pins", response_model=list[Pin], responses=PROBLEMS)
def pins(request: Request, _: Read) -> Any:
    """What is pinned to the dashboard's front page, oldest first."""
    return [Pin(**row) for row in _reconciler(request).store.pins()]


def _pin_target(reconciler: Reconciler, kind: str, name: str) -> Response | None:
    known = reconciler.fleet.nodes if kind == "node" else reconciler.fleet.services
    return None if name in known else _unknown(kind, name, known)


@router.put("/pins/{kind}/{name}", response_model=Pin, responses=PROBLEMS)
def pin(request: Request, kind: Literal["node", "service"], name: str, access: Admin) -> Any:
    reconciler = _reconciler(request)
    if (refused := _pin_target(reconciler, kind, name)) is not None:
        return refused
    reconciler.store.pin(kind, name)
    _audit("pin", access, kind=kind, name=name)
    return next(Pin(**row) for row in reconciler.store.pins() if (row["kind"], row["name"]) == (kind, name))


@router.delete("/pins/{kind}/{name}", status_code=204, responses=PROBLEMS)
def unpin(request: Request, kind: Literal["node", "service"], name: str, access: Admin) -> Response:
    if not _reconciler(request).store.unpin(kind, name):
        return problem(404, "Not Found", f"{kind} {name!r} is not pinned", kind="not-pinned")
    _audit("unpin", access, kind=kind, name=name)
    return Response(status_code=204)


@router.get("/discovered", response_model=Discovery, responses=PROBLEMS)
async def discovered(request: Request, _: Read) -> Any:
    """Guests and containers the Proxmox and Docker APIs report that the fleet does not know, each with
    its fleet entry to copy; an API that could not be asked is listed as unknown with the reason."""
    reconciler = _reconciler(request)
    return await discover(reconciler.fleet, timeout=reconciler.config.api_timeout)
