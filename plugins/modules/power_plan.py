#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# This file only documents the action plugin plugins/action/power_plan.py, which does the work
# on the controller.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: power_plan
short_description: Observe the real power state of a fleet and plan the start or shutdown of one node
version_added: 0.1.0
description:
  - Runs on the controller (an action plugin). Reads the wakegrid fleet file of the inventory
    (the C(wakegrid_fleet_file) variable set by the M(wakegrid.fleet.fleet) inventory plugin).
  - Observes the real power state of the nodes the plan depends on, top-down along the hosting
    tree, as one of V(up), V(down) or V(unknown) with how it was found. A machine is up when its
    SSH port accepts a TCP connection, down when nothing answers; a VM or LXC is up or down as the
    Proxmox VE API of its parent reports it; a container as the Docker API of its parent reports it.
    A node whose parent is down is down; one whose parent is unknown is unknown.
  - Unknown is not down. A node that cannot be observed (an API that does not answer, a token
    that cannot be read, a machine that refuses SSH or has no address, a status such as
    C(paused)) is V(unknown), with the reason. A stop plan never stops a node while anything
    that could still need it (a dependant, a hosted child, a node of the shutdown) is unknown;
    it is blocked and names the node and why. A start plan starts an unknown node only through
    a channel where starting a running node changes nothing (a magic packet, the Proxmox or
    Docker API start), and the step's RV(steps[].reason) says so.
  - Site gateways (they send every magic packet of their site and hold its WireGuard tunnel)
    and the edge are infrastructure. A stop plan that would stop one, or a node hosting one,
    is blocked, saying what would become unreachable, unless O(force_infrastructure=true).
    A dependency freed by a shutdown is never stopped if it is infrastructure, forced or not.
  - Computes the start plan (dependencies first, then hosts top-down) or the stop plan (hosted
    children bottom-up, then the node, then dependencies nobody needs any more) with the
    C(wakegrid.graph) planner, and returns it as data. Each step carries the module to run, its
    options resolved from the fleet, the host to run it on (RV(steps[].delegate_to)), its timeout
    (the node's C(timeouts.start) or C(timeouts.stop)) and the API to wait for before acting.
  - Never returns a secret. Proxmox VE token secrets are read with the
    P(wakegrid.fleet.fleet_secret#lookup) lookup to observe guests, and the playbook passes them to
    the modules the same way (the inventory's C(wakegrid_proxmox.token_secret) holds that lookup).
  - Reports no change; it only reads.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details:
      - Read only, the same in check mode.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  node:
    description:
      - The fleet node to start or to shut down.
    type: str
    required: true
  operation:
    description:
      - V(start) plans to bring O(node) up, V(stop) to shut it down.
    type: str
    required: true
    choices: [start, stop]
  include_dependants:
    description:
      - With O(operation=stop), stop the running nodes that still depend on what is stopped first,
        instead of returning a blocked plan.
    type: bool
    default: false
  force_infrastructure:
    description:
      - With O(operation=stop), allow the shutdown to stop a site gateway or the edge host, or a
        node hosting one, instead of returning a blocked plan. A person's decision; the wakegrid
        reconciler never sets it. Dependencies freed by the shutdown are still never stopped
        when they are infrastructure.
    type: bool
    default: false
  confirm:
    description:
      - With O(operation=stop), dependencies with C(confirm_shutdown) that a person agrees to shut
        down; without it they are only proposed (RV(proposed)).
    type: list
    elements: str
    default: []
  in_use:
    description:
      - Nodes a live session still uses, each with why; they are never stopped.
    type: dict
    default: {}
  fleet_file:
    description:
      - The fleet file. Defaults to the inventory variable C(wakegrid_fleet_file).
    type: path
  probe_timeout:
    description:
      - Seconds each TCP probe of a machine's SSH port may take. A sleeping machine does not answer.
    type: float
    default: 1
  api_timeout:
    description:
      - Seconds each Proxmox VE or Docker API call may take while observing.
    type: float
    default: 10
requirements:
  - The C(wakegrid) Python package on the controller (with C(proxmoxer) and C(docker) to observe
    guests and containers).
notes:
  - A node the controller cannot probe (an API that does not answer, a machine without an
    address) is V(unknown), never counted as down, and RV(observed) and RV(unknown) say why.
seealso:
  - module: wakegrid.fleet.wake_on_lan
  - module: wakegrid.fleet.proxmox_guest
  - module: wakegrid.fleet.docker_container_power
  - name: Power orchestration
    description: The wake and shutdown playbooks built on this plugin.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/power.md
"""

EXAMPLES = r"""
- name: Plan the start of jellyfin from what is really up
  wakegrid.fleet.power_plan:
    node: jellyfin
    operation: start
  register: plan

- name: Show the plan
  ansible.builtin.debug:
    msg: "{{ plan.lines }}"

- name: Plan the shutdown of pve1, agreeing to shut the NAS down too
  wakegrid.fleet.power_plan:
    node: pve1
    operation: stop
    confirm: [nas]
  register: plan

- name: Plan the shutdown of a site gateway, which a person decided
  wakegrid.fleet.power_plan:
    node: gw-dijon
    operation: stop
    force_infrastructure: true
  register: plan
"""

RETURN = r"""
operation:
  description: The operation planned.
  returned: success
  type: str
  sample: start
target:
  description: The node the plan is about.
  returned: success
  type: str
  sample: jellyfin
runnable:
  description: Whether the plan can run; false when RV(blocked) has reasons.
  returned: success
  type: bool
blocked:
  description:
    - Why the plan cannot run at all (no step runs then). A node whose power is unknown is named
      with the reason, as is a site gateway or the edge that would be stopped without
      O(force_infrastructure).
  returned: success
  type: list
  elements: str
  sample:
    - "nas is still needed by jellyfin (running, outside this shutdown)"
    - "nas may still be needed by jellyfin: power unknown (Proxmox API https://10.231.1.20:8006 did not answer: timed out)"
    - >-
      gw-dijon is the gateway of site dijon: its Wake-on-LAN (nas, pve1, pve2) and its WireGuard
      tunnel would become unreachable
overrides:
  description:
    - The options that would lift some of the RV(blocked) reasons, V(include_dependants) and
      V(force_infrastructure). Nothing lifts an unknown power state or a node in use.
  returned: success
  type: list
  elements: str
  sample: [force_infrastructure]
steps:
  description: The steps, in order.
  returned: success
  type: list
  elements: dict
  contains:
    index:
      description: Position of the step, from 1.
      type: int
    total:
      description: Number of steps.
      type: int
    action:
      description: V(start) or V(stop).
      type: str
    node:
      description: The node the step powers.
      type: str
    kind:
      description: The node's kind.
      type: str
    channel:
      description: "C(kind) (V(wake_on_lan), V(proxmox), V(docker) or V(ssh)) and C(via), the host that carries the command."
      type: dict
    title:
      description: What the step does, as failure messages name it.
      type: str
      sample: start lxc jellyfin via Proxmox API of pve1
    wait_for:
      description: What the step waits for before the next one.
      type: str
    reason:
      description:
        - Why the step is in the plan. For a node whose power is unknown, it says so and that
          starting is harmless if it is already up.
      type: str
      sample: "depends on nas, which is stopping"
    timeout:
      description: Seconds the step may take.
      type: int
    module:
      description: The module that carries the step.
      type: str
      sample: wakegrid.fleet.proxmox_guest
    delegate_to:
      description:
        - The host the module runs on (the site gateway for Wake-on-LAN, the controller for APIs,
          the machine itself for SSH, the parent for a C(unix://) Docker socket).
      type: str
    args:
      description: The module's options, secrets left out.
      type: dict
    ready:
      description:
        - An API to wait for before acting (C(what), C(url), C(status), C(validate_certs)), or null
          (a Docker step waits through its module, C(args.api_wait_timeout)).
      type: dict
already:
  description: Nodes already in the wanted state (C(node), C(reason)).
  returned: success
  type: list
  elements: dict
kept:
  description:
    - Dependencies that stay up, and who needs them (C(node), C(reason), C(needed_by)); also a
      dependency whose power is unknown, or that is infrastructure.
  returned: success
  type: list
  elements: dict
proposed:
  description: Shutdowns that wait for a person's confirmation (C(node), C(reason)).
  returned: success
  type: list
  elements: dict
observed:
  description:
    - The observed power state of each node looked at, by node name, C(power) (V(up), V(down) or
      V(unknown)) and how it was found or why it could not be (C(detail)).
  returned: success
  type: dict
  sample: {"pve1": {"power": "up", "detail": "SSH port 10.231.1.20:22 accepts connections"}}
up:
  description: The nodes observed up.
  returned: success
  type: list
  elements: str
unknown:
  description: The nodes whose power is unknown, each with why.
  returned: success
  type: dict
  sample: {"jellyfin": "Proxmox API https://10.231.1.20:8006 did not answer: timed out"}
lines:
  description: The plan, printable, one line per fact.
  returned: success
  type: list
  elements: str
"""
