"""The admin dashboard: server-rendered pages under ``/admin``, live through ``/api/events``.

Pages (read access: a session cookie, or ``anonymous_read`` inside the admin networks; otherwise a
303 to the login form): the front page (pinned nodes and services as tiles, today's stats), the
hosting tree, the services, the history and what the APIs report that the fleet does not declare.
Everything they show comes from :mod:`wakegrid.api.views` (the same models the JSON API serves);
every button calls the JSON API from ``static/admin.js`` with the session's CSRF token.

Login trades the admin token for a session (``POST /admin/login``, rate limited per client so that
guessing is slow); the token is never logged, never echoed. Logout needs the session's CSRF token.
Outside the admin networks nothing here is reached at all (``AdminNetworkGuard``, before routing).
"""

from __future__ import annotations

import hmac
import urllib.parse
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from wakegrid.api import views
from wakegrid.api.security import SESSION_COOKIE, Refused, read_access, set_session_cookie
from wakegrid.daemon.logs import get_logger
from wakegrid.journal import JournalError
from wakegrid.observe.discovered import discover
from wakegrid.web.chain import duration_words
from wakegrid.web.wake import read_body

if TYPE_CHECKING:
    from wakegrid.daemon.reconciler import Reconciler
    from wakegrid.model import Policy

log = get_logger("dashboard")

HERE = Path(__file__).resolve().parent
STATIC = "/admin/static"
EVENTS = "/api/events?topics=node:,service:,action:,decision"
# Pages load only what the daemon serves: no inline script or style, no other origin, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
LOGIN_BODY_LIMIT = 8192  # a login form is a token and a path
DECISIONS_PER_PAGE = 50
RANGE_ROWS = 10_000  # wakes or boots summed for a time range on the history page
DISCOVERY_TIMEOUT = 3.0  # seconds per API call while a person waits for the page
HISTORY_KINDS = [
    ("", "everything"),
    ("wake", "wakes"),
    ("boot", "boots"),
    ("action", "actions"),
    ("decision", "decisions"),
]


def _seconds(value: float | None) -> str:
    return "\u2014" if value is None else duration_words(value)


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "never"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]), enable_async=False
)
_templates.filters["seconds"] = _seconds
_templates.filters["when"] = _when

router = APIRouter(include_in_schema=False)


# --------------------------------------------------------------------------- who is looking


class _Viewer:
    """Who reads a page: a logged-in admin (may act: has a CSRF token) or an anonymous reader inside the networks."""

    def __init__(self, csrf: str | None) -> None:
        self.csrf = csrf

    @property
    def can_act(self) -> bool:
        return self.csrf is not None


def _guard(request: Request):
    return request.app.state.guard


def _session(request: Request):
    return _guard(request).session_of(request)


async def _viewer(request: Request) -> _Viewer | Response:
    """The reader of a page, or the redirect to the login form (303) when the page may not be read."""
    session = _session(request)
    if session is not None:
        return _Viewer(session.csrf)
    try:
        await read_access(request)  # anonymous_read inside the networks, or a Bearer token
    except Refused as refusal:
        if refusal.status_code == 401:
            target = urllib.parse.quote(
                _local_path(request.url.path + ("?" + request.url.query if request.url.query else ""))
            )
            return RedirectResponse(
                f"/admin/login?next={target}", status_code=303, headers={"Cache-Control": "no-store"}
            )
        raise
    return _Viewer(None)


def _local_path(value: str | None) -> str:
    """Where to go after login: a dashboard path only (never another host: ``//evil`` or ``/\\evil``)."""
    if not value or not value.startswith("/admin") or value.startswith(("//", "/\\")) or "\\" in value:
        return "/admin"
    return value


def _render(
    request: Request, template: str, *, status: int = 200, viewer: _Viewer | None = None, **context
) -> Response:
    reconciler: Reconciler = request.app.state.reconciler
    html = _templates.get_template(f"admin/{template}").render(
        static=STATIC,
        csrf=viewer.csrf if viewer else None,
        can_act=bool(viewer and viewer.can_act),
        live=EVENTS if viewer is not None else None,
        dry_run=reconciler.dry_run,
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def _client(request: Request) -> str:
    return str(_guard(request).client(request) or "unknown")


# --------------------------------------------------------------------------- login, logout


@router.get("/admin/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    if _session(request) is not None:
        return RedirectResponse(_local_path(next), status_code=303)
    return _login_page(request, next=_local_path(next))


def _login_page(request: Request, *, next: str, error: str | None = None, status: int = 200, **headers) -> Response:
    ttl = request.app.state.reconciler.config.admin.session_ttl
    response = _render(
        request,
        "login.html",
        status=status,
        title="Log in",
        page="login",
        next=next,
        error=error,
        session_ttl=duration_words(ttl),
    )
    response.headers.update(headers)
    return response


async def _form(request: Request, limit: int = LOGIN_BODY_LIMIT) -> dict[str, str] | None:
    """The urlencoded form of a POST (first value of each field); None when larger than ``limit``."""
    body = await read_body(request, limit)
    if body is None:
        return None
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


@router.post("/admin/login")
async def login(request: Request) -> Response:
    guard = _guard(request)
    client = _client(request)
    # One bucket per client for login attempts, apart from its wakes: guessing the token is slow.
    wait = guard.rate.allow(f"admin-login:{client}")
    if wait is not None:
        log.warning("admin login refused: too many attempts", extra={"fields": {"client": client}})
        seconds = max(1, round(wait))
        return _login_page(
            request,
            next="/admin",
            error=f"Too many attempts: try again in {duration_words(seconds)}.",
            status=429,
            **{"Retry-After": str(seconds)},
        )
    form = await _form(request)
    if form is None:
        return _login_page(request, next="/admin", error="The form was too large.", status=413)
    next_path = _local_path(form.get("next"))
    if not guard.check_token(form.get("token", "")):
        log.warning("admin login refused: wrong token", extra={"fields": {"client": client}})
        return _login_page(request, next=next_path, error="Wrong token.", status=401)
    session = guard.sessions.create()
    log.info("admin logged in", extra={"fields": {"client": client}})
    response = RedirectResponse(next_path, status_code=303, headers={"Cache-Control": "no-store"})
    set_session_cookie(response, session)
    return response


@router.post("/admin/logout")
async def logout(request: Request) -> Response:
    session = _session(request)
    form = await _form(request) or {}
    presented = form.get("csrf") or request.headers.get("x-csrf-token") or ""
    if session is None:
        return RedirectResponse("/admin/login", status_code=303)
    if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        log.warning("admin logout refused: bad CSRF token", extra={"fields": {"client": _client(request)}})
        return _render(
            request,
            "login.html",
            status=403,
            title="Refused",
            page="login",
            next="/admin",
            error="This form is stale (its CSRF token does not match your session): reload the page and try again.",
            session_ttl="",
        )
    _guard(request).sessions.drop(session.id)
    log.info("admin logged out", extra={"fields": {"client": _client(request)}})
    response = RedirectResponse("/admin/login", status_code=303, headers={"Cache-Control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


# --------------------------------------------------------------------------- the pages


def policy_words(policy: Policy) -> str:
    """A service's policy for people: ``on demand, asleep after 20 min idle``, ``scheduled: mon-fri 08:00-18:00``."""
    if policy.mode == "always_on":
        return "always on"
    if policy.mode == "on_demand":
        return f"on demand, asleep after {duration_words(policy.idle_after)} idle" if policy.idle_after else "on demand"
    windows = "; ".join(f"{','.join(w.days)} {w.start}\u2013{w.end}" for w in policy.windows or [])
    zone = f" ({policy.timezone})" if policy.timezone else ""
    return f"scheduled: {windows or 'no window'}{zone}"


def idle_timer_words(policy: Policy, last_activity: datetime | None, now: datetime) -> str | None:
    """Where an ``on_demand`` service's idle timer stands: ``asleep in ~12 min (idle for 8 min)``."""
    if policy.mode != "on_demand" or not policy.idle_after:
        return None
    if last_activity is None:
        return "no activity seen yet"
    idle = max(0.0, (now - last_activity).total_seconds())
    left = policy.idle_after - idle
    if left <= 0:
        return f"idle for {duration_words(idle)}: may be put to sleep"
    return f"asleep in ~{duration_words(left)} (idle for {duration_words(idle)})"


def _nodes(reconciler: Reconciler) -> list[dict[str, Any]]:
    """The hosting tree as the API has it, each node with what a stop of it takes along (deepest first)."""
    fleet = reconciler.fleet
    return [
        {**node.model_dump(), "hosted": fleet.descendants(node.name) if node.name in fleet.nodes else []}
        for node in views.all_nodes(reconciler)
    ]


def _policies(reconciler: Reconciler) -> dict[str, str]:
    return {name: policy_words(service.policy) for name, service in reconciler.fleet.services.items()}


@router.get("/admin")
async def front(request: Request) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    reconciler: Reconciler = request.app.state.reconciler
    nodes = _nodes(reconciler)
    services = views.all_status(reconciler)
    return _render(
        request,
        "front.html",
        viewer=viewer,
        title="Front page",
        page="front",
        stats=views.stats(reconciler),
        pinned_nodes=[node for node in nodes if node["pinned"]],
        pinned_services=[service for service in services if service.pinned],
        unpinned_nodes=[node["name"] for node in nodes if not node["pinned"]],
        unpinned_services=[service.name for service in services if not service.pinned],
        policies=_policies(reconciler),
    )


@router.get("/admin/hosts")
async def hosts(request: Request) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    reconciler: Reconciler = request.app.state.reconciler
    return _render(request, "hosts.html", viewer=viewer, title="Hosts", page="hosts", nodes=_nodes(reconciler))


@router.get("/admin/services")
async def services(request: Request) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    reconciler: Reconciler = request.app.state.reconciler
    fleet, now = reconciler.fleet, datetime.now(UTC)
    statuses = views.all_status(reconciler)
    return _render(
        request,
        "services.html",
        viewer=viewer,
        title="Services",
        page="services",
        services=statuses,
        policies=_policies(reconciler),
        timers={
            status.name: idle_timer_words(fleet.services[status.name].policy, status.last_activity, now)
            for status in statuses
            if status.name in fleet.services
        },
        domains={name: service.domain for name, service in fleet.services.items()},
    )


def _moment(text: str, name: str, *, end: bool = False) -> datetime | None:
    """A time of the filter form (``datetime-local``, UTC; a bare date is its whole day); ValueError names the field."""
    text = text.strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).date()
            return datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a date and time like 2026-12-06T08:00") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _wake_totals(rows) -> list[SimpleNamespace]:
    """Per service, the wakes of a time range (newest first in): as :meth:`Store.wake_history` sums them all."""
    totals: dict[str, SimpleNamespace] = {}
    for row in rows:
        total = totals.get(row["service"])
        if total is None:
            total = totals[row["service"]] = SimpleNamespace(
                service=row["service"], wakes=0, failed=0, requests=0, times=[],
                last_seconds=row["seconds"] if row["ok"] else None, last_at=row["finished_at"],
            )  # fmt: skip
        total.wakes += 1
        total.requests += row["requests"]
        if row["ok"]:
            total.times.append(row["seconds"])
        else:
            total.failed += 1
    for total in totals.values():
        total.mean_seconds = sum(total.times) / len(total.times) if total.times else None
    return list(totals.values())


def _boot_totals(rows) -> list[SimpleNamespace]:
    """Per node, the boots of a time range (newest first in): as :meth:`Store.boot_history` sums them all."""
    totals: dict[str, SimpleNamespace] = {}
    for row in rows:
        total = totals.setdefault(
            row["node"], SimpleNamespace(node=row["node"], times=[], last_seconds=row["seconds"], last_at=row["up_at"])
        )
        total.times.append(row["seconds"])
    for total in totals.values():
        total.boots, total.mean_seconds = len(total.times), sum(total.times) / len(total.times)
    return list(totals.values())


def _inside(at: datetime, since: datetime | None, until: datetime | None) -> bool:
    return (since is None or at >= since) and (until is None or at < until)


@router.get("/admin/history")
async def history(
    request: Request,
    node: str = "",
    service: str = "",
    kind: str = "",
    since: str = "",
    until: str = "",
    offset: int = 0,
) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    reconciler: Reconciler = request.app.state.reconciler
    fleet, store = reconciler.fleet, reconciler.store
    filters = {"node": node, "service": service, "kind": kind, "since": since, "until": until}
    context: dict[str, Any] = {
        "filters": filters,
        "all_nodes": list(fleet.nodes),
        "all_services": list(fleet.services),
        "kinds": HISTORY_KINDS,
        "show": {key: kind in ("", key) for key in ("wake", "boot", "action", "decision")},
        "wakes": [],
        "boots": [],
        "actions": [],
        "decisions": [],
        "problem": None,
        "newer_url": None,
        "older_url": None,
        "page_words": "",
        "scope_words": "",
    }
    status = 200
    problems = []
    if kind not in dict(HISTORY_KINDS):
        problems.append(f"kind: {kind!r} is not one of wake, boot, action, decision")
    offset = max(0, offset)
    try:
        start, end = _moment(since, "from"), _moment(until, "to", end=True)
    except ValueError as exc:
        problems.append(str(exc))
        start = end = None
    if problems:
        context["problem"] = "; ".join(problems)
        context["show"] = dict.fromkeys(context["show"], False)
        status = 422
    scope = [f"for node {node}" if node else "", f"for service {service}" if service else ""]
    scope += [f"from {_when(start)}" if start else "", f"until {_when(end)}" if end else ""]
    context["scope_words"] = (" " + " ".join(part for part in scope if part)) if any(scope) else ""
    try:
        if context["show"]["wake"]:
            if start or end:
                rows = store.wakes(limit=RANGE_ROWS, service=service or None, since=start, until=end)
                wakes = _wake_totals(rows)
            else:
                wakes = list(store.wake_history(service or None).values())
            context["wakes"] = sorted(wakes, key=lambda w: (-w.requests, w.service))
        if context["show"]["boot"]:
            if start or end:
                boots = _boot_totals(store.boots(limit=RANGE_ROWS, node=node or None, since=start, until=end))
            else:
                boots = list(store.boot_history(node or None).values())
            context["boots"] = sorted(boots, key=lambda b: b.node)
        if context["show"]["action"]:
            actions = store.actions(limit=100, node=node or None)
            context["actions"] = [a for a in actions if _inside(a["created_at"], start, end)]
        if context["show"]["decision"]:
            subject = f"node {node}" if node else f"service {service}" if service else None
            rows = store.decisions(limit=DECISIONS_PER_PAGE + 1, offset=offset, subject=subject, since=start, until=end)
            context["decisions"] = rows[:DECISIONS_PER_PAGE]
            query = {k: v for k, v in filters.items() if v}
            if offset:
                newer = {**query, "offset": max(0, offset - DECISIONS_PER_PAGE)}
                context["newer_url"] = "/admin/history?" + urllib.parse.urlencode(newer)
            if len(rows) > DECISIONS_PER_PAGE:
                context["older_url"] = "/admin/history?" + urllib.parse.urlencode(
                    {**query, "offset": offset + DECISIONS_PER_PAGE}
                )
            if rows:
                context["page_words"] = (
                    f"decisions {offset + 1}\u2013{offset + len(context['decisions'])}, newest first"
                )
    except JournalError as exc:
        log.error("history page: the journal failed", extra={"fields": {"error": str(exc)}})
        context["problem"] = f"the journal could not be read: {exc}"
        status = 503
    return _render(request, "history.html", status=status, viewer=viewer, title="History", page="history", **context)


@router.get("/admin/discovered")
async def discovered(request: Request) -> Response:
    viewer = await _viewer(request)
    if isinstance(viewer, Response):
        return viewer
    reconciler: Reconciler = request.app.state.reconciler
    timeout = min(reconciler.config.api_timeout, DISCOVERY_TIMEOUT)
    found = await discover(reconciler.fleet, timeout=timeout)
    return _render(request, "discovered.html", viewer=viewer, title="Discovered", page="discovered", discovery=found)
