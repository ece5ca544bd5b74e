"""Discovered, not configured: an API that cannot be asked is unknown with its reason, never "nothing found".

Real sockets on loopback, nothing faked: a closed port, a port that accepts and never answers, a
unix socket (that of a remote host), a secret that cannot be read. The discovery itself against
real APIs (the PVE emulator, Docker Engine) is tests/integration/test_discovered_apis.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import yaml
from loopback import loopback_edge

from wakegrid.model import parse_fleet
from wakegrid.observe.discovered import collection_module, discover, fleet_nodes


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fleet(tmp_path: Path, nodes: dict) -> object:
    document = {
        **loopback_edge(),
        "nodes": {"gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"}, **nodes},
    }
    return parse_fleet(yaml.safe_dump(document), source="t.fleet.yml", base_dir=tmp_path)


def test_unreachable_apis_are_unknown_with_their_reason(tmp_path):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    try:
        fleet = _fleet(
            tmp_path,
            {
                "pve1": {
                    "kind": "machine",
                    "site": "home",
                    "address": "127.0.0.5",
                    "proxmox": {
                        "api": f"https://127.0.0.1:{_closed_port()}",
                        "token_id": "root@pam!wg",
                        "token_secret": "not-a-real-secret-4242",
                        "verify_tls": False,
                    },
                },
                "pve2": {
                    "kind": "machine",
                    "site": "home",
                    "address": "127.0.0.6",
                    "proxmox": {
                        "api": "https://127.0.0.1:8006",
                        "token_id": "root@pam!wg",
                        "token_secret": {"file": str(tmp_path / "missing-token")},
                    },
                },
                "dock": {
                    "kind": "machine",
                    "site": "home",
                    "address": "127.0.0.7",
                    "docker": {"api": f"tcp://127.0.0.1:{_closed_port()}"},
                },
                "mute": {
                    "kind": "machine",
                    "site": "home",
                    "address": "127.0.0.8",
                    "docker": {"api": f"tcp://127.0.0.1:{silent.getsockname()[1]}"},
                },
                "remote": {
                    "kind": "machine",
                    "site": "home",
                    "address": "127.0.0.9",
                    "docker": {"api": "unix:///var/run/docker.sock"},
                },
            },
        )
        began = time.monotonic()
        discovery = asyncio.run(discover(fleet, timeout=1))
        took = time.monotonic() - began
    finally:
        silent.close()
    assert discovery.found == []
    sources = {source.node: source for source in discovery.sources}
    assert set(sources) == {"pve1", "pve2", "dock", "mute", "remote"}
    assert all(source.state == "unknown" for source in sources.values()), sources
    assert "cannot reach the Proxmox VE API" in sources["pve1"].detail
    assert "cannot read the Proxmox token secret of pve2" in sources["pve2"].detail
    assert "missing-token" in sources["pve2"].detail  # where the secret should be
    assert sources["dock"].detail.startswith("cannot reach the Docker API at tcp://127.0.0.1:")
    assert "mute" in sources and sources["mute"].detail  # timed out, said so
    assert "unix socket on that host" in sources["remote"].detail
    assert "not-a-real-secret-4242" not in discovery.model_dump_json()
    assert took < 10, f"one silent API held the discovery {took:.1f} s"


def test_a_fleet_without_apis_asks_nothing():
    fleet = _fleet(Path("."), {})
    discovery = asyncio.run(discover(fleet, timeout=1))
    assert discovery.found == [] and discovery.sources == []


def test_the_modules_get_the_fleet_without_secrets(tmp_path):
    fleet = _fleet(
        tmp_path,
        {
            "pve1": {
                "kind": "machine",
                "site": "home",
                "address": "127.0.0.5",
                "proxmox": {"api": "https://127.0.0.1:8006", "token_id": "root@pam!wg", "token_secret": "s3cr3t-value"},
            },
            "ct": {"kind": "lxc", "parent": "pve1", "vmid": 201},
        },
    )
    nodes = fleet_nodes(fleet)
    assert nodes["ct"] == {"kind": "lxc", "parent": "pve1", "vmid": 201}
    assert nodes["pve1"]["proxmox"] == {"node": None}
    assert "s3cr3t-value" not in repr(nodes)
    # The modules' own classification, on what the fleet gave them: vmid 201 is configured, 202 offered.
    utils = collection_module("module_utils.proxmox")
    resources = [
        {"type": "lxc", "vmid": 201, "node": "pve1", "name": "ct", "status": "running"},
        {"type": "lxc", "vmid": 202, "node": "pve1", "name": "db", "status": "stopped", "tags": "x"},
    ]
    found = utils.classify_guests(resources, ["pve1"], fleet_nodes=nodes)
    assert found["unconfigured"] == {"db": {"kind": "lxc", "parent": "pve1", "vmid": 202, "tags": ["x"]}}
