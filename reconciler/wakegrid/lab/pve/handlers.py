"""The API of one node (:class:`Emulator`): the routes with their parameter schemas, the handlers, the dispatch.

Every handler returns the ``data`` of PVE's envelope; :meth:`Emulator.dispatch` checks
authentication and parameters first, and hands a request for another node back to the
server (:class:`_Proxy`), which forwards it like pveproxy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Callable

from .errors import ApiError, die, param_error
from .migrate import LxcMigration
from .node import Node
from .schema import P, _check_vmid, _parse_storage_map, check_params
from .store import DEFAULT_MAXDISK, DEFAULT_MAXMEM
from .tasks import TASK_STATUS_TYPES, UPID_RE, Task, list_tasks, read_task

PVE_VERSION = {"version": "8.2.4", "release": "8.2", "repoid": "faa83925c9641325"}


class Emulator(Node):
    """The API of one node; every method that handles a route returns the ``data`` of the envelope."""

    # ---- routes

    @functools.cached_property
    def routes(self) -> list[tuple[str, re.Pattern, Callable, dict[str, P]]]:
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
                "GET",
                f"/nodes/{node}/lxc/{vmid}/config",
                self.api_lxc_config,
                {"current": P("boolean"), "snapshot": P()},
            ),
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
                    "bwlimit": P("number", minimum=0),
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
                    "vmid": P("integer", minimum=100),  # pve-vmid
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

    def quorate(self) -> bool:
        return self.state.quorum(self._node_online, _qdevice_alive)["quorate"]

    def check_quorum(self) -> None:
        """PVE::Cluster::check_cfs_quorum (pve-cluster src/PVE/Cluster.pm): /etc/pve is read-only without quorum."""
        if not self.quorate():
            raise die("cluster not ready - no quorum?")

    def api_cluster_status(self, user: str, **_) -> list[dict]:
        # pve-manager PVE/API2/Cluster.pm get_status: the fields pmxcfs knows, no votes (those are pvecm's)
        cluster = self.state.cluster()
        nodes = sorted(cluster.get("nodes", {}))
        out = [
            {
                "type": "cluster",
                "id": "cluster",
                "name": cluster.get("name", "lab"),
                "nodes": len(nodes),
                "quorate": int(self.quorate()),
                "version": 1,
            }
        ]
        for index, name in enumerate(nodes, start=1):
            online = self._node_online(name)
            entry = {
                "type": "node",
                "id": f"node/{name}",
                "name": name,
                "nodeid": index,
                "ip": cluster["nodes"][name].get("ip", ""),
                "online": int(online),
                "local": int(name == self.node),
            }
            if online:  # level comes from the node's broadcast stats, absent for an offline node
                entry["level"] = ""
            out.append(entry)
        return out

    def api_cluster_resources(self, user: str, type: str | None = None, **_) -> list[dict]:
        """pve-manager PVE/API2/Cluster.pm ``resources``: where each guest is and its lock and tags are live
        (the cluster's configuration), its status and usage are the last broadcast of pvestatd (up to
        ``status_interval`` old, for the local node too; ``unknown`` and nothing else without one).
        """
        out: list[dict] = []
        if type in (None, "node"):
            out += self.api_nodes(user)
        if type in (None, "vm"):
            broadcast = self.broadcast_status()
            for vmid, guest in sorted(self.state.guests().items(), key=lambda item: str(item[0])):  # Perl's sort keys
                kind = guest["type"]
                entry = {"id": f"{kind}/{vmid}", "vmid": vmid, "node": guest.get("node"), "type": kind}
                entry["status"] = "unknown"
                status = broadcast.get(vmid)
                if status is not None:  # PVE::API2Tools::extract_vm_stats
                    entry.update(
                        uptime=status.get("uptime", 0),
                        name=status.get("name"),
                        status=status.get("status"),
                        template=0,
                        maxcpu=status.get("cpus", 1),
                        **{
                            key: status.get(key, 0)
                            for key in ("cpu", "maxmem", "mem", "maxdisk", "disk", "netin", "netout")
                        },
                        diskread=status.get("diskread", 0),
                        diskwrite=status.get("diskwrite", 0),
                    )
                for key in ("lock", "tags"):  # get_guest_config_properties: from the configuration, live
                    if guest.get(key):
                        entry[key] = guest[key]
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

    def api_lxc_config(self, user: str, node: str, vmid: int, **_) -> dict:
        """pve-container API2/LXC/Config.pm vm_config: the config file's keys, mount points as property strings."""
        guest = self.load_config(vmid, "lxc")
        config: dict = {
            "hostname": guest["name"],
            "memory": int(guest.get("maxmem", DEFAULT_MAXMEM)) >> 20,
            "swap": 512,
            "cores": guest.get("cpus", 1),
            "arch": "amd64",
            "ostype": "debian",
            "rootfs": f"{guest.get('rootfs')},size={_format_size(guest.get('maxdisk', DEFAULT_MAXDISK))}",
            "digest": hashlib.sha1(json.dumps(guest, sort_keys=True).encode()).hexdigest(),
        }
        for key, mount in sorted(guest.get("mounts", {}).items()):
            text = f"{mount.get('volume')},mp={mount.get('mp', '/mnt/' + key)}"
            if mount.get("size"):
                text += f",size={_format_size(mount['size'])}"
            if mount.get("shared"):
                text += ",shared=1"
            config[key] = text
        for key in ("onboot", "tags", "lock"):
            if guest.get(key):
                config[key] = guest[key]
        return config

    def api_guest_start(self, user: str, node: str, kind: str, vmid: int, skiplock: bool = False, **_) -> str:
        guest = self.load_config(vmid, kind)
        if kind == "lxc" and self.is_running(guest):  # pve-container refuses before forking, qemu-server inside
            raise die(f"CT {vmid} already running")
        self.check_quorum()  # pve-container API2/LXC/Status.pm and qemu-server API2/Qemu.pm vm_start

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
        self.check_quorum()  # pve-container API2/LXC.pm migrate_vm, before check_node_exists
        if target not in self.state.nodes():
            raise die(f"no such cluster node '{target}'")
        guest = self.load_config(vmid, "lxc")
        if self.is_running(guest) and not online and not restart:
            raise die("can't migrate running container without --online or --restart")
        storage_map = _parse_storage_map(params.get("target-storage"))
        for target_sid in sorted(set(storage_map.values())):  # API2/LXC.pm $check_storage_access_migrate
            scfg = self.state.storage_check_enabled(target_sid, target)
            if "rootdir" not in str(scfg.get("content", "")).split(","):
                raise die(f"storage '{target_sid}' does not support CT rootdirs")
        bwlimit = params.get("bwlimit")

        def work(task: Task) -> None:
            with self.guest_lock(vmid, "lxc"):
                LxcMigration(self, task, vmid, target, online, restart, timeout, storage_map, bwlimit).run()

        return self.spawn("vzmigrate", str(vmid), user, work)

    def _task_from_path(self, upid: str) -> tuple[dict, list[str]] | None:
        """The task of this node (each node keeps its own /var/log/pve/tasks), None when there is none.

        pve-manager PVE/API2/Tasks.pm: an UPID that PVE::UPID::decode cannot parse is a parameter error.
        """
        upid = urllib.parse.unquote(upid)
        if not UPID_RE.match(upid):
            raise param_error({"upid": "unable to parse worker upid"})
        return read_task(self.state, self.node, upid)

    def api_task_status(self, user: str, node: str, upid: str, **_) -> dict:
        task = self._task_from_path(upid)
        if task is None:  # read_task_status: raise_param_exc({upid => "no such task"}) if !-f $filename
            raise param_error({"upid": "no such task"})
        return {k: v for k, v in task[0].items() if k != "endtime"}

    def api_task_log(
        self, user: str, node: str, upid: str, start: int = 0, limit: int = 50, download: bool = False, **_
    ) -> dict:
        if download:  # PVE streams the file (gzip above 1 KiB): not emulated, so not pretended either
            raise ApiError(501, f"Method 'GET /nodes/{node}/tasks/{{upid}}/log' with download=1 not implemented")
        task = self._task_from_path(upid)
        if task is None:  # read_task_log has no existence check: PVE::Tools::dump_logfile reports the open error
            return {"__data__": [{"n": 1, "t": "unable to open file - No such file or directory"}], "total": 1}
        lines = task[1]
        if not lines:  # dump_logfile's "HACK: ExtJS store.guaranteeRange() does not like empty array"
            return {"__data__": [{"n": 1, "t": "no content"}], "total": 1}
        if limit == 0:  # dump_logfile: read_until_end
            limit = len(lines)
        chunk = [{"n": i + 1, "t": lines[i]} for i in range(start, min(start + limit, len(lines)))]
        return {"__data__": chunk, "total": len(lines)}

    def api_task_list(self, user: str, node: str, statusfilter: str | None = None, **filters) -> dict:
        if statusfilter is not None:  # the pve-task-status-type-list format
            for item in re.sub(r"[,;]", " ", statusfilter).split():
                if item.lower() not in TASK_STATUS_TYPES:
                    raise param_error({"statusfilter": f"invalid format - invalid status '{item}'\n"})
        tasks, total = list_tasks(self.state, self.node, statusfilter=statusfilter, **filters)
        return {"__data__": tasks, "total": total}

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


def _format_size(size: int) -> str:
    """PVE::JSONSchema::format_size: the largest unit that divides the size exactly (8G, 512M, 1536K)."""
    size = int(size)
    for unit in ("", "K", "M", "G"):
        if size % 1024:
            return f"{size}{unit}"
        size //= 1024
    return f"{size}T"


def _qdevice_alive(qdevice: dict) -> bool:
    """corosync-qdevice holds a TCP connection to corosync-qnetd; the vote counts while it is reachable."""
    try:
        with socket.create_connection((qdevice["ip"], int(qdevice.get("port", 5403))), timeout=1.0):
            return True
    except (OSError, KeyError, ValueError):
        return False


class _Proxy(Exception):
    """A request for another node: the server forwards it there, as pveproxy does."""

    def __init__(self, node: str):
        super().__init__(node)
        self.node = node
