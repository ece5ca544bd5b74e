"""Discovered, not configured: the guests and containers the fleet's APIs report that the fleet does not declare.

Asked of every Proxmox VE cluster the fleet knows (``/cluster/resources`` through one of its
machines: any member answers for the whole cluster) and of every Docker API of a fleet node. Each
thing found that the fleet does not declare comes with the fleet ``nodes`` entry to paste.

One home for the discovery: the collection's own ``proxmox_guest_info`` and
``docker_container_info`` modules (their ``discover`` functions and the module_utils behind them:
classification, suggested names, pre-filled entries) are imported here as Ansible imports them,
from the collection beside this package (:func:`wakegrid.actuate.runner.collection_root`).

**Unknown is not "nothing found"**: an API that does not answer (or whose token cannot be read)
is a :class:`DiscoverySource` in state ``unknown`` with the reason, never an empty list.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, Field

from wakegrid.actuate.runner import collection_root
from wakegrid.daemon.logs import get_logger
from wakegrid.model import DockerApi, Fleet

log = get_logger("discovered")

PROXMOX_PORT = 8006
COLLECTION_PACKAGE = "ansible_collections.wakegrid.fleet.plugins"
# One source may make several calls (nodes, resources, each node's guests): its whole answer may take
# this many API timeouts before it is given up as unknown.
CALLS_PER_SOURCE = 4


class Discovered(BaseModel):
    """A guest or container that runs under a fleet node and that the fleet does not declare."""

    kind: Literal["vm", "lxc", "container"]
    name: str = Field(description="the suggested fleet node name (valid and unique in the fleet)")
    where: str = Field(description="the fleet node it runs on: the Proxmox machine or the Docker host")
    entry: dict[str, Any] = Field(description="the fleet `nodes` entry to paste, as far as the API knows it")
    entry_yaml: str = Field(description="the same entry as YAML, under its name")


class DiscoverySource(BaseModel):
    """One API asked, and what came of it: ``unknown`` (with why) is not "nothing there"."""

    kind: Literal["proxmox", "docker"]
    node: str = Field(description="the fleet node whose API it is (a cluster: the machines asked, in order)")
    api: str
    state: Literal["ok", "unknown"]
    detail: str


class Discovery(BaseModel):
    found: list[Discovered]
    sources: list[DiscoverySource]


# --------------------------------------------------------------------------- the collection's code

_collections_lock = threading.Lock()
_collections_dir: Path | None = None


def collection_module(name: str) -> ModuleType:
    """``plugins/<name>`` of the collection (``"modules.proxmox_guest_info"``), imported as Ansible imports it.

    A private collections root whose ``ansible_collections/wakegrid/fleet`` links to the collection
    goes on ``sys.path`` (``ansible_collections`` is a namespace package), so that the module_utils'
    own ``ansible_collections.wakegrid.fleet...`` imports resolve exactly as on a managed host.
    """
    global _collections_dir
    with _collections_lock:
        if _collections_dir is None:
            root = Path(tempfile.mkdtemp(prefix="wakegrid-collections-"))
            atexit.register(shutil.rmtree, root, ignore_errors=True)
            link = root / "ansible_collections" / "wakegrid" / "fleet"
            link.parent.mkdir(parents=True)
            link.symlink_to(collection_root(), target_is_directory=True)
            sys.path.append(str(root))
            _collections_dir = root
    return importlib.import_module(f"{COLLECTION_PACKAGE}.{name}")


def fleet_nodes(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """The fleet's nodes as the discovery modules take them (``fleet_nodes``): what they match on, no secret."""
    nodes: dict[str, dict[str, Any]] = {}
    for name, node in fleet.nodes.items():
        entry: dict[str, Any] = {"kind": node.kind, "parent": node.parent}
        if node.vmid is not None:
            entry["vmid"] = node.vmid
        if node.container is not None:
            entry["container"] = node.container
        if node.proxmox is not None:
            entry["proxmox"] = {"node": node.proxmox.node}
        nodes[name] = entry
    return nodes


# --------------------------------------------------------------------------- the sources


class _Unknown(Exception):
    """A source that could not be asked; the message says why, never a secret."""


def _proxmox_clusters(fleet: Fleet) -> list[list[str]]:
    """The fleet's Proxmox machines, one list per cluster (members in fleet order); a machine alone is its own."""
    clusters: dict[str, list[str]] = {}
    for name, node in fleet.nodes.items():
        if node.proxmox is not None:
            clusters.setdefault(node.proxmox.cluster or f"machine:{name}", []).append(name)
    return list(clusters.values())


def _ask_proxmox(fleet: Fleet, machine: str, nodes: dict[str, dict[str, Any]], timeout: float) -> dict[str, Any]:
    proxmox = fleet.nodes[machine].proxmox
    assert proxmox is not None
    info = collection_module("modules.proxmox_guest_info")
    utils = collection_module("module_utils.proxmox")
    try:
        secret = proxmox.token_secret.reveal()
    except Exception as exc:  # the secret's own error names its source, never its value
        raise _Unknown(f"cannot read the Proxmox token secret of {machine}: {exc}") from None
    url = urlsplit(proxmox.api)
    params = {
        "api_host": url.hostname,
        "api_port": url.port or PROXMOX_PORT,
        "api_user": None,
        "api_password": None,
        "api_token_id": proxmox.token_id,
        "api_token_secret": secret,
        "validate_certs": proxmox.verify_tls,
        "api_timeout": max(1, round(timeout)),
        "known_vmids": [],
        "fleet_nodes": nodes,
        "node": None,
    }
    try:
        result, _warnings = info.discover(utils.ProxmoxClient(params), params)
    except utils.ProxmoxError as exc:
        raise _Unknown(exc.msg) from None
    return result


def _docker_params(api: DockerApi, timeout: float) -> dict[str, Any]:
    """The docker modules' connection options for a fleet ``docker:`` (docs/fleet.md ↔ docker_argument_spec)."""
    key_file = key_content = None
    if api.key is not None:
        key_file = api.key.file
        if key_file is None:
            key_content = api.key.reveal()  # SecretError names where it is, never the value
    return {
        "docker_host": api.api,
        "tls": api.tls or api.api.startswith("https://"),
        "validate_certs": api.tls_verify and (api.tls or api.api.startswith("https://")),
        "ca_path": api.ca,
        "client_cert": api.cert,
        "client_key": key_file,
        "client_key_content": key_content,
        "api_version": "auto",
        "api_timeout": max(1, round(timeout)),
        "api_wait_timeout": 0,
        "use_ssh_client": False,
    }


def _ask_docker(fleet: Fleet, host: str, nodes: dict[str, dict[str, Any]], timeout: float) -> dict[str, Any]:
    api = fleet.nodes[host].docker
    assert api is not None
    if urlsplit(api.api).scheme == "unix":
        # The socket is on that host, not here: reading our own would describe another Docker.
        raise _Unknown(f"the Docker API of {host} is a unix socket on that host: not reachable from here")
    info = collection_module("modules.docker_container_info")
    utils = collection_module("module_utils.docker_api")
    temporary: list[str] = []
    try:
        params = {
            **_docker_params(api, timeout),
            "parent": host,
            "known_containers": [],
            "fleet_nodes": nodes,
            "filters": {},
        }
        client = utils.connect(params, temporary.append)
        try:
            return info.discover(client, params)
        finally:
            client.api.close()
    except utils.DockerApiError as exc:
        raise _Unknown(exc.msg) from None
    except Exception as exc:  # SDK, requests and OS errors once connected; none carries the key
        raise _Unknown(f"Docker API {api.api} of {host}: {_short(exc)}") from None
    finally:
        for path in temporary:
            Path(path).unlink(missing_ok=True)


async def _bounded(call, timeout: float):
    """``call()`` in a thread, given up after ``timeout`` (the thread ends on its own API timeout)."""
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(call)
    except TimeoutError:
        raise _Unknown(f"no complete answer within {timeout:g} s") from None


async def _proxmox_source(
    fleet: Fleet, members: list[str], nodes: dict[str, dict[str, Any]], timeout: float
) -> tuple[DiscoverySource, list[tuple[str, str, dict[str, Any]]]]:
    """One cluster: its first member that answers speaks for all; each member's failure is kept for the reason."""
    failures = []
    for machine in members:
        api = fleet.nodes[machine].proxmox.api  # type: ignore[union-attr]
        try:
            result = await _bounded(
                lambda m=machine: _ask_proxmox(fleet, m, nodes, timeout), timeout * CALLS_PER_SOURCE
            )
        except _Unknown as exc:
            failures.append(f"{machine}: {exc}")
            continue
        found = [(name, str(entry["parent"]), entry) for name, entry in result["unconfigured"].items()]
        counts = result["counts"]
        detail = f"{counts['guests']} guests, {counts['unconfigured']} not in the fleet"
        return DiscoverySource(kind="proxmox", node=machine, api=api, state="ok", detail=detail), found
    apis = ", ".join(fleet.nodes[m].proxmox.api for m in members)  # type: ignore[union-attr]
    source = DiscoverySource(
        kind="proxmox", node=", ".join(members), api=apis, state="unknown", detail="; ".join(failures)
    )
    return source, []


async def _docker_source(
    fleet: Fleet, host: str, nodes: dict[str, dict[str, Any]], timeout: float
) -> tuple[DiscoverySource, list[tuple[str, str, dict[str, Any]]]]:
    api = fleet.nodes[host].docker.api  # type: ignore[union-attr]
    try:
        result = await _bounded(lambda: _ask_docker(fleet, host, nodes, timeout), timeout * CALLS_PER_SOURCE)
    except _Unknown as exc:
        return DiscoverySource(kind="docker", node=host, api=api, state="unknown", detail=str(exc)), []
    except Exception as exc:  # a secret that cannot be read (SecretError names its source)
        return DiscoverySource(kind="docker", node=host, api=api, state="unknown", detail=_short(exc)), []
    counts = result["counts"]
    detail = f"{counts['containers']} containers, {counts['unconfigured']} not in the fleet"
    found = [(name, host, entry) for name, entry in result["unconfigured"].items()]
    return DiscoverySource(kind="docker", node=host, api=api, state="ok", detail=detail), found


async def discover(fleet: Fleet, *, timeout: float) -> Discovery:
    """Ask every Proxmox cluster and Docker API of the fleet, at once; ``timeout`` bounds each API call."""
    nodes = fleet_nodes(fleet)
    asks = [_proxmox_source(fleet, members, nodes, timeout) for members in _proxmox_clusters(fleet)]
    asks += [_docker_source(fleet, host, nodes, timeout) for host, node in fleet.nodes.items() if node.docker]
    answers = await asyncio.gather(*asks)
    fleet_entries = collection_module("module_utils.fleet_entries")
    taken = set(fleet.nodes)
    found: list[Discovered] = []
    for _source, things in answers:
        for suggested, where, entry in things:
            # Each module keeps its names unique in the fleet; two sources may still suggest the same one.
            name = (
                suggested if suggested not in taken else fleet_entries.suggest_name(suggested, where, taken, suggested)
            )
            taken.add(name)
            document = yaml.safe_dump({name: entry}, sort_keys=False, default_flow_style=False, allow_unicode=True)
            found.append(Discovered(kind=entry["kind"], name=name, where=where, entry=entry, entry_yaml=document))
    sources = [source for source, _things in answers]
    for source in sources:
        if source.state == "unknown":
            log.warning(
                "discovery: an API did not answer",
                extra={"fields": {"kind": source.kind, "node": source.node, "reason": source.detail}},
            )
    return Discovery(found=found, sources=sources)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


__all__ = ["Discovered", "Discovery", "DiscoverySource", "collection_module", "discover", "fleet_nodes"]
