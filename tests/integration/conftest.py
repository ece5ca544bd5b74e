"""One lab per test session, shared by every integration test that asks for ``lab``.

The session fixture brings the lab of ``inventories/lab/lab.fleet.yml`` up once
(``lab up`` is idempotent: an already running lab is reused in seconds) and
leaves it running afterwards, so the next session starts fast; set
``WAKEGRID_LAB_TEARDOWN=1`` to remove it at the end. ``WAKEGRID_LAB_FLEET``
points at another fleet.

Tests that change the lab (power, site cuts) put it back as they found it
(:meth:`LabHandle.restore`), so their order does not matter.

Every test that requests the ``lab`` fixture, directly or through other fixtures, gets the
``lab`` marker; the others here (modules against loopback Caddy, dockerd, the PVE emulator,
network namespaces) do not, and run without the lab: ``pytest tests/integration -m "not lab"``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = Path(os.environ.get("WAKEGRID_LAB_FLEET", REPO / "inventories" / "lab" / "lab.fleet.yml"))
DOCKER = "/usr/bin/docker"


def pytest_collection_modifyitems(items):
    # Marked by what a test uses, not by where it lives: the module tests on loopback parts
    # (Caddy, dockerd, the PVE emulator, network namespaces) run with -m "not lab".
    for item in items:
        if uses_the_shared_lab(item):
            item.add_marker(pytest.mark.lab)


def uses_the_shared_lab(item: pytest.Item) -> bool:
    """Does ``item`` request this file's ``lab`` fixture, directly or through other fixtures?

    By identity, not by name: a module may define a ``lab`` fixture of its own (namespaces,
    emulators) that needs no shared lab.
    """
    info = getattr(item, "_fixtureinfo", None)  # doctest items and the like have none
    if info is None:
        return False
    for definitions in info.name2fixturedefs.values():
        for fixturedef in reversed(definitions):  # the closest definition first
            if getattr(fixturedef.func, "__code__", None) is _SHARED_LAB_CODE:
                return True
            if fixturedef.argname not in fixturedef.argnames:
                break  # an override that does not extend the definition above it
    return False


class LabHandle:
    """The running lab, with the helpers tests need (thin wrappers over :class:`wakegrid.lab.runtime.Lab`)."""

    def __init__(self, lab):
        self.lab = lab
        self.fleet = lab.fleet
        self.plan = lab.plan
        self.fleet_path = lab.fleet_path

    # -- running things
    def run(self, *cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """A command on the machine running the lab (where Ansible runs)."""
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def exec(self, node: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command inside a lab host (docker exec)."""
        return self.lab.exec(node, list(cmd), check=check)

    def ssh(self, node: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A command over real SSH with the lab key, as Ansible would."""
        return self.lab.ssh(node, command, timeout=timeout)

    # -- state
    def address(self, node: str) -> str:
        return self.plan.host(node).address

    def wan_address(self, node: str) -> str:
        wan = self.plan.network("wan").name
        return next(a.address for a in self.plan.host(node).networks if a.network == wan)

    def is_on(self, node: str) -> bool:
        return self.lab.is_on(node)

    def power(self, node: str, on: bool) -> None:
        if self.is_on(node) != on:
            self.lab.power(node, on)

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> float:
        """Poll ``predicate``; return the seconds it took, fail the test after ``timeout``."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if predicate():
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def ping(self, from_node: str, address: str) -> bool:
        return self.exec(from_node, "ping", "-c", "1", "-W", "1", address, check=False).returncode == 0

    def machines(self) -> list[str]:
        return [h.node for h in self.plan.hosts if h.role == "machine"]

    def restore(self) -> None:
        """Back to the state `up` leaves: every site connected, every host and container on."""
        for site in self.fleet.sites:
            if self.lab.is_cut(site):
                self.lab.restore_site(site)
                # The tunnel comes back with the gateway's next handshake: the next test must find the
                # site reachable from the edge, as `up` leaves it, not a few seconds later.
                gateway = self.fleet.sites[site].gateway
                self.wait_until(
                    lambda g=gateway: self.ping(self.fleet.edge.host, self.address(g)),
                    60,
                    f"the edge reaching {gateway} through the restored tunnel",
                )
        for host in self.plan.hosts:  # plan order: parents before children
            if host.power and not self.is_on(host.node):
                self.lab.power(host.node, True)
        for inner in self.plan.inner:
            if inner.power and not self.is_on(inner.node):
                self.wait_until(lambda i=inner: self.lab.inner_status(i) != "absent", 60, f"{inner.parent}'s dockerd")
                self.lab.power(inner.node, True)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root"
    if not Path(DOCKER).exists() and not Path("/usr/sbin/dockerd").exists():
        return "the lab needs Docker Engine (docker.io)"
    return None


@pytest.fixture(scope="session")
def lab() -> Iterator[LabHandle]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from wakegrid.lab.runtime import Lab

    started = time.monotonic()
    lab = Lab(LAB_FLEET)
    lab.up()
    print(f"\nlab up took {time.monotonic() - started:.1f}s")
    handle = LabHandle(Lab(LAB_FLEET))  # re-read: the plan now holds the generated key
    # A reconciler left running by the demo would act on the lab under the tests' feet.
    from wakegrid.lab.daemon import LabDaemon

    edge_daemon = LabDaemon(handle.lab, log=lambda *_: None)
    if edge_daemon.is_active():
        edge_daemon.stop()
    handle.restore()
    yield handle
    if os.environ.get("WAKEGRID_LAB_TEARDOWN") == "1":
        handle.lab.down()


_SHARED_LAB_CODE = lab.__wrapped__.__code__ if hasattr(lab, "__wrapped__") else lab.__code__
