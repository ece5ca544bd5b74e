# -*- coding: utf-8 -*-
# Copyright: wakegrid engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Caddy admin API client and route renderer shared by the wakegrid.fleet Caddy modules.

Two halves, kept apart so that the first is unit-testable without a socket:

* pure functions: render one service's route (``render_route``), compare routes semantically
  (``routes_equal``), plan the edit of a whole config (``plan_change``) and read routes and
  upstream health back (``parse_route``, ``parse_upstreams_healthy``);
* ``CaddyAdmin``: a small HTTP client for the admin endpoint, over TCP or a unix socket, and
  ``converge``, the read / compare / conditional-write loop built on Caddy's ``Etag`` and
  ``If-Match`` headers.

Standard library only (modules run on the edge host) and Python 3.8 compatible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import fnmatch
import json
import re
import socket

try:  # Python 3
    import http.client as http_client
except ImportError:  # pragma: no cover - Python 2 is not a supported target
    import httplib as http_client  # type: ignore

ROUTE_ID_PREFIX = "wakegrid_"
DEFAULT_ADMIN = "http://127.0.0.1:2019"
DEFAULT_SERVER = "wakegrid"

POLICIES_WITH_ORDER = ("first",)
AUTO = "auto"

# Defaults of the rendered route; docs/caddy.md explains each value.
DEFAULTS = {
    "lb_policy": AUTO,
    "try_duration": "5s",
    "try_interval": "250ms",
    "dial_timeout": "2s",
    # None: no response timeout towards upstreams (Caddy's own default).
    "response_header_timeout": None,
}
# The hand-over of a sleepable service's requests to the reconciler (``render_route``'s
# ``fallback``); docs/caddy.md explains each value.
FALLBACK_DEFAULTS = {
    # Longer than the reconciler's hold_timeout (120 s by default), so that Caddy never gives up
    # on a request the reconciler still holds while the service wakes.
    "timeout": "150s",
}
# Statuses Caddy's reverse_proxy produces itself when no upstream could take a request:
# 503 "no upstreams available", 502 dial or transport failure, 504 upstream timeout.
FALLBACK_STATUSES = ("502", "503", "504")
# Caddy's error messages for a request that never left the edge: every upstream was unavailable,
# or the connection could not be opened (reverseproxy.DialError carries the dialer's "dial ..."
# error). Only then is the request body still unread, and the request safe to hand over whatever
# its method.
NOT_SENT_ERROR = "^(no upstreams available|dial )"
# Methods that may be handed over after any of FALLBACK_STATUSES (RFC 9110 safe methods, bodiless).
SAFE_METHODS = ("GET", "HEAD")
# The headers of the edge-reconciler contract; any client-sent header under this prefix is dropped.
WAKE_HEADER_PREFIX = "X-Wakegrid-"
HEALTH_DEFAULTS = {
    "path": "/",
    "interval": "5s",
    "timeout": "2s",
    "passes": 2,
    "fails": 2,
    "status": None,
}
PASSIVE_DEFAULTS = {
    "fail_duration": "10s",
    "max_fails": 1,
    "unhealthy_status": None,
}

# Keys whose values are Go durations in Caddy's JSON: compared as nanoseconds, so that
# "2s", "2000ms" and 2000000000 are the same value.
DURATION_KEYS = frozenset((
    "interval", "timeout", "fail_duration", "unhealthy_latency", "try_duration", "try_interval",
    "dial_timeout", "read_timeout", "write_timeout", "response_header_timeout",
    "expect_continue_timeout", "flush_interval", "stream_timeout", "stream_close_delay",
))
# Lists whose order carries no meaning (a host matcher is a set, so is an IP range list).
UNORDERED_LIST_KEYS = frozenset(("host", "ranges", "unhealthy_status"))

_DURATION_UNITS = {
    "ns": 1, "us": 1000, "\u00b5s": 1000, "\u03bcs": 1000, "ms": 1000000,
    "s": 1000000000, "m": 60 * 1000000000, "h": 3600 * 1000000000, "d": 24 * 3600 * 1000000000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d)")


class CaddyError(Exception):
    """A problem reaching Caddy or understanding its answer."""


class CaddyAPIError(CaddyError):
    """Caddy answered a request with an error status; ``message`` is Caddy's own text."""

    def __init__(self, method, path, status, message):
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        super(CaddyAPIError, self).__init__(
            "Caddy admin API %s %s answered %s: %s" % (method, path, status, message))


class ConflictError(CaddyError):
    """Every conditional write lost the race against another writer (HTTP 412)."""


# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

def parse_duration(value):
    """Go/Caddy duration (``"1m30s"``, ``"250ms"``, ``"2d"`` or integer nanoseconds) -> ns."""
    if isinstance(value, bool):
        raise ValueError("not a duration: %r" % (value,))
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("not a duration: %r" % (value,))
    text = value.strip()
    sign = 1
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if text.isdigit():  # Caddy takes a bare integer as nanoseconds
        return sign * int(text)
    total = 0.0
    position = 0
    for part in _DURATION_PART.finditer(text):
        if part.start() != position:
            break
        total += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
        position = part.end()
    if position != len(text) or not text:
        raise ValueError("invalid duration %r (expected e.g. 500ms, 2s, 1m30s)" % (value,))
    return sign * int(round(total))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

def route_id(name):
    """The ``@id`` of a service's route: also the handle used by the admin API's /id/ paths."""
    return ROUTE_ID_PREFIX + name


def choose_policy(upstreams, lb_policy=AUTO):
    """Return ``(policy, upstreams in the order Caddy should hold them)``.

    Upstreams carrying a ``priority`` are ordered by it (lower first, stable, those without
    one last); that order is the failover order. ``auto`` picks:

    * ``first`` when priorities differ: strict failover, the preferred site takes all traffic;
    * ``weighted_round_robin`` when weights differ;
    * ``round_robin`` otherwise.
    """
    ordered = sorted(
        upstreams,
        key=lambda u: (u.get("priority") is None, u.get("priority") or 0),
    )
    if lb_policy and lb_policy != AUTO:
        return lb_policy, ordered
    priorities = set(u.get("priority") for u in upstreams if u.get("priority") is not None)
    if len(priorities) > 1:
        return "first", ordered
    weights = set(_weight(u) for u in upstreams)
    if len(weights) > 1:
        return "weighted_round_robin", ordered
    return "round_robin", ordered


def _weight(upstream):
    weight = upstream.get("weight")
    return 1 if weight is None else weight


def check_response_header_timeout(response_header_timeout, try_duration):
    """Raise ValueError unless ``response_header_timeout`` is unset, or a positive duration
    shorter than ``try_duration`` (when retries are on): an answer timeout reached after
    try_duration has run out can never lead to a retry on another upstream."""
    if not response_header_timeout:
        return
    timeout = parse_duration(response_header_timeout)
    if timeout <= 0:
        raise ValueError("response_header_timeout must be a positive duration (or unset), got %r"
                         % (response_header_timeout,))
    tries = parse_duration(try_duration)
    if tries > 0 and timeout >= tries:
        raise ValueError(
            "response_header_timeout (%s) must be shorter than try_duration (%s), or a request "
            "whose upstream does not answer in time could not be retried on another upstream"
            % (response_header_timeout, try_duration))


def _merged(defaults, given):
    merged = dict(defaults)
    for key, value in (given or {}).items():
        if value is not None:
            merged[key] = value
    return merged


def check_fallback(fallback):
    """The fallback settings with defaults filled in, or None; ValueError names what is wrong."""
    if not fallback:
        return None
    merged = _merged(FALLBACK_DEFAULTS, fallback)
    upstream = merged.get("upstream")
    host, sep, port = (upstream or "").rpartition(":")
    if not (isinstance(upstream, str) and sep and host.strip("[]") and port.isdigit()):
        raise ValueError("fallback.upstream must be the reconciler's host:port (for example "
                         "127.0.0.1:9380), got %r" % (upstream,))
    try:
        timeout = parse_duration(merged["timeout"])
    except ValueError as exc:
        raise ValueError("fallback.timeout: %s" % exc)
    if timeout <= 0:
        raise ValueError("fallback.timeout must be a positive duration, got %r" % (merged["timeout"],))
    return merged


def render_route(name, domains, upstreams, lb_policy=AUTO, allow=None, health=None,
                 passive_health=None, try_duration=None,
                 try_interval=DEFAULTS["try_interval"], dial_timeout=DEFAULTS["dial_timeout"],
                 response_header_timeout=DEFAULTS["response_header_timeout"], fallback=None):
    """Caddy JSON for one service: a host-matched, terminal route around a reverse_proxy.

    ``health`` (active checks) is off when None; ``passive_health`` falls back to
    PASSIVE_DEFAULTS when None and is off when its ``fail_duration`` is zero. With ``allow``,
    the proxy sits in a subroute behind a ``client_ip`` matcher that answers 403 to others.
    ``response_header_timeout`` (None or empty: none) bounds the wait for an upstream's
    response headers once the request is sent; it must be shorter than a non-zero
    ``try_duration`` for such a request to be retried on another upstream.

    ``fallback`` (``{"upstream": "127.0.0.1:9380", "timeout": "150s"}``, for services that may
    sleep) hands a request no upstream could take to the reconciler, through the subroute's
    ``errors`` routes (see ``_fallback_errors``). ``try_duration`` None means 5 s without a
    fallback; with one, it means one try per upstream and no pause (``retries``): waiting for
    an upstream that is asleep would only delay the hand-over.
    """
    if not upstreams:
        raise ValueError("a service needs at least one upstream")
    fallback = check_fallback(fallback)
    if try_duration is None:
        try_duration = "0s" if fallback else DEFAULTS["try_duration"]
    check_response_header_timeout(response_header_timeout, try_duration)
    policy, ordered = choose_policy(upstreams, lb_policy)

    selection = {"policy": policy}
    if policy == "weighted_round_robin":
        selection["weights"] = [_weight(u) for u in ordered]
    load_balancing = {"selection_policy": selection}
    # try_duration > 0 is what makes Caddy retry another upstream when one fails to answer:
    # a request then survives a backend dying under it.
    if parse_duration(try_duration) > 0:
        load_balancing["try_duration"] = try_duration
        load_balancing["try_interval"] = try_interval
    elif fallback and len(ordered) > 1:
        # Bounded by count, not time: a failed upstream is still skipped for the next one, but
        # when none is available Caddy stops at once instead of polling the pool every
        # try_interval until try_duration ends (LoadBalancing.tryAgain), and the fallback runs.
        load_balancing["retries"] = len(ordered) - 1

    proxy = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": u["dial"]} for u in ordered],
        "load_balancing": load_balancing,
        "transport": {"protocol": "http", "dial_timeout": dial_timeout},
    }
    # Without it Caddy waits for a backend's answer as long as the client does: a request
    # already sent to a site that vanished is never answered, nor retried elsewhere.
    if response_header_timeout:
        proxy["transport"]["response_header_timeout"] = response_header_timeout

    health_checks = {}
    if health is not None:
        active = _merged(HEALTH_DEFAULTS, health)
        health_checks["active"] = {
            "uri": active["path"],
            "interval": active["interval"],
            "timeout": active["timeout"],
            "passes": active["passes"],
            "fails": active["fails"],
        }
        if active.get("status"):
            health_checks["active"]["expect_status"] = active["status"]
    passive = _merged(PASSIVE_DEFAULTS, passive_health)
    if parse_duration(passive["fail_duration"]) > 0:
        health_checks["passive"] = {
            "fail_duration": passive["fail_duration"],
            "max_fails": passive["max_fails"],
        }
        if passive.get("unhealthy_status"):
            health_checks["passive"]["unhealthy_status"] = list(passive["unhealthy_status"])
    if health_checks:
        proxy["health_checks"] = health_checks

    routes = []
    if allow:
        # client_ip, not remote_ip: it is the peer address unless the server declares
        # trusted_proxies, in which case it is the real client behind them. A static response,
        # not an error: a refused client never reaches the fallback either.
        routes.append({
            "match": [{"not": [{"client_ip": {"ranges": list(allow)}}]}],
            "handle": [{"handler": "static_response", "status_code": 403, "body": "Forbidden\n"}],
            "terminal": True,
        })
    routes.append({"handle": [proxy]})
    if fallback:
        handle = [{"handler": "subroute", "routes": routes,
                   "errors": _fallback_errors(name, fallback, dial_timeout)}]
    elif allow:
        handle = [{"handler": "subroute", "routes": routes}]
    else:
        handle = [proxy]

    return {
        "@id": route_id(name),
        "match": [{"host": list(domains)}],
        "handle": handle,
        "terminal": True,
    }


def _fallback_errors(name, fallback, dial_timeout):
    """The subroute's ``errors`` routes: the hand-over to the reconciler, then the original error.

    * Handed over: a request Caddy's proxy answered 502/503/504 itself, when it is safe to pass
      on: a GET or HEAD, or any method when the request never left the edge (no upstream
      available, or the connection could not be opened: its body is still unread). A POST that
      reached a backend which then failed is not replayed through the reconciler.
    * The headers of the contract (X-Wakegrid-Service, X-Wakegrid-Client, X-Wakegrid-Error) are
      set after every client-sent ``X-Wakegrid-*`` header is deleted: a separate ``headers``
      handler first, because Caddy applies a header op's ``delete`` after its ``set``.
    * Anything else gets its original status back (the ``error`` handler): without this last
      route an unmatched error would fall through the subroute's ``next`` (the terminal route's
      empty handler) and the client would get an empty 200.
    """
    statuses = {"{http.error.status_code}": list(FALLBACK_STATUSES)}
    hand_over = {
        "match": [
            {"vars": statuses, "method": list(SAFE_METHODS)},
            {"vars": statuses, "vars_regexp": {"{http.error.message}": {"pattern": NOT_SENT_ERROR}}},
        ],
        "handle": [
            {"handler": "headers", "request": {"delete": [WAKE_HEADER_PREFIX + "*"]}},
            {
                "handler": "reverse_proxy",
                "upstreams": [{"dial": fallback["upstream"]}],
                # The reconciler holds an API request until the service is up: Caddy must wait
                # longer than it does. No retries, no health checks: a reconciler that is down
                # gives a plain 502, never a wait.
                "transport": {"protocol": "http", "dial_timeout": dial_timeout,
                              "response_header_timeout": fallback["timeout"]},
                "headers": {"request": {"set": {
                    WAKE_HEADER_PREFIX + "Service": [name],
                    WAKE_HEADER_PREFIX + "Client": ["{http.vars.client_ip}"],
                    WAKE_HEADER_PREFIX + "Error": ["{http.error.status_code}"],
                }}},
            },
        ],
        "terminal": True,
    }
    keep_error = {"handle": [{"handler": "error", "status_code": "{http.error.status_code}",
                              "error": "{http.error.message}"}]}
    return {"routes": [hand_over, keep_error]}


# --------------------------------------------------------------------------------------------
# Semantic comparison
# --------------------------------------------------------------------------------------------

def normalize(value, key=None):
    """Canonical form of a piece of Caddy JSON for comparison (dict key order never matters)."""
    if isinstance(value, dict):
        return dict((k, normalize(v, k)) for k, v in value.items())
    if isinstance(value, list):
        items = [normalize(v, key if key == "host" else None) for v in value]
        if key in UNORDERED_LIST_KEYS:
            items = sorted(items, key=lambda item: json.dumps(item, sort_keys=True))
        return items
    if key in DURATION_KEYS and not isinstance(value, bool):
        try:
            return parse_duration(value)
        except ValueError:
            return value
    if key in ("status_code", "expect_status") and isinstance(value, str) and value.isdigit():
        return int(value)
    if key == "host" and isinstance(value, str):
        return value.lower()
    return value


def routes_equal(left, right):
    """True when two routes configure Caddy identically (key order, duration spelling, host
    case and the order of host/IP-range lists aside)."""
    if left is None or right is None:
        return left is right
    return normalize(left) == normalize(right)


# --------------------------------------------------------------------------------------------
# Finding and placing routes in a whole config
# --------------------------------------------------------------------------------------------

def servers_of(config):
    """The ``apps.http.servers`` map of a config, or an empty dict."""
    if not isinstance(config, dict):
        return {}
    servers = config.get("apps", {}).get("http", {}).get("servers")
    return servers if isinstance(servers, dict) else {}


def find_route(config, rid):
    """``(server name, index, route)`` of the top-level route with this ``@id``, or None."""
    for server_name in sorted(servers_of(config)):
        routes = servers_of(config)[server_name].get("routes") or []
        for index, route in enumerate(routes):
            if isinstance(route, dict) and route.get("@id") == rid:
                return server_name, index, route
    return None


def managed_routes(config):
    """Every top-level route whose ``@id`` marks it as wakegrid's: ``[(server, route)]``."""
    found = []
    for server_name in sorted(servers_of(config)):
        for route in servers_of(config)[server_name].get("routes") or []:
            rid = route.get("@id") if isinstance(route, dict) else None
            if isinstance(rid, str) and rid.startswith(ROUTE_ID_PREFIX):
                found.append((server_name, route))
    return found


def host_matches(pattern, host):
    """Caddy's host matcher for one pattern: case-insensitive, ``*`` stands for one label."""
    pattern_labels = pattern.lower().split(".")
    host_labels = host.lower().split(".")
    if len(pattern_labels) != len(host_labels):
        return False
    return all(p == h or ("*" in p and fnmatch.fnmatchcase(h, p))
               for p, h in zip(pattern_labels, host_labels))


def shadows(route, domains):
    """Would ``route``, placed first, take requests meant for any of ``domains``?"""
    if not isinstance(route, dict):
        return False
    match = route.get("match")
    if not match:
        return True  # no matcher: matches every request
    for matcher_set in match:
        hosts = matcher_set.get("host") if isinstance(matcher_set, dict) else None
        if hosts is None:
            return True  # a path/header/... matcher can match our hosts too
        if any(host_matches(pattern, domain) for pattern in hosts for domain in domains):
            return True
    return False


def insert_index(routes, domains):
    """Where a new route goes: before the first route that would shadow it (a catch-all or a
    wildcard host route, typically the edge role's), else at the end."""
    for index, route in enumerate(routes):
        if shadows(route, domains):
            return index
    return len(routes)


class Plan(object):
    """What converging one service means for a given config."""

    def __init__(self, action, before, after, server, new_config=None, write=None):
        self.action = action  # none | create | update | move | remove
        self.before = before
        self.after = after
        self.server = server
        self.new_config = new_config
        self.write = write  # (method, admin path, JSON value) or None

    @property
    def changed(self):
        return self.action != "none"


def plan_change(config, name, desired, server=DEFAULT_SERVER, listen=None):
    """Plan the edit that makes ``config`` hold ``desired`` (a route, or None to remove it).

    Raises CaddyError when the target server is missing and ``listen`` does not allow
    creating it.
    """
    rid = route_id(name)
    found = find_route(config, rid)
    before = found[2] if found else None

    if desired is None:
        if found is None:
            return Plan("none", None, None, server)
        new_config = copy.deepcopy(config)
        del servers_of(new_config)[found[0]]["routes"][found[1]]
        return Plan("remove", before, None, found[0], new_config, write_request(config, new_config))

    if found is not None and found[0] == server and routes_equal(before, desired):
        return Plan("none", before, before, server)

    new_config = copy.deepcopy(config) if isinstance(config, dict) else {}
    servers = new_config.setdefault("apps", {}).setdefault("http", {}).setdefault("servers", {})
    if server not in servers:
        if not listen:
            raise CaddyError(
                "Caddy has no HTTP server %r (servers: %s) and no listen addresses were given to "
                "create it" % (server, ", ".join(sorted(servers)) or "none"))
        servers[server] = {"listen": list(listen), "routes": []}
    routes = servers[server].setdefault("routes", [])

    if found is not None and found[0] == server:
        routes[found[1]] = desired
        action = "update"
    else:
        if found is not None:  # it lives in another server: move it
            del servers[found[0]]["routes"][found[1]]
        hosts = desired.get("match", [{}])[0].get("host", [])
        routes.insert(insert_index(routes, hosts), desired)
        action = "move" if found is not None else "create"
    return Plan(action, before, desired, server, new_config, write_request(config, new_config))


def write_request(old_config, new_config):
    """The single admin request that turns old_config into new_config for our edits.

    Always one request, so that a change is one atomic Caddy reload guarded by one If-Match:
    the ``apps.http.servers`` map when it exists already, else its deepest missing ancestor.
    """
    path = []
    node = old_config
    new_node = new_config
    for key in ("apps", "http", "servers"):
        if isinstance(node, dict) and isinstance(node.get(key), dict):
            path.append(key)
            node = node[key]
            new_node = new_node[key]
        else:
            if not isinstance(old_config, dict):
                return ("POST", "/config/", new_config)
            return ("POST", "/config/" + "/".join(path + [key]), new_node[key])
    return ("PATCH", "/config/apps/http/servers", new_node)


# --------------------------------------------------------------------------------------------
# Reading routes and health back
# --------------------------------------------------------------------------------------------

def _find_handlers(handles, name, out):
    for handler in handles or []:
        if not isinstance(handler, dict):
            continue
        if handler.get("handler") == name:
            out.append(handler)
        if handler.get("handler") == "subroute":
            for route in handler.get("routes") or []:
                if isinstance(route, dict):
                    _find_handlers(route.get("handle"), name, out)
    return out


def _allowlist(route):
    for handler in _find_handlers(route.get("handle"), "subroute", []):
        for sub in handler.get("routes") or []:
            for matcher_set in sub.get("match") or []:
                for negated in matcher_set.get("not") or []:
                    for kind in ("client_ip", "remote_ip"):
                        if kind in negated:
                            return list(negated[kind].get("ranges") or [])
    return []


def parse_route(server, route):
    """Summary of a wakegrid route as Caddy holds it (the inverse of render_route)."""
    rid = route.get("@id", "")
    domains = []
    for matcher_set in route.get("match") or []:
        domains.extend(matcher_set.get("host") or [])
    proxies = _find_handlers(route.get("handle"), "reverse_proxy", [])
    proxy = proxies[0] if proxies else {}
    load_balancing = proxy.get("load_balancing") or {}
    selection = load_balancing.get("selection_policy") or {}
    policy = selection.get("policy", "random")  # Caddy's default selection policy
    weights = selection.get("weights") or []
    upstreams = []
    for index, upstream in enumerate(proxy.get("upstreams") or []):
        entry = {"dial": upstream.get("dial"), "order": index}
        if policy == "weighted_round_robin":
            entry["weight"] = weights[index] if index < len(weights) else 0
        upstreams.append(entry)
    checks = proxy.get("health_checks") or {}
    active = checks.get("active")
    passive = checks.get("passive")
    return {
        "name": rid[len(ROUTE_ID_PREFIX):] if rid.startswith(ROUTE_ID_PREFIX) else rid,
        "route_id": rid,
        "server": server,
        "domains": domains,
        "lb_policy": policy,
        "upstreams": upstreams,
        "allow": _allowlist(route),
        "health": None if not active else {
            "path": active.get("uri") or active.get("path"),
            "interval": active.get("interval"),
            "timeout": active.get("timeout"),
            "passes": active.get("passes"),
            "fails": active.get("fails"),
            "status": active.get("expect_status"),
        },
        "passive_health": None if not passive else {
            "fail_duration": passive.get("fail_duration"),
            "max_fails": passive.get("max_fails"),
            "unhealthy_status": passive.get("unhealthy_status"),
        },
        "try_duration": load_balancing.get("try_duration"),
        "try_interval": load_balancing.get("try_interval"),
        "dial_timeout": (proxy.get("transport") or {}).get("dial_timeout"),
        "response_header_timeout": (proxy.get("transport") or {}).get("response_header_timeout"),
    }


_HEALTHY_GAUGE = re.compile(
    r'^caddy_reverse_proxy_upstreams_healthy\{(?:[^}]*,)?upstream="((?:[^"\\]|\\.)*)"[^}]*\}\s+(\S+)',
    re.MULTILINE)


def parse_upstreams_healthy(metrics_text):
    """``{dial: bool}`` from the ``caddy_reverse_proxy_upstreams_healthy`` gauge of Caddy's
    Prometheus metrics (active and passive checks combined, refreshed every 10 s by Caddy)."""
    healthy = {}
    for match in _HEALTHY_GAUGE.finditer(metrics_text or ""):
        try:
            healthy[match.group(1).replace('\\"', '"')] = float(match.group(2)) >= 1
        except ValueError:
            continue
    return healthy


# --------------------------------------------------------------------------------------------
# Admin API client
# --------------------------------------------------------------------------------------------

class _UnixHTTPConnection(http_client.HTTPConnection):
    def __init__(self, path, timeout):
        http_client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self._socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except Exception:
            sock.close()
            raise
        self.sock = sock


def parse_endpoint(endpoint):
    """``http://host:port`` / ``host:port`` -> ("tcp", host, port); ``unix:///path`` (or
    Caddy's own ``unix//path``) -> ("unix", path, None)."""
    text = (endpoint or "").strip()
    for prefix in ("unix://", "unix/"):
        if text.startswith(prefix):
            path = text[len(prefix):]
            if not path.startswith("/"):
                path = "/" + path.lstrip("/")
            return "unix", path, None
    if text.startswith("https://"):
        raise CaddyError("the Caddy admin endpoint over TLS (%s) is not supported; use the "
                         "local http:// or unix:// endpoint on the edge host" % endpoint)
    if text.startswith("http://"):
        text = text[len("http://"):]
    text = text.rstrip("/")
    if "/" in text or not text:
        raise CaddyError("invalid Caddy admin endpoint %r (expected http://host:port or "
                         "unix:///path/to/admin.sock)" % endpoint)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise CaddyError("invalid Caddy admin endpoint %r: no port" % endpoint)
    return "tcp", host.strip("[]"), int(port)


class CaddyAdmin(object):
    """Minimal client of Caddy's admin API (one connection per request)."""

    def __init__(self, endpoint=DEFAULT_ADMIN, timeout=10):
        self.endpoint = endpoint
        self.kind, self.address, self.port = parse_endpoint(endpoint)
        self.timeout = timeout

    def _connection(self):
        if self.kind == "unix":
            return _UnixHTTPConnection(self.address, self.timeout)
        return http_client.HTTPConnection(self.address, self.port, timeout=self.timeout)

    def request(self, method, path, value=None, headers=None, raw=False):
        """Send one request; return ``(status, headers, body)``; raise CaddyAPIError on >= 400."""
        all_headers = {"Accept": "application/json"}
        body = None
        if value is not None or method in ("POST", "PUT", "PATCH"):
            body = json.dumps(value, separators=(",", ":")).encode("utf-8")
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        connection = self._connection()
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            data = response.read()
            response_headers = dict((k.lower(), v) for k, v in response.getheaders())
            status = response.status
        except (OSError, socket.error, http_client.HTTPException) as exc:
            raise CaddyError("cannot reach the Caddy admin API at %s (%s %s): %s"
                             % (self.endpoint, method, path, exc))
        finally:
            connection.close()
        if status >= 400:
            raise CaddyAPIError(method, path, status, _error_message(data))
        if raw:
            return status, response_headers, data
        return status, response_headers, _decode_json(data, method, path)

    def get_config(self):
        """The whole running config and its ETag (``"/config/ <hash>"``)."""
        response = self.request("GET", "/config/")
        return response[2], response[1].get("etag")

    def write(self, method, path, value, etag=None):
        headers = {"If-Match": etag} if etag else {}
        self.request(method, path, value, headers=headers)

    def upstreams(self):
        """``GET /reverse_proxy/upstreams``: ``[{address, num_requests, fails}]``."""
        return self.request("GET", "/reverse_proxy/upstreams")[2] or []

    def metrics(self):
        """The Prometheus text of ``GET /metrics`` (empty when the endpoint is absent)."""
        try:
            data = self.request("GET", "/metrics", headers={"Accept": "text/plain"}, raw=True)[2]
        except CaddyAPIError:
            return ""
        return data.decode("utf-8", "replace")


def _decode_json(data, method, path):
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise CaddyError("Caddy admin API %s %s answered something that is not JSON: %s"
                         % (method, path, text[:200]))


def _error_message(data):
    text = data.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, dict) and parsed.get("error"):
        return parsed["error"]
    return text


def converge(client, plan_for, check_mode=False, conflict_retries=3):
    """Read the config, plan, and write only if needed, with ``If-Match`` on the read's ETag.

    ``plan_for(config)`` returns a Plan. On 412 (someone changed the config between our read
    and our write) the whole read-plan-write is redone, at most ``conflict_retries`` times.
    Returns ``(plan, conflicts)``; raises ConflictError when every attempt lost the race.
    """
    conflicts = 0
    while True:
        config, etag = client.get_config()
        plan = plan_for(config)
        if not plan.changed or check_mode:
            return plan, conflicts
        method, path, value = plan.write
        try:
            client.write(method, path, value, etag)
        except CaddyAPIError as exc:
            if exc.status != 412:
                raise
            conflicts += 1
            if conflicts > conflict_retries:
                raise ConflictError(
                    "the Caddy config kept changing under us: %d conditional writes (If-Match "
                    "%s) were refused with 412 Precondition Failed because another writer "
                    "changed the config in between; nothing was written by this task"
                    % (conflicts, etag))
            continue
        return plan, conflicts
