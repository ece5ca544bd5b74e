"""wakegrid.fleet.docker_stack run by Ansible against the host's real Docker Engine (the local socket).

The services run a busybox image built here without a registry (Debian's static busybox,
``docker import``-ed with this run's label), shipped to the module as a ``docker save`` tarball
like the fleet ships its images. Every stack is a Compose project named after this run; its
containers, networks and volumes, and the image, carry this run's label and are removed at the
end, even on failure.

The stack: ``db`` (a named volume, a health check that passes once its command has written a
file) and ``api`` (waits for ``db`` to be healthy, serves HTTP on a loopback port, an environment
from ``.env``, module variables and a secret variable).

The tests run in file order, each starting from the stack the previous one left.

Needs root and Docker Engine. ``docker-compose`` (Debian's package: Compose v1) is used, when
installed, to check that the Compose tools list the stack.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

docker = pytest.importorskip("docker")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # noqa: E402  the helper next to this file, whatever the rootdir or import mode

DOCKER_HOST = "unix:///var/run/docker.sock"
LABEL = "wakegrid.test"
RUN_ID = f"stack-{uuid.uuid4().hex[:8]}"
PROJECT = f"wgstack{RUN_ID[-8:]}"
IMAGE = f"wakegrid-test/busybox:{RUN_ID}"
SECRET = "s3cr3t-token-a1b2c3"
PROJECT_LABEL = "com.docker.compose.project"

# sh as PID 1 ignores SIGTERM unless trapped; trapping it makes stops immediate.
DB_COMMAND = "trap 'exit 0' TERM; sleep 1; touch /tmp/ready; echo db ready; sleep 3600 & wait"
API_COMMAND = "trap 'exit 0' TERM; echo api up token=$$API_TOKEN; httpd -f -p 8080 -h /tmp & wait"


def compose_document(port: int, **changes) -> dict:
    document = {
        "services": {
            "db": {
                "image": IMAGE,
                "command": ["sh", "-c", DB_COMMAND],
                "volumes": ["data:/data"],
                "labels": {LABEL: RUN_ID},
                "healthcheck": {"test": ["CMD", "test", "-f", "/tmp/ready"], "interval": "1s", "retries": 3},
            },
            "api": {
                "image": IMAGE,
                "command": ["sh", "-c", API_COMMAND],
                "environment": {"LOG_LEVEL": "${LOG_LEVEL:-info}", "GREETING": "${GREETING}", "API_TOKEN": "${TOKEN}"},
                "ports": [f"127.0.0.1:{port}:8080"],
                "labels": {LABEL: RUN_ID},
                "depends_on": {"db": {"condition": "service_healthy"}},
                "stop_grace_period": "5s",
            },
        },
        "networks": {"default": {"labels": {LABEL: RUN_ID}}},
        "volumes": {"data": {"labels": {LABEL: RUN_ID}}},
    }
    for path, value in changes.items():
        node = document
        *parents, last = path.split("/")
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return document


def _cleanup(client) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={PROJECT}"}):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"}):
        network.remove()
    for volume in client.volumes.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"}):
        volume.remove(force=True)
    support.remove_labelled(client, f"{LABEL}={RUN_ID}")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    reason = support.root_reason("(the Docker socket)")
    if reason:
        pytest.skip(reason)
    client = support.docker_client(DOCKER_HOST)
    busybox = support.ensure_static_busybox()
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    support.import_busybox(
        client,
        RUN_ID,
        changes=[f"LABEL {LABEL}={RUN_ID}", "ENV PATH=/bin"],
        applets=applets,
        directories=("bin", "tmp"),
    )
    tarball = tmp_path_factory.mktemp("images") / "busybox.tar"
    with tarball.open("wb") as handle:
        for chunk in client.api.get_image(IMAGE):
            handle.write(chunk)
    # The host lacks the image until the module loads it from the tarball.
    client.images.remove(IMAGE, force=True)
    try:
        yield client, tarball
    finally:
        _cleanup(client)


@pytest.fixture(scope="module")
def deploy(engine, tmp_path_factory):
    """Run the module (ad hoc) on the stack in a project directory: (status, result, output)."""
    _client, tarball = engine
    root = tmp_path_factory.mktemp("stack")
    collections = support.collections_path(root / "collections")
    env = support.ansible_env(collections, root / "ansible.cfg", ANSIBLE_LOCAL_TEMP=str(root / "ansible-tmp"))
    env.pop("DOCKER_HOST", None)
    project_src = root / "project"
    project_src.mkdir()
    (project_src / ".env").write_text("# defaults for the stack\nGREETING='hello world'\nLOG_LEVEL=info\n")
    port = support.free_port()

    def run(document: dict | None = None, *flags: str, **args) -> tuple[str, dict, str]:
        if document is not None:
            (project_src / "compose.yaml").write_text(yaml.safe_dump(document))
        args = {
            "docker_host": DOCKER_HOST,
            "project_name": PROJECT,
            "project_src": str(project_src),
            "images": [{"src": str(tarball)}],
            "secret_variables": {"TOKEN": SECRET},
            "timeout": 30,
            **args,
        }
        cmd = support.adhoc_command("docker_stack", args, *flags)
        return support.run_adhoc(cmd, env, root, timeout=180)

    run.port = port
    run.project_src = project_src
    return run


def containers(client) -> dict[str, dict]:
    """service -> {id, status, name} of the project's containers."""
    found = client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={PROJECT}"})
    return {c.labels["com.docker.compose.service"]: {"id": c.id, "status": c.status, "name": c.name} for c in found}


def http_get(port: int) -> int:
    import requests

    return requests.get(f"http://127.0.0.1:{port}/", timeout=2).status_code


# --------------------------------------------------------------------------- tests, in order


def test_first_deploy_loads_the_image_and_starts_in_dependency_order(engine, deploy):
    client, _ = engine
    status, result, output = deploy(compose_document(deploy.port))
    assert status == "CHANGED", output
    assert result["plan"]["create"] == ["db", "api"]
    assert result["images"][0]["loaded"] is True
    assert {s["service"]: s["action"] for s in result["services"]} == {"db": "created", "api": "created"}
    assert [s["health"] for s in result["services"] if s["service"] == "db"] == ["healthy"]
    assert result["networks"]["created"] == [f"{PROJECT}_default"]
    assert result["volumes"]["created"] == [f"{PROJECT}_data"]
    running = containers(client)
    assert {s: c["status"] for s, c in running.items()} == {"db": "running", "api": "running"}
    assert running["api"]["name"] == f"{PROJECT}-api-1"
    # api started only once db was healthy: its start is after db's first passing health check.
    db = client.api.inspect_container(running["db"]["id"])
    api = client.api.inspect_container(running["api"]["id"])
    assert api["State"]["StartedAt"] > db["State"]["Health"]["Log"][0]["End"]
    env = dict(e.split("=", 1) for e in api["Config"]["Env"])
    assert env["GREETING"] == "hello world" and env["LOG_LEVEL"] == "info" and env["API_TOKEN"] == SECRET
    labels = api["Config"]["Labels"]
    assert labels["com.docker.compose.project"] == PROJECT
    assert labels["com.docker.compose.oneoff"] == "False"
    assert labels["com.docker.compose.depends_on"] == "db:service_healthy:false"
    assert labels["com.docker.compose.project.config_files"] == str(deploy.project_src / "compose.yaml")
    assert http_get(deploy.port) in (200, 403, 404)  # httpd answers through the published port
    assert SECRET not in output


def test_unchanged_stack_changes_nothing(engine, deploy):
    client, _ = engine
    before = containers(client)
    status, result, output = deploy(compose_document(deploy.port))
    assert status == "SUCCESS", output
    assert result["changed"] is False
    assert result["plan"]["keep"] == ["db", "api"]
    assert result["images"][0]["loaded"] is False  # the host has that image ID: nothing sent
    assert result["api"]["calls"] > 0 and result["api"]["seconds"] > 0  # the benchmark's API time
    assert containers(client) == before


def test_compose_tools_list_the_stack(engine, deploy):
    compose_v1 = shutil.which("docker-compose")
    if compose_v1 is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    proc = subprocess.run(
        [
            compose_v1,
            "-p",
            PROJECT,
            "-f",
            str(deploy.project_src / "compose.yaml"),
            "ps",
            "--services",
            "--filter",
            "status=running",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=deploy.project_src,
        env={"PATH": "/usr/bin:/bin", "GREETING": "x", "TOKEN": "x"},
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["api", "db"]


def test_check_mode_and_diff_name_the_changed_variable_without_its_value(engine, deploy):
    client, _ = engine
    before = containers(client)
    status, result, output = deploy(
        compose_document(deploy.port),
        "--check",
        "--diff",
        variables={"LOG_LEVEL": "debug"},
        secret_variables={"TOKEN": SECRET + "-new"},
    )
    assert status == "CHANGED", output
    assert result["plan"]["recreate"] == {"api": ["environment.API_TOKEN", "environment.LOG_LEVEL"]}
    assert result["plan"]["keep"] == ["db"]
    assert "~ recreate api (changed: environment.API_TOKEN, environment.LOG_LEVEL)" in output
    assert "debug" not in output.split("=>")[0]  # the diff names keys, not values
    assert SECRET not in output
    assert containers(client) == before


def test_a_changed_variable_recreates_only_that_service(engine, deploy):
    client, _ = engine
    before = containers(client)
    status, result, output = deploy(compose_document(deploy.port), variables={"LOG_LEVEL": "debug"})
    assert status == "CHANGED", output
    assert result["plan"]["recreate"] == {"api": ["environment.LOG_LEVEL"]}
    after = containers(client)
    assert after["db"]["id"] == before["db"]["id"]
    assert after["api"]["id"] != before["api"]["id"]
    assert set(after) == {"db", "api"}  # the replaced container is gone
    assert http_get(deploy.port) in (200, 403, 404)
    status, result, output = deploy(compose_document(deploy.port), variables={"LOG_LEVEL": "debug"})
    assert result["changed"] is False, output


@pytest.mark.parametrize(
    ("document_changes", "args", "message"),
    [
        ({"services/api/build": "."}, {}, "services.api.build: not supported"),
        ({"services/api/ports": ["8080-8090:80"]}, {}, "port ranges are not supported"),
        (
            {"services/api/environment": {"NEED": "${MISSING:?set MISSING}"}},
            {},
            "services.api.environment.NEED: required variable MISSING is missing a value: set MISSING",
        ),
        ({"services/api/image": "wakegrid-test/absent:never"}, {}, "service api: image wakegrid-test/absent:never"),
        ({"services/api/depends_on": {"nope": {"condition": "service_started"}}}, {}, "no service named 'nope'"),
        ({"services/db/depends_on": ["api"]}, {}, "dependency cycle"),
    ],
    ids=["unsupported-key", "port-range", "interpolation", "missing-image", "unknown-dependency", "cycle"],
)
def test_a_refused_stack_fails_clearly_and_touches_nothing(engine, deploy, document_changes, args, message):
    client, _ = engine
    before = containers(client)
    status, result, output = deploy(
        compose_document(deploy.port, **document_changes), variables={"LOG_LEVEL": "debug"}, **args
    )
    assert status == "FAILED!", output
    assert message in result["msg"]
    assert "Traceback" not in output
    assert containers(client) == before


def test_a_broken_env_file_is_refused_with_its_line(engine, deploy):
    client, _ = engine
    before = containers(client)
    bad = deploy.project_src / "bad.env"
    bad.write_text("GREETING=hi\nthis line has no equals sign\n")
    status, result, output = deploy(compose_document(deploy.port), env_files=[str(bad)])
    assert status == "FAILED!", output
    assert f"env_files refused: {bad} line 2: expected KEY=VALUE" in result["msg"]
    assert "Traceback" not in output
    assert containers(client) == before


def test_pull_without_a_registry_is_refused_before_any_change(engine, deploy):
    client, _ = engine
    before = containers(client)
    closed = support.free_port()  # nothing listens there: the registry "does not answer"
    image = f"127.0.0.1:{closed}/wakegrid-test/nowhere:1"
    status, result, output = deploy(
        compose_document(deploy.port, **{"services/api/image": image}), variables={"LOG_LEVEL": "debug"}, pull="missing"
    )
    assert status == "FAILED!", output
    assert f"service api: cannot pull image {image}" in result["msg"]
    assert "nothing was changed" in result["msg"]
    assert containers(client) == before


def test_a_service_that_never_gets_healthy_fails_with_its_logs_and_the_stack_is_restored(engine, deploy):
    client, _ = engine
    before = containers(client)
    sick = {"test": ["CMD-SHELL", "echo probe saw $$API_TOKEN; exit 1"], "interval": "1s", "retries": 2}
    document = compose_document(deploy.port, **{"services/api/healthcheck": sick})
    status, result, output = deploy(document, variables={"LOG_LEVEL": "debug"}, timeout=20)
    assert status == "FAILED!", output
    assert result["failed_service"] == "api"
    assert "service api is unhealthy" in result["msg"]
    assert result["health_log"] and "probe saw ********" in result["health_log"][-1]["output"]
    assert any("token=********" in line for line in result["log_tail"])
    assert SECRET not in output
    assert result["rolled_back"] == [f"removed new {PROJECT}-api-1", f"restored {PROJECT}-api-1"]
    after = containers(client)
    assert after == before  # same containers, running again under their names
    assert http_get(deploy.port) in (200, 403, 404)


def test_orphans_are_removed_and_absent_keeps_the_volume_unless_asked(engine, deploy):
    client, _ = engine
    document = compose_document(deploy.port, **{"services/api": None})
    status, result, output = deploy(document, variables={"LOG_LEVEL": "debug"})
    assert status == "CHANGED", output
    assert result["plan"]["remove"] == ["api"]
    assert set(containers(client)) == {"db"}

    status, result, output = deploy(None, state="absent")
    assert status == "CHANGED", output
    assert containers(client) == {}
    assert client.networks.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"}) == []
    assert [v.name for v in client.volumes.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"})] == [f"{PROJECT}_data"]

    status, result, output = deploy(None, state="absent", remove_volumes=True)
    assert status == "CHANGED", output
    assert result["volumes"]["removed"] == [f"{PROJECT}_data"]
    assert client.volumes.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"}) == []
    status, result, output = deploy(None, state="absent", remove_volumes=True)
    assert result["changed"] is False, output


def test_inline_definition_and_one_shot_dependency(engine, deploy):
    """service_completed_successfully: the job runs once; a second run neither reruns nor reports it."""
    client, _ = engine
    definition = {
        "services": {
            "init": {"image": IMAGE, "command": "sh -c 'echo migrated; exit 0'", "labels": {LABEL: RUN_ID}},
            "app": {
                "image": IMAGE,
                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                "depends_on": {"init": {"condition": "service_completed_successfully"}},
                "labels": {LABEL: RUN_ID},
            },
        }
    }
    status, result, output = deploy(None, definition=definition, project_src=None)
    assert status == "CHANGED", output
    assert result["plan"]["create"] == ["init", "app"]
    status, result, output = deploy(None, definition=definition, project_src=None)
    assert result["changed"] is False, output
    states = {s: c["status"] for s, c in containers(client).items()}
    assert states == {"init": "exited", "app": "running"}
    status, result, output = deploy(None, state="absent")
    assert status == "CHANGED" and containers(client) == {}
    # The network created for the default network went too.
    assert client.networks.list(filters={"label": f"{PROJECT_LABEL}={PROJECT}"}) == []
