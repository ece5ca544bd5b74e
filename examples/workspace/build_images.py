#!/usr/bin/env python3
"""Build the workspace example's two images, ``api`` and ``db``, as ``docker save`` tarballs, with no registry.

    sudo .venv/bin/python examples/workspace/build_images.py [--out DIR]

Each image is two layers: a Debian root filesystem made by ``debootstrap`` (the lab's suite and mirror,
``minbase`` plus the image's packages: Debian's ``python3-psycopg2`` for the API, ``postgresql-15`` for
the database), and the example's own files. The tarball is written here directly in the format
``docker load`` reads (``manifest.json``, the image config, one ``layer.tar`` per layer), so building
needs no Docker Engine at all, and its image ID (the digest of the config) depends only on the content:
two builds of the same inputs give the same ID, and ``wakegrid.fleet.docker_stack`` then loads nothing.

Everything is cached by content hash under DIR (default ``/var/cache/wakegrid-lab/workspace``): the
rootfs by its suite, mirror, packages and clean-up script (built once, a few minutes), the image by the
rootfs and the example's files. A second run with nothing changed only checks the cache (well under a
second). The outputs the fleet names (``stacks.workspace`` in ``inventories/lab/workspace.fleet.yml``):

- ``DIR/api.tar`` and ``DIR/db.tar``: symbolic links to the current ``<name>-<key>.tar``;
- ``DIR/images.env``: ``WORKSPACE_API_IMAGE=wakegrid-workspace/api:<key>`` and ``WORKSPACE_DB_IMAGE=…``,
  the tags the tarballs carry, for the Compose file's interpolation;
- ``DIR/secrets/db-password`` and ``DIR/secrets/api-token`` (mode 0600): random values made once, the
  lab's secrets of the stack (a real fleet takes them from wherever it keeps its secrets).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wakegrid.lab.image import CACHE_DIR, ImageSpec

HERE = Path(__file__).resolve().parent
REPOSITORY = "wakegrid-workspace"
DEFAULT_SUITE, DEFAULT_MIRROR = ImageSpec().suite, ImageSpec().mirror  # the lab hosts' Debian
DEFAULT_OUT = CACHE_DIR / "workspace"
FIXED_TIME = 0  # every file and the image config carry it: the same inputs make the same bytes
CHUNK = 1 << 20
SECRETS = ("db-password", "api-token")

# Run in the chroot after debootstrap: no package caches, documentation or the cluster the postgresql
# package creates on install (the container initialises its own, on its volume); nor PostgreSQL's JIT,
# a loadable module that alone pulls in LLVM (a third of the image): without it PostgreSQL runs with jit off.
CLEANUP = """set -e
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/info/*
rm -rf /var/lib/postgresql/15/main /etc/postgresql/15/main
rm -rf /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/postgresql/15/lib/bitcode /usr/lib/x86_64-linux-gnu/libLLVM*
"""


@dataclass(frozen=True)
class Image:
    name: str
    packages: tuple[str, ...]
    files: dict[str, tuple[str, int]]  # path in the image -> (file in examples/workspace, mode)
    config: dict

    def rootfs_key(self, suite: str, mirror: str) -> str:
        text = f"{suite}\n{mirror}\n{','.join(self.packages)}\n{CLEANUP}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def key(self, suite: str, mirror: str) -> str:
        digest = hashlib.sha256(self.rootfs_key(suite, mirror).encode())
        for target, (source, mode) in sorted(self.files.items()):
            digest.update(f"\n{target}\n{mode}\n".encode())
            digest.update((HERE / source).read_bytes())
        digest.update(json.dumps(self.config, sort_keys=True).encode())
        return digest.hexdigest()[:12]


IMAGES = (
    Image(
        name="api",
        packages=("python3", "python3-psycopg2"),
        files={
            "opt/workspace/app.py": ("api/app.py", 0o755),
            "usr/local/bin/workspace-api": ("api/entrypoint.sh", 0o755),
        },
        config={
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONUNBUFFERED=1"],
            "Cmd": ["/usr/local/bin/workspace-api"],
            "WorkingDir": "/opt/workspace",
            "ExposedPorts": {"8000/tcp": {}},
        },
    ),
    Image(
        name="db",
        packages=("postgresql-15",),
        files={"usr/local/bin/workspace-db": ("db/entrypoint.sh", 0o755)},
        config={
            "Env": [
                "PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
                "PGDATA=/var/lib/postgresql/data",
            ],
            "Cmd": ["/usr/local/bin/workspace-db"],
            "ExposedPorts": {"5432/tcp": {}},
            "Volumes": {"/var/lib/postgresql/data": {}},
        },
    ),
)


class BuildError(RuntimeError):
    pass


def build_all(out: Path, suite: str = DEFAULT_SUITE, mirror: str = DEFAULT_MIRROR, log=print) -> dict[str, str]:
    """Build (or find in the cache) every image; returns ``{name: tag}`` and writes the stable outputs."""
    out.mkdir(parents=True, exist_ok=True)
    tags: dict[str, str] = {}
    for image in IMAGES:
        key = image.key(suite, mirror)
        tag = f"{REPOSITORY}/{image.name}:{key}"
        tarball = out / f"{image.name}-{key}.tar"
        if tarball.exists():
            log(f"{image.name}: cached {tarball}")
        else:
            rootfs = ensure_rootfs(image, out, suite, mirror, log)
            log(f"{image.name}: writing {tarball}")
            write_image(image, rootfs, tag, tarball)
        _replace_symlink(out / f"{image.name}.tar", tarball.name)
        for older in out.glob(f"{image.name}-*.tar"):
            if older != tarball:
                older.unlink()
        tags[image.name] = tag
    ensure_secrets(out / "secrets", log)
    env = "".join(f"WORKSPACE_{name.upper()}_IMAGE={tag}\n" for name, tag in tags.items())
    env_file = out / "images.env"
    if not env_file.exists() or env_file.read_text() != env:
        env_file.write_text(env)
    return tags


def ensure_secrets(directory: Path, log=print) -> None:
    """The lab's secrets of the stack (``stacks.workspace.secrets`` reads them as ``{file: …}``), made once."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in SECRETS:
        path = directory / name
        if not path.exists():
            log(f"writing a new secret {path}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as stream:
                stream.write(secrets.token_urlsafe(24))


def ensure_rootfs(image: Image, out: Path, suite: str, mirror: str, log=print) -> Path:
    tarball = out / f"rootfs-{image.name}-{image.rootfs_key(suite, mirror)}.tar"
    if tarball.exists():
        return tarball
    if os.geteuid() != 0:
        raise BuildError("building a root filesystem needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        raise BuildError("debootstrap is missing: apt-get install debootstrap")
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=out) as tmp:
        root = Path(tmp) / "root"
        log(f"{image.name}: debootstrap {suite} with {', '.join(image.packages)} (a few minutes, once)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(image.packages)}", suite, str(root), mirror])
        _run(["chroot", str(root), "/bin/sh", "-c", CLEANUP])
        partial = tarball.with_suffix(".partial")
        # Sorted names, numeric owners and no atime: the same tree gives the same bytes.
        _run(["tar", "--numeric-owner", "--sort=name", "--xattrs", "-C", str(root), "-cf", str(partial), "."])
        partial.rename(tarball)  # last, so an interrupted build never leaves a tarball that looks complete
    return tarball


def files_layer(image: Image) -> bytes:
    """The example's files as a tar layer, with fixed owners and times."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = sorted({str(parent) for target in image.files for parent in Path(target).parents} - {"."})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, FIXED_TIME
            tar.addfile(info)
        for target, (source, mode) in sorted(image.files.items()):
            data = (HERE / source).read_bytes()
            info = tarfile.TarInfo(target)
            info.size, info.mode, info.mtime = len(data), mode, FIXED_TIME
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_image(image: Image, rootfs: Path, tag: str, tarball: Path) -> None:
    """A ``docker save`` tarball (manifest.json, config, one directory per layer) of rootfs + files."""
    layers = [(_sha256_file(rootfs), rootfs.stat().st_size, rootfs.open("rb")), None]
    files = files_layer(image)
    layers[1] = (hashlib.sha256(files).hexdigest(), len(files), io.BytesIO(files))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer[0]}" for layer in layers]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"debootstrap minbase + {' '.join(image.packages)}"},
            {"created": "1970-01-01T00:00:00Z", "created_by": "examples/workspace files"},
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer[0]}/layer.tar" for layer in layers]}]
    partial = tarball.with_suffix(".partial")
    try:
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "manifest.json", json.dumps(manifest).encode())
            _add(tar, config_name, config_bytes)
            for digest, size, stream in layers:
                info = tarfile.TarInfo(f"{digest}/layer.tar")
                info.size, info.mode, info.mtime = size, 0o644, FIXED_TIME
                with stream:
                    tar.addfile(info, stream)
        partial.rename(tarball)
    finally:
        partial.unlink(missing_ok=True)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, FIXED_TIME
    tar.addfile(info, io.BytesIO(data))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_symlink(link: Path, target: str) -> None:
    if link.is_symlink() and os.readlink(link) == target:
        return
    temporary = link.with_name(f".{link.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    temporary.replace(link)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BuildError(f"{' '.join(cmd[:3])} … failed ({proc.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"cache and output directory ({DEFAULT_OUT})")
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    parser.add_argument("--mirror", default=DEFAULT_MIRROR)
    args = parser.parse_args(argv)
    try:
        tags = build_all(args.out, args.suite, args.mirror)
    except BuildError as exc:
        print(f"build_images: {exc}", file=sys.stderr)
        return 1
    for name, tag in tags.items():
        print(f"{name}: {tag} ({args.out / (name + '.tar')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
