"""The request path's pure parts: who gets a page, who may wake, the chain's layers, the estimate."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wakegrid.journal import NodeBoots, ServiceWakes
from wakegrid.model import load_fleet
from wakegrid.state import Tunnel
from wakegrid.web.chain import (
    chain_layers,
    chain_nodes,
    client_allowed,
    duration_words,
    estimate_seconds,
    estimate_words,
    networks,
    parse_address,
    retry_after,
    wake_backend,
    wants_page,
)
from wakegrid.web.wake import forwarded_headers, requested_url, without_hop_by_hop

REPO = Path(__file__).resolve().parents[2]
LAB = load_fleet(REPO / "inventories" / "lab" / "lab.fleet.yml")
EXAMPLE = load_fleet(REPO / "inventories" / "example" / "example.fleet.yml")
AT = datetime(2026, 1, 5, 12, tzinfo=UTC)

CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


# --------------------------------------------------------------------------- Accept


@pytest.mark.parametrize(
    ("method", "accept", "page"),
    [
        ("GET", CHROME, True),
        ("GET", FIREFOX, True),
        ("GET", "text/html", True),
        ("GET", "TEXT/HTML; charset=utf-8", True),
        ("GET", "application/xhtml+xml", True),
        ("GET", "*/*", False),  # curl, most libraries
        ("GET", None, False),
        ("GET", "", False),
        ("GET", "application/json", False),
        ("GET", "application/json, text/html;q=0.5", False),  # JSON preferred
        ("GET", "text/html;q=0.9, application/json;q=0.9", True),  # a tie goes to the browser
        ("GET", "application/vnd.api+json, text/html;q=0.1", False),
        ("GET", "text/html;q=0", False),  # explicitly not acceptable
        ("GET", "text/html;q=nope", False),  # a malformed weight accepts nothing
        ("GET", "text/html;q=2", False),
        ("GET", ",,;;", False),
        ("POST", CHROME, False),  # a form POST is held and delivered, never dropped for a page
        ("HEAD", CHROME, False),
        ("get", CHROME, True),
    ],
)
def test_wants_page(method, accept, page):
    assert wants_page(method, accept) is page


# --------------------------------------------------------------------------- allowlist


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        (" 10.0.0.1 ", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),  # a dual-stack socket's view of an IPv4 client
        ("[2001:db8::1]", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("not an address", None),
        ("10.0.0.256", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_address(text, expected):
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == expected


@pytest.mark.parametrize(
    ("allow", "client", "allowed"),
    [
        ([], "203.0.113.9", True),  # no allowlist: anyone
        (["192.168.0.0/16", "10.200.0.0/16"], "192.168.4.2", True),
        (["192.168.0.0/16", "10.200.0.0/16"], "10.200.9.9", True),
        (["192.168.0.0/16", "10.200.0.0/16"], "10.201.0.1", False),
        (["192.168.1.5"], "192.168.1.5", True),
        (["192.168.1.5"], "192.168.1.6", False),
        (["192.168.0.0/16"], "2001:db8::1", False),  # another family never matches
        (["2001:db8::/32"], "2001:db8::1", True),
        (["10.0.0.1/8"], "10.9.9.9", True),  # host bits set: taken as its network
    ],
)
def test_client_allowed(allow, client, allowed):
    assert client_allowed(allow, ipaddress.ip_address(client)) is allowed


def test_a_bad_network_is_named():
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is neither an IP address nor a CIDR"):
        networks(["127.0.0.1", "10.0.0.0/33"])


# --------------------------------------------------------------------------- the chain


def test_chain_of_an_lxc_with_a_dependency_starts_with_the_dependency():
    # NAS → pve1 → jellyfin LXC → app: the order start_plan would wake them in.
    assert chain_nodes(LAB, "jellyfin") == ["nas", "pve1", "jellyfin"]
    layers = chain_layers(LAB, "stream")
    assert [(layer.key, layer.kind) for layer in layers] == [
        ("nas", "machine"),
        ("pve1", "machine"),
        ("jellyfin", "lxc"),
        ("application", "application"),
    ]
    assert [layer.title for layer in layers] == [
        "machine nas",
        "machine pve1",
        "guest (LXC) jellyfin",
        "application health (GET /health)",
    ]


def test_chain_of_a_container_in_a_vm():
    assert [layer.title for layer in chain_layers(LAB, "sandbox")] == [
        "machine pve1",
        "guest (VM) vm-docker",
        "container sandbox",
        "application health (GET /health)",
    ]


def test_the_chain_follows_the_failover_order_and_skips_a_site_whose_tunnel_is_down():
    assert wake_backend(LAB, "stream").node == "jellyfin"
    cut = {"dijon": Tunnel("down", "no handshake for 212 s"), "thory": Tunnel("up", "handshake 3 s ago")}
    assert wake_backend(LAB, "stream", cut).node == "srv-thory"
    assert [layer.key for layer in chain_layers(LAB, "stream", cut)] == ["srv-thory", "application"]
    # unknown is not down: the first site keeps it
    unknown = {"dijon": Tunnel("unknown", "wg show failed")}
    assert wake_backend(LAB, "stream", unknown).node == "jellyfin"
    # every site down: the first backend all the same (the page still shows something true)
    both = {**cut, "thory": Tunnel("down", "no peer on the hub")}
    assert wake_backend(LAB, "stream", both).node == "jellyfin"


def test_every_service_of_the_example_fleet_has_a_chain_ending_with_the_application():
    for name in EXAMPLE.services:
        layers = chain_layers(EXAMPLE, name)
        assert layers[-1].key == "application"
        nodes = [layer.key for layer in layers[:-1]]
        assert len(nodes) == len(set(nodes)), (name, nodes)
        for position, node in enumerate(nodes):  # each node after its hosts and dependencies
            for before in [*EXAMPLE.ancestors(node), *EXAMPLE.dependencies_of(node)]:
                assert before in nodes[:position], (name, node, before)


# --------------------------------------------------------------------------- the estimate


def _wakes(mean: float | None) -> ServiceWakes:
    return ServiceWakes("stream", 3, 0 if mean is not None else 3, 3, mean, mean, AT, ())


def _boots(**means: float) -> dict[str, NodeBoots]:
    return {node: NodeBoots(node, 2, mean, mean, AT) for node, mean in means.items()}


def test_estimate_prefers_the_services_past_wakes():
    assert estimate_seconds(_wakes(38.2), _boots(nas=90, pve1=60), ["nas", "pve1"]) == 38.2
    assert estimate_words(38.2) == "usually ready in ~38 s"


def test_estimate_falls_back_on_the_chains_boot_times():
    assert estimate_seconds(None, _boots(nas=30, pve1=20, other=999), ["nas", "pve1", "jellyfin"]) == 50
    assert estimate_seconds(_wakes(None), _boots(nas=30), ["nas"]) == 30  # every past wake failed


def test_no_estimate_without_history():
    assert estimate_seconds(None, {}, ["nas"]) is None
    assert estimate_seconds(None, _boots(other=10), ["nas"]) is None
    assert estimate_words(None) == "first wake of this service: no estimate yet"


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        *[(0, "1 s"), (0.4, "1 s"), (38.4, "38 s"), (89, "89 s"), (-3, "1 s")],
        *[(90, "2 min"), (150, "2 min"), (5300, "88 min")],
        *[(5399, "1 h 30 min"), (5400, "1 h 30 min"), (7200, "2 h")],
    ],
)
def test_duration_words(seconds, words):
    assert duration_words(seconds) == words


@pytest.mark.parametrize(
    ("estimate", "elapsed", "expected"),
    [(None, 0, 5), (38, 0, 38), (38, 30.5, 8), (38, 38, 5), (38, 100, 5), (600, 0, 60), (0.2, 0, 1)],
)
def test_retry_after(estimate, elapsed, expected):
    assert retry_after(estimate, elapsed) == expected


# --------------------------------------------------------------------------- headers


def test_hop_by_hop_headers_and_those_named_by_connection_are_dropped():
    headers = [
        (b"Host", b"app.example"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Private", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Upgrade", b"h2c"),
    ]
    assert without_hop_by_hop(headers) == [(b"Host", b"app.example"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_the_edges_headers_and_the_length_stay_behind():
    headers = [
        (b"host", b"app.example"),
        (b"x-wakegrid-service", b"app"),
        (b"X-Wakegrid-Client", b"10.0.0.1"),
        (b"content-length", b"12"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]
    assert forwarded_headers(headers) == [
        (b"host", b"app.example"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]


@pytest.mark.parametrize(
    ("raw_path", "query", "url"),
    [
        (b"/some/page", b"x=1", "/some/page?x=1"),
        (b"/a%20b/%2F", b"", "/a%20b/%2F"),  # as sent, not decoded
        (b"//evil.example/x", b"a=1", "/evil.example/x?a=1"),  # never a link to another host
        (b"/", b"", "/"),
    ],
)
def test_requested_url(raw_path, query, url):
    assert requested_url({"raw_path": raw_path, "path": "ignored", "query_string": query}) == url
