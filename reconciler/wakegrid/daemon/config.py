"""The daemon's own settings (``--config FILE``): where it listens, how often it looks, what it reads on the edge.

Everything has a default that fits the daemon's natural home, the edge host (Caddy's admin
socket, Caddy's access log, the hub's ``wg0``), so a daemon on the edge runs with no config
file at all. An invalid file is refused whole, each problem as ``file:line: path: reason``,
like the fleet file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from wakegrid.model import FilePath, Problem, SecretValue, _reason, format_path, parse_duration
from wakegrid.observe.activity import Monitoring as ActivityMonitoring
from wakegrid.web.chain import networks
from wakegrid.yamlsource import YamlSyntaxError, load_yaml

Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _listen(value: Any) -> str:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} must be host:port, like 127.0.0.1:9380")
    return str(value)


class Caddy(_Strict):
    # As the caddy_edge role configures it (caddy_edge_admin, caddy_edge_access_log).
    admin: str = "unix//run/caddy/admin.sock"
    access_log: str | None = "/var/log/caddy/access.log"
    timeout: Duration = 2.0


class WireGuard(_Strict):
    # `wg show <interface> dump` on the hub; a command of your own when the daemon runs elsewhere
    # (e.g. ["ssh", "vps", "wg", "show", "wg0", "dump"]).
    command: list[str] = Field(default_factory=lambda: ["wg", "show", "wg0", "dump"], min_length=1)
    # WireGuard re-handshakes every 2 minutes while traffic flows (REKEY_AFTER_TIME); a peer silent
    # for longer than this has lost its tunnel.
    stale_after: Duration = 180.0
    timeout: Duration = 3.0


class Monitoring(_Strict):
    """Requests that are not use: uptime checkers and the like never keep a service awake.

    User agents are regular expressions searched case-insensitively; paths match themselves and
    what is below them.
    """

    user_agents: list[str] = Field(
        default_factory=lambda: ["uptime-?kuma", "gatus", "blackbox", "pingdom", "statuscake", "healthcheck"]
    )
    cidrs: list[str] = []
    paths: list[str] = []

    @model_validator(mode="after")
    def _valid(self) -> Monitoring:
        ActivityMonitoring.from_mapping(self.model_dump())  # bad regex, CIDR or path: ValueError, said where
        return self


class Journal(_Strict):
    keep_days: float = Field(30.0, gt=0)
    keep_rows: int = Field(200_000, ge=1000)


def _networks(value: Any) -> Any:
    if isinstance(value, list):
        networks(value)  # an entry that is neither an address nor a CIDR: ValueError naming it
    return value


class WakeRate(_Strict):
    """How many wakes one end-user client may ask for: ``requests`` per ``per``, refilled steadily."""

    requests: int = Field(120, ge=1, le=100_000)
    per: Duration = Field(60.0, le=86400.0)


class Admin(_Strict):
    """Who may use the API, the dashboard, the docs and the metrics (docs/security.md)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # A secret exactly as in the fleet: a string, {env: VAR}, {file: PATH} (beside this file when
    # relative) or !vault. None: every admin request is refused; the wake path is unaffected.
    token: SecretValue | None = None
    # /api, /admin, /docs, /redoc, /openapi.json and /metrics answer only clients in these (addresses or
    # CIDRs), whatever their token: 403 to anyone else. Empty: nobody.
    networks: Annotated[list[str], BeforeValidator(_networks)] = Field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    # True: reads (GET) from inside the networks need no token; changes always do.
    anonymous_read: bool = False
    wake_rate: WakeRate = WakeRate()
    session_ttl: Duration = Field(12 * 3600.0, le=30 * 86400.0)

    @model_validator(mode="after")
    def _name_the_token(self) -> Admin:
        if self.token is not None:
            self.token.where = "admin.token"  # a token that cannot be read is named, never shown
        return self


class Tls(_Strict):
    """The daemon serves HTTPS with this certificate (PEM, chain first) and its unencrypted key."""

    cert: FilePath
    key: FilePath


class DaemonConfig(_Strict):
    listen: Annotated[str, BeforeValidator(_listen)] = "127.0.0.1:9380"
    # The wake path (docs/wake-on-demand.md): the X-Wakegrid-* headers are trusted only from these
    # peers (addresses or CIDRs) — the edge's Caddy, which sets them and removes any a client sent.
    edge_addresses: Annotated[list[str], BeforeValidator(_networks)] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"], min_length=1
    )
    # A held API request waits this long for its service, then gets 503 + Retry-After. The edge's
    # fallback timeout must be longer (caddy_edge: 150 s for the default 120 s).
    hold_timeout: Duration = Field(120.0, gt=0)
    # A held request's body is kept in memory until it is delivered: larger ones get 413.
    max_held_body: int = Field(10 * 1024 * 1024, ge=0)
    # A delivered request: how long the backend may take to answer (and between two chunks).
    forward_timeout: Duration = Field(60.0, gt=0)
    # One round: observe everything, decide, act. A round never overlaps the previous one.
    interval: Duration = 5.0
    housekeeping_interval: Duration = 3600.0
    max_parallel_runs: int = Field(4, ge=1, le=64)
    # A wake or shutdown run may take the sum of its steps' timeouts; past this it is cancelled.
    run_timeout: Duration = 1800.0
    # SIGTERM: runs in flight may finish for this long, then are cancelled and journaled as interrupted.
    stop_grace: Duration = 30.0
    probe_timeout: Duration = 1.0  # SSH-port probe of a machine
    api_timeout: Duration = 10.0  # a Proxmox or Docker API call
    caddy: Caddy = Caddy()
    wireguard: WireGuard = WireGuard()
    monitoring: Monitoring = Monitoring()
    journal: Journal = Journal()
    log_format: Literal["json", "text"] = "json"
    admin: Admin = Admin()
    tls: Tls | None = None


class ConfigError(ValueError):
    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid daemon config, {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
        lines += [f"  {source}:{p.line}: {p}" if p.line else f"  {source}: {p}" for p in problems]
        super().__init__("\n".join(lines))


def load_config(path: str | Path | None) -> DaemonConfig:
    """The settings in ``path``; the defaults when ``path`` is None."""
    if path is None:
        return DaemonConfig()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            source, [Problem("", f"cannot read the config file: {getattr(exc, 'strerror', exc)}")]
        ) from None
    try:
        document = load_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError(source, [Problem("", f"invalid YAML: {exc}", exc.line)]) from None
    data = document.data if document.data is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem("", "the config file must be a mapping (listen, interval, caddy, …)", 1)])
    try:
        # Relative secret files and TLS paths are read beside the config file, as the fleet's are.
        return DaemonConfig.model_validate(data, context={"base_dir": Path(path).resolve().parent})
    except ValidationError as exc:
        problems = [
            Problem(format_path(tuple(e["loc"])), _reason(e), document.line_of(tuple(e["loc"]))) for e in exc.errors()
        ]
        raise ConfigError(source, problems) from None
