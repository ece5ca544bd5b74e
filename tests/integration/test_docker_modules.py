"""wakegrid.fleet.docker_container_power and docker_container_info run by Ansible against a real Docker Engine.

The containers run a tiny image built here without a registry: Debian's static busybox,
``docker import``-ed as wakegrid-test/busybox:latest (reused when present). Each container carries
this run's label and is removed at the end, even on failure:

- ``plain``: no health check, publishes a port on 127.0.0.1;
- ``slow``: a health check that passes once the command has slept ~2 s and created a file;
- ``sick``: a health check that always fails, with a recognisable message;
- ``crash``: exits at once with code 3 after printing a line.

and, apart (its own fixture, out of docker_container_info's listing), ``stubborn``, which ignores
SIGTERM (sh as PID 1 without a trap), so that only SIGKILL stops it.

Needs root and Docker Engine (the local socket).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

docker = pytest.importorskip("docker")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import support  # noqa: E402  the helper next to this file, whatever the rootdir or import mode

IMAGE = "wakegrid-test/busybox:latest"
DOCKER_HOST = "unix:///var/run/docker.sock"
LABEL = "wakegrid.test"
RUN_ID = f"dockermod-{uuid.uuid4().hex[:8]}"
PREFIX = f"wg-{RUN_ID}"
MS = 1_000_000  # health check durations are in nanoseconds
# sh as PID 1 ignores SIGTERM unless trapped; trapping it makes `docker stop` immediate.
SERVE = "trap 'exit 0' TERM; {before} sleep 3600 & wait"


def _busybox_image(client) -> str:
    """wakegrid-test/busybox:latest: busybox plus one symlink per applet, nothing else."""
    try:
        client.images.get(IMAGE)
        return IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = support.ensure_static_busybox()
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    return support.import_busybox(client, IMAGE.split(":")[1], applets=applets, directories=("bin", "tmp"))


def _remove_run_containers(client) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}={RUN_ID}"}):
        container.remove(force=True)


@pytest.fixture(scope="module")
def engine():
    reason = support.root_reason("(the Docker socket)")
    if reason:
        pytest.skip(reason)
    client = support.docker_client(DOCKER_HOST)
    image = _busybox_image(client)
    names = {}

    def create(role: str, command: str, healthcheck: dict | None = None, **host_config) -> None:
        name = f"{PREFIX}-{role}"
        client.api.create_container(
            image,
            command=["sh", "-c", command],
            name=name,
            labels={LABEL: RUN_ID, "role": role},
            healthcheck=healthcheck,
            ports=list(host_config.get("port_bindings", {})),
            host_config=client.api.create_host_config(**host_config),
        )
        names[role] = name

    try:
        create("plain", SERVE.format(before=""), port_bindings={80: ("127.0.0.1", None)})
        create(
            "slow",
            SERVE.format(before="rm -f /tmp/ready; sleep 2; touch /tmp/ready;"),
            healthcheck={"test": ["CMD", "test", "-f", "/tmp/ready"], "interval": 200 * MS, "retries": 100},
        )
        create(
            "sick",
            SERVE.format(before=""),
            healthcheck={"test": ["CMD-SHELL", "echo disk full >&2; exit 1"], "interval": 200 * MS, "retries": 2},
        )
        create("crash", "echo boom; exit 3")
        yield client, names
    finally:
        _remove_run_containers(client)


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    """A collections path where ansible_collections/wakegrid/fleet is this repository."""
    return support.collections_path(tmp_path_factory.mktemp("collections"))


@pytest.fixture
def run_module(collections, tmp_path):
    env = support.ansible_env(collections, tmp_path / "ansible.cfg", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    env.pop("DOCKER_HOST", None)

    def run(module: str, args: dict, check_mode: bool = False) -> tuple[str, dict, str]:
        """Run the module through the ``ansible`` CLI; return (status, result, all output)."""
        args = {"docker_host": DOCKER_HOST, **args}
        cmd = support.adhoc_command(module, args, *(["--check"] if check_mode else []))
        return support.run_adhoc(cmd, env, tmp_path)

    return run


def status_of(client, name: str) -> str:
    return client.api.inspect_container(name)["State"]["Status"]


def power(run_module, name: str, check_mode: bool = False, **args) -> tuple[str, dict]:
    status, result, _ = run_module("docker_container_power", {"name": name, **args}, check_mode=check_mode)
    return status, result


def test_start_without_health_check_then_unchanged(engine, run_module):
    client, names = engine
    status, result = power(run_module, names["plain"], state="started")
    assert status == "CHANGED", result
    container = result["container"]
    assert (container["status_before"], container["status_after"]) == ("created", "running")
    assert container["name"] == names["plain"] and container["health"] is None and container["health_log"] == []
    assert status_of(client, names["plain"]) == "running"

    status, result = power(run_module, names["plain"], state="started")
    assert status == "SUCCESS"
    assert result["changed"] is False
    assert result["container"]["status_before"] == result["container"]["status_after"] == "running"


def test_start_waits_until_the_health_check_passes(engine, run_module):
    client, names = engine
    started = time.monotonic()
    status, result = power(run_module, names["slow"], timeout=20)
    assert status == "CHANGED", result
    assert result["container"]["health"] == "healthy"
    assert result["elapsed"] >= 1.5  # the check cannot pass before the command's 2 s sleep
    assert time.monotonic() - started >= 2
    assert client.api.inspect_container(names["slow"])["State"]["Health"]["Status"] == "healthy"

    # restarted: always a change, and health is waited for again from "starting"
    status, result = power(run_module, names["slow"], state="restarted", stop_timeout=5, timeout=20)
    assert status == "CHANGED", result
    assert result["container"]["health"] == "healthy"
    assert result["elapsed"] >= 1.5


def test_unhealthy_container_fails_with_its_health_log(engine, run_module):
    _, names = engine
    status, result = power(run_module, names["sick"], timeout=20)
    assert status == "FAILED!"
    assert "is unhealthy" in result["msg"] and "disk full" in result["msg"]
    assert result["container"]["health"] == "unhealthy"
    assert result["container"]["health_log"][-1]["exit_code"] == 1
    assert result["container"]["health_log"][-1]["output"] == "disk full"


def test_container_that_exits_while_starting_fails_with_its_logs(engine, run_module):
    _, names = engine
    status, result = power(run_module, names["crash"], timeout=10)
    assert status == "FAILED!"
    assert "exit code 3" in result["msg"] and "boom" in result["msg"]
    assert result["log_tail"] == ["boom"]


def test_stop_check_mode_then_stop_then_unchanged(engine, run_module):
    client, names = engine
    name = names["plain"]
    if status_of(client, name) != "running":
        client.api.start(name)

    status, result = power(run_module, name, check_mode=True, state="stopped")
    assert status == "CHANGED"
    assert result["container"]["status_after"] == "running"
    assert status_of(client, name) == "running"

    # paused: unpaused first, so that its stop signal is handled at once rather than after stop_timeout
    client.api.pause(name)
    started = time.monotonic()
    status, result = power(run_module, name, state="stopped", stop_timeout=30)
    assert status == "CHANGED", result
    assert (result["container"]["status_before"], result["container"]["status_after"]) == ("paused", "exited")
    assert result["container"]["exit_code"] == 0  # its TERM trap ran: not killed
    assert time.monotonic() - started < 30
    assert status_of(client, name) == "exited"

    status, result = power(run_module, name, state="stopped")
    assert status == "SUCCESS" and result["changed"] is False

    # check mode start of the stopped container: a change announced, nothing started
    status, result = power(run_module, name, check_mode=True, state="started")
    assert status == "CHANGED" and result["elapsed"] is None
    assert status_of(client, name) == "exited"


def test_unknown_container_and_unreachable_api_fail_clearly(engine, run_module):
    status, result = power(run_module, f"{PREFIX}-nope")
    assert status == "FAILED!"
    assert result["msg"] == f"no container named {PREFIX}-nope on {DOCKER_HOST}"

    status, result = power(run_module, f"{PREFIX}-nope", docker_host="tcp://127.0.0.1:1", api_timeout=5)
    assert status == "FAILED!"
    assert result["msg"].startswith("cannot reach the Docker API at tcp://127.0.0.1:1: ")


@pytest.fixture
def stubborn(engine):
    client, _ = engine
    name = f"{PREFIX}-stubborn"
    # Its own StopTimeout (20 s) is longer than the SDK's request time limit for a stop without one
    # (api_timeout + 10 s).
    client.api.create_container(IMAGE, command=["sh", "-c", "sleep 3600 & wait"], name=name, stop_timeout=20)
    client.api.start(name)
    try:
        yield client, name
    finally:
        client.api.remove_container(name, force=True)


def test_stop_gives_the_grace_period_then_kills(stubborn, run_module):
    client, name = stubborn
    since = int(time.time()) - 1
    status, result = power(run_module, name, state="stopped", stop_timeout=2)
    assert status == "CHANGED", result
    assert result["container"]["exit_code"] == 137  # it ignored SIGTERM: killed after its grace period
    # Docker's own record of the stop: SIGTERM, then SIGKILL 2 s later (not its default 10 s)
    events = client.events(
        since=since, until=int(time.time()) + 1, decode=True, filters={"container": name, "event": "kill"}
    )
    kills = {event["Actor"]["Attributes"]["signal"]: event["timeNano"] / 1e9 for event in events}
    assert set(kills) == {"15", "9"}, kills
    assert 1.9 <= kills["9"] - kills["15"] < 3


def test_connection_lost_after_the_api_answered_fails_naming_the_api(stubborn, run_module):
    _, name = stubborn
    # The stop request outlasts its time limit: the SDK lets the requests timeout through.
    status, result, output = run_module("docker_container_power", {"name": name, "state": "stopped", "api_timeout": 1})
    assert status == "FAILED!", result
    assert result["msg"].startswith(f"lost the connection to the Docker API at {DOCKER_HOST}: ")
    assert "Traceback" not in output and "module_stderr" not in result


def test_discover_marks_known_and_prefills_the_others(engine, run_module):
    client, names = engine
    if status_of(client, names["plain"]) != "running":
        client.api.start(names["plain"])
    fleet_nodes = {
        "vm-docker": {"kind": "vm", "parent": "pve1", "vmid": 101, "docker": {"api": "tcp://10.0.0.5:2375"}},
        "app": {"kind": "container", "parent": "vm-docker", "container": names["slow"]},
        "gone": {"kind": "container", "parent": "vm-docker", "container": f"{PREFIX}-gone"},
        "elsewhere": {"kind": "container", "parent": "other-docker", "container": names["crash"]},
        names["sick"]: {"kind": "machine", "site": "dijon", "wol": {"secureon": "s3cr3t-wol-pass"}},
    }
    args = {
        "parent": "vm-docker",
        "known_containers": [names["plain"]],
        "fleet_nodes": fleet_nodes,
        "filters": {"label": [f"{LABEL}={RUN_ID}"]},
    }
    status, result, output = run_module("docker_container_info", args)
    assert status == "SUCCESS" and result["changed"] is False
    assert "s3cr3t-wol-pass" not in output
    by_role = {c["labels"]["role"]: c for c in result["containers"]}
    assert sorted(by_role) == ["crash", "plain", "sick", "slow"]

    plain, slow, sick, crash = (by_role[r] for r in ("plain", "slow", "sick", "crash"))
    assert plain["configured"] and plain["fleet_node"] is None and plain["fleet_entry"] is None
    assert slow["configured"] and slow["fleet_node"] == "app"
    assert plain["state"] == "running" and plain["image"] == IMAGE and plain["health"] is None
    published = [p for p in plain["ports"] if p["host_ip"] == "127.0.0.1"]
    assert published and published[0]["container_port"] == 80 and published[0]["host_port"] > 0
    assert sick["health"] in ("starting", "healthy", "unhealthy")  # it has a health check
    assert crash["state"] == "exited"

    # crash is configured under another Docker host: here it is new; sick's name is a fleet machine
    assert not crash["configured"] and crash["suggested_name"] == names["crash"]
    assert sick["suggested_name"] == f"{names['sick']}-vm-docker"
    assert result["unconfigured"] == {
        names["crash"]: {"kind": "container", "parent": "vm-docker", "container": names["crash"]},
        f"{names['sick']}-vm-docker": {"kind": "container", "parent": "vm-docker", "container": names["sick"]},
    }
    assert result["missing"] == [{"fleet_node": "gone", "container": f"{PREFIX}-gone"}]
    assert result["counts"] == {"containers": 4, "configured": 2, "unconfigured": 2}
