"""The wakegrid.fleet.fleet inventory plugin, through real ansible-inventory and ansible runs.

Every test runs Ansible in a subprocess with the repository's ansible.cfg, which finds the
collection through the link scripts/link-collection.sh makes, exactly as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "inventories" / "example" / "example.fleet.yml"

# A small valid fleet; tests add nodes (and top-level sections) to it.
BASE_FLEET = """\
plugin: wakegrid.fleet.fleet
edge:
  host: vps
  address: 203.0.113.10
  domain: example.org
  wireguard: {address: 10.200.0.1/24, endpoint: "vps.example.org:51820"}
sites:
  home: {gateway: gw, lan: 192.168.1.0/24, wireguard: {address: 10.200.1.1/24}}
nodes:
  gw: {kind: machine, site: home, address: 192.168.1.2}
"""


@pytest.fixture(scope="session")
def ansible_env() -> dict[str, str]:
    if not (BIN / "ansible-inventory").exists():
        pytest.skip(f"ansible-core is not installed next to {sys.executable}")
    subprocess.run(["bash", str(ROOT / "scripts" / "link-collection.sh")], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="0",
    )
    return env


def run(env: dict[str, str], *args: str, check: bool = True, **extra_env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=ROOT,
        env={**env, **extra_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def plain(value: Any) -> Any:
    """ansible-inventory's JSON without its untrusted-string wrappers ({"__ansible_unsafe": s} -> s)."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def inventory(env: dict[str, str], source: Path, *args: str, **extra_env: str) -> dict[str, Any]:
    return json.loads(run(env, "ansible-inventory", "-i", str(source), "--list", *args, **extra_env).stdout)


def task_value(env: dict[str, str], source: Path, host: str, var: str, *args: str, **extra_env: str) -> Any:
    """The value of ``var`` as a task on ``host`` sees it (templated, secrets resolved)."""
    result = run(
        env,
        "ansible",
        host,
        "-i",
        str(source),
        "-m",
        "ansible.builtin.debug",
        "-a",
        f"var={var}",
        *args,
        **extra_env,
    )
    # The ad-hoc (minimal) callback prints `host | SUCCESS => {json result}`.
    return json.loads(result.stdout.split("=>", 1)[1])[var]


def write_fleet(directory: Path, nodes: str = "", extra: str = "", name: str = "test.fleet.yml") -> Path:
    path = directory / name
    path.write_text(BASE_FLEET + textwrap.indent(textwrap.dedent(nodes), "  ") + textwrap.dedent(extra))
    return path


# --------------------------------------------------------------------------- the example fleet


@pytest.fixture(scope="module")
def example(ansible_env: dict[str, str]) -> dict[str, Any]:
    """The example fleet with --export: host variables apart from the group variables."""
    return plain(inventory(ansible_env, EXAMPLE, "--export"))


def hosts_of(data: dict[str, Any], group: str) -> list[str]:
    return data.get(group, {}).get("hosts", [])


def test_example_groups(example: dict[str, Any]) -> None:
    assert set(example["all"]["children"]) >= {
        "edge",
        "sites",
        "gateways",
        "machines",
        "vms",
        "lxcs",
        "containers",
        "proxmox_hosts",
        "docker_hosts",
        "wireguard",
    }
    assert hosts_of(example, "edge") == ["vps"]
    assert example["sites"]["children"] == ["dijon", "thory"]
    # Guests and containers belong to the site of the machine at the top of their tree.
    assert hosts_of(example, "thory") == ["nuc-thory", "pve-thory", "jellyfin-thory", "docker-thory", "api-thory"]
    assert {"pve1", "vm-docker", "jellyfin", "sandbox", "api"} <= set(hosts_of(example, "dijon"))
    assert hosts_of(example, "gateways") == ["pi-dijon", "nuc-thory"]
    assert hosts_of(example, "machines") == ["pi-dijon", "nas", "pve1", "pve2", "nuc-thory", "pve-thory"]
    assert hosts_of(example, "vms") == ["vm-docker", "vm-ubuntu", "homeassistant"]
    assert hosts_of(example, "lxcs") == ["jellyfin", "jellyfin-thory", "docker-thory"]
    assert hosts_of(example, "containers") == ["sandbox", "api", "api-thory"]
    assert hosts_of(example, "proxmox_hosts") == ["pve1", "pve2", "pve-thory"]
    assert hosts_of(example, "docker_hosts") == ["pi-dijon", "vm-docker", "docker-thory"]
    assert example["wireguard"]["children"] == ["wireguard_hub", "wireguard_spokes"]
    assert hosts_of(example, "wireguard_hub") == ["vps"]
    assert hosts_of(example, "wireguard_spokes") == ["pi-dijon", "nuc-thory"]


def test_example_machine_vars(example: dict[str, Any]) -> None:
    pve1 = example["_meta"]["hostvars"]["pve1"]
    assert pve1["ansible_host"] == "192.168.1.3"
    assert pve1["ansible_user"] == "root"
    assert pve1["ansible_port"] == 22
    assert pve1["ansible_ssh_private_key_file"] == "~/.ssh/wakegrid_ed25519"
    assert pve1["wakegrid_kind"] == "machine"
    assert pve1["wakegrid_site"] == "dijon"
    assert pve1["wakegrid_gateway"] == "pi-dijon"
    assert pve1["wakegrid_parent"] is None
    assert pve1["wakegrid_ancestors"] == []
    assert pve1["wakegrid_children"] == ["vm-docker", "vm-ubuntu", "jellyfin"]
    assert pve1["wakegrid_confirm_shutdown"] is True
    assert pve1["wakegrid_mac"] == "52:54:00:12:34:03"
    assert pve1["wakegrid_wol"] == {"port": 9, "broadcast": None, "interface": None, "secureon": None}
    assert pve1["wakegrid_proxmox"] == {
        "api": "https://192.168.1.3:8006",
        "node": "pve1",
        "token_id": "root@pam!wakegrid",
        "token_secret": secret_reference("nodes.pve1.proxmox.token_secret", EXAMPLE),
        "verify_tls": True,
    }
    assert pve1["wakegrid_docker"] is None
    assert pve1["wakegrid_timeouts"] == {"start": 300.0, "stop": 180.0}
    assert pve1["wakegrid_tags"] == []

    nas = example["_meta"]["hostvars"]["nas"]
    assert nas["ansible_user"] == "admin"  # its own ssh.user over defaults.ssh
    assert nas["ansible_ssh_private_key_file"] == "~/.ssh/wakegrid_ed25519"
    assert nas["wakegrid_dependants"] == ["jellyfin"]
    assert nas["wakegrid_wol"]["broadcast"] == "192.168.1.255"


def test_example_guest_and_container_vars(example: dict[str, Any]) -> None:
    hostvars = example["_meta"]["hostvars"]
    jellyfin = hostvars["jellyfin"]
    assert jellyfin["ansible_host"] == "192.168.1.30"
    assert (jellyfin["wakegrid_kind"], jellyfin["wakegrid_vmid"], jellyfin["wakegrid_parent"]) == ("lxc", 201, "pve1")
    assert jellyfin["wakegrid_dependencies"] == ["nas"]
    assert jellyfin["wakegrid_dependants"] == ["sandbox"]
    assert jellyfin["wakegrid_confirm_shutdown"] is False
    assert hostvars["vm-docker"]["wakegrid_docker"] == {
        "api": "tcp://192.168.1.21:2375",
        "tls": False,
        "tls_verify": True,
        "ca": None,
        "cert": None,
        "key": None,
    }

    sandbox = hostvars["sandbox"]
    # No SSH into a container: tasks run in it through its parent's Docker API.
    assert {key: value for key, value in sandbox.items() if key.startswith("ansible_")} == {
        "ansible_connection": "community.docker.docker_api",
        "ansible_host": "sandbox",
        "ansible_docker_docker_host": "tcp://192.168.1.21:2375",
    }
    assert sandbox["wakegrid_kind"] == "container"
    assert sandbox["wakegrid_container"] == "sandbox"
    assert sandbox["wakegrid_docker_api"] == "tcp://192.168.1.21:2375"
    assert sandbox["wakegrid_ancestors"] == ["pve1", "vm-docker"]
    assert sandbox["wakegrid_site"] == "dijon"
    assert hostvars["api"]["wakegrid_container"] == "api"  # defaults to the node name
    assert hostvars["api-thory"]["wakegrid_docker_api"] == "tcp://192.168.2.21:2375"


def test_example_edge_and_gateway_vars(example: dict[str, Any]) -> None:
    vps = example["_meta"]["hostvars"]["vps"]
    assert vps["ansible_host"] == "203.0.113.10"
    assert vps["ansible_user"] == "root"
    assert vps["wakegrid_kind"] == "edge"
    assert vps["wakegrid_edge"] == {
        "address": "203.0.113.10",
        "domain": "acecinema.fr",
        "wireguard": {"address": "10.200.0.1/24", "port": 51820, "endpoint": "vps.acecinema.fr:51820"},
    }
    assert vps["wakegrid_wireguard"]["role"] == "hub"
    gateway = example["_meta"]["hostvars"]["nuc-thory"]
    assert gateway["wakegrid_wireguard"] == {
        "role": "spoke",
        "site": "thory",
        "address": "10.200.2.1/24",
        "lan": "192.168.2.0/24",
        "priority": 2,
    }
    assert "wakegrid_wireguard" not in example["_meta"]["hostvars"]["pve1"]


def test_example_fleet_wide_vars(example: dict[str, Any]) -> None:
    fleet = example["all"]["vars"]
    assert fleet["wakegrid_fleet_file"] == str(EXAMPLE)
    assert fleet["wakegrid_sites"]["dijon"] == {
        "gateway": "pi-dijon",
        "lan": "192.168.1.0/24",
        "priority": 1,
        "wireguard": {"address": "10.200.1.1/24"},
    }
    stream = fleet["wakegrid_services"]["stream"]
    assert stream["domain"] == "stream.acecinema.fr"
    assert stream["policy"] == {"mode": "on_demand", "idle_after": 1200.0, "timezone": None, "windows": []}
    assert stream["allow"] == ["192.168.0.0/16", "10.200.0.0/16"]
    assert stream["health"]["path"] == "/health"
    assert stream["site_order"] == ["dijon", "thory"]
    # Backends resolved: address from the node, site from the node's tree.
    assert stream["backends"] == [
        {"address": "192.168.1.30", "port": 8096, "site": "dijon", "weight": 3, "node": "jellyfin", "tags": []},
        {"address": "192.168.2.30", "port": 8096, "site": "thory", "weight": 1, "node": "jellyfin-thory", "tags": []},
    ]
    home = fleet["wakegrid_services"]["home"]["policy"]
    assert home["timezone"] == "Europe/Paris"
    assert home["windows"][0] == {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "07:00", "end": "23:30"}
    assert fleet["wakegrid_dependency_graph"]["jellyfin"] == ["nas"]
    assert fleet["wakegrid_dependency_graph"]["pve1"] == []
    # Fleet-wide variables live on the group all, not copied onto every host.
    assert "wakegrid_services" not in example["_meta"]["hostvars"]["pve1"]


def test_graph_from_repo_root(ansible_env: dict[str, str]) -> None:
    graph = run(ansible_env, "ansible-inventory", "-i", str(EXAMPLE.relative_to(ROOT)), "--graph").stdout
    assert "@wireguard_spokes:" in graph
    assert "|--sandbox" in graph


# --------------------------------------------------------------------------- invalid files


def test_invalid_fleet_names_every_problem(ansible_env: dict[str, str], tmp_path: Path) -> None:
    source = write_fleet(
        tmp_path,
        """\
        nas: {kind: machine, site: home, mac: "zz:00"}
        box: {kind: lxc, parent: gw, vmid: 5}
        """,
        "services:\n  web: {domain: not a domain, backends: []}\n",
    )
    result = run(ansible_env, "ansible-inventory", "-i", str(source), "--list", check=False)
    assert result.returncode != 0, "an invalid fleet must fail the run (ansible.cfg: unparsed_is_failed)"
    for problem in (
        f"{source}:11: nodes.nas.mac: 'zz:00' is not a MAC address",
        f"{source}:12: nodes.box.vmid: must be greater than or equal to 100",
        f"{source}:14: services.web.domain: 'not a domain' is not a domain name",
        f"{source}:14: services.web.backends: must not be empty",
    ):
        assert problem in result.stderr
    assert "invalid fleet, 4 problems" in result.stderr


def test_cross_reference_problems_are_reported(ansible_env: dict[str, str], tmp_path: Path) -> None:
    source = write_fleet(tmp_path, "jelly: {kind: lxc, parent: gw, vmid: 201}\n")
    result = run(ansible_env, "ansible-inventory", "-i", str(source), "--list", check=False)
    assert result.returncode != 0
    assert f"{source}:11: nodes.jelly.parent: 'gw' has no proxmox capability" in result.stderr


def test_verify_file_rejects_other_names(ansible_env: dict[str, str], tmp_path: Path) -> None:
    valid = write_fleet(tmp_path)
    other = tmp_path / "fleet.yml"
    shutil.copy(valid, other)
    result = run(ansible_env, "ansible-inventory", "-i", str(other), "--list", check=False)
    assert result.returncode != 0
    assert f"{other} names the wakegrid.fleet.fleet plugin, but a fleet file's name must end in .fleet.yml" in (
        result.stderr
    )
    # Both spellings of the suffix are fleet files.
    yaml_suffix = tmp_path / "home.fleet.yaml"
    shutil.copy(valid, yaml_suffix)
    assert hosts_of(plain(inventory(ansible_env, yaml_suffix)), "gateways") == ["gw"]


def test_missing_wakegrid_package_is_explained(ansible_env: dict[str, str]) -> None:
    # Run ansible-inventory's own entry point in an interpreter where `wakegrid` cannot be imported.
    script = (
        "import sys; sys.modules['wakegrid'] = None; "
        f"sys.argv = ['ansible-inventory', '-i', {str(EXAMPLE)!r}, '--list']; "
        "from ansible.cli.inventory import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=ansible_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "the wakegrid Python package is required on the controller: pip install" in result.stderr


# --------------------------------------------------------------------------- Constructable


def test_compose_groups_and_keyed_groups(ansible_env: dict[str, str], tmp_path: Path) -> None:
    source = write_fleet(
        tmp_path,
        """\
        pve: {kind: machine, site: home, address: 192.168.1.3, tags: [media],
              proxmox: {api: "https://192.168.1.3:8006", token_id: "root@pam!wg", token_secret: s3cret}}
        jelly: {kind: lxc, parent: pve, vmid: 201, tags: [media, public]}
        """,
        """\
        services:
          stream:
            domain: stream.example.org
            backends: [{node: pve, port: 8096}]
        compose:
          label: wakegrid_kind ~ '@' ~ (wakegrid_site | default('none', true))
          service_count: wakegrid_services | length
        groups:
          media: "'media' in wakegrid_tags"
          labelled_lxc: label.startswith('lxc@')
        keyed_groups:
          - {key: wakegrid_kind, prefix: kind}
          - {key: wakegrid_site, prefix: site, default_value: nowhere}
        """,
    )
    data = plain(inventory(ansible_env, source, "--export"))
    hostvars = data["_meta"]["hostvars"]
    assert hostvars["jelly"]["label"] == "lxc@home"
    assert hostvars["vps"]["label"] == "edge@none"
    assert hostvars["gw"]["service_count"] == 1  # compose sees the fleet-wide variables too
    assert hosts_of(data, "media") == ["pve", "jelly"]
    assert hosts_of(data, "labelled_lxc") == ["jelly"]  # groups see composed variables
    assert hosts_of(data, "kind_machine") == ["gw", "pve"]
    assert hosts_of(data, "kind_edge") == ["vps"]
    assert hosts_of(data, "site_home") == ["gw", "pve", "jelly"]
    assert hosts_of(data, "site_nowhere") == ["vps"]


def test_strict_makes_a_bad_expression_fatal(ansible_env: dict[str, str], tmp_path: Path) -> None:
    bad = "compose:\n  broken: no_such_variable.attribute\n"
    lenient = write_fleet(tmp_path, extra=bad, name="lenient.fleet.yml")
    assert "broken" not in plain(inventory(ansible_env, lenient))["_meta"]["hostvars"]["gw"]
    strict = write_fleet(tmp_path, extra=bad + "strict: true\n", name="strict.fleet.yml")
    result = run(ansible_env, "ansible-inventory", "-i", str(strict), "--list", check=False)
    assert result.returncode != 0
    assert "Could not set broken for host" in result.stderr


# --------------------------------------------------------------------------- secrets


def secret_reference(where: str, source: Path) -> str:
    """What the inventory holds for a secret, whatever its form: where it is, never what it is."""
    return f"{{{{ lookup('wakegrid.fleet.fleet_secret', '{where}', fleet_file='{source}') }}}}"


def proxmox_node(name: str, secret: str) -> str:
    return (
        f"{name}: {{kind: machine, site: home, proxmox: "
        f'{{api: "https://192.168.1.3:8006", token_id: "root@pam!wg", token_secret: {secret}}}}}\n'
    )


def vault_block(env: dict[str, str], password_file: Path, plaintext: str, indent: int) -> str:
    """`!vault |` and its ciphertext lines, indented by ``indent`` spaces, from ansible-vault itself."""
    encrypted = run(env, "ansible-vault", "encrypt_string", "--vault-password-file", str(password_file), plaintext)
    header, *ciphertext = encrypted.stdout.strip().splitlines()
    assert header.strip() == "!vault |"
    return "!vault |\n" + "".join(f"{' ' * indent}{line.strip()}\n" for line in ciphertext)


# One marker per secret form and field; none may ever be printed by ansible-inventory.
MARKERS = {
    "inline": "inline-marker-3c9f1e",
    "env": "env-marker-a41d07",
    "file": "file-marker-77b2c5",
    "vault": "vault-marker-0e5d93",
    "ssh": "ssh-key-marker-9f0a2b",
    "secureon": "11:22:33:44:55:66",
    "docker": "docker-key-marker-c3d2e1",
}


@pytest.fixture
def secret_fleet(ansible_env: dict[str, str], tmp_path: Path) -> tuple[Path, Path]:
    """A fleet with a secret of every form in every secret field, and its vault password file."""
    password_file = tmp_path / "vault-pass"
    password_file.write_text("correct horse battery staple\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pve.token").write_text(MARKERS["file"] + "\n")
    (tmp_path / "edge.key").write_text(MARKERS["ssh"] + "\n")
    source = write_fleet(
        tmp_path,
        proxmox_node("pve-inline", f'"{MARKERS["inline"]}-{{{{ 6 * 7 }}}}"')
        + proxmox_node("pve-env", "{env: WG_TEST_TOKEN}")
        # A relative path is relative to the fleet file, wherever Ansible runs.
        + proxmox_node("pve-file", "{file: secrets/pve.token}")
        + "pve-vault:\n"
        "  kind: machine\n"
        "  site: home\n"
        "  mac: '52:54:00:12:34:07'\n"
        f"  wol: {{secureon: '{MARKERS['secureon']}'}}\n"
        "  proxmox:\n"
        '    api: "https://192.168.1.7:8006"\n'
        '    token_id: "root@pam!wg"\n'
        "    token_secret: " + vault_block(ansible_env, password_file, MARKERS["vault"], 6) + "docker-tls:\n"
        "  kind: machine\n"
        "  site: home\n"
        "  docker: {api: 'tcp://192.168.1.8:2376', tls: true, cert: client.pem, "
        f"key: {MARKERS['docker']}}}\n",
        f"defaults:\n  ssh: {{private_key: {{file: {tmp_path / 'edge.key'}}}}}\n",
    )
    return source, password_file


def assert_no_marker(result: subprocess.CompletedProcess[str]) -> None:
    for form, marker in MARKERS.items():
        assert marker not in result.stdout, f"the {form} secret was printed"
        assert marker not in result.stderr, f"the {form} secret was printed"


def test_no_secret_form_is_printed_by_ansible_inventory(
    ansible_env: dict[str, str], secret_fleet: tuple[Path, Path]
) -> None:
    source, password_file = secret_fleet
    env = {**ansible_env, "WG_TEST_TOKEN": MARKERS["env"]}  # even with every source readable
    vault = ("--vault-password-file", str(password_file))
    for args in (
        ("--list",),
        ("--list", *vault),
        ("--list", "--export", "--yaml"),
        ("--graph", "--vars"),
        *(("--host", host, *vault) for host in ("pve-inline", "pve-env", "pve-file", "pve-vault", "docker-tls", "gw")),
    ):
        assert_no_marker(run(env, "ansible-inventory", "-i", str(source), *args))

    # What --list shows for a secret, whatever its form: the lookup that reads it where it is written.
    hostvars = plain(json.loads(run(env, "ansible-inventory", "-i", str(source), "--list").stdout))["_meta"]["hostvars"]
    for host in ("pve-inline", "pve-env", "pve-file", "pve-vault"):
        assert hostvars[host]["wakegrid_proxmox"]["token_secret"] == secret_reference(
            f"nodes.{host}.proxmox.token_secret", source
        )
    assert hostvars["pve-vault"]["wakegrid_wol"]["secureon"] == secret_reference("nodes.pve-vault.wol.secureon", source)
    assert hostvars["docker-tls"]["wakegrid_docker"]["key"] == secret_reference("nodes.docker-tls.docker.key", source)
    assert hostvars["gw"]["ansible_ssh_private_key"] == secret_reference("defaults.ssh.private_key", source)


def test_tasks_get_the_secrets_and_no_log_keeps_them_out_of_the_output(
    ansible_env: dict[str, str], secret_fleet: tuple[Path, Path], tmp_path: Path
) -> None:
    source, password_file = secret_fleet
    out = tmp_path / "out"
    out.mkdir()
    reads = {
        "inline": "hostvars['pve-inline'].wakegrid_proxmox.token_secret",
        "env": "hostvars['pve-env'].wakegrid_proxmox.token_secret",
        "file": "hostvars['pve-file'].wakegrid_proxmox.token_secret",
        "vault": "hostvars['pve-vault'].wakegrid_proxmox.token_secret",
        "ssh": "hostvars['gw'].ansible_ssh_private_key",
        "secureon": "hostvars['pve-vault'].wakegrid_wol.secureon",
        "docker": "hostvars['docker-tls'].wakegrid_docker.key",
        # Called directly, the lookup finds the fleet file through wakegrid_fleet_file.
        "direct": "lookup('wakegrid.fleet.fleet_secret', 'nodes.pve-env.proxmox.token_secret')",
    }
    tasks = "".join(
        f"    - name: Use the {form} secret\n"
        f"      ansible.builtin.copy: {{content: \"{{{{ {expression} }}}}\", dest: {out / form}, mode: '0600'}}\n"
        "      no_log: true\n"
        f"    - name: Show the {form} secret, were it not for no_log\n"
        f'      ansible.builtin.debug: {{msg: "{{{{ {expression} }}}}"}}\n'
        "      no_log: true\n"
        for form, expression in reads.items()
    )
    playbook = tmp_path / "use.yml"
    playbook.write_text(f"- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n{tasks}")
    result = run(
        ansible_env,
        "ansible-playbook",
        "-i",
        str(source),
        str(playbook),
        "-v",
        "--vault-password-file",
        str(password_file),
        WG_TEST_TOKEN=MARKERS["env"],
    )
    assert_no_marker(result)
    got = {form: (out / form).read_text() for form in reads}
    # An inline secret is taken literally, never rendered as a template.
    assert got["inline"] == MARKERS["inline"] + "-{{ 6 * 7 }}"
    assert got["direct"] == MARKERS["env"]
    for form in ("env", "file", "vault", "ssh", "secureon", "docker"):
        assert got[form] == MARKERS[form]


def test_an_unset_environment_variable_fails_the_task_naming_path_and_variable(
    ansible_env: dict[str, str], tmp_path: Path
) -> None:
    source = write_fleet(tmp_path, proxmox_node("pve-env", "{env: WG_TEST_UNSET_TOKEN}"))
    # Listing needs no secret: the variable is read only by the task that uses it.
    listed = plain(inventory(ansible_env, source))
    assert "pve-env" in listed["_meta"]["hostvars"]
    result = run(
        ansible_env,
        "ansible",
        "pve-env",
        "-i",
        str(source),
        "-m",
        "ansible.builtin.debug",
        "-a",
        "var=wakegrid_proxmox.token_secret",
        check=False,
    )
    assert result.returncode != 0, "an unset variable must fail the task, not give an empty secret"
    assert "nodes.pve-env.proxmox.token_secret: environment variable WG_TEST_UNSET_TOKEN is not set" in (
        result.stdout + result.stderr
    )


def test_a_syntax_error_next_to_an_inline_secret_does_not_print_it(ansible_env: dict[str, str], tmp_path: Path) -> None:
    marker = MARKERS["inline"]
    source = write_fleet(
        tmp_path,
        f"pve: {{kind: machine, site: home, proxmox: {{api: 'https://192.168.1.3:8006', token_id: 'root@pam!wg',\n"
        f"  token_secret: {marker}}}}}\n"
        "broken: {kind: @machine}\n"  # '@' cannot start a YAML token
        "after: {kind: machine, site: home}\n",
    )
    lines = source.read_text().splitlines()
    secret_line = next(number for number, line in enumerate(lines, 1) if marker in line)
    assert lines[secret_line].strip().startswith("broken:")  # the error is on the next line
    for args in (
        ("ansible-inventory", "-i", str(source), "--list"),
        ("ansible", "all", "-i", str(source), "--list-hosts"),
    ):
        result = run(ansible_env, *args, check=False)
        assert result.returncode != 0
        assert f"{source}:{secret_line + 1}: invalid YAML" in result.stderr
        assert marker not in result.stdout + result.stderr


def test_containers_of_a_remote_unix_socket_or_a_tls_api_are_reached_where_the_api_is(tmp_path, ansible_env):
    """A unix:// socket is on its host: reached over SSH, never through the controller's own socket."""
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    fleet = tmp_path / "docker.fleet.yml"
    fleet.write_text(
        textwrap.dedent(
            """\
            plugin: wakegrid.fleet.fleet
            edge: {host: vps, domain: example.net, address: 203.0.113.1,
                   wireguard: {address: 10.200.0.1/24, endpoint: "vps.example.net:51820"}}
            sites:
              home: {gateway: pi, wireguard: {address: 10.200.1.1/24}}
            defaults: {ssh: {user: admin, port: 2222}}
            nodes:
              pi: {kind: machine, site: home, address: 192.168.1.2, docker: {api: "unix:///var/run/docker.sock"}}
              nuc:
                kind: machine
                site: home
                address: 192.168.1.3
                docker: {api: "tcp://192.168.1.3:2376", tls: true, ca: ca.pem, cert: cert.pem, key: {file: key.pem}}
              pihole: {kind: container, parent: pi}
              db: {kind: container, parent: nuc}
            """
        )
    )
    listing = subprocess.run(
        ["ansible-inventory", "-i", str(fleet), "--list"], capture_output=True, text=True, env=ansible_env, check=True
    )
    hostvars = plain(json.loads(listing.stdout))["_meta"]["hostvars"]
    assert hostvars["pihole"]["ansible_docker_docker_host"] == "ssh://admin@192.168.1.2:2222"
    db = {key: value for key, value in hostvars["db"].items() if key.startswith("ansible_docker_")}
    assert db == {
        "ansible_docker_docker_host": "tcp://192.168.1.3:2376",
        "ansible_docker_tls": True,
        "ansible_docker_validate_certs": True,
        "ansible_docker_ca_path": str(tmp_path / "ca.pem"),
        "ansible_docker_client_cert": str(tmp_path / "cert.pem"),
        "ansible_docker_client_key": str(tmp_path / "key.pem"),
    }
