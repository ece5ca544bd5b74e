"""The collection installs as Ansible users install collections, and works from there.

Once per session: build the collection artifact (``ansible-galaxy collection build``) and the
``wakegrid`` wheel, then install them as docs/install.md says, outside the checkout: the artifact
into an empty collections path, the wheel (and its requirements, from the package index) into a
fresh venv. Every command then runs from a directory outside the checkout, with an ansible.cfg
written there, with the venv's tools only: nothing of the checkout (its ansible.cfg, its
.venv/collections link, its source tree) can stand in for what the artifact and the wheel ship.

Needs no lab and no network beyond the package index: machines are loopback addresses and the
Proxmox VE API is the lab's emulator run from the installed wheel, on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # the helper next to this file, whatever the rootdir or import mode

REPO = Path(__file__).resolve().parents[2]
TOOLS = Path(sys.executable).parent  # the checkout's venv: only to build, never to run what was built

# plugins/<dir> of the artifact -> the ansible-doc type of its plugins; doc fragments and module
# utils are code for other plugins, documented through them.
DOC_TYPES = {"modules": "module", "inventory": "inventory", "lookup": "lookup", "filter": "filter", "test": "test"}
NOT_PLUGINS = {"doc_fragments", "module_utils", "plugin_utils"}

PVE_TOKEN_ID = "root@pam!wakegrid"
PVE_SECRET = "5a1b2c3d-0000-4000-8000-123456789abc"


def run(cmd: list[str | Path], *, env: dict[str, str] | None = None, cwd: Path, timeout: float = 300):
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class Installed:
    """The artifact and the wheel, installed under ``root``; ``run`` uses only what they installed."""

    root: Path
    artifact: Path
    wheel: Path
    venv: Path
    collections: Path
    work: Path  # the working directory of every command: outside the checkout, holds ansible.cfg
    env: dict[str, str]

    @property
    def collection(self) -> Path:
        return self.collections / "ansible_collections" / "wakegrid" / "fleet"

    def run(self, *cmd: str | Path, timeout: float = 120, check: bool = True, **extra_env: str):
        env = {**self.env, **extra_env}
        argv = [str(self.venv / "bin" / str(cmd[0])), *map(str, cmd[1:])]
        proc = subprocess.run(argv, env=env, cwd=self.work, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    @property
    def localhost(self) -> tuple[str, ...]:
        """ansible-playbook arguments for a play on localhost, whose modules run with the venv's Python."""
        return ("-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={self.venv / 'bin' / 'python'}")

    def artifact_files(self) -> list[str]:
        with tarfile.open(self.artifact) as tar:
            files = json.load(tar.extractfile("FILES.json"))["files"]
        return [entry["name"] for entry in files if entry["ftype"] == "file"]


def outside_env(venv: Path, config: Path) -> dict[str, str]:
    """This process's environment without anything that points Ansible or Python at the checkout."""
    dropped = ("ANSIBLE_", "PYTHON", "VIRTUAL_ENV", "PROXMOX_", "DOCKER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if not p.startswith(str(REPO))]
    env.update(PATH=os.pathsep.join([str(venv / "bin"), *path]), ANSIBLE_CONFIG=str(config), NO_COLOR="1")
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def build_wheel(dist: Path, scratch: Path) -> Path:
    """The wakegrid wheel, built from a copy of the package sources (never in the shared checkout)."""
    source = scratch / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    skipped = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(REPO / "reconciler", source / "reconciler", ignore=skipped)
    run([TOOLS / "python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source], cwd=scratch)
    (wheel,) = dist.glob("wakegrid-*.whl")
    return wheel


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    assert not root.resolve().is_relative_to(REPO.resolve()), "the install must happen outside the checkout"
    dist, work, collections = root / "dist", root / "work", root / "collections"
    for directory in (dist, work, collections):
        directory.mkdir()
    config = work / "ansible.cfg"
    # What docs/install.md tells users to put in their ansible.cfg, with this empty collections path.
    config.write_text(
        textwrap.dedent(
            f"""\
            [defaults]
            collections_path = {collections}
            [inventory]
            enable_plugins = wakegrid.fleet.fleet, host_list, ini
            unparsed_is_failed = True
            """
        )
    )
    build_env = outside_env(TOOLS.parent, config)
    run([TOOLS / "ansible-galaxy", "collection", "build", "--output-path", dist, REPO], env=build_env, cwd=work)
    (artifact,) = dist.glob("wakegrid-fleet-*.tar.gz")
    wheel = build_wheel(dist, root)

    venv = root / "venv"
    run([TOOLS / "python", "-m", "venv", venv], cwd=work)
    env = outside_env(venv, config)
    # As docs/install.md: the artifact's requirements.txt names the wheel, found in dist; the wheel's
    # own requirements come from the package index. No .pyc: saves a third of the time.
    requirements = root / "requirements.txt"
    with tarfile.open(artifact) as tar:
        requirements.write_bytes(tar.extractfile("requirements.txt").read())
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", "--find-links", dist]
    run([*pip, "-r", requirements], env=env, cwd=work, timeout=900)
    # --offline: the collection's dependencies must be met by the ansible package just installed.
    run([venv / "bin" / "ansible-galaxy", "collection", "install", "--offline", artifact], env=env, cwd=work)
    return Installed(root, artifact, wheel, venv, collections, work, env)


def test_the_artifact_ships_the_collection_and_its_requirements_and_nothing_else(installed):
    files = installed.artifact_files()
    for needed in ("requirements.txt", "meta/execution-environment.yml", "meta/runtime.yml", "README.md"):
        assert needed in files
    assert any(f.startswith("playbooks/") for f in files) and any(f.startswith("roles/") for f in files)
    checkout_only = ("reconciler/", "inventories/", "scripts/", "tests/unit/", "tests/integration/", "tests/bench/")
    stray = [
        f
        for f in files
        if f.startswith(checkout_only)
        or f.split("/")[0].startswith(".")
        or f in ("pyproject.toml", "ansible.cfg", "tests/conftest.py")
        or "__pycache__" in f
        or f.endswith((".pyc", ".whl", ".tar.gz"))
        or ".egg-info" in f
    ]
    assert stray == []

    # One version for both halves, and the collection asks for exactly the package it was built with.
    manifest = json.loads((installed.collection / "MANIFEST.json").read_text())["collection_info"]
    wheel_version = installed.wheel.name.split("-")[1]
    assert manifest["version"] == wheel_version
    requirements = (installed.collection / "requirements.txt").read_text().splitlines()
    assert f"wakegrid=={wheel_version}" in requirements
    assert set(manifest["dependencies"]) == {"community.general", "community.docker"}
    ee = yaml.safe_load((installed.collection / "meta" / "execution-environment.yml").read_text())
    assert (installed.collection / ee["dependencies"]["python"]).is_file()


def test_installed_from_the_artifact_and_the_wheel_not_from_the_checkout(installed):
    listing = installed.run("ansible-galaxy", "collection", "list", "wakegrid.fleet").stdout
    assert f"# {installed.collections / 'ansible_collections'}" in listing
    package = installed.run("python", "-c", "import wakegrid; print(wakegrid.__file__)").stdout.strip()
    assert Path(package).is_relative_to(installed.venv), package


def test_the_inventory_plugin_reads_the_example_fleet(installed):
    fleet_file = installed.work / "example.fleet.yml"
    shutil.copy2(REPO / "inventories" / "example" / "example.fleet.yml", fleet_file)
    fleet = yaml.safe_load(fleet_file.read_text())

    graph = installed.run("ansible-inventory", "-i", fleet_file, "--graph").stdout
    for name in [*fleet["nodes"], fleet["edge"]["host"]]:
        assert f"--{name}\n" in graph, f"{name} missing from:\n{graph}"
    for group in ("@edge:", "@machines:", "@lxcs:", "@containers:", *(f"@{site}:" for site in fleet["sites"])):
        assert group in graph, f"{group} missing from:\n{graph}"


def test_every_plugin_of_the_artifact_has_its_documentation(installed):
    by_type: dict[str, list[str]] = {}
    actions = []
    for path in installed.artifact_files():
        parts = path.split("/")
        if parts[0] != "plugins" or len(parts) != 3 or not parts[2].endswith(".py") or parts[2] == "__init__.py":
            continue
        kind, name = parts[1], parts[2][: -len(".py")]
        if kind in NOT_PLUGINS:
            continue
        if kind == "action":  # documented by the module of the same name, which ansible-doc shows
            actions.append(name)
            continue
        assert kind in DOC_TYPES, f"plugins/{kind}: a plugin type this test does not know how to document"
        by_type.setdefault(DOC_TYPES[kind], []).append(name)
    assert set(actions) <= set(by_type["module"]), "an action plugin without a module documenting it"
    assert {"module", "inventory", "lookup"} <= set(by_type)

    for doc_type, names in by_type.items():
        fqcns = [f"wakegrid.fleet.{name}" for name in names]
        proc = installed.run("ansible-doc", "-t", doc_type, "--json", *fqcns)
        docs = json.loads(proc.stdout)
        assert sorted(docs) == sorted(fqcns), proc.stderr
        assert all(docs[fqcn]["doc"]["short_description"] for fqcn in fqcns)
        assert "[WARNING]" not in proc.stderr and "[ERROR]" not in proc.stderr, proc.stderr


@pytest.fixture
def loopback_fleet(installed) -> Iterator[Path]:
    """A one-site fleet on loopback: the gateway's SSH port listens (up), the NAS's refuses (asleep)."""
    with socket.socket() as up, socket.socket() as down:
        up.bind(("127.0.0.1", 0))
        up.listen()
        down.bind(("127.0.0.2", 0))  # bound, never listening: connections are refused at once
        fleet = {
            "plugin": "wakegrid.fleet.fleet",
            "edge": {
                "host": "vps",
                "address": "127.0.0.3",
                "domain": "example.org",
                "wireguard": {"address": "10.200.0.1/24", "port": 51820, "endpoint": "vps.example.org:51820"},
            },
            "sites": {"home": {"gateway": "gw", "lan": "127.0.0.0/8", "wireguard": {"address": "10.200.1.1/24"}}},
            "nodes": {
                "gw": {"kind": "machine", "site": "home", "address": "127.0.0.1", "ssh": {"port": up.getsockname()[1]}},
                "nas": {
                    "kind": "machine",
                    "site": "home",
                    "address": "127.0.0.2",
                    "mac": "52:54:00:12:34:56",
                    "ssh": {"port": down.getsockname()[1]},
                },
            },
        }
        path = installed.work / "loopback.fleet.yml"
        path.write_text(yaml.safe_dump(fleet, sort_keys=False))
        yield path


def test_the_wake_playbook_plans_in_check_mode(installed, loopback_fleet):
    proc = installed.run(
        "ansible-playbook", "-i", loopback_fleet, "wakegrid.fleet.wake", "--check", "-e", "node=nas", timeout=180
    )
    assert "start machine nas via Wake-on-LAN" in proc.stdout, proc.stdout
    assert "check mode: nothing was done" in proc.stdout, proc.stdout
    assert "failed=0" in proc.stdout


@pytest.fixture
def pve(installed) -> Iterator[int]:
    """A guest-less Proxmox VE emulator on 127.0.0.1, run from the installed wheel; yields its port."""
    cluster = installed.root / "pve-cluster"
    port = support.free_port()
    init = (
        "import sys; from wakegrid.lab.pve import init_cluster; "
        "init_cluster(sys.argv[1], 'install-test', {'pve1': {'ip': '127.0.0.1', 'port': int(sys.argv[2])}}, "
        "tokens={sys.argv[3]: sys.argv[4]})"
    )
    installed.run("python", "-c", init, cluster, str(port), PVE_TOKEN_ID, PVE_SECRET)
    log = (installed.root / "pve1.log").open("w")
    cmd = ["-m", "wakegrid.lab.pve", "--node", "pve1", "--cluster-dir", cluster, "--listen", "127.0.0.1"]
    proc = subprocess.Popen(
        [str(installed.venv / "bin" / "python"), *map(str, cmd), "--port", str(port)],
        env=installed.env,
        cwd=installed.work,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> bool:
            assert proc.poll() is None, (installed.root / "pve1.log").read_text()
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True

        support.wait_for(answers, timeout=20, what="the PVE emulator", errors=(OSError,))
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


def pve_connection(port: int) -> dict:
    return {
        "api_host": "127.0.0.1",
        "api_port": port,
        "api_token_id": PVE_TOKEN_ID,
        "api_token_secret": PVE_SECRET,
        "validate_certs": False,
    }


def test_proxmox_connection_options_from_the_action_group_and_from_the_environment(installed, pve):
    playbook = installed.work / "defaults.yml"
    connection = pve_connection(pve)
    plays = [
        {
            "name": "Connection options set once for the group",
            "hosts": "localhost",
            "gather_facts": False,
            "module_defaults": {"group/wakegrid.fleet.proxmox": connection},
            "tasks": [
                {"wakegrid.fleet.proxmox_guest_info": {}, "register": "by_group"},
                {"ansible.builtin.assert": {"that": ["by_group.guests == []"]}},
            ],
        },
        {
            "name": "Connection options from community.proxmox's environment variables",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "wakegrid.fleet.proxmox_guest_info": {},
                    "environment": {
                        "PROXMOX_HOST": "127.0.0.1",
                        "PROXMOX_PORT": str(pve),
                        "PROXMOX_TOKEN_ID": PVE_TOKEN_ID,
                        "PROXMOX_TOKEN_SECRET": PVE_SECRET,
                        "PROXMOX_VALIDATE_CERTS": "false",
                    },
                    "register": "by_env",
                },
                {"ansible.builtin.assert": {"that": ["by_env.guests == []"]}},
            ],
        },
    ]
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    proc = installed.run("ansible-playbook", *installed.localhost, playbook, "-v")
    assert "failed=0" in proc.stdout, proc.stdout
    assert PVE_SECRET not in proc.stdout + proc.stderr


def test_docker_connection_options_from_the_action_group(installed):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # nothing listens: the module must say it tried this very address
        docker_host = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
        playbook = installed.work / "docker-defaults.yml"
        play = {
            "hosts": "localhost",
            "gather_facts": False,
            "module_defaults": {"group/wakegrid.fleet.docker": {"docker_host": docker_host, "api_timeout": 2}},
            "tasks": [{"wakegrid.fleet.docker_container_power": {"name": "web", "state": "started"}}],
        }
        playbook.write_text(yaml.safe_dump([play], sort_keys=False))
        proc = installed.run("ansible-playbook", *installed.localhost, playbook, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"cannot reach the Docker API at {docker_host}" in proc.stdout, proc.stdout


def test_the_old_discovery_module_names_are_deprecated_redirects(installed, pve):
    """proxmox_discover and docker_discover still run, as proxmox_guest_info and docker_container_info, and warn."""
    playbook = installed.work / "old-names.yml"
    play = {
        "hosts": "localhost",
        "gather_facts": False,
        # The group lists only the new names: the old one gets the defaults through its redirect.
        "module_defaults": {"group/wakegrid.fleet.proxmox": pve_connection(pve)},
        "tasks": [
            {"wakegrid.fleet.proxmox_discover": {}, "register": "old"},
            {"ansible.builtin.assert": {"that": ["old.guests == []"]}},
        ],
    }
    playbook.write_text(yaml.safe_dump([play], sort_keys=False))
    proc = installed.run("ansible-playbook", *installed.localhost, playbook)
    assert "failed=0" in proc.stdout, proc.stdout
    warning = " ".join(proc.stderr.split())
    assert "wakegrid.fleet.proxmox_discover has been deprecated. Use wakegrid.fleet.proxmox_guest_info" in warning

    docs = json.loads(installed.run("ansible-doc", "-t", "module", "--json", "wakegrid.fleet.docker_discover").stdout)
    assert docs["wakegrid.fleet.docker_discover"]["doc"]["module"] == "docker_container_info"
