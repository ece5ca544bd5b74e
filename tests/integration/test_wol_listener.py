"""The lab Wake-on-LAN listener against real parts: real magic packets on a real Docker LAN.

Topology (all created here, labelled, removed at the end even on failure):

- an ``internal`` Docker bridge network on a lab-only 10.239.N.0/24;
- ``nic``: a busybox container on that LAN whose network namespace hosts the listener.
  The listener itself is this repo's ``wol_listener.py`` + ``engine.py``, copied loose
  into a directory as in the lab image, run by Debian's python3 with ``-I -S`` (no
  site-packages, no environment: proves it is stdlib only) through ``nsenter --net``. Why nsenter: the
  listener then receives exactly what a container on the LAN receives (the subnet
  broadcast, on its own ports 9/7, not the host's), while the Docker socket stays
  reachable on the host filesystem, with no Python-capable image to build;
- ``sender``: another busybox container; the wakeonlan library runs in its network
  namespace and broadcasts to the LAN's broadcast address, like a site gateway does;
- the "machines": busybox containers created but never started (powered off).

Needs root, Docker Engine, nsenter and a static busybox (Debian's busybox-static).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

docker = pytest.importorskip("docker")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # noqa: E402  the helper next to this file, whatever the rootdir or import mode

LAB_DIR = support.LAB_DIR
LABEL = "wakegrid.test"
RUN_ID = f"wol-{uuid.uuid4().hex[:8]}"
LISTENER_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _lab_skip_reason() -> str | None:
    if reason := support.root_reason("(nsenter into container namespaces)"):
        return reason
    if not shutil.which("nsenter"):
        return "needs nsenter (util-linux)"
    if support.static_busybox() is None:
        return "needs a static busybox: apt-get install busybox-static"
    return None


# --------------------------------------------------------------------------------------
# Lab fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    reason = _lab_skip_reason()
    if reason:
        pytest.skip(reason)
    client = support.docker_client()
    yield client
    # Cleanup by label: whatever a failed test left behind goes too.
    support.remove_labelled(client, f"{LABEL}={RUN_ID}")
    client.close()


@pytest.fixture(scope="module")
def image(client) -> str:
    """A registry-free tiny image: the static busybox, ``docker import``-ed."""
    return support.import_busybox(client, RUN_ID, changes=[f"LABEL {LABEL}={RUN_ID}"])


@pytest.fixture(scope="module")
def lan(client):
    """An internal bridge network on a free 10.239.N.0/24 (other lab runs may hold some): (network, subnet)."""
    return support.create_test_lan(client, f"{RUN_ID}-lan", {LABEL: RUN_ID})


def _run_box(client, image, lan, role: str):
    network, _ = lan
    container = client.containers.run(
        image,
        ["/bin/busybox", "sleep", "3600"],
        name=f"{RUN_ID}-{role}",
        network=network.name,
        labels={LABEL: RUN_ID},
        init=True,  # so stop/remove does not wait on a PID-1 sleep ignoring SIGTERM
        detach=True,
    )
    container.reload()
    return container


class Listener:
    """The listener process in the ``nic`` container's network namespace, and its log."""

    def __init__(self, process: subprocess.Popen, log_path: Path, config_path: Path):
        self.process = process
        self.log_path = log_path
        self.config_path = config_path

    def log(self) -> str:
        return self.log_path.read_text()

    def mark(self) -> int:
        return len(self.log())

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 5.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, self.log()[since:])
            if match:
                return match
            if self.process.poll() is not None:
                pytest.fail(f"listener died (rc={self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"listener never logged {pattern!r}; log:\n{self.log()}")
            time.sleep(0.05)

    def configure(self, machines: dict) -> None:
        """Rewrite the config and SIGHUP the listener (also exercises the reload)."""
        since = self.mark()
        self.config_path.write_text(json.dumps(machines))
        self.process.send_signal(signal.SIGHUP)
        self.wait_for(rf"config reloaded: {len(machines)} machine", since)


@pytest.fixture(scope="module")
def listener(client, image, lan, tmp_path_factory):
    nic = _run_box(client, image, lan, "nic")
    opt = tmp_path_factory.mktemp("opt-wakegrid-lab")  # as /opt/wakegrid-lab/ in the lab image
    for name in ("wol_listener.py", "engine.py"):
        shutil.copy(LAB_DIR / name, opt / name)
    config = opt / "wol.json"
    config.write_text("{}")
    log_path = opt / "listener.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            ["nsenter", f"--target={nic.attrs['State']['Pid']}", "--net", "--",
             LISTENER_PYTHON, "-I", "-S", str(opt / "wol_listener.py"), "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    handle = Listener(process, log_path, config)
    try:
        handle.wait_for(r"listening on udp/9, udp/7")
        yield handle
    finally:
        process.terminate()  # SIGTERM: the listener must exit cleanly (it is PID 1 in the lab)
        try:
            returncode = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode = None
    assert returncode == 0, f"listener did not exit cleanly on SIGTERM:\n{handle.log()}"


@pytest.fixture(scope="module")
def sender(client, image, lan):
    """Send with the wakeonlan library from a host on the LAN, to the LAN broadcast address."""
    _, subnet = lan
    box = _run_box(client, image, lan, "sender")
    address = next(iter(box.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]

    def run_in_lan(code: str) -> None:
        subprocess.run(
            ["nsenter", f"--target={box.attrs['State']['Pid']}", "--net", "--",
             sys.executable, "-W", "ignore::DeprecationWarning", "-c", code],
            check=True, timeout=10,
        )  # fmt: skip

    def send(mac: str, port: int = 9) -> float:
        """Broadcast a magic packet (``mac`` or ``mac/secureon``); return the wall time just before."""
        sent_at = time.time()
        run_in_lan(
            "from wakeonlan import send_magic_packet; "
            f"send_magic_packet({mac!r}, ip_address={str(subnet.broadcast_address)!r}, port={port}, "
            f"interface={address!r})"
        )
        return sent_at

    def send_raw(payload: bytes, port: int = 9) -> None:
        run_in_lan(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1); "
            f"s.sendto({payload!r}, ({str(subnet.broadcast_address)!r}, {port}))"
        )

    send.raw = send_raw
    return send


@pytest.fixture
def machines(client, image, lan):
    """Two powered-off lab machines with fresh MACs, as {name: (mac, container)}."""
    network, _ = lan
    created = {}
    for role in ("alpha", "bravo"):
        mac = "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5))  # locally administered
        container = client.containers.create(
            image,
            ["/bin/busybox", "sleep", "3600"],
            name=f"{RUN_ID}-{role}-{uuid.uuid4().hex[:4]}",
            network=network.name,
            labels={LABEL: RUN_ID},
            init=True,
        )
        created[role] = (mac, container)
    yield created
    for _, container in created.values():
        container.remove(force=True)


def _running(container) -> bool:
    container.reload()
    return container.attrs["State"]["Running"]


def _started_at(container) -> float:
    """Docker's own start timestamp (RFC 3339, nanoseconds) as epoch seconds."""
    stamp = container.attrs["State"]["StartedAt"]
    head, _, fraction = stamp.rstrip("Z").partition(".")
    moment = datetime.fromisoformat(head).replace(tzinfo=timezone.utc)  # noqa: UP017 (py3.11 target, explicit)
    return moment.timestamp() + float(f"0.{fraction or 0}")


def _wait_running(container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _running(container):
        if time.monotonic() > deadline:
            pytest.fail(f"{container.name} did not start within {timeout}s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_packet_wakes_exactly_the_named_machine_after_its_boot_delay(listener, sender, machines):
    (alpha_mac, alpha), (bravo_mac, bravo) = machines["alpha"], machines["bravo"]
    boot_delay = 1.5
    listener.configure(
        {
            alpha_mac: {"container": alpha.name, "boot_delay": boot_delay},
            bravo_mac: {"container": bravo.name, "boot_delay": 0},
        }
    )
    since = listener.mark()

    sent_at = sender(alpha_mac.upper().replace(":", "-"), port=9)
    _wait_running(alpha, timeout=boot_delay + 5)

    waited = _started_at(alpha) - sent_at
    assert boot_delay <= waited < boot_delay + 2.0, f"started {waited:.2f}s after the packet"
    listener.wait_for(rf"started {re.escape(alpha.name)}", since)
    # bravo boots instantly if woken at all; it must still be off
    time.sleep(0.3)
    assert not _running(bravo)
    assert bravo.name not in listener.log()[since:]

    # a second packet for a running machine does nothing
    since = listener.mark()
    sender(alpha_mac, port=7)
    listener.wait_for(rf"{re.escape(alpha.name)} is already running", since)
    assert f"started {alpha.name}" not in listener.log()[since:]


def test_wrong_secureon_does_not_wake_and_the_right_one_does(listener, sender, machines):
    mac, machine = machines["bravo"]
    listener.configure({mac: {"container": machine.name, "boot_delay": 0.2, "secureon": "a1:b2:c3:d4:e5:f6"}})

    for attempt in (f"{mac}/01:02:03:04:05:06", mac):  # wrong password, then none at all
        since = listener.mark()
        sender(attempt, port=7)
        listener.wait_for(rf"wrong SecureOn password for {mac}", since)
    time.sleep(0.5)  # beyond the boot delay
    assert not _running(machine)

    since = listener.mark()
    sender(f"{mac}/a1-b2-c3-d4-e5-f6", port=7)
    _wait_running(machine, timeout=5)
    listener.wait_for(rf"started {re.escape(machine.name)}", since)


def test_unknown_macs_and_malformed_packets_wake_nothing(listener, sender, machines):
    (alpha_mac, alpha), (bravo_mac, bravo) = machines["alpha"], machines["bravo"]
    listener.configure({alpha_mac: {"container": alpha.name}, bravo_mac: {"container": bravo.name}})
    stranger = "02:00:00:00:00:01"

    since = listener.mark()
    sender(stranger)
    listener.wait_for(rf"no lab machine has MAC {stranger}", since)

    almost = bytearray(b"\xff" * 6 + bytes.fromhex(alpha_mac.replace(":", "")) * 16)
    almost[-1] ^= 0xFF  # alpha's packet with a corrupted last repeat
    since = listener.mark()
    sender.raw(bytes(almost))
    listener.wait_for(r"not a magic packet: MAC repeat 16/16", since)
    sender.raw(b"wake up", port=7)
    listener.wait_for(r"not a magic packet: length 7 bytes", since)

    time.sleep(0.3)  # both machines have no boot delay: a wrong wake would show by now
    assert not _running(alpha)
    assert not _running(bravo)
