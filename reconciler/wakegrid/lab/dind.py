"""A real Docker Engine inside a lab guest (``vm-docker``), without ``--privileged``: the recipe as data.

The guest is a container of the lab host image (systemd as PID 1, Debian's ``docker.io``
installed). Its dockerd serves the Engine API on TCP to the lab networks, keeps its data on
a Docker volume, and its containers die with the guest. Why each setting is there, and
what was tried and failed, is in docs/lab-docker-in-guest.md; in short:

- ``SYS_ADMIN``: systemd (mounts, cgroups) and runc (namespaces, mounts, pivot_root);
- ``NET_ADMIN``: dockerd's iptables rules and bridges (docker0, port publishing);
- ``seccomp=unconfined``: runc calls keyctl() to give each container a session keyring,
  which Docker's default seccomp profile denies ("unable to join session keyring");
- ``apparmor=unconfined``: docker-default denies mount() on AppArmor hosts (harmless without);
- cgroup v1 from the host (``cgroupns=host``, /sys/fs/cgroup rw) + dockerd's *systemd*
  cgroup driver, so inner containers nest under the guest's own cgroup (with cgroupfs they
  would land in the host's top-level ``/docker/<id>`` beside the guest, outside its limits,
  and leave empty cgroups behind when the guest is killed);
- ``/var/lib/docker`` on a volume: overlay2 cannot stack on the guest's overlayfs root (dockerd
  then silently falls back to vfs: a full copy per layer); pinning ``storage-driver`` makes a
  missing volume a loud failure instead;
- ``"tls": false`` stated explicitly: dockerd 20.10 otherwise sleeps 15 s at start-up when it
  listens on TCP without TLS, a deprecation nag, which is a 15 s longer wake of vm-docker.

No registry: images go in with ``docker save IMAGE | docker -H tcp://GUEST:2375 load``
(or the SDK's ``images.load``).
"""

from __future__ import annotations

import json
from typing import Any

DOCKER_API_PORT = 2375
DOCKER_DATA_DIR = "/var/lib/docker"
DIND_CAPS = ("SYS_ADMIN", "NET_ADMIN")
DIND_SECURITY_OPT = ("seccomp=unconfined", "apparmor=unconfined")
# Inner containers on dockerd's bridges reach the lab through the guest: forwarding on, stated
# rather than inherited from whatever the kernel gives a new network namespace.
DIND_SYSCTLS = {"net.ipv4.ip_forward": "1"}
SYSTEMD_TMPFS = {"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec"}
SYSTEMD_STOP_SIGNAL = "SIGRTMIN+3"  # systemd halts cleanly on it; SIGTERM only makes it re-exec
# For ``container.stop(timeout=...)`` (the SDK's create() has no stop_timeout): systemd stops
# docker.service first, which gives each inner container up to 10 s.
GUEST_STOP_TIMEOUT = 30
GUEST_UNITS = ("containerd.service", "docker.service")  # to enable in the guest (the image ships them disabled)

DAEMON_JSON_PATH = "/etc/docker/daemon.json"
DOCKER_DROPIN_PATH = "/etc/systemd/system/docker.service.d/wakegrid-lab.conf"
# Debian's docker.service passes -H fd://, and dockerd refuses "hosts" in daemon.json when -H
# is also on its command line: the listening sockets are set in one place, daemon.json.
DOCKER_DROPIN = """\
# wakegrid lab: listening sockets come from /etc/docker/daemon.json ("hosts"),
# which dockerd refuses when -H is also given on the command line.
[Service]
ExecStart=
ExecStart=/usr/sbin/dockerd --containerd=/run/containerd/containerd.sock
"""


def daemon_config(api_port: int = DOCKER_API_PORT, storage_driver: str = "overlay2") -> dict[str, Any]:
    """The guest's /etc/docker/daemon.json as a dict."""
    return {
        "hosts": ["unix:///var/run/docker.sock", f"tcp://0.0.0.0:{api_port}"],
        "tls": False,  # explicit, or dockerd 20.10 sleeps 15 s before serving plain TCP
        "exec-opts": ["native.cgroupdriver=systemd"],  # nest inner containers in the guest's cgroup
        "storage-driver": storage_driver,  # fail loudly, not fall back to vfs, if /var/lib/docker is not a volume
    }


def dockerd_command(api_port: int = DOCKER_API_PORT, storage_driver: str = "overlay2") -> list[str]:
    """The same daemon as a command line, for a guest that runs dockerd without systemd.

    Use it *instead of* daemon.json (dockerd refuses a setting given both ways). Without systemd,
    the systemd cgroup driver is unavailable: the cgroupfs driver is used and the inner
    containers' cgroups then sit in the host's /docker/ tree (see docs/lab-docker-in-guest.md).
    """
    return [
        "/usr/sbin/dockerd",
        "-H", "unix:///var/run/docker.sock",
        "-H", f"tcp://0.0.0.0:{api_port}",
        "--tls=false",
        f"--storage-driver={storage_driver}",
        "--containerd=/run/containerd/containerd.sock",
    ]  # fmt: skip


def guest_files(api_port: int = DOCKER_API_PORT, storage_driver: str = "overlay2") -> dict[str, str]:
    """Files to put into the guest before its first boot: path -> content."""
    return {
        DAEMON_JSON_PATH: json.dumps(daemon_config(api_port, storage_driver), indent=2) + "\n",
        DOCKER_DROPIN_PATH: DOCKER_DROPIN,
    }


def create_kwargs(
    *,
    image: str,
    name: str,
    network: str,
    data_volume: str,
    hostname: str | None = None,
    labels: dict[str, str] | None = None,
    extra_caps: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Keyword arguments for the docker SDK's ``client.containers.create(**kwargs)`` / ``run``.

    ``data_volume`` is the Docker volume holding the guest's /var/lib/docker (images and inner
    containers survive a guest power cycle, like a VM disk). Put :func:`guest_files` in before
    the first start and enable :data:`GUEST_UNITS`. To choose the address on ``network``, add
    ``networking_config={network: client.api.create_endpoint_config(ipv4_address=...)}``.
    """
    return {
        "image": image,
        "command": ["/sbin/init"],
        "name": name,
        "hostname": hostname or name,
        "labels": dict(labels or {}),
        "environment": {"container": "docker"},  # systemd's container detection
        "network": network,
        "cap_add": [*DIND_CAPS, *(c for c in extra_caps if c not in DIND_CAPS)],
        "security_opt": list(DIND_SECURITY_OPT),
        "sysctls": dict(DIND_SYSCTLS),
        "cgroupns": "host",
        "tmpfs": dict(SYSTEMD_TMPFS),
        "volumes": {
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
            data_volume: {"bind": DOCKER_DATA_DIR, "mode": "rw"},
        },
        "stop_signal": SYSTEMD_STOP_SIGNAL,
    }
