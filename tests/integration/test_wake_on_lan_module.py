"""wakegrid.fleet.wake_on_lan run by Ansible, with real magic packets between two network namespaces.

Topology (created here, removed at the end even on failure):

- ``wolmod-a``: the sender, as a site gateway; Ansible runs the module there
  (``ip netns exec wolmod-a ansible localhost -c local -m wakegrid.fleet.wake_on_lan``);
- ``wolmod-b``: the sleeping machine, 10.242.0.2, played by a small stdlib program that
  listens to UDP port 9 on 0.0.0.0 (so it sees broadcasts), records every datagram, and
  "wakes up" on a magic packet for its MAC: after a delay, it opens a TCP port or takes an
  extra address that answers ping;
- a veth pair between them on the lab-only 10.242.0.0/24, with no route anywhere else.

Needs root and iproute2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode

NS_SENDER, NS_MACHINE = "wolmod-a", "wolmod-b"
VETH_SENDER, VETH_MACHINE = "wolmod-va", "wolmod-vb"
SENDER_IP, MACHINE_IP, WOKEN_IP = "10.242.0.1", "10.242.0.2", "10.242.0.3"
LAN_BROADCAST = "10.242.0.255"
MAC = "52:54:00:24:20:02"
MAC_BYTES = bytes.fromhex("525400242002")
SSH_PORT = 2222

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2 (network namespaces)"
)

# The sleeping machine. Prints "ready" once its UDP socket is bound; writes one JSON line per
# datagram to the record file, with the kernel's receive time ("ts", wall clock). Its network card
# wakes the machine only on a magic packet carrying its MAC (and password, if it has one), as a
# real NIC does, but misses the first `missed` of them. The time of the first TCP connection it
# accepts goes to <record>.answered.
MACHINE_PROGRAM = textwrap.dedent(
    """
    import json, socket, struct, subprocess, sys, threading, time

    record, mac, password, wake_after, mode, target, missed = sys.argv[1:8]
    missed = int(missed)
    expected = b"\\xff" * 6 + bytes.fromhex(mac) * 16 + bytes.fromhex(password)

    def serve(host, port):
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen(16)
        first = True
        while True:
            listener.accept()[0].close()
            if first:
                with open(record + ".answered", "w") as out:
                    out.write(repr(time.time()))
                first = False

    def wake():
        if mode == "tcp":
            host, port = target.rsplit(":", 1)
            threading.Thread(target=serve, args=(host, port), daemon=True).start()
        elif mode == "icmp":
            subprocess.run(["ip", "addr", "add", target, "dev", "wolmod-vb"], check=True)

    if wake_after == "now":
        wake()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it on few builds
    udp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    udp.bind(("0.0.0.0", 9))
    print("ready", flush=True)
    awake = wake_after == "now"
    with open(record, "a") as out:
        while True:
            data, ancillary, _, source = udp.recvmsg(4096, 64)
            stamp = [struct.unpack("qq", d[:16]) for level, kind, d in ancillary if kind == SO_TIMESTAMPNS]
            ts = stamp[0][0] + stamp[0][1] / 1e9 if stamp else time.time()
            out.write(json.dumps({"hex": data.hex(), "source": source[0], "ts": ts}) + "\\n")
            out.flush()
            if data == expected and not awake:
                if missed > 0:
                    missed -= 1
                    continue
                awake = True
                threading.Timer(float(wake_after), wake).start()
    """
)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def _remove_namespaces() -> None:
    for ns in (NS_SENDER, NS_MACHINE):
        sh("ip", "netns", "del", ns, check=False)  # the veth pair goes with them


@pytest.fixture(scope="module")
def lan():
    _remove_namespaces()  # leftovers of an interrupted run
    try:
        sh("ip", "netns", "add", NS_SENDER)
        sh("ip", "netns", "add", NS_MACHINE)
        veth_pair = f"{VETH_SENDER} netns {NS_SENDER} type veth peer {VETH_MACHINE} netns {NS_MACHINE}"
        sh("ip", "link", "add", *veth_pair.split())
        for ns, dev, address in ((NS_SENDER, VETH_SENDER, SENDER_IP), (NS_MACHINE, VETH_MACHINE, MACHINE_IP)):
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        _remove_namespaces()


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    """A collections path where ansible_collections/wakegrid/fleet is this repository."""
    return support.collections_path(tmp_path_factory.mktemp("collections"))


class Machine:
    """The sleeping machine's process in wolmod-b and what it received."""

    def __init__(self, record: Path, proc: subprocess.Popen):
        self.record = record
        self.proc = proc

    def packets(self, settle: float = 0.3) -> list[dict]:
        time.sleep(settle)  # datagrams on a veth arrive at once; this only covers scheduling
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def answered_at(self) -> float | None:
        """Wall-clock time of the first TCP connection the machine accepted."""
        answered = self.record.with_name(self.record.name + ".answered")
        return float(answered.read_text()) if answered.exists() else None


@pytest.fixture
def start_machine(lan, tmp_path):
    started: list[subprocess.Popen] = []

    def start(
        password: str = "", wake_after: str = "0", mode: str = "tcp", target: str = "", missed: int = 0
    ) -> Machine:
        record = tmp_path / f"received-{len(started)}.jsonl"
        proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", NS_MACHINE, sys.executable, "-I", "-c", MACHINE_PROGRAM),
                *(str(record), MAC_BYTES.hex(), password, wake_after, mode, target, str(missed)),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else line
        return Machine(record, proc)

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
    sh("ip", "-n", NS_MACHINE, "addr", "del", f"{WOKEN_IP}/24", "dev", VETH_MACHINE, check=False)


def run_module(collections: Path, tmp_path: Path, args: dict, check_mode: bool = False) -> tuple[str, dict, str]:
    """Run the module through the ``ansible`` CLI inside wolmod-a; return (status, result, all output)."""
    env = support.ansible_env(collections, tmp_path / "ansible.cfg", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    flags = ["--check"] if check_mode else []
    cmd = support.adhoc_command("wake_on_lan", args, *flags, prefix=("ip", "netns", "exec", NS_SENDER))
    return support.run_adhoc(cmd, env, tmp_path)


def expected_packet(password: str = "") -> str:
    return (b"\xff" * 6 + MAC_BYTES * 16 + bytes.fromhex(password)).hex()


def test_limited_broadcast_from_an_interface_carries_the_exact_packet(collections, tmp_path, start_machine):
    machine = start_machine()
    status, result, _ = run_module(collections, tmp_path, {"mac": MAC.upper(), "interface": SENDER_IP})
    assert status == "CHANGED"
    assert result["sent"] is True and result["already_awake"] is None and result["elapsed"] is None
    assert result["mac"] == MAC and result["packet_size"] == 102
    packets = machine.packets()
    assert [p["hex"] for p in packets] == [expected_packet()]
    assert packets[0]["source"] == SENDER_IP


@pytest.mark.parametrize(
    ("secureon", "password_hex"),
    [("A1-B2-C3-D4-E5-F6", "a1b2c3d4e5f6"), ("192.168.1.1", "c0a80101")],
    ids=["6-bytes", "4-bytes-dotted"],
)
def test_secureon_password_follows_the_macs_and_stays_secret(
    collections, tmp_path, start_machine, secureon, password_hex
):
    machine = start_machine(password=password_hex)
    args = {"mac": MAC.replace(":", "-"), "broadcast": LAN_BROADCAST, "secureon": secureon}
    status, result, output = run_module(collections, tmp_path, args)
    assert status == "CHANGED"
    assert result["packet_size"] == 102 + len(password_hex) // 2
    assert [p["hex"] for p in machine.packets()] == [expected_packet(password_hex)]
    assert secureon not in output


def test_wakes_a_sleeping_machine_and_waits_until_it_answers(collections, tmp_path, start_machine):
    wake_after = 1.5
    machine = start_machine(wake_after=str(wake_after), mode="tcp", target=f"{MACHINE_IP}:{SSH_PORT}")
    args = {
        "mac": MAC,
        "broadcast": LAN_BROADCAST,
        "wait_for": {"host": MACHINE_IP, "port": SSH_PORT, "connect_timeout": 0.5},
        "timeout": 15,
        "sleep": 0.2,
    }
    status, result, _ = run_module(collections, tmp_path, args)
    assert status == "CHANGED", result
    assert result["sent"] is True and result["already_awake"] is False
    assert wake_after <= result["elapsed"] < wake_after + 5
    assert [p["hex"] for p in machine.packets()] == [expected_packet()]

    # run again: the machine answers, so no packet and no change
    status, result, _ = run_module(collections, tmp_path, args)
    assert status == "SUCCESS"
    assert result["changed"] is False and result["sent"] is False and result["already_awake"] is True
    assert result["elapsed"] is None
    assert len(machine.packets()) == 1


def test_packet_resent_while_waiting_wakes_a_nic_that_missed_the_first(collections, tmp_path, start_machine):
    machine = start_machine(wake_after="0.5", mode="tcp", target=f"{MACHINE_IP}:{SSH_PORT}", missed=1)
    args = {
        "mac": MAC,
        "broadcast": LAN_BROADCAST,
        "wait_for": {"host": MACHINE_IP, "port": SSH_PORT, "connect_timeout": 0.5},
        "timeout": 10,
        "sleep": 0.1,
        "resend_interval": 0.3,
        "resend_count": 20,
    }
    status, result, _ = run_module(collections, tmp_path, args)
    assert status == "CHANGED", result
    packets = machine.packets()
    assert [p["hex"] for p in packets] == [expected_packet()] * len(packets)
    assert result["packets_sent"] == len(packets) >= 2  # the first was missed; a resend woke it
    answered = machine.answered_at()
    assert answered is not None
    assert all(p["ts"] < answered for p in packets)  # nothing re-sent once the machine answered
    assert result["packets_sent"] < 20  # it stopped at the answer, not at the count


def test_resends_stop_at_the_count(collections, tmp_path, start_machine):
    machine = start_machine(wake_after="0", mode="none")  # receives the packets, never answers
    args = {
        "mac": MAC,
        "broadcast": LAN_BROADCAST,
        "wait_for": {"host": MACHINE_IP, "port": SSH_PORT, "connect_timeout": 0.2},
        "timeout": 2,
        "sleep": 0.1,
        "resend_interval": 0.3,
        "resend_count": 2,
    }
    status, result, _ = run_module(collections, tmp_path, args)
    assert status == "FAILED!"
    assert result["packets_sent"] == 3 == len(machine.packets())
    assert result["msg"].startswith(f"sent 3 magic packets to {MAC}, but ")


def test_machine_already_up_gets_no_packet_even_in_check_mode(collections, tmp_path, start_machine):
    machine = start_machine(wake_after="now", mode="tcp", target=f"{MACHINE_IP}:{SSH_PORT}")
    args = {"mac": MAC, "broadcast": LAN_BROADCAST, "wait_for": {"host": MACHINE_IP, "port": SSH_PORT}}
    for check_mode in (False, True):
        status, result, _ = run_module(collections, tmp_path, args, check_mode=check_mode)
        assert status == "SUCCESS"
        assert result["changed"] is False and result["sent"] is False and result["already_awake"] is True
    assert machine.packets() == []


def test_check_mode_reports_the_change_and_sends_nothing(collections, tmp_path, start_machine):
    machine = start_machine(wake_after="0", mode="tcp", target=f"{MACHINE_IP}:{SSH_PORT}")
    for wait_for in (None, {"host": MACHINE_IP, "port": SSH_PORT, "connect_timeout": 0.5}):
        args = {"mac": MAC, "broadcast": LAN_BROADCAST, **({"wait_for": wait_for} if wait_for else {})}
        status, result, _ = run_module(collections, tmp_path, args, check_mode=True)
        assert status == "CHANGED"
        assert result["sent"] is False and result["elapsed"] is None
        assert result["already_awake"] is (False if wait_for else None)
        assert "would send" in result["msg"]
    assert machine.packets() == []


def test_icmp_wait_for_an_address_that_appears_after_the_packet(collections, tmp_path, start_machine):
    machine = start_machine(wake_after="1", mode="icmp", target=f"{WOKEN_IP}/24")
    args = {
        "mac": MAC,
        "interface": SENDER_IP,
        "wait_for": {"host": WOKEN_IP, "protocol": "icmp", "connect_timeout": 1},
        "timeout": 15,
        "sleep": 0.2,
    }
    status, result, _ = run_module(collections, tmp_path, args)
    assert status == "CHANGED", result
    assert result["already_awake"] is False and result["sent"] is True
    assert result["elapsed"] >= 1
    assert len(machine.packets()) == 1


def test_machine_that_never_answers_fails_clearly_after_the_timeout(collections, tmp_path, start_machine):
    machine = start_machine(wake_after="0", mode="none")  # receives the packet, never answers
    args = {
        "mac": MAC,
        "broadcast": LAN_BROADCAST,
        "secureon": "de:ad:be:ef:00:01",
        "wait_for": {"host": MACHINE_IP, "port": SSH_PORT, "connect_timeout": 0.5},
        "timeout": 2,
        "sleep": 0.2,
    }
    started = time.monotonic()
    status, result, output = run_module(collections, tmp_path, args)
    assert status == "FAILED!"
    assert "de:ad:be:ef:00:01" not in output  # not even in the failed task's echo
    assert time.monotonic() - started >= 2
    assert result["sent"] is True and result["changed"] is True
    assert result["elapsed"] >= 2
    assert f"{MACHINE_IP}:{SSH_PORT} did not answer within 2 s" in result["msg"]
    assert "refused" in result["msg"].lower()
    assert len(machine.packets()) == 1


def test_bad_input_fails_before_sending(collections, tmp_path, start_machine):
    machine = start_machine()
    status, result, _ = run_module(collections, tmp_path, {"mac": "52:54:00:24:20", "broadcast": LAN_BROADCAST})
    assert status == "FAILED!"
    assert "invalid MAC address" in result["msg"]
    assert machine.packets() == []
