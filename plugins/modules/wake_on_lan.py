#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: wake_on_lan
short_description: Wake a machine with a Wake-on-LAN magic packet, and wait until it answers
version_added: 0.1.0
description:
  - Sends a Wake-on-LAN magic packet (a UDP datagram) for O(mac), optionally with a SecureOn
    password, to O(broadcast) on O(port).
  - With O(wait_for), first checks whether the machine already answers there (a TCP connection
    or an ICMP echo). If it does, the machine is awake, nothing is sent and the task reports no
    change. Otherwise the packet is sent and the module waits until the machine answers, at most
    O(timeout) seconds, so that the next task finds it up.
  - Compared with M(community.general.wakeonlan), which always reports a change and cannot wait,
    this module is idempotent when given O(wait_for) and reports how long the machine took to
    answer (RV(elapsed)).
  - Magic packets do not cross routers or tunnels; run the module on a host of the machine's LAN
    (in a wakegrid fleet, the site's C(gateway)).
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks O(wait_for) like a normal run (it only connects or pings) and reports whether a
        packet would be sent; sends nothing and does not wait.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
options:
  mac:
    description:
      - MAC address of the network adapter to wake, as V(aa:bb:cc:dd:ee:ff), V(aa-bb-cc-dd-ee-ff),
        V(aabb.ccdd.eeff) or V(aabbccddeeff).
    type: str
    required: true
  broadcast:
    description:
      - Address the packet is sent to, normally a broadcast address. V(255.255.255.255) reaches the
        LAN of the route to it, or of O(interface) when set; the LAN's own broadcast address (for
        example V(192.168.1.255)) works without either.
      - A unicast address or an IPv6 address also works where the network delivers the datagram to
        the sleeping adapter.
    type: str
    default: 255.255.255.255
  port:
    description:
      - UDP port of the packet. Adapters listen to everything; V(9) (discard) and V(7) (echo) are
        the usual choices.
    type: int
    default: 9
  interface:
    description:
      - IP address of the local network adapter to send from (the packet leaves through the
        adapter holding that address). Needed on a host with several LANs when O(broadcast) is
        V(255.255.255.255).
    type: str
  secureon:
    description:
      - SecureOn password the adapter expects after the MAC addresses, 6 bytes written like a MAC
        address (V(aa:bb:cc:dd:ee:ff)) or 4 bytes (V(aa:bb:cc:dd), V(aabbccdd), or dotted decimal
        V(192.168.1.1) as ether-wake accepts it).
      - It travels in clear text on the LAN, as the protocol has it. Never shown in the module's
        output.
    type: str
  wait_for:
    description:
      - How to tell that the machine is awake. When set, the module checks it before sending (an
        awake machine gets no packet) and waits for it after sending.
      - Without it, the packet is always sent and the task always reports a change.
    type: dict
    suboptions:
      host:
        description:
          - Address or name of the machine to check.
        type: str
        required: true
      protocol:
        description:
          - V(tcp) connects to O(wait_for.port); V(icmp) sends one echo request with the C(ping)
            command, which must exist on the host that runs the module.
        type: str
        choices: [tcp, icmp]
        default: tcp
      port:
        description:
          - TCP port that accepts connections once the machine is up, for example V(22). Required
            with O(wait_for.protocol=tcp).
        type: int
      connect_timeout:
        description:
          - Seconds each check may take (a connection attempt or a ping) before counting as no
            answer.
        type: float
        default: 2
  timeout:
    description:
      - Seconds to wait, after sending the packet, for O(wait_for) to answer; then the task fails.
    type: float
    default: 300
  delay:
    description:
      - Seconds to wait after sending the packet before the first check, for example to let a
        machine shut down by a previous task go through its power-on self-test.
    type: float
    default: 0
  sleep:
    description:
      - Seconds between two checks.
    type: float
    default: 1
  resend_interval:
    description:
      - While waiting for O(wait_for), send the magic packet again every this many seconds (a
        network card can miss one packet, for example while a switch is still learning or a link is
        coming up). The resend happens between two checks that got no answer, so never once the
        machine answered.
      - V(0) sends one packet only. Without O(wait_for), one packet is sent.
    type: float
    default: 5
  resend_count:
    description:
      - At most this many packets are sent again, after the first one, while waiting.
    type: int
    default: 5
requirements:
  - Python on the host that runs the module; the C(wakeonlan) library (>= 4.0) is used when it is
    installed there, else the standard library sends the same packet
notes:
  - Without O(wait_for), one packet is sent. With it, the packet is sent again every
    O(resend_interval) seconds (at most O(resend_count) times) until the machine answers.
  - A TCP check treats only an accepted connection as an answer; a refused connection means the
    machine is up but not yet serving, and the module keeps waiting.
seealso:
  - module: community.general.wakeonlan
  - module: ansible.builtin.wait_for
  - name: Power modules of wakegrid.fleet
    description: How Wake-on-LAN fits the fleet's hosting tree.
    link: https://github.com/wakegrid/wakegrid/blob/main/docs/power-modules.md
"""

EXAMPLES = r"""
- name: Wake the NAS and wait until SSH answers (no packet if it is already up)
  wakegrid.fleet.wake_on_lan:
    mac: "52:54:00:12:34:56"
    broadcast: 192.168.1.255
    wait_for:
      host: 192.168.1.10
      port: 22
    timeout: 180
  delegate_to: pi-dijon  # the site gateway: magic packets do not cross WireGuard
  register: nas_wake

- name: Report how long it took
  ansible.builtin.debug:
    msg: "NAS {{ 'woke in %.1f s' | format(nas_wake.elapsed) if nas_wake.sent else 'was already up' }}"

- name: Wake a PC with a SecureOn password, from a given adapter, and wait for ping
  wakegrid.fleet.wake_on_lan:
    mac: 00-1b-21-aa-bb-cc
    interface: 192.168.1.2
    secureon: "{{ vault_gaming_pc_secureon }}"
    wait_for:
      host: gaming-pc.lan
      protocol: icmp
    delay: 10
    sleep: 2

- name: Just send the packet (always reports a change)
  wakegrid.fleet.wake_on_lan:
    mac: "52:54:00:12:34:56"
"""

RETURN = r"""
mac:
  description: The MAC address woken, normalized.
  returned: always
  type: str
  sample: "52:54:00:12:34:56"
sent:
  description: Whether a magic packet was sent (never in check mode).
  returned: always
  type: bool
  sample: true
already_awake:
  description:
    - Whether O(wait_for) answered before anything was sent; V(null) without O(wait_for).
  returned: always
  type: bool
  sample: false
elapsed:
  description:
    - Seconds from sending the packet until O(wait_for) answered, or until the module gave up.
    - V(null) when no packet was sent or nothing was waited for.
  returned: always
  type: float
  sample: 42.17
packets_sent:
  description: How many magic packets were sent (the first one and the resends); 0 when none.
  returned: always
  type: int
  sample: 2
packet_size:
  description: Size of the magic packet in bytes, 102, 106 or 108 with a SecureOn password.
  returned: always
  type: int
  sample: 102
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.wakegrid.fleet.plugins.module_utils.wakeonlan import (
    Resender,
    build_magic_packet,
    format_mac,
    icmp_answers,
    parse_mac,
    parse_secureon,
    send_magic_packet,
    tcp_answers,
    wait_until_answers,
)


def make_probe(module, wait_for):
    """A ``probe(limit) -> (ok, why)`` for the wait_for target, and its label for messages."""
    host = wait_for["host"]
    if wait_for["protocol"] == "icmp":
        ping = module.get_bin_path("ping", required=True)
        return (lambda limit: icmp_answers(ping, host, limit)), "%s (ping)" % host
    port = wait_for["port"]
    label = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    return (lambda limit: tcp_answers(host, port, limit)), label


def run(module):
    params = module.params
    for name in ("timeout", "delay", "sleep", "resend_interval", "resend_count"):
        if params[name] < 0:
            module.fail_json(msg="%s must be 0 or more, got %s" % (name, params[name]))
    try:
        mac = parse_mac(params["mac"])
        password = parse_secureon(params["secureon"]) if params["secureon"] else b""
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    packet = build_magic_packet(mac, password)
    result = dict(changed=False, mac=format_mac(mac), sent=False, already_awake=None, elapsed=None,
                  packets_sent=0, packet_size=len(packet))

    wait_for = params["wait_for"]
    probe = label = None
    if wait_for:
        if wait_for["connect_timeout"] <= 0:
            module.fail_json(msg="wait_for.connect_timeout must be more than 0", **result)
        probe, label = make_probe(module, wait_for)
        awake, why = probe(wait_for["connect_timeout"])
        result["already_awake"] = awake
        if awake:
            module.exit_json(msg="%s already answers: not sending a magic packet" % label, **result)

    result["changed"] = True
    if module.check_mode:
        module.exit_json(msg="would send a magic packet to %s" % result["mac"], **result)

    def send():
        try:
            send_magic_packet(packet, params["broadcast"], params["port"], params["interface"])
        except (OSError, ValueError) as exc:
            module.fail_json(
                msg="could not send the magic packet to %s port %d%s: %s"
                % (params["broadcast"], params["port"],
                   " from %s" % params["interface"] if params["interface"] else "", exc),
                **result
            )
        result["packets_sent"] += 1

    started = time.monotonic()
    send()
    result["sent"] = True
    if not wait_for:
        module.exit_json(msg="sent a magic packet to %s" % result["mac"], **result)

    answered, elapsed, why = wait_until_answers(
        probe,
        timeout=params["timeout"],
        delay=params["delay"],
        sleep=params["sleep"],
        probe_timeout=wait_for["connect_timeout"],
        started=started,
        between=Resender(send, params["resend_interval"], params["resend_count"]),
    )
    result["elapsed"] = round(elapsed, 3)
    if not answered:
        module.fail_json(
            msg="sent %s to %s, but %s did not answer within %g s (last check: %s)"
            % ("a magic packet" if result["packets_sent"] == 1 else "%d magic packets" % result["packets_sent"],
               result["mac"], label, params["timeout"], why),
            **result
        )
    module.exit_json(msg="%s woke up: %s answered after %.1f s" % (result["mac"], label, elapsed), **result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            mac=dict(type="str", required=True),
            broadcast=dict(type="str", default="255.255.255.255"),
            port=dict(type="int", default=9),
            interface=dict(type="str"),
            secureon=dict(type="str", no_log=True),
            wait_for=dict(
                type="dict",
                options=dict(
                    host=dict(type="str", required=True),
                    protocol=dict(type="str", choices=["tcp", "icmp"], default="tcp"),
                    port=dict(type="int"),
                    connect_timeout=dict(type="float", default=2),
                ),
                required_if=[("protocol", "tcp", ["port"])],
            ),
            timeout=dict(type="float", default=300),
            delay=dict(type="float", default=0),
            sleep=dict(type="float", default=1),
            resend_interval=dict(type="float", default=5),
            resend_count=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    run(module)


if __name__ == "__main__":
    main()
