"""LXC migration between nodes, as PVE::LXC::Migrate does it (offline, or restart mode: stop, copy, start there).

Upstream, line for line where the log is concerned:

- pve-guest-common ``src/PVE/AbstractMigrate.pm`` ``migrate``: prepare, phase1, (phase1_cleanup),
  phase3, final_cleanup; ``migration aborted (duration …): reason`` / ``migration finished
  successfully (duration …)``; ``$msg2text``: each line stamped, ``ERROR:`` for errors;
- pve-container ``src/PVE/LXC/Migrate.pm``: ``prepare`` (running CT: restart mode only; bind and
  device mount points refused unless shared; storages checked on both nodes; the SSH test; the
  shutdown), ``phase1`` (lock, ``found local volume``, the copy, ``volume '…' is '…' on the target``,
  move the config), ``phase1_cleanup`` (``found stale volume copy``), ``final_cleanup`` (unlock
  and start on the target, or back on the source when the config did not move);
- pve-storage ``src/PVE/Storage.pm`` ``storage_migrate``: ``pvesm export | ssh … pvesm import``, the
  ``using a bandwidth limit of N bytes per second`` line (``$volume_export_prepare``), and dd's
  ``status=progress`` lines (``src/PVE/Storage/LVMPlugin.pm`` ``volume_export``), which it logs only
  every 3 s for the first minute, every 10 s up to 10 minutes, then every 30 s
  (``$match_volid_and_log``); ``successfully imported '…'`` (``volume_imported_message``).

The copy takes ``size / rate`` seconds per volume, ``rate`` being the node's copy rate
(``--copy-rate``, or a default-size volume in ``--migrate-delay`` seconds) lowered to the
migration's ``bwlimit`` (KiB/s). The target node going offline during the copy breaks the
pipe as it would break ssh: the copy fails and the CT is started again on the source.
"""

from __future__ import annotations

import time
import urllib.parse

from .errors import ApiError, die
from .node import Node, docker_engine
from .store import DEFAULT_MAXDISK
from .tasks import Task

SSH_OPTIONS = "-e none -o 'BatchMode=yes' -o 'HostKeyAlias={node}'"
DD_BLOCK = 64 * 1024  # LVMPlugin.pm volume_export: dd bs=64k
COPY_TICK = 1.0  # dd status=progress prints once a second


class LxcMigration:
    """PVE::LXC::Migrate through PVE::AbstractMigrate: prepare, phase1 (copy, move config), final cleanup."""

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
        bwlimit: float | None = None,
    ):
        self.emu = emu
        self.task = task
        self.vmid = vmid
        self.target = target
        self.online = online
        self.restart = restart
        self.timeout = timeout
        self.storage_map = storage_map
        self.bwlimit = bwlimit  # KiB/s, as the API takes it
        self.was_running = False
        self.conf_migrated = False
        self.errors = False
        self.volumes: list[str] = []  # volumes whose copy started (phase1_cleanup reports them)
        self.volume_map: dict[str, str] = {}

    def log(self, text: str) -> None:
        self.task.migrate_log(text)

    def error(self, text: str) -> None:
        self.task.migrate_log(text, error=True)

    @property
    def ssh(self) -> str:
        host, _port = self.emu.node_address(self.target)
        return f"/usr/bin/ssh {SSH_OPTIONS.format(node=self.target)} root@{host}"

    def run(self) -> None:
        started = time.monotonic()
        try:
            self.prepare()
            try:
                self.phase1()
            except ApiError as exc:
                self.error(exc.message)
                for cleanup in (self.phase1_cleanup, self.final_cleanup):
                    try:
                        cleanup()
                    except ApiError as cleanup_error:  # logged; the phase1 error is the one reported
                        self.error(cleanup_error.message)
                raise
            try:
                self.final_cleanup()
            except ApiError as exc:
                self.error(exc.message)
                self.errors = True
        except ApiError as exc:
            self.error(f"migration aborted (duration {_duration(started)}): {exc.message}")
            raise die("migration aborted") from exc
        if self.errors:
            self.error(f"migration finished with problems (duration {_duration(started)})")
            raise die("migration problems")
        self.log(f"migration finished successfully (duration {_duration(started)})")

    # ---- prepare: checks, then the shutdown in restart mode

    def local_volumes(self, guest: dict) -> list[tuple[str, str, int]]:
        """(key, volid, size) of the CT's volumes on storages (not bind or device mount points)."""
        out = [("rootfs", guest.get("rootfs"), int(guest.get("maxdisk") or DEFAULT_MAXDISK))]
        for key, mount in sorted(guest.get("mounts", {}).items()):
            if not _is_path_mount(mount):
                out.append((key, mount.get("volume"), int(mount.get("size") or 0)))
        return [(key, volid, size) for key, volid, size in out if volid]

    def target_storage(self, storage: str) -> str:
        """PVE::JSONSchema::map_id: the storage map's entry, its default, else the same storage."""
        return self.storage_map.get(storage, self.storage_map.get("*", storage))

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
            if _is_path_mount(mount) and not mount.get("shared"):
                raise die(f"cannot migrate local {'bind' if mount.get('bind', True) else 'device'} mount point '{key}'")
        for _key, volid, _size in self.local_volumes(guest):
            storage = volid.split(":", 1)[0]
            scfg = emu.state.storage_check_enabled(storage)
            if "rootdir" not in str(scfg.get("content", "")).split(","):
                raise die(f"content type 'rootdir' is not available on storage '{storage}'")
            if scfg.get("shared"):
                continue
            target_sid = self.target_storage(storage)
            target_scfg = emu.state.storage_check_enabled(target_sid, self.target)
            if "rootdir" not in str(target_scfg.get("content", "")).split(","):
                raise die(f"{volid}: content type 'rootdir' is not available on storage '{target_sid}'")
        if not emu.state.node_online(self.target):  # the `ssh … /bin/true` test
            raise die("Can't connect to destination address using public key")
        if self.restart and running:
            self.log(f"shutdown CT {self.vmid}")
            try:
                emu.engine.stop(guest["container"], timeout=self.timeout)
            except docker_engine.EngineError as exc:
                raise die(exc.message) from exc

    # ---- phase1: lock, copy the local volumes, move the config

    def phase1(self) -> None:
        emu = self.emu
        host, _port = emu.node_address(self.target)
        self.log(f"starting migration of CT {self.vmid} to node '{self.target}' ({host})")
        guest = emu.state.update_guest(self.vmid, lambda g: g.update(lock="migrate"))
        storages = emu.state.storages()
        to_copy = []
        for _key, volid, size in self.local_volumes(guest):
            storage = volid.split(":", 1)[0]
            if storages.get(storage, {}).get("shared"):
                self.log(f"volume '{volid}' is on shared storage '{storage}'")
                continue
            to_copy.append((volid, size))
        for volid, _size in sorted(to_copy):
            self.log(f"found local volume '{volid}' (in current VM config)")
        for volid, size in to_copy:
            self.volumes.append(volid)
            target_sid = self.target_storage(volid.split(":", 1)[0])
            try:
                new_volid = self.storage_migrate(volid, size, target_sid, storages)
            except ApiError as exc:
                raise die(f"storage migration for '{volid}' to storage '{target_sid}' failed - {exc.message}") from exc
            self.volume_map[volid] = new_volid
            self.log(f"volume '{volid}' is '{new_volid}' on the target")

        def move(g: dict) -> None:
            g["node"] = self.target
            if g.get("rootfs") in self.volume_map:
                g["rootfs"] = self.volume_map[g["rootfs"]]
            for mount in g.get("mounts", {}).values():
                if mount.get("volume") in self.volume_map:
                    mount["volume"] = self.volume_map[mount["volume"]]

        emu.state.update_guest(self.vmid, move)
        self.conf_migrated = True

    def storage_migrate(self, volid: str, size: int, target_sid: str, storages: dict) -> str:
        """pve-storage storage_migrate: export | ssh target import, dd's progress lines as PVE filters them."""
        volname = volid.partition(":")[2]
        new_volid = f"{target_sid}:{volname}"
        command = (
            f"set -o pipefail && pvesm export {volid} raw+size - -with-snapshots 0 | {self.ssh} -- "
            f"pvesm import {new_volid} raw+size - -with-snapshots 0 -allow-rename 1"
        )
        rate = self.emu.copy_rate(self.bwlimit)
        if self.bwlimit is not None:
            bps = int(self.bwlimit * 1024)  # "JSONSchema and get_bandwidth_limit use kbps - storage_migrate bps"
            self.log(f"using a bandwidth limit of {bps} bytes per second for transferring '{volid}'")
        if storages.get(target_sid, {}).get("type") in ("lvm", "lvmthin"):
            self.log(f'  Logical volume "{volname}" created.')
        started = time.monotonic()
        shown = 0
        while True:
            elapsed = time.monotonic() - started
            copied = size if rate is None else min(size, int(rate * elapsed))
            if copied >= size:
                break
            if not self.emu.state.node_online(self.target):  # the pipe to the target broke
                self.log("client_loop: send disconnect: Broken pipe")
                raise die(f"command '{command}' failed: exit code 255")
            second = int(elapsed)
            if second > shown and _dd_line_shown(second):
                shown = second
                done = int(rate * second) // DD_BLOCK * DD_BLOCK  # dd counts whole blocks at each full second
                self.log(f"{done} bytes ({_si(done)}, {_iec(done)}) copied, {second} s, {_si(done / second)}/s")
            time.sleep(min(COPY_TICK - elapsed % COPY_TICK, 0.25))
        seconds = max(time.monotonic() - started, 0.001)
        blocks = -(-size // DD_BLOCK)
        summary = f"{size} bytes ({_si(size)}, {_iec(size)}) copied, {seconds:g} s, {_si(size / seconds)}/s"
        for line in (f"{blocks}+0 records in", f"{blocks}+0 records out", summary):  # the sender's dd
            self.log(line)
        for line in (f"0+{blocks * 2} records in", f"0+{blocks * 2} records out", summary):  # the receiver's
            self.log(line)
        self.log(f"successfully imported '{new_volid}'")
        return new_volid

    def phase1_cleanup(self) -> None:
        self.log("aborting phase 1 - cleanup resources")
        for volid in self.volumes:
            self.error(f"found stale volume copy '{self.volume_map.get(volid, volid)}' on node '{self.target}'")

    # ---- final cleanup: unlock, start where the config is

    def final_cleanup(self) -> None:
        emu = self.emu
        self.log("start final cleanup")
        if not self.conf_migrated:
            emu.state.update_guest(self.vmid, lambda g: g.update(lock=None))
            if self.restart and self.was_running:
                self.log("start container on source node")
                guest = emu.state.guest(self.vmid) or {}
                try:
                    emu.engine.start(guest["container"])
                except docker_engine.EngineError as exc:
                    raise die(exc.message) from exc
            return
        # `ssh target pct unlock` (cmd_logerr: an error is logged, the migration has problems)
        if emu.state.node_online(self.target):
            emu.state.update_guest(self.vmid, lambda g: g.update(lock=None))
        else:
            unlock = f"{self.ssh} pct unlock {self.vmid}"
            self.log(f"# {unlock}")
            self.error(f"failed to clear migrate lock: command '{unlock}' failed: exit code 255")
            self.errors = True
        if not (self.restart and self.was_running):
            return
        self.log("start container on target node")
        self.log(f"# {self.ssh} pct start {self.vmid}")
        try:
            if not emu.state.node_online(self.target):
                raise die("exit code 255")
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
            # AbstractMigrate: final_cleanup's error is logged and the migration has problems
            self.error(f"command '{self.ssh} pct start {self.vmid}' failed: {message}")
            self.errors = True


def _is_path_mount(mount: dict) -> bool:
    """A bind or device mount point (PVE::LXC::Config classify_mountpoint: a path, not a storage volume)."""
    return bool(mount.get("bind")) or str(mount.get("volume", "")).startswith("/")


def _dd_line_shown(elapsed: int) -> bool:
    """storage_migrate's $match_volid_and_log: dd's once-a-second lines, thinned out as the copy goes on."""
    if elapsed < 60:
        return elapsed % 3 == 0
    if elapsed < 600:
        return elapsed % 10 == 0
    return elapsed % 30 == 0


def _si(value: float) -> str:
    """dd's human_readable SI figure: 1.1 GB, 86 MB, 512 kB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            figure = value / scale
            return f"{figure:.1f} {unit}" if figure < 10 else f"{figure:.0f} {unit}"
    return f"{value:.0f} B"


def _iec(value: float) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            figure = value / scale
            return f"{figure:.1f} {unit}" if figure < 10 else f"{figure:.0f} {unit}"
    return f"{value:.0f} B"


def _duration(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
