"""The lab's Wake-on-LAN listener: it plays the NICs of the lab machines of one site LAN.

A lab "machine" is a container; powered off means stopped. This listener runs on the site
LAN (in a container attached to the LAN's Docker network, with the host's Docker socket
mounted) and, when a real magic packet for a configured MAC arrives, starts that machine's
container after its boot delay (the time a real machine spends in firmware before it is up).

Standard library only: the file is copied loose, next to ``engine.py``, into the lab image
under /opt/wakegrid-lab/ and runs on Debian's python3 without any pip package.

    python3 wol_listener.py --config /etc/wakegrid-lab/wol.json [--port 9 --port 7]

The config maps MAC -> machine::

    {"52:54:00:12:34:56": {"container": "lab-nas", "boot_delay": 3, "secureon": "01:02:03:04:05:06"}}

``boot_delay`` (seconds, default 0) and ``secureon`` (4- or 6-byte password, hex with or
without ``:``/``-`` separators) are optional. SIGHUP reloads the config; a config that does
not validate on reload is refused and the previous one is kept.

Layout: pure functions (packet parsing, config validation, decisions) and a thin
single-threaded event loop (``Listener``) that does the I/O.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import os
import re
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("wakegrid.lab.wol")

DEFAULT_PORTS = (9, 7)  # 9 (discard) is the usual WoL port, 7 (echo) the historical one
SYNC_STREAM = b"\xff" * 6
MAC_REPEATS = 16
MAGIC_LENGTH = len(SYNC_STREAM) + 6 * MAC_REPEATS  # 102
SECUREON_LENGTHS = (4, 6)
_HEX_SEPARATORS = re.compile(r"[:\-.]")


# --------------------------------------------------------------------------------------
# Pure core
# --------------------------------------------------------------------------------------


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_hex_bytes(text: str, lengths: tuple[int, ...], what: str) -> bytes:
    """Parse ``aa:bb:..``, ``aa-bb-..``, ``aabb.ccdd..`` or plain hex into bytes of an allowed length."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    digits = _HEX_SEPARATORS.sub("", text.strip())
    try:
        value = bytes.fromhex(digits)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not hexadecimal") from None
    if len(value) not in lengths:
        allowed = " or ".join(str(n) for n in lengths)
        raise ValueError(f"{what} {text!r} has {len(value)} bytes, expected {allowed}")
    return value


def normalize_mac(text: str) -> str:
    return format_mac(parse_hex_bytes(text, (6,), "MAC"))


def parse_magic_packet(data: bytes) -> tuple[str, bytes | None]:
    """Validate a Wake-on-LAN magic packet; return (MAC as ``aa:bb:cc:dd:ee:ff``, SecureOn password or None).

    Format: 6 x 0xFF, then the target MAC 16 times, then optionally a 4- or 6-byte SecureOn
    password. Raises ValueError with the reason when the payload is not such a packet.
    """
    data = bytes(data)
    password_length = len(data) - MAGIC_LENGTH
    if password_length not in (0, *SECUREON_LENGTHS):
        raise ValueError(
            f"length {len(data)} bytes, expected {MAGIC_LENGTH} "
            f"(or {', '.join(str(MAGIC_LENGTH + n) for n in SECUREON_LENGTHS)} with a SecureOn password)"
        )
    if data[:6] != SYNC_STREAM:
        raise ValueError(f"sync stream is {data[:6].hex()}, expected ffffffffffff")
    mac = data[6:12]
    for index in range(1, MAC_REPEATS):
        repeat = data[6 + 6 * index : 12 + 6 * index]
        if repeat != mac:
            raise ValueError(f"MAC repeat {index + 1}/16 is {format_mac(repeat)}, expected {format_mac(mac)}")
    password = data[MAGIC_LENGTH:] or None
    return format_mac(mac), password


@dataclass(frozen=True)
class Machine:
    """One lab machine the listener plays the NIC of."""

    mac: str
    container: str
    boot_delay: float = 0.0
    secureon: bytes | None = None


def load_machines(raw: object) -> dict[str, Machine]:
    """Validate a decoded config (MAC -> {container, boot_delay?, secureon?}); return machines by normalized MAC.

    Raises ValueError naming the offending entry: a bad config is refused whole.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"config must be an object mapping MAC -> machine, got {type(raw).__name__}")
    machines: dict[str, Machine] = {}
    for key, entry in raw.items():
        where = f"config[{key!r}]"
        mac = normalize_mac(key) if isinstance(key, str) else None
        if mac is None:
            raise ValueError(f"{where}: key must be a MAC address string")
        if mac in machines:
            raise ValueError(f"{where}: MAC {mac} is configured twice")
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be an object, got {type(entry).__name__}")
        unknown = set(entry) - {"container", "boot_delay", "secureon"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        container = entry.get("container")
        if not isinstance(container, str) or not container:
            raise ValueError(f"{where}.container: must be a non-empty string")
        boot_delay = entry.get("boot_delay", 0)
        # bool is an int subclass; "boot_delay": true is a mistake, not 1 second
        if isinstance(boot_delay, bool) or not isinstance(boot_delay, int | float) or not 0 <= boot_delay <= 3600:
            raise ValueError(f"{where}.boot_delay: must be a number of seconds in [0, 3600], got {boot_delay!r}")
        secureon = entry.get("secureon")
        if secureon is not None:
            try:
                secureon = parse_hex_bytes(secureon, SECUREON_LENGTHS, "SecureOn password")
            except ValueError as exc:
                raise ValueError(f"{where}.secureon: {exc}") from None
        machines[mac] = Machine(mac=mac, container=container, boot_delay=float(boot_delay), secureon=secureon)
    return machines


class Ignored(Exception):
    """A valid magic packet that must not wake anything (the reason is the message)."""


def match_machine(machines: dict[str, Machine], mac: str, password: bytes | None) -> Machine:
    """Which machine this packet wakes; raises Ignored for unknown MACs and wrong SecureOn passwords."""
    machine = machines.get(mac)
    if machine is None:
        raise Ignored(f"no lab machine has MAC {mac}")
    if machine.secureon is not None and password != machine.secureon:
        # A SecureOn NIC only wakes on its password; one without SecureOn ignores extra bytes.
        got = "no password" if password is None else f"password {password.hex()}"
        raise Ignored(f"wrong SecureOn password for {mac} ({machine.container}): {got}")
    return machine


@dataclass(frozen=True)
class Decision:
    """What the loop must do about a packet for a known machine: start it after ``delay`` or nothing."""

    start: bool
    delay: float
    reason: str


def decide(machine: Machine, *, running: bool, wake_pending: bool) -> Decision:
    """Waking a running machine, or one already booting, does nothing; otherwise boot it."""
    if running:
        return Decision(False, 0.0, f"{machine.container} is already running")
    if wake_pending:
        # senders repeat packets (and may use both ports): one boot per wake
        return Decision(False, 0.0, f"{machine.container} is already booting")
    return Decision(True, machine.boot_delay, f"waking {machine.container} in {machine.boot_delay:g}s")


# --------------------------------------------------------------------------------------
# Thin shell
# --------------------------------------------------------------------------------------


class DockerEngine(Protocol):
    def is_running(self, name: str) -> bool: ...

    def start(self, name: str) -> object: ...


def read_config(path: str) -> dict[str, Machine]:
    with open(path, encoding="utf-8") as handle:
        try:
            raw = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
    return load_machines(raw)


class Listener:
    """Single-threaded loop: UDP sockets + a self-pipe for signals + a heap of due boots."""

    def __init__(self, config_path: str, engine: DockerEngine, bind: str, ports: tuple[int, ...]) -> None:
        self.config_path = config_path
        self.engine = engine
        self.machines = read_config(config_path)
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((bind, port))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, port)
            self.sockets.append(sock)
        self.due: list[tuple[float, str]] = []  # (monotonic deadline, container)
        self.pending: set[str] = set()
        self.stopping = False
        # Signals arrive through a socketpair so they interrupt select() right away.
        self._signal_rx, self._signal_tx = socket.socketpair()
        self._signal_rx.setblocking(False)
        self._signal_tx.setblocking(False)
        self.selector.register(self._signal_rx, selectors.EVENT_READ, None)

    def install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._signal_tx.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            # A Python-level handler is needed for the wakeup fd to be written; work happens in the loop.
            signal.signal(signum, lambda *_: None)

    def run(self) -> None:
        log.info(
            "listening on %s for %s",
            ", ".join(f"udp/{s.getsockname()[1]}" for s in self.sockets),
            ", ".join(f"{m.mac}->{m.container}" for m in self.machines.values()) or "no machine",
        )
        while not self.stopping:
            timeout = max(0.0, self.due[0][0] - time.monotonic()) if self.due else None
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    self._handle_signals()
                else:
                    self._receive(key.fileobj, key.data)  # type: ignore[arg-type]
            self._start_due()
        log.info("stopping")

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.selector.close()
        self._signal_rx.close()
        self._signal_tx.close()

    def _handle_signals(self) -> None:
        try:
            signums = self._signal_rx.recv(64)
        except BlockingIOError:
            return
        for signum in signums:
            if signum == signal.SIGHUP:
                self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True

    def reload(self) -> None:
        try:
            machines = read_config(self.config_path)
        except (OSError, ValueError) as exc:
            log.error("config reload refused, keeping the previous one: %s", exc)
            return
        self.machines = machines
        log.info("config reloaded: %d machine(s)", len(machines))

    def _receive(self, sock: socket.socket, port: int) -> None:
        while True:  # drain: a sender may have sent a burst
            try:
                data, (host, sport) = sock.recvfrom(2048)
            except BlockingIOError:
                return
            self.handle_packet(data, f"{host}:{sport}", port)

    def handle_packet(self, data: bytes, sender: str, port: int) -> None:
        try:
            mac, password = parse_magic_packet(data)
            machine = match_machine(self.machines, mac, password)
        except ValueError as exc:
            log.info("ignored packet from %s on udp/%d: not a magic packet: %s", sender, port, exc)
            return
        except Ignored as exc:
            log.info("ignored magic packet from %s on udp/%d: %s", sender, port, exc)
            return
        try:
            running = self.engine.is_running(machine.container)
        except Exception as exc:  # an unreachable engine must not kill the NIC
            log.error("cannot inspect %s: %s", machine.container, exc)
            return
        decision = decide(machine, running=running, wake_pending=machine.container in self.pending)
        log.info("magic packet for %s from %s on udp/%d: %s", mac, sender, port, decision.reason)
        if decision.start:
            self.pending.add(machine.container)
            heapq.heappush(self.due, (time.monotonic() + decision.delay, machine.container))

    def _start_due(self) -> None:
        now = time.monotonic()
        while self.due and self.due[0][0] <= now:
            _, container = heapq.heappop(self.due)
            self.pending.discard(container)
            try:
                if self.engine.is_running(container):  # started by someone else meanwhile
                    log.info("%s is already running", container)
                    continue
                self.engine.start(container)
            except Exception as exc:
                log.error("cannot start %s: %s", container, exc)
                continue
            log.info("started %s", container)


def load_engine_module():
    """The sibling Docker Engine client; imported late so the pure core needs nothing but the stdlib."""
    try:  # inside the wakegrid package
        from . import engine
    except ImportError:  # copied loose next to engine.py (the lab image), run as a script
        # ``python3 -I`` leaves the script's directory out of sys.path: put it back
        here = os.path.dirname(os.path.abspath(__file__))
        if here not in sys.path:
            sys.path.insert(0, here)
        import engine  # type: ignore[no-redef]
    return engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Lab Wake-on-LAN listener: starts a machine's container on its magic packet."
    )
    parser.add_argument(
        "--config", default="/etc/wakegrid-lab/wol.json", help="JSON: MAC -> {container, boot_delay, secureon}"
    )
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument(
        "--port", type=int, action="append", dest="ports", help="UDP port, repeatable (default: 9 and 7)"
    )
    parser.add_argument(
        "--docker-socket", default=os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"), help="Docker Engine socket"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s wol-listener: %(message)s"
    )
    try:
        listener = Listener(
            args.config, load_engine_module().Engine(args.docker_socket), args.bind, tuple(args.ports or DEFAULT_PORTS)
        )
    except (OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    listener.install_signal_handlers()
    try:
        listener.run()
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
