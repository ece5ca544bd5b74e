"""Deploying the workspace stack into the lab's vm-docker: cold, warm, and the Engine API time of a no-change run.

    sudo flock /tmp/wakegrid-lab.lock .venv/bin/python tests/bench/stack_deploy.py [--runs N] [--json FILE]

The lab must be up (``wakegrid lab up``); the images are built first (``examples/workspace/build_images.py``,
cached). Each run, with ``playbooks/deploy_stack.yml -e stack=workspace`` on
``inventories/lab/workspace.fleet.yml``:

- **cold**: the stack, its volume and its images removed from the guest; the deployment loads both
  tarballs through the API, creates the network, the volume and both containers, and waits for
  PostgreSQL then the API to be healthy;
- **warm**: the same again with nothing changed (``changed=0``).

For each, the whole play (Ansible's start-up and the edge's route sync included) and the module's
task alone (``ansible.posix.profile_tasks``). Then one more no-change run goes through a recording
TCP proxy on loopback in front of the guest's API (a copy of the fleet whose vm-docker API is the
proxy): the time at least one Engine API request was outstanding, and the number of requests.

When Debian's ``docker-compose`` (Compose v1, 1.29) is installed, the same file is brought up with
``docker-compose --compatibility up -d`` against the same API, as another project on another port,
cold (images already loaded) and warm, then taken down with its volume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "workspace"
FLEET = REPO / "inventories" / "lab" / "workspace.fleet.yml"
PROJECT = "workspace"
TASK_TIME = re.compile(r"Deploy the stack workspace -+ (\d+\.\d+)s")
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)

sys.path.insert(0, str(EXAMPLE))
import build_images  # noqa: E402  (examples/workspace/build_images.py)


def playbook(fleet: Path, *extra: str) -> tuple[float, float | None, dict[str, int]]:
    """(wall seconds of the play, seconds of the deploy task, changed per host); fails on a failed run."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
    )
    cmd = [str(BIN / "ansible-playbook"), "-i", str(fleet), str(REPO / "playbooks" / "deploy_stack.yml")]
    cmd += ["-e", f"stack={PROJECT}", *(arg for item in extra for arg in ("-e", item))]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - started
    if proc.returncode:
        raise SystemExit(f"deploy_stack.yml failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    task = TASK_TIME.findall(proc.stdout)
    recap = {host: int(changed) for host, changed, _, _ in RECAP.findall(proc.stdout)}
    return wall, float(task[-1]) if task else None, recap


class RecordingProxy:
    """A TCP proxy to the Engine API that records when requests are outstanding.

    Per connection, a request is outstanding from the first client bytes after an answer (or the
    start) to the last answer bytes before the next client bytes; the busy time is the union of
    those intervals over all connections, so parallel requests are not counted twice."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.intervals: list[list[float]] = []
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            state = {"current": None}
            threading.Thread(target=self._pipe, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, state, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, state: dict, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                now = time.monotonic()
                with self.lock:
                    if from_client and (state["current"] is None or state["answered"]):
                        state["current"] = [now, now]
                        state["answered"] = False
                        self.intervals.append(state["current"])
                        self.requests += 1
                    elif not from_client and state["current"] is not None:
                        state["current"][1] = now
                        state["answered"] = True
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def busy(self) -> float:
        total, end = 0.0, 0.0
        for start, stop in sorted(self.intervals):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    def close(self) -> None:
        self.listener.close()


def remove_everything(docker_api: str) -> None:
    """The stack, its volume and its images off the guest: the next deployment is cold."""
    playbook(FLEET, "stack_state=absent", "remove_volumes=true")
    import docker

    client = docker.DockerClient(base_url=docker_api, timeout=120)
    for image in client.images.list(name=f"{build_images.REPOSITORY}/*"):
        client.images.remove(image.id, force=True)


def proxied_fleet(directory: Path, proxy_port: int) -> Path:
    data = yaml.safe_load(FLEET.read_text())
    data["nodes"]["vm-docker"]["docker"]["api"] = f"tcp://127.0.0.1:{proxy_port}"
    data["stacks"][PROJECT]["compose_file"] = str(EXAMPLE / "compose.yml")
    path = directory / "workspace-proxied.fleet.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def compose_v1(docker_api: str) -> dict[str, float] | None:
    """``docker-compose up -d`` of the same file, cold (images present) and warm; None without it."""
    binary = shutil.which("docker-compose", path="/usr/bin")
    if binary is None:
        return None
    secrets = build_images.DEFAULT_OUT / "secrets"
    env = dict(
        os.environ,
        DOCKER_HOST=docker_api,
        WORKSPACE_API_PORT="8089",
        WORKSPACE_DB_PASSWORD=(secrets / "db-password").read_text(),
        WORKSPACE_API_TOKEN=(secrets / "api-token").read_text(),
    )
    base = [binary, "--compatibility", "--env-file", str(build_images.DEFAULT_OUT / "images.env")]
    base += ["-p", "workspace-compose", "-f", str(EXAMPLE / "compose.yml")]
    figures = {}
    try:
        for label in ("cold", "warm"):
            started = time.monotonic()
            subprocess.run([*base, "up", "-d"], env=env, check=True, capture_output=True, timeout=600)
            figures[label] = time.monotonic() - started
    finally:
        subprocess.run([*base, "down", "-v"], env=env, capture_output=True, timeout=600)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO / "reconciler"))
    from wakegrid.model import load_fleet

    docker_api = load_fleet(FLEET).nodes["vm-docker"].docker.api
    started = time.monotonic()
    build_images.build_all(build_images.DEFAULT_OUT, log=lambda line: None)
    print(f"images: {time.monotonic() - started:.2f}s (build_images.py, cached)")

    runs = []
    for run in range(1, args.runs + 1):
        remove_everything(docker_api)
        cold = playbook(FLEET)
        warm = playbook(FLEET)
        assert warm[2].get("localhost") == 0, f"the warm run changed something: {warm[2]}"
        host, port = docker_api.removeprefix("tcp://").rsplit(":", 1)
        proxy = RecordingProxy((host, int(port)))
        try:
            proxied = playbook(proxied_fleet(Path("/tmp"), proxy.port))
        finally:
            proxy.close()
        figures = {
            "cold_play": cold[0],
            "cold_task": cold[1],
            "warm_play": warm[0],
            "warm_task": warm[1],
            "no_change_api_busy": proxy.busy(),
            "no_change_api_requests": proxy.requests,
            "no_change_task_via_proxy": proxied[1],
        }
        runs.append(figures)
        print(
            f"run {run}: "
            + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        )

    compose = compose_v1(docker_api)
    print("\n| workspace stack into vm-docker | seconds |\n|---|---|")
    for key, label in (
        ("cold_play", "cold deploy, whole play (2 tarballs loaded, 2 containers, health waits)"),
        ("cold_task", "cold deploy, the docker_stack task"),
        ("warm_play", "no-change deploy, whole play (edge route sync included)"),
        ("warm_task", "no-change deploy, the docker_stack task"),
        ("no_change_api_busy", "no-change deploy, time with an Engine API request outstanding"),
    ):
        values = [r[key] for r in runs if r[key] is not None]
        print(f"| {label} | {statistics.median(values):.2f} |" if values else f"| {label} | n/a |")
    requests = statistics.median(r["no_change_api_requests"] for r in runs)
    print(f"| no-change deploy, Engine API requests | {requests:.0f} |")
    if compose is None:
        print("| docker-compose up -d | not installed |")
    else:
        print(f"| docker-compose --compatibility up -d, cold (images present) | {compose['cold']:.2f} |")
        print(f"| docker-compose --compatibility up -d, no change | {compose['warm']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "docker_compose_v1": compose}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
