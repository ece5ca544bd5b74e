"""Containers and Docker APIs in the fleet: stop grace, TLS settings, where a Docker API is reached.

- the model: ``docker: {tls, tls_verify, ca, cert, key}`` and the containers' ``timeouts.stop``;
- the steps the playbooks run (:func:`wakegrid.actuate.step_data`): TLS options, the grace period,
  and where the step runs (a ``unix://`` socket only on its own host);
- the observer: a remote ``unix://`` socket is never read on this machine (unknown, not down).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wakegrid import actuate
from wakegrid.graph import start_plan, stop_plan
from wakegrid.model import FleetError, load_fleet, parse_fleet
from wakegrid.observe.power import Probes, observe_power

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_FLEET = REPO / "inventories" / "example" / "example.fleet.yml"


def example(**nodes) -> dict:
    data = yaml.safe_load(EXAMPLE_FLEET.read_text())
    data["nodes"].update(nodes)
    return data


def parse(data: dict, base_dir: Path | None = None):
    return parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<test>", base_dir=base_dir)


def problems(data: dict) -> str:
    with pytest.raises(FleetError) as caught:
        parse(data)
    return caught.value.render()


# --------------------------------------------------------------------------- the model


def test_containers_get_30_seconds_to_stop_other_kinds_keep_their_defaults():
    fleet = parse(example(db={"kind": "container", "parent": "vm-docker", "timeouts": {"start": "1m"}}))
    assert fleet.nodes["sandbox"].timeouts.stop == 30
    assert (fleet.nodes["db"].timeouts.start, fleet.nodes["db"].timeouts.stop) == (60, 30)
    assert fleet.nodes["vm-docker"].timeouts.stop == 180
    assert fleet.nodes["nas"].timeouts.stop == 180
    slow = parse(example(db={"kind": "container", "parent": "vm-docker", "timeouts": {"stop": "2m"}}))
    assert slow.nodes["db"].timeouts.stop == 120


def test_docker_tls_verifies_by_default_with_ca_and_client_certificate(tmp_path):
    docker = {
        "api": "tcp://192.168.1.21:2376",
        "tls": True,
        "ca": "ca.pem",
        "cert": "/etc/d/cert.pem",
        "key": {"file": "key.pem"},
    }
    api = parse(example(**{"vm-docker": {**example()["nodes"]["vm-docker"], "docker": docker}}), tmp_path)
    api = api.nodes["vm-docker"].docker
    assert api.tls and api.tls_verify
    assert api.ca == str(tmp_path / "ca.pem")  # beside the fleet file
    assert api.cert == "/etc/d/cert.pem"
    assert api.key.source == f"file:{tmp_path / 'key.pem'}"


@pytest.mark.parametrize(
    ("docker", "message"),
    [
        ({"api": "tcp://h:2375", "ca": "ca.pem"}, "ca need tls: true"),
        ({"api": "tcp://h:2375", "tls_verify": False}, "tls_verify need tls: true"),
        ({"api": "tcp://h:2376", "tls": True, "cert": "c.pem"}, "cert and key go together"),
        ({"api": "tcp://h:2376", "tls": True, "key": "inline-key"}, "cert and key go together"),
        ({"api": "tcp://h:2376", "tls": True, "tls_verify": False, "ca": "ca.pem"}, "ca is not used with"),
        ({"api": "unix:///var/run/docker.sock", "tls": True}, "tls applies to tcp:// APIs, not unix://"),
    ],
)
def test_docker_tls_settings_that_cannot_work_are_refused(docker, message):
    text = problems(example(**{"vm-docker": {**example()["nodes"]["vm-docker"], "docker": docker}}))
    assert "nodes.vm-docker.docker" in text and message in text


# --------------------------------------------------------------------------- the steps


def sandbox_stop(fleet) -> dict:
    steps = actuate.plan_data(fleet, stop_plan(fleet, "sandbox", set(fleet.nodes)))["steps"]
    return next(step for step in steps if step["node"] == "sandbox")


def test_container_stop_step_gives_the_grace_period_and_verified_tls():
    docker = {
        "api": "tcp://192.168.1.21:2376",
        "tls": True,
        "ca": "/etc/d/ca.pem",
        "cert": "/etc/d/cert.pem",
        "key": {"env": "DOCKER_KEY"},
    }
    fleet = parse(example(**{"vm-docker": {**example()["nodes"]["vm-docker"], "docker": docker}}))
    step = sandbox_stop(fleet)
    assert step["module"] == "wakegrid.fleet.docker_container_power"
    assert step["delegate_to"] == "localhost"  # a tcp:// API is reached from the controller
    assert step["args"]["stop_timeout"] == 30  # Docker's own default would be 10
    assert step["args"]["tls"] is True and step["args"]["validate_certs"] is True
    assert (step["args"]["ca_path"], step["args"]["client_cert"]) == ("/etc/d/ca.pem", "/etc/d/cert.pem")
    assert step["client_key"] is True  # taken from the inventory at run time, never in the plan
    assert "DOCKER_KEY" not in str(step)

    unverified = {"api": "tcp://192.168.1.21:2376", "tls": True, "tls_verify": False}
    fleet = parse(example(**{"vm-docker": {**example()["nodes"]["vm-docker"], "docker": unverified}}))
    step = sandbox_stop(fleet)
    assert (step["args"]["tls"], step["args"]["validate_certs"], step["client_key"]) == (True, False, False)


def test_container_start_waits_for_the_api_through_the_module():
    fleet = load_fleet(EXAMPLE_FLEET)
    plan = start_plan(fleet, "sandbox", {"pi-dijon", "nuc-thory", "pve1", "nas", "jellyfin"})
    steps = actuate.plan_data(fleet, plan)["steps"]
    assert [s["title"] for s in steps] == [
        "start vm vm-docker via Proxmox API of pve1",
        "start container sandbox via Docker API of vm-docker",
    ]
    container = steps[-1]
    # the API of a guest just started: the module waits for it, with the step's own TLS settings
    assert container["ready"] is None
    assert container["args"]["api_wait_timeout"] == container["timeout"] == 300


def test_unix_socket_of_a_remote_host_is_reached_on_that_host():
    # The example fleet's Raspberry Pi runs Docker on its own socket.
    fleet = parse(example(**{"mqtt": {"kind": "container", "parent": "pi-dijon"}}))
    for plan in (start_plan(fleet, "mqtt", {"pi-dijon", "nuc-thory"}), stop_plan(fleet, "mqtt", set(fleet.nodes))):
        (step,) = actuate.plan_data(fleet, plan)["steps"]
        assert step["args"]["docker_host"] == "unix:///var/run/docker.sock"
        assert step["delegate_to"] == "pi-dijon"  # over SSH, never the controller's own socket
        assert step["title"].endswith("via Docker API of pi-dijon")


# --------------------------------------------------------------------------- the observer


def test_remote_unix_socket_is_unknown_not_read_here():
    fleet = parse(example(**{"mqtt": {"kind": "container", "parent": "pi-dijon"}}))
    asked = []

    def docker(api, timeout):
        asked.append(api.api)
        return {"mqtt": "running"}

    probes = Probes(
        tcp=lambda host, port, timeout: ("up", "answers"),
        proxmox_guests=lambda config, secret, timeout: {},
        docker_containers=docker,
    )
    states = observe_power(fleet, ["mqtt"], proxmox_secret=lambda name: "token", probes=probes)
    assert asked == []  # this machine's own socket describes another Docker
    assert states["mqtt"].power == "unknown"
    assert "unix socket of a remote host: observed through SSH only" in states["mqtt"].detail
