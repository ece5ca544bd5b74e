"""Scaffolding shared by the integration tests: skip reasons, a registry-free busybox image, Docker
test networks, running the collection's modules through ``ansible`` / ``ansible-playbook``, and the
lab's PVE emulator with busybox containers as guests.

Plain helpers, no fixtures (tests/integration/conftest.py holds the shared lab fixture). Import it so
that it is found whatever the rootdir or import mode::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import support
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "reconciler" / "wakegrid" / "lab"
DOCKER = shutil.which("docker", path="/usr/bin") or "docker"  # /usr/local/bin/docker is an old, shadowing client
ANSIBLE = str(Path(sys.executable).with_name("ansible"))
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
BUSYBOX_IMAGE = "wakegrid-test/busybox"
# The ad-hoc 'minimal' callback: "localhost | CHANGED => {...}", the JSON ending at the first "}" line.
ADHOC_RESULT_RE = re.compile(r"^localhost \| (\w+!?) => (\{.*?^\})", re.M | re.S)


# --------------------------------------------------------------------------- skip reasons


def root_reason(why: str = "") -> str | None:
    """None as root, else ``needs root`` followed by ``why``."""
    if os.geteuid() == 0:
        return None
    return f"needs root {why}" if why else "needs root"


def docker_cli_reason() -> str | None:
    """None when the docker CLI reaches a Docker Engine, else why not."""
    try:
        res = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker CLI unusable: {exc}"
    return None if res.returncode == 0 else f"Docker Engine unavailable: {res.stderr.strip()[:200]}"


def docker_client(base_url: str | None = None, timeout: int = 60):
    """A docker SDK client that answered a ping (``DOCKER_HOST`` & co. without ``base_url``), or a skip."""
    docker_sdk = pytest.importorskip("docker")
    try:
        if base_url:
            client = docker_sdk.DockerClient(base_url=base_url, timeout=timeout)
        else:
            client = docker_sdk.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:
        pytest.skip(f"needs a Docker Engine{' on ' + base_url if base_url else ''}: {exc}")
    return client


# --------------------------------------------------------------------------- processes and ports


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """The docker CLI."""
    return subprocess.run([DOCKER, *args], check=check, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
    errors: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``predicate`` until it returns something true, and return that; fail after ``timeout``.

    ``errors`` are exceptions that only mean "not yet" (a service still starting).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except errors:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- busybox image


def _is_static_elf64(path: str) -> bool:
    """No PT_INTERP program header: the binary runs in an image without a libc."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:5] != b"\x7fELF\x02":
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def static_busybox() -> str | None:
    """A statically linked busybox (Debian's busybox-static installs /bin/busybox), or None."""
    return next((path for path in BUSYBOX_CANDIDATES if os.path.exists(path) and _is_static_elf64(path)), None)


def ensure_static_busybox() -> str:
    """The static busybox, installing busybox-static when there is none."""
    busybox = static_busybox()
    if busybox is None:
        subprocess.run(["apt-get", "install", "-y", "busybox-static"], check=True, capture_output=True, timeout=300)
        busybox = static_busybox()
        assert busybox is not None, "busybox-static did not provide a static /bin/busybox"
    return busybox


def busybox_rootfs(busybox: str, applets: Iterable[str] = (), directories: Sequence[str] = ()) -> bytes:
    """A tar for ``docker import``: ``directories`` (tmp sticky), bin/busybox and a symlink per applet."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    return buffer.getvalue()


def import_busybox(client, tag: str, changes: Sequence[str] = (), **rootfs) -> str:
    """``wakegrid-test/busybox:<tag>`` imported through the SDK client (``rootfs``: see busybox_rootfs)."""
    data = busybox_rootfs(ensure_static_busybox(), **rootfs)
    client.api.import_image_from_data(data, repository=BUSYBOX_IMAGE, tag=tag, changes=list(changes) or None)
    return f"{BUSYBOX_IMAGE}:{tag}"


# --------------------------------------------------------------------------- Docker networks and clean-up


def create_test_lan(client, name: str, labels: dict[str, str]):
    """An internal bridge network on a free 10.239.N.0/24 (other lab runs may hold some): (network, subnet)."""
    from docker.errors import APIError
    from docker.types import IPAMConfig, IPAMPool

    for n in random.sample(range(100, 250), 20):
        subnet = ipaddress.ip_network(f"10.239.{n}.0/24")
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet))])
        try:
            network = client.networks.create(name, driver="bridge", internal=True, ipam=ipam, labels=labels)
        except APIError as exc:
            if "overlap" in str(exc).lower():
                continue
            raise
        return network, subnet
    pytest.fail("no free 10.239.N.0/24 for the test LAN")


def remove_labelled(client, label: str) -> None:
    """Remove the containers (with their volumes), volumes, networks and images carrying ``label`` (k=v)."""
    filters = {"label": label}
    for container in client.containers.list(all=True, filters=filters):
        container.remove(force=True, v=True)
    for volume in client.volumes.list(filters=filters):
        volume.remove(force=True)
    for network in client.networks.list(filters=filters):
        network.remove()
    for image in client.images.list(filters=filters):
        client.images.remove(image.id, force=True)


# --------------------------------------------------------------------------- Ansible


def collections_path(root: Path) -> Path:
    """``root`` made a collections path where ansible_collections/wakegrid/fleet is this repository."""
    link = root / "ansible_collections" / "wakegrid" / "fleet"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO)
    return root


def ansible_env(collections: Path, config: Path | None = None, **settings: str) -> dict[str, str]:
    """The environment of an Ansible run: the linked collection, no colour, then ``settings``.

    With ``config``, Ansible reads that file, created empty when missing: neither the repository's
    ansible.cfg nor the user's.
    """
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1"}
    if config is not None:
        if not config.exists():
            config.write_text("[defaults]\n")
        env["ANSIBLE_CONFIG"] = str(config)
    env.update(settings)
    return env


def adhoc_command(
    module: str,
    args: dict,
    *flags: str,
    prefix: Sequence[str] = (),
    inventory: bool = True,
    python: str | None = sys.executable,
) -> list[str]:
    """``ansible localhost -c local -m wakegrid.fleet.<module> -a <args as JSON> <flags>``.

    ``prefix`` runs it elsewhere (``ip netns exec NS``); ``inventory`` names localhost explicitly;
    ``python`` is the interpreter the module runs with (None: Ansible's discovery).
    """
    cmd = [*prefix, ANSIBLE, "localhost"]
    if inventory:
        cmd += ["-i", "localhost,"]
    cmd += ["-c", "local"]
    if python:
        cmd += ["-e", f"ansible_python_interpreter={python}"]
    return [*cmd, "-m", f"wakegrid.fleet.{module}", "-a", json.dumps(args), *flags]


def run_adhoc(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[str, dict, str]:
    """Run an ad-hoc command; return (status, module result, all output)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    match = ADHOC_RESULT_RE.search(proc.stdout)
    assert match, f"no result in the output of {cmd}:\n{proc.stdout}\n{proc.stderr}"
    return match.group(1), json.loads(match.group(2)), proc.stdout + proc.stderr


# --------------------------------------------------------------------------- PVE emulator and its guests

TEST_LABEL = "wakegrid-test"
TEST_LABEL_VALUE = "pve-emulator"

# PID 1 of a container ignores SIGTERM unless it handles it: trap it so a clean shutdown really works,
# and wait on a background sleep so the trap runs at once.
GUEST_INIT = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "ls", "cat", "ps")


def ensure_guest_image() -> str:
    """Build (once) a busybox image with ``docker import``; its tag carries the content hash, so reruns reuse it."""
    busybox = ensure_static_busybox()
    data = Path(busybox).read_bytes()
    tag = f"wakegrid-test/busybox:pve-{hashlib.sha256(data + GUEST_INIT.encode()).hexdigest()[:12]}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    subprocess.run(
        [DOCKER, "import", "-c", "ENV PATH=/bin", "-c", 'CMD ["/bin/sh", "-c", "' + GUEST_INIT + '"]', "-", tag],
        input=busybox_rootfs(busybox, applets=BUSYBOX_APPLETS, directories=("bin", "tmp", "media", "srv")),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tag


def create_guest_container(image: str, name: str, run_id: str, running: bool, *options: str) -> None:
    """A guest is a plain container; PVE power actions start and stop it later.

    ``options`` are more ``docker create`` options.
    """
    docker("rm", "-f", name, check=False)
    docker(
        "create",
        "--name",
        name,
        "--label",
        f"{TEST_LABEL}={TEST_LABEL_VALUE}",
        "--label",
        f"wakegrid-test-run={run_id}",
        "--network",
        "none",
        *options,
        image,
    )
    if running:
        docker("start", name)


def remove_test_containers(run_id: str) -> None:
    out = docker("ps", "-aq", "--filter", f"label=wakegrid-test-run={run_id}", check=False).stdout.split()
    if out:
        docker("rm", "-f", *out, check=False)


def container_running(name: str) -> bool:
    out = docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
    return out == "true"


def start_emulator(root: Path, node: str, cluster_dir: Path, port: int, *options: str) -> subprocess.Popen:
    """The emulator for ``node`` on 127.0.0.1:``port``, logging to ``root/<node>.log``, once its API answers.

    It runs as a loose directory with ``-I -S`` (no site-packages, next to engine.py), as inside a lab host.
    """
    log_path = root / f"{node}.log"
    cmd = [sys.executable, "-I", "-S", str(LAB_DIR / "pve"), "--node", node, "--cluster-dir", str(cluster_dir)]
    cmd += ["--listen", "127.0.0.1", "--port", str(port), *options]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()
        try:
            requests.get(f"https://127.0.0.1:{port}/api2/json/version", verify=False, timeout=2)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f"emulator {node} did not come up:\n{log_path.read_text()}")


def stop_emulators(procs: dict[str, subprocess.Popen], run_id: str) -> None:
    """Kill the emulators, then remove the guest containers of this run."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    remove_test_containers(run_id)
