"""The cluster directory shared by every emulator of a cluster, like /etc/pve on pmxcfs.

Cluster configuration, credentials, guests and heartbeats are JSON files in it (layout in
docs/lab-pve-emulator.md), written atomically and under a cluster-wide lock. The lab
creates it with :func:`init_cluster` and :func:`write_guest`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import die

HEARTBEAT_STALE = 5.0  # a node whose heartbeat is older than this is offline
DEFAULT_MAXMEM = 512 * 1024 * 1024
DEFAULT_MAXDISK = 8 * 1024 * 1024 * 1024
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$")
GUEST_KINDS = {"lxc": ("CT", "lxc"), "qemu": ("VM", "qemu-server")}  # guest_type() and config dir per kind
# /etc/pve/storage.cfg of a fresh install: "local" plus "local-lvm" (ext4/LVM install) or "local-zfs" (ZFS
# install); the lab's cluster has both on every node. Guest disks default to local-lvm.
DEFAULT_STORAGES = {
    "local": {"type": "dir", "content": "iso,vztmpl,backup", "path": "/var/lib/vz"},
    "local-lvm": {"type": "lvmthin", "content": "rootdir,images", "vgname": "pve", "thinpool": "data"},
    "local-zfs": {"type": "zfspool", "content": "rootdir,images", "pool": "rpool/data", "sparse": 1},
}


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def _write_json(path: Path, data) -> None:
    """Write atomically (rename), so readers in other processes never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _flock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Exclusive fcntl lock on ``path``; flock locks conflict between threads too (one open file each)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(str(path)) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


class ClusterState:
    """Access to the shared cluster directory (see the module docstring and docs/lab-pve-emulator.md)."""

    def __init__(self, cluster_dir: str | os.PathLike):
        self.root = Path(cluster_dir)

    # paths
    @property
    def guests_dir(self) -> Path:
        return self.root / "guests"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    def locked(self):
        """Cluster-wide lock for read-modify-write of shared files (pmxcfs serialises writes the same way)."""
        return _flock(self.root / "priv" / "lock")

    # cluster and credentials
    def cluster(self) -> dict:
        data = _read_json(self.root / "cluster.json")
        if data is None:
            raise die(f"cluster configuration {self.root / 'cluster.json'} does not exist")
        return data

    def nodes(self) -> dict[str, dict]:
        return self.cluster().get("nodes", {})

    def quorum(self, online: Callable[[str], bool], qdevice_alive: Callable[[dict], bool]) -> dict:
        """Votes present and needed, as corosync votequorum counts them (exec/votequorum.c calculate_quorum):
        quorate when the members online plus a live QDevice cast ``expected // 2 + 1`` votes."""
        cluster = self.cluster()
        nodes = cluster.get("nodes", {})
        qdevice = cluster.get("qdevice")
        votes = {name: int(spec.get("votes", 1)) for name, spec in nodes.items()}
        qdevice_votes = int(qdevice.get("votes", 1)) if qdevice else 0
        expected = int(cluster.get("expected_votes") or sum(votes.values()) + qdevice_votes)
        present = sum(v for name, v in votes.items() if online(name))
        if qdevice and qdevice_alive(qdevice):
            present += qdevice_votes
        needed = expected // 2 + 1
        return {"expected": expected, "present": present, "needed": needed, "quorate": present >= needed}

    def storages(self) -> dict[str, dict]:
        """storage.cfg: ``{id: {"type", "content": "rootdir,images", "nodes": "pve1,pve2", "shared", "disable"}}``."""
        return _read_json(self.root / "storage.json", DEFAULT_STORAGES)

    def storage_check_enabled(self, storeid: str, node: str | None = None) -> dict:
        """pve-storage src/PVE/Storage.pm storage_check_enabled (+ storage_config, storage_check_node)."""
        scfg = self.storages().get(storeid)
        if scfg is None:
            raise die(f"storage '{storeid}' does not exist")
        if scfg.get("disable"):
            raise die(f"storage '{storeid}' is disabled")
        nodes = [n for n in str(scfg.get("nodes") or "").split(",") if n]
        if node and nodes and node not in nodes:
            raise die(f"storage '{storeid}' is not available on node '{node}'")
        return scfg

    def tokens(self) -> dict[str, str]:
        return _read_json(self.root / "priv" / "tokens.json", {})

    def users(self) -> dict[str, str]:
        return _read_json(self.root / "priv" / "users.json", {})

    def authkey(self) -> bytes:
        """The cluster's ticket signing key (``priv/authkey.key``), created on first use."""
        path = self.root / "priv" / "authkey.key"
        if not path.exists():
            with self.locked():
                if not path.exists():
                    path.write_text(secrets.token_hex(32))
                    path.chmod(0o600)
        return path.read_text().strip().encode()

    # guests
    def guest(self, vmid: int) -> dict | None:
        return _read_json(self.guests_dir / f"{int(vmid)}.json")

    def guests(self) -> dict[int, dict]:
        out = {}
        for path in sorted(self.guests_dir.glob("*.json")):
            if path.stem.isdigit():
                data = _read_json(path)
                if data is not None:
                    out[int(path.stem)] = data
        return out

    def update_guest(self, vmid: int, change: Callable[[dict], None]) -> dict:
        with self.locked():
            data = self.guest(vmid)
            if data is None:
                raise die(f"guest {vmid} vanished from the cluster configuration")
            change(data)
            _write_json(self.guests_dir / f"{int(vmid)}.json", data)
            return data

    # heartbeats
    def write_heartbeat(self, node: str, data: dict) -> None:
        _write_json(self.node_dir(node) / "heartbeat.json", data)

    def heartbeat(self, node: str) -> dict | None:
        return _read_json(self.node_dir(node) / "heartbeat.json")

    def node_online(self, node: str) -> bool:
        beat = self.heartbeat(node)
        return bool(beat and beat.get("online") and time.time() - beat.get("time", 0) < HEARTBEAT_STALE)


def init_cluster(
    cluster_dir: str | os.PathLike,
    name: str,
    nodes: dict[str, dict],
    tokens: dict[str, str] | None = None,
    users: dict[str, str] | None = None,
    qdevice: dict | None = None,
    expected_votes: int | None = None,
    storages: dict[str, dict] | None = None,
) -> ClusterState:
    """Create (or update) a cluster directory: ``nodes`` maps node name to ``{"ip": …, "port": 8006}``
    (and optionally ``"votes"``, default 1); ``qdevice`` is ``{"ip": …, "port": …, "votes": 1}``: its
    vote counts while that address accepts TCP connections (corosync-qnetd listens on 5403).

    ``tokens`` maps ``user@realm!tokenid`` to its secret, ``users`` maps ``user@realm`` to a password.
    ``storages`` is storage.cfg (default :data:`DEFAULT_STORAGES`): ``{id: {"type": "lvmthin", "content":
    "rootdir,images", "nodes": "pve1", "shared": 0, "disable": 0}}``.
    """
    state = ClusterState(cluster_dir)
    for node in nodes:
        if not NODE_RE.match(node):
            raise ValueError(f"invalid node name {node!r}")
    (state.root / "priv").mkdir(parents=True, exist_ok=True)
    state.guests_dir.mkdir(exist_ok=True)
    with state.locked():
        config: dict = {"name": name, "nodes": nodes}
        if qdevice:
            config["qdevice"] = qdevice
        if expected_votes:
            config["expected_votes"] = int(expected_votes)
        _write_json(state.root / "cluster.json", config)
        if tokens is not None:
            _write_json(state.root / "priv" / "tokens.json", tokens)
        if users is not None:
            _write_json(state.root / "priv" / "users.json", users)
        if storages is not None:
            _write_json(state.root / "storage.json", storages)
    state.authkey()
    return state


def write_guest(
    cluster_dir: str | os.PathLike,
    vmid: int,
    *,
    type: str,
    node: str,
    name: str,
    container: str | None = None,
    maxmem: int = DEFAULT_MAXMEM,
    maxdisk: int = DEFAULT_MAXDISK,
    cpus: int = 1,
    tags: str | list[str] = "",
    onboot: int = 0,
    mounts: dict[str, dict] | None = None,
    rootfs: str | None = None,
) -> dict:
    """Declare a guest (``guests/<vmid>.json``); its Docker ``container`` (default: ``name``) must exist.

    ``mounts`` maps ``mpN`` to ``{"volume": "/srv/media" | "local-lvm:vm-201-disk-1", "mp": "/media",
    "bind": bool, "shared": bool, "size": bytes}``; a non-shared bind mount blocks migration like on real
    PVE. ``maxdisk`` is the rootfs size: a migration copies it in a time that follows it.
    """
    if type not in GUEST_KINDS:
        raise ValueError(f"guest type must be 'lxc' or 'qemu', not {type!r}")
    if not 100 <= int(vmid) <= 999999999:
        raise ValueError(f"invalid vmid {vmid}")
    guest = {
        "vmid": int(vmid),
        "type": type,
        "node": node,
        "name": name,
        "container": container or name,
        "maxmem": int(maxmem),
        "maxdisk": int(maxdisk),
        "cpus": int(cpus),
        "tags": ";".join(tags) if isinstance(tags, list) else tags,
        "onboot": 1 if onboot else 0,
        "mounts": mounts or {},
        "rootfs": rootfs or f"local-lvm:vm-{vmid}-disk-0",
        "lock": None,
    }
    state = ClusterState(cluster_dir)
    with state.locked():
        _write_json(state.guests_dir / f"{int(vmid)}.json", guest)
    return guest
