"""A stateful Proxmox VE API emulator for the lab, standard library only.

No real PVE runs in the lab, so each "Proxmox" lab host runs this server instead of
pveproxy. It answers the subset of ``/api2/json`` that the wakegrid collection and
reconciler use, with PVE's envelope, error conventions, UPID tasks, ticket and API
token auth, so that proxmoxer works against it unchanged. Guests are real Docker
containers that it starts, stops and moves between nodes.

Cluster state lives in a directory shared by every emulator of a cluster (like
/etc/pve on pmxcfs); see docs/lab-pve-emulator.md for its layout. The lab creates it
with :func:`init_cluster` and :func:`write_guest` and runs one emulator per node::

    python3 pve.py --node pve1 --cluster-dir /etc/pve --listen 0.0.0.0 --port 8006

It runs inside lab hosts that only have Debian's python3, so it must stay stdlib-only
and importable both as ``wakegrid.lab.pve`` and as a loose file next to engine.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import hmac
import http.client
import http.cookies
import http.server
import itertools
import json
import logging
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    from . import engine as docker_engine
except ImportError:  # run as a loose script copied next to engine.py (even under python -I, which drops its dir)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import engine as docker_engine  # type: ignore[no-redef]

log = logging.getLogger("wakegrid.lab.pve")

PVE_VERSION = {"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"}
HEARTBEAT_INTERVAL = 1.0  # seconds between two heartbeats of a node (pvestatd broadcasts every 10 s)
HEARTBEAT_STALE = 5.0  # a node whose heartbeat is older than this is offline
TICKET_LIFETIME = 7200  # PVE tickets are valid two hours
LOCK_TIMEOUT = 10.0  # like PVE's config lock timeout
DEFAULT_MAXMEM = 512 * 1024 * 1024
DEFAULT_MAXDISK = 8 * 1024 * 1024 * 1024
NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?$")
UPID_RE = re.compile(
    r"^UPID:(?P<node>[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?):(?P<pid>[0-9A-F]{8}):(?P<pstart>[0-9A-F]{8,9}):"
    r"(?P<starttime>[0-9A-F]{8}):(?P<type>[^:\s]+):(?P<id>[^:\s]*):(?P<user>[^:\s]+):$"
)
GUEST_KINDS = {"lxc": ("CT", "lxc"), "qemu": ("VM", "qemu-server")}  # guest_type() and config dir per kind


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An API failure: ``status`` and the message (sent as HTTP reason phrase), plus per-parameter errors."""

    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


def die(message: str) -> ApiError:
    """PVE's ``die "...\\n"``: HTTP 500 with the message as reason phrase."""
    return ApiError(500, message)


def param_error(errors: dict[str, str]) -> ApiError:
    return ApiError(400, "Parameter verification failed.", errors)


# --------------------------------------------------------------------------- cluster state


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
) -> ClusterState:
    """Create (or update) a cluster directory: ``nodes`` maps node name to ``{"ip": …, "port": 8006}``.

    ``tokens`` maps ``user@realm!tokenid`` to its secret, ``users`` maps ``user@realm`` to a password.
    """
    state = ClusterState(cluster_dir)
    for node in nodes:
        if not NODE_RE.match(node):
            raise ValueError(f"invalid node name {node!r}")
    (state.root / "priv").mkdir(parents=True, exist_ok=True)
    state.guests_dir.mkdir(exist_ok=True)
    with state.locked():
        _write_json(state.root / "cluster.json", {"name": name, "nodes": nodes})
        if tokens is not None:
            _write_json(state.root / "priv" / "tokens.json", tokens)
        if users is not None:
            _write_json(state.root / "priv" / "users.json", users)
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
    "bind": bool, "shared": bool}``; a non-shared bind mount blocks migration like on real PVE.
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


# --------------------------------------------------------------------------- parameters


class P:
    """One API parameter: JSON-schema-like type (boolean, integer, number, string, or an enum list)."""

    def __init__(self, kind: str | list[str] = "string", optional: bool = True, minimum: int | None = None):
        self.kind = kind
        self.optional = optional
        self.minimum = minimum


def check_params(raw: dict[str, object], schema: dict[str, P]) -> dict[str, object]:
    """Validate like PVE::JSONSchema: unknown, missing and badly typed values are 400 errors."""
    errors: dict[str, str] = {}
    out: dict[str, object] = {}
    for key, value in raw.items():
        spec = schema.get(key)
        if spec is None:
            errors[key] = "property is not defined in schema and the schema does not allow additional properties"
            continue
        if isinstance(value, bool):  # a JSON body's true/false
            value = "1" if value else "0"
        value = str(value)
        kind = spec.kind
        if isinstance(kind, list):
            if value not in kind:
                errors[key] = f"value '{value}' does not have a value in the enumeration '{', '.join(kind)}'"
            else:
                out[key] = value
        elif kind == "boolean":
            # PVE's type check is strict: only 0 and 1 (so Python's True, sent as "True", fails)
            if value not in ("0", "1"):
                errors[key] = f"type check ('boolean') failed - got '{value}'"
            else:
                out[key] = value == "1"
        elif kind == "integer":
            if not re.fullmatch(r"[+-]?\d+", value):
                errors[key] = f"type check ('integer') failed - got '{value}'"
            elif spec.minimum is not None and int(value) < spec.minimum:
                errors[key] = f"value must have a minimum value of {spec.minimum}"
            else:
                out[key] = int(value)
        elif kind == "number":
            if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", value):
                errors[key] = f"type check ('number') failed - got '{value}'"
            else:
                out[key] = float(value)
        else:
            out[key] = value
    for key, spec in schema.items():
        if not spec.optional and key not in raw:
            errors[key] = "property is missing and it is not optional"
    if errors:
        raise param_error(errors)
    return out


# --------------------------------------------------------------------------- tasks


def _upid_file(upid: str) -> str:
    return upid.replace(":", "_").rstrip("_")


class Task:
    """A worker task: an UPID, a log file and a status record in ``nodes/<node>/tasks``."""

    def __init__(self, state: ClusterState, node: str, pid: int, ttype: str, tid: str, user: str):
        self.state = state
        self.node = node
        self.starttime = int(time.time())
        self.pstart = int(time.monotonic() * 100) & 0xFFFFFFFF  # like a process start time in clock ticks
        self.upid = f"UPID:{node}:{pid:08X}:{self.pstart:08X}:{self.starttime:08X}:{ttype}:{tid}:{user}:"
        self.record = {
            "upid": self.upid,
            "node": node,
            "pid": pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": ttype,
            "id": tid,
            "user": user.split("!")[0],
            "status": "running",
        }
        if "!" in user:
            self.record["tokenid"] = user.split("!", 1)[1]
        self.dir = state.node_dir(node) / "tasks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / f"{_upid_file(self.upid)}.log"
        self.log_path.touch()
        _write_json(self.dir / f"{_upid_file(self.upid)}.json", self.record)

    def log(self, text: str) -> None:
        with self.log_path.open("a") as fh:
            for line in str(text).rstrip("\n").split("\n"):
                fh.write(line + "\n")

    def migrate_log(self, text: str, error: bool = False) -> None:
        """PVE::AbstractMigrate's log lines: a timestamp, and ``ERROR:`` for errors."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in str(text).rstrip("\n").split("\n"):
            self.log(f"{stamp} ERROR: {line}" if error else f"{stamp} {line}")

    def finish(self, error: str | None) -> None:
        self.log("TASK OK" if error is None else f"TASK ERROR: {error}")
        self.record.update(status="stopped", exitstatus="OK" if error is None else error, endtime=int(time.time()))
        _write_json(self.dir / f"{_upid_file(self.upid)}.json", self.record)


def read_task(state: ClusterState, node: str, upid: str) -> tuple[dict, list[str]]:
    base = state.node_dir(node) / "tasks" / _upid_file(upid)
    record = _read_json(base.with_suffix(".json"))
    if record is None:
        raise die("no such task")
    try:
        lines = base.with_suffix(".log").read_text().splitlines()
    except FileNotFoundError:
        lines = []
    return record, lines


# --------------------------------------------------------------------------- the emulator


def _parse_docker_time(value: str) -> float | None:
    """Docker's RFC 3339 timestamps with nanoseconds, e.g. 2026-01-01T10:00:00.123456789Z."""
    if not value or value.startswith("0001-"):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    tz = "+00:00" if match.group(3) == "Z" else match.group(3)
    return dt.datetime.fromisoformat(match.group(1) + tz).timestamp()


class Emulator:
    """The API of one node; every method that handles a route returns the ``data`` of the envelope."""

    def __init__(
        self,
        node: str,
        cluster_dir: str,
        docker_socket: str = "/var/run/docker.sock",
        migrate_delay: float = 2.0,
        stop_timeout: int = 30,
    ):
        self.node = node
        self.state = ClusterState(cluster_dir)
        self.engine = docker_engine.Engine(docker_socket)
        self.migrate_delay = migrate_delay  # seconds of simulated disk copy, so a migration is observable
        self.stop_timeout = stop_timeout  # per-guest clean shutdown time on node poweroff (stopall)
        self.booted = time.time()
        self._pids = itertools.count(os.getpid() * 16 % 0x3FFFFF + 1)
        self._pid_lock = threading.Lock()
        self.routes = self._routes()

    # ---- guests and docker

    def load_config(self, vmid: int, kind: str) -> dict:
        """Like PVE::AbstractConfig::load_config: the guest must be of this kind on this node."""
        guest = self.state.guest(vmid)
        if not guest or guest.get("node") != self.node or guest.get("type") != kind:
            confdir = GUEST_KINDS[kind][1]
            raise die(f"Configuration file 'nodes/{self.node}/{confdir}/{vmid}.conf' does not exist")
        return guest

    @staticmethod
    def check_lock(guest: dict) -> None:
        if guest.get("lock"):
            raise die(f"{GUEST_KINDS[guest['type']][0]} is locked ({guest['lock']})")

    def is_running(self, guest: dict) -> bool:
        try:
            return self.engine.is_running(guest["container"])
        except docker_engine.EngineError as exc:
            raise die(exc.message) from exc

    def guest_status(self, guest: dict, details: bool = True) -> dict:
        """Status fields as PVE's vmstatus reports them."""
        info = None
        try:
            info = self.engine.inspect(guest["container"])
        except docker_engine.EngineError as exc:
            log.warning("cannot inspect %s: %s", guest["container"], exc)
        running = bool(info and info["State"]["Running"])
        started = _parse_docker_time(info["State"].get("StartedAt", "")) if running else None
        status = {
            "vmid": guest["vmid"],
            "name": guest["name"],
            "status": "running" if running else "stopped",
            "uptime": int(time.time() - started) if started else 0,
            "maxmem": guest.get("maxmem", DEFAULT_MAXMEM),
            "mem": self.engine.memory_usage(guest["container"]) if running and details else 0,
            "maxdisk": guest.get("maxdisk", DEFAULT_MAXDISK),
            "disk": 0,
            "cpus": guest.get("cpus", 1),
            "cpu": 0,
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
        }
        if guest["type"] == "lxc":
            status.update(type="lxc", maxswap=DEFAULT_MAXMEM, swap=0)
        else:
            status["qmpstatus"] = status["status"]
        if guest.get("tags"):
            status["tags"] = guest["tags"]
        if guest.get("lock"):
            status["lock"] = guest["lock"]
        return status

    def local_guests(self) -> list[dict]:
        return [g for g in self.state.guests().values() if g.get("node") == self.node]

    # ---- tasks

    def spawn(self, ttype: str, tid: str, user: str, work: Callable[[Task], None]) -> str:
        """Run ``work`` in a background thread as a PVE task; returns its UPID at once."""
        with self._pid_lock:
            pid = next(self._pids) & 0x3FFFFF
        task = Task(self.state, self.node, pid, ttype, tid, user)

        def run() -> None:
            error = None
            try:
                work(task)
            except ApiError as exc:
                error = exc.message
            except Exception as exc:  # a task reports every failure in its log, like a forked worker
                log.exception("task %s failed", task.upid)
                error = str(exc) or exc.__class__.__name__
            task.finish(error)

        threading.Thread(target=run, name=f"task-{ttype}-{tid}", daemon=True).start()
        return task.upid

    @contextlib.contextmanager
    def guest_lock(self, vmid: int, kind: str) -> Iterator[None]:
        """Node-local per-guest lock held by a task, like PVE's lock_config (/run/lock on each node)."""
        path = self.state.node_dir(self.node) / "locks" / f"{vmid}.lock"
        try:
            with _flock(path, timeout=LOCK_TIMEOUT):
                yield
        except TimeoutError:
            shown = f"/run/lock/lxc/pve-config-{vmid}.lock"
            if kind == "qemu":
                shown = f"/var/lock/qemu-server/lock-{vmid}.conf"
            raise die(f"can't lock file '{shown}' - got timeout") from None

    # ---- power actions (shared by the API, onboot and poweroff)

    def _docker(self, action: Callable[[], None]) -> None:
        try:
            action()
        except docker_engine.EngineError as exc:
            raise die(exc.message) from exc

    def do_start(self, task: Task, vmid: int, kind: str, skiplock: bool = False) -> None:
        guest = self.load_config(vmid, kind)
        if not skiplock:
            self.check_lock(guest)
        if self.is_running(guest):
            raise die(f"{GUEST_KINDS[kind][0]} {vmid} already running")
        try:
            self.engine.start(guest["container"])
        except docker_engine.EngineError as exc:
            task.log(exc.message)
            message = f"startup for container '{vmid}' failed" if kind == "lxc" else f"start failed: {exc.message}"
            raise die(message) from exc

    def do_stop(self, vmid: int, kind: str, skiplock: bool = False) -> None:
        guest = self.load_config(vmid, kind)
        if not skiplock:
            self.check_lock(guest)
        self._docker(lambda: self.engine.stop(guest["container"], timeout=0))  # SIGKILL: "abruptly stop"

    def do_shutdown(self, task: Task, vmid: int, kind: str, timeout: int, force: bool) -> None:
        """Clean shutdown: the container's stop signal, then wait; kill after ``timeout`` only with forceStop."""
        guest = self.load_config(vmid, kind)
        self.check_lock(guest)
        if not self.is_running(guest):
            return
        info = self.engine.inspect(guest["container"]) or {}
        stop_signal = (info.get("Config") or {}).get("StopSignal") or "SIGTERM"
        with contextlib.suppress(docker_engine.EngineError):  # 409 if it just stopped on its own
            self.engine.kill(guest["container"], stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running(guest):
                return
            time.sleep(0.1)
        if not self.is_running(guest):
            return
        if not force:
            raise die("container did not stop" if kind == "lxc" else "VM quit/powerdown failed - got timeout")
        task.log("VM still running - terminating now with SIGTERM" if kind == "qemu" else "forcing stop of container")
        self._docker(lambda: self.engine.stop(guest["container"], timeout=0))

    # ---- boot and poweroff of the node (pve-guests.service)

    def startall(self) -> str | None:
        guests = sorted((g for g in self.local_guests() if g.get("onboot")), key=lambda g: g["vmid"])
        if not guests:
            return None

        def work(task: Task) -> None:
            for guest in guests:
                label = GUEST_KINDS[guest["type"]][0]
                task.log(f"Starting {label} {guest['vmid']}")
                try:
                    with self.guest_lock(guest["vmid"], guest["type"]):
                        self.do_start(task, guest["vmid"], guest["type"])
                    task.log("Status: OK")
                except ApiError as exc:
                    task.log(f"Starting {label} {guest['vmid']} failed: {exc.message}")

        return self.spawn("startall", "", "root@pam", work)

    def stopall(self) -> None:
        """Stop every running guest of this node in parallel (clean shutdown, forced after stop_timeout)."""
        guests = [g for g in self.local_guests() if self._running_quiet(g)]
        if not guests:
            return
        done = threading.Event()

        def work(task: Task) -> None:
            def stop_one(guest: dict) -> None:
                label = GUEST_KINDS[guest["type"]][0]
                task.log(f"Stopping {label} {guest['vmid']} (timeout = {self.stop_timeout} seconds)")
                try:
                    self.engine.stop(guest["container"], timeout=self.stop_timeout)
                except docker_engine.EngineError as exc:
                    task.log(f"Stopping {label} {guest['vmid']} failed: {exc.message}")

            threads = [threading.Thread(target=stop_one, args=(g,)) for g in guests]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        def watched(task: Task) -> None:
            try:
                work(task)
            finally:
                done.set()

        self.spawn("stopall", "", "root@pam", watched)
        done.wait(self.stop_timeout + 30)
        time.sleep(0.2)  # let the task write its final status

    def _running_quiet(self, guest: dict) -> bool:
        try:
            return self.engine.is_running(guest["container"])
        except docker_engine.EngineError:
            return False

    # ---- heartbeat (pvestatd + pmxcfs membership)

    def node_stats(self) -> dict:
        meminfo = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                key, _, rest = line.partition(":")
                meminfo[key] = int(rest.split()[0]) * 1024
        total = meminfo.get("MemTotal", 0)
        free = meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
        load = os.getloadavg()
        return {
            "uptime": int(time.time() - self.booted),
            "maxcpu": os.cpu_count() or 1,
            "cpu": round(min(load[0] / (os.cpu_count() or 1), 1.0), 4),
            "maxmem": total,
            "mem": total - free,
            "loadavg": [f"{v:.2f}" for v in load],
        }

    def heartbeat(self, online: bool = True) -> None:
        guests = {}
        if online:
            for guest in self.local_guests():
                guests[str(guest["vmid"])] = self.guest_status(guest)
        self.state.write_heartbeat(
            self.node,
            {"time": time.time(), "online": online, "node": self.node, "stats": self.node_stats(), "guests": guests},
        )

    # ---- cluster-internal calls (what real PVE does over SSH between nodes)

    def node_address(self, node: str) -> tuple[str, int]:
        nodes = self.state.nodes()
        if node not in nodes:
            raise die(
                f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )
        return nodes[node].get("ip", node), int(nodes[node].get("port", 8006))

    def make_ticket(self, user: str) -> str:
        stamp = f"{int(time.time()):08X}"
        plain = f"PVE:{user}:{stamp}"
        sig = base64.b64encode(hmac.new(self.state.authkey(), plain.encode(), hashlib.sha256).digest()).decode()
        return f"{plain}::{sig}"

    def verify_ticket(self, ticket: str) -> str | None:
        match = re.fullmatch(r"PVE:([^:\s]+):([0-9A-F]{8})::(\S+)", ticket or "")
        if not match:
            return None
        plain = f"PVE:{match.group(1)}:{match.group(2)}"
        expected = base64.b64encode(hmac.new(self.state.authkey(), plain.encode(), hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, match.group(3)):
            return None
        if not -300 < time.time() - int(match.group(2), 16) < TICKET_LIFETIME:
            return None
        return match.group(1)

    def make_csrf(self, user: str) -> str:
        stamp = f"{int(time.time()):08X}"
        digest = hmac.new(self.state.authkey(), f"csrf:{stamp}:{user}".encode(), hashlib.sha256).digest()
        return f"{stamp}:{base64.b64encode(digest).decode().rstrip('=')}"

    def verify_csrf(self, token: str, user: str) -> bool:
        stamp, _, sig = (token or "").partition(":")
        if not re.fullmatch(r"[0-9A-F]{8}", stamp):
            return False
        digest = hmac.new(self.state.authkey(), f"csrf:{stamp}:{user}".encode(), hashlib.sha256).digest()
        fresh = -300 < time.time() - int(stamp, 16) < TICKET_LIFETIME
        return fresh and hmac.compare_digest(base64.b64encode(digest).decode().rstrip("="), sig)

    def call_node(self, node: str, method: str, path: str, params: dict | None = None) -> object:
        """Call another node's API as root@pam with a cluster-signed ticket; returns ``data``."""
        host, port = self.node_address(node)
        body = urllib.parse.urlencode(params or {})
        headers = {
            "Cookie": f"PVEAuthCookie={self.make_ticket('root@pam')}",
            "CSRFPreventionToken": self.make_csrf("root@pam"),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        conn = http.client.HTTPSConnection(host, port, timeout=30, context=_client_ssl_context())
        try:
            conn.request(method, f"/api2/json{path}", body=body if method != "GET" else None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        if resp.status >= 400:
            raise die(f"{resp.status} {resp.reason}")
        return json.loads(payload)["data"]

    # ---- routes

    def _routes(self) -> list[tuple[str, re.Pattern, Callable, dict[str, P]]]:
        node = r"(?P<node>[^/]+)"
        vmid = r"(?P<vmid>[^/]+)"
        kind = r"(?P<kind>lxc|qemu)"
        upid = r"(?P<upid>[^/]+)"
        no_params: dict[str, P] = {}
        skiplock = {"skiplock": P("boolean")}
        table = [
            ("GET", "/version", self.api_version, no_params),
            ("GET", "/nodes", self.api_nodes, no_params),
            ("GET", "/cluster/status", self.api_cluster_status, no_params),
            ("GET", "/cluster/resources", self.api_cluster_resources, {"type": P(["vm", "storage", "node", "sdn"])}),
            ("GET", f"/nodes/{node}/status", self.api_node_status, no_params),
            ("GET", f"/nodes/{node}/{kind}", self.api_guest_list, {"full": P("boolean")}),
            ("GET", f"/nodes/{node}/{kind}/{vmid}/status/current", self.api_guest_current, no_params),
            (
                "POST",
                f"/nodes/{node}/{kind}/{vmid}/status/start",
                self.api_guest_start,
                {
                    **skiplock,
                    "timeout": P("integer", minimum=0),
                    "migratedfrom": P(),
                    "machine": P(),
                    "forceCPU": P(),
                    "targetstorage": P(),
                    "debug": P("boolean"),
                    "stateuri": P(),
                    "migration_type": P(["secure", "insecure"]),
                    "migration_network": P(),
                },
            ),
            (
                "POST",
                f"/nodes/{node}/{kind}/{vmid}/status/stop",
                self.api_guest_stop,
                {
                    **skiplock,
                    "timeout": P("integer", minimum=0),
                    "keepActive": P("boolean"),
                    "overrule-shutdown": P("boolean"),
                    "migratedfrom": P(),
                },
            ),
            (
                "POST",
                f"/nodes/{node}/{kind}/{vmid}/status/shutdown",
                self.api_guest_shutdown,
                {"timeout": P("integer", minimum=0), "forceStop": P("boolean"), "keepActive": P("boolean"), **skiplock},
            ),
            (
                "POST",
                f"/nodes/{node}/lxc/{vmid}/migrate",
                self.api_lxc_migrate,
                {
                    "target": P(optional=False),
                    "online": P("boolean"),
                    "restart": P("boolean"),
                    "target-storage": P(),
                    "timeout": P("integer"),
                    "bwlimit": P("number"),
                    "force": P("boolean"),
                },
            ),
            (
                "GET",
                f"/nodes/{node}/tasks",
                self.api_task_list,
                {
                    "start": P("integer", minimum=0),
                    "limit": P("integer", minimum=0),
                    "vmid": P("integer"),
                    "typefilter": P(),
                    "userfilter": P(),
                    "errors": P("boolean"),
                    "source": P(["archive", "active", "all"]),
                    "since": P("integer"),
                    "until": P("integer"),
                    "statusfilter": P(),
                },
            ),
            ("GET", f"/nodes/{node}/tasks/{upid}/status", self.api_task_status, no_params),
            (
                "GET",
                f"/nodes/{node}/tasks/{upid}/log",
                self.api_task_log,
                {"start": P("integer", minimum=0), "limit": P("integer", minimum=0), "download": P("boolean")},
            ),
        ]
        return [(m, re.compile(f"^{p}$"), fn, schema) for m, p, fn, schema in table]

    # ---- handlers (``user`` is the authenticated user, with ``!tokenid`` for API tokens)

    def api_version(self, user: str, **_) -> dict:
        return dict(PVE_VERSION)

    def _node_online(self, node: str) -> bool:
        return node == self.node or self.state.node_online(node)

    def api_nodes(self, user: str, **_) -> list[dict]:
        out = []
        for name in sorted(self.state.nodes()):
            entry = {"node": name, "id": f"node/{name}", "type": "node"}
            if self._node_online(name):
                beat = self.state.heartbeat(name) or {}
                stats = self.node_stats() if name == self.node else beat.get("stats", {})
                entry.update(
                    status="online",
                    level="",
                    ssl_fingerprint="",
                    **{k: stats.get(k, 0) for k in ("uptime", "maxcpu", "cpu", "maxmem", "mem")},
                )
                entry.update(maxdisk=DEFAULT_MAXDISK * 8, disk=0)
            else:
                entry["status"] = "offline"
            out.append(entry)
        return out

    def api_cluster_status(self, user: str, **_) -> list[dict]:
        cluster = self.state.cluster()
        nodes = sorted(cluster.get("nodes", {}))
        out = [
            {
                "type": "cluster",
                "id": "cluster",
                "name": cluster.get("name", "lab"),
                "nodes": len(nodes),
                "quorate": 1,
                "version": 1,
            }
        ]
        for index, name in enumerate(nodes, start=1):
            out.append(
                {
                    "type": "node",
                    "id": f"node/{name}",
                    "name": name,
                    "nodeid": index,
                    "ip": cluster["nodes"][name].get("ip", ""),
                    "online": int(self._node_online(name)),
                    "local": int(name == self.node),
                    "level": "",
                }
            )
        return out

    def api_cluster_resources(self, user: str, type: str | None = None, **_) -> list[dict]:
        out: list[dict] = []
        if type in (None, "node"):
            out += self.api_nodes(user)
        if type in (None, "vm"):
            beats: dict[str, dict] = {}
            for vmid, guest in sorted(self.state.guests().items()):
                node = guest.get("node")
                if node == self.node:
                    status = self.guest_status(guest)
                elif self._node_online(node):
                    beat = beats.setdefault(node, self.state.heartbeat(node) or {})
                    status = beat.get("guests", {}).get(str(vmid)) or self.guest_status(guest, details=False)
                    # the configuration (node, lock, tags) is cluster-wide and fresher than the broadcast status
                    status = (
                        {**status, "lock": guest.get("lock")}
                        if guest.get("lock")
                        else {k: v for k, v in status.items() if k != "lock"}
                    )
                else:
                    status = {"status": "unknown"}
                entry = {
                    "id": f"{guest['type']}/{vmid}",
                    "type": guest["type"],
                    "vmid": vmid,
                    "node": node,
                    "name": guest["name"],
                    "template": 0,
                    "maxmem": guest.get("maxmem", DEFAULT_MAXMEM),
                    "maxdisk": guest.get("maxdisk", DEFAULT_MAXDISK),
                    "maxcpu": guest.get("cpus", 1),
                }
                for key in (
                    "status",
                    "uptime",
                    "mem",
                    "disk",
                    "cpu",
                    "netin",
                    "netout",
                    "diskread",
                    "diskwrite",
                    "lock",
                ):
                    if key in status:
                        entry[key] = status[key]
                if guest.get("tags"):
                    entry["tags"] = guest["tags"]
                out.append(entry)
        return out

    def api_node_status(self, user: str, node: str, **_) -> dict:
        stats = self.node_stats()
        meminfo_total, used = stats["maxmem"], stats["mem"]
        uname = os.uname()
        disk = DEFAULT_MAXDISK * 8
        return {
            "uptime": stats["uptime"],
            "cpu": stats["cpu"],
            "loadavg": stats["loadavg"],
            "memory": {"total": meminfo_total, "used": used, "free": meminfo_total - used},
            "swap": {"total": 0, "used": 0, "free": 0},
            "rootfs": {"total": disk, "used": 0, "free": disk, "avail": disk},
            "cpuinfo": {
                "cpus": stats["maxcpu"],
                "cores": stats["maxcpu"],
                "sockets": 1,
                "model": "wakegrid lab",
                "mhz": "0",
                "hvm": "1",
                "user_hz": 100,
            },
            "kversion": f"{uname.sysname} {uname.release} {uname.version}",
            "pveversion": f"pve-manager/{PVE_VERSION['version']}/{PVE_VERSION['repoid']}",
            "idle": 0,
            "wait": 0,
            "ksm": {"shared": 0},
        }

    def api_guest_list(self, user: str, node: str, kind: str, **_) -> list[dict]:
        return [
            self.guest_status(g) for g in sorted(self.local_guests(), key=lambda g: g["vmid"]) if g.get("type") == kind
        ]

    def api_guest_current(self, user: str, node: str, kind: str, vmid: int, **_) -> dict:
        status = self.guest_status(self.load_config(vmid, kind))
        status["ha"] = {"managed": 0}
        return status

    def api_guest_start(self, user: str, node: str, kind: str, vmid: int, skiplock: bool = False, **_) -> str:
        guest = self.load_config(vmid, kind)
        if kind == "lxc" and self.is_running(guest):  # pve-container refuses before forking, qemu-server inside
            raise die(f"CT {vmid} already running")

        def work(task: Task) -> None:
            with self.guest_lock(vmid, kind):
                self.do_start(task, vmid, kind, skiplock)

        return self.spawn("vzstart" if kind == "lxc" else "qmstart", str(vmid), user, work)

    def api_guest_stop(self, user: str, node: str, kind: str, vmid: int, skiplock: bool = False, **_) -> str:
        guest = self.load_config(vmid, kind)
        if kind == "lxc" and not self.is_running(guest):
            raise die(f"CT {vmid} not running")

        def work(task: Task) -> None:
            with self.guest_lock(vmid, kind):
                self.do_stop(vmid, kind, skiplock)

        return self.spawn("vzstop" if kind == "lxc" else "qmstop", str(vmid), user, work)

    def api_guest_shutdown(
        self, user: str, node: str, kind: str, vmid: int, timeout: int = 60, forceStop: bool = False, **_
    ) -> str:
        guest = self.load_config(vmid, kind)
        if kind == "lxc" and not self.is_running(guest):
            raise die(f"CT {vmid} not running")

        def work(task: Task) -> None:
            with self.guest_lock(vmid, kind):
                self.do_shutdown(task, vmid, kind, timeout, forceStop)

        return self.spawn("vzshutdown" if kind == "lxc" else "qmshutdown", str(vmid), user, work)

    def api_lxc_migrate(
        self,
        user: str,
        node: str,
        vmid: int,
        target: str,
        online: bool = False,
        restart: bool = False,
        timeout: int = 180,
        **params,
    ) -> str:
        if target == self.node:
            raise param_error({"target": "target is local node."})
        if target not in self.state.nodes():
            raise die(f"no such cluster node '{target}'")
        guest = self.load_config(vmid, "lxc")
        if self.is_running(guest) and not online and not restart:
            raise die("can't migrate running container without --online or --restart")
        storage_map = _parse_storage_map(params.get("target-storage"))

        def work(task: Task) -> None:
            with self.guest_lock(vmid, "lxc"):
                LxcMigration(self, task, vmid, target, online, restart, timeout, storage_map).run()

        return self.spawn("vzmigrate", str(vmid), user, work)

    def _task_from_path(self, node: str, upid: str) -> tuple[dict, list[str]]:
        upid = urllib.parse.unquote(upid)
        match = UPID_RE.match(upid)
        if not match:
            raise param_error({"upid": f"unable to parse worker upid '{upid}'"})
        return read_task(self.state, match.group("node"), upid)

    def api_task_status(self, user: str, node: str, upid: str, **_) -> dict:
        record, _lines = self._task_from_path(node, upid)
        return {k: v for k, v in record.items() if k != "endtime"}

    def api_task_log(self, user: str, node: str, upid: str, start: int = 0, limit: int = 50, **_) -> dict:
        _record, lines = self._task_from_path(node, upid)
        if limit == 0:
            limit = len(lines)
        chunk = [{"n": i + 1, "t": lines[i]} for i in range(start, min(start + limit, len(lines)))]
        return {"__data__": chunk, "total": len(lines)}

    def api_task_list(
        self,
        user: str,
        node: str,
        start: int = 0,
        limit: int = 50,
        vmid: int | None = None,
        typefilter: str | None = None,
        source: str = "archive",
        errors: bool = False,
        **_,
    ) -> list[dict]:
        records = []
        for path in (self.state.node_dir(self.node) / "tasks").glob("*.json"):
            record = _read_json(path)
            if not record:
                continue
            running = record.get("status") == "running"
            if (source == "archive" and running) or (source == "active" and not running):
                continue
            if vmid is not None and record.get("id") != str(vmid):
                continue
            if typefilter and record.get("type") != typefilter:
                continue
            if errors and record.get("exitstatus") in (None, "OK"):
                continue
            entry = {k: v for k, v in record.items() if k not in ("status", "exitstatus")}
            if not running:
                entry["status"] = record.get("exitstatus")
            records.append(entry)
        records.sort(key=lambda r: (r["starttime"], r["pid"]), reverse=True)
        return records[start : start + limit]

    # ---- auth

    def api_ticket(self, params: dict[str, object]) -> dict:
        checked = check_params(
            params,
            {
                "username": P(optional=False),
                "password": P(optional=False),
                "realm": P(),
                "otp": P(),
                "path": P(),
                "privs": P(),
                "new-format": P("boolean"),
                "tfa-challenge": P(),
            },
        )
        username = str(checked["username"])
        if "@" not in username:
            username = f"{username}@{checked.get('realm', 'pam')}"
        password = str(checked["password"])
        known = self.state.users().get(username)
        ok = (known is not None and hmac.compare_digest(known, password)) or self.verify_ticket(password) == username
        if not ok:
            raise ApiError(401, "authentication failure")
        return {
            "username": username,
            "ticket": self.make_ticket(username),
            "CSRFPreventionToken": self.make_csrf(username),
            "clustername": self.state.cluster().get("name", "lab"),
            "cap": {"vms": {"VM.PowerMgmt": 1, "VM.Audit": 1, "VM.Migrate": 1}, "nodes": {"Sys.Audit": 1}},
        }

    def authenticate(self, method: str, headers) -> str:
        """The user (``user@realm`` or ``user@realm!tokenid``) of a request, or a 401 ApiError."""
        authorization = headers.get("Authorization") or ""
        if authorization.startswith("PVEAPIToken="):
            full, sep, secret = authorization[len("PVEAPIToken=") :].strip().partition("=")
            if not sep or "!" not in full:
                raise ApiError(401, "invalid token value!")
            known = self.state.tokens().get(full)
            if known is None:
                username, tokenid = full.split("!", 1)
                raise ApiError(401, f"no such token '{tokenid}' for user '{username}'")
            if not hmac.compare_digest(known, secret):
                raise ApiError(401, "invalid token value!")
            return full
        cookies = http.cookies.SimpleCookie()
        with contextlib.suppress(http.cookies.CookieError):
            cookies.load(headers.get("Cookie") or "")
        ticket = cookies["PVEAuthCookie"].value if "PVEAuthCookie" in cookies else None
        if ticket is None:
            raise ApiError(401, "No ticket")
        username = self.verify_ticket(urllib.parse.unquote(ticket))
        if username is None:
            raise ApiError(401, "permission denied - invalid PVE ticket")
        if method != "GET" and not self.verify_csrf(headers.get("CSRFPreventionToken") or "", username):
            raise ApiError(401, "Permission denied - invalid csrf token")
        return username

    # ---- dispatch

    def dispatch(self, method: str, path: str, params: dict[str, object], headers) -> tuple[int, str, dict]:
        """Returns (status, reason, JSON body) for ``/api2/json`` + ``path``."""
        try:
            if path == "/access/ticket" and method == "POST":
                return 200, "OK", {"data": self.api_ticket(params)}
            user = self.authenticate(method, headers)  # pveproxy authenticates before it looks up the method
            for route_method, pattern, handler, schema in self.routes:
                match = pattern.match(path)
                if not match or route_method != method:
                    continue
                args = match.groupdict()
                if "node" in args and args["node"] != self.node:
                    raise _Proxy(args["node"])
                checked = check_params(params, schema)
                if "vmid" in args:
                    args["vmid"] = _check_vmid(args["vmid"])
                data = handler(user, **args, **checked)
                if isinstance(data, dict) and "__data__" in data:
                    return 200, "OK", {"data": data["__data__"], "total": data["total"]}
                return 200, "OK", {"data": data}
            raise ApiError(501, f"Method '{method} /{path.lstrip('/')}' not implemented")
        except ApiError as exc:
            body: dict = {"data": None}
            if exc.errors:
                body["errors"] = exc.errors
            return exc.status, exc.message, body


class _Proxy(Exception):
    def __init__(self, node: str):
        super().__init__(node)
        self.node = node


def _check_vmid(value: str) -> int:
    if not re.fullmatch(r"\d+", value):
        raise param_error({"vmid": f"type check ('integer') failed - got '{value}'"})
    if int(value) < 100:
        raise param_error({"vmid": "value must have a minimum value of 100"})
    return int(value)


def _parse_storage_map(value: object) -> dict[str, str]:
    """``target-storage``: ``STORE`` (everything there) or ``SRC:DST,SRC2:DST2``; ``"*"`` is the catch-all key."""
    mapping: dict[str, str] = {}
    if not value:
        return mapping
    for item in str(value).split(","):
        src, sep, dst = item.partition(":")
        if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9\-_.]*", dst if sep else src):
            raise param_error({"target-storage": f"invalid format - storage ID '{item}' is not valid"})
        mapping["*" if not sep else src] = dst if sep else src
    return mapping


# --------------------------------------------------------------------------- LXC migration


class LxcMigration:
    """PVE::LXC::Migrate through PVE::AbstractMigrate: prepare, phase1 (move config), final cleanup."""

    def __init__(
        self,
        emu: Emulator,
        task: Task,
        vmid: int,
        target: str,
        online: bool,
        restart: bool,
        timeout: int,
        storage_map: dict[str, str],
    ):
        self.emu = emu
        self.task = task
        self.vmid = vmid
        self.target = target
        self.online = online
        self.restart = restart
        self.timeout = timeout
        self.storage_map = storage_map
        self.was_running = False
        self.conf_migrated = False
        self.errors = False

    def log(self, text: str) -> None:
        self.task.migrate_log(text)

    def error(self, text: str) -> None:
        self.task.migrate_log(text, error=True)

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.prepare()
            try:
                self.phase1()
            except ApiError as exc:
                self.error(exc.message)
                self.log("aborting phase 1 - cleanup resources")
                self.final_cleanup()
                raise
            self.final_cleanup()
        except ApiError as exc:
            self.error(f"migration aborted (duration {_duration(started)}): {exc.message}")
            raise die("migration aborted") from exc
        if self.errors:
            self.error(f"migration finished with problems (duration {_duration(started)})")
            raise die("migration problems")
        self.log(f"migration finished successfully (duration {_duration(started)})")

    def prepare(self) -> None:
        emu = self.emu
        guest = emu.load_config(self.vmid, "lxc")
        emu.check_lock(guest)
        running = emu.is_running(guest)
        if running:
            if self.online:
                raise die("lxc live migration is currently not implemented")
            if not self.restart:
                raise die("running container can only be migrated in restart mode")
        self.was_running = running
        for key, mount in sorted(guest.get("mounts", {}).items()):
            if (mount.get("bind") or str(mount.get("volume", "")).startswith("/")) and not mount.get("shared"):
                raise die(f"cannot migrate local {'bind' if mount.get('bind', True) else 'device'} mount point '{key}'")
        if not emu.state.node_online(self.target):
            raise die("Can't connect to destination address using public key")
        if self.restart and running:
            self.log(f"shutdown CT {self.vmid}")
            try:
                emu.engine.stop(guest["container"], timeout=self.timeout)
            except docker_engine.EngineError as exc:
                raise die(exc.message) from exc

    def phase1(self) -> None:
        emu = self.emu
        host, _port = emu.node_address(self.target)
        self.log(f"starting migration of CT {self.vmid} to node '{self.target}' ({host})")
        guest = emu.state.update_guest(self.vmid, lambda g: g.update(lock="migrate"))
        volumes = [("rootfs", guest.get("rootfs"))] + [
            (key, m.get("volume"))
            for key, m in sorted(guest.get("mounts", {}).items())
            if not (m.get("bind") or str(m.get("volume", "")).startswith("/"))
        ]
        moved: dict[str, str] = {}
        for key, volid in volumes:
            if not volid:
                continue
            self.log(f"found local volume '{volid}' (in current VM config)")
            store, _, name = volid.partition(":")
            new_store = self.storage_map.get(store, self.storage_map.get("*", store))
            moved[key] = f"{new_store}:{name}"
        # copying the disks takes a while on real hardware: keep the migration observable (lock: migrate)
        time.sleep(self.emu.migrate_delay)
        for key, volid in volumes:
            if volid and moved.get(key) != volid:
                self.log(f"volume '{volid}' is '{moved[key]}' on the target")

        def move(g: dict) -> None:
            g["node"] = self.target
            if "rootfs" in moved:
                g["rootfs"] = moved["rootfs"]
            for key, new in moved.items():
                if key in g.get("mounts", {}):
                    g["mounts"][key]["volume"] = new

        emu.state.update_guest(self.vmid, move)
        self.conf_migrated = True

    def final_cleanup(self) -> None:
        emu = self.emu
        self.log("start final cleanup")
        emu.state.update_guest(self.vmid, lambda g: g.update(lock=None))
        if not (self.restart and self.was_running):
            return
        if not self.conf_migrated:
            self.log("start container on source node")
            guest = emu.state.guest(self.vmid) or {}
            try:
                emu.engine.start(guest["container"])
            except docker_engine.EngineError as exc:
                self.error(exc.message)
                self.errors = True
            return
        self.log("start container on target node")
        host, _port = emu.node_address(self.target)
        self.log(
            f"# /usr/bin/ssh -e none -o 'BatchMode=yes' -o 'HostKeyAlias={self.target}' root@{host} "
            f"pct start {self.vmid}"
        )
        try:
            upid = str(emu.call_node(self.target, "POST", f"/nodes/{self.target}/lxc/{self.vmid}/status/start"))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                task_path = f"/nodes/{self.target}/tasks/{urllib.parse.quote(upid)}/status"
                status = emu.call_node(self.target, "GET", task_path)
                if isinstance(status, dict) and status.get("status") == "stopped":
                    if status.get("exitstatus") != "OK":
                        raise die(str(status.get("exitstatus")))
                    return
                time.sleep(0.2)
            raise die("got timeout")
        except (ApiError, OSError) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            self.error(
                f"command '/usr/bin/ssh -e none -o 'BatchMode=yes' -o 'HostKeyAlias={self.target}' "
                f"root@{host} pct start {self.vmid}' failed: {message}"
            )
            self.errors = True


def _duration(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# --------------------------------------------------------------------------- HTTP server


def _client_ssl_context() -> ssl.SSLContext:
    """Cluster-internal HTTPS: nodes have self-signed certificates (real PVE pins them through pmxcfs)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ensure_certificate(cert_dir: Path, node: str) -> tuple[Path, Path]:
    """``pve-ssl.pem``/``pve-ssl.key`` in ``cert_dir``, self-signed with the openssl CLI when missing."""
    cert, key = cert_dir / "pve-ssl.pem", cert_dir / "pve-ssl.key"
    if cert.exists() and key.exists():
        return cert, key
    cert_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            f"/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN={node}",
            "-addext",
            f"subjectAltName=DNS:{node},DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


class ApiHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as proxmoxer's session expects
    server_version = "pve-api-daemon/3.0"
    sys_version = ""
    server: ApiServer

    def setup(self) -> None:
        # TLS handshake here, in the request's own thread, so a slow client cannot block accept()
        self.request.settimeout(30)
        self.request.do_handshake()
        super().setup()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ssl.SSLError, ConnectionError, TimeoutError):
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    _raw_body = b""

    def _read_params(self, query: str) -> dict[str, object]:
        params: dict[str, object] = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self._raw_body = self.rfile.read(length) if length else b""
        if not body:
            return params
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = json.loads(body)
            except ValueError:
                raise ApiError(400, "invalid JSON body") from None
            if isinstance(data, dict):
                params.update({k: v for k, v in data.items() if v is not None})
        else:
            params.update(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return params

    def _serve(self, method: str) -> None:
        emu = self.server.emulator
        url = urllib.parse.urlsplit(self.path)
        try:
            params = self._read_params(url.query)
        except ApiError as exc:
            self._reply(exc.status, exc.message, {"data": None})
            return
        if not url.path.startswith("/api2/json/"):
            self._reply(501, f"Method '{method} {url.path}' not implemented", {"data": None})
            return
        path = url.path[len("/api2/json") :].rstrip("/") or "/"
        try:
            status, reason, body = emu.dispatch(method, path, params, self.headers)
        except _Proxy as proxy:
            self._proxy(method, proxy.node)
            return
        self._reply(status, reason, body)

    def _proxy(self, method: str, node: str) -> None:
        """pveproxy forwards a request for another node to that node's API, as it came."""
        emu = self.server.emulator
        try:
            host, port = emu.node_address(node)
        except ApiError as exc:
            self._reply(exc.status, exc.message, {"data": None})
            return
        if not emu.state.node_online(node):  # a powered-off host does not answer
            self._reply(595, "No route to host", {"data": None})
            return
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("authorization", "cookie", "csrfpreventiontoken", "accept", "content-type")
        }
        conn = http.client.HTTPSConnection(host, port, timeout=60, context=_client_ssl_context())
        try:
            conn.request(method, self.path, body=self._raw_body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        except OSError as exc:
            self._reply(595, exc.strerror or str(exc) or "Connection refused", {"data": None})
            return
        finally:
            conn.close()
        self._reply(resp.status, resp.reason, payload)

    def _reply(self, status: int, reason: str, body: dict | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        # the reason phrase carries PVE's error message: one line, latin-1 only
        reason = re.sub(r"\s+", " ", reason).strip().encode("latin-1", "replace").decode("latin-1")
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "max-age=0")
        self.send_header("Pragma", "no-cache")
        self.end_headers()
        self.wfile.write(payload)


class ApiServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator, ssl_context: ssl.SSLContext):
        self.emulator = emulator
        self.ssl_context = ssl_context
        super().__init__(address, ApiHandler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            log.debug("connection from %s failed: %s", client_address, exc)
        else:
            super().handle_error(request, client_address)


# --------------------------------------------------------------------------- main


def serve(args: argparse.Namespace) -> int:
    emulator = Emulator(args.node, args.cluster_dir, args.docker_socket, args.migrate_delay, args.stop_timeout)
    if args.node not in emulator.state.nodes():
        log.error("node %s is not in %s/cluster.json", args.node, args.cluster_dir)
        return 2
    cert, key = ensure_certificate(Path(args.cert_dir or emulator.state.node_dir(args.node)), args.node)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server = ApiServer((args.listen, args.port), emulator, ctx)

    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())

    def beat() -> None:
        while not stopping.is_set():
            try:
                emulator.heartbeat()
            except Exception:  # a failed heartbeat must not kill the node; the next one retries
                log.exception("heartbeat failed")
            stopping.wait(HEARTBEAT_INTERVAL)

    emulator.heartbeat()
    beat_thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    beat_thread.start()
    threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
    log.info("PVE emulator for node %s listening on https://%s:%d", args.node, args.listen, args.port)
    if not args.no_onboot:
        emulator.startall()  # pve-guests.service: start the guests marked onboot

    stopping.wait()
    log.info("node %s powering off: stopping its guests", args.node)
    emulator.stopall()  # pve-guests.service on shutdown, before pveproxy goes away
    server.shutdown()
    server.server_close()
    beat_thread.join(10)  # so that no late "online" heartbeat overwrites the last one
    emulator.heartbeat(online=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Proxmox VE API emulator for the wakegrid lab")
    parser.add_argument("--node", required=True, help="this node's name (a key of cluster.json's nodes)")
    parser.add_argument("--cluster-dir", required=True, help="the shared cluster directory (like /etc/pve)")
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8006)
    parser.add_argument("--docker-socket", default="/var/run/docker.sock")
    parser.add_argument("--cert-dir", help="where pve-ssl.pem/pve-ssl.key live (default: <cluster-dir>/nodes/<node>)")
    parser.add_argument("--migrate-delay", type=float, default=2.0, help="simulated disk copy time of a migration")
    parser.add_argument("--stop-timeout", type=int, default=30, help="clean shutdown time per guest on poweroff")
    parser.add_argument("--no-onboot", action="store_true", help="do not start onboot guests at startup")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not NODE_RE.match(args.node):
        parser.error(f"invalid node name {args.node!r}")
    try:
        return serve(args)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.error("port %d is already in use", args.port)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
