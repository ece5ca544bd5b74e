#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: proxmox_lxc_migrate
short_description: Move a Proxmox VE LXC container to another node of its cluster, following the migration live
version_added: 0.2.0
description:
  - Migrates one LXC container to O(target) through the Proxmox VE API (C(POST /nodes/{node}/lxc/{vmid}/migrate)).
  - Proxmox VE cannot live-migrate a container. A running one moves in B(restart) mode - it is shut
    down, its local volumes are copied to the target, and it is started there. Without O(restart)
    a running container is refused before anything starts, as Proxmox VE itself refuses it.
  - Finds the node the guest is on by itself, from C(GET /cluster/resources?type=vm). A guest
    already on O(target) is left alone (C(changed=false)).
  - Refuses clearly, before starting anything, an unknown or offline target, a target equal to
    O(node), a guest that is not a container, a guest that is locked (C(lock), e.g. V(backup)) or
    that a running task is about (on any online node).
  - Follows the C(vzmigrate) task on the B(source) node, where it runs even after the
    configuration has moved, reading its log as it grows (C(start)/C(limit) paging) and turning it
    into phases (V(prepare), V(shutdown), V(copy), V(start), V(done), V(failed)) and percentages;
    the copy percentage comes from the C(dd) progress lines Proxmox VE logs for each local volume
    and the volume sizes of the container's configuration.
  - A failed migration fails the module with Proxmox VE's own reason (for example
    C(cannot migrate local bind mount point 'mp0')), the task log, and where the guest is left
    (RV(node), RV(status_after)).
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - wakegrid.fleet.proxmox
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the guest, its configuration and the target, and returns the RV(plan) (source,
        target, whether a restart is needed, the volumes and the storages they land on, what
        Proxmox VE would refuse); starts no task.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  vmid:
    description:
      - The container's ID. One of O(vmid) or O(name) is required.
    type: int
  name:
    description:
      - The container's name, when O(vmid) is not given; it must match exactly one guest.
    type: str
  node:
    description:
      - The node the caller expects the container on (for example the fleet's C(parent) machine's
        node). Only a hint, recorded in RV(node_hint); a O(target) equal to it is refused.
    type: str
  target:
    description:
      - The node to move the container to; a member of the same cluster, online.
    type: str
    required: true
  restart:
    description:
      - Allow a restart migration of a running container (shut down, copy, start on the target).
        Required for a running container; a stopped one moves stopped and stays stopped.
    type: bool
    default: false
  target_storage:
    description:
      - Where the container's local volumes land on the target (Proxmox VE's C(target-storage)).
      - A storage name (everything there), or a map of source storage to target storage; the
        key V(*) is the default for storages not listed.
      - Without it, every volume keeps its storage, which must exist on the target.
    type: raw
  bwlimit:
    description:
      - Bandwidth limit of the copy, in KiB/s (Proxmox VE's C(bwlimit)); V(0) is no limit.
      - Without it, the datacenter's or the storages' migration limits apply.
    type: float
  shutdown_timeout:
    description:
      - Seconds the container gets to shut down cleanly in restart mode before it is stopped
        (Proxmox VE's C(timeout), default 180 there).
    type: int
    default: 180
  timeout:
    description:
      - Overall seconds to wait for the migration task. When it is still running after that, the
        module fails and says so; the migration goes on in Proxmox VE.
    type: int
    default: 1800
  events_file:
    description:
      - A file on the host running the module (usually the controller, with C(delegate_to)) to
        which each progress event is appended as one JSON line as it happens, so that a person or a
        program sees the migration while the module runs (C(wakegrid migrate) draws its progress
        bar from it). The same events are returned in RV(events).
    type: path
notes:
  - Needs C(VM.Migrate) on C(/vms/<vmid>), C(Datastore.AllocateSpace) on the target storages, and
    C(VM.Audit) and C(Sys.Audit) to find the guest, its configuration and the tasks.
  - The copy percentage needs the volumes' C(size=) in the configuration; storages whose copy
    logs no progress (ZFS send, directory subvolumes) jump from 0 to 100 when the volume is done.
seealso:
  - module: wakegrid.fleet.proxmox_guest
  - module: wakegrid.fleet.proxmox_guest_info
  - name: pve-container's migration (PVE::LXC::Migrate)
    description: The phases and the log lines this module reads.
    link: https://git.proxmox.com/?p=pve-container.git;a=blob;f=src/PVE/LXC/Migrate.pm
"""

EXAMPLES = r"""
- name: Move jellyfin to pve2, restarting it there
  wakegrid.fleet.proxmox_lxc_migrate:
    api_host: 192.168.1.2
    api_token_id: root@pam!wakegrid
    api_token_secret: "{{ vault_pve_token_secret }}"
    validate_certs: false
    name: jellyfin
    target: pve2
    restart: true
    target_storage: {local-lvm: fast-lvm}
    bwlimit: 102400
  delegate_to: localhost
  register: moved

- name: What would a move do?
  wakegrid.fleet.proxmox_lxc_migrate:
    api_host: 192.168.1.2
    api_token_id: root@pam!wakegrid
    api_token_secret: "{{ vault_pve_token_secret }}"
    vmid: 201
    target: pve2
  check_mode: true
  delegate_to: localhost
"""

RETURN = r"""
vmid:
  description: The container's ID.
  returned: when the guest was found
  type: int
  sample: 201
name:
  description: The container's name.
  returned: when the guest was found
  type: str
  sample: jellyfin
source:
  description: The node the container was on before.
  returned: when the guest was found
  type: str
  sample: pve1
node:
  description: The node the container is on now (on failure, where it was left).
  returned: when the guest was found
  type: str
  sample: pve2
node_hint:
  description: The O(node) given.
  returned: when O(node) was given
  type: str
  sample: pve1
target:
  description: The O(target) node.
  returned: always
  type: str
  sample: pve2
status_before:
  description: The container's status before, V(running) or V(stopped).
  returned: when the guest was found
  type: str
  sample: running
status_after:
  description: The container's status after (on failure, as it was left).
  returned: when the guest was found
  type: str
  sample: running
mode:
  description: V(restart) for a running container, V(offline) for a stopped one.
  returned: when the guest was found
  type: str
  sample: restart
plan:
  description:
    - What the migration does (and in check mode, would do) - C(source), C(target), C(mode),
      C(restart_needed), C(volumes) (each C(key), C(volume), C(size), C(type), C(storage),
      C(target_storage)), C(copy_bytes) and C(refusals) (what Proxmox VE would refuse).
  returned: when the guest was found
  type: dict
  sample: {"source": "pve1", "target": "pve2", "mode": "restart", "restart_needed": true, "copy_bytes": 8589934592,
           "volumes": [{"key": "rootfs", "volume": "local-lvm:vm-201-disk-0", "size": 8589934592, "type": "volume",
                        "storage": "local-lvm", "target_storage": "local-lvm", "shared": false}], "refusals": []}
upid:
  description: The migration task's ID (it runs on the source node).
  returned: when the migration was started
  type: str
  sample: "UPID:pve1:0000A1B2:0001C3D4:6740A1B2:vzmigrate:201:root@pam!wakegrid:"
events:
  description:
    - The migration's progress, in order, one per meaningful log line - C(seq), C(time) (seconds
      since the epoch, when the module read it), C(pve_time) (the log's own time stamp),
      C(phase), C(percent) (overall, never decreasing), C(copy_percent), C(message), and
      C(volume), C(bytes), C(error) where they apply.
  returned: when the migration was started
  type: list
  elements: dict
  sample: [{"seq": 3, "phase": "copy", "percent": 42, "copy_percent": 40, "bytes": 3435973836,
            "message": "3435973836 bytes (3.4 GB, 3.2 GiB) copied, 3 s, 1.1 GB/s"}]
phases:
  description: The phases the migration went through, in order.
  returned: when the migration was started
  type: list
  elements: str
  sample: [prepare, shutdown, copy, start, done]
downtime:
  description:
    - Seconds the container was not running in a restart migration, as the module saw it - from
      the C(shutdown CT) line to the end of the task (which ends after the start on the target).
  returned: when a running container was migrated
  type: float
  sample: 4.3
seconds:
  description: The migration task's duration as the module saw it.
  returned: when the migration was started
  type: float
  sample: 9.8
task_log:
  description: The migration task's log, line by line.
  returned: when the migration was started
  type: list
  elements: str
error:
  description: Proxmox VE's own reason for a failed migration.
  returned: on a failed migration
  type: str
  sample: cannot migrate local bind mount point 'mp0'
"""

import json
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.proxmox import (
    PROXMOX_MUTUALLY_EXCLUSIVE,
    PROXMOX_REQUIRED_ONE_OF,
    PROXMOX_REQUIRED_TOGETHER,
    MigrationLog,
    ProxmoxClient,
    ProxmoxError,
    check_libraries,
    ct_volumes,
    guest_label,
    mapped_storage,
    migration_error,
    proxmox_argument_spec,
    storage_map,
    task_failed,
)


class LxcMigration:
    """One run of the module: find the guest and the target, refuse what PVE would refuse, migrate, follow."""

    def __init__(self, module, client, wall=time.time):
        self.module = module
        self.client = client
        self.params = module.params
        self.wall = wall
        self.result = {"changed": False, "target": self.params["target"]}
        if self.params["node"]:
            self.result["node_hint"] = self.params["node"]
        self.events = []

    # ---- checks before anything starts

    def check_target(self, source):
        target = self.params["target"]
        if self.params["node"] and self.params["node"] == target:
            raise ProxmoxError("target %s is the source node given in node: nothing to migrate to" % target)
        nodes = dict((n.get("node"), n) for n in self.client.nodes())
        if target not in nodes:
            raise ProxmoxError(
                "no such cluster node '%s' (the cluster's nodes: %s)" % (target, ", ".join(sorted(nodes)))
            )
        if target != source and nodes[target].get("status") != "online":
            raise ProxmoxError(
                "target node %s is %s: a migration needs it online" % (target, nodes[target].get("status"))
            )

    def check_idle(self, guest, current):
        busy = []
        if current.get("lock"):
            busy.append("locked (%s)" % current["lock"])
        for task in self.client.active_tasks(guest["vmid"]):
            busy.append("running task %s on node %s" % (task.get("type"), task.get("node")))
        if busy:
            raise ProxmoxError("%s on node %s is busy: %s" % (guest_label(guest), guest["node"], ", ".join(busy)))

    def plan(self, guest, current, config):
        running = current.get("status") == "running"
        volumes = []
        refusals = []
        for volume in ct_volumes(config):
            if volume["type"] != "volume":
                if not volume["shared"]:
                    refusals.append("cannot migrate local %s mount point '%s'" % (volume["type"], volume["key"]))
                volume["target_storage"] = None
            else:
                volume["target_storage"] = mapped_storage(volume["storage"], self.params["target_storage"])
            volumes.append(volume)
        if running and not self.params["restart"]:
            refusals.insert(0, "can't migrate running container without --online or --restart")
        return {
            "source": guest["node"],
            "target": self.params["target"],
            "mode": "restart" if running else "offline",
            "restart_needed": running,
            "volumes": volumes,
            "copy_bytes": sum(v["size"] or 0 for v in volumes if v["type"] == "volume"),
            "refusals": refusals,
        }

    # ---- the run

    def run(self):
        params = self.params
        guest = self.client.locate(vmid=params["vmid"], name=params["name"])
        self.result.update(vmid=int(guest["vmid"]), name=guest.get("name"), source=guest["node"], node=guest["node"])
        if guest["type"] != "lxc":
            raise ProxmoxError(
                "%s is a virtual machine: this module migrates containers (LXC) only" % guest_label(guest)
            )
        self.check_target(guest["node"])
        current = self.client.current(guest)
        self.result["status_before"] = self.result["status_after"] = current.get("status")
        if guest["node"] == params["target"]:
            self.result["mode"] = None
            self.result["plan"] = {"source": guest["node"], "target": params["target"], "volumes": [], "refusals": []}
            self.result["msg"] = "%s is already on node %s" % (guest_label(guest), params["target"])
            return self.result
        self.check_idle(guest, current)
        config = self.client.lxc_config(guest)
        plan = self.plan(guest, current, config)
        self.result.update(plan=plan, mode=plan["mode"])
        running = plan["restart_needed"]
        if running and not params["restart"]:
            raise ProxmoxError(
                "%s is running on node %s: Proxmox VE cannot live-migrate a container, it moves in restart mode "
                "(shut down, copy, start on %s); set restart: true to allow it. Proxmox VE says: "
                "can't migrate running container without --online or --restart"
                % (guest_label(guest), guest["node"], params["target"])
            )
        if self.module.check_mode:
            self.result["changed"] = True
            self.result["status_after"] = current.get("status")
            return self.result
        return self.migrate(guest, plan, running)

    def migrate(self, guest, plan, running):
        params = self.params
        options = {}
        if running:
            options["restart"] = 1  # PVE booleans are 0/1
            options["timeout"] = params["shutdown_timeout"]
        if params["target_storage"]:
            options["target-storage"] = storage_map(params["target_storage"])
        if params["bwlimit"] is not None:
            options["bwlimit"] = params["bwlimit"]
        sizes = dict((v["volume"], v["size"]) for v in plan["volumes"] if v["type"] == "volume")
        log = MigrationLog(sizes)
        lines = []
        started = self.client.clock()
        upid = self.client.migrate_lxc(guest, params["target"], **options)
        self.result["upid"] = upid
        self.result["changed"] = True
        stopped_at = []
        self.emit({"phase": "prepare", "percent": 0, "copy_percent": 0, "message": "task %s started" % upid})

        def on_lines(new):
            lines.extend(new)
            for event in log.feed(new):
                if event["phase"] == "shutdown" and not stopped_at:
                    stopped_at.append(self.client.clock())
                self.emit(event)

        status = self.client.follow_task(upid, on_lines, params["timeout"])
        ended = self.client.clock()
        self.result.update(task_log=lines, seconds=round(ended - started, 1), phases=self.phases())
        if running and stopped_at:
            self.result["downtime"] = round(ended - stopped_at[0], 1)
        if status is None:
            raise ProxmoxError(
                "migration task %s still running after %ss (timeout); it goes on in Proxmox VE"
                % (upid, params["timeout"]),
                upid=upid,
            )
        where = self.client.locate(vmid=guest["vmid"])
        self.result["node"] = where["node"]
        try:
            self.result["status_after"] = self.client.current(where).get("status")
        except ProxmoxError:
            self.result["status_after"] = "unknown"
        if task_failed(status):
            reason = migration_error(lines) or status.get("exitstatus")
            self.result["error"] = reason
            raise ProxmoxError(
                "Failed to migrate %s from node %s to node %s: %s (task %s ended with '%s'); the container is on "
                "node %s, %s"
                % (
                    guest_label(guest),
                    plan["source"],
                    params["target"],
                    reason,
                    upid,
                    status.get("exitstatus"),
                    where["node"],
                    self.result["status_after"],
                )
            )
        if where["node"] != params["target"]:
            raise ProxmoxError(
                "migration task %s ended OK but %s is on node %s, not %s"
                % (upid, guest_label(guest), where["node"], params["target"])
            )
        return self.result

    def phases(self):
        seen = []
        for event in self.events:
            if not seen or seen[-1] != event["phase"]:
                seen.append(event["phase"])
        return seen

    def emit(self, event):
        event = dict(event, seq=len(self.events) + 1, time=round(self.wall(), 3))
        self.events.append(event)
        self.result["events"] = self.events
        path = self.params["events_file"]
        if path:
            # One JSON line per event, flushed at once: a reader follows the migration while it runs.
            with open(path, "a") as handle:
                handle.write(json.dumps(event, sort_keys=True) + "\n")


def main():
    argument_spec = proxmox_argument_spec()
    argument_spec.update(
        vmid=dict(type="int"),
        name=dict(type="str"),
        node=dict(type="str"),
        target=dict(type="str", required=True),
        restart=dict(type="bool", default=False),
        target_storage=dict(type="raw"),
        bwlimit=dict(type="float"),
        shutdown_timeout=dict(type="int", default=180),
        timeout=dict(type="int", default=1800),
        events_file=dict(type="path"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=PROXMOX_REQUIRED_ONE_OF + [("vmid", "name")],
        required_together=PROXMOX_REQUIRED_TOGETHER,
        mutually_exclusive=PROXMOX_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    check_libraries(module)
    for option in ("shutdown_timeout", "timeout"):
        if module.params[option] < 0:
            module.fail_json(msg="%s must be 0 or more, got %s" % (option, module.params[option]))
    if module.params["bwlimit"] is not None and module.params["bwlimit"] < 0:
        module.fail_json(msg="bwlimit must be 0 or more KiB/s, got %s" % module.params["bwlimit"])
    target_storage = module.params["target_storage"]
    if target_storage is not None and not isinstance(target_storage, (str, dict)):
        module.fail_json(msg="target_storage must be a storage name or a map of storage to storage")

    migration = None
    try:
        client = ProxmoxClient(module.params)
        migration = LxcMigration(module, client)
        module.exit_json(**migration.run())
    except ProxmoxError as exc:
        result = dict(migration.result) if migration is not None else {}
        result.update(exc.result)
        module.fail_json(msg=exc.msg, **result)


if __name__ == "__main__":
    main()
