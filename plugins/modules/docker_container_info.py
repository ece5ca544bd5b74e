#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: docker_container_info
short_description: Discover the containers of a Docker host and pre-fill fleet entries for new ones
version_added: 0.1.0
description:
  - Lists every container of a Docker Engine, running or not, with its name, image, state, health,
    ports and labels.
  - Marks each container as configured in the fleet or as discovered but not configured, given the
    fleet's known containers on this Docker host (O(known_containers) and/or O(fleet_nodes)).
  - For each container that is not configured, returns a pre-filled fleet C(nodes) entry
    (C(kind=container), C(parent=)O(parent), C(container)) under a suggested node name, so that
    configuring it is a matter of completing what the API cannot know (address, dependencies,
    services).
  - Reports fleet containers that the Docker host does not have (RV(missing)).
  - Only reads; never changes anything.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - wakegrid.fleet.docker
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
  parent:
    description:
      - The fleet node that carries this Docker host (a C(machine), C(vm) or C(lxc) with C(docker)),
        C(parent) of the pre-filled entries.
    type: str
    required: true
  known_containers:
    description:
      - Names of the containers of this Docker host already configured in the fleet.
    type: list
    elements: str
    default: []
  fleet_nodes:
    description:
      - The fleet file's C(nodes) mapping (name to entry), as in docs/fleet.md.
      - Its C(container) entries whose C(parent) is O(parent) are configured containers, matched by
        their C(container) name (by default the node name). Its node names are never suggested
        again.
      - Secrets in it (C(token_secret), C(private_key), C(secureon), C(password)) are hidden from
        the module's output.
    type: dict
    default: {}
  filters:
    description:
      - "Only list the containers matching these Docker API filters, as C(docker ps --filter)
        takes them, for example C({\"label\": [\"com.docker.compose.project=media\"]})."
      - Fleet containers filtered out are not reported in RV(missing) when the Docker host has them.
    type: dict
    default: {}
notes:
  - Suggested names are the container names, made unique against O(fleet_nodes) (and names the
    fleet reserves for groups) by appending O(parent).
seealso:
  - module: wakegrid.fleet.docker_container_power
  - module: wakegrid.fleet.proxmox_guest_info
  - module: community.docker.docker_host_info
  - name: Fleet file schema
    description: The C(nodes) entries this module pre-fills.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/fleet.md
"""

EXAMPLES = r"""
- name: Discover the containers of vm-docker, given those the fleet knows
  wakegrid.fleet.docker_container_info:
    docker_host: tcp://192.168.1.21:2375
    parent: vm-docker
    known_containers: [sandbox]
  register: discovered

- name: Show what is left to configure
  ansible.builtin.debug:
    msg: "{{ discovered.unconfigured | length }} containers to configure: {{ discovered.unconfigured | to_nice_yaml }}"

- name: Discover against the whole fleet file
  wakegrid.fleet.docker_container_info:
    docker_host: tcp://192.168.1.21:2375
    parent: vm-docker
    fleet_nodes: "{{ (lookup('ansible.builtin.file', 'inventories/prod/home.fleet.yml') | from_yaml).nodes }}"
  register: discovered
"""

RETURN = r"""
containers:
  description: Every container of the Docker host, running or not, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Short (12 characters) container ID.
      type: str
      sample: 6f1b3a0c2d9e
    name:
      description: Container name.
      type: str
      sample: sandbox
    image:
      description: The image the container was created from, as given then.
      type: str
      sample: nginx:1.27
    state:
      description: Docker status (V(created), V(running), V(paused), V(restarting), V(exited), V(dead)).
      type: str
      sample: running
    status:
      description: Docker's human readable status.
      type: str
      sample: Up 2 hours (healthy)
    health:
      description: V(starting), V(healthy) or V(unhealthy); V(null) without a health check.
      type: str
      sample: healthy
    ports:
      description:
        - Exposed and published ports. The host side is what is bound for a running container, and
          what is configured for a stopped one; V(null) for a port that is not published.
      type: list
      elements: dict
      sample: [{"container_port": 80, "protocol": "tcp", "host_ip": "0.0.0.0", "host_port": 8080}]
    labels:
      description: Container labels.
      type: dict
      sample: {"com.docker.compose.project": "media"}
    created:
      description: Creation time, as Docker gives it (RFC 3339).
      type: str
      sample: "2026-01-01T10:00:00.123456789Z"
    configured:
      description: Whether the fleet already has this container.
      type: bool
      sample: false
    fleet_node:
      description: The fleet node name of a configured container found in O(fleet_nodes).
      type: str
      sample: null
    suggested_name:
      description: For an unconfigured container, the fleet node name suggested for it.
      type: str
      sample: sandbox
    fleet_entry:
      description: For an unconfigured container, its pre-filled fleet C(nodes) entry.
      type: dict
      sample: {"kind": "container", "parent": "vm-docker", "container": "sandbox"}
unconfigured:
  description:
    - The discovered but not configured containers as a fleet C(nodes) mapping, suggested name to
      pre-filled entry, ready to complete and add to the fleet file.
  returned: always
  type: dict
  sample: {"sandbox": {"kind": "container", "parent": "vm-docker", "container": "sandbox"}}
missing:
  description: Fleet containers of this Docker host that it does not have.
  returned: always
  type: list
  elements: dict
  sample: [{"fleet_node": "old-app", "container": "old-app"}]
counts:
  description: How many containers were found, configured and left to configure.
  returned: always
  type: dict
  sample: {"containers": 4, "configured": 2, "unconfigured": 2}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.docker_api import (
    DOCKER_MUTUALLY_EXCLUSIVE,
    check_sdk,
    connect,
    container_name,
    container_ports,
    container_status,
    docker_argument_spec,
    health_status,
    inspect_container,
    run_or_fail,
)
from ansible_collections.wakegrid.fleet.plugins.module_utils.fleet_entries import fleet_secret_values, suggest_name


def fleet_containers(params):
    """Container name -> fleet node name (None when only listed in known_containers)."""
    known = {}
    for node, entry in (params["fleet_nodes"] or {}).items():
        if isinstance(entry, dict) and entry.get("kind") == "container" and entry.get("parent") == params["parent"]:
            known[entry.get("container") or node] = node
    for name in params["known_containers"]:
        known.setdefault(name, None)
    return known


def discover(client, params):
    known = fleet_containers(params)
    taken = set(params["fleet_nodes"] or {})
    containers = []
    for summary in client.api.containers(all=True, filters=params["filters"] or None):
        attrs = inspect_container(client, summary["Id"])
        if attrs is None:  # removed since the listing
            continue
        name = container_name(attrs)
        entry = {
            "id": attrs["Id"][:12],
            "name": name,
            "image": (attrs.get("Config") or {}).get("Image"),
            "state": container_status(attrs),
            "status": summary.get("Status"),
            "health": health_status(attrs),
            "ports": container_ports(attrs),
            "labels": (attrs.get("Config") or {}).get("Labels") or {},
            "created": attrs.get("Created"),
            "configured": name in known,
            "fleet_node": known.get(name),
            "suggested_name": None,
            "fleet_entry": None,
        }
        containers.append(entry)
    containers.sort(key=lambda c: c["name"])

    unconfigured = {}
    for entry in containers:
        if entry["configured"]:
            continue
        suggested = suggest_name(entry["name"], params["parent"], taken | set(unconfigured), "container")
        entry["suggested_name"] = suggested
        entry["fleet_entry"] = {"kind": "container", "parent": params["parent"], "container": entry["name"]}
        unconfigured[suggested] = entry["fleet_entry"]

    present = set(c["name"] for c in containers)
    # A fleet container the filters left out is not missing: ask for it by name.
    missing = [
        {"fleet_node": node, "container": name}
        for name, node in sorted(known.items())
        if name not in present and inspect_container(client, name) is None
    ]
    return {
        "changed": False,
        "containers": containers,
        "unconfigured": unconfigured,
        "missing": missing,
        "counts": {
            "containers": len(containers),
            "configured": sum(1 for c in containers if c["configured"]),
            "unconfigured": len(unconfigured),
        },
    }


def main():
    argument_spec = docker_argument_spec()
    argument_spec.update(
        parent=dict(type="str", required=True),
        known_containers=dict(type="list", elements="str", default=[]),
        fleet_nodes=dict(type="dict", default={}),
        filters=dict(type="dict", default={}),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=DOCKER_MUTUALLY_EXCLUSIVE,
        supports_check_mode=True,
    )
    # A fleet's nodes may carry inline secrets: hide them from the result and the echoed arguments.
    module.no_log_values.update(fleet_secret_values(module.params["fleet_nodes"]))
    check_sdk(module)
    result = run_or_fail(module, lambda: discover(connect(module.params, module.add_cleanup_file), module.params))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
