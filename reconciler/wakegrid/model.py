"""The fleet: one file that is both the Ansible inventory and the desired state.

``load_fleet(path)`` returns a validated :class:`Fleet` or raises
:class:`FleetError` listing *every* problem as ``path: reason`` with its line.
Validation runs in two passes: pydantic checks the shape and the formats of
each value, then :func:`_check_references` checks what spans several places
(references, hosting rules, the dependency DAG, uniqueness). The second pass
runs only on a well-formed file, since references cannot be followed in one
that is not.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from wakegrid.secret import Secret, walk_secrets
from wakegrid.yamlsource import YamlDocument, YamlSyntaxError, bulk_allocation, load_yaml

PLUGIN_NAME = "wakegrid.fleet.fleet"
NODE_KINDS = ("machine", "vm", "lxc", "container")
GUEST_KINDS = ("vm", "lxc")
# Group names the inventory plugin creates; a host or site may not take one.
RESERVED_GROUPS = frozenset(
    {
        "all",
        "ungrouped",
        "edge",
        "sites",
        "gateways",
        "machines",
        "vms",
        "lxcs",
        "containers",
        "proxmox_hosts",
        "docker_hosts",
        "wireguard",
        "wireguard_hub",
        "wireguard_spokes",
    }
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


# --------------------------------------------------------------------------- value types
# Each parser raises ValueError with the reason shown to the user; pydantic puts it
# at the right path.

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$)(\*\.)?({_LABEL}\.)*{_LABEL}$")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
_TOKEN_ID_RE = re.compile(r"^[^@!\s]+@[^@!\s]+![A-Za-z][A-Za-z0-9._-]*$")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name (letters, digits, '_', '.' and '-', starting with a letter or digit)"
        )
    return value


def _mac(value: Any) -> str:
    text = str(value).strip().lower()
    if not _MAC_RE.match(text):
        raise ValueError(f"{value!r} is not a MAC address (six hex pairs like 52:54:00:12:34:56)")
    return text.replace("-", ":")


def _ip(value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _interface(value: Any) -> str:
    text = str(value)
    if "/" not in text:
        raise ValueError(f"{value!r} needs a prefix length (like 10.200.0.1/24)")
    try:
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise ValueError(f"{value!r} is not an address with a prefix length") from None


def _network(value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network in CIDR form ({exc})") from None


def _ip_or_network(value: Any) -> str:
    """Allowlist entries: a plain IP means that one address."""
    text = str(value)
    if "/" in text:
        return _network(text)
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR network") from None


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port (an integer from 1 to 65535)")
    return value


def parse_duration(value: Any) -> float:
    """Seconds from ``20m``, ``1h30m``, ``500ms``, ``2s`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION_RE.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text):
            raise ValueError(f"{value!r} is not a duration (like 500ms, 2s, 20m, 1h30m)")
    else:
        raise ValueError(f"{value!r} is not a duration (like 500ms, 2s, 20m, 1h30m)")
    if seconds <= 0:
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not an IANA timezone (like Europe/Paris)")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r} (use an IANA name like Europe/Paris)") from None
    return value


def _hostname(value: Any) -> str:
    text = str(value).strip().lower().rstrip(".")
    if not _HOSTNAME_RE.match(text):
        raise ValueError(f"{value!r} is not a domain name")
    return text


def _time_of_day(value: Any) -> str:
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise ValueError(f"{value!r} is not a time of day (HH:MM, 00:00 to 24:00)")
    return value


def _days(value: Any) -> list[str]:
    """``[mon, tue]``, ``mon-fri``, ``[mon-wed, sat]`` or ``daily`` → ordered weekday names."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("days must be a non-empty list of weekdays (mon … sun, ranges like mon-fri, or daily)")
    days: list[str] = []
    for item in items:
        spec = str(item).strip().lower()
        first, _, last = (part.strip() for part in spec.partition("-"))
        if spec == "daily":
            chosen = list(WEEKDAYS)
        elif first in WEEKDAYS and (last in WEEKDAYS or not last):
            start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
            chosen = [WEEKDAYS[(start + i) % 7] for i in range((end - start) % 7 + 1)]
        else:
            raise ValueError(f"{item!r} is not a weekday or a range of weekdays (mon … sun, like mon-fri)")
        for day in chosen:
            if day in days:
                raise ValueError(f"{day} is given twice")
            days.append(day)
    return sorted(days, key=WEEKDAYS.index)


def _secret(value: Any, info: ValidationInfo) -> Secret:
    secret = Secret.parse(value)
    base_dir = (info.context or {}).get("base_dir")
    if secret.file and base_dir and not Path(secret.file).expanduser().is_absolute():
        # Relative secret files live beside the fleet file, wherever the command runs from.
        return Secret(file=str(Path(base_dir) / secret.file))
    return secret


Name = Annotated[str, BeforeValidator(_name)]
Mac = Annotated[str, BeforeValidator(_mac)]
IP = Annotated[str, BeforeValidator(_ip)]
Interface = Annotated[str, BeforeValidator(_interface)]
Network = Annotated[str, BeforeValidator(_network)]
AllowEntry = Annotated[str, BeforeValidator(_ip_or_network)]
Port = Annotated[int, BeforeValidator(_port)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
Timezone = Annotated[str, BeforeValidator(_timezone)]
Hostname = Annotated[str, BeforeValidator(_hostname)]
TimeOfDay = Annotated[str, BeforeValidator(_time_of_day)]
Days = Annotated[list[str], BeforeValidator(_days)]
SecretValue = Annotated[Secret, BeforeValidator(_secret), PlainSerializer(lambda s: f"<secret {s.source}>")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


# --------------------------------------------------------------------------- the schema


class Ssh(_Strict):
    user: str | None = None
    port: Port = 22
    private_key_file: str | None = None
    private_key: SecretValue | None = None


class Defaults(_Strict):
    ssh: Ssh = Ssh()


def _endpoint(value: Any) -> str:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r} must be host:port, like vps.example.net:51820")
    return str(value)


class EdgeWireGuard(_Strict):
    address: Interface
    port: Port = 51820
    endpoint: Annotated[str, BeforeValidator(_endpoint)] = Field(description="host:port the spokes dial")


class Edge(_Strict):
    host: Name
    address: str | None = None
    domain: Hostname
    ssh: Ssh | None = None
    wireguard: EdgeWireGuard


class SiteWireGuard(_Strict):
    address: Interface


class Site(_Strict):
    gateway: Name
    lan: Network | None = None
    priority: int = Field(100, ge=0)
    wireguard: SiteWireGuard


class Wol(_Strict):
    port: Port = 9
    broadcast: IP | None = None
    interface: str | None = None
    secureon: SecretValue | None = None


class Proxmox(_Strict):
    api: str = Field(pattern=r"^https?://[^/\s]+(:\d+)?/?$")
    node: Name | None = None
    token_id: str = Field(pattern=_TOKEN_ID_RE.pattern)
    token_secret: SecretValue
    verify_tls: bool = True
    # Corosync membership: machines naming the same cluster share quorum (and a vmid space).
    cluster: Name | None = None
    votes: int = Field(1, ge=0, description="this node's corosync votes (quorum_votes)")


class Cluster(_Strict):
    """A Proxmox cluster's quorum arrangement beyond its members' votes."""

    qdevice: Name | None = Field(None, description="the machine running corosync-qnetd: one extra vote while up")
    expected_votes: int | None = Field(None, ge=1, description="default: the members' votes plus the QDevice's")


def _path(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a file path")
    base_dir = (info.context or {}).get("base_dir")
    if base_dir and not Path(value).expanduser().is_absolute():
        return str(Path(base_dir) / value)  # beside the fleet file, as secret files
    return value


FilePath = Annotated[str, BeforeValidator(_path)]


class DockerApi(_Strict):
    api: str = Field(pattern=r"^(tcp|unix|ssh|https?)://\S+$")
    tls: bool = False
    # TLS verifies the server against `ca` (else the system CAs) unless tls_verify is false.
    tls_verify: bool = True
    ca: FilePath | None = None
    cert: FilePath | None = None
    key: SecretValue | None = None

    @model_validator(mode="after")
    def _tls_options(self) -> DockerApi:
        uses_tls = self.tls or self.api.startswith("https://")
        if not uses_tls:
            given = [name for name in ("ca", "cert", "key") if getattr(self, name) is not None]
            if "tls_verify" in self.model_fields_set:
                given.append("tls_verify")
            if given:
                raise ValueError(f"{', '.join(given)} need tls: true (a tcp:// API with TLS)")
        elif not self.api.startswith(("tcp://", "https://")):
            raise ValueError(f"tls applies to tcp:// APIs, not {self.api.split('://')[0]}://")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (the client certificate and its private key)")
        if self.ca is not None and not self.tls_verify:
            raise ValueError("ca is not used with tls_verify: false (nothing is verified)")
        return self


class Timeouts(_Strict):
    start: Duration = 300.0
    # Containers default to CONTAINER_STOP_TIMEOUT (their grace period before SIGKILL), see Node.
    stop: Duration = 180.0


CONTAINER_STOP_TIMEOUT = 30.0  # Docker's own 10 s before SIGKILL is too short for a database


class Node(_Strict):
    kind: Literal["machine", "vm", "lxc", "container"]
    parent: Name | None = None
    site: Name | None = None
    address: IP | None = None
    mac: Mac | None = None
    wol: Wol | None = None
    ssh: Ssh | None = None
    vmid: int | None = Field(None, ge=100, le=999_999_999)
    container: str | None = None
    proxmox: Proxmox | None = None
    docker: DockerApi | None = None
    confirm_shutdown: bool | None = None
    tags: list[str] = []
    timeouts: Timeouts = Timeouts()

    @model_validator(mode="before")
    @classmethod
    def _container_stop_timeout(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("kind") == "container":
            timeouts = data.get("timeouts")
            if timeouts is None:
                data = {**data, "timeouts": {"stop": CONTAINER_STOP_TIMEOUT}}
            elif isinstance(timeouts, dict) and "stop" not in timeouts:
                data = {**data, "timeouts": {**timeouts, "stop": CONTAINER_STOP_TIMEOUT}}
        return data


class Window(_Strict):
    days: Days
    start: TimeOfDay
    end: TimeOfDay


class Policy(_Strict):
    mode: Literal["always_on", "scheduled", "on_demand"] = "always_on"
    idle_after: Duration | None = None
    timezone: Timezone | None = None
    windows: list[Window] | None = None


class Health(_Strict):
    path: str = Field("/", pattern=r"^/\S*$")
    interval: Duration = 2.0
    timeout: Duration = 1.0
    passes: int = Field(1, ge=1)
    fails: int = Field(1, ge=1)
    status: int = Field(200, ge=100, le=599)


class Backend(_Strict):
    node: Name | None = None
    site: Name | None = None
    address: IP | None = None
    port: Port
    weight: int = Field(1, ge=1, le=100)
    tags: list[str] = []


class Service(_Strict):
    domain: Hostname
    policy: Policy = Policy()
    allow: list[AllowEntry] = []
    health: Health = Health()
    failover: list[Name] | None = Field(None, min_length=1, description="site order; by site priority when omitted")
    backends: list[Backend] = Field(min_length=1)


# A stack is deployed as a Compose project: its name follows Compose's rule for project names.
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_COMPOSE_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VARIABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _project(value: Any) -> str:
    if not isinstance(value, str) or not _PROJECT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a Compose project name (lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit)"
        )
    return value


def _compose_service(value: Any) -> str:
    if not isinstance(value, str) or not _COMPOSE_SERVICE_RE.match(value):
        raise ValueError(f"{value!r} is not a Compose service name (letters, digits, '_', '.' and '-')")
    return value


def _variable_value(value: Any) -> str:
    """Interpolation values are strings; a YAML number is taken as written, a boolean is ambiguous."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is a boolean; quote it (Compose variables are strings: 'true', '1', …)")
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError(f"{value!r} is not a string (Compose variables are strings)")


def _variables(value: Any) -> Any:
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or not _VARIABLE_RE.match(key):
                raise ValueError(f"{key!r} is not a variable name (letters, digits and '_', not starting with a digit)")
    return value


ProjectName = Annotated[str, BeforeValidator(_project)]
ComposeService = Annotated[str, BeforeValidator(_compose_service)]
VariableValue = Annotated[str, BeforeValidator(_variable_value)]


class StackBackend(_Strict):
    """A Compose service of the stack that is a backend of a fleet service, published on the stack's node."""

    service: Name = Field(description="the fleet service it backs")
    compose_service: ComposeService
    port: Port = Field(description="the port the Compose service publishes on the Docker host")


class Stack(_Strict):
    """A Compose file deployed as one project to the Docker API of a node (wakegrid.fleet.docker_stack)."""

    node: Name
    compose_file: FilePath
    project: ProjectName | None = Field(None, description="the Compose project name; default: the stack's name")
    env_files: list[FilePath] = Field([], description="dotenv files; default: the .env beside the Compose file")
    variables: Annotated[dict[str, VariableValue], BeforeValidator(_variables)] = {}
    # Interpolated like variables, but never shown: in no output, diff or error.
    secrets: Annotated[dict[str, SecretValue], BeforeValidator(_variables)] = {}
    images: list[FilePath] = Field([], description="image tarballs (docker save) loaded when the host lacks them")
    backends: list[StackBackend] = []


class Fleet(_Strict):
    plugin: Literal["wakegrid.fleet.fleet"] = PLUGIN_NAME
    # Options of Ansible's Constructable, read by the inventory plugin.
    compose: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    keyed_groups: list[dict[str, Any]] = []
    strict: bool = False
    leading_separator: bool = True
    use_extra_vars: bool = False

    defaults: Defaults = Defaults()
    edge: Edge
    sites: dict[Name, Site] = Field(min_length=1)
    nodes: dict[Name, Node] = {}
    dependencies: dict[Name, list[Name]] = {}
    services: dict[Name, Service] = {}
    stacks: dict[Name, Stack] = {}  # Compose projects deployed by playbooks/deploy_stack.yml
    clusters: dict[Name, Cluster] = {}  # Proxmox clusters named by nodes.*.proxmox.cluster
    lab: dict[str, Any] = {}

    # ---- the hosting tree (layer 1)

    def parent(self, name: str) -> str | None:
        return self.nodes[name].parent

    def children(self, name: str) -> list[str]:
        """Nodes hosted directly on ``name``, in file order."""
        return [child for child, node in self.nodes.items() if node.parent == name]

    def ancestors(self, name: str) -> list[str]:
        """From the top of the tree (a machine) down to the parent of ``name``.

        On an invalid fleet the walk stops before an unknown parent or a node seen
        twice (a hosting cycle), so it always ends; validation reports both.
        """
        chain: list[str] = []
        seen = {name}
        parent = self.nodes[name].parent
        while parent in self.nodes and parent not in seen:
            chain.append(parent)
            seen.add(parent)
            parent = self.nodes[parent].parent
        return chain[::-1]

    def descendants(self, name: str) -> list[str]:
        """Everything hosted below ``name``, deepest first (the order to stop them in)."""
        children: dict[str, list[str]] = {}
        for child, node in self.nodes.items():
            if node.parent is not None:
                children.setdefault(node.parent, []).append(child)
        # Iterative post-order (a deep tree would overflow the stack); ``seen`` ends hosting cycles.
        order: list[str] = []
        seen = {name}
        stack = [(name, iter(children.get(name, [])))]
        while stack:
            parent, pending = stack[-1]
            child = next((c for c in pending if c not in seen), None)
            if child is None:
                stack.pop()
                if stack:
                    order.append(parent)
                continue
            seen.add(child)
            stack.append((child, iter(children.get(child, []))))
        return order

    def machine_of(self, name: str) -> str:
        return ([*self.ancestors(name), name])[0]

    def site_of(self, name: str) -> str | None:
        return self.nodes[self.machine_of(name)].site

    def gateway_of(self, name: str) -> str | None:
        site = self.site_of(name)
        return self.sites[site].gateway if site in self.sites else None

    def wol_of(self, name: str) -> Wol:
        """Wake-on-LAN settings with defaults filled in: broadcast on the site LAN, else everywhere."""
        own = self.nodes[name].wol or Wol()
        if own.broadcast is not None:
            return own
        lan = self.sites[self.site_of(name)].lan if self.site_of(name) in self.sites else None
        broadcast = str(ipaddress.ip_network(lan).broadcast_address) if lan else "255.255.255.255"
        return own.model_copy(update={"broadcast": broadcast})

    def confirm_shutdown(self, name: str) -> bool:
        node = self.nodes[name]
        return node.kind == "machine" if node.confirm_shutdown is None else node.confirm_shutdown

    def ssh_of(self, name: str) -> Ssh:
        """The node's SSH settings, falling back to ``defaults.ssh`` field by field."""
        own = self.nodes[name].ssh if name in self.nodes else self.edge.ssh
        if own is None:
            return self.defaults.ssh
        merged = {field: getattr(self.defaults.ssh, field) for field in self.defaults.ssh.model_fields_set}
        merged.update({field: getattr(own, field) for field in own.model_fields_set})
        return Ssh(**merged)

    # ---- Proxmox clusters (quorum)

    def cluster_of(self, name: str) -> str | None:
        """The Proxmox cluster of a machine (by ``proxmox.cluster``), or of the machine hosting a guest."""
        machine = self.nodes.get(self.machine_of(name)) if name in self.nodes else None
        return machine.proxmox.cluster if machine is not None and machine.proxmox else None

    def cluster_members(self, cluster: str) -> dict[str, int]:
        """The machines of a cluster, in file order, with their votes."""
        return {
            name: node.proxmox.votes
            for name, node in self.nodes.items()
            if node.kind == "machine" and node.proxmox is not None and node.proxmox.cluster == cluster
        }

    # ---- the dependency graph (layer 2)

    def dependencies_of(self, name: str) -> list[str]:
        return list(self.dependencies.get(name, []))

    def dependants_of(self, name: str) -> list[str]:
        return [node for node, needs in self.dependencies.items() if name in needs]

    # ---- services

    def backend_site(self, backend: Backend) -> str | None:
        return backend.site or (self.site_of(backend.node) if backend.node in self.nodes else None)

    def backend_address(self, backend: Backend) -> str | None:
        """The backend's own address, else its node's; a container without one is reached
        on its Docker host's address (a published port)."""
        if backend.address:
            return backend.address
        node = self.nodes.get(backend.node) if backend.node is not None else None
        if node is None:
            return None
        if node.address is None and node.kind == "container" and node.parent in self.nodes:
            return self.nodes[node.parent].address
        return node.address

    def project_of(self, stack: str) -> str:
        """The Compose project a stack is deployed as: its ``project``, else its name."""
        return self.stacks[stack].project or stack

    def site_order(self, service: Service) -> list[str]:
        """Failover order of the service's sites: explicit, else by site priority then name."""
        if service.failover:
            return list(service.failover)
        used = {self.backend_site(b) for b in service.backends}
        return sorted((s for s in self.sites if s in used), key=lambda s: (self.sites[s].priority, s))


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class FleetError(ValueError):
    """The fleet is invalid; ``problems`` lists every one found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: invalid fleet, {count} problem{'s' if count != 1 else ''}:"]
        for problem in self.problems:
            where = f"{self.source}:{problem.line}: " if problem.line else f"{self.source}: "
            lines.append(f"  {where}{problem}")
        return "\n".join(lines)


def format_path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid mapping key: the key is already in the path
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_PYDANTIC_REASONS = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _reason(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _PYDANTIC_REASONS:
        return _PYDANTIC_REASONS[kind]
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "literal_error":
        return f"must be one of: {ctx.get('expected', '').replace(' or ', ', ')}".replace("'", "")
    if kind == "string_pattern_mismatch":
        return _PATTERN_HINTS.get(ctx.get("pattern", ""), f"does not match {ctx.get('pattern')}")
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return error["msg"].replace("Input should be", "must be")
    if kind == "too_short":
        return "must not be empty"
    return error["msg"]


_PATTERN_HINTS = {
    Proxmox.model_fields["api"].metadata[0].pattern: "must be the API URL, like https://192.168.1.2:8006",
    Proxmox.model_fields["token_id"].metadata[0].pattern: "must be a token id like root@pam!wakegrid",
    DockerApi.model_fields["api"].metadata[0].pattern: "must be a Docker API URL like tcp://192.168.1.21:2375",
    Health.model_fields["path"].metadata[0].pattern: "must be a URL path starting with /",
}


# --------------------------------------------------------------------------- loading


def load_fleet(path: str | Path) -> Fleet:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FleetError(str(path), [Problem("", f"cannot read the fleet file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise FleetError(str(path), [Problem("", "the fleet file is not UTF-8 text", line)]) from None
    return parse_fleet(text, source=str(path), base_dir=path.resolve().parent)


def parse_fleet(text: str, source: str = "<fleet>", base_dir: str | Path | None = None) -> Fleet:
    """Validate fleet YAML; relative secret files resolve against ``base_dir``."""
    try:
        document = load_yaml(text)
    except YamlSyntaxError as exc:
        raise FleetError(source, [Problem("", f"invalid YAML: {exc}", exc.line)]) from None
    return validate_document(document, source, base_dir)


def validate_document(document: YamlDocument, source: str, base_dir: str | Path | None = None) -> Fleet:
    problems = [
        Problem(format_path(path), f"duplicate key (first defined on line {first})", line)
        for path, line, first in document.duplicates
    ]
    if not isinstance(document.data, dict):
        problems.append(Problem("", "the fleet file must be a mapping (edge, sites, nodes, …)", 1))
        raise FleetError(source, problems)
    try:
        with bulk_allocation():
            fleet = Fleet.model_validate(document.data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            problems.append(Problem(format_path(loc), _reason(error), document.line_of(loc)))
        raise FleetError(source, problems) from None
    problems.extend(
        Problem(format_path(loc), reason, document.line_of(loc)) for loc, reason in _check_references(fleet)
    )
    if problems:
        raise FleetError(source, problems)
    for loc, secret in walk_secrets(fleet):
        secret.where = format_path(loc)  # errors and Ansible's lookup name a secret by where it is written
    return fleet


# --------------------------------------------------------------------------- cross-reference checks


Loc = tuple[str | int, ...]


def _check_references(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    yield from _check_names(fleet)
    yield from _check_sites(fleet)
    yield from _check_nodes(fleet)
    # Checks that follow a node's hosts upwards (a backend's site, a container's host address) run
    # only where that chain is intact: across an unknown parent or a cycle (reported above) the
    # answer would be wrong, not just unknown.
    tops = _tops(fleet)
    intact = {name for name, top in tops.items() if fleet.nodes[top].parent is None}
    yield from _check_dependencies(fleet)
    yield from _check_clusters(fleet)
    yield from _check_services(fleet, intact)
    yield from _check_stacks(fleet, intact)
    yield from _check_addresses(fleet)


def _check_names(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    if fleet.edge.host in fleet.nodes:
        yield ("edge", "host"), f"{fleet.edge.host!r} is also a node name"
    for name in fleet.nodes:
        if name in RESERVED_GROUPS:
            yield ("nodes", name), f"{name!r} is reserved for an inventory group"
        if name in fleet.sites:
            yield ("nodes", name), f"{name!r} is also a site name (sites become inventory groups)"
    for name in fleet.sites:
        if name in RESERVED_GROUPS:
            yield ("sites", name), f"{name!r} is reserved for an inventory group"
    if fleet.edge.host in RESERVED_GROUPS:
        yield ("edge", "host"), f"{fleet.edge.host!r} is reserved for an inventory group"


def _check_sites(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    for name, site in fleet.sites.items():
        gateway = fleet.nodes.get(site.gateway)
        if gateway is None:
            yield ("sites", name, "gateway"), f"unknown node {site.gateway!r}"
        elif gateway.kind != "machine":
            yield ("sites", name, "gateway"), f"{site.gateway!r} is {_a(gateway.kind)}; a gateway must be a machine"
        elif gateway.site != name:
            yield ("sites", name, "gateway"), f"{site.gateway!r} is not at site {name!r}"


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "lxc" else f"a {kind}"


def _check_nodes(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    vmids: dict[tuple[str, int], str] = {}
    tops = _tops(fleet)
    for name, node in fleet.nodes.items():
        at = ("nodes", name)
        if node.kind == "machine":
            if node.parent is not None:
                yield (*at, "parent"), "a machine has no parent (it is the top of a hosting tree)"
            if node.site is None:
                yield (*at, "site"), "required for a machine"
            elif node.site not in fleet.sites:
                yield (*at, "site"), f"unknown site {node.site!r}"
            if node.wol is not None and node.mac is None:
                yield (*at, "wol"), "Wake-on-LAN settings need the machine's mac"
        else:
            for field in ("mac", "wol"):
                if getattr(node, field) is not None:
                    yield (*at, field), f"only machines are woken by Wake-on-LAN, not {_a(node.kind)}"
            yield from _check_hosted(fleet, name, node, tops)
        if node.kind in GUEST_KINDS:
            if node.vmid is None:
                yield (*at, "vmid"), f"required for {_a(node.kind)}"
            elif node.parent in fleet.nodes:
                cluster = _proxmox_cluster(fleet, node.parent)
                other = vmids.setdefault((cluster, node.vmid), name)
                if other != name:
                    yield (*at, "vmid"), f"vmid {node.vmid} is already used by {other!r} on the same Proxmox"
        elif node.vmid is not None:
            yield (*at, "vmid"), f"only a vm or lxc has a vmid, not {_a(node.kind)}"
        if node.kind == "container":
            for field in ("proxmox", "docker"):
                if getattr(node, field) is not None:
                    yield (*at, field), "a container cannot host anything"
        elif node.container is not None:
            yield (*at, "container"), f"only a container node names a container, not {_a(node.kind)}"
        if node.kind != "machine" and node.proxmox is not None:
            yield (*at, "proxmox"), "only a machine can run Proxmox VE"
    yield from _check_hosting_cycles(fleet)


def _check_hosted(fleet: Fleet, name: str, node: Node, tops: dict[str, str]) -> Iterator[tuple[Loc, str]]:
    at = ("nodes", name)
    if node.parent is None:
        yield (*at, "parent"), f"required for {_a(node.kind)} (the node that hosts it)"
        return
    parent = fleet.nodes.get(node.parent)
    if parent is None:
        yield (*at, "parent"), f"unknown node {node.parent!r}"
        return
    if parent.kind == "container":
        yield (*at, "parent"), f"{node.parent!r} is a container; nothing can be hosted on a container"
    elif node.kind in GUEST_KINDS and parent.proxmox is None:
        yield (
            (*at, "parent"),
            f"{node.parent!r} has no proxmox capability ({_a(node.kind)} is started through its parent's Proxmox API)",
        )
    elif node.kind == "container" and parent.docker is None:
        yield (
            (*at, "parent"),
            (f"{node.parent!r} has no docker capability (a container is started through its parent's Docker API)"),
        )
    if node.site is not None:
        machine = fleet.nodes[tops[name]]
        top = machine.site if machine.kind == "machine" else None
        if node.site not in fleet.sites:
            yield (*at, "site"), f"unknown site {node.site!r}"
        elif top is not None and top != node.site:
            yield (*at, "site"), f"{name!r} is hosted at site {top!r}, not {node.site!r}"


def _tops(fleet: Fleet) -> dict[str, str]:
    """For every node, the last node reached going up its parents, tolerating broken trees
    (the walk stops before an unknown parent or a repeated node). Linear: each chain is walked once."""
    tops: dict[str, str] = {}
    for name in fleet.nodes:
        path: list[str] = []
        on_path: set[str] = set()
        current = name
        while current not in tops:
            path.append(current)
            on_path.add(current)
            parent = fleet.nodes[current].parent
            if parent not in fleet.nodes or parent in on_path:
                top = current
                break
            current = parent
        else:
            top = tops[current]
        for walked in path:
            tops[walked] = top
    return tops


def _proxmox_cluster(fleet: Fleet, machine: str) -> str:
    """Guests of one Proxmox cluster (or, outside a declared cluster, of one API) share a vmid space."""
    node = fleet.nodes[machine]
    if node.proxmox and node.proxmox.cluster:
        return f"cluster {node.proxmox.cluster}"
    return node.proxmox.api if node.proxmox else machine


def _check_clusters(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    for name, cluster in fleet.clusters.items():
        at = ("clusters", name)
        members = fleet.cluster_members(name)
        if not members:
            yield at, f"no Proxmox machine declares proxmox.cluster: {name}"
            continue
        qdevice = fleet.nodes.get(cluster.qdevice) if cluster.qdevice is not None else None
        if cluster.qdevice is not None:
            if qdevice is None:
                yield (*at, "qdevice"), f"unknown node {cluster.qdevice!r}"
            elif qdevice.kind != "machine":
                yield (*at, "qdevice"), f"{cluster.qdevice!r} is {_a(qdevice.kind)}; a QDevice runs on a machine"
            elif cluster.qdevice in members:
                yield (*at, "qdevice"), f"{cluster.qdevice!r} is a member of cluster {name!r}, not an outside witness"
        counted = sum(members.values()) + (1 if cluster.qdevice is not None else 0)
        if cluster.expected_votes is not None and cluster.expected_votes < counted:
            yield (
                (*at, "expected_votes"),
                f"{cluster.expected_votes} is fewer than the {counted} votes its members and QDevice cast",
            )


def hosting_cycles(fleet: Fleet) -> list[list[str]]:
    """Each cycle of parents, as names with the first repeated at the end, starting at the
    member that comes first in the file. Linear: each node is walked once."""
    order = {name: index for index, name in enumerate(fleet.nodes)}
    done: set[str] = set()
    cycles: list[list[str]] = []
    for name in fleet.nodes:
        path: dict[str, int] = {}
        current: str | None = name
        while current in fleet.nodes and current not in done and current not in path:
            path[current] = len(path)
            current = fleet.nodes[current].parent
        if current in path:
            ring = list(path)[path[current] :]
            first = min(range(len(ring)), key=lambda i: order[ring[i]])
            ring = ring[first:] + ring[:first]
            cycles.append([*ring, ring[0]])
        done.update(path)
    return sorted(cycles, key=lambda cycle: order[cycle[0]])


def _check_hosting_cycles(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    for cycle in hosting_cycles(fleet):
        yield ("nodes", cycle[0], "parent"), "hosting cycle: " + " -> ".join(cycle)


def _check_dependencies(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    for name, needs in fleet.dependencies.items():
        if name not in fleet.nodes:
            yield ("dependencies", name), f"unknown node {name!r}"
        first: dict[str, int] = {}
        for index, need in enumerate(needs):
            if need not in fleet.nodes:
                yield ("dependencies", name, index), f"unknown node {need!r}"
            elif need == name:
                yield ("dependencies", name, index), f"{name!r} cannot depend on itself"
            elif first.setdefault(need, index) != index:
                yield ("dependencies", name, index), f"{need!r} is listed twice"
    if not hosting_cycles(fleet):
        cycle = find_dependency_cycle(fleet)
        if cycle:
            cycle = _from_a_dependency(fleet, cycle)
            # At the dependency that closes the cycle, not at the node's whole list: in a block list
            # that is the line to change.
            index = fleet.dependencies.get(cycle[0], []).index(cycle[1])
            yield ("dependencies", cycle[0], index), "dependency cycle: " + " -> ".join(_describe_cycle(fleet, cycle))


def _from_a_dependency(fleet: Fleet, cycle: list[str]) -> list[str]:
    """Rotate the cycle to start with a dependency link (not a hosting one), so its path exists in the file."""
    ring = cycle[:-1]
    for index, name in enumerate(ring):
        if ring[(index + 1) % len(ring)] in fleet.dependencies.get(name, []):
            rotated = ring[index:] + ring[:index]
            return [*rotated, rotated[0]]
    raise AssertionError(f"a cycle of hosting links only is a hosting cycle: {cycle}")


def _describe_cycle(fleet: Fleet, cycle: list[str]) -> list[str]:
    """Spell out which links of the cycle are hosting ones (``x (hosted on)``)."""
    spelled = [cycle[0]]
    for a, b in itertools.pairwise(cycle):
        hosted = b == fleet.nodes[a].parent and b not in fleet.dependencies.get(a, [])
        spelled.append(f"{b} (host of {a})" if hosted else b)
    return spelled


def find_dependency_cycle(fleet: Fleet) -> list[str] | None:
    """A cycle of "must run before" links: dependencies, and hosts before what they host.

    Returned as node names with the first repeated at the end, or None. Assumes the
    hosting tree itself has no cycle.
    """

    def needs(name: str) -> list[str]:
        edges = [d for d in fleet.dependencies.get(name, []) if d in fleet.nodes and d != name]
        parent = fleet.nodes[name].parent
        if parent in fleet.nodes:
            edges.append(parent)
        return edges

    # Iterative depth-first search: a long chain of dependencies must not overflow the stack.
    done: set[str] = set()
    for root in [*fleet.dependencies, *fleet.nodes]:
        if root not in fleet.nodes or root in done:
            continue
        path: dict[str, int] = {root: 0}
        stack = [(root, iter(needs(root)))]
        while stack:
            name, pending = stack[-1]
            need = next((n for n in pending if n not in done), None)
            if need is None:
                stack.pop()
                del path[name]
                done.add(name)
            elif need in path:
                ring = [entry[0] for entry in stack[path[need] :]]
                return [*ring, need]
            else:
                path[need] = len(stack)
                stack.append((need, iter(needs(need))))
    return None


def _check_services(fleet: Fleet, intact: set[str]) -> Iterator[tuple[Loc, str]]:
    domains: dict[str, str] = {}
    for name, service in fleet.services.items():
        at = ("services", name)
        other = domains.setdefault(service.domain, name)
        if other != name:
            yield (*at, "domain"), f"domain {service.domain!r} is already used by service {other!r}"
        yield from _check_policy(service.policy, (*at, "policy"))
        for index, site in enumerate(service.failover or []):
            if site not in fleet.sites:
                yield (*at, "failover", index), f"unknown site {site!r}"
            elif (service.failover or []).index(site) != index:
                yield (*at, "failover", index), f"{site!r} is listed twice"
        endpoints: dict[tuple[str, int], int] = {}
        for index, backend in enumerate(service.backends):
            where = (*at, "backends", index)
            if backend.node is not None and backend.node not in fleet.nodes:
                yield (*where, "node"), f"unknown node {backend.node!r}"
                continue
            if backend.site is not None and backend.site not in fleet.sites:
                yield (*where, "site"), f"unknown site {backend.site!r}"
                continue
            if backend.node is None and backend.site is None:
                yield where, "cannot resolve the backend's site: give its node or its site"
                continue
            if backend.node is not None and backend.node not in intact:
                continue  # its site and address come from a broken hosting chain (reported above)
            if backend.node is not None and backend.site is not None:
                node_site = fleet.site_of(backend.node)
                if node_site != backend.site:
                    yield (*where, "site"), f"node {backend.node!r} is at site {node_site!r}, not {backend.site!r}"
            address = fleet.backend_address(backend)
            if address is None:
                yield where, _no_address(fleet, backend.node)
                continue
            first = endpoints.setdefault((address, backend.port), index)
            if first != index:
                yield where, f"{address}:{backend.port} is already backend [{first}]"


def _check_stacks(fleet: Fleet, intact: set[str]) -> Iterator[tuple[Loc, str]]:
    projects: dict[tuple[str, str], str] = {}
    for name, stack in fleet.stacks.items():
        at = ("stacks", name)
        node = fleet.nodes.get(stack.node)
        if node is None:
            yield (*at, "node"), f"unknown node {stack.node!r}"
        elif node.docker is None:
            yield (
                (*at, "node"),
                f"{stack.node!r} has no docker capability (a stack is deployed through its node's Docker API)",
            )
        if stack.project is None and not _PROJECT_RE.match(name):
            yield at, f"{name!r} is not a Compose project name (lower-case letters, digits, '_' and '-'): give project"
        else:
            other = projects.setdefault((stack.node, fleet.project_of(name)), name)
            if other != name:
                yield (
                    (*at, "project") if stack.project else at,
                    f"stack {other!r} is already Compose project {fleet.project_of(name)!r} on {stack.node!r}",
                )
        for variable in stack.secrets.keys() & stack.variables.keys():
            yield (*at, "secrets", variable), f"{variable} is also in variables (a value is either shown or secret)"
        seen: dict[tuple[str, str], int] = {}
        for index, backend in enumerate(stack.backends):
            where = (*at, "backends", index)
            service = fleet.services.get(backend.service)
            if service is None:
                yield (*where, "service"), f"unknown service {backend.service!r}"
                continue
            first = seen.setdefault((backend.service, backend.compose_service), index)
            if first != index:
                yield where, f"{backend.compose_service} backing {backend.service} is already backend [{first}]"
                continue
            if node is None or node.docker is None or stack.node not in intact:
                continue  # reported above, or its address comes from a broken hosting chain
            if not any(_is_stack_backend(fleet, b, stack.node, backend.port) for b in service.backends):
                yield (
                    (*where, "port"),
                    f"service {backend.service!r} has no backend at {stack.node!r} port {backend.port}; add "
                    f"{{node: {stack.node}, port: {backend.port}}} to services.{backend.service}.backends",
                )


def _is_stack_backend(fleet: Fleet, backend: Backend, node: str, port: int) -> bool:
    """Is ``backend`` the port a stack publishes on its Docker host ``node``?"""
    if backend.port != port:
        return False
    if backend.node == node:
        return True
    address = fleet.nodes[node].address
    return address is not None and backend.address == address


def _no_address(fleet: Fleet, name: str | None) -> str:
    """What the user can write to give a backend an address."""
    node = fleet.nodes[name] if name is not None else None
    if node is not None and node.kind == "container":
        return (
            f"no address: container {name!r} and its Docker host {node.parent!r} have none; give the backend an "
            f"address, or {node.parent!r} its address (a published port is reached there)"
        )
    return f"no address: node {name!r} has none; give the backend an address, or the node its address"


def _check_policy(policy: Policy, at: Loc) -> Iterator[tuple[Loc, str]]:
    if policy.mode != "on_demand" and policy.idle_after is not None:
        yield (*at, "idle_after"), "only for mode on_demand"
    if policy.mode != "scheduled":
        for field in ("timezone", "windows"):
            if getattr(policy, field) is not None:
                yield (*at, field), "only for mode scheduled"
        return
    if policy.timezone is None:
        yield (*at, "timezone"), "required for mode scheduled (an IANA name like Europe/Paris)"
    if not policy.windows:
        yield (*at, "windows"), "required for mode scheduled (at least one window)"
        return
    for index, window in enumerate(policy.windows):
        if window.start == window.end:
            yield (*at, "windows", index), f"empty window: start and end are both {window.start}"
        elif window.start == "24:00":
            yield (*at, "windows", index, "start"), "a window cannot start at 24:00 (use 00:00)"


def _check_addresses(fleet: Fleet) -> Iterator[tuple[Loc, str]]:
    owners: dict[str, str] = {}
    for name, node in fleet.nodes.items():
        if node.address is None:
            continue
        other = owners.setdefault(node.address, name)
        if other != name:
            yield ("nodes", name, "address"), f"{node.address} is already the address of {other!r}"
    macs: dict[str, str] = {}
    for name, node in fleet.nodes.items():
        if node.mac is None:
            continue
        other = macs.setdefault(node.mac, name)
        if other != name:
            yield ("nodes", name, "mac"), f"{node.mac} is already the MAC of {other!r}"
    tunnel = {str(ipaddress.ip_interface(fleet.edge.wireguard.address).ip): ("edge", "wireguard", "address")}
    for name, site in fleet.sites.items():
        ip = str(ipaddress.ip_interface(site.wireguard.address).ip)
        loc = ("sites", name, "wireguard", "address")
        if ip in tunnel:
            yield loc, f"{ip} is already used at {format_path(tunnel[ip])}"
        tunnel.setdefault(ip, loc)
