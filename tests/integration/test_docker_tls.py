"""Docker APIs over verified TLS: the modules, the observer and the playbook step, against real Docker.

The Docker API here is the host's dockerd, served over TLS on a loopback TCP port by a small
relay started by the fixture (``TlsDocker``): TLS with a server certificate for 127.0.0.1 and
client certificates required, as ``dockerd --tlsverify`` does, then the bytes of each connection
go to /var/run/docker.sock unchanged. The CAs and certificates are made here with openssl:

- ``ca.pem`` signs the server and the client certificates;
- ``other-ca.pem`` is a CA nobody used: verifying with it must fail.

Needs root (the Docker socket) and openssl.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

docker = pytest.importorskip("docker")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # noqa: E402  the helper next to this file, whatever the rootdir or import mode

from wakegrid import actuate  # noqa: E402
from wakegrid.graph import stop_plan  # noqa: E402
from wakegrid.model import DockerApi, load_fleet  # noqa: E402
from wakegrid.observe.power import ProbeError, docker_containers  # noqa: E402

SOCKET = "/var/run/docker.sock"
IMAGE = "wakegrid-test/busybox:latest"
RUN_ID = f"dockertls-{uuid.uuid4().hex[:8]}"
LABEL = "wakegrid.test"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(root: Path) -> Path:
    for ca in ("ca", "other-ca"):
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN=wakegrid test {ca}",
            "-keyout",
            f"{ca}-key.pem",
            "-out",
            f"{ca}.pem",
            cwd=root,
        )
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}-key.pem",
            "-out",
            f"{name}.csr",
            cwd=root,
        )
        (root / f"{name}.ext").write_text(extension + "\n")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=root,
        )
    return root


class TlsDocker:
    """dockerd's unix socket served over TLS with client certificates on 127.0.0.1:port."""

    def __init__(self, certs: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certs / "server.pem", certs / "server-key.pem")
        self.context.load_verify_locations(certs / "ca.pem")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.handshakes_refused = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_refused += 1
            conn.close()
            return
        backend = socket.socket(socket.AF_UNIX)
        backend.connect(SOCKET)
        threading.Thread(target=self._pump, args=(backend, tls), daemon=True).start()
        self._pump(tls, backend)

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


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    reason = support.root_reason("(the Docker socket)")
    if reason:
        pytest.skip(reason)
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    client = support.docker_client(f"unix://{SOCKET}")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        busybox = support.ensure_static_busybox()
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
        support.import_busybox(client, "latest", applets=applets, directories=("bin", "tmp"))
    certs = make_certificates(tmp_path_factory.mktemp("certs"))
    server = TlsDocker(certs)
    name = f"wg-{RUN_ID}-db"
    # sh as PID 1 without a trap ignores SIGTERM: only SIGKILL, after the grace period, stops it.
    client.api.create_container(IMAGE, command=["sh", "-c", "sleep 3600 & wait"], name=name, labels={LABEL: RUN_ID})
    try:
        yield client, server, certs, name
    finally:
        server.close()
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN_ID}"}):
            container.remove(force=True)


@pytest.fixture
def run_module(tmp_path_factory, tmp_path):
    collections = support.collections_path(tmp_path_factory.mktemp("collections"))
    env = support.ansible_env(collections, tmp_path / "ansible.cfg", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    env.pop("DOCKER_HOST", None)
    env.pop("DOCKER_CERT_PATH", None)

    def run(args: dict, check_mode: bool = True) -> tuple[str, dict, str]:
        cmd = support.adhoc_command("docker_container_power", args, *(["--check"] if check_mode else []))
        return support.run_adhoc(cmd, env, tmp_path)

    return run


# --------------------------------------------------------------------------- the module


def test_module_verifies_the_server_and_presents_its_client_certificate(engine, run_module):
    _, server, certs, name = engine
    tls = {"docker_host": server.url, "tls": True, "client_cert": str(certs / "client.pem")}
    status, result, output = run_module(
        {
            **tls,
            "validate_certs": True,
            "ca_path": str(certs / "ca.pem"),
            "client_key": str(certs / "client-key.pem"),
            "name": name,
        }
    )
    assert status == "CHANGED", result  # check mode: reached through TLS, would start it
    assert result["container"]["status_before"] == "created"

    # the key as a secret's content (the fleet's docker.key), never shown
    key = (certs / "client-key.pem").read_text()
    status, result, output = run_module(
        {**tls, "validate_certs": True, "ca_path": str(certs / "ca.pem"), "client_key_content": key, "name": name}
    )
    assert status == "CHANGED", result
    assert "PRIVATE KEY" not in output


def test_module_with_the_wrong_ca_fails_at_once_naming_the_api(engine, run_module):
    _, server, certs, name = engine
    started = time.monotonic()
    status, result, output = run_module(
        {
            "docker_host": server.url,
            "tls": True,
            "validate_certs": True,
            "ca_path": str(certs / "other-ca.pem"),
            "client_cert": str(certs / "client.pem"),
            "client_key": str(certs / "client-key.pem"),
            "name": name,
            "api_wait_timeout": 60,
        }
    )
    assert status == "FAILED!", result
    assert result["msg"].startswith(f"TLS connection to the Docker API at {server.url} failed: ")
    assert "certificate verify failed" in result["msg"]
    assert time.monotonic() - started < 30  # not retried for api_wait_timeout: a wrong CA does not heal
    assert "Traceback" not in output


def test_module_without_verification_only_when_asked(engine, run_module):
    _, server, certs, name = engine
    client_auth = {"client_cert": str(certs / "client.pem"), "client_key": str(certs / "client-key.pem")}
    status, result, _ = run_module({"docker_host": server.url, "tls": True, **client_auth, "name": name})
    assert status == "CHANGED", result
    # the system CAs do not know this server: verified TLS without ca_path fails
    status, result, _ = run_module(
        {"docker_host": server.url, "tls": True, "validate_certs": True, **client_auth, "name": name}
    )
    assert status == "FAILED!" and "certificate verify failed" in result["msg"]


# --------------------------------------------------------------------------- the observer


def test_observer_verifies_with_the_fleet_settings(engine):
    _, server, certs, name = engine
    settings = {"api": server.url, "tls": True, "cert": str(certs / "client.pem")}
    key_file = {"file": str(certs / "client-key.pem")}
    key_inline = (certs / "client-key.pem").read_text()
    for key in (key_file, key_inline):
        api = DockerApi.model_validate({**settings, "ca": str(certs / "ca.pem"), "key": key})
        assert docker_containers(api, 10)[name] == "created"
    unverified = DockerApi.model_validate({**settings, "tls_verify": False, "key": key_file})
    assert docker_containers(unverified, 10)[name] == "created"
    wrong = DockerApi.model_validate({**settings, "ca": str(certs / "other-ca.pem"), "key": key_file})
    with pytest.raises(
        ProbeError, match=f"Docker API {server.url} failed TLS verification: certificate verify failed: self-signed"
    ):
        docker_containers(wrong, 10)


# --------------------------------------------------------------------------- the playbook step


def test_stop_step_through_the_fleet_verified_tls_and_grace_period(engine, tmp_path):
    """The step the playbooks run for a container of a fleet: TLS from the fleet, key from the inventory."""
    client, server, certs, name = engine
    client.api.start(name)
    fleet_file = tmp_path / "test.fleet.yml"
    for part in ("ca.pem", "client.pem", "client-key.pem"):
        shutil.copy(certs / part, tmp_path / part)
    fleet_file.write_text(
        yaml.safe_dump(
            {
                "plugin": "wakegrid.fleet.fleet",
                "edge": {
                    "host": "vps",
                    "domain": "example.net",
                    "wireguard": {"address": "10.200.0.1/24", "endpoint": "vps.example.net:51820"},
                },
                "sites": {"home": {"gateway": "gw", "wireguard": {"address": "10.200.1.1/24"}}},
                "nodes": {
                    "gw": {
                        "kind": "machine",
                        "site": "home",
                        "address": "127.0.0.1",
                        "docker": {
                            "api": server.url,
                            "tls": True,
                            "ca": "ca.pem",
                            "cert": "client.pem",
                            "key": {"file": "client-key.pem"},
                        },
                    },
                    "db": {"kind": "container", "parent": "gw", "container": name, "timeouts": {"stop": "2s"}},
                },
            },
            sort_keys=False,
        )
    )
    fleet = load_fleet(fleet_file)
    (step,) = actuate.plan_data(fleet, stop_plan(fleet, "db", {"gw", "db"}))["steps"]
    assert step["args"]["stop_timeout"] == 2 and step["args"]["validate_certs"] is True
    playbook = tmp_path / "step.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "ansible.builtin.include_tasks": str(
                                support.REPO / "playbooks" / "tasks" / "stop_docker.yml"
                            )
                        },
                    ],
                }
            ]
        )
    )
    (tmp_path / "vars.json").write_text(json.dumps({"wakegrid_step": step}))
    config = tmp_path / "ansible.cfg"
    config.write_text("[inventory]\nenable_plugins = wakegrid.fleet.fleet\nunparsed_is_failed = True\n")
    collections = support.collections_path(tmp_path / "collections")
    env = support.ansible_env(collections, config, ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    since = int(time.time()) - 1
    proc = subprocess.run(
        [support.ANSIBLE_PLAYBOOK, "-i", str(fleet_file), str(playbook), "-e", f"@{tmp_path / 'vars.json'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    assert client.api.inspect_container(name)["State"]["Status"] == "exited"
    events = client.events(
        since=since, until=int(time.time()) + 1, decode=True, filters={"container": name, "event": "kill"}
    )
    kills = {event["Actor"]["Attributes"]["signal"]: event["timeNano"] / 1e9 for event in events}
    assert set(kills) == {"15", "9"}, kills
    assert 1.9 <= kills["9"] - kills["15"] < 3  # the node's timeouts.stop, not Docker's 10 s
