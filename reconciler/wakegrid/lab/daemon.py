"""The reconciler daemon in the lab's edge host, installed the way a user installs it.

Until the collection's ``reconciler`` role exists, ``wakegrid lab daemon install`` does by hand
what docs/install.md tells a user to do on the edge: the ``wakegrid`` wheel and its requirements
into a venv, the collection beside it, the fleet and the files it names (SSH key, Proxmox token),
the daemon's config and a systemd unit. Lab hosts have no Internet, so the requirements come from
a wheelhouse built on the controller and kept under the lab cache, keyed by ``pyproject.toml``:
the second install copies nothing big and runs no pip unless the package itself changed.

The daemon then drives the other hosts from inside the edge over SSH, the Proxmox and Docker APIs
and the WireGuard tunnels, like any controller: no Docker-level shortcut into the lab.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import secrets
import shlex
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml
from pydantic import BaseModel

from wakegrid.lab.image import CACHE_DIR
from wakegrid.lab.runtime import DOCKER_CLI, Lab, LabError, Log
from wakegrid.model import Fleet, parse_fleet
from wakegrid.secret import Secret

__all__ = ["DEFAULT_PORT", "InstallReport", "LabDaemon", "admin_section", "lab_credentials"]

VENV = "/opt/wakegrid"
COLLECTION = f"{VENV}/collection"
# ansible_collections/wakegrid/fleet -> ../../../collection: lets `ansible` in the edge find the
# collection as a user's would (the daemon's own runs link it per run from WAKEGRID_COLLECTION).
COLLECTIONS_PATH = f"{VENV}/collections"
STAMP = f"{VENV}/.wakegrid-lab-install.json"
ETC = "/etc/wakegrid"
CONFIG = f"{ETC}/daemon.yml"
STATE_DIR = "/var/lib/wakegrid"
UNIT = "wakegrid.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
ANSIBLE_CFG = "/etc/ansible/ansible.cfg"
# The lab's admin token and the daemon's self-signed certificate: made once on the controller (under
# the lab cache), installed with every install, so any config may name them.
ADMIN_TOKEN = f"{ETC}/admin-token"
TLS_CERT = f"{ETC}/tls.crt"
TLS_KEY = f"{ETC}/tls.key"
CREDENTIALS_DIR = CACHE_DIR / "daemon"
INCOMING = "/var/cache/wakegrid/incoming"  # wheels in transit, removed once installed
DEFAULT_PORT = 9380
WHEELS_DIR = CACHE_DIR / "wheels"
COLLECTION_PARTS = ("galaxy.yml", "meta", "plugins", "roles", "playbooks", "requirements.txt")
FLEET_SUFFIXES = (".fleet.yml", ".fleet.yaml")
KEEP_PACKAGE_WHEELS = 5  # builds of the wakegrid wheel kept in the cache (one per source state)


@dataclass
class InstallReport:
    """What one install did and how long each part took (seconds)."""

    fleet: str  # where the fleet lives in the edge
    steps: list[tuple[str, float]] = field(default_factory=list)
    pip: str = "skipped"  # "requirements and wakegrid" | "wakegrid only" | "skipped"
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.steps)

    def summary(self) -> str:
        parts = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.steps)
        return f"installed in {self.total:.1f}s (pip: {self.pip}; {parts})"


class _Timer:
    def __init__(self, report: InstallReport, name: str):
        self.report, self.name = report, name

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc) -> None:
        self.report.steps.append((self.name, time.monotonic() - self.started))


class LabDaemon:
    """``wakegrid daemon`` as a systemd service of the lab's edge host."""

    def __init__(self, lab: Lab, log: Log = print):
        self.lab = lab
        self.log = log
        self.host = lab.fleet.edge.host

    @property
    def container(self) -> str:
        return self.lab.plan.host(self.host).container

    # ----------------------------------------------------------------- running things in the edge

    def exec(
        self, cmd: list[str], *, stdin: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """``cmd`` inside the edge host (docker exec, as root), output as text."""
        argv = [DOCKER_CLI, "exec"]
        if stdin is not None:
            argv.append("-i")
        for key, value in (env or {}).items():
            argv += ["-e", f"{key}={value}"]
        try:
            proc = subprocess.run([*argv, self.container, *cmd], input=stdin, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{shlex.join(cmd)} in {self.host} did not finish within {timeout:.0f}s") from None
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
        )

    def _check(self, cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
        proc = self.exec(cmd, **kwargs)
        if proc.returncode:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise LabError(f"{what} failed in {self.host} ({proc.returncode}):\n{tail}")
        return proc

    def _require_edge(self) -> None:
        if not self.lab.is_on(self.host):
            raise LabError(f"{self.host} (the edge) is not running: `wakegrid lab up` first")

    # ----------------------------------------------------------------- install

    def install(
        self, fleet_path: str | Path, config_path: str | Path | None = None, *, dry_run: bool = False
    ) -> InstallReport:
        """Install (or bring up to date) the venv, the collection, the fleet and the unit in the edge.

        Idempotent: pip runs only when the requirements or the wakegrid package changed since the last
        install. A running daemon keeps what it had loaded until it is restarted. ``dry_run``
        makes the unit run ``wakegrid daemon --dry-run`` (decisions logged, nothing done to the lab).
        """
        fleet_path = Path(fleet_path)
        if not fleet_path.name.endswith(FLEET_SUFFIXES):
            raise LabError(f"{fleet_path}: a fleet file's name must end in .fleet.yml (the inventory plugin's rule)")
        fleet_text = _read(fleet_path, "fleet file")
        fleet = parse_fleet(fleet_text, source=str(fleet_path))  # FleetError lists every problem
        config_text = _daemon_config(config_path, self.lab)
        remote_fleet = f"{ETC}/{fleet_path.name}"
        report = InstallReport(fleet=remote_fleet)
        files = {remote_fleet: (fleet_text.encode(), 0o644), CONFIG: (config_text.encode(), 0o644)}
        for source, destination in fleet_files(fleet, fleet_path):
            files[destination] = (Path(source).read_bytes(), 0o600)
        credentials = lab_credentials(self.lab)
        files[ADMIN_TOKEN] = (credentials.token_file.read_bytes(), 0o600)
        files[TLS_CERT] = (credentials.cert.read_bytes(), 0o644)
        files[TLS_KEY] = (credentials.key.read_bytes(), 0o600)
        for missing in unavailable_secrets(fleet):
            report.notes.append(missing)
        files[UNIT_PATH] = (unit_text(remote_fleet, _stop_grace(config_text), dry_run).encode(), 0o644)
        files[ANSIBLE_CFG] = (ANSIBLE_CONFIG.encode(), 0o644)

        self._require_edge()
        with _Timer(report, "check edge"):
            remote_python = self._check(
                ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], "python3 --version"
            ).stdout.strip()
            local_python = "{}.{}".format(*sys.version_info[:2])
            if remote_python != local_python:
                # The wheelhouse holds compiled wheels for the controller's Python.
                raise LabError(
                    f"{self.host} runs Python {remote_python} and this controller {local_python}: "
                    "the wheelhouse is built here, run wakegrid with the same Python version"
                )
            stamp = self._stamp()
        with _Timer(report, "wheelhouse"):
            requirements_key, wheelhouse = ensure_wheelhouse(self.log)
            package_key, package_wheel = ensure_package_wheel(self.log)
        new_requirements = stamp.get("requirements") != requirements_key
        new_package = stamp.get("package") != package_key
        with _Timer(report, "copy"):
            payload = _Payload()
            if new_requirements:
                for wheel in sorted(wheelhouse.glob("*.whl")):
                    payload.add_file(f"{INCOMING}/{wheel.name}", wheel)
            if new_requirements or new_package:
                payload.add_file(f"{INCOMING}/{package_wheel.name}", package_wheel)
            for part in COLLECTION_PARTS:
                payload.add_tree(f"{COLLECTION}.new/{part}", collection_root() / part)
            for destination, (content, mode) in files.items():
                payload.add_bytes(destination, content, mode)
            self._check(
                ["sh", "-c", f"rm -rf {INCOMING} {COLLECTION}.new && tar -x -C / --no-same-owner"],
                "copying the install",
                stdin=payload.close(),
                timeout=300,
            )
        with _Timer(report, "venv+pip"):
            steps = _install_script(
                requirements=new_requirements,
                package=new_package,
                package_wheel=package_wheel.name,
                fleet=remote_fleet,
                stamp=json.dumps({"requirements": requirements_key, "package": package_key}),
            )
            self._check(["sh", "-c", steps], "installing", timeout=900)
        report.pip = (
            ("requirements and wakegrid" if new_requirements else "wakegrid only")
            if (new_requirements or new_package)
            else "skipped"
        )
        if self.is_active():
            report.notes.append(f"{UNIT} keeps running what it had loaded: `wakegrid lab daemon restart` to apply")
        return report

    def _stamp(self) -> dict:
        proc = self.exec(["cat", STAMP])
        if proc.returncode or not proc.stdout.strip():
            return {}
        try:
            return json.loads(proc.stdout)
        except ValueError:
            return {}  # a damaged stamp: reinstall everything

    def installed_fleet(self) -> str | None:
        """The fleet the unit runs (its path in the edge), None when nothing is installed."""
        proc = self.exec(["systemctl", "show", "-p", "ExecStart", "--value", UNIT])
        words = proc.stdout.split()
        for before, word in itertools.pairwise(words):
            if before == "--fleet":
                return word
        return None

    # ----------------------------------------------------------------- operation

    def _require_installed(self) -> None:
        self._require_edge()
        if self.exec(["test", "-f", UNIT_PATH]).returncode:
            raise LabError(f"the daemon is not installed in {self.host}: `wakegrid lab daemon install FLEET` first")

    def start(self, wait: float = 30.0) -> None:
        """Start the service and wait until it listens (or fails: its last log lines say why)."""
        self._require_installed()
        self._check(["systemctl", "start", UNIT], f"systemctl start {UNIT}")
        self._wait_listening(wait)

    def restart(self, wait: float = 30.0) -> None:
        self._require_installed()
        self._check(["systemctl", "restart", UNIT], f"systemctl restart {UNIT}", timeout=300)
        self._wait_listening(wait)

    def stop(self) -> None:
        """SIGTERM, then as long as the unit's stop timeout (the daemon's grace period) allows."""
        self._require_installed()
        self._check(["systemctl", "stop", UNIT], f"systemctl stop {UNIT}", timeout=300)

    def kill(self, timeout: float = 15.0) -> None:
        """SIGKILL the daemon and every process of its unit (playbook runs in flight included)."""
        self._require_installed()
        if not self.is_active():
            raise LabError(f"{UNIT} is not running: nothing to kill")
        self._check(["systemctl", "kill", "-s", "KILL", UNIT], f"systemctl kill {UNIT}")
        deadline = time.monotonic() + timeout
        while self.is_active():
            if time.monotonic() > deadline:
                raise LabError(f"{UNIT} is still active {timeout:.0f}s after SIGKILL")
            time.sleep(0.1)

    def is_active(self) -> bool:
        return self.exec(["systemctl", "is-active", "--quiet", UNIT]).returncode == 0

    def state(self) -> dict[str, str]:
        """systemd's view of the unit: ActiveState, SubState, MainPID, Result, ExecMainStatus, …"""
        props = "ActiveState,SubState,MainPID,Result,ExecMainStatus,ExecMainCode,ActiveEnterTimestamp,InvocationID"
        proc = self.exec(["systemctl", "show", "-p", props, UNIT])
        return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)

    def status(self) -> str:
        self._require_installed()
        return self.exec(["systemctl", "status", "--no-pager", "--lines=0", UNIT]).stdout.rstrip()

    def logs(self, lines: int = 50, all_runs: bool = False) -> str:
        """The daemon's journal lines as it wrote them; those of its current (or last) run unless ``all_runs``."""
        self._require_installed()
        cmd = ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines)]
        invocation = self.state().get("InvocationID", "")
        if all_runs or not invocation:
            cmd += ["-u", UNIT]
        else:
            cmd.append(f"_SYSTEMD_INVOCATION_ID={invocation}")
        return self._check(cmd, "journalctl").stdout.rstrip()

    def listen(self) -> str:
        """The daemon's listen address (host:port) as its installed config says."""
        self._require_installed()
        text = self._check(["cat", CONFIG], f"reading {CONFIG}").stdout
        return _listen_of(text, CONFIG)

    def url(self) -> str:
        """The daemon's HTTP(S) address as seen from the controller."""
        text = self._check(["cat", CONFIG], f"reading {CONFIG}").stdout if self._installed() else ""
        scheme = "https" if _config_of(text).get("tls") else "http"
        host, _, port = self.listen().rpartition(":")
        host = host.strip("[]")
        if host in ("0.0.0.0", "::", ""):
            host = self.lab.fleet.edge.address or self.lab.plan.host(self.host).address or ""
        elif host.startswith("127.") or host in ("::1", "localhost"):
            raise LabError(
                f"the daemon listens on {host}:{port} inside {self.host} only: the controller cannot "
                f"reach it (set listen: {self.lab.fleet.edge.address}:{port} in its config)"
            )
        return f"{scheme}://{host}:{port}"

    def request(
        self, path: str, *, method: str = "GET", body: bytes | None = None, token: bool = True, timeout: float = 10
    ) -> tuple[int, bytes]:
        """A request from the controller: (status, body); with the lab's admin token unless ``token=False``."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {lab_credentials(self.lab).token}"
        request = urllib.request.Request(self.url() + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context()) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the lab daemon's own certificate (and only it)."""
        return ssl.create_default_context(cafile=str(lab_credentials(self.lab).cert))

    def _installed(self) -> bool:
        return self.exec(["test", "-f", CONFIG]).returncode == 0

    def _wait_listening(self, timeout: float) -> None:
        try:
            address = self.url().split("://", 1)[1]
        except LabError:
            address = None  # not reachable from here: being active for a moment is all we can see
        host, _, port = (address or "").rpartition(":")
        deadline = time.monotonic() + timeout
        settled = time.monotonic() + 1.0
        while True:
            active = self.exec(["systemctl", "is-active", UNIT]).stdout.strip()
            if active in ("failed", "inactive"):
                raise LabError(
                    f"{UNIT} stopped right after starting ({self.state().get('Result', '?')}); "
                    f"its last lines:\n{self.logs(20)}"
                )
            if address is not None and _port_open(host, int(port)):
                return
            if address is None and time.monotonic() > settled:
                return
            if time.monotonic() > deadline:
                raise LabError(
                    f"{UNIT} is {active} but nothing listens on {address} after {timeout:.0f}s; "
                    f"its last lines:\n{self.logs(20)}"
                )
            time.sleep(0.2)


# --------------------------------------------------------------------------- what goes into the edge


ANSIBLE_CONFIG = f"""\
# Written by `wakegrid lab daemon install`: ansible in this host finds the collection and reads
# fleet files with its inventory plugin, as docs/install.md tells users to set up.
[defaults]
collections_path = {COLLECTIONS_PATH}

[inventory]
enable_plugins = wakegrid.fleet.fleet, host_list, ini
unparsed_is_failed = True
"""


def unit_text(fleet: str, stop_grace: float = 30.0, dry_run: bool = False) -> str:
    """The systemd unit of the daemon running ``fleet`` (a path in the edge); ``dry_run``: it decides, never acts."""
    command = f"{VENV}/bin/wakegrid daemon --fleet {fleet} --config {CONFIG} --state-dir {STATE_DIR}"
    if dry_run:
        command += " --dry-run"
    return f"""\
# Written by `wakegrid lab daemon install`.
[Unit]
Description=wakegrid reconciler daemon ({PurePosixPath(fleet).name})
After=network-online.target caddy.service wg-quick@wg0.service
Wants=network-online.target

[Service]
Type=simple
ExecStart={command}
ExecReload=/bin/kill -HUP $MAINPID
Environment=WAKEGRID_COLLECTION={COLLECTION}
Environment=PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Environment=PYTHONUNBUFFERED=1
WorkingDirectory={STATE_DIR}
StateDirectory=wakegrid
# SIGTERM to the daemon alone: its playbook runs may finish within its grace period (stop_grace),
# then whatever is left of the unit is killed.
KillMode=mixed
TimeoutStopSec={int(stop_grace) + 30}
# The lab's tests kill and restart the daemon on purpose: systemd must not restart it behind them.
Restart=no

[Install]
WantedBy=multi-user.target
"""


def _install_script(*, requirements: bool, package: bool, package_wheel: str, fleet: str, stamp: str) -> str:
    pip = f"{VENV}/bin/python -m pip install -q --disable-pip-version-check --no-index --find-links {INCOMING}"
    lines = [
        "set -eu",
        f"fresh=0; [ -x {VENV}/bin/python ] || {{ python3 -m venv {VENV}; fresh=1; }}",
        # A half-done earlier install leaves no stamp: the next one starts over.
        f"rm -f {STAMP}" if requirements or package else ":",
    ]
    if requirements:
        lines.append(f"{pip} {INCOMING}/{package_wheel}")
    if package:
        # Same version, new content: pip keeps an installed wakegrid unless forced (a fresh venv has it already).
        forced = f"{pip} --no-deps --force-reinstall {INCOMING}/{package_wheel}"
        lines.append(f"[ $fresh = 1 ] && [ {int(requirements)} = 1 ] || {forced}")
    lines += [
        f"rm -rf {COLLECTION} && mv {COLLECTION}.new {COLLECTION}",
        f"mkdir -p {COLLECTIONS_PATH}/ansible_collections/wakegrid {STATE_DIR}",
        f"ln -sfn ../../../collection {COLLECTIONS_PATH}/ansible_collections/wakegrid/fleet",
        # One fleet at a time: the one the unit names.
        f'for f in {ETC}/*.fleet.yml {ETC}/*.fleet.yaml; do [ "$f" = {fleet} ] || rm -f "$f"; done',
        f"rm -rf {INCOMING}",
        "systemctl daemon-reload",
        f"printf '%s\\n' {shlex.quote(stamp)} > {STAMP}",
    ]
    return "\n".join(lines)


def _daemon_config(path: str | Path | None, lab: Lab) -> str:
    """The daemon config to install: the given file (validated), else the lab's default."""
    if path is None:
        # Every address: the edge's Caddy hands sleeping services' requests over on 127.0.0.1 (the only
        # edge address trusted: edge_addresses' default), the controller uses the API and the dashboard
        # on the WAN address, over HTTPS (the dashboard's session cookie is Secure).
        config = {"listen": f"0.0.0.0:{DEFAULT_PORT}", "admin": admin_section(lab), "tls": TLS_SECTION}
        return "# Written by `wakegrid lab daemon install` (no --config given): the lab's default.\n" + yaml.safe_dump(
            config, sort_keys=False
        )
    text = _read(Path(path), "daemon config")
    try:
        from wakegrid.daemon.config import ConfigError, load_config
    except ImportError:
        return text  # a package without the daemon: nothing to validate against
    try:
        load_config(path)
    except ConfigError as exc:
        raise LabError(str(exc)) from None
    return text


def _stop_grace(config_text: str) -> float:
    try:
        data = yaml.safe_load(config_text) or {}
        from wakegrid.daemon.config import DaemonConfig

        return DaemonConfig.model_validate(data).stop_grace
    except Exception:  # validated before, or a package without the daemon: its default
        return 30.0


def _config_of(text: str, source: str = CONFIG) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise LabError(f"{source} in the edge is not valid YAML: {exc}") from None
    return data if isinstance(data, dict) else {}


def _listen_of(text: str, source: str) -> str:
    listen = _config_of(text, source).get("listen")
    if listen is None:
        try:
            from wakegrid.daemon.config import DaemonConfig

            return DaemonConfig().listen
        except ImportError:
            return f"127.0.0.1:{DEFAULT_PORT}"
    return str(listen)


def fleet_files(fleet: Fleet, fleet_path: Path) -> list[tuple[str, str]]:
    """(path here, path in the edge) of every file the fleet names: SSH keys, secret files, TLS files.

    ``fleet`` is parsed without a base directory, so a relative path is as written: it lives beside
    the fleet file here and beside the installed fleet (in /etc/wakegrid) there.
    """
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name in _named_paths(fleet):
        if Path(name).is_absolute():
            source, destination = name, name
        else:
            source, destination = str(fleet_path.resolve().parent / name), str(PurePosixPath(ETC) / name)
        if destination in seen:
            continue
        seen.add(destination)
        if not Path(source).is_file():
            raise LabError(f"{fleet_path} names {name}, which does not exist here ({source})")
        found.append((source, destination))
    return found


_PATH_FIELDS = {"private_key_file", "ca", "cert"}


def _named_paths(item) -> Iterator[str]:
    if isinstance(item, Secret):
        if item.file:
            yield item.file
    elif isinstance(item, BaseModel):
        for name in type(item).model_fields:
            value = getattr(item, name)
            if name in _PATH_FIELDS and isinstance(value, str):
                yield value
            elif value is not None:
                yield from _named_paths(value)
    elif isinstance(item, dict):
        for value in item.values():
            yield from _named_paths(value)
    elif isinstance(item, (list, tuple)):
        for value in item:
            yield from _named_paths(value)


def unavailable_secrets(fleet: Fleet) -> Iterable[str]:
    """Secrets the daemon cannot read in the edge as installed: from its environment or Ansible Vault."""
    from wakegrid.secret import walk_secrets

    for loc, secret in walk_secrets(fleet):
        if secret.env or secret.source.startswith("vault"):
            where = ".".join(str(part) for part in loc)
            yield f"{where}: {secret.source} is not installed in the edge (only secret files are copied)"


# --------------------------------------------------------------------------- the controller's side


def source_root() -> Path:
    """The checkout holding this package (the wheel is built from it)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "reconciler" / "wakegrid").is_dir():
        raise LabError(f"no wakegrid checkout at {root}: the lab builds the wheel it installs from a checkout")
    return root


def collection_root() -> Path:
    from wakegrid.actuate.runner import collection_root as root

    try:
        return root()
    except FileNotFoundError as exc:
        raise LabError(str(exc)) from None


def _package_sources(root: Path) -> Iterator[Path]:
    yield root / "pyproject.toml"
    yield root / "README.md"
    for path in sorted((root / "reconciler").rglob("*")):
        if (
            path.is_file()
            and "__pycache__" not in path.parts
            and not any(p.endswith(".egg-info") for p in path.parts)
            and path.suffix != ".pyc"
        ):
            yield path


def package_key(root: Path) -> str:
    """Changes whenever the wheel's content would: pyproject.toml, README.md and the package sources."""
    digest = hashlib.sha256()
    for path in _package_sources(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def requirements_key(root: Path) -> str:
    tag = "cp{}{}".format(*sys.version_info[:2])
    return f"{hashlib.sha256((root / 'pyproject.toml').read_bytes()).hexdigest()[:16]}-{tag}"


def ensure_wheelhouse(log: Log = print) -> tuple[str, Path]:
    """(key, directory) of the wheels of every requirement of the package, built once per pyproject.toml."""
    root = source_root()
    key = requirements_key(root)
    target = WHEELS_DIR / key
    if target.is_dir():
        return key, target
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    log(f"building the wheelhouse of wakegrid's requirements into {target} (once per pyproject.toml)")
    with tempfile.TemporaryDirectory(prefix="wheelhouse-", dir=WHEELS_DIR) as tmp:
        wheels = Path(tmp) / "wheels"
        _pip_wheel(root, Path(tmp) / "source", wheels, with_deps=True)
        for own in wheels.glob("wakegrid-*.whl"):
            own.unlink()  # the package itself is built per source state (ensure_package_wheel)
        # Renamed last: an interrupted build never leaves a wheelhouse that looks complete.
        wheels.rename(target)
    return key, target


def ensure_package_wheel(log: Log = print) -> tuple[str, Path]:
    """(key, path) of the wakegrid wheel of the checkout as it is now; rebuilt only when its sources changed."""
    root = source_root()
    key = package_key(root)
    target = WHEELS_DIR / f"wakegrid-{key}"
    built = sorted(target.glob("wakegrid-*.whl")) if target.is_dir() else []
    if built:
        return key, built[0]
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    log("building the wakegrid wheel")
    with tempfile.TemporaryDirectory(prefix="package-", dir=WHEELS_DIR) as tmp:
        wheels = Path(tmp) / "wheels"
        _pip_wheel(root, Path(tmp) / "source", wheels, with_deps=False)
        wheels.rename(target)
    old = sorted(WHEELS_DIR.glob("wakegrid-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in old[KEEP_PACKAGE_WHEELS:]:
        shutil.rmtree(stale, ignore_errors=True)
    return key, next(target.glob("wakegrid-*.whl"))


def _pip_wheel(root: Path, source: Path, out: Path, *, with_deps: bool) -> None:
    # From a copy of the sources: a build in the shared checkout would leave build/ and *.egg-info there.
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, source / name)
    skipped = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc")
    shutil.copytree(root / "reconciler", source / "reconciler", ignore=skipped)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(out), str(source)]
    if not with_deps:
        cmd.insert(4, "--no-deps")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=source.parent)
    if proc.returncode:
        tail = "\n".join(
            line
            for line in (proc.stdout + proc.stderr).splitlines()[-20:]
            if "is ignored: it is neither a file nor a directory" not in line
        )
        raise LabError(f"pip wheel failed ({proc.returncode}):\n{tail}")


class _Payload:
    """A tar stream of files for the edge, extracted at / by ``tar -x``."""

    # Files only, no directory entries: tar creates missing parents itself, and an entry for an
    # existing directory (etc, opt, var) would reset its mode and times.

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w")  # noqa: SIM115 (closed by close())

    def add_bytes(self, path: str, content: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode, info.mtime = len(content), mode, int(time.time())
        self.tar.addfile(info, io.BytesIO(content))

    def add_file(self, path: str, source: Path) -> None:
        info = tarfile.TarInfo(path.lstrip("/"))
        stat = source.stat()  # a symlink's target: the edge gets its content
        info.size, info.mode, info.mtime = stat.st_size, stat.st_mode & 0o777, int(stat.st_mtime)
        with source.open("rb") as handle:
            self.tar.addfile(info, handle)

    def add_tree(self, path: str, source: Path) -> None:
        if source.is_file():
            self.add_file(path, source)
            return
        if not source.is_dir():
            return  # an optional part of the collection
        for item in sorted(source.rglob("*")):
            if "__pycache__" in item.parts or item.suffix == ".pyc" or not item.is_file():
                continue
            self.add_file(f"{path}/{item.relative_to(source).as_posix()}", item)

    def close(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabError(f"{path}: cannot read the {what}: {getattr(exc, 'strerror', None) or exc}") from None


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the lab's admin credentials

TLS_SECTION = {"cert": TLS_CERT, "key": TLS_KEY}


@dataclass(frozen=True)
class Credentials:
    token_file: Path
    cert: Path
    key: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()


def admin_section(lab: Lab) -> dict:
    """The ``admin:`` config of a lab daemon: the lab's token, and this controller among the admin networks."""
    controller = lab.plan.network("wan").gateway  # what the edge sees of this machine
    return {"token": {"file": ADMIN_TOKEN}, "networks": ["127.0.0.0/8", "::1", f"{controller}/32"]}


def lab_credentials(lab: Lab) -> Credentials:
    """The admin token and the daemon's certificate (for the edge's addresses), made on first use."""
    directory = CREDENTIALS_DIR
    credentials = Credentials(directory / "admin-token", directory / "tls.crt", directory / "tls.key")
    if all(p.exists() for p in (credentials.token_file, credentials.cert, credentials.key)):
        return credentials
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    edge = lab.plan.host(lab.fleet.edge.host)
    addresses = {a for a in (lab.fleet.edge.address, edge.address, "127.0.0.1") if a}
    key_pem, cert_pem = _self_signed(lab.fleet.edge.host, sorted(addresses))
    for path, content in ((credentials.key, key_pem), (credentials.cert, cert_pem)):
        path.write_bytes(content)
        path.chmod(0o600)
    credentials.token_file.write_text(secrets.token_urlsafe(32) + "\n")
    credentials.token_file.chmod(0o600)
    return credentials


def _self_signed(name: str, addresses: list[str]) -> tuple[bytes, bytes]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"wakegrid daemon on {name} (lab)")])
    now = datetime.datetime.now(datetime.UTC)
    alt_names = [x509.DNSName(name), *(x509.IPAddress(ipaddress.ip_address(a)) for a in addresses)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)
