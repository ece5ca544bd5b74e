"""The daemon's Prometheus metrics (``GET /metrics``), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round_seconds = Histogram(
            "wakegrid_round_seconds",
            "Wall time of one round (observe, decide, act)",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )
        self.decide_seconds = Histogram(
            "wakegrid_decide_cpu_seconds",
            "CPU time of the decision core per round",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )
        self.observations = Counter(
            "wakegrid_observations_total", "Observations by kind and result", ["kind", "result"], registry=r
        )
        self.actions = Counter("wakegrid_actions_total", "Actions by kind and result", ["kind", "result"], registry=r)
        self.wakes = Counter("wakegrid_wakes_total", "Wakes started, by service", ["service"], registry=r)
        self.boot_seconds = Histogram(
            "wakegrid_boot_seconds",
            "From a node's start step to the node seen up",
            ["node"],
            registry=r,
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300),
        )
        self.journal_bytes = Gauge("wakegrid_journal_bytes", "Size of the journal database", registry=r)
        self.fleet_valid = Gauge(
            "wakegrid_fleet_valid", "1 while the last fleet read was valid, 0 after a refused reload", registry=r
        )
        self.fleet_reloads = Counter(
            "wakegrid_fleet_reloads_total", "Fleet reloads by result (applied, refused)", ["result"], registry=r
        )
        self.journal_errors = Counter("wakegrid_journal_errors_total", "Journal writes that failed", registry=r)
        self.pool_pushes = Counter("wakegrid_caddy_pushes_total", "Route syncs pushed to Caddy", registry=r)
        self.fleet_valid.set(1)
