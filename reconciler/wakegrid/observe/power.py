"""Observe the power of fleet nodes, right now, through the channels that control them.

Power is three-valued: ``up``, ``down`` or ``unknown``, always with how it was found
(for ``unknown``, why it could not be). **Unknown is not down**: the planner never
stops anything an unknown node could need. The observation follows the hosting tree,
top-down, as the control model does:

- a **machine** is up when its SSH port accepts a TCP connection; down when nothing
  answers within a short timeout (a sleeping machine does not answer at all) or the
  host is unreachable; unknown when it refuses (something runs there: booting or
  shutting down), when the network cannot be reached, or when it has no address;
- a **vm / lxc** is up or down as the Proxmox API of its parent reports it
  (``running`` / ``stopped``), from the parent node's own guest lists
  (``/nodes/{node}/qemu`` and ``/lxc``: live, where ``/cluster/resources`` has
  pvestatd's last broadcast, up to 10 s old, and keeps a powered-off node's for
  5 minutes); unknown when that API does not answer, its token cannot be read,
  or it reports another status. The fleet's ``parent`` is the guest's *preferred*
  host; the node it runs on is its *current* host: a guest its parent does not
  list (or whose parent is down) is looked for on the other machines of the
  parent's Proxmox cluster (``proxmox.cluster``), and found there after a
  migration (:attr:`PowerState.host`). Not found while a member could not be
  asked: unknown;
- a **container** likewise from the Docker API of its parent (``running`` /
  ``exited``, ``created``, ``dead``; unknown for ``paused``, ``restarting``, … and
  when the API does not answer);
- a node whose parent is down is down, one whose parent is unknown is unknown,
  without asking anything.

Each phase probes in parallel; :func:`nodes_to_observe` keeps the probing to the
nodes a start or stop plan of one node can depend on. Everything here is I/O at
the edge of the pure planner (:mod:`wakegrid.graph`), which takes the nodes that
are up (:func:`up_nodes`) and those whose power is unknown, with why
(:func:`unknown_nodes`).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from wakegrid.graph import Power
from wakegrid.model import DockerApi, Fleet

DEFAULT_TIMEOUT = 1.0  # a TCP probe: a sleeping machine does not answer at all
DEFAULT_API_TIMEOUT = 10.0  # a Proxmox or Docker API call (the Proxmox API takes a second or two)
_PROXMOX_DEFAULT_PORT = 8006


# What each API's status means; any other status is unknown.
_PROXMOX_POWER: dict[str, Power] = {"running": "up", "stopped": "down"}
_DOCKER_POWER: dict[str, Power] = {"running": "up", "exited": "down", "created": "down", "dead": "down"}


@dataclass(frozen=True)
class PowerState:
    """A node's power, and how that was found or why it could not be (safe to print: never a secret)."""

    node: str
    power: Power
    detail: str
    host: str | None = None  # a guest's current host, when it is not its fleet parent (it migrated)

    @property
    def up(self) -> bool:
        return self.power == "up"


class ProbeError(Exception):
    """An API did not answer (the message says which and why)."""


@dataclass(frozen=True)
class Probes:
    """The three ways of looking; tests substitute their own."""

    tcp: Callable[[str, int, float], tuple[Power, str]]
    proxmox_guests: Callable[[Mapping[str, object], str, float], dict[int, str]]
    docker_containers: Callable[[DockerApi, float], dict[str, str]]


# --------------------------------------------------------------------------- which nodes


def nodes_to_observe(fleet: Fleet, target: str, operation: Literal["start", "stop"]) -> list[str]:
    """The nodes whose power a start or stop plan of ``target`` depends on, in file order.

    Start: the target, its dependencies (recursively), the hosts of all of them and
    the gateways of their sites (a sleeping machine is woken from its gateway).
    Stop: everything connected to the target through hosting or dependency links
    (an active dependant anywhere keeps a dependency up), with their hosts.
    """
    if target not in fleet.nodes:
        return []
    wanted: set[str] = set()
    todo = [target]
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        node = fleet.nodes[name]
        linked = [*fleet.dependencies_of(name)]
        if node.parent is not None:
            linked.append(node.parent)
        if operation == "start":
            gateway = fleet.gateway_of(name)
            if node.kind == "machine" and gateway is not None:
                linked.append(gateway)
        else:
            linked += [*fleet.children(name), *fleet.dependants_of(name)]
        todo.extend(n for n in linked if n in fleet.nodes and n not in wanted)
    # A Proxmox cluster's quorum counts every member and its QDevice: a guest that migrated to a
    # member keeps running there only while they are up, so plans need their power too.
    for cluster in {fleet.cluster_of(name) for name in wanted} - {None}:
        wanted.update(fleet.cluster_members(cluster))
        qdevice = fleet.clusters[cluster].qdevice if cluster in fleet.clusters else None
        if qdevice in fleet.nodes:
            wanted.add(qdevice)
    return [name for name in fleet.nodes if name in wanted]


# --------------------------------------------------------------------------- observing


def observe_power(
    fleet: Fleet,
    names: Iterable[str],
    *,
    proxmox_secret: Callable[[str], str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    api_timeout: float = DEFAULT_API_TIMEOUT,
    probes: Probes | None = None,
) -> dict[str, PowerState]:
    """The power state of ``names`` and of their hosts, keyed by node, in file order.

    ``proxmox_secret(machine)`` returns the API token secret of that Proxmox machine
    (default: the fleet's secret, read now). ``timeout`` bounds each TCP probe,
    ``api_timeout`` each API call.
    """
    probes = probes or default_probes()
    secret_of = proxmox_secret or (lambda machine: fleet.nodes[machine].proxmox.token_secret.reveal())  # type: ignore[union-attr]
    wanted = set()
    for name in names:
        wanted.add(name)
        wanted.update(fleet.ancestors(name))
    reported = set(wanted)
    for name in list(wanted):  # a guest may run on any machine of its parent's Proxmox cluster: probe them too
        if fleet.nodes[name].kind in ("vm", "lxc"):
            wanted.update(_cluster_peers(fleet, fleet.nodes[name].parent))
    ordered = [name for name in fleet.nodes if name in wanted]
    states: dict[str, PowerState] = {}

    # 1. machines: one TCP connection each, in parallel
    machines = [name for name in ordered if fleet.nodes[name].kind == "machine"]
    states.update(_parallel(machines, lambda name: _observe_machine(fleet, name, probes, timeout)))

    # 2. guests: one call per Proxmox API of an up parent
    guests = [name for name in ordered if fleet.nodes[name].kind in ("vm", "lxc")]
    hosts = _up_parents(fleet, guests, states)
    for guest in guests:
        for peer in _cluster_peers(fleet, fleet.nodes[guest].parent):
            if peer not in hosts and states[peer].power == "up":
                hosts.append(peer)
    listings = _parallel(
        hosts, lambda host: _listing(lambda: _proxmox_listing(fleet, host, secret_of, probes, api_timeout))
    )
    for name in guests:
        states[name] = _guest_state(fleet, name, states, listings)

    # 3. containers: one call per Docker API of an up parent
    containers = [name for name in ordered if fleet.nodes[name].kind == "container"]
    hosts = _up_parents(fleet, containers, states)
    listings = _parallel(hosts, lambda host: _listing(lambda: _docker_listing(fleet, host, probes, api_timeout)))
    for name in containers:
        states[name] = _hosted_state(fleet, name, states, listings)
    return {name: states[name] for name in ordered if name in reported}


def up_nodes(states: Mapping[str, PowerState]) -> set[str]:
    return {name for name, state in states.items() if state.power == "up"}


def as_observed(fleet: Fleet, states: Mapping[str, PowerState]) -> Fleet:
    """The fleet with every migrated guest under the machine it runs on now.

    The fleet file's ``parent`` is a guest's *preferred* host; where it was observed is its *current*
    one (:attr:`PowerState.host`). Plans act on the current host: shutting the preferred one down
    leaves the guest alone, starting the guest wakes the machine it is on, and its steps talk to
    that machine's API. Nothing moved: the same fleet object (per-fleet caches stay warm).
    """
    moved = {
        name: state.host
        for name, state in states.items()
        if state.host in fleet.nodes and name in fleet.nodes and fleet.nodes[name].parent != state.host
    }
    if not moved:
        return fleet
    nodes = {
        name: node.model_copy(update={"parent": moved[name]}) if name in moved else node
        for name, node in fleet.nodes.items()
    }
    return fleet.model_copy(update={"nodes": nodes})


def unknown_nodes(states: Mapping[str, PowerState]) -> dict[str, str]:
    """The nodes whose power is unknown, each with why: the planner's ``unknown``."""
    return {name: state.detail for name, state in states.items() if state.power == "unknown"}


def _parallel(items: list[str], work: Callable[[str], object]) -> dict:
    if not items:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return dict(zip(items, pool.map(work, items), strict=True))


def _listing(call: Callable[[], dict]) -> dict | ProbeError:
    try:
        return call()
    except ProbeError as exc:
        return exc


def _up_parents(fleet: Fleet, names: list[str], states: Mapping[str, PowerState]) -> list[str]:
    parents: list[str] = []
    for name in names:
        parent = fleet.nodes[name].parent
        if parent is not None and parent not in parents and parent in states and states[parent].power == "up":
            parents.append(parent)
    return parents


def _cluster_peers(fleet: Fleet, machine: str | None) -> list[str]:
    """The other Proxmox machines of ``machine``'s cluster, in file order (none outside a declared cluster)."""
    if machine is None or fleet.nodes[machine].proxmox is None:
        return []
    cluster = fleet.nodes[machine].proxmox.cluster  # type: ignore[union-attr]
    if not cluster:
        return []
    return [name for name in fleet.cluster_members(cluster) if name != machine]


def _guest_state(fleet: Fleet, name: str, states: Mapping[str, PowerState], listings: Mapping) -> PowerState:
    """A guest from its parent's listing, else from the other members of its cluster (it may have migrated).

    Its parent's answer wins when it lists the guest, and a parent whose API failed leaves it
    unknown (as before migration existed). Only a parent that is down, or that answered without
    the guest, sends the search to the peers: a vmid is unique in a cluster, so a peer listing it
    is where it runs now.
    """
    node = fleet.nodes[name]
    parent = node.parent
    assert parent is not None
    own = _hosted_state(fleet, name, states, listings)
    peers = _cluster_peers(fleet, parent)
    parent_listing = listings.get(parent)
    parent_lacks_it = isinstance(parent_listing, dict) and node.vmid not in parent_listing
    if not peers or not (states[parent].power == "down" or parent_lacks_it):
        return own
    unanswered = []
    for peer in peers:
        listing = listings.get(peer)
        if isinstance(listing, dict) and node.vmid in listing:
            status = listing[node.vmid]
            detail = f"Proxmox API of {peer}: {node.kind} {node.vmid} {status} (its preferred host is {parent})"
            return PowerState(name, _PROXMOX_POWER.get(status, "unknown"), detail, host=peer)
        if states[peer].power == "unknown":
            unanswered.append(f"{peer} is unknown: {states[peer].detail}")
        elif isinstance(listing, ProbeError):
            unanswered.append(str(listing))
    if unanswered:
        where = f"its host {parent} is down" if states[parent].power == "down" else own.detail
        return PowerState(name, "unknown", f"{where}, and it may run on another machine of its cluster: "
                          + "; ".join(unanswered))  # fmt: skip
    return own


def _observe_machine(fleet: Fleet, name: str, probes: Probes, timeout: float) -> PowerState:
    node = fleet.nodes[name]
    if node.address is None:
        return PowerState(name, "unknown", "no address to probe")
    port = fleet.ssh_of(name).port
    power, detail = probes.tcp(node.address, port, timeout)
    return PowerState(name, power, detail)


def _proxmox_listing(fleet: Fleet, host: str, secret_of: Callable[[str], str], probes: Probes, timeout: float):
    proxmox = fleet.nodes[host].proxmox
    assert proxmox is not None  # the model guarantees it for a guest's parent
    try:
        secret = secret_of(host)
    except Exception as exc:  # the secret's own error names its source, never its value
        raise ProbeError(f"cannot read the Proxmox token secret of {host}: {exc}") from None
    config = {"api": proxmox.api, "token_id": proxmox.token_id, "verify_tls": proxmox.verify_tls}
    config["node"] = proxmox.node or host  # the PVE node name defaults to the machine's
    return probes.proxmox_guests(config, secret, timeout)


def _docker_listing(fleet: Fleet, host: str, probes: Probes, timeout: float):
    docker = fleet.nodes[host].docker
    assert docker is not None
    if urlsplit(docker.api).scheme == "unix":
        # The socket is on that host, not here: reading our own would describe another Docker.
        raise ProbeError(f"Docker API of {host} is a unix socket of a remote host: observed through SSH only")
    return probes.docker_containers(docker, timeout)


def _hosted_state(fleet: Fleet, name: str, states: Mapping[str, PowerState], listings: Mapping) -> PowerState:
    """A guest or container from its parent's listing: down with its host, unknown with it or when the API failed."""
    node = fleet.nodes[name]
    parent = node.parent
    assert parent is not None
    host = states[parent]
    if host.power == "down":
        return PowerState(name, "down", f"its host {parent} is down")
    if host.power == "unknown":
        return PowerState(name, "unknown", f"its host {parent} is unknown: {host.detail}")
    listing = listings[parent]
    if isinstance(listing, ProbeError):
        return PowerState(name, "unknown", str(listing))
    if node.kind == "container":
        key = node.container or name
        api, what, missing, meaning = "Docker", f"container {key}", f"has no container {key}", _DOCKER_POWER
    else:
        key = node.vmid
        what = f"{node.kind} {key}"
        api, missing, meaning = "Proxmox", f"does not know {what}", _PROXMOX_POWER
    status = listing.get(key)
    if status is None:  # the API answered: it does not exist there, so it does not run
        return PowerState(name, "down", f"{api} API of {parent} {missing}")
    return PowerState(name, meaning.get(status, "unknown"), f"{api} API of {parent}: {what} {status}")


# --------------------------------------------------------------------------- the real probes


def default_probes() -> Probes:
    return Probes(tcp=tcp_probe, proxmox_guests=proxmox_guests, docker_containers=docker_containers)


def tcp_probe(host: str, port: int, timeout: float) -> tuple[Power, str]:
    """A machine's power from its SSH port: does ``host:port`` accept a TCP connection within ``timeout``?

    Silence and "host unreachable" (no ARP answer on its LAN) are a machine that sleeps:
    down. A refusal means something runs there (booting, shutting down, or sshd stopped),
    and any other error (no route to the network, a name that does not resolve) says
    nothing about the machine: unknown.
    """
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "up", f"SSH port {where} accepts connections"
    except TimeoutError:
        return "down", f"no answer on {where} within {timeout:g}s"
    except ConnectionRefusedError:
        return "unknown", f"{where} refuses connections (booting or shutting down)"
    except OSError as exc:
        if exc.errno == errno.EHOSTUNREACH:
            return "down", f"no answer on {where}: {exc.strerror or exc}"
        return "unknown", f"cannot probe {where}: {exc.strerror or exc}"


def proxmox_guests(config: Mapping[str, object], secret: str, timeout: float) -> dict[int, str]:
    """``{vmid: status}`` of the guests on one node (``config["node"]``), as that node sees them now.

    Not /cluster/resources: its status is the last broadcast of each node's pvestatd (pve-manager
    PVE/API2/Cluster.pm, PVE/API2Tools.pm extract_vm_stats), seconds behind a start or a stop.
    """
    from proxmoxer import ProxmoxAPI  # imported on use: the planner does not need it

    api = str(config["api"])
    url = urlsplit(api)
    user, _, token_name = str(config["token_id"]).partition("!")
    verify = bool(config.get("verify_tls", True))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning when verify_tls is off
            client = ProxmoxAPI(
                url.hostname,
                port=url.port or _PROXMOX_DEFAULT_PORT,
                user=user,
                token_name=token_name,
                token_value=secret,
                verify_ssl=verify,
                timeout=timeout,
                service="PVE",
            )
            node = client.nodes(str(config["node"]))
            guests = [*(node.qemu.get() or []), *(node.lxc.get() or [])]
    except Exception as exc:  # requests, proxmoxer and TLS errors; none carries the token
        raise ProbeError(f"Proxmox API {api} did not answer: {_short(exc)}") from None
    return {int(guest["vmid"]): str(guest.get("status", "unknown")) for guest in guests}


def docker_containers(api: DockerApi, timeout: float) -> dict[str, str]:
    """``{name: state}`` of every container of one Docker API (``running``, ``exited``, …)."""
    import docker  # imported on use

    try:
        with _docker_tls(api) as tls, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning when tls_verify is off
            explicit = tls and (not tls.verify or tls.ca_cert)
            client_class = _explicit_tls(docker.APIClient) if explicit else docker.APIClient
            client = client_class(base_url=api.api, tls=tls, timeout=max(1, round(timeout)), version="auto")
            try:
                listing = client.containers(all=True)
            finally:
                client.close()
    except Exception as exc:  # requests, SDK and TLS errors; none carries the key
        refused = _certificate_error(exc)
        if refused is not None:
            raise ProbeError(f"Docker API {api.api} failed TLS verification: {refused}") from None
        raise ProbeError(f"Docker API {api.api} did not answer: {_short(exc)}") from None
    states: dict[str, str] = {}
    for container in listing:
        for name in container.get("Names") or []:
            states[name.lstrip("/")] = str(container.get("State", "unknown"))
    return states


def _certificate_error(exc: BaseException) -> str | None:
    """The certificate check that failed somewhere in the chain the SDK and requests wrap it in."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message}"
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return None


def _explicit_tls(base: type) -> type:
    """The API client class that verifies as the fleet says: with its ``ca`` only, or not at all.

    requests lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace a session's ``verify`` (psf/requests
    issue 3829): the fleet's CA must not be swapped for the system's, nor tls_verify: false turned
    into a check against them. (A factory: docker is imported on use.)
    """
    return type("ExplicitTLSClient", (base,), {"trust_env": property(lambda self: False, lambda self, value: None)})


@contextmanager
def _docker_tls(api: DockerApi) -> Iterator[Any]:
    """The SDK's TLSConfig for the fleet's settings (False without TLS), as the modules build it."""
    if not (api.tls or api.api.startswith("https://")):
        yield False
        return
    from docker.tls import TLSConfig

    with tempfile.TemporaryDirectory(prefix="wakegrid-docker-") as private:
        key = None
        if api.key is not None:
            key = api.key.file
            if key is None:  # the SDK reads the key from a file at each connection
                key = os.path.join(private, "key.pem")
                fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(api.key.reveal().strip() + "\n")
        yield TLSConfig(
            client_cert=(api.cert, os.path.expanduser(key)) if api.cert and key else None,
            ca_cert=api.ca if api.tls_verify else None,
            verify=api.tls_verify,
        )


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


__all__ = [
    "PowerState",
    "ProbeError",
    "Probes",
    "default_probes",
    "docker_containers",
    "nodes_to_observe",
    "observe_power",
    "proxmox_guests",
    "tcp_probe",
    "unknown_nodes",
    "up_nodes",
]
