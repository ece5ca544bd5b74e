"""One reconciler: observe the fleet, decide with the pure core, act through the actuator, journal all of it.

Level-triggered: each round recomputes everything from a fresh observation and the
journal's memory (:func:`wakegrid.decide.decide`), so a restarted daemon simply carries on.
This module is the shell around the core; the scheduling, signals and HTTP server are in
:mod:`wakegrid.daemon.service`.

Entry points for the request path and the API (next issues), all small:
- :meth:`Reconciler.request_wake` — somebody wants a service: journaled, a round follows at once;
  returns a :class:`WakeHandle` whose ``events()`` follows the wake on the bus;
- :meth:`Reconciler.note_activity` — "this service is in use" (keeps an ``on_demand`` service awake);
- :attr:`Reconciler.bus` — the live events (power changes, decisions, actions, step progress);
- :attr:`Reconciler.store` — the journal (:class:`wakegrid.journal.Store`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wakegrid.actuate.service import Actuator
from wakegrid.bus import EventBus
from wakegrid.daemon.config import DaemonConfig
from wakegrid.daemon.logs import get_logger
from wakegrid.daemon.metrics import Metrics
from wakegrid.decide import Decisions, decide
from wakegrid.journal import JournalError, Store
from wakegrid.model import Fleet, FleetError, load_fleet
from wakegrid.observe.activity import ActivityObserver, Monitoring
from wakegrid.observe.health import HealthObserver
from wakegrid.observe.power import as_observed, observe_power
from wakegrid.observe.wireguard import observe_tunnels, unseen_behind_down_tunnels
from wakegrid.state import Memory, Observed

log = get_logger("reconciler")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WakeHandle:
    """A wake asked for: follow it with ``events()`` (the service's and its nodes' topics on the bus)."""

    service: str
    request_id: int
    nodes: tuple[str, ...]
    bus: EventBus

    def topics(self) -> list[str]:
        return [f"service:{self.service}", *(f"node:{node}" for node in self.nodes)]

    def events(self) -> AsyncIterator[dict]:
        return self.bus.subscribe(self.topics())


class Reconciler:
    def __init__(
        self,
        fleet_path: str | Path,
        config: DaemonConfig,
        store: Store,
        *,
        dry_run: bool = False,
        bus: EventBus | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.fleet_path = Path(fleet_path)
        self.fleet: Fleet = load_fleet(self.fleet_path)  # FleetError: the caller refuses to start
        self.config = config
        self.store = store
        self.dry_run = dry_run
        self.bus = bus or EventBus()
        self.metrics = metrics or Metrics()
        self.started_at = utcnow()
        self.health = HealthObserver()
        self.activity = ActivityObserver(
            admin=config.caddy.admin,
            access_log=config.caddy.access_log,
            monitoring=Monitoring.from_mapping(config.monitoring.model_dump()),
            timeout=config.caddy.timeout,
        )
        self.actuator = Actuator(
            lambda: self.fleet_path, store, self.bus, max_parallel=config.max_parallel_runs, check=False
        )
        self.last: Decisions | None = None
        self.last_observed: Observed | None = None
        self.fleet_problems: list[str] = []
        self._round_lock = asyncio.Lock()
        self._kicked = False
        self._in_job = False
        self._run_ended = False  # a run ended during the current round's observation
        self.on_kick: Callable[[], None] | None = None  # the scheduler's "run the round job now"
        self._tasks: set[asyncio.Task] = set()
        # Pools being pushed: decided as if already in place, so no round pushes them again meanwhile.
        self._pools_pushing: dict[str, tuple[str, ...]] = {}
        self._last_power: dict[str, str] = {}
        self.outcomes: list[str] = []  # "done: start jellyfin", "failed: …": what `reconcile --once` prints
        # The request path's wakes in progress (service → wakegrid.web.wake.Wake), set by the HTTP app.
        self.wakes: Mapping[str, Any] = {}

    # ------------------------------------------------------------------ the entry points

    async def request_wake(self, service: str, client: str | None, reason: str) -> WakeHandle:
        """Journal that ``service`` is wanted now and start a round; unknown service → KeyError."""
        if service not in self.fleet.services:
            raise KeyError(service)
        now = utcnow()
        request_id = self.store.record_wake_request(service, now, client, reason)
        self.note_activity(service, now)
        self.bus.publish(f"service:{service}", {"kind": "wake_requested", "client": client, "reason": reason})
        self.kick()
        nodes = tuple(dict.fromkeys(b.node for b in self.fleet.services[service].backends if b.node))
        return WakeHandle(service, request_id, nodes, self.bus)

    def note_activity(self, service: str, at: datetime | None = None) -> None:
        at = at or utcnow()
        self.activity.note(service, at)
        self._journal(self.store.note_activity, service, at)

    def kick(self) -> None:
        """Run a round as soon as the current one (if any) ends."""
        self._kicked = True
        if not self._in_job and self.on_kick is not None:
            self.on_kick()

    def reload(self) -> bool:
        """Re-read the fleet file; an invalid one is refused and the running fleet kept."""
        try:
            fleet = load_fleet(self.fleet_path)
        except FleetError as exc:
            self.fleet_problems = [str(p) for p in exc.problems]
            self.metrics.fleet_valid.set(0)
            self.metrics.fleet_reloads.labels("refused").inc()
            log.error(
                "fleet reload refused, the running fleet is kept",
                extra={"fields": {"file": str(self.fleet_path), "problems": self.fleet_problems}},
            )
            return False
        self.fleet = fleet
        self.fleet_problems = []
        self.metrics.fleet_valid.set(1)
        self.metrics.fleet_reloads.labels("applied").inc()
        log.info("fleet reloaded", extra={"fields": {"file": str(self.fleet_path), "services": len(fleet.services)}})
        self.kick()
        return True

    # ------------------------------------------------------------------ one round

    async def run_rounds(self) -> None:
        """The scheduled job: one round, and another at once while something asked for one meanwhile."""
        self._in_job = True
        try:
            self._kicked = True
            while self._kicked:
                self._kicked = False
                await self.run_round()
        except asyncio.CancelledError:
            return  # the daemon is stopping: the round in progress is abandoned, nothing was half-acted
        finally:
            self._in_job = False

    async def run_round(self) -> Decisions:
        async with self._round_lock:
            started = time.monotonic()
            fleet = self.fleet  # one fleet for the whole round, even if a reload lands meanwhile
            self._run_ended = False
            observed = await self.observe(fleet)
            self._after_observation(fleet, observed)
            decisions = self.decide(fleet, observed)
            if self._run_ended:
                # A run ended while this round looked: what it saw may predate that run (a node it
                # just stopped, read as still up). Decided and logged, not acted on: look again.
                self.kick()
            elif not self.dry_run:
                self.act(fleet, decisions)
            self.metrics.round_seconds.observe(time.monotonic() - started)
            return decisions

    async def observe(self, fleet: Fleet) -> Observed:
        config = self.config
        power_task = asyncio.to_thread(
            observe_power, fleet, list(fleet.nodes), timeout=config.probe_timeout, api_timeout=config.api_timeout
        )
        wg = config.wireguard
        tunnels_task = asyncio.ensure_future(
            observe_tunnels(fleet, utcnow(), command=wg.command, timeout=wg.timeout, stale_after=wg.stale_after)
        )
        activity_task = asyncio.ensure_future(self.activity.round(fleet))
        power = await power_task
        health = await self.health.round(fleet, power)
        tunnels = await tunnels_task
        observed = Observed(
            at=utcnow(),
            power=unseen_behind_down_tunnels(fleet, power, tunnels),
            health=health,
            tunnels=tunnels,
            activity=await activity_task,
        )
        for kind, readings in (
            ("power", [s.power for s in power.values()]),
            ("health", [h.state for h in health.values()]),
            ("tunnel", [t.state for t in observed.tunnels.values()]),
        ):
            for value in readings:
                self.metrics.observations.labels(kind, value).inc()
        for activity in observed.activity.values():
            self.metrics.observations.labels("activity", "unknown" if activity.in_flight is None else "ok").inc()
        return observed

    def memory(self) -> Memory:
        memory = self.store.memory(self.started_at, utcnow())
        if self._pools_pushing:
            memory = replace(memory, pools={**memory.pools, **self._pools_pushing})
        return memory

    def decide(self, fleet: Fleet, observed: Observed) -> Decisions:
        cpu = time.process_time()
        # A migrated guest is judged where it runs now (the fleet's parent is only its preferred host).
        decisions = decide(as_observed(fleet, observed.power), observed, observed.at, self.memory())
        self.metrics.decide_seconds.observe(time.process_time() - cpu)
        self.last, self.last_observed = decisions, observed
        changed = self._journal(
            self.store.log_decisions, observed.at, [(d.subject, d.verdict, d.reason) for d in decisions.log]
        )
        for entry in decisions.log:
            if changed is None or (entry.subject, entry.verdict, entry.reason) in (changed or ()):
                self.bus.publish(
                    "decision", {"subject": entry.subject, "verdict": entry.verdict, "reason": entry.reason}
                )
        if not decisions.idle:
            log.info(
                "decided",
                extra={
                    "fields": {
                        "starts": [s.node for s in decisions.starts],
                        "stops": [s.node for s in decisions.stops],
                        "pools": {p.service: list(p.excluded) for p in decisions.pools},
                        "dry_run": self.dry_run,
                    }
                },
            )
        return decisions

    def act(self, fleet: Fleet, decisions: Decisions) -> None:
        """Start the runs the decisions call for; they go on in the background."""
        asked = set(self.store.memory(self.started_at, utcnow()).wake_requests) if decisions.starts else set()
        for start in decisions.starts:
            for service in asked.intersection(start.services):
                self.metrics.wakes.labels(service).inc()
            self._spawn(self._run("start", start.node, start.reason, [s.node for s in start.plan.steps]))
        for stop in decisions.stops:
            nodes = [s.node for s in stop.plan.steps]
            # The playbook replans from its own observation: it gets what the daemon's plan kept out.
            self._spawn(self._run("stop", stop.node, stop.reason, nodes, {"in_use": dict(stop.in_use)}))
        if decisions.pools:
            for pool in decisions.pools:
                self._pools_pushing[pool.service] = tuple(pool.excluded)
            self._spawn(self._push_pools(decisions))

    async def _run(self, kind: str, node: str, reason: str, nodes: list[str], extravars: dict | None = None) -> None:
        # Every node of the chain is locked: two starts sharing pve1 never run at once.
        handle = await self.actuator.submit(
            kind, node, reason, extravars=extravars, timeout=self.config.run_timeout, nodes=nodes
        )
        result = await handle.wait()
        self._run_ended = True
        ok = handle.state == "done"
        self._outcome(kind, node, handle, result)
        now = utcnow()
        if kind == "start":
            if ok:
                self._journal(self.store.clear_backoff, node)
            else:
                error = getattr(result, "failure", None) or handle.state
                backoff = self._journal(self.store.note_start_failure, node, now, error)
                log.warning(
                    "start failed",
                    extra={"fields": {"node": node, "error": error, "retry_at": getattr(backoff, "until", None)}},
                )
        self.kick()

    async def _push_pools(self, decisions: Decisions) -> None:
        memory = self.memory()
        exclusions = {service: list(sites) for service, sites in memory.pools.items() if sites}
        for pool in decisions.pools:
            exclusions[pool.service] = list(pool.excluded)
        exclusions = {service: sites for service, sites in exclusions.items() if sites}
        reason = "; ".join(
            f"{p.service}: " + (", ".join(p.reasons) if p.excluded else "every site back in the pool")
            for p in decisions.pools
        )
        handle = await self.actuator.submit(
            "routes",
            None,
            reason,
            extravars={"caddy_edge_pool_exclusions": exclusions},
            timeout=self.config.run_timeout,
        )
        try:
            result = await handle.wait()
            self._run_ended = True
            self._outcome("routes", "the edge", handle, result)
            if handle.state == "done":
                self.metrics.pool_pushes.inc()
                for pool in decisions.pools:
                    self._journal(self.store.set_pool, pool.service, tuple(pool.excluded))
        finally:
            # Failed: the next round decides the pool again and retries; a newer push's pool stays.
            for pool in decisions.pools:
                if self._pools_pushing.get(pool.service) == tuple(pool.excluded):
                    del self._pools_pushing[pool.service]
        self.kick()

    def _after_observation(self, fleet: Fleet, observed: Observed) -> None:
        """Power changes on the bus; booting nodes seen up get their boot time journaled."""
        memory = self.memory()
        for name, state in observed.power.items():
            if self._last_power.get(name) != state.power:
                self.bus.publish(f"node:{name}", {"kind": "power", "power": state.power, "detail": state.detail})
                self._last_power[name] = state.power
            booting = memory.booting.get(name)
            if booting is not None and state.power == "up":
                up_at = max(observed.at, booting.since)  # the note may be newer than this round's start
                self._journal(self.store.record_boot, name, booting.since, up_at)
                self._journal(self.store.clear_booting, name)
                self.metrics.boot_seconds.labels(name).observe((up_at - booting.since).total_seconds())
        for service, activity in observed.activity.items():
            if activity.last_request is not None:
                self._journal(self.store.note_activity, service, activity.last_request)
        for service, request in memory.wake_requests.items():
            svc = fleet.services.get(service)
            if svc is None:
                continue
            healthy = any(
                observed.health.get((service, i)) and observed.health[(service, i)].state == "up"
                for i in range(len(svc.backends))
            )
            if healthy and request.at <= observed.at:
                self._journal(self.store.finish_wake, service, observed.at, True)
                self.bus.publish(f"service:{service}", {"kind": "ready", "requested_at": request.at.isoformat()})

    async def wait_for_runs(self) -> list[str]:
        """Wait for every run started so far; their outcomes, one line each."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        return self.outcomes

    # ------------------------------------------------------------------ plumbing

    def _outcome(self, kind: str, target: str, handle, result) -> None:
        self.metrics.actions.labels(kind, handle.state).inc()
        failure = getattr(result, "failure", None)
        line = f"{handle.state}: {kind} {target}" + (f": {failure}" if failure and handle.state != "done" else "")
        self.outcomes.append(line)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _journal(self, call, *args):
        """A journal write that failed is logged and counted; the daemon goes on (no crash loop)."""
        try:
            return call(*args)
        except JournalError as exc:
            self.metrics.journal_errors.inc()
            log.error("journal write failed", extra={"fields": {"error": str(exc)}})
            return None

    async def close(self, grace: float) -> None:
        await self.actuator.shutdown(grace)
        for task in list(self._tasks):
            task.cancel()
