"""Activity per service, seen from Caddy on the edge, without any agent in the apps.

Two sources, both Caddy's own:

- **Metrics** from the admin endpoint (``GET /metrics``; a unix socket ``unix//PATH`` as
  the caddy_edge role sets it, or ``host:port``). With ``apps.http.metrics.per_host`` on,
  Caddy 2.11 labels ``caddy_http_requests_in_flight`` and ``caddy_http_requests_total``
  with ``server``, ``handler`` and ``host`` (modules/caddyhttp/metrics.go,
  ``initHTTPMetrics``: ``basicLabels`` gains ``host`` when ``PerHost``; seen with the real
  binary, v2.11.7: ``caddy_http_requests_in_flight{handler="reverse_proxy",host="a.test",
  server="wakegrid"} 2`` while two streams were open). What was found there:

  * the gauge counts a request from the moment a route takes it until the handler returns:
    an open stream or WebSocket is in flight for its whole life, while
    ``requests_total`` only counts it once it has ended;
  * the host label is the request's Host, lower-cased, port included when the client sent
    one; only hosts named in top-level route host matchers get their own label, other hosts
    are ``_other`` on plain-HTTP servers (``scanConfigForHosts``, ``shouldAllowHostMetrics``);
  * a route is instrumented once, under the name of its first handler; a request that
    several routes handle (an error route) is counted by each, so a service's figure is the
    largest over (server, handler), never their sum;
  * **a config load resets every HTTP metric**: each load gets a fresh registry
    (context.go, ``NewContext``: ``prometheus.NewPedanticRegistry()``). A stream open across
    a reload vanishes from the gauge and never reaches the counter, though it goes on. The
    observer therefore carries the in-flight count of the round before a reload (seen in
    ``caddy_config_last_reload_success_timestamp_seconds``) until the access log shows those
    requests ending (or ``carry_max`` passes; a Caddy restart ends them at once).

- **The access log**: a JSON-lines file Caddy writes when a request ends (``ts`` = its end,
  ``duration`` = its length). :class:`AccessLog` reads what was appended since the last
  round, a bounded number of bytes per call, and follows rotation (a new file at the path:
  the rest of the old one is read first) and truncation; an incomplete last line waits for
  the next read. Requests from monitoring (:class:`Monitoring`: user-agent regexes, client
  CIDRs, paths) do not count as activity; they do count in the metrics, which cannot tell.

The Caddy JSON this needs (the caddy_edge role's business; /tmp/team/caddy-activity-config.md)::

    "logging": {"logs": {"default": {"exclude": ["http.log.access"]},
                         "wakegrid_access": {"writer": {"output": "file", "filename": "/var/log/caddy/access.json",
                                                        "mode": "0640"},
                                             "encoder": {"format": "json"}, "include": ["http.log.access"]}}},
    "apps": {"http": {"metrics": {"per_host": true}, "servers": {"wakegrid": {"logs": {}, ...}}}}

Unknown is not down: when the metrics cannot be read, or the access log that was
configured cannot be, a service's ``in_flight`` is ``None`` and the detail says why;
nothing is then stopped for idleness.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from wakegrid.model import Fleet
from wakegrid.state import Activity

DEFAULT_ADMIN = "unix//run/caddy/admin.sock"  # the caddy_edge role's default (caddy_edge_admin)
DEFAULT_TIMEOUT = 2.0
DEFAULT_CARRY_MAX = timedelta(hours=6)  # how long requests open across a reload are assumed still open
MAX_METRICS_BYTES = 32 * 1024 * 1024
_IN_FLIGHT = "caddy_http_requests_in_flight"
_TOTAL = "caddy_http_requests_total"
_RELOADED = "caddy_config_last_reload_success_timestamp_seconds"
_STARTED = "process_start_time_seconds"
_WANTED_METRICS = (_IN_FLIGHT, _TOTAL, _RELOADED, _STARTED)


class MetricsError(Exception):
    """Caddy's metrics could not be read or do not say what is needed (safe to print)."""


class AccessLogError(Exception):
    """The access log could not be read (safe to print)."""


# --------------------------------------------------------------------------- hosts


def normalize_host(host: str) -> str:
    """``Stream.Example.net:8443`` → ``stream.example.net``; ``[::1]:443`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def service_hosts(fleet: Fleet, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Host → service: each service's domain, plus ``extra`` (e.g. the role's ``extra_domains``)."""
    hosts = {normalize_host(service.domain): name for name, service in fleet.services.items()}
    for host, service in (extra or {}).items():
        if service in fleet.services:
            hosts[normalize_host(host)] = service
    return hosts


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class CaddyMetrics:
    """What one read of Caddy's metrics says, per service."""

    requests_total: Mapping[str, int]  # requests ended since the last config load
    in_flight: Mapping[str, int]  # requests open now (as far as this config load saw them start)
    reloaded_at: float | None  # caddy_config_last_reload_success_timestamp_seconds
    started_at: float | None  # process_start_time_seconds: a new value means a new Caddy process


def parse_metrics(text: str, hosts: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """Service → (requests_total, in_flight) from Caddy's metrics text; every service of ``hosts`` is there."""
    parsed = _parse_metrics(text, hosts)
    return {service: (parsed.requests_total[service], parsed.in_flight[service]) for service in parsed.in_flight}


def _parse_metrics(text: str, hosts: Mapping[str, str]) -> CaddyMetrics:
    # Only the few families needed reach the (slow, pure Python) parser: with per-host
    # histograms the whole text runs to megabytes on a big edge.
    kept = "\n".join(line for line in text.splitlines() if _wanted(line))
    try:
        families = list(text_string_to_metric_families(kept + "\n"))
    except (ValueError, TypeError, IndexError) as error:
        raise MetricsError(f"not Prometheus text: {error}") from None
    services = set(hosts.values())
    groups: dict[str, dict[tuple[str, str], dict[str, float]]] = {_IN_FLIGHT: {}, _TOTAL: {}}
    scalars: dict[str, float] = {}
    unlabelled = False
    for family in families:
        for sample in family.samples:
            if sample.name in groups:
                host = sample.labels.get("host")
                if host is None:
                    unlabelled = True
                    continue
                service = hosts.get(normalize_host(host))
                if service is None:
                    continue
                group = groups[sample.name].setdefault(
                    (sample.labels.get("server", ""), sample.labels.get("handler", "")), {}
                )
                group[service] = group.get(service, 0.0) + sample.value
            elif sample.name in (_RELOADED, _STARTED):
                scalars[sample.name] = sample.value
    if unlabelled and not any(groups.values()):
        raise MetricsError(
            "Caddy's request metrics carry no host label: turn on per-host metrics (apps.http.metrics.per_host)"
        )

    def largest(name: str) -> dict[str, int]:
        return {s: int(max((g.get(s, 0.0) for g in groups[name].values()), default=0.0)) for s in sorted(services)}

    return CaddyMetrics(largest(_TOTAL), largest(_IN_FLIGHT), scalars.get(_RELOADED), scalars.get(_STARTED))


def _wanted(line: str) -> bool:
    if line.startswith("#"):
        parts = line.split(None, 3)
        return len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] in _WANTED_METRICS
    return line.startswith(_WANTED_METRICS)


def admin_transport(admin: str) -> tuple[httpx.AsyncHTTPTransport, str]:
    """An httpx transport and base URL for Caddy's admin address (``unix//PATH[|MODE]``, ``host:port``, ``http://…``)."""
    if admin.startswith("unix/"):
        path = admin[len("unix/") :].split("|", 1)[0]
        if not path.startswith("/"):
            raise MetricsError(f"admin socket path must be absolute: {admin}")
        # Caddy accepts any Host over a unix socket; 127.0.0.1 as the caddy_edge role uses.
        return httpx.AsyncHTTPTransport(uds=path), "http://127.0.0.1"
    if admin.startswith(("http://", "https://")):
        return httpx.AsyncHTTPTransport(), admin.rstrip("/")
    if re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}", admin):
        return httpx.AsyncHTTPTransport(), f"http://{admin}"
    raise MetricsError(f"not a Caddy admin address (unix//PATH or host:port): {admin!r}")


async def read_metrics(admin: str, hosts: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> CaddyMetrics:
    """Read and parse Caddy's metrics; :class:`MetricsError` with the reason when that fails."""
    transport, base = admin_transport(admin)
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(transport=transport, base_url=base, timeout=timeout, trust_env=False) as client,
        ):
            text = await _get_text(client, "/metrics")
            parsed = _parse_metrics(text, hosts)
            if _IN_FLIGHT not in text:  # no request metric since the last load: are they on at all?
                if parsed.reloaded_at is None:
                    raise MetricsError(f"{admin} serves no Caddy metrics at /metrics")
                if not await _per_host_on(client):
                    raise MetricsError("per-host metrics are off in Caddy (apps.http.metrics.per_host)")
            return parsed
    except TimeoutError:
        raise MetricsError(f"the admin endpoint {admin} did not answer within {timeout:g} s") from None
    except httpx.HTTPError as error:
        raise MetricsError(f"cannot reach the admin endpoint {admin}: {error or type(error).__name__}") from None
    except (ValueError, OSError) as error:
        raise MetricsError(f"unexpected answer from the admin endpoint {admin}: {error}") from None


async def _get_text(client: httpx.AsyncClient, path: str) -> str:
    async with client.stream("GET", path) as response:
        if response.status_code != 200:
            raise MetricsError(f"GET {path} answered {response.status_code}")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_METRICS_BYTES:
                raise MetricsError(f"GET {path} sent more than {MAX_METRICS_BYTES} bytes")
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


async def _per_host_on(client: httpx.AsyncClient) -> bool:
    """No request metric yet (none since the last load): is that because metrics are off?"""
    app_level = json.loads(await _get_text(client, "/config/apps/http/metrics") or "null")
    if isinstance(app_level, dict) and app_level.get("per_host"):
        return True
    servers = json.loads(await _get_text(client, "/config/apps/http/servers") or "null")  # deprecated per-server
    servers = servers if isinstance(servers, dict) else {}
    return any(
        isinstance(s, dict) and isinstance(s.get("metrics"), dict) and s["metrics"].get("per_host")
        for s in servers.values()
    )


# --------------------------------------------------------------------------- monitoring


@dataclass(frozen=True)
class Monitoring:
    """Requests that are not use: user-agent regexes (searched, case-insensitive), client CIDRs, and
    paths (a path matches itself and what is below it: ``/health`` matches ``/health/db``, not ``/healthz``)."""

    user_agents: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    _agents: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        agents = []
        for pattern in self.user_agents:
            try:
                agents.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise ValueError(f"monitoring user agent {pattern!r} is not a regular expression: {error}") from None
        networks = []
        for cidr in self.cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ValueError(f"monitoring source {cidr!r} is not an address or a CIDR") from None
        for path in self.paths:
            if not path.startswith("/"):
                raise ValueError(f"monitoring path {path!r} must start with /")
        object.__setattr__(self, "_agents", tuple(agents))
        object.__setattr__(self, "_networks", tuple(networks))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Monitoring:
        """From configuration: ``{user_agents: [...], cidrs: [...], paths: [...]}``; ValueError when invalid."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"user_agents", "cidrs", "paths"})
        if unknown:
            raise ValueError(f"monitoring: unknown key(s) {', '.join(unknown)} (user_agents, cidrs, paths)")
        values = {}
        for key in ("user_agents", "cidrs", "paths"):
            items = data.get(key) or []
            if isinstance(items, str) or not all(isinstance(item, str) for item in items):
                raise ValueError(f"monitoring.{key} must be a list of strings")
            values[key] = tuple(items)
        return cls(**values)

    def matches(self, client_ip: str | None, user_agent: str | None, path: str | None) -> bool:
        if user_agent and any(agent.search(user_agent) for agent in self._agents):
            return True
        if client_ip and self._networks:
            try:
                address = ipaddress.ip_address(client_ip)
            except ValueError:
                address = None
            if address is not None and any(address in network for network in self._networks):
                return True
        if path:
            return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)
        return False


# --------------------------------------------------------------------------- access log


@dataclass(frozen=True)
class Request:
    """One request of the access log (written when it ended)."""

    ended: datetime  # aware UTC
    started: datetime
    host: str  # normalized
    client_ip: str | None
    path: str
    user_agent: str | None


def parse_access_line(line: bytes | str) -> Request | None:
    """One JSON line of Caddy's access log, or None when it is not one (never raises)."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(entry, dict) or not str(entry.get("logger", "http.log.access")).startswith("http.log.access"):
        return None
    request = entry.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("host"), str):
        return None
    ended = _timestamp(entry.get("ts"))
    if ended is None:
        return None
    duration = entry.get("duration")
    seconds = float(duration) if isinstance(duration, int | float) and 0 <= duration < 10**9 else 0.0
    headers = request.get("headers") if isinstance(request.get("headers"), dict) else {}
    agents = headers.get("User-Agent")
    agent = agents[0] if isinstance(agents, list) and agents and isinstance(agents[0], str) else None
    client = request.get("client_ip") or request.get("remote_ip")
    uri = request.get("uri") if isinstance(request.get("uri"), str) else ""
    return Request(
        ended=ended,
        started=ended - timedelta(seconds=seconds),
        host=normalize_host(request["host"]),
        client_ip=client if isinstance(client, str) else None,
        path=uri.split("?", 1)[0],
        user_agent=agent,
    )


def _timestamp(value: object) -> datetime | None:
    """Caddy's JSON encoder writes ``ts`` as Unix seconds by default; ISO 8601 with another time_format."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


class AccessLog:
    """Reads the lines appended to a log file since the last :meth:`read`, a bounded number of bytes at a time.

    The first read starts near the end of the file (the last ``max_bytes`` at most). A new
    file at the path (rotation) is read from its start once the old one is finished; a file
    that shrank (truncation) is read again from its start. A line longer than
    ``max_line_bytes`` is skipped.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = 1024 * 1024, max_line_bytes: int = 64 * 1024):
        if max_bytes < 1 or max_line_bytes < 1:
            raise ValueError("max_bytes and max_line_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self.skipped = 0  # lines that were too long or not access-log JSON
        self.behind = False  # the last read stopped at max_bytes: more is waiting
        self._file: Any = None
        self._identity: tuple[int, int] | None = None
        self._partial = b""
        self._discarding = False  # inside a line that was too long
        self._opened_once = False
        self._lock = threading.Lock()  # a round given up on may leave its read running in a thread

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._identity, self._partial, self._discarding = None, None, b"", False

    def read(self) -> list[Request]:
        """The requests logged since the last read; :class:`AccessLogError` when the file cannot be read."""
        with self._lock:
            lines = self.read_lines()
        requests = []
        for line in lines:
            request = parse_access_line(line)
            if request is None:
                self.skipped += 1
            else:
                requests.append(request)
        return requests

    def read_lines(self) -> list[bytes]:
        budget = self.max_bytes
        lines: list[bytes] = []
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        except OSError as error:
            raise AccessLogError(f"cannot read {self.path}: {error.strerror or error}") from None
        if self._file is not None:
            if current is None or (current.st_dev, current.st_ino) != self._identity:
                data = self._file.read(budget)  # rotated or removed: the rest of the old file first
                budget -= len(data)
                lines += self._split(data)
                self.behind = budget <= 0
                if current is None or self.behind:
                    return lines  # keep the old file until a new one appears
                self.close()
            elif current is not None and current.st_size < self._file.tell():
                self._file.seek(0)  # truncated in place (copytruncate)
                self._partial, self._discarding = b"", False
        if current is None:
            raise AccessLogError(f"{self.path} does not exist (is Caddy's access log on?)")
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 (kept open between reads, on purpose)
            except OSError as error:
                raise AccessLogError(f"cannot read {self.path}: {error.strerror or error}") from None
            status = os.fstat(self._file.fileno())
            self._identity = (status.st_dev, status.st_ino)
            if not self._opened_once and status.st_size > budget:
                self._file.seek(status.st_size - budget)  # the recent past only, not the whole history
                self._discarding = True  # the first line read would be cut: skip it
            self._opened_once = True
        data = self._file.read(budget)
        self.behind = len(data) >= budget
        lines += self._split(data)
        return lines

    def _split(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        pieces = data.split(b"\n")
        pieces[0] = self._partial + pieces[0]
        self._partial = pieces.pop()
        lines = []
        for piece in pieces:
            if self._discarding:
                self._discarding = False
                self.skipped += 1
                continue
            if len(piece) > self.max_line_bytes:
                self.skipped += 1
                continue
            if piece.strip():
                lines.append(piece)
        if len(self._partial) > self.max_line_bytes:
            self._partial, self._discarding = b"", True
        return lines


def last_requests(
    requests: Iterable[Request], hosts: Mapping[str, str], monitoring: Monitoring = Monitoring()
) -> dict[str, datetime]:
    """Service → end of its latest request that is not monitoring."""
    latest: dict[str, datetime] = {}
    for request in requests:
        service = hosts.get(request.host)
        if service is None or monitoring.matches(request.client_ip, request.user_agent, request.path):
            continue
        if service not in latest or request.ended > latest[service]:
            latest[service] = request.ended
    return latest


# --------------------------------------------------------------------------- the observer


@dataclass
class _Carried:
    """Requests open when Caddy reloaded: no longer in the gauge, still open until the log shows them end."""

    count: int
    open_at: datetime  # they were in flight then (the round before the reload)
    since: datetime


class ActivityObserver:
    """Per round: in-flight requests from Caddy's metrics, last requests from its access log and :meth:`note`."""

    def __init__(
        self,
        admin: str | None = DEFAULT_ADMIN,
        *,
        access_log: str | os.PathLike[str] | AccessLog | None = None,
        monitoring: Monitoring = Monitoring(),
        timeout: float = DEFAULT_TIMEOUT,
        extra_hosts: Mapping[str, str] | None = None,
        carry_max: timedelta = DEFAULT_CARRY_MAX,
    ) -> None:
        self.admin = admin
        self.access_log = (
            access_log if isinstance(access_log, AccessLog) or access_log is None else AccessLog(access_log)
        )
        self.monitoring = monitoring
        self.timeout = timeout
        self.extra_hosts = dict(extra_hosts or {})
        self.carry_max = carry_max
        self._last: dict[str, datetime] = {}
        self._noted: dict[str, datetime] = {}
        self._previous: dict[str, int] = {}  # in flight reported last round
        self._previous_at: datetime | None = None
        self._reloaded_at: float | None = None
        self._started_at: float | None = None
        self._carried: dict[str, _Carried] = {}
        self._totals: dict[str, int] = {}

    def note(self, service: str, at: datetime) -> None:
        """Activity reported from elsewhere (``POST /api/activity/{service}``, a wake request)."""
        if at.tzinfo is None:
            raise ValueError("activity times must be aware (UTC)")
        at = at.astimezone(UTC)
        if service not in self._noted or at > self._noted[service]:
            self._noted[service] = at

    async def round(self, fleet: Fleet, now: datetime | None = None) -> dict[str, Activity]:
        """Each service's activity (fleet order)."""
        now = now or datetime.now(UTC)
        hosts = service_hosts(fleet, self.extra_hosts)
        metrics: CaddyMetrics | None = None
        metrics_error = "no Caddy admin endpoint configured"
        if self.admin is not None:
            try:
                metrics = await read_metrics(self.admin, hosts, self.timeout)
            except MetricsError as error:
                metrics_error = f"Caddy metrics unreadable: {error}"
        log_error: str | None = None
        requests: list[Request] = []
        if self.access_log is not None:
            try:
                requests = await asyncio.to_thread(self.access_log.read)
            except AccessLogError as error:
                log_error = f"access log unreadable: {error}"

        seen = last_requests(requests, hosts, self.monitoring)
        if self.access_log is None and metrics is not None:
            seen = self._from_counters(metrics, now)
        for service, at in [*seen.items(), *self._noted.items()]:
            at = min(at, now)  # a clock ahead must not keep a service awake for ever
            if service in fleet.services and (service not in self._last or at > self._last[service]):
                self._last[service] = at
        self._noted.clear()
        if metrics is not None:
            self._follow_reloads(metrics, requests, hosts, now)

        result: dict[str, Activity] = {}
        in_flight: dict[str, int] = {}
        for service in fleet.services:
            last = self._last.get(service)
            when = f"last request {last.strftime('%Y-%m-%d %H:%M:%S')} UTC" if last else "no request seen"
            if metrics is None:
                result[service] = Activity(None, last, f"{metrics_error}; {when}")
                continue
            carried = self._carried.get(service)
            open_now = in_flight[service] = metrics.in_flight.get(service, 0) + (carried.count if carried else 0)
            count = f"{open_now} request{'s' if open_now != 1 else ''} in flight"
            if carried:
                count += f" ({carried.count} open across Caddy's reload at {carried.since.strftime('%H:%M:%S')} UTC)"
            if log_error is not None:  # the last request is not known: not idle either
                result[service] = Activity(None, last, f"{log_error}; {count}; {when}")
            else:
                result[service] = Activity(open_now, last, f"{count}; {when}")
        if metrics is not None:
            self._previous, self._previous_at = in_flight, now
        for memory in (self._last, self._carried, self._totals):
            for gone in [s for s in memory if s not in fleet.services]:
                del memory[gone]  # a service removed from the fleet (reload)
        return result

    def _from_counters(self, metrics: CaddyMetrics, now: datetime) -> dict[str, datetime]:
        """Without an access log: a service whose request counter moved had a request (monitoring included)."""
        seen = {}
        for service, total in metrics.requests_total.items():
            before = self._totals.get(service)
            if before is not None and total != before and total > 0:
                seen[service] = now  # more requests, or a reset (reload) after which some came
            self._totals[service] = total
        return seen

    def _follow_reloads(
        self, metrics: CaddyMetrics, requests: list[Request], hosts: Mapping[str, str], now: datetime
    ) -> None:
        restarted = self._started_at is not None and metrics.started_at != self._started_at
        reloaded = self._reloaded_at is not None and metrics.reloaded_at != self._reloaded_at
        self._started_at, self._reloaded_at = metrics.started_at, metrics.reloaded_at
        if restarted:
            self._carried.clear()  # a new Caddy process: whatever was open is gone
        elif reloaded and self._previous_at is not None:
            for service, count in self._previous.items():
                if count > 0:
                    self._carried[service] = _Carried(count, self._previous_at, now)
        for request in requests:
            service = hosts.get(request.host)
            carried = self._carried.get(service) if service else None
            if carried and request.started <= carried.open_at <= request.ended:
                carried.count -= 1  # one of those open at the reload has ended
        for service in [s for s, c in self._carried.items() if c.count <= 0 or now - c.since > self.carry_max]:
            del self._carried[service]
