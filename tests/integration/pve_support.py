"""Helpers for the PVE emulator tests: a tiny guest image built without any registry, and guest containers."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

DOCKER = shutil.which("docker", path="/usr/bin") or "docker"  # /usr/local/bin/docker is an old, shadowing client
TEST_LABEL = "wakegrid-test"
TEST_LABEL_VALUE = "pve-emulator"

# PID 1 of a container ignores SIGTERM unless it handles it: trap it so a clean shutdown really works,
# and wait on a background sleep so the trap runs at once.
GUEST_INIT = "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"
BUSYBOX_APPLETS = ("sh", "sleep", "httpd", "ls", "cat", "ps")


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([DOCKER, *args], check=check, capture_output=True, text=True, timeout=timeout)


def _busybox_path() -> Path | None:
    """A statically linked busybox (Debian's busybox-static installs /bin/busybox)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            out = subprocess.run(["file", "-L", str(path)], capture_output=True, text=True).stdout
            if "statically linked" in out or "static-pie" in out:
                return path
    return None


def ensure_guest_image() -> str:
    """Build (once) a busybox image with ``docker import``; its tag carries the content hash, so reruns reuse it."""
    busybox = _busybox_path()
    if busybox is None:
        subprocess.run(["apt-get", "install", "-y", "busybox-static"], check=True, capture_output=True, timeout=300)
        busybox = _busybox_path()
        assert busybox is not None, "busybox-static did not provide a static /bin/busybox"
    data = busybox.read_bytes()
    tag = f"wakegrid-test/busybox:pve-{hashlib.sha256(data + GUEST_INIT.encode()).hexdigest()[:12]}"
    if docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in ("bin", "tmp", "media", "srv"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    subprocess.run(
        [DOCKER, "import", "-c", "ENV PATH=/bin", "-c", 'CMD ["/bin/sh", "-c", "' + GUEST_INIT + '"]', "-", tag],
        input=buf.getvalue(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return tag


def create_guest_container(image: str, name: str, run_id: str, running: bool) -> None:
    """A guest is a plain container; PVE power actions start and stop it later."""
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
