"""The fleet's ``stacks:`` section: its schema, its cross-references, and what the inventory makes of it.

A stack is a Compose file deployed as one project to the Docker API of a node
(``playbooks/deploy_stack.yml``); its ``backends`` say which Compose service publishes which fleet
service's backend. Each invalid stack is rejected with the path, the line and the reason, like the
rest of the fleet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_inventory_plugin import ansible_env, inventory, plain  # noqa: F401  (ansible_env is a fixture)

from wakegrid.model import FleetError, load_fleet, parse_fleet

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
WORKSPACE_FLEET = REPO / "inventories" / "lab" / "workspace.fleet.yml"

FLEET = """\
plugin: wakegrid.fleet.fleet
edge: {host: vps, domain: example.org, wireguard: {address: 10.200.0.1/24, endpoint: "vps.example.org:51820"}}
sites:
  home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}
nodes:
  gw: {kind: machine, site: home, address: 192.168.1.2}
  pve: {kind: machine, site: home, address: 192.168.1.3, proxmox: {api: "https://192.168.1.3:8006",
        token_id: "root@pam!wg", token_secret: s3cret}}
  vm-docker: {kind: vm, parent: pve, vmid: 101, address: 192.168.1.21, docker: {api: "tcp://192.168.1.21:2375"}}
  web: {kind: container, parent: vm-docker}
services:
  workspace:
    domain: workspace.example.org
    backends:
      - {node: vm-docker, port: 8088}
"""

STACK = """\
stacks:
  workspace:
    node: vm-docker
    compose_file: workspace/compose.yml
    backends:
      - {service: workspace, compose_service: api, port: 8088}
"""


def problems(text: str) -> list[tuple[str, str, int | None]]:
    with pytest.raises(FleetError) as caught:
        parse_fleet(text, source="<test>")
    return [(p.path, p.reason, p.line) for p in caught.value.problems]


def line(text: str, fragment: str, after: str = "stacks:") -> int:
    """The line number of the first line holding ``fragment`` below the first line holding ``after``."""
    lines = text.splitlines()
    start = next(i for i, text_line in enumerate(lines) if after in text_line)
    return next(i for i in range(start, len(lines)) if fragment in lines[i]) + 1


def with_stack(**fields: Any) -> str:
    """FLEET plus one stack ``workspace`` (the fields of STACK, replaced or removed (None) by ``fields``)."""
    stack = yaml.safe_load(STACK)["stacks"]["workspace"]
    for key, value in fields.items():
        if value is None:
            stack.pop(key, None)
        else:
            stack[key] = value
    return FLEET + yaml.safe_dump({"stacks": {"workspace": stack}}, sort_keys=False)


# --------------------------------------------------------------------------- valid stacks


def test_a_stack_names_its_docker_host_its_compose_file_and_what_it_backs(tmp_path: Path):
    path = tmp_path / "home.fleet.yml"
    path.write_text(
        FLEET
        + STACK
        + """\
    project: ws
    env_files: [images.env]
    images: [/srv/images/api.tar]
    variables: {WORKSPACE_API_PORT: 8088, GREETING: hello}
    secrets: {WORKSPACE_DB_PASSWORD: {env: WS_DB_PASSWORD}}
"""
    )
    fleet = load_fleet(path)
    stack = fleet.stacks["workspace"]
    assert stack.node == "vm-docker"
    assert fleet.project_of("workspace") == "ws"
    # Paths are beside the fleet file, wherever the command runs from; absolute ones stay.
    assert stack.compose_file == str(tmp_path / "workspace" / "compose.yml")
    assert stack.env_files == [str(tmp_path / "images.env")]
    assert stack.images == ["/srv/images/api.tar"]
    # A YAML number is the string it was written as (Compose variables are strings).
    assert stack.variables == {"WORKSPACE_API_PORT": "8088", "GREETING": "hello"}
    secret = stack.secrets["WORKSPACE_DB_PASSWORD"]
    assert secret.source == "env:WS_DB_PASSWORD"
    assert secret.where == "stacks.workspace.secrets.WORKSPACE_DB_PASSWORD"
    assert [(b.service, b.compose_service, b.port) for b in stack.backends] == [("workspace", "api", 8088)]


def test_the_project_defaults_to_the_stack_name_and_stacks_are_optional():
    assert parse_fleet(FLEET).stacks == {}
    fleet = parse_fleet(FLEET + STACK)
    assert fleet.project_of("workspace") == "workspace"
    assert fleet.stacks["workspace"].variables == {} and fleet.stacks["workspace"].images == []


def test_a_backend_written_by_address_matches_the_stack_too():
    text = FLEET.replace("{node: vm-docker, port: 8088}", "{address: 192.168.1.21, site: home, port: 8088}")
    assert parse_fleet(text + STACK).stacks["workspace"].backends[0].port == 8088


def test_a_stack_needs_no_backends():
    assert parse_fleet(with_stack(backends=None)).stacks["workspace"].backends == []


# --------------------------------------------------------------------------- cross-references


def test_unknown_node():
    text = with_stack(node="vm-nope")
    assert problems(text) == [("stacks.workspace.node", "unknown node 'vm-nope'", line(text, "node: vm-nope"))]


@pytest.mark.parametrize("node", ["pve", "gw", "web"])
def test_a_node_without_docker_cannot_take_a_stack(node: str):
    text = with_stack(node=node)
    assert problems(text) == [
        (
            "stacks.workspace.node",
            f"{node!r} has no docker capability (a stack is deployed through its node's Docker API)",
            line(text, f"node: {node}"),
        )
    ]


def test_unknown_service():
    text = with_stack(backends=[{"service": "wiki", "compose_service": "api", "port": 8088}])
    assert problems(text) == [("stacks.workspace.backends[0].service", "unknown service 'wiki'", line(text, "wiki"))]


def test_the_service_must_route_to_the_port_the_stack_publishes():
    text = with_stack(backends=[{"service": "workspace", "compose_service": "api", "port": 8089}])
    assert problems(text) == [
        (
            "stacks.workspace.backends[0].port",
            "service 'workspace' has no backend at 'vm-docker' port 8089; add {node: vm-docker, port: 8089} "
            "to services.workspace.backends",
            line(text, "port: 8089"),
        )
    ]


def test_the_same_compose_service_backs_a_service_once():
    backend = {"service": "workspace", "compose_service": "api", "port": 8088}
    text = with_stack(backends=[backend, dict(backend)])
    second = line(text, "- service: workspace", after="compose_service: api")
    assert problems(text) == [("stacks.workspace.backends[1]", "api backing workspace is already backend [0]", second)]


def test_every_problem_is_reported_at_once():
    text = with_stack(node="nope", backends=[{"service": "wiki", "compose_service": "api", "port": 1}])
    assert [path for path, _, _ in problems(text)] == ["stacks.workspace.node", "stacks.workspace.backends[0].service"]


# --------------------------------------------------------------------------- Compose names and values


def test_a_stack_name_that_is_no_compose_project_needs_a_project():
    text = FLEET + STACK.replace("  workspace:\n    node", "  Workspace:\n    node")
    assert problems(text) == [
        (
            "stacks.Workspace",
            "'Workspace' is not a Compose project name (lower-case letters, digits, '_' and '-'): give project",
            line(text, "Workspace:"),
        )
    ]
    assert parse_fleet(text + "    project: workspace\n").project_of("Workspace") == "workspace"


def test_an_invalid_project_is_refused():
    text = with_stack(project="Work.Space")
    assert problems(text) == [
        (
            "stacks.workspace.project",
            "'Work.Space' is not a Compose project name (lower-case letters, digits, '_' and '-', "
            "starting with a letter or digit)",
            line(text, "project: Work.Space"),
        )
    ]


def test_two_stacks_cannot_be_one_project_on_one_host():
    text = FLEET + STACK + "  other:\n    node: vm-docker\n    compose_file: other.yml\n    project: workspace\n"
    assert problems(text) == [
        (
            "stacks.other.project",
            "stack 'workspace' is already Compose project 'workspace' on 'vm-docker'",
            line(text, "project: workspace"),
        )
    ]


def test_variables_are_named_like_environment_variables_and_hold_strings():
    text = with_stack(variables={"1BAD": "x", "GOOD": "y"})
    assert problems(text) == [
        (
            "stacks.workspace.variables",
            "'1BAD' is not a variable name (letters, digits and '_', not starting with a digit)",
            line(text, "variables:"),
        )
    ]
    text = with_stack(variables={"DEBUG": True})
    assert problems(text) == [
        (
            "stacks.workspace.variables.DEBUG",
            "True is a boolean; quote it (Compose variables are strings: 'true', '1', …)",
            line(text, "DEBUG: true"),
        )
    ]
    assert problems(with_stack(variables={"LIST": [1]}))[0][1] == "[1] is not a string (Compose variables are strings)"


def test_a_variable_is_either_shown_or_secret():
    text = with_stack(variables={"TOKEN": "a"}, secrets={"TOKEN": {"env": "TOKEN"}})
    assert problems(text) == [
        (
            "stacks.workspace.secrets.TOKEN",
            "TOKEN is also in variables (a value is either shown or secret)",
            line(text, "TOKEN:", after="secrets:"),
        )
    ]


def test_secrets_take_the_fleet_secret_forms_only():
    text = with_stack(secrets={"TOKEN": {"url": "x"}})
    assert problems(text) == [
        (
            "stacks.workspace.secrets.TOKEN",
            "a secret is a string, {env: VAR}, {file: PATH} or an Ansible Vault (!vault) value",
            line(text, "TOKEN:"),
        )
    ]


def test_shape_errors_name_the_field():
    text = with_stack(compose_file=None, nodes="x", backends=[{"service": "workspace", "port": 8088}])
    assert problems(text) == [
        ("stacks.workspace.compose_file", "required", line(text, "workspace:")),
        ("stacks.workspace.backends[0].compose_service", "required", line(text, "- service: workspace")),
        ("stacks.workspace.nodes", "unknown field", line(text, "nodes: x")),
    ]
    bad_service = [{"service": "workspace", "compose_service": "a b", "port": 0}]
    assert [reason for _, reason, _ in problems(with_stack(backends=bad_service))] == [
        "'a b' is not a Compose service name (letters, digits, '_', '.' and '-')",
        "0 is not a port (an integer from 1 to 65535)",
    ]


# --------------------------------------------------------------------------- the lab's workspace variant


def test_the_workspace_variant_is_the_lab_fleet_plus_the_stack_and_its_service():
    lab = yaml.safe_load(LAB_FLEET.read_text())
    variant = yaml.safe_load(WORKSPACE_FLEET.read_text())
    stacks = variant.pop("stacks")
    service = variant["services"].pop("workspace")
    assert variant == lab, "inventories/lab/workspace.fleet.yml drifted from lab.fleet.yml: copy the change over"
    assert list(stacks) == ["workspace"] and service["backends"] == [{"node": "vm-docker", "port": 8088}]
    fleet = load_fleet(WORKSPACE_FLEET)
    stack = fleet.stacks["workspace"]
    assert Path(stack.compose_file).resolve() == REPO / "examples" / "workspace" / "compose.yml"
    assert set(stack.secrets) == {"WORKSPACE_DB_PASSWORD", "WORKSPACE_API_TOKEN"}


# --------------------------------------------------------------------------- the inventory


def test_the_inventory_gives_each_stack_on_group_all(ansible_env: dict[str, str]):  # noqa: F811
    data = plain(inventory(ansible_env, WORKSPACE_FLEET))
    stack = data["all"]["vars"]["wakegrid_stacks"]["workspace"] if "vars" in data["all"] else None
    if stack is None:  # ansible-inventory puts group vars of all on each host
        stack = data["_meta"]["hostvars"]["vps"]["wakegrid_stacks"]["workspace"]
    assert stack["node"] == "vm-docker" and stack["project"] == "workspace"
    assert stack["compose_file"] == str(REPO / "examples" / "workspace" / "compose.yml")
    assert stack["project_src"] == str(REPO / "examples" / "workspace")
    assert stack["delegate_to"] == "localhost"  # a tcp:// API is reached from the controller
    assert stack["variables"] == {"WORKSPACE_API_PORT": "8088", "WORKSPACE_INSTANCE": "lab"}
    assert stack["backends"] == [
        {"service": "workspace", "compose_service": "api", "address": "10.231.1.21", "port": 8088}
    ]
    # Secrets are where they are written, never what they are.
    text = json.dumps(stack["secrets"])
    assert "fleet_secret" in text and "stacks.workspace.secrets.WORKSPACE_API_TOKEN" in text
    assert "/var/cache/wakegrid-lab/workspace/secrets" not in text
