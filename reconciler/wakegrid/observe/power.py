"""Observe which fleet nodes are up, right now, through the channels that control them.

The observation follows the hosting tree, top-down, as the control model does:

- a **machine** is up when its SSH port accepts a TCP connection (a short timeout:
  a sleeping machine does not answer at all, a booting one refuses);
- a **vm / lxc** is up when the Proxmox API of its parent reports it ``running``
  (one ``/cluster/resources`` call per Proxmox API);
- a **container** is up when the Docker API of its parent reports it ``running``
  (one container list per Docker API);
- a node whose parent is down is down, without asking anything.

Each phase probes in parallel; :func:`nodes_to_observe` keeps the probing to the
nodes a start or stop plan of one node can depend on. Everything here is I/O at
the edge of the pure planner (:mod:`wakegrid.graph`), which takes the set of nodes
that are up.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from wakegrid.model import Fleet

DEFAULT_TIMEOUT = 1.0  # a TCP probe: a sleeping machine does not answer at all
DEFAULT_API_TIMEOUT = 10.0  # a Proxmox or Docker API call (the Proxmox API takes a second or two)
_PROXMOX_DEFAULT_PORT = 8006


@dataclass(frozen=True)
class PowerState:
    """Whether a node is up, and how that was found (safe to print: never a secret)."""

    node: str
    up: bool
    detail: str


class ProbeError(Exception):
    """An API did not answer (the message says which and why)."""


@dataclass(frozen=True)
class Probes:
    """The three ways of looking; tests substitute their own."""

    tcp: Callable[[str, int, float], tuple[bool, str]]
    proxmox_guests: Callable[[Mapping[str, object], str, float], dict[int, str]]
    docker_containers: Callable[[str, bool, float], dict[str, str]]


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
    ordered = [name for name in fleet.nodes if name in wanted]
    states: dict[str, PowerState] = {}

    # 1. machines: one TCP connection each, in parallel
    machines = [name for name in ordered if fleet.nodes[name].kind == "machine"]
    states.update(_parallel(machines, lambda name: _observe_machine(fleet, name, probes, timeout)))

    # 2. guests: one call per Proxmox API of an up parent
    guests = [name for name in ordered if fleet.nodes[name].kind in ("vm", "lxc")]
    hosts = _up_parents(fleet, guests, states)
    listings = _parallel(
        hosts, lambda host: _listing(lambda: _proxmox_listing(fleet, host, secret_of, probes, api_timeout))
    )
    for name in guests:
        states[name] = _hosted_state(fleet, name, states, listings)

    # 3. containers: one call per Docker API of an up parent
    containers = [name for name in ordered if fleet.nodes[name].kind == "container"]
    hosts = _up_parents(fleet, containers, states)
    listings = _parallel(hosts, lambda host: _listing(lambda: _docker_listing(fleet, host, probes, api_timeout)))
    for name in containers:
        states[name] = _hosted_state(fleet, name, states, listings)
    return {name: states[name] for name in ordered}


def up_nodes(states: Mapping[str, PowerState]) -> set[str]:
    return {name for name, state in states.items() if state.up}


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
        if parent is not None and parent not in parents and states.get(parent) and states[parent].up:
            parents.append(parent)
    return parents


def _observe_machine(fleet: Fleet, name: str, probes: Probes, timeout: float) -> PowerState:
    node = fleet.nodes[name]
    if node.address is None:
        return PowerState(name, False, "no address to probe: counted as down")
    port = fleet.ssh_of(name).port
    up, detail = probes.tcp(node.address, port, timeout)
    return PowerState(name, up, detail)


def _proxmox_listing(fleet: Fleet, host: str, secret_of: Callable[[str], str], probes: Probes, timeout: float):
    proxmox = fleet.nodes[host].proxmox
    assert proxmox is not None  # the model guarantees it for a guest's parent
    try:
        secret = secret_of(host)
    except Exception as exc:  # the secret's own error names its source, never its value
        raise ProbeError(f"cannot read the Proxmox token secret of {host}: {exc}") from None
    config = {"api": proxmox.api, "token_id": proxmox.token_id, "verify_tls": proxmox.verify_tls}
    return probes.proxmox_guests(config, secret, timeout)


def _docker_listing(fleet: Fleet, host: str, probes: Probes, timeout: float):
    docker = fleet.nodes[host].docker
    assert docker is not None
    return probes.docker_containers(docker.api, docker.tls, timeout)


def _hosted_state(fleet: Fleet, name: str, states: Mapping[str, PowerState], listings: Mapping) -> PowerState:
    """A guest or container from its parent's listing: down with its host, unknown when the API failed."""
    node = fleet.nodes[name]
    parent = node.parent
    assert parent is not None
    if not states[parent].up:
        return PowerState(name, False, f"its host {parent} is down")
    listing = listings[parent]
    if isinstance(listing, ProbeError):
        return PowerState(name, False, f"unknown, counted as down: {listing}")
    if node.kind == "container":
        key = node.container or name
        api, what, missing = "Docker", f"container {key}", f"has no container {key}"
    else:
        key = node.vmid
        api, what, missing = "Proxmox", f"{node.kind} {key}", f"does not know {node.kind} {key}"
    status = listing.get(key)
    if status is None:
        return PowerState(name, False, f"{api} API of {parent} {missing}")
    return PowerState(name, status == "running", f"{api} API of {parent}: {what} {status}")


# --------------------------------------------------------------------------- the real probes


def default_probes() -> Probes:
    return Probes(tcp=tcp_probe, proxmox_guests=proxmox_guests, docker_containers=docker_containers)


def tcp_probe(host: str, port: int, timeout: float) -> tuple[bool, str]:
    """Does ``host:port`` accept a TCP connection within ``timeout`` seconds?"""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"SSH port {where} accepts connections"
    except TimeoutError:
        return False, f"no answer on {where} within {timeout:g}s"
    except ConnectionRefusedError:
        return False, f"{where} refuses connections (booting or shutting down)"
    except OSError as exc:
        return False, f"no answer on {where}: {exc.strerror or exc}"


def proxmox_guests(config: Mapping[str, object], secret: str, timeout: float) -> dict[int, str]:
    """``{vmid: status}`` of every guest of the cluster behind one Proxmox API."""
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
            resources = client.cluster.resources.get(type="vm")
    except Exception as exc:  # requests, proxmoxer and TLS errors; none carries the token
        raise ProbeError(f"Proxmox API {api} did not answer: {_short(exc)}") from None
    return {int(guest["vmid"]): str(guest.get("status", "unknown")) for guest in resources or []}


def docker_containers(api: str, tls: bool, timeout: float) -> dict[str, str]:
    """``{name: state}`` of every container of one Docker API (``running``, ``exited``, …)."""
    import docker  # imported on use

    try:
        client = docker.APIClient(base_url=api, tls=tls, timeout=max(1, round(timeout)), version="auto")
        try:
            listing = client.containers(all=True)
        finally:
            client.close()
    except Exception as exc:
        raise ProbeError(f"Docker API {api} did not answer: {_short(exc)}") from None
    states: dict[str, str] = {}
    for container in listing:
        for name in container.get("Names") or []:
            states[name.lstrip("/")] = str(container.get("State", "unknown"))
    return states


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
    "up_nodes",
]
