"""Discovered, not configured (wakegrid.observe.discovered) against real APIs on loopback.

- Proxmox VE: the lab's emulator (one node, ``pve1``, as a loose script like in a lab host) with
  three guests, one of them in the fleet; the fleet's cluster lists first a member whose API is
  closed, so the answer must come from the member that answers.
- Docker: the host's Docker Engine, served on a loopback TCP port by a relay to its unix socket
  (a fleet's Docker API is tcp:// when the daemon reads it from elsewhere), with two containers
  of this run, one of them in the fleet; a second Docker host of the fleet has a closed port.

An API that does not answer is reported unknown, with its reason: never as "nothing found".
Needs root and Docker Engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from loopback import loopback_edge

from wakegrid.lab import pve
from wakegrid.model import parse_fleet
from wakegrid.observe.discovered import discover

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode

SOCKET = "/var/run/docker.sock"
TOKEN_ID = "root@pam!wakegrid"
RUN_ID = uuid.uuid4().hex[:8]


class DockerRelay:
    """The host's Docker socket on 127.0.0.1:port, plain TCP (what ``dockerd -H tcp://`` would serve)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            backend = socket.socket(socket.AF_UNIX)
            backend.connect(SOCKET)
            threading.Thread(target=self._pump, args=(backend, conn), daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, backend), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once it is closed


@pytest.fixture(scope="module")
def apis(tmp_path_factory):
    reason = support.root_reason("to drive the Docker Engine") or support.docker_cli_reason()
    if reason:
        pytest.skip(reason)
    image = support.ensure_guest_image()
    root = tmp_path_factory.mktemp("discovered")
    secret = secrets.token_hex(16)
    cluster_dir = root / "etc-pve"
    port = support.free_port()
    pve.init_cluster(cluster_dir, "wg-disc", {"pve1": {"ip": "127.0.0.1", "port": port}}, tokens={TOKEN_ID: secret})
    containers = {vmid: f"wg-disc-{RUN_ID}-{vmid}" for vmid in (201, 202, 101)}
    guests = [(201, "lxc", "media"), (202, "lxc", "db"), (101, "qemu", "win")]
    for vmid, kind, name in guests:
        support.create_guest_container(image, containers[vmid], RUN_ID, False)
        pve.write_guest(
            cluster_dir, vmid, type=kind, node="pve1", name=name, container=containers[vmid], tags="lab;disc"
        )
    # Two plain containers on the host's Docker Engine, labelled with this run.
    apps = {role: f"wg-disc-{RUN_ID}-{role}" for role in ("known", "stray")}
    for name in apps.values():
        support.create_guest_container(image, name, RUN_ID, False)
    procs = {}
    relay = DockerRelay()
    try:
        procs["pve1"] = support.start_emulator(root, "pve1", cluster_dir, port, "--status-interval", "3600")
        yield {"pve_port": port, "secret": secret, "docker": relay.url, "apps": apps}
    finally:
        relay.close()
        support.stop_emulators(procs, RUN_ID)


def _fleet(apis: dict, tmp_path: Path) -> object:
    for member in ("pve0", "pve1"):
        (tmp_path / f"{member}-token").write_text(apis["secret"])
    proxmox = {"token_id": TOKEN_ID, "verify_tls": False, "cluster": "c1"}
    document = {
        **loopback_edge(),
        "nodes": {
            "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1"},
            # First in the file, and its API is closed: the cluster answers through pve1.
            "pve0": {
                "kind": "machine",
                "site": "home",
                "address": "127.0.0.10",
                "proxmox": {
                    **proxmox,
                    "api": f"https://127.0.0.1:{_closed_port()}",
                    "node": "pve0",
                    "token_secret": {"file": str(tmp_path / "pve0-token")},
                },
            },
            "pve1": {
                "kind": "machine",
                "site": "home",
                "address": "127.0.0.11",
                "proxmox": {
                    **proxmox,
                    "api": f"https://127.0.0.1:{apis['pve_port']}",
                    "token_secret": {"file": str(tmp_path / "pve1-token")},
                },
            },
            "media": {"kind": "lxc", "parent": "pve1", "vmid": 201},
            "dock": {"kind": "machine", "site": "home", "address": "127.0.0.12", "docker": {"api": apis["docker"]}},
            "app": {"kind": "container", "parent": "dock", "container": apis["apps"]["known"]},
            "gone": {
                "kind": "machine",
                "site": "home",
                "address": "127.0.0.13",
                "docker": {"api": f"tcp://127.0.0.1:{_closed_port()}"},
            },
        },
    }
    return parse_fleet(yaml.safe_dump(document, sort_keys=False), source="disc.fleet.yml", base_dir=tmp_path)


def test_discovers_what_the_fleet_does_not_declare_and_says_what_it_could_not_ask(apis, tmp_path):
    fleet = _fleet(apis, tmp_path)
    discovery = asyncio.run(discover(fleet, timeout=5))
    sources = {(s.kind, s.node): s for s in discovery.sources}

    # The cluster: pve0 did not answer, pve1 spoke for it.
    cluster = sources[("proxmox", "pve1")]
    assert cluster.state == "ok" and cluster.detail == "3 guests, 2 not in the fleet", cluster
    found = {thing.name: thing for thing in discovery.found}
    assert "media" not in found  # vmid 201 is the fleet's `media`
    assert found["db"].kind == "lxc" and found["db"].where == "pve1"
    assert found["db"].entry == {"kind": "lxc", "parent": "pve1", "vmid": 202, "tags": ["lab", "disc"]}
    assert found["win"].entry == {"kind": "vm", "parent": "pve1", "vmid": 101, "tags": ["lab", "disc"]}
    assert yaml.safe_load(found["db"].entry_yaml) == {"db": found["db"].entry}

    # Docker: the stray container is offered with its entry; the fleet's own is not.
    dock = sources[("docker", "dock")]
    assert dock.state == "ok" and dock.api == apis["docker"]
    stray = apis["apps"]["stray"]
    assert found[stray].entry == {"kind": "container", "parent": "dock", "container": stray}
    assert found[stray].where == "dock" and found[stray].kind == "container"
    assert apis["apps"]["known"] not in found and "app" not in found

    # The closed Docker API: unknown, with the reason in words, never "nothing found".
    gone = sources[("docker", "gone")]
    assert gone.state == "unknown" and "cannot reach the Docker API at tcp://127.0.0.1:" in gone.detail, gone
    assert not any(thing.where == "gone" for thing in discovery.found)
    # Every suggested name is free in the fleet and unique.
    names = [thing.name for thing in discovery.found]
    assert len(names) == len(set(names)) and not set(names) & set(fleet.nodes)
    assert apis["secret"] not in discovery.model_dump_json()


def test_a_cluster_none_of_whose_members_answers_is_unknown_with_each_reason(apis, tmp_path):
    fleet = _fleet(apis, tmp_path)
    # pve1's token secret file is gone: the secret cannot be read, and pve0 is closed.
    (tmp_path / "pve1-token").unlink()
    discovery = asyncio.run(discover(fleet, timeout=5))
    cluster = next(s for s in discovery.sources if s.kind == "proxmox")
    assert cluster.state == "unknown" and cluster.node == "pve0, pve1"
    assert "pve0: " in cluster.detail and "cannot reach the Proxmox VE API" in cluster.detail, cluster.detail
    assert "pve1: cannot read the Proxmox token secret of pve1" in cluster.detail, cluster.detail
    assert not any(thing.kind in ("lxc", "vm") for thing in discovery.found)
