#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: wireguard_interface
short_description: Ensure a WireGuard interface is up, with a private key generated on its host
version_added: 0.1.0
description:
  - Ensures the WireGuard interface O(name) exists in the current network namespace, is up and
    has the given addresses, listen port and MTU, and persists its C([Interface]) section in
    C(<config_dir>/<name>.conf), a file C(wg-quick) can use.
  - The private key is generated on the managed host with C(wg genkey) the first time, stored in
    a file of mode C(0600) and never leaves that host; the module returns the derived public key.
  - The interface is created with the kernel module when present, else with the userspace
    C(wireguard-go) daemon (see O(implementation)).
  - Every change is applied live (C(wg set), C(ip address), C(ip link set)); a running interface
    is never restarted, so established sessions and handshakes survive.
  - When the interface has to be created, the peers persisted in the file (by
    M(wakegrid.fleet.wireguard_peer)) are loaded too, like C(wg-quick up) does.
  - "Returns the peers the file holds with a C(# wakegrid: <name>) marker (RV(managed_peers)),
    so that a play can remove the managed peers it no longer wants with
    M(wakegrid.fleet.wireguard_peer) (C(state: absent))."
author:
  - wakegrid engineers (@wakegrid)
requirements:
  - C(wg) (wireguard-tools) and C(ip) (iproute2) on the managed host.
  - C(wireguard-go) on the managed host when the kernel has no WireGuard module.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the live interface settings and the configuration file, with key material
        redacted.
  platform:
    support: full
    platforms: posix
options:
  name:
    description:
      - Interface name, at most 15 characters (for example C(wg0)).
    type: str
    required: true
  state:
    description:
      - V(present) creates the interface if needed and converges it.
      - V(absent) deletes the interface. The configuration file and the private key are kept
        unless O(remove_config=true), so that recreating the interface keeps its identity.
    type: str
    choices: [present, absent]
    default: present
  address:
    description:
      - Addresses of the interface, in CIDR notation (for example V(10.200.0.1/24)).
      - Exclusive; addresses not listed are removed from the interface.
      - When omitted, the addresses already in the configuration file are used, if any.
    type: list
    elements: str
  listen_port:
    description:
      - UDP port to listen on. When omitted, the port in the configuration file is used, else
        WireGuard picks a random one (fine for a spoke that only initiates).
    type: int
  mtu:
    description:
      - Interface MTU. When omitted, the MTU in the configuration file is used, else the default
        of the implementation is left alone.
    type: int
  implementation:
    description:
      - How to create the interface when it does not exist.
      - V(auto) tries the kernel module and falls back to C(wireguard-go).
      - V(kernel) and V(userspace) force one; an existing interface of the other kind is
        kept as it is, with a warning (switching would restart the tunnel).
    type: str
    choices: [auto, kernel, userspace]
    default: auto
  config_dir:
    description:
      - Directory of the persisted configuration C(<name>.conf). Created with mode C(0700).
    type: path
    default: /etc/wireguard
  private_key_path:
    description:
      - File holding the private key, generated there if missing.
      - Defaults to C(<config_dir>/<name>.key).
    type: path
  remove_config:
    description:
      - With O(state=absent), also delete the configuration file and the private key file.
    type: bool
    default: false
notes:
  - The configuration file references the key file with
    C(PostUp = wg set %i private-key <private_key_path>) instead of an inline C(PrivateKey), so
    key material exists in exactly one file, which only C(wg) reads.
  - C(wg-quick up) raises the link before its C(PostUp) hooks set the key, so the first handshake
    fails and WireGuard waits 5 s (its rekey timeout) before the next one. A second C(PostUp),
    written right after the key's, turns the persistent keepalive of each peer that has one off
    and on again, which sends a handshake at once; a spoke restarted by C(wg-quick) (at boot, by
    C(systemctl restart)) reconnects within a round trip instead of 5 s.
  - Do not use
    C(SaveConfig = true) or C(wg-quick save) on a managed interface; they would inline the key
    and drop the markers of managed peers.
  - C(wireguard-go) keeps its control socket in C(/var/run/wireguard/<name>.sock), which is shared
    by all network namespaces of a host; use distinct interface names across namespaces.
seealso:
  - module: wakegrid.fleet.wireguard_peer
"""

EXAMPLES = r"""
- name: Hub interface, key generated on the hub
  wakegrid.fleet.wireguard_interface:
    name: wg0
    address: 10.200.0.1/24
    listen_port: 51820
  register: hub_wg

- name: Spoke interface forced to the userspace implementation
  wakegrid.fleet.wireguard_interface:
    name: wg0
    address: [10.200.1.1/24]
    mtu: 1380
    implementation: userspace

- name: Share the hub public key with the spokes
  ansible.builtin.set_fact:
    hub_public_key: "{{ hub_wg.public_key }}"

- name: Remove the managed peers of sites that are gone (hand-written peers are never listed)
  wakegrid.fleet.wireguard_peer:
    interface: wg0
    name: "{{ item }}"
    state: absent
  loop: "{{ hub_wg.managed_peers | map(attribute='name') | difference(['pi-dijon', 'nuc-thory']) }}"

- name: Remove the interface and forget its key
  wakegrid.fleet.wireguard_interface:
    name: wg0
    state: absent
    remove_config: true
"""

RETURN = r"""
name:
  description: Interface name.
  returned: always
  type: str
  sample: wg0
public_key:
  description:
    - Public key of the interface, derived from its private key with C(wg pubkey).
    - Null in check mode when the private key does not exist yet.
  returned: when O(state=present)
  type: str
  sample: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
implementation:
  description: V(kernel) or V(userspace), the implementation of the interface after the run.
  returned: when O(state=present)
  type: str
  sample: userspace
addresses:
  description: Addresses of the interface after the run.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [10.200.0.1/24]
listen_port:
  description: UDP listen port after the run (null in check mode for a new interface without O(listen_port)).
  returned: when O(state=present)
  type: int
  sample: 51820
config_path:
  description: Path of the persisted configuration file.
  returned: always
  type: str
  sample: /etc/wireguard/wg0.conf
private_key_path:
  description: Path of the private key file (the key itself is never returned).
  returned: always
  type: str
  sample: /etc/wireguard/wg0.key
managed_peers:
  description:
    - "The peers of the configuration file that carry a C(# wakegrid: <name>) marker (those written
      by M(wakegrid.fleet.wireguard_peer)), in file order. Hand-written peers are not listed."
    - This module never changes them; a play compares the names with the peers it wants and removes
      the others with M(wakegrid.fleet.wireguard_peer).
  returned: when O(state=present)
  type: list
  elements: dict
  contains:
    name:
      description: The marker name.
      type: str
      sample: gw-thory
    public_key:
      description: The section's public key (null if it has none).
      type: str
      sample: iO8XroB0QXbHxC6Ol5kMCBlV1gFcWLOX78Zp3jRWVWQ=
    allowed_ips:
      description: The section's allowed IPs, as WireGuard stores them (host bits masked).
      type: list
      elements: str
      sample: [10.200.2.1/32, 10.231.2.0/24]
  sample: [{name: gw-thory, public_key: iO8XroB0QXbHxC6Ol5kMCBlV1gFcWLOX78Zp3jRWVWQ=, allowed_ips: [10.200.2.1/32]}]
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["generate private key", "write /etc/wireguard/wg0.conf", "create interface (auto)", "load persisted peers",
           "set private key", "set listen port 51820", "add address 10.200.0.1/24", "set link up"]
"""

import os
import re
import stat
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.wireguard import (
    Host,
    WireGuardError,
    config_addresses,
    format_view,
    interface_section_update,
    is_valid_key,
    link_implementation,
    managed_peers,
    new_config_text,
    normalize_interface_addresses,
    parse_config,
    read_text,
    redact,
    strip_config,
    write_private,
)

NAME_RE = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")  # what wg-quick accepts


def create_interface(module, host, name, implementation):
    """Create the link; returns the implementation used."""
    errors = []
    if implementation in ("auto", "kernel"):
        rc, out, err = host.run([host.ip, "link", "add", "dev", name, "type", "wireguard"],
                                "ip link add type wireguard", check=implementation == "kernel")
        if rc == 0:
            return "kernel"
        errors.append("kernel: %s" % (err or out).strip())
    wireguard_go = module.get_bin_path("wireguard-go")
    if not wireguard_go:
        module.fail_json(msg="cannot create %s: no WireGuard kernel module (%s) and no wireguard-go binary"
                         % (name, "; ".join(errors) or "not tried"))
    # Old wireguard-go releases refuse to run on Linux without this variable; newer ones
    # ignore it and only print a banner recommending the kernel module.
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    # wireguard-go daemonizes itself once the tun device and its control socket exist, with
    # its output sent to /dev/null, so run_command returns as soon as the interface is ready.
    # The daemon must not stay in our process group: Ansible ends a task by killing the
    # worker's whole group (ansible-core >= 2.19 with the local connection), which would take
    # the tunnel down with it. `setsid` (util-linux) gives it a session of its own.
    command = [wireguard_go, name]
    setsid = module.get_bin_path("setsid")
    if setsid:
        command.insert(0, setsid)
    else:
        module.warn("setsid not found: wireguard-go stays in the module's process group")
    rc, out, err = module.run_command(command, environ_update=env)
    if rc != 0:
        hint = ""
        if "address already in use" in (err + out) or os.path.exists("/var/run/wireguard/%s.sock" % name):
            hint = (" (a wireguard-go socket /var/run/wireguard/%s.sock already exists, possibly from an "
                    "interface of the same name in another network namespace)" % name)
        module.fail_json(msg="wireguard-go %s failed (rc=%d)%s: %s" % (name, rc, hint, (err or out).strip()))
    deadline = time.time() + 5
    while host.link(name) is None or host.run([host.wg, "show", name], "wg show", check=False)[0] != 0:
        if time.time() > deadline:
            module.fail_json(msg="wireguard-go started but %s did not appear within 5 s" % name)
        time.sleep(0.1)
    return "userspace"


def ensure_absent(module, host, name, config_path, key_path):
    actions = []
    link = host.link(name)
    if link is not None:
        actions.append("delete interface")
    if module.params["remove_config"]:
        actions.extend("remove %s" % p for p in (config_path, key_path) if os.path.exists(p))
    before = format_view({"exists": link is not None, "config_file": os.path.exists(config_path)})
    after = format_view({"exists": False,
                         "config_file": os.path.exists(config_path) and not module.params["remove_config"]})
    if actions and not module.check_mode:
        if link is not None:
            # For wireguard-go this closes its tun device; the daemon then exits by itself.
            host.run([host.ip, "link", "delete", "dev", name], "ip link delete")
        if module.params["remove_config"]:
            for path in (config_path, key_path):
                if os.path.exists(path):
                    os.unlink(path)
    result = dict(changed=bool(actions), name=name, config_path=config_path, private_key_path=key_path,
                  actions=actions)
    if module._diff:
        result["diff"] = {"before_header": "%s (live)" % name, "after_header": "%s (live)" % name,
                          "before": before, "after": after}
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            address=dict(type="list", elements="str"),
            listen_port=dict(type="int"),
            mtu=dict(type="int"),
            implementation=dict(type="str", default="auto", choices=["auto", "kernel", "userspace"]),
            config_dir=dict(type="path", default="/etc/wireguard"),
            private_key_path=dict(type="path", no_log=False),
            remove_config=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    name = params["name"]
    if not NAME_RE.match(name):
        module.fail_json(msg="invalid interface name %r: 1 to 15 characters among a-z A-Z 0-9 _ = + . -" % name)
    if params["listen_port"] is not None and not 0 < params["listen_port"] < 65536:
        module.fail_json(msg="listen_port must be between 1 and 65535")
    if params["mtu"] is not None and not 576 <= params["mtu"] <= 65535:
        module.fail_json(msg="mtu must be between 576 and 65535")
    config_dir = params["config_dir"]
    config_path = os.path.join(config_dir, "%s.conf" % name)
    key_path = params["private_key_path"] or os.path.join(config_dir, "%s.key" % name)
    host = Host(module)

    if params["state"] == "absent":
        ensure_absent(module, host, name, config_path, key_path)

    try:
        old_text = read_text(config_path)
        config = parse_config(old_text or "")
        desired_addresses = normalize_interface_addresses(
            params["address"] if params["address"] is not None else config_addresses(config))
        peers_in_file = managed_peers(config)
    except WireGuardError as exc:
        module.fail_json(msg="%s: %s" % (config_path, exc))
    interface_section = config.interface
    file_port = interface_section.get("ListenPort") if interface_section else None
    file_mtu = interface_section.get("MTU") if interface_section else None
    desired_port = params["listen_port"] or (int(file_port) if file_port and file_port.isdigit() else None)
    desired_mtu = params["mtu"] or (int(file_mtu) if file_mtu and file_mtu.isdigit() else None)
    actions = []

    # --- private key: generated here, read only to derive the public key ----------------
    private_key = None
    key_text = read_text(key_path)
    if key_text is not None:
        private_key = key_text.strip()
        module.no_log_values.add(private_key)
        if not is_valid_key(private_key):
            module.fail_json(msg="%s does not hold a WireGuard private key (expected the output of wg genkey)"
                             % key_path)
        if stat.S_IMODE(os.stat(key_path).st_mode) != 0o600:
            actions.append("set mode 0600 on %s" % key_path)
    else:
        inline = interface_section.get("PrivateKey") if interface_section else None
        if inline and is_valid_key(inline):
            # a hand-written wg-quick file: move its key into the key file, keep the identity
            private_key = inline
            module.no_log_values.add(private_key)
            actions.append("move inline private key to %s" % key_path)
        else:
            actions.append("generate private key")
            if not module.check_mode:
                dummy, out, dummy2 = host.run([host.wg, "genkey"], "wg genkey")
                private_key = out.strip()
                module.no_log_values.add(private_key)
    public_key = None
    if private_key is not None:
        dummy, out, dummy2 = host.run([host.wg, "pubkey"], "wg pubkey", data=private_key + "\n")
        public_key = out.strip()

    # --- persisted configuration (no key material written by this module) ---------------
    interface_section_update(config, desired_addresses, desired_port, desired_mtu, key_path)
    new_text = new_config_text(config)
    if new_text != old_text:
        actions.append("write %s" % config_path)

    # --- live interface -------------------------------------------------------------------
    link = host.link(name)
    before = {"exists": link is not None}
    if link is not None:
        implementation = link_implementation(link)
        if implementation not in ("kernel", "userspace"):
            module.fail_json(msg="%s exists but is not a WireGuard interface (link kind %s)" % (name, implementation))
        if params["implementation"] not in ("auto", implementation):
            module.warn("%s runs with the %s implementation, not %s as requested; it is left running, "
                        "delete it (state=absent) to switch" % (name, implementation, params["implementation"]))
        try:
            live_interface, dummy = host.dump(name)
        except WireGuardError as exc:
            module.fail_json(msg="cannot read %s: %s" % (name, exc))
        live_addresses = host.addresses(name)
        before.update(implementation=implementation, public_key=live_interface.public_key,
                      listen_port=live_interface.listen_port, mtu=link.get("mtu"),
                      addresses=live_addresses, up="UP" in link.get("flags", []))
        set_key = public_key is None or live_interface.public_key != public_key
        set_port = bool(desired_port) and live_interface.listen_port != desired_port
        set_mtu = bool(desired_mtu) and link.get("mtu") != desired_mtu
        set_up = not before["up"]
    else:
        implementation = None
        live_addresses = []
        actions.append("create interface (%s)" % params["implementation"])
        actions.append("load persisted peers")
        set_key, set_port, set_mtu, set_up = True, bool(desired_port), bool(desired_mtu), True
    if set_key:
        actions.append("set private key")
    if set_port:
        actions.append("set listen port %d" % desired_port)
    if set_mtu:
        actions.append("set mtu %d" % desired_mtu)
    actions.extend("delete address %s" % a for a in live_addresses if a not in desired_addresses)
    actions.extend("add address %s" % a for a in desired_addresses if a not in live_addresses)
    if set_up:
        actions.append("set link up")

    if actions and not module.check_mode:
        for directory in (config_dir, os.path.dirname(key_path)):
            if directory and not os.path.isdir(directory):
                os.makedirs(directory, 0o700)
        if key_text is None:
            write_private(key_path, private_key + "\n")
        elif stat.S_IMODE(os.stat(key_path).st_mode) != 0o600:
            os.chmod(key_path, 0o600)
        if link is None:
            implementation = create_interface(module, host, name, params["implementation"])
            # Like wg-quick up: the peers persisted by wireguard_peer come back with the interface.
            # (setconf clears the private key, which is set right after)
            host.run([host.wg, "setconf", name, "/dev/stdin"], "wg setconf %s" % name,
                     data=strip_config(config))
        if set_key:
            host.run([host.wg, "set", name, "private-key", key_path], "wg set private-key")
        if set_port:
            host.run([host.wg, "set", name, "listen-port", str(desired_port)], "wg set listen-port")
        if set_mtu:
            host.run([host.ip, "link", "set", "dev", name, "mtu", str(desired_mtu)], "ip link set mtu")
        for address in live_addresses:
            if address not in desired_addresses:
                host.run([host.ip, "address", "delete", address, "dev", name], "ip address delete %s" % address)
        for address in desired_addresses:
            if address not in live_addresses:
                host.run([host.ip, "address", "add", address, "dev", name], "ip address add %s" % address)
        if set_up:
            host.run([host.ip, "link", "set", "dev", name, "up"], "ip link set up")
        if new_text != old_text:
            write_private(config_path, new_text)

    after = {"exists": True, "implementation": implementation, "public_key": public_key,
             "listen_port": desired_port or before.get("listen_port"), "mtu": desired_mtu or before.get("mtu"),
             "addresses": desired_addresses, "up": True}
    if not module.check_mode:
        link = host.link(name)
        live_interface, dummy = host.dump(name)
        after.update(implementation=link_implementation(link), listen_port=live_interface.listen_port,
                     mtu=link.get("mtu"), addresses=host.addresses(name))
    result = dict(
        changed=bool(actions), name=name, public_key=public_key, implementation=after["implementation"],
        addresses=after["addresses"], listen_port=after["listen_port"], config_path=config_path,
        private_key_path=key_path, managed_peers=peers_in_file, actions=actions,
    )
    if module._diff:
        result["diff"] = [
            {"before_header": "%s (live)" % name, "after_header": "%s (live)" % name,
             "before": format_view(before), "after": format_view(after)},
            {"before_header": config_path, "after_header": config_path,
             "before": redact(old_text or ""), "after": redact(new_text)},
        ]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
