"""The workspace stack in the lab: ``playbooks/deploy_stack.yml`` into ``vm-docker``'s real Docker Engine.

The fleet is ``inventories/lab/workspace.fleet.yml`` (the shared lab plus the stack and its service);
the images come from ``examples/workspace/build_images.py`` (cached: quick after the first time). The
tests run in file order on one stack and each leaves it deployed for the next, the last removes it:

- a cold deploy; the API answers through the edge from the lab client (HTTPS, the service's domain,
  Caddy's internal CA), stores an activity in PostgreSQL and pushes it on its WebSocket feed;
- a second run changes nothing (recap changed=0, the same container IDs);
- a changed variable of the API recreates the API only; PostgreSQL keeps its container and its rows;
- an unsupported Compose key, a missing image, a service that never becomes healthy, an
  interpolation error: each fails with its own message and leaves the running stack as it was;
- ``docker-compose ps`` (Debian's compose, pointed at the guest's API) lists the stack's services;
- ``stack_state=absent`` removes the containers and the network and keeps the volume;
  ``remove_volumes`` removes the volume too.

The edge's route of ``workspace`` is removed at the end (``routes.yml`` of the lab fleet), as the
rest of the suite expects the lab fleet's routes only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "workspace"
WORKSPACE_FLEET = REPO / "inventories" / "lab" / "workspace.fleet.yml"
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
PROJECT = "workspace"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
CLIENT_SCRIPT = "/tmp/workspace-client.py"
CLIENT_ROOT = "/tmp/workspace-edge-root.crt"
EDGE_ROOT = "/var/lib/caddy/data/caddy/pki/authorities/local/root.crt"
DOCKER_COMPOSE_V1 = shutil.which("docker-compose", path="/usr/bin")


# --------------------------------------------------------------------------- helpers


def build_images() -> dict[str, str]:
    sys.path.insert(0, str(EXAMPLE))
    import build_images as builder

    return builder.build_all(builder.DEFAULT_OUT, log=lambda line: None)


def deploy(fleet: Path, *extra: str, check: bool = True, timeout: float = 600) -> tuple[str, dict[str, int]]:
    """ansible-playbook deploy_stack.yml -e stack=workspace EXTRA: (output, changed count per host)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    cmd = [str(BIN / "ansible-playbook"), "-i", str(fleet), str(REPO / "playbooks" / "deploy_stack.yml")]
    cmd += ["-e", f"stack={PROJECT}", *(arg for item in extra for arg in ("-e", item))]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if check and proc.returncode:
        raise AssertionError(f"deploy_stack.yml failed ({proc.returncode}):\n{out[-6000:]}")
    if not check and not proc.returncode:
        raise AssertionError(f"deploy_stack.yml should have failed:\n{out[-3000:]}")
    return out, {host: int(changed) for host, changed, _, _ in RECAP.findall(proc.stdout)}


def variant(tmp_path: Path, compose: dict | None = None, **stack_changes) -> Path:
    """A copy of the workspace fleet whose stack takes ``stack_changes`` and, given one, another Compose file."""
    data = yaml.safe_load(WORKSPACE_FLEET.read_text())
    stack = data["stacks"][PROJECT]
    stack["compose_file"] = str(EXAMPLE / "compose.yml")
    if compose is not None:
        project_dir = tmp_path / "project"
        project_dir.mkdir(exist_ok=True)
        (project_dir / "compose.yml").write_text(yaml.safe_dump(compose, sort_keys=False))
        stack["compose_file"] = str(project_dir / "compose.yml")
    for key, value in stack_changes.items():
        stack[key] = {**stack.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "workspace-variant.fleet.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def example_compose() -> dict:
    return yaml.safe_load((EXAMPLE / "compose.yml").read_text())


class Stack:
    """The stack as the guest's Docker Engine sees it (docker SDK on vm-docker's API)."""

    def __init__(self, lab):
        import docker

        from wakegrid.model import load_fleet

        fleet = self.fleet = load_fleet(WORKSPACE_FLEET)
        self.domain = fleet.services[PROJECT].domain
        self.client = docker.DockerClient(base_url=fleet.nodes["vm-docker"].docker.api, timeout=60)
        self.lab = lab
        self.client_node = next(h.node for h in lab.plan.hosts if h.role == "client")
        clients = lab.plan.network("clients").name
        edge = lab.plan.host(fleet.edge.host)
        self.edge_container = edge.container
        self.edge_public = next(a.address for a in edge.networks if a.network == clients)
        self.token = (builder_out() / "secrets" / "api-token").read_text().strip()

    def containers(self) -> dict[str, str]:
        """Running or not: ``{service: container id}`` of the project."""
        found = self.client.containers.list(all=True, filters={"label": f"com.docker.compose.project={PROJECT}"})
        return {c.labels["com.docker.compose.service"]: c.id for c in found}

    def running(self) -> dict[str, str]:
        found = self.client.containers.list(filters={"label": f"com.docker.compose.project={PROJECT}"})
        return {c.labels["com.docker.compose.service"]: c.status for c in found}

    def mounts(self, service: str) -> dict[str, str]:
        """``{target: volume name}`` of the service's container."""
        container = self.client.containers.get(self.containers()[service])
        return {m["Destination"]: m.get("Name", m["Source"]) for m in container.attrs["Mounts"]}

    def networks(self) -> list[str]:
        return [n.name for n in self.client.networks.list(filters={"label": f"com.docker.compose.project={PROJECT}"})]

    def volumes(self) -> list[str]:
        return [v.name for v in self.client.volumes.list(filters={"label": f"com.docker.compose.project={PROJECT}"})]

    def install_client(self) -> None:
        client = self.lab.plan.host(self.client_node).container
        subprocess.run(["/usr/bin/docker", "cp", str(EXAMPLE / "client.py"), f"{client}:{CLIENT_SCRIPT}"], check=True)
        root = self.lab.exec(self.lab.fleet.edge.host, "cat", EDGE_ROOT).stdout
        subprocess.run(
            ["/usr/bin/docker", "exec", "-i", client, "sh", "-c", f"cat > {CLIENT_ROOT}"],
            input=root,
            text=True,
            check=True,
        )

    def api(self, *command: str, check: bool = True) -> object:
        """The client script on the lab client, through the edge: its JSON answer."""
        proc = self.lab.exec(
            self.client_node,
            "python3", CLIENT_SCRIPT, "--url", f"https://{self.domain}", "--connect", self.edge_public,
            "--cafile", CLIENT_ROOT, "--token", self.token, *command,
            check=False,
        )  # fmt: skip
        if check and proc.returncode:
            raise AssertionError(f"client {' '.join(command)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def wait_healthy_through_edge(self, instance: str, timeout: float = 60) -> dict:
        """Caddy checks its upstream every 2 s: wait until the edge answers from the expected instance."""
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            last = self.api("health", check=False)
            if isinstance(last, dict) and last.get("status") == "ok" and last.get("instance") == instance:
                return last
            time.sleep(0.5)
        raise AssertionError(f"the edge did not answer from a healthy {instance!r} within {timeout}s: {last}")


def builder_out() -> Path:
    sys.path.insert(0, str(EXAMPLE))
    import build_images as builder

    return builder.DEFAULT_OUT


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def stack(lab):
    build_images()
    handle = Stack(lab)
    # A cold start: no container, network or volume of an earlier run.
    deploy(WORKSPACE_FLEET, "stack_state=absent", "remove_volumes=true")
    assert handle.containers() == {} and handle.volumes() == []
    handle.install_client()
    yield handle
    try:
        deploy(WORKSPACE_FLEET, "stack_state=absent", "remove_volumes=true")
    finally:
        env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
        cmd = [str(BIN / "ansible-playbook"), "-i", str(LAB_FLEET), str(REPO / "playbooks" / "routes.yml")]
        subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


# --------------------------------------------------------------------------- the tests, in order


def test_cold_deploy_answers_through_the_edge_and_writes_to_postgresql(stack: Stack):
    started = time.monotonic()
    out, recap = deploy(WORKSPACE_FLEET)
    print(f"\ncold deploy: {time.monotonic() - started:.1f}s, changed per host {recap}")
    assert recap["localhost"] == 1, out[-3000:]
    assert set(stack.containers()) == {"api", "db"}
    assert stack.running() == {"api": "running", "db": "running"}
    assert stack.networks() == [f"{PROJECT}_backend"] and stack.volumes() == [f"{PROJECT}_pgdata"]
    # PostgreSQL's data is on the project's volume, not on one Docker makes up for a bare name.
    assert stack.mounts("db") == {"/var/lib/postgresql/data": f"{PROJECT}_pgdata"}

    health = stack.wait_healthy_through_edge("lab")
    assert health["database"] == "ok"
    trip = stack.api("roundtrip", "alice", "opened the agenda")
    assert trip["stored"]["actor"] == "alice" and trip["feed"] == trip["stored"], trip
    listed = stack.api("list", "--limit", "5")
    print(f"activity after the first post: {listed}")
    assert listed[0] == trip["stored"], listed  # newest first: read back from PostgreSQL
    # No token, no data; the feed refuses a wrong token too.
    refused = stack.lab.exec(
        stack.client_node,
        "python3", CLIENT_SCRIPT, "--url", f"https://{stack.domain}", "--connect", stack.edge_public,
        "--cafile", CLIENT_ROOT, "--token", "wrong-token-wrong-token", "feed",
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2 and "401" in refused.stderr


def test_a_second_run_changes_nothing(stack: Stack):
    before = stack.containers()
    out, recap = deploy(WORKSPACE_FLEET)
    assert recap == {"localhost": 0, "vps": 0}, out[-3000:]
    assert stack.containers() == before


def test_a_changed_variable_recreates_only_the_api_and_the_rows_survive(stack: Stack, tmp_path: Path):
    written = stack.api("post", "bob", "booked room 2")
    before = stack.containers()
    changed = variant(tmp_path, variables={"WORKSPACE_INSTANCE": "lab-2"})
    out, recap = deploy(changed)
    assert recap["localhost"] == 1, out[-3000:]
    after = stack.containers()
    assert after["db"] == before["db"], "PostgreSQL was recreated"
    assert after["api"] != before["api"], "the API was not recreated"
    stack.wait_healthy_through_edge("lab-2")
    assert written["id"] in [row["id"] for row in stack.api("list")]
    # Back to the fleet's own stack: the API again, PostgreSQL still untouched.
    deploy(WORKSPACE_FLEET)
    assert stack.containers()["db"] == before["db"]
    stack.wait_healthy_through_edge("lab")


def _failing_compose(case: str) -> tuple[dict, dict]:
    compose = example_compose()
    api = compose["services"]["api"]
    variables: dict = {}
    if case == "unsupported key":
        api["privileged"] = True
    elif case == "missing image":
        api["image"] = "wakegrid-workspace/api:not-built"
    elif case == "never healthy":
        api["healthcheck"] = {"test": ["CMD", "false"], "interval": "1s", "timeout": "1s", "retries": 2}
    elif case == "interpolation error":
        api["environment"]["WORKSPACE_REQUIRED"] = "${WORKSPACE_REQUIRED:?the stack needs WORKSPACE_REQUIRED}"
    return compose, variables


EXPECTED_FAILURE = {
    "unsupported key": r"services\.api\.privileged",
    "missing image": r"wakegrid-workspace/api:not-built",
    "never healthy": r"api.*(unhealthy|healthy)",
    "interpolation error": r"the stack needs WORKSPACE_REQUIRED",
}


@pytest.mark.parametrize("case", list(EXPECTED_FAILURE))
def test_a_failing_deploy_says_why_and_leaves_the_stack_running(stack: Stack, tmp_path: Path, case: str):
    before = stack.containers()
    written = stack.api("post", "carol", f"before the {case}")
    compose, _ = _failing_compose(case)
    out, _ = deploy(variant(tmp_path, compose=compose), "stack_timeout=30", check=False)
    assert re.search(EXPECTED_FAILURE[case], out), out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    # The secrets of the stack never appear, not even in a failure.
    secrets_dir = builder_out() / "secrets"
    for secret in secrets_dir.iterdir():
        assert secret.read_text().strip() not in out, f"{secret.name} leaked in the output"
    assert stack.running() == {"api": "running", "db": "running"}
    assert stack.containers()["db"] == before["db"]
    stack.wait_healthy_through_edge("lab")
    assert written["id"] in [row["id"] for row in stack.api("list")]


@pytest.mark.skipif(DOCKER_COMPOSE_V1 is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_lists_the_stack(stack: Stack):
    # Debian 12's docker-compose is Compose v1 (1.29): it has `ps` (by the project label, for the services of
    # the file) but no `ls`, which only the v2 plugin has. It talks to the guest's Engine API from here.
    env = dict(
        os.environ,
        DOCKER_HOST=stack.fleet.nodes["vm-docker"].docker.api,
        WORKSPACE_DB_PASSWORD="unused",
        WORKSPACE_API_TOKEN="unused",
    )
    env_file = builder_out() / "images.env"
    cmd = [DOCKER_COMPOSE_V1, "--env-file", str(env_file), "-p", PROJECT, "-f", str(EXAMPLE / "compose.yml"), "ps"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "workspace-api-1" in proc.stdout and "workspace-db-1" in proc.stdout, proc.stdout
    assert proc.stdout.count("Up") >= 2, proc.stdout


def test_absent_keeps_the_volume_and_remove_volumes_removes_it(stack: Stack):
    kept = stack.api("post", "dave", "written before absent")
    out, recap = deploy(WORKSPACE_FLEET, "stack_state=absent")
    assert recap["localhost"] == 1, out[-3000:]
    assert stack.containers() == {} and stack.networks() == []
    assert stack.volumes() == [f"{PROJECT}_pgdata"]
    # Deployed again on the kept volume: the rows are still there.
    deploy(WORKSPACE_FLEET)
    stack.wait_healthy_through_edge("lab")
    assert kept["id"] in [row["id"] for row in stack.api("list")]

    out, recap = deploy(WORKSPACE_FLEET, "stack_state=absent", "remove_volumes=true")
    assert recap["localhost"] == 1, out[-3000:]
    assert stack.containers() == {} and stack.volumes() == []
    # And on a new volume, nothing of them is left.
    deploy(WORKSPACE_FLEET)
    stack.wait_healthy_through_edge("lab")
    assert stack.api("list") == []
