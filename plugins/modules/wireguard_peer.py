#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: wireguard_peer
short_description: Add, update or remove one WireGuard peer, live and in the persisted configuration
version_added: 0.1.0
description:
  - Converges one peer of a running WireGuard interface with C(wg set), without restarting the
    interface; sessions and handshakes of the other peers are not disturbed.
  - "Persists the peer as a C([Peer]) section of C(<config_dir>/<interface>.conf), the file
    written by M(wakegrid.fleet.wireguard_interface). The section carries a marker comment
    C(# wakegrid: <name>); sections of other peers, managed or hand-written, are kept byte for
    byte, so a run limited to some hosts never drops the peers it does not manage."
  - Reports a change only when the live peer or its section differs from the wanted one.
author:
  - wakegrid engineers (@wakegrid)
requirements:
  - C(wg) (wireguard-tools) and C(ip) (iproute2) on the managed host.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - Shows the peer's live settings and its configuration section. The preshared key is
        shown only as V(set) or V(none).
  platform:
    support: full
    platforms: posix
options:
  interface:
    description:
      - Name of the WireGuard interface, which must exist (for O(state=present)).
    type: str
    required: true
  public_key:
    description:
      - Public key of the peer (base64, as printed by C(wg pubkey)).
      - Required with O(state=present). With O(state=absent), O(public_key), O(name) or both
        identify the peer to remove.
    type: str
  name:
    description:
      - "Label of the peer in the configuration file (the C(# wakegrid: <name>) marker), for example
        the inventory name of the peer host. Defaults to O(public_key)."
      - A section with the same marker and another public key is the same peer with a rotated
        key; it is replaced, and the old key is removed from the live interface.
    type: str
  allowed_ips:
    description:
      - Networks routed to this peer and accepted from it (CIDR). Exclusive for this peer.
    type: list
    elements: str
    default: []
  endpoint:
    description:
      - C(host:port) or C([IPv6]:port) where the peer is reached.
      - When omitted, the live endpoint is left alone; WireGuard learns it from the peer's
        packets (a hub does not know the addresses of spokes behind NAT).
    type: str
  persistent_keepalive:
    description:
      - Seconds between keepalive packets, V(0) for off. A spoke behind NAT wants V(25).
    type: int
    default: 0
  preshared_key:
    description:
      - Symmetric key added to the handshake of this peer (C(wg genpsk)). Never logged or shown.
      - Mutually exclusive with O(preshared_key_file). When neither is given the peer has none.
    type: str
  preshared_key_file:
    description:
      - File on the managed host holding the preshared key.
    type: path
  state:
    description:
      - Whether the peer should be configured.
    type: str
    choices: [present, absent]
    default: present
  config_dir:
    description:
      - Directory of C(<interface>.conf).
    type: path
    default: /etc/wireguard
notes:
  - The preshared key is written inline in the C([Peer]) section, as C(wg-quick) requires; the
    file has mode C(0600).
  - If the peer's live endpoint has roamed away from O(endpoint), the next run sets it back.
seealso:
  - module: wakegrid.fleet.wireguard_interface
"""

EXAMPLES = r"""
- name: On the hub, accept the Dijon gateway (it connects from behind NAT, no endpoint)
  wakegrid.fleet.wireguard_peer:
    interface: wg0
    name: pi-dijon
    public_key: "{{ hostvars['pi-dijon'].wg.public_key }}"
    allowed_ips: [10.200.1.0/24]

- name: On a spoke, reach the hub and keep the NAT mapping open
  wakegrid.fleet.wireguard_peer:
    interface: wg0
    name: vps
    public_key: "{{ hostvars['vps'].wg.public_key }}"
    endpoint: vps.example.net:51820
    allowed_ips: [10.200.0.0/16]
    persistent_keepalive: 25
    preshared_key_file: /etc/wireguard/vps.psk

- name: Remove a decommissioned site
  wakegrid.fleet.wireguard_peer:
    interface: wg0
    name: nuc-thory
    state: absent
"""

RETURN = r"""
interface:
  description: Interface name.
  returned: always
  type: str
  sample: wg0
name:
  description: Marker name of the peer in the configuration file.
  returned: always
  type: str
  sample: pi-dijon
public_key:
  description: Public key of the peer (null when removing by O(name) alone and none was found).
  returned: always
  type: str
  sample: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
peer:
  description: Settings of the peer after the run; the preshared key appears only as V(set) or V(none).
  returned: when O(state=present)
  type: dict
  sample: {public_key: xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=, allowed_ips: [10.200.1.0/24],
           endpoint: null, persistent_keepalive: 0, preshared_key: none}
latest_handshake:
  description: Unix time of the latest handshake with the peer, V(0) if none yet.
  returned: when O(state=present) and the interface is up
  type: int
  sample: 1763812345
actions:
  description: What was done (or, in check mode, would be done), in order.
  returned: always
  type: list
  elements: str
  sample: ["set allowed-ips", "write /etc/wireguard/wg0.conf"]
"""

import ipaddress
import os
import socket

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.wireguard import (
    Host,
    WireGuardError,
    find_peer_sections,
    format_endpoint,
    format_view,
    is_valid_key,
    new_config_text,
    normalize_networks,
    parse_config,
    parse_endpoint,
    public_view,
    read_text,
    redact,
    remove_peer,
    render_peer_section,
    upsert_peer,
    write_private,
)


def endpoint_matches(live, wanted):
    """Does the live endpoint (always an IP, as `wg` prints it) match the wanted one, which may
    name a host? A name matches when it resolves to the live address."""
    if live is None:
        return False
    live_host, live_port = parse_endpoint(live)
    host, port = parse_endpoint(wanted)
    if live_port != port:
        return False
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(live_host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
    except socket.gaierror:
        return False  # `wg set` will fail on it with its own message
    return any(ipaddress.ip_address(info[4][0]) == ipaddress.ip_address(live_host) for info in infos)


def live_settings(state):
    if state is None:
        return None
    return {
        "public_key": state.public_key,
        "preshared_key": state.preshared_key,
        "allowed_ips": state.allowed_ips,
        "endpoint": state.endpoint,
        "persistent_keepalive": state.persistent_keepalive,
    }


def read_preshared_key(module):
    """The wanted preshared key or None; validated without ever echoing it."""
    params = module.params
    value = params["preshared_key"]
    source = "preshared_key"
    if params["preshared_key_file"]:
        source = params["preshared_key_file"]
        try:
            with open(source) as handle:
                value = handle.read().strip()
        except (IOError, OSError) as exc:
            module.fail_json(msg="cannot read preshared_key_file %s: %s" % (source, exc.strerror))
    if value is None:
        return None
    value = value.strip()
    module.no_log_values.add(value)
    if not is_valid_key(value):
        module.fail_json(msg="%s is not a WireGuard key (expected the output of wg genpsk)" % source)
    return value


def main():
    module = AnsibleModule(
        argument_spec=dict(
            interface=dict(type="str", required=True),
            public_key=dict(type="str", no_log=False),
            name=dict(type="str"),
            allowed_ips=dict(type="list", elements="str", default=[]),
            endpoint=dict(type="str"),
            persistent_keepalive=dict(type="int", default=0),
            preshared_key=dict(type="str", no_log=True),
            preshared_key_file=dict(type="path", no_log=False),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            config_dir=dict(type="path", default="/etc/wireguard"),
        ),
        required_if=[("state", "present", ("public_key",))],
        required_one_of=[("public_key", "name")],
        mutually_exclusive=[("preshared_key", "preshared_key_file")],
        supports_check_mode=True,
    )
    params = module.params
    interface = params["interface"]
    public_key = params["public_key"]
    name = params["name"] or public_key
    config_path = os.path.join(params["config_dir"], "%s.conf" % interface)
    if public_key is not None and not is_valid_key(public_key):
        module.fail_json(msg="public_key %r is not a WireGuard public key (44 base64 characters)" % public_key)
    if not 0 <= params["persistent_keepalive"] <= 65535:
        module.fail_json(msg="persistent_keepalive must be between 0 and 65535")
    host = Host(module)

    old_text = read_text(config_path)
    config = parse_config(old_text or "")
    link = host.link(interface)
    live_peers = {}
    if link is not None:
        try:
            dummy, live_peers = host.dump(interface)
        except WireGuardError as exc:
            module.fail_json(msg="cannot read %s: %s" % (interface, exc))

    if params["state"] == "absent":
        ensure_absent(module, host, config, old_text, config_path, live_peers, link is not None)

    if link is None:
        module.fail_json(msg="interface %s does not exist in this network namespace; "
                             "create it first with wakegrid.fleet.wireguard_interface" % interface)
    if old_text is None:
        module.fail_json(msg="%s does not exist; create the interface with wakegrid.fleet.wireguard_interface "
                             "(config_dir must match)" % config_path)
    try:
        allowed_ips = normalize_networks(params["allowed_ips"])
        endpoint = params["endpoint"]
        if endpoint is not None:
            endpoint = format_endpoint(*parse_endpoint(endpoint))
    except WireGuardError as exc:
        module.fail_json(msg=str(exc))
    preshared_key = read_preshared_key(module)
    wanted = {"public_key": public_key, "preshared_key": preshared_key, "allowed_ips": allowed_ips,
              "endpoint": endpoint, "persistent_keepalive": params["persistent_keepalive"]}

    # --- persisted section ----------------------------------------------------------------
    indexes = find_peer_sections(config, name=name, public_key=public_key)
    old_sections = [config.sections[i] for i in indexes]
    old_section_text = "\n".join(s.render() for s in old_sections)
    section = render_peer_section(name, public_key, allowed_ips, endpoint=endpoint,
                                  persistent_keepalive=params["persistent_keepalive"],
                                  preshared_key=preshared_key)
    rotated_keys = upsert_peer(config, section, name, public_key)
    new_text = new_config_text(config)

    # --- live peer --------------------------------------------------------------------------
    live = live_settings(live_peers.get(public_key))
    actions = ["remove rotated key %s" % key for key in rotated_keys if key in live_peers]
    if live is None:
        actions.append("add peer")
        set_psk = set_keepalive = set_allowed = True
        set_endpoint = endpoint is not None
    else:
        set_psk = live["preshared_key"] != preshared_key
        set_endpoint = endpoint is not None and not endpoint_matches(live["endpoint"], endpoint)
        set_keepalive = live["persistent_keepalive"] != params["persistent_keepalive"]
        set_allowed = live["allowed_ips"] != allowed_ips
        for flag, what in ((set_psk, "preshared-key"), (set_endpoint, "endpoint"),
                           (set_keepalive, "persistent-keepalive"), (set_allowed, "allowed-ips")):
            if flag:
                actions.append("set %s" % what)
    wg_args = []
    psk_data = None
    if set_psk:
        # read from stdin: the key never appears on a command line (visible in ps); an empty
        # file (/dev/null) removes it
        wg_args += ["preshared-key", "/dev/stdin" if preshared_key else "/dev/null"]
        psk_data = (preshared_key + "\n") if preshared_key else None
    if set_endpoint:
        wg_args += ["endpoint", endpoint]
    if set_keepalive:
        wg_args += ["persistent-keepalive", str(params["persistent_keepalive"])]
    if set_allowed:
        wg_args += ["allowed-ips", ",".join(allowed_ips)]
    if new_text != old_text:
        actions.append("write %s" % config_path)

    if actions and not module.check_mode:
        for key in rotated_keys:
            if key in live_peers:
                host.run([host.wg, "set", interface, "peer", key, "remove"], "wg set peer remove")
        if wg_args:
            # one `wg set` for this peer only: the others, their sessions and handshakes are untouched
            host.run([host.wg, "set", interface, "peer", public_key] + wg_args,
                     "wg set %s peer %s" % (interface, public_key), data=psk_data)
        if new_text != old_text:
            write_private(config_path, new_text)

    wanted_view = public_view(wanted)
    if live is not None:
        if endpoint is not None and not set_endpoint:
            wanted_view["endpoint"] = live["endpoint"]  # a host name that resolves to it: same endpoint
        if set_psk and live["preshared_key"] and preshared_key:
            wanted_view["preshared_key"] = "set (changed)"
    result = dict(changed=bool(actions), interface=interface, name=name, public_key=public_key,
                  actions=actions, peer=wanted_view)
    if not module.check_mode:
        dummy, live_peers = host.dump(interface)
        state = live_peers.get(public_key)
        if state is not None:
            result["peer"] = public_view(live_settings(state))
            result["latest_handshake"] = state.latest_handshake
    if module._diff:
        result["diff"] = [
            {"before_header": "%s peer %s (live)" % (interface, name),
             "after_header": "%s peer %s (live)" % (interface, name),
             "before": format_view(public_view(live)), "after": format_view(wanted_view)},
            {"before_header": "%s [Peer] %s" % (config_path, name), "after_header": "%s [Peer] %s" % (config_path, name),
             "before": redact(old_section_text + "\n" if old_section_text else ""),
             "after": redact(section.render() + "\n")},
        ]
    module.exit_json(**result)


def ensure_absent(module, host, config, old_text, config_path, live_peers, link_exists):
    params = module.params
    interface = params["interface"]
    name = params["name"] or params["public_key"]
    indexes = find_peer_sections(config, name=name, public_key=params["public_key"])
    old_sections = [config.sections[i] for i in indexes]
    keys = set(remove_peer(config, name=name, public_key=params["public_key"]))
    if params["public_key"]:
        keys.add(params["public_key"])
    live_keys = sorted(k for k in keys if k in live_peers)
    actions = ["remove peer %s" % key for key in live_keys]
    new_text = new_config_text(config) if old_text is not None else None
    if new_text != old_text:
        actions.append("write %s" % config_path)
    if actions and not module.check_mode:
        for key in live_keys:
            host.run([host.wg, "set", interface, "peer", key, "remove"], "wg set peer remove")
        if new_text != old_text:
            write_private(config_path, new_text)
    result = dict(changed=bool(actions), interface=interface, name=name,
                  public_key=params["public_key"] or (sorted(keys)[0] if keys else None), actions=actions)
    if not link_exists:
        module.warn("interface %s does not exist here; only %s was checked" % (interface, config_path))
    if module._diff:
        before_live = "".join(format_view(public_view(live_settings(live_peers[k]))) for k in live_keys)
        old_section_text = "\n".join(s.render() for s in old_sections)
        result["diff"] = [
            {"before_header": "%s peer %s (live)" % (interface, name), "after_header": "%s peer %s (live)" % (interface, name),
             "before": before_live, "after": ""},
            {"before_header": "%s [Peer] %s" % (config_path, name), "after_header": "%s [Peer] %s" % (config_path, name),
             "before": redact(old_section_text + "\n" if old_section_text else ""), "after": ""},
        ]
    module.exit_json(**result)


if __name__ == "__main__":
    main()
