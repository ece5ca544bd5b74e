"""Build the lab's host image: debootstrap + ``docker import``, no registry.

The debootstrapped root filesystem is cached as a tarball (keyed by the build
inputs) so a rebuilt Docker (or ``lab down --purge``) re-imports in seconds
instead of re-downloading Debian.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CACHE_DIR = Path(os.environ.get("WAKEGRID_LAB_CACHE", "/var/cache/wakegrid-lab"))
IMAGE_REPO = "wakegrid-lab/host"

# What every lab host needs: systemd as PID 1, sshd + python3 for Ansible, the
# network tools the roles use, WireGuard in userspace, and Docker (enabled only
# on nodes with a docker capability). python3-venv: the reconciler daemon runs from a venv
# on the edge (`wakegrid lab daemon install`), and Debian's python3 has no ensurepip without it.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "python3-venv",
    "sudo",
    "iproute2",
    "iputils-ping",
    "procps",
    "curl",
    "ca-certificates",
    "openssl",
    "netcat-openbsd",
    "wireguard-tools",
    "wireguard-go",
    "docker.io",
    "iptables",
)


class ImageError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageSpec:
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    packages: tuple[str, ...] = PACKAGES

    def key(self) -> str:
        """Content key: changes whenever anything that shapes the rootfs changes."""
        h = hashlib.sha256()
        h.update(f"{self.suite}\n{self.mirror}\n{','.join(self.packages)}\n".encode())
        h.update(_customize_script().encode())
        return h.hexdigest()[:12]

    @property
    def tag(self) -> str:
        return f"{IMAGE_REPO}:{self.suite}-{self.key()}"

    @property
    def tarball(self) -> Path:
        return CACHE_DIR / f"rootfs-{self.suite}-{self.key()}.tar"


def _customize_script() -> str:
    return resources.files("wakegrid.lab").joinpath("files/customize-rootfs.sh").read_text()


def image_exists(client, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_image(client, spec: ImageSpec, log=print) -> str:
    """Return the tag of the lab image, building or importing it only if missing."""
    if image_exists(client, spec.tag):
        return spec.tag
    if not spec.tarball.exists():
        build_rootfs(spec, log)
    log(f"importing {spec.tarball} as {spec.tag}")
    # (docker 20.10's import refuses STOPSIGNAL: containers get it at create time.)
    changes = [
        "ENV container=docker",
        'CMD ["/sbin/init"]',
    ]
    cmd = ["/usr/bin/docker", "import"]
    for c in changes:
        cmd += ["--change", c]
    cmd += [str(spec.tarball), spec.tag]
    # The SDK's import_image streams the tarball through Python; the CLI lets
    # the daemon read it straight from disk.
    _run(cmd)
    return spec.tag


def build_rootfs(spec: ImageSpec, log=print) -> Path:
    if os.geteuid() != 0:
        raise ImageError("building the lab image needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        log("installing debootstrap")
        _run(["apt-get", "install", "-y", "--no-install-recommends", "debootstrap"])
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE_DIR) as tmp:
        root = Path(tmp) / "root"
        log(f"debootstrap {spec.suite} into {root} (a few minutes, once)")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(spec.packages)}",
                spec.suite,
                str(root),
                spec.mirror,
            ]
        )
        script = root / "tmp/customize-rootfs.sh"
        script.write_text(_customize_script())
        _run(["chroot", str(root), "/bin/sh", "/tmp/customize-rootfs.sh"])
        script.unlink()
        partial = spec.tarball.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(partial), "."])
        # Rename last so an interrupted build never leaves a tarball that looks complete.
        partial.rename(spec.tarball)
    log(f"cached rootfs {spec.tarball}")
    return spec.tarball


def remove_images(client, log=print) -> None:
    for image in client.images.list(name=IMAGE_REPO):
        for tag in image.tags:
            log(f"removing image {tag}")
            client.images.remove(tag, force=True)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise ImageError(f"{' '.join(cmd[:3])} … failed ({proc.returncode}):\n{tail}")
