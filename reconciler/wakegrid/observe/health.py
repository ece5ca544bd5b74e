"""Probe every backend's HTTP health, with the hysteresis of the service's ``health`` settings.

A backend is probed with ``GET http://{address}:{port}{health.path}`` at the address the
edge uses (:meth:`wakegrid.model.Fleet.backend_address`); the probe passes when the status
line says ``health.status`` within ``health.timeout``. A backend's state flips to ``up``
after ``passes`` consecutive passes and to ``down`` after ``fails`` consecutive fails;
until its first flip it is ``unknown`` ("1 of 2 passes"). **Unknown is not down.**

- A backend whose node is observed down is not probed: it is ``down`` ("node jellyfin
  asleep: not probed") and its counters start again, so a woken node needs its ``passes``.
- A node whose power is unknown (or not observed) does not stop the probe: the probe says
  more than the power reading does.
- A backend without an address cannot be probed: ``unknown``.

The probe is a bare HTTP/1.1 request on an asyncio stream that reads only the status line,
not httpx: one round over 2,000 loopback backends took 2.3 s with ``httpx.AsyncClient`` and
0.5 s this way (tests/bench/health.py, 2 CPUs). It never goes through a proxy from the
environment, and each probe is bounded as a whole (connect, send, first line) by
``health.timeout``; a semaphore bounds how many run at once.

Counters live in the :class:`HealthObserver` between rounds, keyed by (service, backend
index) and by what is probed: a backend whose address, port, path or expected status
changed starts again, and a service removed from the fleet (a reload) drops its counters.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from wakegrid.model import Backend, Fleet, Service
from wakegrid.observe.power import PowerState
from wakegrid.state import Health, Reading

DEFAULT_CONCURRENCY = 256  # probes at once: a few hundred sockets, far below the usual fd limits
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r?\n|$)")
_MAX_STATUS_LINE = 4096  # an answer whose first line is longer is not HTTP


@dataclass(frozen=True)
class Probe:
    """One probe's outcome: passed or not, and what was seen ("200 in 12 ms", "connection refused")."""

    passed: bool
    detail: str


@dataclass(frozen=True)
class _Target:
    """What a backend's counters are about: when it changes, they start again."""

    address: str
    port: int
    path: str
    status: int
    timeout: float


@dataclass
class _Counter:
    target: _Target
    state: Reading = "unknown"
    passes: int = 0
    fails: int = 0


def _host_header(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def probe(address: str, port: int, path: str, expected: int, timeout: float) -> Probe:
    """``GET path`` at ``address:port``: passed when the status line says ``expected`` within ``timeout``."""
    started = time.monotonic()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port, limit=_MAX_STATUS_LINE)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {_host_header(address, port)}\r\n"
                "User-Agent: wakegrid-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode("ascii", "replace"))
            await writer.drain()
            first_line = await reader.readline()
    except TimeoutError:
        return Probe(False, f"timed out after {timeout:g} s")
    except ConnectionRefusedError:
        return Probe(False, "connection refused")
    except ConnectionResetError:
        return Probe(False, "connection reset without an answer")
    except (ValueError, asyncio.LimitOverrunError):
        return Probe(False, "not an HTTP answer (first line too long)")
    except OSError as error:
        phase = "cannot connect" if writer is None else "connection failed"
        return Probe(False, f"{phase}: {error.strerror or error}")
    finally:
        if writer is not None:
            writer.close()  # no wait_closed(): a peer that never closes must not hold the round
    elapsed_ms = (time.monotonic() - started) * 1000
    match = _STATUS_LINE.match(first_line)
    if not first_line:
        return Probe(False, "connection closed without an answer")
    if match is None:
        return Probe(False, "not an HTTP answer")
    status = int(match.group(1))
    if status != expected:
        return Probe(False, f"{status} in {elapsed_ms:.0f} ms, expected {expected}")
    return Probe(True, f"{status} in {elapsed_ms:.0f} ms")


class HealthObserver:
    """Probes every backend of a fleet once per :meth:`round` and keeps the hysteresis counters."""

    def __init__(self, *, concurrency: int = DEFAULT_CONCURRENCY) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        self._counters: dict[tuple[str, int], _Counter] = {}

    async def round(self, fleet: Fleet, power: Mapping[str, PowerState]) -> dict[tuple[str, int], Health]:
        """Probe the backends, update the counters, and return each backend's health (fleet order)."""
        semaphore = asyncio.Semaphore(self.concurrency)
        results: dict[tuple[str, int], Health] = {}
        pending: dict[tuple[str, int], asyncio.Task[Probe]] = {}
        current: set[tuple[str, int]] = set()

        async def bounded(target: _Target) -> Probe:
            async with semaphore:
                return await probe(target.address, target.port, target.path, target.status, target.timeout)

        for service_name, service in fleet.services.items():
            for index, backend in enumerate(service.backends):
                key = (service_name, index)
                current.add(key)
                target = _target(fleet, service, backend)
                if target is None:
                    self._counters.pop(key, None)
                    results[key] = Health("unknown", "no address to probe (neither the backend nor its node has one)")
                    continue
                counter = self._counters.get(key)
                if counter is None or counter.target != target:
                    counter = self._counters[key] = _Counter(target)
                node_power = power.get(backend.node) if backend.node is not None else None
                if node_power is not None and node_power.power == "down":
                    counter.state, counter.passes, counter.fails = "down", 0, 0
                    results[key] = Health("down", f"node {backend.node} asleep: not probed ({node_power.detail})")
                    continue
                pending[key] = asyncio.ensure_future(bounded(target))
                results[key] = Health("unknown", "not probed yet")  # keeps fleet order; replaced below

        for key in [key for key in self._counters if key not in current]:
            del self._counters[key]  # a service or backend gone from the fleet

        if pending:
            probes = await asyncio.gather(*pending.values())
            for key, outcome in zip(pending, probes, strict=True):
                service = fleet.services[key[0]]
                results[key] = self._count(self._counters[key], outcome, service)
        return results

    @staticmethod
    def _count(counter: _Counter, outcome: Probe, service: Service) -> Health:
        needed_passes, needed_fails = service.health.passes, service.health.fails
        if outcome.passed:
            counter.passes, counter.fails = counter.passes + 1, 0
            if counter.passes >= needed_passes:
                counter.state = "up"
            elif counter.state != "up":
                return Health(counter.state, f"{outcome.detail} ({counter.passes} of {needed_passes} passes)")
            return Health(counter.state, outcome.detail)
        counter.fails, counter.passes = counter.fails + 1, 0
        if counter.fails >= needed_fails:
            counter.state = "down"
            if counter.fails > needed_fails:
                return Health("down", f"{outcome.detail} ({counter.fails} fails in a row)")
            count = f" ({counter.fails} of {needed_fails} fails)" if needed_fails > 1 else ""
            return Health("down", f"{outcome.detail}{count}")
        note = "; still up" if counter.state == "up" else ""
        return Health(counter.state, f"{outcome.detail} ({counter.fails} of {needed_fails} fails{note})")


def _target(fleet: Fleet, service: Service, backend: Backend) -> _Target | None:
    address = fleet.backend_address(backend)
    if address is None:
        return None
    health = service.health
    return _Target(address, backend.port, health.path, health.status, float(health.timeout))
