"""The daemon's HTTP app (FastAPI): the wake path, ``/api``, the admin dashboard, ``/docs``, ``/healthz``, ``/metrics``.

Middleware, outermost first:
1. :class:`wakegrid.web.wake.WakePath`: a request carrying ``X-Wakegrid-Service`` (the edge handing over
   a request for a sleeping service) is the wake path's, whatever its path — a sleeping app's own
   ``/api/…`` or ``/metrics`` is never answered by the daemon;
2. :class:`wakegrid.api.security.AdminNetworkGuard`: ``/api``, ``/admin``, ``/docs``, ``/openapi.json``
   and ``/metrics`` only for clients in ``admin.networks`` (403 otherwise, whatever the token).
Then each route asks for read or admin access (docs/security.md). ``/healthz`` stays open.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from wakegrid import __version__
from wakegrid.api.routes import router as api_router
from wakegrid.api.security import AdminNetworkGuard, Guard, Refused, read_access, refused_handler
from wakegrid.model import format_path
from wakegrid.web.dashboard import router as dashboard_router
from wakegrid.web.wake import WakeDesk, WakePath, problem

if TYPE_CHECKING:
    from wakegrid.daemon.reconciler import Reconciler

WEB = Path(__file__).resolve().parents[1] / "web"
_pages = Environment(loader=FileSystemLoader(WEB / "templates"), autoescape=select_autoescape(["html"]))


def create_app(reconciler: Reconciler) -> FastAPI:
    desk = WakeDesk(reconciler)
    reconciler.wakes = desk.wakes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with desk.lifespan(app):
            try:
                yield
            finally:
                for task in list(app.state.api_tasks):
                    task.cancel()

    app = FastAPI(
        title="wakegrid reconciler",
        version=__version__,
        description="The reconciler's API: status, nodes, wakes, actions, history. See docs/api.md.",
        lifespan=lifespan,
        # Served below behind read access: the document names every service and node.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    guard = Guard(reconciler.config)
    app.state.reconciler = reconciler
    app.state.wake_desk = desk
    app.state.guard = guard
    app.state.api_tasks = set()
    app.add_exception_handler(Refused, refused_handler)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # Added last = outermost: the wake path sees its requests before the admin networks are checked.
    app.add_middleware(AdminNetworkGuard, guard=guard)
    app.add_middleware(WakePath, desk=desk)
    app.include_router(api_router)
    app.include_router(dashboard_router)
    app.mount("/admin/static", StaticFiles(directory=WEB / "static"), name="admin-static")

    @app.get("/healthz")
    def healthz() -> dict:
        """Alive, and what the last round saw: the fleet's validity, the time of the last decisions."""
        last = reconciler.last
        return {
            "status": "ok",
            "version": __version__,
            "dry_run": reconciler.dry_run,
            "fleet": str(reconciler.fleet_path),
            "fleet_valid": not reconciler.fleet_problems,
            "fleet_problems": reconciler.fleet_problems,
            "last_round": last.at.isoformat() if last is not None else None,
            "running": sorted(reconciler.actuator.running()),
        }

    @app.get("/metrics", dependencies=[Depends(read_access)], include_in_schema=False)
    def metrics() -> Response:
        with contextlib.suppress(Exception):
            reconciler.metrics.journal_bytes.set(reconciler.store.size_bytes())
        return Response(generate_latest(reconciler.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", dependencies=[Depends(read_access)], include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=[Depends(read_access)], include_in_schema=False)
    def docs() -> HTMLResponse:
        """Every operation of the OpenAPI document on one local page (no CDN, no script)."""
        return HTMLResponse(_pages.get_template("api_docs.html").render(operations=_operations(app.openapi())))

    return app


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    operations = []
    for path, methods in document.get("paths", {}).items():
        for method, operation in methods.items():
            operations.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": operation.get("summary", ""),
                    "description": operation.get("description", ""),
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p.get("required", False),
                            "description": p.get("description", ""),
                        }
                        for p in operation.get("parameters", [])
                    ],
                    "responses": sorted(operation.get("responses", {})),
                }
            )
    return operations


async def _invalid_request(_request: Request, exc: Exception) -> Response:
    """422 as a problem naming each invalid parameter or body field (``query.limit: …``)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = [f"{format_path(tuple(e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors]
    detail = "; ".join(problems) or "invalid request"
    return problem(422, "Unprocessable Content", detail, kind="invalid-request", problems=problems)


async def _http_error(_request: Request, exc: Exception) -> Response:
    """FastAPI's own refusals (a body that is not JSON: 400; no such route: 404; 405) as problems too."""
    status = exc.status_code if isinstance(exc, StarletteHTTPException) else 500
    detail = exc.detail if isinstance(exc, StarletteHTTPException) else "error"
    return problem(status, HTTPStatus(status).phrase, str(detail), kind="http", headers=getattr(exc, "headers", None))
