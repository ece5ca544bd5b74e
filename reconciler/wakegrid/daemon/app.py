"""The daemon's HTTP app (FastAPI): ``/healthz`` and ``/metrics``, and in front of them the wake path.

A request carrying ``X-Wakegrid-Service`` (the edge handing over a request for a sleeping
service) never reaches these routes: :class:`wakegrid.web.wake.WakePath` takes it first, so a
sleeping app's own ``/healthz`` or ``/metrics`` is never answered by the daemon.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wakegrid import __version__
from wakegrid.web.wake import WakeDesk, WakePath

if TYPE_CHECKING:
    from wakegrid.daemon.reconciler import Reconciler


def create_app(reconciler: Reconciler) -> FastAPI:
    desk = WakeDesk(reconciler)
    app = FastAPI(title="wakegrid reconciler", version=__version__, lifespan=desk.lifespan)
    app.state.reconciler = reconciler
    app.state.wake_desk = desk
    app.add_middleware(WakePath, desk=desk)

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

    @app.get("/metrics")
    def metrics() -> Response:
        with contextlib.suppress(Exception):
            reconciler.metrics.journal_bytes.set(reconciler.store.size_bytes())
        return Response(generate_latest(reconciler.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
