#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: proxmox_guest
short_description: Start, stop, shut down or restart a Proxmox VE virtual machine or container
version_added: 0.1.0
description:
  - Brings the power state of one Proxmox VE guest, a QEMU virtual machine or an LXC container,
    to O(state), through the Proxmox VE API.
  - Finds the node the guest is on by itself, from C(GET /cluster/resources?type=vm), because
    guests move between the nodes of a cluster (migration, HA). O(node) is only a hint and a
    stale one is harmless.
  - Waits for each Proxmox VE task (UPID) to finish. A failed task fails the module with the
    task's log in RV(task_log) and a message naming the step.
  - Reports a change only when the guest's power state really changed.
  - A guest that is busy (a config lock such as V(migrate) or V(backup), or a running task about
    it on any node) is waited for up to O(lock_timeout) seconds, then the module fails with a
    message naming the lock or the task.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - wakegrid.fleet.proxmox
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the guest's status and reports whether the state would change; starts no task.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  vmid:
    description:
      - The guest's ID, unique in the cluster.
      - One of O(vmid) or O(name) is required; with both, the guest O(vmid) must be named O(name).
    type: int
  name:
    description:
      - The guest's name, when O(vmid) is not given. It must match exactly one guest that is not
        a template.
    type: str
  node:
    description:
      - The node where the guest is expected. Only a hint, recorded in RV(node_hint); the module
        always acts on the node the cluster reports.
    type: str
  state:
    description:
      - V(started) starts the guest unless it runs.
      - V(stopped) stops it at once, like pulling the plug (C(status/stop)), unless it is stopped.
      - V(shutdown) asks it to shut down cleanly (ACPI for a VM, the init's stop signal for a
        container, C(status/shutdown)) and waits up to O(timeout) seconds, unless it is stopped.
      - V(restarted) shuts it down as V(shutdown) does, then starts it; a stopped guest is only
        started. Always a change.
    type: str
    required: true
    choices: [started, stopped, shutdown, restarted]
  timeout:
    description:
      - For V(shutdown) and V(restarted), how long the guest gets to shut down cleanly
        (Proxmox VE's own shutdown C(timeout)).
      - For every state, how long the module waits for each task (at least 30 seconds); a
        shutdown task is given 30 seconds more, to finish a forced stop.
    type: int
    default: 60
  force_stop:
    description:
      - With V(shutdown) and V(restarted), stop the guest hard when it has not shut down after
        O(timeout) seconds (Proxmox VE's C(forceStop)). Without it such a guest keeps running and
        the module fails, with the task log.
    type: bool
    default: false
  lock_timeout:
    description:
      - How long to wait for a busy guest (config lock, or a running task about it) before failing.
        V(0) fails at once.
      - A guest migrating in restart mode is waited for until the migration has finished, and
        then found on its new node.
    type: int
    default: 30
notes:
  - Needs the C(VM.PowerMgmt) privilege on C(/vms/<vmid>) to act, and C(VM.Audit) and
    C(Sys.Audit) to find the guest and its tasks.
  - A paused or suspended VM (C(qmpstatus)) is not resumed; V(started) fails for it with a clear
    message.
seealso:
  - module: wakegrid.fleet.proxmox_guest_info
  - name: Proxmox VE API viewer
    description: C(/nodes/{node}/qemu/{vmid}/status) and C(/nodes/{node}/lxc/{vmid}/status).
    link: https://pve.proxmox.com/pve-docs/api-viewer/
"""

EXAMPLES = r"""
- name: Start the jellyfin container wherever it runs in the cluster
  wakegrid.fleet.proxmox_guest:
    api_host: 192.168.1.2
    api_token_id: root@pam!wakegrid
    api_token_secret: "{{ vault_pve_token_secret }}"
    validate_certs: false
    vmid: 201
    state: started

- name: Shut a VM down cleanly, forcing it off after two minutes
  wakegrid.fleet.proxmox_guest:
    api_host: pve1.example.net
    api_user: root@pam
    api_token_id: wakegrid
    api_token_secret: "{{ vault_pve_token_secret }}"
    name: vm-docker
    state: shutdown
    timeout: 120
    force_stop: true

- name: Power a fleet guest from its inventory variables (wakegrid.fleet.fleet inventory)
  wakegrid.fleet.proxmox_guest:
    api_host: "{{ hostvars[wakegrid_parent].wakegrid_proxmox.api | urlsplit('hostname') }}"
    api_port: "{{ hostvars[wakegrid_parent].wakegrid_proxmox.api | urlsplit('port') | default(8006, true) }}"
    api_token_id: "{{ hostvars[wakegrid_parent].wakegrid_proxmox.token_id }}"
    api_token_secret: "{{ hostvars[wakegrid_parent].wakegrid_proxmox.token_secret }}"
    validate_certs: "{{ hostvars[wakegrid_parent].wakegrid_proxmox.verify_tls }}"
    vmid: "{{ wakegrid_vmid }}"
    node: "{{ hostvars[wakegrid_parent].wakegrid_proxmox.node }}"
    state: started
  delegate_to: localhost
"""

RETURN = r"""
vmid:
  description: The guest's ID.
  returned: when the guest was found
  type: int
  sample: 201
name:
  description: The guest's name.
  returned: when the guest was found
  type: str
  sample: jellyfin
type:
  description: The guest's type, V(qemu) (virtual machine) or V(lxc) (container).
  returned: when the guest was found
  type: str
  sample: lxc
node:
  description: The node the guest is on (after a migration that ended while the module waited, the new one).
  returned: when the guest was found
  type: str
  sample: pve1
node_hint:
  description: The O(node) given, when it was given; differs from RV(node) when the guest moved.
  returned: when O(node) was given
  type: str
  sample: pve2
status_before:
  description: The guest's status before the module acted, V(running) or V(stopped).
  returned: when the guest was found
  type: str
  sample: stopped
status_after:
  description: The guest's status after the module acted (in check mode, the status it would have).
  returned: when the guest was found
  type: str
  sample: running
upid:
  description: The ID of the last Proxmox VE task the module started (or that failed).
  returned: when a task was started
  type: str
  sample: "UPID:pve1:0000A1B2:0001C3D4:6740A1B2:vzstart:201:root@pam!wakegrid:"
tasks:
  description: The tasks the module ran, in order, each with its action, UPID and exit status.
  returned: always
  type: list
  elements: dict
  sample: [{"action": "start", "upid": "UPID:pve1:0000A1B2:0001C3D4:6740A1B2:vzstart:201:root@pam!wakegrid:", "exitstatus": "OK"}]
actions:
  description: The power actions needed (V(start), V(stop), V(shutdown)); in check mode, those that would run.
  returned: always
  type: list
  elements: str
  sample: [start]
step:
  description: The action that failed, with the guest and its node.
  returned: on failure of a power action
  type: str
  sample: shutdown CT 202 on node pve1
task_log:
  description: The log of the task that failed or did not finish in time, line by line.
  returned: on a task failure
  type: list
  elements: str
  sample: ["container did not stop", "TASK ERROR: container did not stop"]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.proxmox import (
    PROXMOX_MUTUALLY_EXCLUSIVE,
    PROXMOX_REQUIRED_ONE_OF,
    PROXMOX_REQUIRED_TOGETHER,
    TASK_GRACE,
    ProxmoxClient,
    ProxmoxError,
    check_libraries,
    expected_status,
    guest_label,
    plan_power,
    proxmox_argument_spec,
    task_failed,
)

# The status each action leads to, to recognise a race (someone else did it first).
ACTION_RESULT = {"start": "running", "stop": "stopped", "shutdown": "stopped"}


class GuestPower:
    """One run of the module: find the guest, wait while it is busy, apply the planned actions."""

    def __init__(self, module, client):
        self.module = module
        self.client = client
        self.params = module.params
        self.result = {"changed": False, "tasks": [], "actions": []}
        if self.params["node"]:
            self.result["node_hint"] = self.params["node"]
        self.guest = None

    def describe(self, guest):
        self.guest = guest
        self.result.update(vmid=int(guest["vmid"]), name=guest.get("name"), type=guest["type"], node=guest["node"])

    def locate(self):
        self.describe(self.client.locate(vmid=self.params["vmid"], name=self.params["name"]))
        return self.guest

    def wait_until_idle(self):
        """Read the guest's status once it is not busy; re-locate it each time (it may be moving)."""
        deadline = self.client.clock() + self.params["lock_timeout"]
        while True:
            guest = self.locate()
            try:
                current = self.client.current(guest)
            except ProxmoxError:
                # A migration may move the configuration between the two reads ("Configuration
                # file 'nodes/pve2/lxc/302.conf' does not exist"): look again where it is now.
                if self.client.locate(vmid=guest["vmid"])["node"] != guest["node"]:
                    continue
                raise
            tasks = self.client.active_tasks(guest["vmid"])
            busy = []
            if current.get("lock"):
                busy.append("locked (%s)" % current["lock"])
            busy.extend("running task %s on node %s" % (t.get("type"), t.get("node")) for t in tasks)
            if not busy:
                return current
            if self.client.clock() >= deadline:
                raise ProxmoxError(
                    "%s on node %s is busy: %s; still busy after %ss (lock_timeout)"
                    % (guest_label(guest), guest["node"], ", ".join(busy), self.params["lock_timeout"])
                )
            self.client.sleep(1)

    def run(self):
        state = self.params["state"]
        current = self.wait_until_idle()
        guest = self.guest
        status = current.get("status")
        self.result["status_before"] = status
        if state in ("started", "restarted") and self.guest.get("template"):
            raise ProxmoxError("%s is a template; templates cannot be started" % guest_label(guest))
        if state == "started" and status == "running" and current.get("qmpstatus") in ("paused", "suspended"):
            raise ProxmoxError(
                "%s on node %s is running but %s (qmpstatus); resume it, this module does not"
                % (guest_label(guest), guest["node"], current["qmpstatus"])
            )
        actions = plan_power(state, status)
        self.result["actions"] = actions
        if self.module.check_mode or not actions:
            # Nothing to do, or only to tell what would be done: no task, no second read.
            self.result["changed"] = bool(actions)
            self.result["status_after"] = expected_status(state) if actions else status
            return self.result
        for action in actions:
            self.apply(action)
        after = self.client.current(self.guest)
        self.result["status_after"] = after.get("status")
        if after.get("status") != expected_status(state):
            raise ProxmoxError(
                "%s on node %s is %s after %s, not %s"
                % (guest_label(guest), guest["node"], after.get("status"), ", ".join(actions), expected_status(state))
            )
        return self.result

    def apply(self, action):
        guest = self.guest
        label = "%s %s on node %s" % (action, guest_label(guest), guest["node"])
        params = {}
        # At least TASK_GRACE: a short shutdown timeout must not cut the wait for a start short.
        wait = max(self.params["timeout"], TASK_GRACE)
        if action == "shutdown":
            params["timeout"] = self.params["timeout"]
            if self.params["force_stop"]:
                params["forceStop"] = 1  # PVE booleans are 0/1: a Python True is rejected
            wait = self.params["timeout"] + TASK_GRACE
        try:
            upid = self.client.post_action(guest, action, **params)
        except ProxmoxError as exc:
            # PVE refuses some actions at once ("CT 201 already running"): fine if the guest is
            # already where this action leads, because someone else got there first.
            if self.already_done(action):
                return
            exc.result.setdefault("step", label)
            raise
        self.result["upid"] = upid
        record = {"action": action, "upid": upid, "exitstatus": None}
        self.result["tasks"].append(record)
        status = self.client.wait_task(upid, wait)
        if status is None:
            raise ProxmoxError(
                "Task %s (%s) still running after %ss; it goes on in Proxmox VE" % (upid, label, wait),
                upid=upid,
                step=label,
                task_log=self.client.task_log(upid),
            )
        record["exitstatus"] = status.get("exitstatus")
        if task_failed(status):
            log = self.client.task_log(upid)
            if self.already_done(action):
                return
            raise ProxmoxError(
                "Failed to %s: task %s ended with '%s'" % (label, upid, status.get("exitstatus")),
                upid=upid,
                step=label,
                task_log=log,
            )
        self.result["changed"] = True

    def already_done(self, action):
        if self.client.current(self.guest).get("status") != ACTION_RESULT[action]:
            return False
        self.module.warn(
            "%s was already %s when the module tried to %s it: another actor changed it meanwhile"
            % (guest_label(self.guest), ACTION_RESULT[action], action)
        )
        return True


def main():
    argument_spec = proxmox_argument_spec()
    argument_spec.update(
        vmid=dict(type="int"),
        name=dict(type="str"),
        node=dict(type="str"),
        state=dict(type="str", required=True, choices=["started", "stopped", "shutdown", "restarted"]),
        timeout=dict(type="int", default=60),
        force_stop=dict(type="bool", default=False),
        lock_timeout=dict(type="int", default=30),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=PROXMOX_REQUIRED_ONE_OF + [("vmid", "name")],
        required_together=PROXMOX_REQUIRED_TOGETHER,
        mutually_exclusive=PROXMOX_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    check_libraries(module)
    for option in ("timeout", "lock_timeout"):
        if module.params[option] < 0:
            module.fail_json(msg="%s must be 0 or more, got %s" % (option, module.params[option]))

    power = None
    try:
        client = ProxmoxClient(module.params)
        power = GuestPower(module, client)
        module.exit_json(**power.run())
    except ProxmoxError as exc:
        result = dict(power.result) if power is not None else {}
        result.update(exc.result)
        module.fail_json(msg=exc.msg, **result)


if __name__ == "__main__":
    main()
