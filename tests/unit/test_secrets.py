"""Secrets of a loaded fleet: where each is written, and errors that name it, never its value.

The Ansible side (the inventory holds references, the fleet_secret lookup reads them) is in
test_inventory_plugin.py; this is the `wakegrid` side, which reads secrets through the same Secret.
"""

from __future__ import annotations

import socket
import textwrap

import pytest

from wakegrid.model import parse_fleet
from wakegrid.observe.power import observe_power
from wakegrid.secret import SecretError, secret_at, walk_secrets

VALUE = "Marker-Secret-Value-5e1f"

FLEET = """\
plugin: wakegrid.fleet.fleet
defaults:
  ssh: {{private_key: {{file: keys/fleet.key}}}}
edge:
  host: vps
  address: 203.0.113.10
  domain: example.org
  ssh: {{private_key: {{env: WG_EDGE_KEY}}}}
  wireguard: {{address: 10.200.0.1/24, endpoint: "vps.example.org:51820"}}
sites:
  home: {{gateway: gw, lan: 192.168.1.0/24, wireguard: {{address: 10.200.1.1/24}}}}
nodes:
  gw: {{kind: machine, site: home, address: 127.0.0.2, ssh: {{port: {port}}}}}
  pve:
    kind: machine
    site: home
    address: 127.0.0.1
    mac: "52:54:00:12:34:03"
    wol: {{secureon: "{value}"}}
    ssh: {{port: {port}}}
    proxmox: {{api: "https://127.0.0.1:1", token_id: "root@pam!wg", token_secret: {{env: WG_TEST_UNSET_TOKEN}}}}
  vm-docker:
    kind: vm
    parent: pve
    vmid: 101
    docker: {{api: "tcp://192.168.1.21:2376", tls: true, cert: client.pem, key: {{file: keys/docker.key}}}}
  jellyfin: {{kind: lxc, parent: pve, vmid: 201}}
"""


def fleet(tmp_path, port=22):
    return parse_fleet(FLEET.format(port=port, value=VALUE), source="test.fleet.yml", base_dir=tmp_path)


def test_every_secret_knows_where_it_is_written(tmp_path):
    where = {secret.where: secret.source for dummy, secret in walk_secrets(fleet(tmp_path))}
    assert where == {
        "defaults.ssh.private_key": f"file:{tmp_path / 'keys/fleet.key'}",
        "edge.ssh.private_key": "env:WG_EDGE_KEY",
        "nodes.pve.wol.secureon": "inline",
        "nodes.pve.proxmox.token_secret": "env:WG_TEST_UNSET_TOKEN",
        "nodes.vm-docker.docker.key": f"file:{tmp_path / 'keys/docker.key'}",
    }


def test_a_secret_is_found_by_its_fleet_path(tmp_path):
    loaded = fleet(tmp_path)
    assert secret_at(loaded, "nodes.pve.wol.secureon").reveal() == VALUE
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "docker.key").write_text("key-text\n")
    assert secret_at(loaded, "nodes.vm-docker.docker.key").reveal() == "key-text"
    with pytest.raises(SecretError) as error:
        secret_at(loaded, "nodes.nas.proxmox.token_secret")
    assert str(error.value) == (
        "the fleet has no secret at nodes.nas.proxmox.token_secret (its secrets: defaults.ssh.private_key, "
        "edge.ssh.private_key, nodes.pve.proxmox.token_secret, nodes.pve.wol.secureon, nodes.vm-docker.docker.key)"
    )


def test_an_unset_variable_names_the_fleet_path_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("WG_TEST_UNSET_TOKEN", raising=False)
    loaded = fleet(tmp_path)
    with pytest.raises(SecretError) as error:
        loaded.nodes["pve"].proxmox.token_secret.reveal()
    assert str(error.value) == "nodes.pve.proxmox.token_secret: environment variable WG_TEST_UNSET_TOKEN is not set"


def test_an_empty_variable_or_file_is_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("WG_TEST_UNSET_TOKEN", "")
    loaded = fleet(tmp_path)
    with pytest.raises(SecretError, match=r"^nodes\.pve\.proxmox\.token_secret: environment variable .* is empty$"):
        loaded.nodes["pve"].proxmox.token_secret.reveal()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "fleet.key").write_text("\n")
    with pytest.raises(SecretError, match=r"^defaults\.ssh\.private_key: secret file .*fleet\.key is empty$"):
        loaded.defaults.ssh.private_key.reveal()


def test_a_file_that_is_not_text_is_named_without_its_bytes(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "fleet.key").write_bytes(b"\xffMarker\xfe")
    with pytest.raises(SecretError) as error:
        fleet(tmp_path).defaults.ssh.private_key.reveal()
    assert str(error.value) == f"defaults.ssh.private_key: secret file {tmp_path / 'keys/fleet.key'} is not UTF-8 text"


def test_vault_errors_name_the_path(tmp_path):
    vaulted = textwrap.dedent("""\
        plugin: wakegrid.fleet.fleet
        edge: {host: vps, domain: example.org, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}
        sites: {home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}}
        nodes:
          gw:
            kind: machine
            site: home
            mac: "52:54:00:12:34:02"
            wol: {secureon: !vault "$ANSIBLE_VAULT;1.1;AES256\\n3132"}
        """)
    secret = parse_fleet(vaulted).nodes["gw"].wol.secureon

    def no_password(ciphertext):
        raise ValueError("no vault secrets were found")

    with pytest.raises(SecretError) as error:
        secret.reveal(decrypt_vault=no_password)
    assert str(error.value) == "nodes.gw.wol.secureon: cannot decrypt !vault secret: no vault secrets were found"
    assert secret.reveal(decrypt_vault=lambda ciphertext: "plain") == "plain"


def test_the_observer_reports_an_unreadable_token_with_its_path(tmp_path, monkeypatch):
    """`wakegrid` reading the Proxmox token of an up machine: the guest's state says why it is not known."""
    monkeypatch.delenv("WG_TEST_UNSET_TOKEN", raising=False)
    with socket.socket() as listener:  # the machine answers on its SSH port: it is up
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        loaded = fleet(tmp_path, port=listener.getsockname()[1])
        states = observe_power(loaded, ["jellyfin"], timeout=2.0, api_timeout=2.0)
    assert states["pve"].up
    assert not states["jellyfin"].up
    assert states["jellyfin"].detail.endswith(
        "nodes.pve.proxmox.token_secret: environment variable WG_TEST_UNSET_TOKEN is not set"
    )
