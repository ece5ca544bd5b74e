"""LXC migration between nodes, as PVE::LXC::Migrate does it (offline, or restart mode: stop, move, start there)."""

from __future__ import annotations

import time
import urllib.parse

from .errors import ApiError, die
from .node import Node, docker_engine
from .tasks import Task


class LxcMigration:
    """PVE::LXC::Migrate through PVE::AbstractMigrate: prepare, phase1 (move config), final cleanup."""

    def __init__(
        self,
        emu: Node,
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
