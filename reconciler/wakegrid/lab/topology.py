"""Fleet → lab topology, as pure data: which networks, containers, addresses, files.

Nothing here touches Docker, the disk or the clock: :func:`plan_lab` turns a
validated :class:`~wakegrid.model.Fleet` (plus the few values only the shell
knows, such as the lab's SSH public key) into a :class:`LabPlan` that the shell
(:mod:`wakegrid.lab.runtime`) applies. The ``lab:`` section of the fleet is
validated here; problems are reported as ``lab.<key>: reason``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wakegrid import quorum
from wakegrid.lab import dind
from wakegrid.model import Fleet, parse_duration

LABEL = "wakegrid.lab"  # every Docker object of a lab carries LABEL=<lab name>
STATE_ROOT = "/var/lib/wakegrid-lab"
OPT = "/opt/wakegrid-lab"  # where lab helpers are copied inside lab hosts
ETC = "/etc/wakegrid-lab"
DOCKER_SOCKET = "/var/run/docker.sock"
SYSTEMD_RUN = {"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec"}
# Enough for systemd as PID 1 without --privileged (verified on these hosts).
SYSTEMD_CAPS = ("SYS_ADMIN",)
_LAB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class LabConfigError(ValueError):
    """The fleet cannot be built as a lab; ``problems`` are ``path: reason`` strings."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the fleet cannot be built as a lab:\n" + "\n".join(f"  {p}" for p in problems))


# --------------------------------------------------------------------------- the `lab:` section


@dataclass(frozen=True)
class NodeLab:
    boot_delay: float
    power: bool  # powered on when the lab first creates it


@dataclass(frozen=True)
class LabConfig:
    name: str
    state_dir: str
    suite: str
    mirror: str
    wan: str
    wan_host: str
    wan_addresses: dict[str, str]  # gateway node → its WAN address
    clients: str
    clients_host: str
    edge_client_address: str
    client_name: str
    client_address: str
    bridge_hosts: dict[str, str]  # site → the host's own address on that LAN
    listeners: dict[str, str]  # site → the WoL listener's address
    nodes: dict[str, NodeLab]
    inner_image: str | None  # None = the lab host image


_TOP_KEYS = {"name", "state_dir", "image", "wan", "clients", "sites", "boot_delay", "nodes"}


def lab_name_for(fleet_path: str | Path) -> str:
    """``inventories/lab/lab.fleet.yml`` → ``lab``: the default lab name."""
    stem = Path(fleet_path).name.split(".")[0].lower()
    return re.sub(r"[^a-z0-9-]", "-", stem) or "lab"


def parse_lab_config(fleet: Fleet, fleet_path: str | Path = "lab.fleet.yml") -> LabConfig:
    """Validate ``fleet.lab`` against the fleet; raise LabConfigError listing every problem."""
    raw = fleet.lab or {}
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise LabConfigError(["lab: must be a mapping"])
    for key in raw:
        if key not in _TOP_KEYS:
            problems.append(f"lab.{key}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")

    name = raw.get("name", lab_name_for(fleet_path))
    if not isinstance(name, str) or not _LAB_NAME_RE.match(name):
        problems.append(f"lab.name: {name!r} must be lower-case letters, digits and '-' (at most 31)")
        name = "lab"
    state_dir = str(raw.get("state_dir", f"{STATE_ROOT}/{name}"))
    if not state_dir.startswith("/"):
        problems.append(f"lab.state_dir: {state_dir!r} must be an absolute path")

    image = _mapping(raw, "image", problems)
    _unknown(image, {"suite", "mirror", "inner"}, "lab.image", problems)
    suite = str(image.get("suite", "bookworm"))
    mirror = str(image.get("mirror", "http://deb.debian.org/debian"))
    inner_image = image.get("inner")

    # The WAN: the edge's address lives on it; gateways get the next free ones.
    wan_raw = _mapping(raw, "wan", problems)
    _unknown(wan_raw, {"subnet", "host", "addresses"}, "lab.wan", problems)
    if fleet.edge.address is None:
        problems.append("edge.address: required in a lab (the edge's address on the lab WAN)")
        edge_ip = None
    else:
        edge_ip = _ip(fleet.edge.address, "edge.address", problems)
    default_wan = str(ipaddress.ip_network(f"{edge_ip}/24", strict=False)) if edge_ip else "10.231.0.0/24"
    wan = _net(wan_raw.get("subnet", default_wan), "lab.wan.subnet", problems)
    wan_host = _host_address(wan, wan_raw.get("host"), "lab.wan.host", problems)
    if edge_ip and wan and ipaddress.ip_address(edge_ip) not in ipaddress.ip_network(wan):
        problems.append(f"edge.address: {edge_ip} is outside the lab WAN {wan} (lab.wan.subnet)")
    explicit = _mapping(wan_raw, "addresses", problems, "lab.wan")
    wan_addresses: dict[str, str] = {}
    taken = {edge_ip, wan_host}
    for gw in explicit:
        if gw not in {s.gateway for s in fleet.sites.values()}:
            problems.append(f"lab.wan.addresses.{gw}: not the gateway of any site")
            continue
        ip = _ip(explicit[gw], f"lab.wan.addresses.{gw}", problems)
        if ip and wan and ipaddress.ip_address(ip) not in ipaddress.ip_network(wan):
            problems.append(f"lab.wan.addresses.{gw}: {ip} is outside the lab WAN {wan}")
        elif ip in taken:
            problems.append(f"lab.wan.addresses.{gw}: {ip} is already used on the lab WAN")
        elif ip:
            wan_addresses[gw] = ip
            taken.add(ip)
    if wan:
        free = (str(h) for h in ipaddress.ip_network(wan).hosts() if str(h) not in taken)
        for site in fleet.sites.values():
            if site.gateway not in wan_addresses:
                wan_addresses[site.gateway] = next(free, None) or _full(f"lab.wan.subnet {wan}", problems)

    clients_raw = _mapping(raw, "clients", problems)
    _unknown(clients_raw, {"subnet", "host", "edge", "name", "address"}, "lab.clients", problems)
    clients = _net(clients_raw.get("subnet", "10.231.255.0/24"), "lab.clients.subnet", problems)
    clients_host = _host_address(clients, clients_raw.get("host"), "lab.clients.host", problems)
    hosts = list(ipaddress.ip_network(clients).hosts()) if clients else []
    edge_client = _ip(clients_raw.get("edge", hosts[1] if hosts else ""), "lab.clients.edge", problems)
    client_address = _ip(
        clients_raw.get("address", hosts[9] if len(hosts) > 9 else ""), "lab.clients.address", problems
    )
    client_name = str(clients_raw.get("name", "client"))
    if client_name in fleet.nodes or client_name == fleet.edge.host:
        problems.append(f"lab.clients.name: {client_name!r} is already a node of the fleet")

    # Each site needs a LAN in a lab; the host takes the last address, the
    # WoL listener the one before, unless the fleet says otherwise.
    sites_raw = _mapping(raw, "sites", problems)
    bridge_hosts: dict[str, str] = {}
    listeners: dict[str, str] = {}
    for site_name in sites_raw:
        if site_name not in fleet.sites:
            problems.append(f"lab.sites.{site_name}: unknown site")
    for site_name, site in fleet.sites.items():
        conf = _mapping(sites_raw, site_name, problems, "lab.sites")
        _unknown(conf, {"host", "listener"}, f"lab.sites.{site_name}", problems)
        if site.lan is None:
            problems.append(f"sites.{site_name}.lan: required in a lab (the site LAN's subnet)")
            continue
        hosts_ = list(ipaddress.ip_network(site.lan).hosts())
        if len(hosts_) < 4:
            problems.append(f"sites.{site_name}.lan: {site.lan} is too small for a lab")
            continue
        bridge_hosts[site_name] = _ip(conf.get("host", hosts_[-1]), f"lab.sites.{site_name}.host", problems) or ""
        listeners[site_name] = _ip(conf.get("listener", hosts_[-2]), f"lab.sites.{site_name}.listener", problems) or ""

    default_delay = _delay(raw.get("boot_delay", 0.5), "lab.boot_delay", problems)
    nodes_raw = _mapping(raw, "nodes", problems)
    nodes: dict[str, NodeLab] = {}
    for node_name in nodes_raw:
        if node_name not in fleet.nodes:
            problems.append(f"lab.nodes.{node_name}: unknown node")
    for node_name in fleet.nodes:
        conf = _mapping(nodes_raw, node_name, problems, "lab.nodes")
        _unknown(conf, {"boot_delay", "power"}, f"lab.nodes.{node_name}", problems)
        power = conf.get("power", "on")
        if power not in ("on", "off", True, False):  # YAML 1.1 reads a bare on/off as a bool
            problems.append(f"lab.nodes.{node_name}.power: must be on or off")
        delay = _delay(conf.get("boot_delay", default_delay), f"lab.nodes.{node_name}.boot_delay", problems)
        nodes[node_name] = NodeLab(boot_delay=delay, power=power in ("on", True))

    if problems:
        raise LabConfigError(problems)
    return LabConfig(
        name=name,
        state_dir=state_dir,
        suite=suite,
        mirror=mirror,
        wan=wan,
        wan_host=wan_host,
        wan_addresses=wan_addresses,
        clients=clients,
        clients_host=clients_host,
        edge_client_address=edge_client or "",
        client_name=client_name,
        client_address=client_address or "",
        bridge_hosts=bridge_hosts,
        listeners=listeners,
        nodes=nodes,
        inner_image=str(inner_image) if inner_image else None,
    )


def _mapping(raw: dict, key: str, problems: list[str], prefix: str = "lab") -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        problems.append(f"{prefix}.{key}: must be a mapping")
        return {}
    return value


def _unknown(raw: dict, known: set[str], prefix: str, problems: list[str]) -> None:
    listed = ", ".join(sorted(known))
    problems.extend(f"{prefix}.{key}: unknown key (known: {listed})" for key in raw if key not in known)


def _ip(value: Any, where: str, problems: list[str]) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        problems.append(f"{where}: {value!r} is not an IP address")
        return None


def _net(value: Any, where: str, problems: list[str]) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=True))
    except ValueError as exc:
        problems.append(f"{where}: {value!r} is not a network ({exc})")
        return ""


def _host_address(net: str, value: Any, where: str, problems: list[str]) -> str:
    """The host's own address on a lab network: the last usable one by default."""
    if not net:
        return ""
    if value is None:
        return str(list(ipaddress.ip_network(net).hosts())[-1])
    ip = _ip(value, where, problems)
    if ip and ipaddress.ip_address(ip) not in ipaddress.ip_network(net):
        problems.append(f"{where}: {ip} is outside {net}")
    return ip or ""


def _delay(value: Any, where: str, problems: list[str]) -> float:
    if value in (0, "0"):
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return 0.0


def _full(what: str, problems: list[str]) -> str:
    problems.append(f"{what}: no free address left")
    return ""


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class NetworkPlan:
    name: str  # Docker network name
    role: str  # lan | wan | clients
    subnet: str
    gateway: str  # the host's address on it (Ansible and the tests run from the host)
    site: str | None = None


@dataclass(frozen=True)
class Attachment:
    network: str
    address: str


@dataclass(frozen=True)
class FilePlan:
    """A file put into a container before its first start.

    ``resource`` names a file shipped in :mod:`wakegrid.lab` (``files/app.py``…) that the
    shell reads, or a package (``pve``) that it copies as the directory of its modules;
    otherwise ``content`` is the text.
    """

    path: str
    content: str = ""
    resource: str | None = None
    mode: int = 0o644


@dataclass(frozen=True)
class HostPlan:
    node: str  # fleet name (or the edge's host, the client, wol-<site>)
    container: str
    role: str  # edge | gateway | machine | guest | client | listener
    kind: str  # machine | vm | lxc | edge | client | listener
    site: str | None
    networks: tuple[Attachment, ...]  # the first one carries ``mac``
    mac: str | None = None
    parent: str | None = None
    systemd: bool = True
    command: tuple[str, ...] | None = None
    cap_add: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    security_opt: tuple[str, ...] = ()
    binds: tuple[tuple[str, str, str], ...] = ()  # (host path, container path, mode)
    volumes: tuple[tuple[str, str], ...] = ()  # (Docker volume, container path)
    files: tuple[FilePlan, ...] = ()
    units: tuple[str, ...] = ()  # systemd units enabled (multi-user.target)
    power: bool = True  # started when first created
    keep_running: bool = False  # infrastructure: `up` (re)starts it whenever it is stopped
    ssh: bool = True
    vmid: int | None = None

    @property
    def address(self) -> str | None:
        return self.networks[0].address if self.networks else None


@dataclass(frozen=True)
class InnerContainerPlan:
    """A ``container`` node: created by ``lab up`` inside its parent's Docker daemon."""

    node: str
    name: str  # container name inside the parent's daemon
    parent: str  # fleet node running dockerd
    parent_container: str
    command: tuple[str, ...]
    binds: tuple[tuple[str, str, str], ...] = ()
    power: bool = True


@dataclass(frozen=True)
class AppPlan:
    service: str
    node: str
    site: str | None
    address: str
    port: int
    policy: str
    health_path: str


@dataclass(frozen=True)
class PveGuestPlan:
    node: str  # fleet name
    vmid: int
    type: str  # lxc | qemu (PVE's names)
    pve_node: str  # the PVE node it starts on
    container: str


@dataclass(frozen=True)
class PveClusterPlan:
    site: str
    name: str
    directory: str  # host path bind-mounted at /etc/pve in every PVE host of the site
    hosts: tuple[str, ...]  # fleet names of the PVE machines
    nodes: tuple[tuple[str, str], ...]  # (PVE node name, address)
    token_ids: tuple[str, ...]
    guests: tuple[PveGuestPlan, ...]
    # Quorum from the fleet's arrangement: votes per PVE node, the QDevice's (address, port), expected votes.
    votes: tuple[tuple[str, int], ...] = ()
    qdevice: tuple[str, int] | None = None
    expected_votes: int | None = None


@dataclass(frozen=True)
class LabPlan:
    config: LabConfig
    networks: tuple[NetworkPlan, ...]
    hosts: tuple[HostPlan, ...]
    inner: tuple[InnerContainerPlan, ...]
    apps: tuple[AppPlan, ...]
    clusters: tuple[PveClusterPlan, ...]
    wol: dict[str, dict[str, dict[str, Any]]]  # site → listener config (MAC → machine)
    skipped_backends: tuple[str, ...]  # backends with no lab host to run their app on
    ssh_key: str
    pve_token_file: str | None

    def host(self, node: str) -> HostPlan:
        for host in self.hosts:
            if host.node == node:
                return host
        raise KeyError(f"no lab host named {node!r}")

    def network(self, role: str, site: str | None = None) -> NetworkPlan:
        for net in self.networks:
            if net.role == role and net.site == site:
                return net
        raise KeyError(f"no {role} network" + (f" for site {site}" if site else ""))


def plan_lab(
    fleet: Fleet,
    *,
    fleet_path: str | Path = "lab.fleet.yml",
    ssh_public_key: str = "",
    secureon: dict[str, str] | None = None,
) -> LabPlan:
    """The whole lab for ``fleet``: pure, so the same fleet always gives the same plan.

    ``ssh_public_key`` is what every host authorizes for root; ``secureon`` maps
    machine → revealed SecureOn password (secrets are revealed by the shell).
    """
    cfg = parse_lab_config(fleet, fleet_path)
    problems: list[str] = []
    secureon = secureon or {}
    prefix = f"wakegrid-{cfg.name}"

    def cname(node: str) -> str:
        return f"{prefix}-{node}"

    networks = [NetworkPlan(f"{prefix}-wan", "wan", cfg.wan, cfg.wan_host)]
    networks.append(NetworkPlan(f"{prefix}-clients", "clients", cfg.clients, cfg.clients_host))
    lan_of: dict[str, str] = {}
    for site_name, site in fleet.sites.items():
        lan_of[site_name] = f"{prefix}-lan-{site_name}"
        networks.append(NetworkPlan(lan_of[site_name], "lan", str(site.lan), cfg.bridge_hosts[site_name], site_name))
    _check_overlaps(networks, problems)

    # Addresses: every machine/vm/lxc needs one, inside its site's LAN, unique
    # with the lab's own (host bridge, listener).
    reserved = {}
    for site_name in fleet.sites:
        reserved[cfg.bridge_hosts[site_name]] = f"the host's address on {site_name}'s LAN (lab.sites.{site_name}.host)"
        reserved[cfg.listeners[site_name]] = f"the WoL listener of {site_name} (lab.sites.{site_name}.listener)"
    for name, node in fleet.nodes.items():
        if node.kind == "container":
            continue
        site = fleet.site_of(name)
        if node.address is None:
            problems.append(f"nodes.{name}.address: required in a lab (its address on {site}'s LAN)")
            continue
        lan = fleet.sites[site].lan if site in fleet.sites else None
        if lan and ipaddress.ip_address(node.address) not in ipaddress.ip_network(lan):
            problems.append(f"nodes.{name}.address: {node.address} is outside site {site}'s lan {lan}")
        if node.address in reserved:
            problems.append(f"nodes.{name}.address: {node.address} is {reserved[node.address]}")

    routes_by_site = {s: _site_routes(fleet, s) for s in fleet.sites}
    ssh_key = _ssh_key_file(fleet)
    if ssh_key is None:
        problems.append("defaults.ssh.private_key_file: required in a lab (the lab generates that key)")
    pve_token = _pve_token_file(fleet, problems)

    apps, skipped = _apps(fleet)
    apps_by_node: dict[str, list[AppPlan]] = {}
    for app in apps:
        apps_by_node.setdefault(app.node, []).append(app)

    clusters: list[PveClusterPlan] = []
    for site_name in fleet.sites:
        # One cluster per site: the PVE hosts of a site share /etc/pve (so LXC can migrate between them).
        pve = {n: node for n, node in fleet.nodes.items() if node.proxmox and node.site == site_name}
        if not pve:
            continue
        pve_name = {n: node.proxmox.node or n for n, node in pve.items()}
        guests = tuple(
            PveGuestPlan(n, nd.vmid or 0, "lxc" if nd.kind == "lxc" else "qemu", pve_name[nd.parent], cname(n))
            for n, nd in fleet.nodes.items()
            if nd.kind in ("vm", "lxc") and nd.parent in pve
        )
        arrangement = quorum.arrangement(fleet, next(iter(pve)))
        qdevice = arrangement.qdevice if arrangement else None
        clusters.append(
            PveClusterPlan(
                site=site_name,
                name=f"{cfg.name}-{site_name}",
                directory=f"{cfg.state_dir}/pve/{site_name}",
                hosts=tuple(pve),
                nodes=tuple((pve_name[n], str(node.address)) for n, node in pve.items()),
                token_ids=tuple(dict.fromkeys(node.proxmox.token_id for node in pve.values())),
                guests=guests,
                votes=tuple((pve_name[n], node.proxmox.votes) for n, node in pve.items()),
                # The lab runs no corosync-qnetd: the QDevice host's sshd (port 22) stands in for it.
                qdevice=(str(fleet.nodes[qdevice].address), 22) if qdevice and fleet.nodes[qdevice].address else None,
                expected_votes=fleet.clusters[arrangement.cluster].expected_votes
                if arrangement and arrangement.cluster in fleet.clusters
                else None,
            )
        )
    cluster_of = {h: c for c in clusters for h in c.hosts}

    common_files = [FilePlan(f"{OPT}/app.py", resource="files/app.py")]
    if ssh_public_key:
        common_files.append(FilePlan("/root/.ssh/authorized_keys", ssh_public_key.strip() + "\n", mode=0o600))

    hosts: list[HostPlan] = []
    edge = fleet.edge
    hosts.append(
        HostPlan(
            node=edge.host,
            container=cname(edge.host),
            role="edge",
            kind="edge",
            site=None,
            networks=(
                Attachment(f"{prefix}-wan", str(edge.address)),
                Attachment(f"{prefix}-clients", cfg.edge_client_address),
            ),
            cap_add=(*SYSTEMD_CAPS, "NET_ADMIN"),
            devices=("/dev/net/tun",),
            sysctls=(("net.ipv4.ip_forward", "1"),),
            files=tuple(common_files),
            keep_running=True,
        )
    )
    hosts.append(
        HostPlan(
            node=cfg.client_name,
            container=cname(cfg.client_name),
            role="client",
            kind="client",
            site=None,
            networks=(Attachment(f"{prefix}-clients", cfg.client_address),),
            cap_add=(*SYSTEMD_CAPS, "NET_ADMIN"),
            files=tuple(common_files),
            keep_running=True,
            # The client is the Internet: it reaches the edge's public side only.
        )
    )

    wol: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in fleet.sites}
    inner: list[InnerContainerPlan] = []
    gateways = {site.gateway: s for s, site in fleet.sites.items()}
    # Hosts before what they host, so the shell can create and start them in plan order.
    for name, node in sorted(fleet.nodes.items(), key=lambda item: len(fleet.ancestors(item[0]))):
        if node.kind == "container":
            parent = node.parent or ""
            node_apps = apps_by_node.get(name, [])
            command = _inner_command(name, fleet.site_of(name), node_apps)
            inner.append(
                InnerContainerPlan(
                    node=name,
                    name=node.container or name,
                    parent=parent,
                    parent_container=cname(parent),
                    command=command,
                    binds=((OPT, OPT, "ro"),),
                    power=cfg.nodes[name].power,
                )
            )
            continue
        if node.address is None:
            continue
        site = fleet.site_of(name) or ""
        is_gw = name in gateways
        attachments = [Attachment(lan_of[site], node.address)]
        if is_gw:
            attachments.append(Attachment(f"{prefix}-wan", cfg.wan_addresses[name]))
        files = list(common_files)
        units = ["wakegrid-lab-routes.service"]
        files.append(
            FilePlan(
                f"{ETC}/routes.sh",
                _routes_script([] if is_gw else routes_by_site[site], fleet.sites[site].gateway, fleet),
                mode=0o755,
            )
        )
        files += [_unit_file("wakegrid-lab-routes.service"), _unit_file("wakegrid-lab-app@.service")]
        for app in apps_by_node.get(name, []):
            env = f"{ETC}/apps/{app.service}.env"
            files.append(FilePlan(env, _app_env(app)))
            units.append(f"wakegrid-lab-app@{app.service}.service")
        caps = [*SYSTEMD_CAPS, "NET_ADMIN"]
        devices: list[str] = []
        sysctls: list[tuple[str, str]] = []
        binds: list[tuple[str, str, str]] = []
        volumes: list[tuple[str, str]] = []
        security: list[str] = []
        if is_gw:
            devices.append("/dev/net/tun")
            sysctls.append(("net.ipv4.ip_forward", "1"))
        if node.proxmox is not None:
            cluster = cluster_of[name]
            binds += [(DOCKER_SOCKET, DOCKER_SOCKET, "rw"), (cluster.directory, "/etc/pve", "rw")]
            files += [
                FilePlan(f"{OPT}/pve", resource="pve"),
                FilePlan(f"{OPT}/engine.py", resource="engine.py"),
                FilePlan(f"{ETC}/pve.env", _pve_env(fleet, name)),
                _unit_file("wakegrid-lab-pve.service"),
            ]
            units.append("wakegrid-lab-pve.service")
        if node.docker is not None:
            # A real dockerd, by the Docker-in-guest recipe (wakegrid.lab.dind, docs/lab-docker-in-guest.md).
            volumes.append((f"{prefix}-{name}-docker", dind.DOCKER_DATA_DIR))
            security += dind.DIND_SECURITY_OPT
            sysctls += [kv for kv in dind.DIND_SYSCTLS.items() if kv not in sysctls]
            port = _docker_port(node.docker.api, f"nodes.{name}.docker.api", problems)
            files += [FilePlan(path, content) for path, content in dind.guest_files(api_port=port).items()]
            units += dind.GUEST_UNITS
        if node.kind == "machine" and node.mac:
            wol[site][node.mac] = {
                "container": cname(name),
                "boot_delay": cfg.nodes[name].boot_delay,
                **({"secureon": secureon[name]} if name in secureon else {}),
            }
        role = "gateway" if is_gw else ("machine" if node.kind == "machine" else "guest")
        hosts.append(
            HostPlan(
                node=name,
                container=cname(name),
                role=role,
                kind=node.kind,
                site=site,
                networks=tuple(attachments),
                mac=node.mac,
                parent=node.parent,
                cap_add=tuple(caps),
                devices=tuple(devices),
                sysctls=tuple(sysctls),
                binds=tuple(binds),
                security_opt=tuple(security),
                volumes=tuple(volumes),
                files=tuple(files),
                units=tuple(units),
                power=cfg.nodes[name].power or is_gw,
                keep_running=is_gw,
                vmid=node.vmid,
            )
        )

    for site_name in fleet.sites:
        config = json.dumps(wol[site_name], indent=2, sort_keys=True) + "\n"
        hosts.append(
            HostPlan(
                node=f"wol-{site_name}",
                container=cname(f"wol-{site_name}"),
                role="listener",
                kind="listener",
                site=site_name,
                networks=(Attachment(lan_of[site_name], cfg.listeners[site_name]),),
                systemd=False,
                ssh=False,
                keep_running=True,
                command=("python3", f"{OPT}/wol_listener.py", "--config", f"{ETC}/wol.json"),
                binds=((DOCKER_SOCKET, DOCKER_SOCKET, "rw"),),
                files=(
                    FilePlan(f"{OPT}/wol_listener.py", resource="wol_listener.py"),
                    FilePlan(f"{OPT}/engine.py", resource="engine.py"),
                    FilePlan(f"{ETC}/wol.json", config),
                ),
            )
        )

    if problems:
        raise LabConfigError(problems)
    return LabPlan(
        config=cfg,
        networks=tuple(networks),
        hosts=tuple(hosts),
        inner=tuple(inner),
        apps=tuple(apps),
        clusters=tuple(clusters),
        wol=wol,
        skipped_backends=tuple(skipped),
        ssh_key=ssh_key or "",
        pve_token_file=pve_token,
    )


def _unit_file(unit: str) -> FilePlan:
    return FilePlan(f"/etc/systemd/system/{unit}", resource=f"files/{unit}")


def _check_overlaps(networks: list[NetworkPlan], problems: list[str]) -> None:
    for i, a in enumerate(networks):
        for b in networks[i + 1 :]:
            if a.subnet and b.subnet and ipaddress.ip_network(a.subnet).overlaps(ipaddress.ip_network(b.subnet)):
                problems.append(f"{_where(a)}: {a.subnet} overlaps {_where(b)} ({b.subnet})")


def _where(net: NetworkPlan) -> str:
    return {"wan": "lab.wan.subnet", "clients": "lab.clients.subnet"}.get(net.role, f"sites.{net.site}.lan")


def _site_routes(fleet: Fleet, site: str) -> list[str]:
    """What a site host sends through its gateway: the WireGuard range and the other sites' LANs."""
    nets = [ipaddress.ip_interface(fleet.edge.wireguard.address).network]
    nets += [ipaddress.ip_interface(s.wireguard.address).network for s in fleet.sites.values()]
    nets += [ipaddress.ip_network(s.lan) for name, s in fleet.sites.items() if name != site and s.lan]
    return [str(n) for n in dict.fromkeys(nets)]


def _routes_script(routes: list[str], gateway: str, fleet: Fleet) -> str:
    via = fleet.nodes[gateway].address
    lines = ["#!/bin/sh", "# Generated by wakegrid lab: route the WireGuard range through the site gateway.", "set -e"]
    lines += [f"ip route replace {net} via {via}" for net in routes]
    return "\n".join(lines) + "\n"


def _ssh_key_file(fleet: Fleet) -> str | None:
    return fleet.defaults.ssh.private_key_file


def _pve_token_file(fleet: Fleet, problems: list[str]) -> str | None:
    """The file holding the lab's PVE token secret: the lab writes it, the fleet points at it."""
    files = set()
    for name, node in fleet.nodes.items():
        if node.proxmox is None:
            continue
        path = node.proxmox.token_secret.file
        if path is None:
            problems.append(f"nodes.{name}.proxmox.token_secret: must be {{file: PATH}} in a lab (the lab writes it)")
        else:
            files.add(path)
    if len(files) > 1:
        problems.append(f"nodes.*.proxmox.token_secret: the lab has one token; use one file, not {sorted(files)}")
    return next(iter(files), None)


def _pve_env(fleet: Fleet, name: str) -> str:
    proxmox = fleet.nodes[name].proxmox
    assert proxmox is not None
    return f"PVE_NODE={shlex.quote(proxmox.node or name)}\n"


def _docker_port(api: str, where: str, problems: list[str]) -> int:
    """The TCP port the guest's dockerd serves (tcp://ADDRESS:PORT in the fleet)."""
    match = re.fullmatch(r"tcp://[^:/]+:(\d+)/?", api)
    if not match:
        problems.append(f"{where}: {api!r} must be tcp://ADDRESS:PORT in a lab (the guest's dockerd listens on it)")
        return dind.DOCKER_API_PORT
    return int(match.group(1))


def _apps(fleet: Fleet) -> tuple[list[AppPlan], list[str]]:
    apps: list[AppPlan] = []
    skipped: list[str] = []
    for svc_name, svc in fleet.services.items():
        for index, backend in enumerate(svc.backends):
            node = backend.node
            if node is None:
                # A backend given by address only: serve it from the node with that address, if any.
                node = next((n for n, nd in fleet.nodes.items() if nd.address == backend.address), None)
            if node is None:
                skipped.append(f"services.{svc_name}.backends[{index}]: no lab node has address {backend.address}")
                continue
            apps.append(
                AppPlan(
                    service=svc_name,
                    node=node,
                    site=fleet.site_of(node),
                    address=fleet.backend_address(backend) or "",
                    port=backend.port,
                    policy=svc.policy.mode,
                    health_path=svc.health.path,
                )
            )
    return apps, skipped


def _app_env(app: AppPlan) -> str:
    values = {
        "APP_SERVICE": app.service,
        "APP_NODE": app.node,
        "APP_SITE": app.site or "",
        "APP_PORT": str(app.port),
        "APP_HEALTH": app.health_path,
    }
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def _inner_command(node: str, site: str | None, apps: list[AppPlan]) -> tuple[str, ...]:
    if not apps:
        return ("sleep", "infinity")
    # One process per container, as Docker likes it: app.py serves every port given.
    args = ["python3", f"{OPT}/app.py", "--node", node, "--site", site or ""]
    for app in apps:
        args += ["--serve", f"{app.service}:{app.port}:{app.health_path}"]
    return tuple(args)


# --------------------------------------------------------------------------- inventory

SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"  # lab hosts get new host keys per build


def ini_inventory(fleet: Fleet, plan: LabPlan) -> str:
    """An Ansible INI inventory of every lab host reachable over SSH (edge and fleet nodes)."""
    lines = [
        "# Generated by wakegrid lab; the fleet file itself is the inventory once wakegrid.fleet is installed.",
        "[all]",
    ]
    for host in plan.hosts:
        if not host.ssh or host.role == "client":
            continue
        ssh = fleet.ssh_of(host.node)
        parts = [host.node, f"ansible_host={host.address}", f"ansible_port={ssh.port}"]
        parts.append(f"ansible_user={ssh.user or 'root'}")
        if ssh.private_key_file:
            parts.append(f"ansible_ssh_private_key_file={ssh.private_key_file}")
        lines.append(" ".join(parts))
    lines += ["", "[all:vars]", f"ansible_ssh_common_args='{SSH_ARGS}'", "ansible_python_interpreter=/usr/bin/python3"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- spec hashes


def spec_hash(host: HostPlan, image: str, resolved_files: dict[str, str]) -> str:
    """What a container was created from: a changed hash means recreate it."""
    # Initial power is not part of what a container *is*: changing it must not recreate one.
    plain = {k: v for k, v in _plain(host).items() if k != "power"}
    data = {
        "host": plain,
        "image": image,
        "files": resolved_files,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, tuple | list):
        return [_plain(x) for x in obj]
    return obj


def unit_wants(units: tuple[str, ...]) -> list[tuple[str, str]]:
    """Symlinks that enable ``units`` like ``systemctl enable`` would (for multi-user.target)."""
    links = []
    for unit in units:
        base = re.sub(r"@[^.]+\.", "@.", unit)
        target = f"/etc/systemd/system/{base}" if base.startswith("wakegrid-lab") else f"/lib/systemd/system/{base}"
        links.append((f"/etc/systemd/system/multi-user.target.wants/{unit}", target))
    return links


__all__ = [
    "LABEL",
    "AppPlan",
    "Attachment",
    "FilePlan",
    "HostPlan",
    "InnerContainerPlan",
    "LabConfig",
    "LabConfigError",
    "LabPlan",
    "NetworkPlan",
    "PveClusterPlan",
    "PveGuestPlan",
    "ini_inventory",
    "lab_name_for",
    "parse_lab_config",
    "plan_lab",
    "spec_hash",
    "unit_wants",
]
