"""One node of the cluster: its guests (Docker containers), their power actions, the node's boot and poweroff.

:class:`Node` holds what a PVE node does besides answering HTTP: starting, stopping and
shutting down guests in tasks (pve-container/qemu-server), starting the onboot guests and
stopping all guests on poweroff (pve-guests.service), the heartbeat that tells the other
nodes it is online (pvestatd + pmxcfs membership), and calls to the other nodes' APIs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import itertools
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

from .auth import Auth
from .errors import ApiError, die
from .store import DEFAULT_MAXDISK, DEFAULT_MAXMEM, GUEST_KINDS, ClusterState, _flock
from .tasks import Task
from .tls import _client_ssl_context

try:
    from .. import engine as docker_engine
except ImportError:  # run as a directory copied next to engine.py (see __main__.py)
    import engine as docker_engine  # type: ignore[no-redef]

log = logging.getLogger("wakegrid.lab.pve")

LOCK_TIMEOUT = 10.0  # like PVE's config lock timeout
# pvestatd broadcasts its guests' status every 10 s ($updatetime in pve-manager PVE/Service/pvestatd.pm);
# /cluster/resources reads those broadcasts (PVE::API2Tools::extract_vm_stats), for every node, the local one too.
STATUS_INTERVAL = 10.0
# pmxcfs drops a broadcast entry 5 minutes after its last update (pve-cluster src/pmxcfs/status.c rrd_entry_is_old):
# a powered-off node's guests keep their last status that long.
STATUS_EXPIRE = 300.0


def _parse_docker_time(value: str) -> float | None:
    """Docker's RFC 3339 timestamps with nanoseconds, e.g. 2026-01-01T10:00:00.123456789Z."""
    if not value or value.startswith("0001-"):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    tz = "+00:00" if match.group(3) == "Z" else match.group(3)
    return dt.datetime.fromisoformat(match.group(1) + tz).timestamp()


class Node(Auth):
    """One node: its guests, power actions and heartbeat, and its calls to the other nodes of the cluster."""

    def __init__(
        self,
        node: str,
        cluster_dir: str,
        docker_socket: str = "/var/run/docker.sock",
        migrate_delay: float = 2.0,
        stop_timeout: int = 30,
        status_interval: float = STATUS_INTERVAL,
        copy_rate: float | None = None,
    ):
        self.node = node
        self.state = ClusterState(cluster_dir)
        self.engine = docker_engine.Engine(docker_socket)
        self.migrate_delay = migrate_delay  # seconds to copy a default-size volume, so a migration is observable
        self.copy_bps = copy_rate  # bytes per second of the simulated migration link (overrides migrate_delay)
        self.stop_timeout = stop_timeout  # per-guest clean shutdown time on node poweroff (stopall)
        self.status_interval = status_interval  # seconds between two broadcasts of the guests' status
        self._last_broadcast: float | None = None
        self.booted = time.time()
        self._pids = itertools.count(os.getpid() * 16 % 0x3FFFFF + 1)
        self._pid_lock = threading.Lock()

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
        if running and info["State"].get("Pid"):  # vmstatus: the pid of the CT's init or of the VM's kvm
            status["pid"] = int(info["State"]["Pid"])
        if guest.get("tags"):
            status["tags"] = guest["tags"]
        if guest.get("lock"):
            status["lock"] = guest["lock"]
        return status

    def copy_rate(self, bwlimit: float | None = None) -> float | None:
        """Bytes per second a migration copies at (None: at once), lowered to ``bwlimit`` KiB/s when set."""
        rate = self.copy_bps
        if rate is None and self.migrate_delay > 0:
            rate = DEFAULT_MAXDISK / self.migrate_delay
        if bwlimit:  # 0 is no limit
            rate = min(rate, bwlimit * 1024) if rate else bwlimit * 1024
        return rate

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
        """Membership (online) at every call; the guests' status only every ``status_interval`` (pvestatd).

        A node going offline leaves its last broadcast behind, as pmxcfs keeps it (STATUS_EXPIRE).
        """
        now = time.time()
        previous = self.state.heartbeat(self.node) or {}
        guests, guests_time = previous.get("guests", {}), previous.get("guests_time", 0)
        if online and (self._last_broadcast is None or now - self._last_broadcast >= self.status_interval):
            guests = {str(g["vmid"]): self.guest_status(g) for g in self.local_guests()}
            guests_time = self._last_broadcast = now
        self.state.write_heartbeat(
            self.node,
            {
                "time": now,
                "online": online,
                "node": self.node,
                "stats": self.node_stats(),
                "guests": guests,
                "guests_time": guests_time,
            },
        )

    def broadcast_status(self) -> dict[int, dict]:
        """Each guest's last broadcast status, from whichever node broadcast it last (like pmxcfs's rrd dump)."""
        now = time.time()
        out: dict[int, tuple[float, dict]] = {}
        for node in self.state.nodes():
            beat = self.state.heartbeat(node) or {}
            when = beat.get("guests_time", 0)
            if now - when > STATUS_EXPIRE:
                continue
            for vmid, status in beat.get("guests", {}).items():
                if int(vmid) not in out or out[int(vmid)][0] < when:
                    out[int(vmid)] = (when, status)
        return {vmid: status for vmid, (_when, status) in out.items()}

    # ---- cluster-internal calls (what real PVE does over SSH between nodes)

    def node_address(self, node: str) -> tuple[str, int]:
        nodes = self.state.nodes()
        if node not in nodes:
            raise die(
                f"hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
            )
        return nodes[node].get("ip", node), int(nodes[node].get("port", 8006))

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
