"""The Docker-in-guest recipe (wakegrid.lab.dind) against a real Docker Engine.

A guest built from the lab host image with exactly ``dind.create_kwargs`` + ``dind.guest_files``
must: serve the Engine API on TCP 2375 to the lab network quickly, take an image without a
registry (save | load), run a container whose published port answers a peer on the lab
network, keep it in the guest's own cgroup, and take it down with it (clean stop and power cut),
then bring it back at the next boot.

Needs root, Docker Engine, the lab host image (``wakegrid lab up`` builds it) and a static busybox.
"""

from __future__ import annotations

import glob
import io
import os
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

docker = pytest.importorskip("docker")

from wakegrid.lab import dind  # noqa: E402
from wakegrid.lab.image import ImageSpec, ensure_image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # noqa: E402  the helper next to this file, whatever the rootdir or import mode

pytestmark = pytest.mark.lab

LABEL = "wakegrid.test"
RUN_ID = f"dind-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def client():
    reason = support.root_reason()
    if reason:
        pytest.skip(reason)
    client = support.docker_client(timeout=120)
    if support.static_busybox() is None:
        pytest.skip("needs a static busybox: apt-get install busybox-static")
    yield client
    support.remove_labelled(client, f"{LABEL}={RUN_ID}")
    client.close()


@pytest.fixture(scope="module")
def host_image(client) -> str:
    # The lab's own image: built once (debootstrap + docker import) and shared with the lab.
    return ensure_image(client, ImageSpec())


@pytest.fixture(scope="module")
def busybox(client) -> str:
    return support.import_busybox(client, RUN_ID, changes=[f"LABEL {LABEL}={RUN_ID}"])


@pytest.fixture(scope="module")
def lan(client):
    network, _ = support.create_test_lan(client, f"{RUN_ID}-lan", {LABEL: RUN_ID})
    return network


def _tar(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _wait(predicate, timeout: float, what: str):
    # exceptions only mean "not yet": the guest's services are still coming up
    return support.wait_for(predicate, timeout, interval=0.2, what=what, errors=(Exception,))


def _inner_client(address: str):
    inner = docker.DockerClient(base_url=f"tcp://{address}:{dind.DOCKER_API_PORT}", timeout=60)
    inner.ping()
    return inner


def _host_pids_of(guest_id: str, inner_id: str) -> list[int]:
    """Host PIDs of an inner container, found where it must be: in the guest's own cgroup."""
    scopes = glob.glob(f"/sys/fs/cgroup/memory/docker/{guest_id}/**/docker-{inner_id}.scope", recursive=True)
    assert scopes, f"inner container {inner_id[:12]} is not nested in the guest's cgroup"
    with open(os.path.join(scopes[0], "cgroup.procs")) as handle:
        return [int(line) for line in handle if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _http_get_from_peer(client, busybox: str, lan, address: str, port: int) -> str:
    """An HTTP GET from another host of the lab network (busybox nc: no resolver needed)."""
    output = client.containers.run(
        busybox,
        ["/bin/busybox", "sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | /bin/busybox nc -w 3 {address} {port}'],
        network=lan.name,
        labels={LABEL: RUN_ID},
        remove=True,
    )
    return output.decode(errors="replace")


def test_docker_engine_in_a_guest_serves_the_lab_and_dies_with_it(client, host_image, busybox, lan):
    volume = client.volumes.create(f"{RUN_ID}-docker", labels={LABEL: RUN_ID})
    guest = client.containers.create(
        **dind.create_kwargs(
            image=host_image, name=f"{RUN_ID}-vm-docker", network=lan.name, data_volume=volume.name,
            labels={LABEL: RUN_ID},
        )
    )  # fmt: skip
    # The page the inner web server serves, and the guest's Docker config, before the first boot.
    guest.put_archive("/", _tar({**dind.guest_files(), "/srv/www/index.html": "hello from vm-docker\n"}))
    guest.start()
    guest.reload()
    address = guest.attrs["NetworkSettings"]["Networks"][lan.name]["IPAddress"]
    _wait(lambda: guest.exec_run(["systemctl", "is-system-running"]).output.strip() in (b"running", b"degraded"),
          30, "systemd in the guest")  # fmt: skip

    started = time.monotonic()
    result = guest.exec_run(["systemctl", "enable", "--now", *dind.GUEST_UNITS])
    assert result.exit_code == 0, result.output.decode()
    inner = _wait(lambda: _inner_client(address), 30, "the guest's Docker API on TCP")
    # without "tls": false, dockerd 20.10 sleeps 15 s before serving plain TCP
    assert time.monotonic() - started < 10, "dockerd took too long to serve TCP"

    info = inner.info()
    assert info["Driver"] == "overlay2"
    assert info["CgroupDriver"] == "systemd"

    # No registry: docker save on the lab's engine, load into the guest's.
    inner.images.load(b"".join(client.images.get(busybox).save(named=True)))
    web = inner.containers.run(
        busybox, ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv/www"], name="web", init=True,
        ports={"80/tcp": 8080}, volumes={"/srv/www": {"bind": "/srv/www", "mode": "ro"}},
        restart_policy={"Name": "unless-stopped"}, detach=True,
    )  # fmt: skip
    reply = _wait(lambda: _http_get_from_peer(client, busybox, lan, address, 8080), 10, "the published port")
    assert "hello from vm-docker" in reply

    # Clean power-off of the guest: the inner container goes with it.
    pids = _host_pids_of(guest.id, web.id)
    assert pids and all(_alive(pid) for pid in pids)
    inner.close()
    guest.stop(timeout=dind.GUEST_STOP_TIMEOUT)
    assert not any(_alive(pid) for pid in pids)

    # Power on again: images and containers were on the volume, the restart policy brings web back.
    guest.start()
    inner = _wait(lambda: _inner_client(address), 40, "the guest's Docker API after a reboot")
    _wait(lambda: inner.containers.get("web").status == "running", 20, "web to restart with its guest")
    reply = _wait(lambda: _http_get_from_peer(client, busybox, lan, address, 8080), 10, "the published port")
    assert "hello from vm-docker" in reply

    # Power cut (SIGKILL to the guest's systemd): the inner container dies too.
    pids = _host_pids_of(guest.id, inner.containers.get("web").id)
    inner.close()
    guest.kill()
    _wait(lambda: not any(_alive(pid) for pid in pids), 5, "inner processes to die with the guest")
