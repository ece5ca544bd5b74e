"""The health observer against real HTTP servers on loopback: hysteresis, timeouts, refused
ports, wrong statuses, sleeping nodes not probed, and unknown until the counters say otherwise."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wakegrid.model import Fleet, parse_fleet
from wakegrid.observe.health import HealthObserver, probe
from wakegrid.observe.power import PowerState


class _Handler(BaseHTTPRequestHandler):
    server: _App

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        status = self.server.status
        body = b"ok" if status == 200 else b"no"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _App(ThreadingHTTPServer):
    """An HTTP app on loopback whose answer the test changes (``status``), recording the paths asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = 200
        self.paths: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]


@pytest.fixture
def app() -> Iterator[_App]:
    server = _App()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel completes them) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def refused_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # bound, never listened: connections are refused
    return port


def fleet_with(*ports: int, passes: int = 1, fails: int = 1, timeout: str = "1s", status: int = 200) -> Fleet:
    backends = "\n".join(f"      - {{node: box, port: {port}}}" for port in ports)
    return parse_fleet(
        f"""
edge: {{host: vps, domain: example.net, wireguard: {{address: 10.200.0.1/24, endpoint: "vps:51820"}}}}
sites: {{home: {{gateway: gw, wireguard: {{address: 10.200.1.1/24}}}}}}
nodes:
  gw: {{kind: machine, site: home, address: 127.0.0.2}}
  box: {{kind: machine, site: home, address: 127.0.0.1, mac: "52:54:00:00:00:03"}}
services:
  app:
    domain: app.example.net
    health: {{path: /health?deep=1, passes: {passes}, fails: {fails}, timeout: {timeout}, status: {status}}}
    backends:
{backends}
""",
        source="<test>",
    )


def run_round(observer: HealthObserver, fleet: Fleet, power=None):
    return asyncio.run(observer.round(fleet, power or {}))


def test_a_healthy_backend_is_up_and_the_health_path_is_asked(app):
    health = run_round(HealthObserver(), fleet_with(app.port))
    assert health[("app", 0)].state == "up"
    assert health[("app", 0)].detail.startswith("200 in ")
    assert app.paths == ["/health?deep=1"]


def test_unknown_until_enough_passes_then_up_then_down_after_enough_fails(app):
    fleet = fleet_with(app.port, passes=2, fails=3)
    observer = HealthObserver()
    first = run_round(observer, fleet)[("app", 0)]
    assert first.state == "unknown"
    assert "(1 of 2 passes)" in first.detail
    assert run_round(observer, fleet)[("app", 0)].state == "up"
    app.status = 503
    one = run_round(observer, fleet)[("app", 0)]
    assert one.state == "up"
    assert "503" in one.detail and "expected 200" in one.detail and "1 of 3 fails; still up" in one.detail
    assert run_round(observer, fleet)[("app", 0)].state == "up"
    third = run_round(observer, fleet)[("app", 0)]
    assert third.state == "down"
    assert "(3 of 3 fails)" in third.detail
    # a single pass does not bring it back with passes: 2
    app.status = 200
    back = run_round(observer, fleet)[("app", 0)]
    assert (back.state, "(1 of 2 passes)" in back.detail) == ("down", True)
    assert run_round(observer, fleet)[("app", 0)].state == "up"


def test_a_fail_in_the_middle_resets_the_passes(app):
    fleet = fleet_with(app.port, passes=2)
    observer = HealthObserver()
    run_round(observer, fleet)
    app.status = 500
    assert run_round(observer, fleet)[("app", 0)].state == "down"  # fails: 1
    app.status = 200
    assert run_round(observer, fleet)[("app", 0)].state == "down"  # 1 of 2 passes again


def test_a_server_that_never_answers_times_out_within_the_timeout(silent_port):
    fleet = fleet_with(silent_port, timeout="300ms")
    started = time.monotonic()
    health = run_round(HealthObserver(), fleet)[("app", 0)]
    elapsed = time.monotonic() - started
    assert health == health.__class__("down", "timed out after 0.3 s")
    assert 0.25 < elapsed < 1.5


def test_a_refused_port_and_a_wrong_status_are_down_with_their_reason(app, refused_port):
    app.status = 404
    health = run_round(HealthObserver(), fleet_with(refused_port, app.port))
    assert health[("app", 0)] == health[("app", 0)].__class__("down", "connection refused")
    assert health[("app", 1)].state == "down"
    assert "404" in health[("app", 1)].detail and "expected 200" in health[("app", 1)].detail


def test_the_expected_status_is_the_services(app):
    app.status = 204
    assert run_round(HealthObserver(), fleet_with(app.port, status=204))[("app", 0)].state == "up"


def test_a_backend_whose_node_is_down_is_not_probed_and_needs_its_passes_again(app):
    fleet = fleet_with(app.port, passes=2)
    observer = HealthObserver()
    run_round(observer, fleet)
    assert run_round(observer, fleet)[("app", 0)].state == "up"
    asleep = {"box": PowerState("box", "down", "no answer on 127.0.0.1:22 within 1s")}
    health = run_round(observer, fleet, asleep)[("app", 0)]
    assert health.state == "down"
    assert health.detail.startswith("node box asleep: not probed")
    assert len(app.paths) == 2
    woken = {"box": PowerState("box", "up", "SSH port accepts connections")}
    assert run_round(observer, fleet, woken)[("app", 0)].state == "down"  # 1 of 2 passes
    assert run_round(observer, fleet, woken)[("app", 0)].state == "up"


def test_a_node_of_unknown_power_is_probed(app):
    unknown = {"box": PowerState("box", "unknown", "refuses connections")}
    assert run_round(HealthObserver(), fleet_with(app.port), unknown)[("app", 0)].state == "up"
    assert app.paths


def test_unknown_stays_unknown_while_the_passes_are_not_reached(app):
    fleet = fleet_with(app.port, passes=3)
    observer = HealthObserver()
    assert [run_round(observer, fleet)[("app", 0)].state for _ in range(2)] == ["unknown", "unknown"]


def test_a_backend_with_no_address_is_unknown(app):
    """Validation refuses such a fleet; a fleet changed in memory must still not crash a round."""
    fleet = fleet_with(app.port)
    nodes = {**fleet.nodes, "box": fleet.nodes["box"].model_copy(update={"address": None})}
    health = run_round(HealthObserver(), fleet.model_copy(update={"nodes": nodes}))
    assert health[("app", 0)].state == "unknown"
    assert "no address" in health[("app", 0)].detail


def test_a_changed_or_removed_backend_starts_its_counters_again(app):
    observer = HealthObserver()
    fleet = fleet_with(app.port, passes=2)
    run_round(observer, fleet)
    assert run_round(observer, fleet)[("app", 0)].state == "up"
    moved = fleet_with(app.port, passes=2, status=204)
    app.status = 204
    assert run_round(observer, moved)[("app", 0)].state == "unknown"
    empty = fleet.model_copy(update={"services": {}})
    assert run_round(observer, empty) == {}
    assert observer._counters == {}


def test_concurrency_is_bounded():
    """A slow server counts the probes open at once: never more than the observer allows."""
    open_now = 0
    most = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
        open_now -= 1

    async def scenario() -> dict:
        servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(40)]
        fleet = fleet_with(*(server.sockets[0].getsockname()[1] for server in servers))
        try:
            return await HealthObserver(concurrency=5).round(fleet, {})
        finally:
            for server in servers:
                server.close()

    health = asyncio.run(scenario())
    assert len(health) == 40 and {h.state for h in health.values()} == {"up"}
    assert most <= 5


def test_an_answer_that_is_not_http_is_a_fail():
    async def scenario(answer: bytes):
        async def handle(reader, writer):
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            return await probe("127.0.0.1", server.sockets[0].getsockname()[1], "/", 200, 1.0)

    assert asyncio.run(scenario(b"SSH-2.0-OpenSSH_9.2\r\n")).detail == "not an HTTP answer"
    assert asyncio.run(scenario(b"")).detail.startswith("connection ")  # closed or reset: the kernel's choice
    assert asyncio.run(scenario(b"x" * 10000)).detail.startswith("not an HTTP answer")
    assert asyncio.run(scenario(b"HTTP/1.1 200 OK\r\n\r\n")).passed


def test_an_invalid_concurrency_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        HealthObserver(concurrency=0)
