#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: caddy_service
short_description: Manage one public service's route on Caddy through its admin API
version_added: 0.1.0
description:
  - Creates, updates or removes the route of one public service on a running Caddy, through
    Caddy's admin API (TCP or unix socket). The route is a host matcher for the service's domains, an
    optional client allowlist answering C(403) to others, and a C(reverse_proxy) to the
    service's upstreams with load balancing, retries and active and passive health checks.
  - The route carries the C(@id) V(wakegrid_<name>), which is how the module finds it again
    and how M(wakegrid.fleet.caddy_service_info) recognizes the routes it manages.
  - The running config is read first and compared semantically with the wanted route (key
    order, duration spelling and the order of host and IP-range lists do not matter). When
    they are equal nothing is written, because every config change makes Caddy reload, which
    resets the health state of all its upstreams.
  - A change is one conditional write (C(If-Match) on the ETag of the config just read), so a
    concurrent writer is never overwritten; on a conflict the read, compare and write are
    redone, up to O(conflict_retries) times.
  - When Caddy refuses a change (for example an unknown load balancing policy or an invalid
    duration), its own error message is returned and the running config is left as it was.
  - A new route is inserted before the first route of the server that would otherwise take
    its requests (a route without matcher, or with a wildcard host covering the service's
    domains), else appended. An existing route keeps its position.
author:
  - wakegrid engineers (@wakegrid)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    description: Computes the change and reports it, with the diff, without writing.
  diff_mode:
    support: full
    description: Before and after of the service's route JSON.
  platform:
    platforms: posix
    support: full
    description: Runs on the host that can reach Caddy's admin endpoint, usually the edge itself.
options:
  name:
    description:
      - Name of the service. The route's C(@id) is V(wakegrid_<name>).
    type: str
    required: true
  state:
    description:
      - V(present) makes the route exist as described, V(absent) removes it (from whichever
        server holds it).
    type: str
    choices: [present, absent]
    default: present
  domains:
    description:
      - Host names the route matches, for example V(stream.example.org).
      - Required when O(state=present).
    type: list
    elements: str
  upstreams:
    description:
      - The service's backends, in failover order.
      - Required when O(state=present).
    type: list
    elements: dict
    suboptions:
      dial:
        description:
          - Address Caddy dials, V(host:port), for example the backend's WireGuard address.
        type: str
        required: true
      weight:
        description:
          - Relative share of requests under V(weighted_round_robin).
        type: int
        default: 1
      priority:
        description:
          - Failover rank, lower first (usually the priority of the backend's site). Upstreams
            are ordered by it, those without one last, the given order breaking ties.
          - When upstreams have different priorities, O(lb_policy=auto) chooses strict
            failover (V(first)).
        type: int
      site:
        description:
          - Site of the backend, for information only (reported back in RV(upstreams)).
        type: str
  lb_policy:
    description:
      - Caddy load balancing selection policy.
      - V(auto) chooses V(first) (strict failover in upstream order) when upstreams have
        different O(upstreams[].priority), else V(weighted_round_robin) when their weights
        differ, else V(round_robin).
      - Any other value is passed to Caddy as the policy name (for example V(first),
        V(round_robin), V(weighted_round_robin), V(least_conn), V(random), V(ip_hash)); Caddy
        rejects unknown names and the module returns its message.
    type: str
    default: auto
  allow:
    description:
      - Client allowlist, as IP addresses or CIDR ranges. When set, requests from other
        clients get C(403 Forbidden) and never reach an upstream.
      - Matched with Caddy's C(client_ip) matcher, which is the connection's peer address
        unless the server declares C(trusted_proxies).
    type: list
    elements: str
  health:
    description:
      - Active health checks, run by Caddy in the background against each upstream. Unset
        means no active checks (passive checks still apply).
      - Durations use Go syntax (V(500ms), V(2s), V(1m)).
    type: dict
    suboptions:
      path:
        description: URI (path and optional query) requested on each upstream.
        type: str
        default: /
      interval:
        description: Time between two checks of an upstream.
        type: str
        default: 5s
      timeout:
        description: Time after which a check counts as failed.
        type: str
        default: 2s
      passes:
        description: Consecutive passes before an unhealthy upstream takes traffic again.
        type: int
        default: 2
      fails:
        description: Consecutive failures before a healthy upstream stops taking traffic.
        type: int
        default: 2
      status:
        description:
          - Expected HTTP status, or a class as one digit (V(2) for any 2xx). Unset means any 2xx.
        type: int
  passive_health:
    description:
      - Passive health checks, from the outcome of real requests. Defaults apply when unset;
        V(fail_duration=0) turns them off.
    type: dict
    suboptions:
      fail_duration:
        description: How long a failed request counts against its upstream.
        type: str
        default: 10s
      max_fails:
        description: Failures within O(passive_health.fail_duration) that mark an upstream down.
        type: int
        default: 1
      unhealthy_status:
        description: Response statuses that count as a failed request (for example V(502)).
        type: list
        elements: int
  try_duration:
    description:
      - How long Caddy keeps trying other upstreams for a request whose upstream failed
        (connection refused, dial timeout). V(0s) disables retries.
      - Unset means V(5s) without O(fallback). With O(fallback), unset means one try per
        upstream without pause, so that when no upstream is available the request goes to the
        reconciler at once, instead of waiting O(try_duration) for an upstream that is asleep.
        Set it explicitly to keep a time-bounded retry loop before the hand-over.
    type: str
  try_interval:
    description: Pause between two tries within O(try_duration).
    type: str
    default: 250ms
  dial_timeout:
    description:
      - How long Caddy waits to connect to an upstream before counting the attempt as failed
        and trying another one.
    type: str
    default: 2s
  response_header_timeout:
    description:
      - How long Caddy waits, once a request is sent to an upstream, for the start of its
        answer (the response headers). Unset (the default) means no limit, Caddy's own default.
      - Without it, a request already sent to a backend that vanishes (a whole site cut, its
        WireGuard peer gone and packets dropped) is answered only when the client gives up.
      - With it, such a request is abandoned after this time, counted as a failure by the
        passive health checks and, for requests Caddy may repeat safely (C(GET), C(HEAD)),
        retried on another upstream within O(try_duration). Other methods (C(POST)) get a
        C(504), because Caddy retries them only when the connection could not be opened.
      - The trade-off is that a backend slower than this to start its answer is abandoned
        (and marked down) as well, so set it well above the slowest legitimate answer time.
      - Must be shorter than O(try_duration) when retries are on, or no retry could follow.
      - Durations use Go syntax (V(500ms), V(2s), V(1m)).
    type: str
  fallback:
    description:
      - For a service that may sleep (C(on_demand), C(scheduled)), hand the requests no upstream
        can take to the wakegrid reconciler, which wakes the service and answers them (a waiting
        page, or the held request's real answer).
      - A request is handed over when Caddy's proxy itself answers C(503) (no upstream available,
        all marked unhealthy), C(502) (connection refused or failed) or C(504) (timeout), always
        for C(GET) and C(HEAD), and for other methods only when the request never reached an
        upstream (no upstream available, or the connection could not be opened), so its body
        is intact and it is delivered once. A backend's own error responses are passed on as
        they are, and while a backend is healthy the reconciler sees no traffic at all.
      - The method, URI, C(Host) and body are kept. Caddy removes every C(X-Wakegrid-*) header
        the client sent, then sets C(X-Wakegrid-Service) (O(name)), C(X-Wakegrid-Client) (the
        connection's peer address) and C(X-Wakegrid-Error) (the status Caddy would have answered).
      - A client refused by O(allow) gets C(403) and never reaches the reconciler. Other errors
        keep their status. When the reconciler itself cannot be reached, the client gets C(502).
      - Unset, no fallback (always-on services, whose failure is a real error).
    type: dict
    suboptions:
      upstream:
        description:
          - The reconciler's C(listen) address, V(host:port), normally on the edge itself.
        type: str
        required: true
      timeout:
        description:
          - How long Caddy waits for the reconciler's answer (its response headers). Must be
            longer than the reconciler's C(hold_timeout) (default 120 s), which holds an API
            request until the service is up.
          - Durations use Go syntax (V(90s), V(2m30s)).
        type: str
        default: 150s
  server:
    description:
      - Name of the Caddy HTTP server (key under C(apps.http.servers)) that holds the route.
    type: str
    default: wakegrid
  listen:
    description:
      - Listen addresses used only to create O(server) when Caddy has no server of that name.
        Without it, a missing server is an error. An existing server is never modified.
    type: list
    elements: str
  admin:
    description:
      - Caddy admin endpoint, V(http://host:port) or V(unix:///path/to/admin.sock).
    type: str
    default: http://127.0.0.1:2019
  admin_timeout:
    description: Seconds to wait for each admin API request (a reload can take a moment).
    type: int
    default: 30
  conflict_retries:
    description:
      - How many times to redo the read, compare and write when another writer changed the
        config between our read and our write (HTTP 412).
    type: int
    default: 3
notes:
  - Only the Python standard library is needed on the host running the module.
  - Listen addresses, TLS and certificates of the server are the C(caddy_edge) role's business.
seealso:
  - module: wakegrid.fleet.caddy_service_info
  - name: Caddy admin API
    description: The API this module talks to.
    link: https://caddyserver.com/docs/api
  - name: Caddy reverse_proxy JSON
    description: The handler this module renders.
    link: https://caddyserver.com/docs/json/apps/http/servers/routes/handle/reverse_proxy/
"""

EXAMPLES = r"""
- name: Route stream.example.org to Dijon first, Thory when Dijon is down
  wakegrid.fleet.caddy_service:
    name: stream
    domains: [stream.example.org]
    upstreams:
      - {dial: "10.200.1.30:8096", site: dijon, priority: 1}
      - {dial: "10.200.2.30:8096", site: thory, priority: 2}
    allow: [192.168.0.0/16, 10.200.0.0/16]
    health:
      path: /health
      interval: 2s

- name: Spread an API over two replicas, three requests out of four to the first
  wakegrid.fleet.caddy_service:
    name: api
    domains: [api.example.org]
    upstreams:
      - {dial: "10.200.1.40:8080", weight: 3}
      - {dial: "10.200.2.40:8080", weight: 1}
    health:
      path: /healthz
    admin: unix:///run/caddy/admin.sock

- name: A service that sleeps when idle; the reconciler on the edge wakes it on the first request
  wakegrid.fleet.caddy_service:
    name: jellyfin
    domains: [jellyfin.example.org]
    upstreams:
      - {dial: "10.200.1.30:8096"}
    allow: [192.168.0.0/16, 10.200.0.0/16]
    health:
      path: /health
      interval: 2s
    fallback:
      upstream: "127.0.0.1:9380"

- name: Remove a service's route
  wakegrid.fleet.caddy_service:
    name: sandbox
    state: absent
"""

RETURN = r"""
route:
  description: The service's route as wanted (as found, when O(state=absent) removed it).
  returned: always
  type: dict
  sample:
    "@id": wakegrid_stream
    match: [{host: [stream.example.org]}]
    handle:
      - handler: reverse_proxy
        upstreams: [{dial: "10.200.1.30:8096"}, {dial: "10.200.2.30:8096"}]
        load_balancing:
          selection_policy: {policy: first}
          try_duration: 5s
          try_interval: 250ms
    terminal: true
route_id:
  description: The route's C(@id).
  returned: always
  type: str
  sample: wakegrid_stream
server:
  description: The Caddy HTTP server holding (or that held) the route.
  returned: always
  type: str
  sample: wakegrid
action:
  description:
    - What was done, or would be done in check mode.
    - V(none), V(create), V(update), V(move) (from another server), or V(remove).
  returned: always
  type: str
  sample: update
lb_policy:
  description: The selection policy in effect (the choice of O(lb_policy=auto)).
  returned: when O(state=present)
  type: str
  sample: first
upstreams:
  description: The upstreams in the order given to Caddy (the failover order for V(first)).
  returned: when O(state=present)
  type: list
  elements: dict
  sample: [{dial: "10.200.1.30:8096", weight: 1, priority: 1, site: dijon}]
conflicts:
  description: Conditional writes refused because another writer changed the config first.
  returned: always
  type: int
  sample: 0
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_text

from ansible_collections.wakegrid.fleet.plugins.module_utils.caddy import (
    DEFAULT_ADMIN,
    DEFAULT_SERVER,
    DEFAULTS,
    FALLBACK_DEFAULTS,
    CaddyAdmin,
    CaddyAPIError,
    CaddyError,
    check_fallback,
    check_response_header_timeout,
    choose_policy,
    converge,
    parse_duration,
    plan_change,
    render_route,
    route_id,
)


def argument_spec():
    return dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        domains=dict(type="list", elements="str"),
        upstreams=dict(
            type="list",
            elements="dict",
            options=dict(
                dial=dict(type="str", required=True),
                weight=dict(type="int", default=1),
                priority=dict(type="int"),
                site=dict(type="str"),
            ),
        ),
        lb_policy=dict(type="str", default="auto"),
        allow=dict(type="list", elements="str"),
        health=dict(
            type="dict",
            options=dict(
                path=dict(type="str", default="/"),
                interval=dict(type="str", default="5s"),
                timeout=dict(type="str", default="2s"),
                passes=dict(type="int", default=2, no_log=False),  # a count, not a password
                fails=dict(type="int", default=2),
                status=dict(type="int"),
            ),
        ),
        passive_health=dict(
            type="dict",
            options=dict(
                fail_duration=dict(type="str", default="10s"),
                max_fails=dict(type="int", default=1),
                unhealthy_status=dict(type="list", elements="int"),
            ),
        ),
        try_duration=dict(type="str"),
        try_interval=dict(type="str", default="250ms"),
        dial_timeout=dict(type="str", default="2s"),
        response_header_timeout=dict(type="str"),
        fallback=dict(
            type="dict",
            options=dict(
                upstream=dict(type="str", required=True),
                timeout=dict(type="str", default=FALLBACK_DEFAULTS["timeout"]),
            ),
        ),
        server=dict(type="str", default=DEFAULT_SERVER),
        listen=dict(type="list", elements="str"),
        admin=dict(type="str", default=DEFAULT_ADMIN),
        admin_timeout=dict(type="int", default=30),
        conflict_retries=dict(type="int", default=3),
    )


def check_params(module):
    """Reject what can be judged without Caddy, with the option's name in the message."""
    params = module.params
    if not params["name"] or not all(c.isalnum() or c in "-_." for c in params["name"]):
        module.fail_json(msg="name must be non-empty and made of letters, digits, '-', '_' "
                             "or '.'; got %r" % params["name"])
    if params["state"] == "absent":
        return
    if not params["domains"]:
        module.fail_json(msg="domains must list at least one host name when state=present")
    if not params["upstreams"]:
        module.fail_json(msg="upstreams must list at least one upstream when state=present")
    for index, upstream in enumerate(params["upstreams"]):
        if upstream["weight"] < 1:
            module.fail_json(msg="upstreams[%d].weight must be at least 1" % index)
    for entry in params["allow"] or []:
        try:
            ipaddress.ip_network(to_text(entry), strict=False)
        except ValueError as exc:
            module.fail_json(msg="allow: %r is not an IP address or CIDR range (%s)"
                                 % (entry, to_text(exc)))
    durations = [("try_interval", params["try_interval"]), ("dial_timeout", params["dial_timeout"])]
    if params["try_duration"]:
        durations.append(("try_duration", params["try_duration"]))
    if params["response_header_timeout"]:
        durations.append(("response_header_timeout", params["response_header_timeout"]))
    for group in ("health", "passive_health"):
        for key, value in (params[group] or {}).items():
            if key in ("interval", "timeout", "fail_duration"):
                durations.append(("%s.%s" % (group, key), value))
    for option, value in durations:
        try:
            parse_duration(value)
        except ValueError as exc:
            module.fail_json(msg="%s: %s" % (option, to_text(exc)))
    try:
        fallback = check_fallback(params["fallback"])
        try_duration = params["try_duration"] or ("0s" if fallback else DEFAULTS["try_duration"])
        check_response_header_timeout(params["response_header_timeout"], try_duration)
    except ValueError as exc:
        module.fail_json(msg=to_text(exc))


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        required_if=[("state", "present", ("domains", "upstreams"))],
        supports_check_mode=True,
    )
    check_params(module)
    params = module.params
    name = params["name"]

    desired = None
    result = dict(changed=False, route_id=route_id(name), server=params["server"], conflicts=0)
    if params["state"] == "present":
        upstreams = [dict((k, v) for k, v in u.items() if v is not None)
                     for u in params["upstreams"]]
        policy, ordered = choose_policy(upstreams, params["lb_policy"])
        desired = render_route(
            name, params["domains"], upstreams,
            lb_policy=params["lb_policy"],
            allow=params["allow"],
            health=params["health"],
            passive_health=params["passive_health"],
            try_duration=params["try_duration"],
            try_interval=params["try_interval"],
            dial_timeout=params["dial_timeout"],
            response_header_timeout=params["response_header_timeout"],
            fallback=params["fallback"],
        )
        result.update(lb_policy=policy, upstreams=ordered)
        if policy == "first" and len(set(u["weight"] for u in upstreams)) > 1:
            module.warn("lb_policy is 'first' (strict failover): upstream weights are ignored")

    client = CaddyAdmin(params["admin"], timeout=params["admin_timeout"])
    try:
        plan, conflicts = converge(
            client,
            lambda config: plan_change(config, name, desired, params["server"], params["listen"]),
            check_mode=module.check_mode,
            conflict_retries=params["conflict_retries"],
        )
    except CaddyAPIError as exc:
        # Caddy validated the new config, refused it and kept running the old one.
        module.fail_json(msg="Caddy refused the change to route %s: %s" % (route_id(name), exc.message),
                         status=exc.status, route=desired, **_strip(result))
    except CaddyError as exc:
        module.fail_json(msg=to_text(exc), route=desired, **_strip(result))

    result.update(
        changed=plan.changed,
        action=plan.action,
        server=plan.server,
        conflicts=conflicts,
        route=desired if desired is not None else plan.before,
    )
    if module._diff:
        result["diff"] = dict(
            before=plan.before or {},
            after=plan.after or {},
            before_header="%s (server %s)" % (route_id(name), plan.server),
            after_header="%s (server %s)" % (route_id(name), plan.server),
        )
    module.exit_json(**result)


def _strip(result):
    return dict((k, v) for k, v in result.items() if k not in ("changed", "route"))


if __name__ == "__main__":
    main()
