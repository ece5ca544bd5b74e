#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: proxmox_guest_info
short_description: Discover the guests of a Proxmox VE cluster and pre-fill fleet entries for new ones
version_added: 0.1.0
description:
  - Lists every virtual machine and container of a Proxmox VE host or cluster
    (C(GET /cluster/resources?type=vm)) with its ID, name, type, node, status, memory, CPUs,
    tags and uptime.
  - The status and uptime come from each online node's own guest lists
    (C(GET /nodes/{node}/qemu) and C(/lxc)), which are current, where C(/cluster/resources) reports
    the last status broadcast of each node, up to about 10 seconds old.
  - Marks each guest as configured in the fleet or as discovered but not configured, given the
    fleet's known guests (O(known_vmids) and/or O(fleet_nodes)).
  - For each guest that is not configured, returns a pre-filled fleet C(nodes) entry
    (C(kind), C(parent), C(vmid), C(tags)) under a suggested name, so that configuring it is a
    matter of completing what the API cannot know (address, dependencies, services).
  - Reports fleet guests that the cluster does not have (RV(missing)) and fleet guests whose
    kind or parent disagree with the cluster (RV(guests[].notes)), for example after a migration.
  - Only reads; never changes anything.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - wakegrid.fleet.proxmox
  - ansible.builtin.action_common_attributes
attributes:
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
  known_vmids:
    description:
      - IDs of guests already configured in the fleet.
    type: list
    elements: int
    default: []
  fleet_nodes:
    description:
      - The fleet file's C(nodes) mapping (name to entry), as in docs/fleet.md.
      - Its C(vm) and C(lxc) entries whose C(parent) is a machine carrying a node of this cluster
        are configured guests, matched by C(vmid). A machine carries the Proxmox VE node
        C(proxmox.node), by default its own name; that machine becomes the C(parent) of the
        pre-filled entries for guests on that node.
      - When no machine carries a node of this cluster, every fleet C(vm) and C(lxc) is matched by
        C(vmid) alone, with a warning.
      - Secrets in it (C(token_secret), C(private_key), C(secureon), C(password)) are hidden from
        the module's output.
    type: dict
    default: {}
  node:
    description:
      - Only list the guests on this node of the cluster.
    type: str
notes:
  - Guests of an offline node are listed with status V(unknown).
  - Templates are listed but never offered as fleet entries, as they cannot run.
  - Without O(fleet_nodes), the C(parent) of a pre-filled entry is the Proxmox VE node name.
  - Needs the C(VM.Audit) privilege to see guests; guests the user cannot see are not listed.
seealso:
  - module: wakegrid.fleet.proxmox_guest
  - name: Fleet file schema
    description: The C(nodes) entries this module pre-fills.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/fleet.md
"""

EXAMPLES = r"""
- name: Discover the guests of a cluster, given the vmids the fleet knows
  wakegrid.fleet.proxmox_guest_info:
    api_host: 192.168.1.2
    api_token_id: root@pam!wakegrid
    api_token_secret: "{{ vault_pve_token_secret }}"
    validate_certs: false
    known_vmids: [101, 201]
  register: discovered

- name: Show what is left to configure
  ansible.builtin.debug:
    msg: "{{ discovered.unconfigured | length }} guests to configure: {{ discovered.unconfigured | to_nice_yaml }}"

- name: Discover against the whole fleet file, with fleet machines as parents
  wakegrid.fleet.proxmox_guest_info:
    api_host: 192.168.1.2
    api_token_id: root@pam!wakegrid
    api_token_secret: "{{ vault_pve_token_secret }}"
    validate_certs: false
    fleet_nodes: "{{ (lookup('ansible.builtin.file', 'inventories/prod/home.fleet.yml') | from_yaml).nodes }}"
  register: discovered
"""

RETURN = r"""
guests:
  description: Every guest of the cluster (or of O(node)), sorted by vmid.
  returned: always
  type: list
  elements: dict
  contains:
    vmid:
      description: The guest's ID.
      type: int
      sample: 201
    name:
      description: The guest's name.
      type: str
      sample: jellyfin
    type:
      description: The Proxmox VE type, V(qemu) or V(lxc).
      type: str
      sample: lxc
    kind:
      description: The fleet kind, V(vm) or V(lxc).
      type: str
      sample: lxc
    node:
      description: The Proxmox VE node the guest is on.
      type: str
      sample: pve1
    parent:
      description: The fleet machine carrying that node, or the node name when no fleet machine does.
      type: str
      sample: pve1
    status:
      description: V(running), V(stopped), or V(unknown) when its node is offline.
      type: str
      sample: running
    lock:
      description: The guest's config lock (V(migrate), V(backup), ...), if any.
      type: str
      sample: null
    template:
      description: Whether the guest is a template.
      type: bool
      sample: false
    maxmem:
      description: Configured memory in bytes.
      type: int
      sample: 2147483648
    cpus:
      description: Configured CPUs.
      type: float
      sample: 2
    maxdisk:
      description: Size of the root disk in bytes.
      type: int
      sample: 8589934592
    uptime:
      description: Seconds since the guest started, 0 when stopped.
      type: int
      sample: 3600
    tags:
      description: The guest's Proxmox VE tags.
      type: list
      elements: str
      sample: [media]
    configured:
      description: Whether the fleet already has this guest.
      type: bool
      sample: false
    fleet_node:
      description: The fleet node name of a configured guest found in O(fleet_nodes).
      type: str
      sample: null
    suggested_name:
      description: For an unconfigured guest, the fleet node name suggested for it.
      type: str
      sample: jellyfin
    fleet_entry:
      description: For an unconfigured guest (not a template), its pre-filled fleet C(nodes) entry.
      type: dict
      sample: {"kind": "lxc", "parent": "pve1", "vmid": 201, "tags": ["media"]}
    notes:
      description: Disagreements between the fleet and the cluster, or why a guest is not offered.
      type: list
      elements: str
      sample: ["the fleet says parent pve1, the guest is on node pve2 (pve2)"]
unconfigured:
  description:
    - The discovered but not configured guests as a fleet C(nodes) mapping, suggested name to
      pre-filled entry, ready to complete and add to the fleet file.
  returned: always
  type: dict
  sample: {"jellyfin": {"kind": "lxc", "parent": "pve1", "vmid": 201, "tags": ["media"]}}
missing:
  description: Fleet guests of this cluster that the cluster does not have.
  returned: always
  type: list
  elements: dict
  sample: [{"fleet_node": "old-vm", "vmid": 105}]
nodes:
  description: The cluster's nodes with their status and the fleet machine carrying each.
  returned: always
  type: list
  elements: dict
  sample: [{"node": "pve1", "status": "online", "parent": "pve1"}]
counts:
  description: How many guests were found, configured and left to configure.
  returned: always
  type: dict
  sample: {"guests": 4, "configured": 2, "unconfigured": 2}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.proxmox import (
    PROXMOX_MUTUALLY_EXCLUSIVE,
    PROXMOX_REQUIRED_ONE_OF,
    PROXMOX_REQUIRED_TOGETHER,
    ProxmoxClient,
    ProxmoxError,
    check_libraries,
    classify_guests,
    fleet_parents,
    proxmox_argument_spec,
    with_live_status,
)
from ansible_collections.wakegrid.fleet.plugins.module_utils.fleet_entries import fleet_secret_values


def discover(client, params):
    nodes = client.nodes()
    resources = client.resources()
    node_names = [n["node"] for n in nodes]
    if params["node"]:
        if params["node"] not in node_names:
            raise ProxmoxError(
                "node %r is not in this cluster (nodes: %s)" % (params["node"], ", ".join(sorted(node_names)))
            )
        resources = [r for r in resources if r.get("node") == params["node"]]
    listings = dict(
        (n["node"], client.node_guests(n["node"]))
        for n in nodes
        if n.get("status") == "online" and params["node"] in (None, n["node"])
    )
    resources = with_live_status(resources, nodes, listings)
    found = classify_guests(resources, node_names, params["known_vmids"], params["fleet_nodes"])
    parents = fleet_parents(params["fleet_nodes"])
    configured = sum(1 for g in found["guests"] if g["configured"])
    return {
        "changed": False,
        "guests": found["guests"],
        "unconfigured": found["unconfigured"],
        "missing": found["missing"],
        "nodes": [
            {"node": n["node"], "status": n.get("status"), "parent": parents.get(n["node"], n["node"])}
            for n in sorted(nodes, key=lambda n: n["node"])
        ],
        "counts": {
            "guests": len(found["guests"]),
            "configured": configured,
            "unconfigured": len(found["unconfigured"]),
        },
    }, found["warnings"]


def main():
    argument_spec = proxmox_argument_spec()
    argument_spec.update(
        known_vmids=dict(type="list", elements="int", default=[]),
        fleet_nodes=dict(type="dict", default={}),
        node=dict(type="str"),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_one_of=PROXMOX_REQUIRED_ONE_OF,
        required_together=PROXMOX_REQUIRED_TOGETHER,
        mutually_exclusive=PROXMOX_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    # A fleet's nodes may carry inline secrets (proxmox.token_secret, ...): hide them from the
    # result and from the echoed module arguments, as no_log does for declared options.
    module.no_log_values.update(fleet_secret_values(module.params["fleet_nodes"]))
    check_libraries(module)
    try:
        result, warnings = discover(ProxmoxClient(module.params), module.params)
    except ProxmoxError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
