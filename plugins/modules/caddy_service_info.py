#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: caddy_service_info
short_description: Read the service routes wakegrid manages on Caddy, with upstream health
version_added: 0.1.0
description:
  - Lists the routes of a running Caddy whose C(@id) starts with V(wakegrid_) (those written
    by M(wakegrid.fleet.caddy_service)), with their domains, upstreams, load balancing policy, allowlist
    and health check settings.
  - Adds what Caddy knows of each upstream's state. C(GET /reverse_proxy/upstreams) gives the
    number of requests in flight and the count of recent failed requests (passive health
    checks); the healthy or unhealthy verdict, which that endpoint does not give, comes from
    Caddy's C(caddy_reverse_proxy_upstreams_healthy) metric (C(GET /metrics) on the admin
    endpoint), which combines active and passive checks.
  - Reads only; never changes Caddy.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    description: Reads only, so it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to show.
  platform:
    platforms: posix
    support: full
    description: Runs on the host that can reach Caddy's admin endpoint, usually the edge itself.
options:
  name:
    description:
      - Only report this service. All wakegrid services when unset.
    type: str
  admin:
    description:
      - Caddy admin endpoint, V(http://host:port) or V(unix:///path/to/admin.sock).
    type: str
    default: http://127.0.0.1:2019
  admin_timeout:
    description: Seconds to wait for each admin API request.
    type: int
    default: 10
notes:
  - Caddy refreshes the C(caddy_reverse_proxy_upstreams_healthy) metric every 10 seconds, so
    RV(services[].upstreams[].healthy) may lag the proxy's own view by that much. It is
    V(null) when Caddy does not expose the metric for an upstream.
  - Caddy keeps one failure counter per upstream address, shared by every route that proxies
    to it; RV(services[].upstreams[].fails) is that shared counter.
  - Observed with Caddy 2.11.7, after Caddy refuses a config change, C(/reverse_proxy/upstreams)
    is empty and the health metric gone (the running config keeps routing) until the next
    successful load; the upstreams' state is then reported as V(null).
seealso:
  - module: wakegrid.fleet.caddy_service
  - name: Caddy admin API
    description: The API this module reads.
    link: https://caddyserver.com/docs/api
"""

EXAMPLES = r"""
- name: Read every wakegrid route on the edge
  wakegrid.fleet.caddy_service_info:
  register: edge

- name: Fail when no upstream of the stream service is healthy
  ansible.builtin.assert:
    that: edge.services | selectattr('name', 'equalto', 'stream') | map(attribute='upstreams')
          | flatten | selectattr('healthy') | list | length > 0

- name: Read one service through the admin unix socket
  wakegrid.fleet.caddy_service_info:
    name: stream
    admin: unix:///run/caddy/admin.sock
"""

RETURN = r"""
services:
  description: The wakegrid routes found, in server then route order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Service name (the route's C(@id) without the V(wakegrid_) prefix).
      type: str
      sample: stream
    route_id:
      description: The route's C(@id).
      type: str
      sample: wakegrid_stream
    server:
      description: The Caddy HTTP server holding the route.
      type: str
      sample: wakegrid
    domains:
      description: Hosts the route matches.
      type: list
      elements: str
      sample: [stream.example.org]
    lb_policy:
      description: Load balancing selection policy.
      type: str
      sample: first
    allow:
      description: Client allowlist (empty when every client is allowed).
      type: list
      elements: str
      sample: [192.168.0.0/16]
    health:
      description: Active health check settings, V(null) when off.
      type: dict
      sample: {path: /health, interval: 5s, timeout: 2s, passes: 2, fails: 2, status: null}
    passive_health:
      description: Passive health check settings, V(null) when off.
      type: dict
      sample: {fail_duration: 10s, max_fails: 1, unhealthy_status: null}
    try_duration:
      description: How long a request keeps trying other upstreams.
      type: str
      sample: 5s
    try_interval:
      description: Pause between two tries.
      type: str
      sample: 250ms
    dial_timeout:
      description: Connection timeout to an upstream.
      type: str
      sample: 2s
    response_header_timeout:
      description: Wait for an upstream's response headers, V(null) when unlimited.
      type: str
      sample: 2s
    upstreams:
      description: Upstreams in Caddy's order (the failover order under V(first)), with their state.
      type: list
      elements: dict
      contains:
        dial:
          description: Address Caddy dials.
          type: str
          sample: "10.200.1.30:8096"
        order:
          description: Position in the route, from 0.
          type: int
          sample: 0
        weight:
          description: Weight, only under V(weighted_round_robin).
          type: int
          returned: when the policy is weighted_round_robin
          sample: 3
        healthy:
          description: Caddy's verdict (active and passive checks), V(null) when unknown.
          type: bool
          sample: true
        num_requests:
          description: Requests in flight to this upstream now, V(null) when Caddy's pool does not list it.
          type: int
          sample: 0
        fails:
          description:
            - Failed requests still counted by passive health checks, V(null) when Caddy's pool
              does not list the upstream.
          type: int
          sample: 0
upstreams:
  description:
    - Every upstream in Caddy's pool, as C(GET /reverse_proxy/upstreams) reports it, with the
      C(healthy) verdict of the metric added (V(null) when unknown).
  returned: always
  type: list
  elements: dict
  sample: [{address: "10.200.1.30:8096", num_requests: 0, fails: 0, healthy: true}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.wakegrid.fleet.plugins.module_utils.caddy import (
    DEFAULT_ADMIN,
    CaddyAdmin,
    CaddyError,
    managed_routes,
    parse_route,
    parse_upstreams_healthy,
    route_id,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str"),
            admin=dict(type="str", default=DEFAULT_ADMIN),
            admin_timeout=dict(type="int", default=10),
        ),
        supports_check_mode=True,
    )
    client = CaddyAdmin(module.params["admin"], timeout=module.params["admin_timeout"])
    try:
        config = client.get_config()[0]
        pool = client.upstreams()
        healthy = parse_upstreams_healthy(client.metrics())
    except CaddyError as exc:
        module.fail_json(msg=to_text(exc))

    by_address = {}
    upstreams = []
    for entry in pool:
        state = dict(entry)
        state["healthy"] = healthy.get(entry.get("address"))
        by_address[entry.get("address")] = state
        upstreams.append(state)

    wanted = route_id(module.params["name"]) if module.params["name"] else None
    services = []
    for server, route in managed_routes(config):
        if wanted and route.get("@id") != wanted:
            continue
        service = parse_route(server, route)
        for upstream in service["upstreams"]:
            state = by_address.get(upstream["dial"], {})
            upstream["healthy"] = healthy.get(upstream["dial"])
            # None when Caddy's pool does not list the address (see docs/caddy.md)
            upstream["num_requests"] = state.get("num_requests")
            upstream["fails"] = state.get("fails")
        services.append(service)

    module.exit_json(changed=False, services=services, upstreams=upstreams)


if __name__ == "__main__":
    main()
