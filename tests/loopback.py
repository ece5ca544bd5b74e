"""The one-site fleet the tests that run a daemon off the lab start from: edge and site gateway on loopback.

``{**loopback_edge(), "nodes": …, "services": …}``: the edge ``vps`` and the gateway ``gw`` of the
site ``home`` are 127.0.0.1; nothing answers there but what a test starts itself.
"""

from __future__ import annotations

from typing import Any


def loopback_edge() -> dict[str, Any]:
    """The fleet's plugin line, edge and site (a fresh copy each time: tests may change it)."""
    return {
        "plugin": "wakegrid.fleet.fleet",
        "edge": {
            "host": "vps",
            "address": "127.0.0.1",
            "domain": "loop.test",
            "wireguard": {"address": "10.250.0.1/24", "endpoint": "127.0.0.1:51820"},
        },
        "sites": {"home": {"gateway": "gw", "wireguard": {"address": "10.250.1.1/24"}}},
    }
