# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Fleet ``nodes`` entries as the discovery modules pre-fill them: node names and secrets.

Shared by the Docker and Proxmox VE discovery modules. Standard library only, Python 3.8
compatible. The reserved names are those of the reconciler's fleet model
(``wakegrid.model.RESERVED_GROUPS``), which the modules cannot import on a managed host;
tests/unit/test_fleet_entries.py keeps the two lists equal.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

# Fleet names (docs/fleet.md): letters, digits, '_', '.', '-', and not a group the inventory
# plugin creates (nor one of Ansible's own).
FLEET_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
RESERVED_FLEET_NAMES = frozenset(
    (
        "all",
        "ungrouped",
        "edge",
        "sites",
        "gateways",
        "machines",
        "vms",
        "lxcs",
        "containers",
        "proxmox_hosts",
        "docker_hosts",
        "wireguard",
        "wireguard_hub",
        "wireguard_spokes",
    )
)
# Keys of a fleet node that hold secrets; scrubbed from module output when fleet_nodes is given.
FLEET_SECRET_KEYS = ("token_secret", "private_key", "secureon", "password", "key")  # key: docker.key


def fleet_secret_values(value):
    """Every secret found in a fleet ``nodes`` structure, so that a module can hide them."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in FLEET_SECRET_KEYS and isinstance(item, str) and item:
                found.append(item)
            else:
                found.extend(fleet_secret_values(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(fleet_secret_values(item))
    return found


def suggest_name(raw, qualifier, taken, fallback):
    """A fleet node name for a discovered thing: ``raw`` made valid and unique in the fleet.

    Characters a fleet name cannot hold become '-'; an empty result is ``fallback``. A name in
    ``taken`` or reserved gets ``-<qualifier>``, then ``-<qualifier>-2``, ``-3``... until it is free.
    """
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw or "").strip("-.") or fallback
    candidate = base
    if candidate in taken or candidate in RESERVED_FLEET_NAMES:
        candidate = "%s-%s" % (base, qualifier)
    suffix = 2
    while candidate in taken or candidate in RESERVED_FLEET_NAMES:
        candidate = "%s-%s-%d" % (base, qualifier, suffix)
        suffix += 1
    return candidate
