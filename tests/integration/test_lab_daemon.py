"""The reconciler daemon installed in the lab's edge (``vps``) as a user would, and what it reaches from there.

``wakegrid lab daemon install`` puts the wheel and its requirements into a venv in the edge (from a
wheelhouse built on the controller: lab hosts have no Internet), the collection, a fleet and the
files it names, and ``wakegrid.service``. From inside the edge, with the installed tools only, the
daemon must reach what it drives: every host over SSH through the WireGuard hub, the Proxmox VE API
and the Docker API on the dijon LAN, Caddy's admin socket and ``wg show`` locally.

The daemon is installed with ``--dry-run`` here: it decides and logs, and leaves the shared lab alone.
The tests without the ``lab`` fixture check bad input and need no lab.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wakegrid.lab.runtime import LabError
from wakegrid.model import FleetError, parse_fleet

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
WARM_INSTALL_BOUND = 5.0  # seconds; measured ~0.5 s when nothing changed


def _short_fleet(directory: Path) -> Path:
    """The lab fleet with a short idle timer, under another name: any *.fleet.yml can be installed."""
    text = LAB_FLEET.read_text()
    assert "idle_after: 20m" in text
    path = directory / "short.fleet.yml"
    path.write_text(text.replace("idle_after: 20m", "idle_after: 1m"))
    return path


def _converge_network(lab) -> None:
    """WireGuard and Caddy on the edge, as site.yml leaves them (only when missing: ~35 s)."""
    dump = lab.exec("vps", "wg", "show", "wg0", "dump", check=False)
    peers = [line.split("\t") for line in dump.stdout.splitlines()[1:]]
    shaken = [p for p in peers if len(p) > 4 and p[4] != "0"]
    caddy = lab.exec("vps", "test", "-S", "/run/caddy/admin.sock", check=False).returncode == 0
    if dump.returncode == 0 and len(shaken) >= len(lab.fleet.sites) and caddy:
        return
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    playbook = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(lab.fleet_path)]
    proc = subprocess.run(
        [*playbook, str(REPO / "playbooks" / "site.yml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"site.yml failed:\n{(proc.stdout + proc.stderr)[-4000:]}"


@pytest.fixture(scope="module")
def daemon(lab, tmp_path_factory):
    from wakegrid.lab.daemon import LabDaemon

    lab.restore()
    _converge_network(lab)
    handle = LabDaemon(lab.lab, log=lambda line: print(f"  {line}"))
    handle.fleet = _short_fleet(tmp_path_factory.mktemp("fleet"))
    if handle.exec(["test", "-f", "/etc/systemd/system/wakegrid.service"]).returncode == 0:
        handle.exec(["systemctl", "stop", "wakegrid.service"])
    yield handle
    if handle.exec(["test", "-f", "/etc/systemd/system/wakegrid.service"]).returncode == 0:
        handle.exec(["systemctl", "stop", "wakegrid.service"])


@pytest.fixture(scope="module")
def installed(daemon):
    """Installed once from scratch (a cold venv), then again with nothing changed."""
    from wakegrid.lab.daemon import package_key, source_root

    daemon.exec(["rm", "-rf", "/opt/wakegrid"])
    before = package_key(source_root())
    cold = daemon.install(daemon.fleet, dry_run=True)
    warm = daemon.install(daemon.fleet, dry_run=True)
    # The checkout is shared: a source edit between the two installs rightly reinstalls wakegrid.
    warm.notes.append("sources unchanged" if package_key(source_root()) == before else "sources changed")
    print(f"\ncold install: {cold.summary()}\nwarm install: {warm.summary()}")
    return cold, warm


def _vps(daemon, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = daemon.exec(list(cmd), timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} in vps failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


# --------------------------------------------------------------------------- install


def test_cold_install_runs_pip_and_a_warm_one_does_not(installed):
    cold, warm = installed
    assert cold.pip == "requirements and wakegrid"
    assert warm.pip == ("skipped" if "sources unchanged" in warm.notes else "wakegrid only")
    assert warm.total < WARM_INSTALL_BOUND, warm.summary()


def test_a_changed_package_reinstalls_only_wakegrid(daemon, installed):
    stamp = json.loads(_vps(daemon, "cat", "/opt/wakegrid/.wakegrid-lab-install.json").stdout)
    stale = json.dumps({**stamp, "package": "0" * 16})
    _vps(daemon, "sh", "-c", f"echo '{stale}' > /opt/wakegrid/.wakegrid-lab-install.json")
    report = daemon.install(daemon.fleet, dry_run=True)
    assert report.pip == "wakegrid only", report.summary()
    renewed = json.loads(_vps(daemon, "cat", "/opt/wakegrid/.wakegrid-lab-install.json").stdout)
    assert renewed["requirements"] == stamp["requirements"] and renewed["package"] != "0" * 16
    # A damaged stamp is no stamp: everything is installed again.
    _vps(daemon, "sh", "-c", "echo '{not json' > /opt/wakegrid/.wakegrid-lab-install.json")
    assert daemon.install(daemon.fleet, dry_run=True).pip == "requirements and wakegrid"


def test_installed_wakegrid_validates_the_fleet_and_ansible_runs(daemon, installed):
    proc = _vps(daemon, "/opt/wakegrid/bin/wakegrid", "validate", "/etc/wakegrid/short.fleet.yml")
    assert "valid fleet" in proc.stdout
    version = _vps(daemon, "/opt/wakegrid/bin/ansible-playbook", "--version").stdout
    assert version.startswith("ansible-playbook [core 2."), version
    assert "config file = /etc/ansible/ansible.cfg" in version
    # An invalid fleet is refused by the same installed command, with its problem and exit 1.
    _vps(daemon, "sh", "-c", "echo 'edge: 1' > /tmp/broken.fleet.yml")
    broken = daemon.exec(["/opt/wakegrid/bin/wakegrid", "validate", "/tmp/broken.fleet.yml"])
    assert broken.returncode == 1 and "edge" in broken.stdout + broken.stderr


def test_the_fleet_its_files_the_collection_and_the_unit_are_in_place(daemon, installed):
    listing = _vps(daemon, "sh", "-c", "ls /etc/wakegrid").stdout.split()
    # One fleet (the one the unit runs), and the lab's admin credentials (its token and certificate).
    assert sorted(listing) == ["admin-token", "daemon.yml", "short.fleet.yml", "tls.crt", "tls.key"]
    for secret in ("/etc/wakegrid/admin-token", "/etc/wakegrid/tls.key"):
        assert _vps(daemon, "stat", "-c", "%a", secret).stdout.strip() == "600"
    fleet = parse_fleet(daemon.fleet.read_text())
    named = [fleet.defaults.ssh.private_key_file, fleet.nodes["pve1"].proxmox.token_secret.file]
    for path in named:
        here = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        there = _vps(daemon, "sha256sum", path).stdout.split()[0]
        assert there == here, f"{path} differs in vps"
        assert _vps(daemon, "stat", "-c", "%a", path).stdout.strip() == "600"
    for part in ("galaxy.yml", "playbooks/wake.yml", "playbooks/routes.yml", "plugins/inventory/fleet.py"):
        _vps(daemon, "test", "-f", f"/opt/wakegrid/collection/{part}")
    _vps(daemon, "test", "-f", "/opt/wakegrid/collections/ansible_collections/wakegrid/fleet/galaxy.yml")
    props = _vps(daemon, "systemctl", "show", "-p", "Restart,Environment,ExecStart", "wakegrid.service").stdout
    assert "Restart=no" in props
    assert "WAKEGRID_COLLECTION=/opt/wakegrid/collection" in props
    assert (
        "/opt/wakegrid/bin/wakegrid daemon --fleet /etc/wakegrid/short.fleet.yml --config /etc/wakegrid/daemon.yml "
        "--state-dir /var/lib/wakegrid --dry-run" in props
    )
    assert daemon.installed_fleet() == "/etc/wakegrid/short.fleet.yml"


# --------------------------------------------------------------------------- what the daemon reaches from the edge


def test_every_host_answers_ansible_over_the_wireguard_hub(daemon, installed):
    # The daemon's own view: the fleet as inventory, the lab key, SSH through wg0 to the site LANs.
    proc = daemon.exec(
        ["/opt/wakegrid/bin/ansible", "all", "-i", "/etc/wakegrid/short.fleet.yml", "-m", "ansible.builtin.ping"],
        timeout=180,
        env={"ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "minimal"},
    )
    results = {}
    for line in proc.stdout.splitlines():
        if " | " in line and " => " in line:
            host, rest = line.split(" | ", 1)
            results[host.strip()] = rest.split(" =>", 1)[0].strip()
    print(f"\nansible ping from vps: {results}")
    for host in ("nas", "pve1", "vps", "gw-dijon", "srv-thory"):
        assert results.get(host) == "SUCCESS", f"{host}: {results.get(host)}\n{proc.stdout[-3000:]}{proc.stderr}"
    routes = _vps(daemon, "ip", "route", "get", lab_address(daemon, "nas")).stdout
    assert " dev wg0 " in routes, routes  # through the hub, not a Docker network


def lab_address(daemon, node: str) -> str:
    return daemon.lab.plan.host(node).address


def test_proxmox_api_answers_with_the_installed_token_only(daemon, installed):
    fleet = parse_fleet(daemon.fleet.read_text())
    proxmox = fleet.nodes["pve1"].proxmox
    url = f"{proxmox.api.rstrip('/')}/api2/json/cluster/resources"
    # The token is read inside vps from the file the fleet names: it never appears in a command line here.
    with_token = (
        f'curl -sk -m 10 -o /dev/null -w "%{{http_code}}" '
        f'-H "Authorization: PVEAPIToken={proxmox.token_id}=$(cat {proxmox.token_secret.file})" {url}'
    )
    assert _vps(daemon, "sh", "-c", with_token).stdout == "200"
    without = _vps(daemon, "curl", "-sk", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", url).stdout
    assert without == "401"


def test_docker_api_of_the_guest_answers(daemon, installed):
    api = parse_fleet(daemon.fleet.read_text()).nodes["vm-docker"].docker.api
    ping = _vps(daemon, "curl", "-s", "-m", "10", api.replace("tcp://", "http://") + "/_ping").stdout
    assert ping == "OK"


def test_caddy_admin_socket_and_wireguard_dump_are_local(daemon, installed):
    status = _vps(
        daemon,
        "curl",
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--unix-socket",
        "/run/caddy/admin.sock",
        "http://localhost/config/",
    ).stdout
    assert status == "200"
    dump = _vps(daemon, "wg", "show", "wg0", "dump").stdout.splitlines()
    allowed = " ".join(line.split("\t")[3] for line in dump[1:])
    fleet = parse_fleet(daemon.fleet.read_text())
    for site in fleet.sites.values():
        assert site.wireguard.address.split("/")[0] in allowed, f"no hub peer for {site.gateway}: {allowed}"


# --------------------------------------------------------------------------- the service


def _healthz(daemon) -> dict:
    status, body = daemon.request("/healthz", token=False, timeout=5)
    assert status == 200, body
    return json.loads(body)


def test_the_service_starts_answers_from_the_controller_survives_kill_and_stops(daemon, installed):
    if daemon.exec(["/opt/wakegrid/bin/wakegrid", "daemon", "--help"]).returncode:
        pytest.skip("the installed wakegrid has no `daemon` command yet")
    # The lab's default config: HTTPS with the lab's own certificate, the controller an admin network.
    assert daemon.url() == f"https://{daemon.lab.fleet.edge.address}:9380"
    started = time.monotonic()
    daemon.start()
    print(f"\nstart: {time.monotonic() - started:.1f}s to listening")
    health = _healthz(daemon)
    assert health.get("dry_run") is True, health
    assert daemon.logs(20), "no log line from the daemon"
    # The API wants the installed token; the controller is inside the admin networks.
    assert daemon.request("/api/status", token=False)[0] == 401
    status, body = daemon.request("/api/status")
    assert status == 200, body
    assert {s["name"] for s in json.loads(body)} == set(parse_fleet(daemon.fleet.read_text()).services)
    assert daemon.request("/metrics", token=False)[0] == 401
    assert daemon.request("/metrics")[0] == 200

    daemon.kill()
    state = daemon.state()
    assert state["ActiveState"] in ("failed", "inactive") and state["Result"] == "signal", state
    with pytest.raises(OSError):
        _healthz(daemon)

    daemon.start()  # Restart=no: only this brings it back
    _healthz(daemon)
    daemon.stop()
    assert not daemon.is_active()
    with pytest.raises(LabError, match="not running"):
        daemon.kill()


def test_a_daemon_listening_on_loopback_has_no_url_for_the_controller(daemon, installed, tmp_path):
    config = tmp_path / "daemon.yml"
    config.write_text("listen: 127.0.0.1:9380\n")
    try:
        daemon.install(daemon.fleet, config, dry_run=True)
        with pytest.raises(LabError, match="inside vps only"):
            daemon.url()
    finally:
        daemon.install(daemon.fleet, dry_run=True)
    assert daemon.url().endswith(":9380")


# --------------------------------------------------------------------------- bad input (no lab needed)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wakegrid.lab", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_cli_refuses_a_missing_fleet_without_a_traceback(tmp_path):
    proc = _cli("daemon", "install", str(tmp_path / "absent.fleet.yml"))
    assert proc.returncode == 1
    assert "cannot read the fleet file" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_refuses_a_fleet_not_named_fleet_yml(tmp_path):
    other = tmp_path / "lab.yml"
    other.write_text(LAB_FLEET.read_text())
    proc = _cli("daemon", "install", str(other), "--lab", str(LAB_FLEET))
    assert proc.returncode == 1
    assert "must end in .fleet.yml" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_refuses_an_invalid_daemon_config_with_its_problems(tmp_path):
    pytest.importorskip("wakegrid.daemon.config")
    config = tmp_path / "daemon.yml"
    config.write_text("listen: nowhere\ninterval: often\n")
    proc = _cli("daemon", "install", str(LAB_FLEET), "--config", str(config))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "listen" in proc.stderr and "interval" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_refuses_a_bad_line_count():
    proc = _cli("daemon", "logs", "-n", "0")
    assert proc.returncode == 2 and "not a positive number" in proc.stderr


def test_files_the_fleet_names_go_where_the_installed_fleet_looks(tmp_path):
    from wakegrid.lab.daemon import fleet_files

    key = tmp_path / "keys" / "id_ed25519"
    key.parent.mkdir()
    key.write_text("not a key\n")
    text = LAB_FLEET.read_text().replace(
        "token_secret: {file: /var/lib/wakegrid-lab/lab/pve-token}", "token_secret: {file: secrets/pve-token}"
    )
    text = text.replace("/var/lib/wakegrid-lab/lab/id_ed25519", str(key))
    fleet_path = tmp_path / "rel.fleet.yml"
    fleet_path.write_text(text)
    fleet = parse_fleet(text)  # as install reads it: relative paths as written
    with pytest.raises(LabError, match="secrets/pve-token, which does not exist"):
        fleet_files(fleet, fleet_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pve-token").write_text("x\n")
    found = dict((dest, src) for src, dest in fleet_files(fleet, fleet_path))
    assert found["/etc/wakegrid/secrets/pve-token"] == str(tmp_path / "secrets" / "pve-token")
    assert found[str(key)] == str(key)  # absolute: the same path in the edge


def test_an_invalid_fleet_is_refused_before_the_lab_is_touched(tmp_path):
    from wakegrid.lab.daemon import LabDaemon
    from wakegrid.lab.runtime import Lab

    broken = tmp_path / "broken.fleet.yml"
    broken.write_text("edge: {host: vps}\n")
    daemon = LabDaemon(Lab(LAB_FLEET, client=object()))  # any Docker call would fail on this client
    with pytest.raises(FleetError):
        daemon.install(broken)
