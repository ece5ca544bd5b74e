"""The fleet model: the malformed-fleet corpus, value types, secrets, and the example fleet."""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from test_inventory_plugin import ansible_env  # noqa: F401  (the fixture: Ansible with this repository's config)

from wakegrid import yamlsource
from wakegrid.model import FleetError, Window, load_fleet, parse_duration, parse_fleet
from wakegrid.secret import Secret, SecretError

CORPUS = Path(__file__).parent / "fleets" / "invalid"


# --------------------------------------------------------------------------- the corpus
# Each tests/unit/fleets/invalid/*.fleet.yml is a small, complete fleet with a few
# mistakes. Its header states the exact problems it must produce, in order:
#   # expect: <path>: <reason> @ <line>      (<root> for an empty path, - for no line)
#   # xfail: <why>                           (the expectation is right, the model is not yet)


def _expectations(path: Path) -> tuple[list[tuple[str, str, int | None]], str | None]:
    expected, xfail = [], None
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            body, _, at = line.removeprefix("# expect: ").rpartition(" @ ")
            where, _, reason = body.partition(": ")
            expected.append(("" if where == "<root>" else where, reason, None if at == "-" else int(at)))
        elif line.startswith("# xfail: "):
            xfail = line.removeprefix("# xfail: ")
    return expected, xfail


def _corpus_cases() -> list:
    cases = []
    for path in sorted(CORPUS.glob("*.fleet.yml")):
        _, xfail = _expectations(path)
        marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
        cases.append(pytest.param(path, id=path.name.removesuffix(".fleet.yml"), marks=marks))
    return cases


def test_corpus_is_large_and_every_case_states_its_problems():
    files = sorted(CORPUS.glob("*.fleet.yml"))
    assert len(files) >= 30
    for path in files:
        expected, _ = _expectations(path)
        assert expected, f"{path.name} has no '# expect:' line"


@pytest.mark.parametrize("path", _corpus_cases())
def test_invalid_fleet_reports_exactly_its_problems(path: Path):
    expected, _ = _expectations(path)
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    assert [(p.path, p.reason, p.line) for p in caught.value.problems] == expected


@pytest.mark.parametrize("path", _corpus_cases())
def test_fleet_error_text_names_the_file_line_path_and_reason(path: Path):
    expected, _ = _expectations(path)
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    text = str(caught.value)
    count = len(expected)
    assert text.splitlines()[0] == f"{path}: invalid fleet, {count} problem{'s' if count != 1 else ''}:"
    for where, reason, line in expected:
        prefix = f"{path}:{line}: " if line else f"{path}: "
        assert f"  {prefix}{where + ': ' if where else ''}{reason}" in text.splitlines()


def test_unreadable_fleet_file_is_a_fleet_error(tmp_path: Path):
    with pytest.raises(FleetError) as caught:
        load_fleet(tmp_path / "missing.fleet.yml")
    assert caught.value.problems[0].reason.startswith("cannot read the fleet file: ")


def test_the_example_fleet_is_valid(example_fleet):
    assert len(example_fleet.nodes) == 15
    assert set(example_fleet.sites) == {"dijon", "thory"}
    assert set(example_fleet.services) == {"stream", "api", "home"}


# --------------------------------------------------------------------------- value types


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("20m", 1200.0),
        ("1h30m", 5400.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 20m ", 1200.0),
        ("1m30s500ms", 90.5),
        (45, 45.0),
        (0.25, 0.25),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["20 minutes", "-5m", "5", "m", "20x", "1h 30m", "", "   ", 0, -3, "0s", True, None])
def test_not_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def _fleet_text(nodes: str = "") -> str:
    """A one-site fleet with a gateway; ``nodes`` adds node lines (indented by two)."""
    head = textwrap.dedent(
        """\
        edge: {host: vps, domain: example.net, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}
        sites: {home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}}
        nodes:
          gw: {kind: machine, site: home}
        """
    )
    return head + textwrap.indent(nodes, "  ")


@pytest.mark.parametrize("mac", ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "52:54:00:ab:cd:ef", "  52-54-00-AB-cd-EF "])
def test_mac_is_normalised_to_lowercase_colons(mac):
    fleet = parse_fleet(_fleet_text(f'nas: {{kind: machine, site: home, mac: "{mac}"}}\n'))
    assert fleet.nodes["nas"].mac == "52:54:00:ab:cd:ef"


# YAML 1.1 (PyYAML) reads 52:54:00:12:34:56 and 23:30 unquoted as base-60 integers.
def test_unquoted_mac_is_understood():
    fleet = parse_fleet(_fleet_text("nas: {kind: machine, site: home, mac: 52:54:00:12:34:56}\n"))
    assert fleet.nodes["nas"].mac == "52:54:00:12:34:56"


def test_unquoted_time_of_day_is_understood():
    fleet = parse_fleet(
        _fleet_text("nas: {kind: machine, site: home, address: 192.168.1.10}\n") + "services:\n"
        "  web:\n"
        "    domain: web.example.net\n"
        "    policy: {mode: scheduled, timezone: Europe/Paris, windows: [{days: daily, start: 07:00, end: 23:30}]}\n"
        "    backends: [{node: nas, port: 80}]\n"
    )
    window = fleet.services["web"].policy.windows[0]
    assert (window.start, window.end) == ("07:00", "23:30")


def _window(days) -> list[str]:
    return Window.model_validate({"days": days, "start": "08:00", "end": "20:00"}).days


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("mon-fri", ["mon", "tue", "wed", "thu", "fri"]),
        ("fri-mon", ["mon", "fri", "sat", "sun"]),
        ("sun-mon", ["mon", "sun"]),
        ("daily", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
        ("wed", ["wed"]),
        (["sat", "mon"], ["mon", "sat"]),
        (["mon-wed", "sat"], ["mon", "tue", "wed", "sat"]),
        (["Mon", " TUE "], ["mon", "tue"]),
        ("wed-wed", ["wed"]),
    ],
)
def test_weekday_ranges(days, expected):
    assert _window(days) == expected


@pytest.mark.parametrize(
    "days", ["mon-fri-sat", "weekdays", ["mon", "mon"], ["daily", "sat"], [], "thurs", ["fri-mon", "sun"]]
)
def test_bad_weekdays(days):
    with pytest.raises(ValidationError):
        _window(days)


# --------------------------------------------------------------------------- secrets

PLAINTEXT = "Zebra-Plaintext-7781-do-not-print"


def test_inline_secret_reveals_its_value():
    assert Secret.parse(PLAINTEXT).reveal() == PLAINTEXT


def test_env_secret_reads_the_variable_when_revealed(monkeypatch):
    secret = Secret.parse({"env": "WAKEGRID_TEST_TOKEN"})
    monkeypatch.setenv("WAKEGRID_TEST_TOKEN", PLAINTEXT)
    assert secret.reveal() == PLAINTEXT
    assert secret.source == "env:WAKEGRID_TEST_TOKEN"


def test_missing_env_secret_names_the_variable(monkeypatch):
    monkeypatch.delenv("WAKEGRID_TEST_MISSING", raising=False)
    with pytest.raises(SecretError, match="WAKEGRID_TEST_MISSING"):
        Secret.parse({"env": "WAKEGRID_TEST_MISSING"}).reveal()


def test_file_secret_is_read_and_stripped(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"{PLAINTEXT}\n")
    secret = Secret.parse({"file": str(path)})
    assert secret.reveal() == PLAINTEXT
    assert secret.file == str(path)


def test_missing_file_secret_names_the_file(tmp_path):
    with pytest.raises(SecretError, match=r"nope\.token"):
        Secret.parse({"file": str(tmp_path / "nope.token")}).reveal()


@pytest.mark.parametrize(
    "value", ["", {}, {"env": ""}, {"file": ""}, {"value": "x"}, {"env": "A", "file": "B"}, 42, ["x"], None]
)
def test_malformed_secrets_are_rejected(value):
    with pytest.raises(ValueError):
        Secret.parse(value)


def _fleet_with_secret(secret_yaml: str, extra_nodes: str = "") -> str:
    return _fleet_text(
        "pve:\n"
        "  kind: machine\n"
        "  site: home\n"
        '  mac: "52:54:00:00:00:03"\n'
        "  proxmox:\n"
        '    api: "https://192.168.1.3:8006"\n'
        '    token_id: "root@pam!wakegrid"\n'
        f"    token_secret: {secret_yaml}\n"
        "  ssh: {private_key: " + PLAINTEXT + "-key}\n" + extra_nodes
    )


def test_secrets_never_show_in_repr_str_or_dumps():
    fleet = parse_fleet(_fleet_with_secret(PLAINTEXT))
    assert fleet.nodes["pve"].proxmox.token_secret.reveal() == PLAINTEXT
    assert fleet.nodes["pve"].ssh.private_key.reveal() == f"{PLAINTEXT}-key"
    shown = [
        repr(fleet),
        str(fleet),
        repr(fleet.nodes["pve"]),
        str(fleet.nodes["pve"].proxmox.token_secret),
        repr(fleet.nodes["pve"].proxmox.token_secret),
        str(fleet.model_dump()),
        str(fleet.model_dump(mode="json")),
        fleet.model_dump_json(),
    ]
    for text in shown:
        assert PLAINTEXT not in text
    assert fleet.model_dump()["nodes"]["pve"]["proxmox"]["token_secret"] == "<secret inline>"


@pytest.mark.parametrize(
    ("secret_yaml", "extra"),
    [
        (PLAINTEXT, 'nas: {kind: machine, site: home, mac: "not-a-mac"}\n'),  # the fleet is invalid elsewhere
        ("{inline: " + PLAINTEXT + "}", ""),  # an unknown source kind
        ("[" + PLAINTEXT + "]", ""),  # not a string
        (PLAINTEXT, "nas: {kind: machine, site: home, token_secert: " + PLAINTEXT + "}\n"),  # a misplaced secret
    ],
)
def test_fleet_errors_never_show_a_secret(secret_yaml, extra):
    with pytest.raises(FleetError) as caught:
        parse_fleet(_fleet_with_secret(secret_yaml, extra))
    assert PLAINTEXT not in str(caught.value)
    assert all(PLAINTEXT not in p.reason and PLAINTEXT not in p.path for p in caught.value.problems)


@pytest.fixture(scope="module")
def vault(tmp_path_factory) -> tuple[Path, str]:
    """A vault password file and a fleet line ``token_secret: !vault |…`` made by ansible-vault itself."""
    folder = tmp_path_factory.mktemp("vault")
    password = folder / "vault-password"
    password.write_text("correct horse battery staple\n")
    ansible_vault = str(Path(sys.executable).parent / "ansible-vault")
    result = subprocess.run(
        [ansible_vault, "encrypt_string", "--vault-password-file", str(password), "--name", "token_secret", PLAINTEXT],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    return password, result.stdout


def _vault_fleet(encrypted: str):
    return parse_fleet(
        _fleet_text(
            "pve:\n  kind: machine\n  site: home\n  proxmox:\n"
            '    api: "https://192.168.1.3:8006"\n    token_id: "root@pam!wakegrid"\n'
            + textwrap.indent(encrypted, "    ")
        )
    )


def test_vault_secret_decrypts_with_the_password_file(vault, monkeypatch):
    password, encrypted = vault
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("WAKEGRID_VAULT_PASSWORD_FILE", str(password))
    secret = _vault_fleet(encrypted).nodes["pve"].proxmox.token_secret
    assert secret.source == "vault"
    assert PLAINTEXT not in repr(secret) and PLAINTEXT not in secret.vault_ciphertext
    assert secret.reveal() == PLAINTEXT


def test_vault_secret_without_password_file_says_what_to_set(vault, monkeypatch):
    _, encrypted = vault
    monkeypatch.delenv("WAKEGRID_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    secret = _vault_fleet(encrypted).nodes["pve"].proxmox.token_secret
    with pytest.raises(SecretError, match="WAKEGRID_VAULT_PASSWORD_FILE"):
        secret.reveal()


def test_vault_secret_with_wrong_password_fails_without_showing_it(vault, monkeypatch, tmp_path):
    _, encrypted = vault
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("WAKEGRID_VAULT_PASSWORD_FILE", str(wrong))
    with pytest.raises(SecretError, match="cannot decrypt") as caught:
        _vault_fleet(encrypted).nodes["pve"].proxmox.token_secret.reveal()
    assert PLAINTEXT not in str(caught.value)


# --------------------------------------------------------------------------- the example fleet's helpers


def test_ancestors_run_from_the_machine_down(example_fleet):
    assert example_fleet.ancestors("sandbox") == ["pve1", "vm-docker"]
    assert example_fleet.ancestors("jellyfin") == ["pve1"]
    assert example_fleet.ancestors("pve1") == []
    assert example_fleet.machine_of("sandbox") == "pve1"
    assert example_fleet.machine_of("nas") == "nas"


def test_descendants_are_deepest_first_in_file_order(example_fleet):
    assert example_fleet.descendants("pve1") == ["sandbox", "api", "vm-docker", "vm-ubuntu", "jellyfin"]
    assert example_fleet.descendants("pve-thory") == ["jellyfin-thory", "api-thory", "docker-thory"]
    assert example_fleet.descendants("nas") == []
    assert example_fleet.children("vm-docker") == ["sandbox", "api"]


def test_site_and_gateway_come_from_the_machine_at_the_top(example_fleet):
    assert example_fleet.site_of("sandbox") == "dijon"
    assert example_fleet.site_of("api-thory") == "thory"
    assert example_fleet.gateway_of("jellyfin") == "pi-dijon"
    assert example_fleet.gateway_of("api-thory") == "nuc-thory"
    assert example_fleet.gateway_of("pi-dijon") == "pi-dijon"


def test_dependencies_and_dependants(example_fleet):
    assert example_fleet.dependencies_of("sandbox") == ["jellyfin"]
    assert example_fleet.dependencies_of("nas") == []
    assert example_fleet.dependants_of("nas") == ["jellyfin"]
    assert example_fleet.dependants_of("jellyfin") == ["sandbox"]


@pytest.mark.parametrize(
    ("node", "confirm"),
    [
        ("nas", True),  # machine: on by default
        ("pve1", True),
        ("nuc-thory", True),  # explicit
        ("vm-docker", False),  # guests and containers: off by default
        ("jellyfin", False),
        ("sandbox", False),
    ],
)
def test_confirm_shutdown_defaults(example_fleet, node, confirm):
    assert example_fleet.confirm_shutdown(node) is confirm


def test_confirm_shutdown_explicit_overrides_the_default(example_data, build_fleet):
    example_data["nodes"]["nas"]["confirm_shutdown"] = False
    example_data["nodes"]["sandbox"]["confirm_shutdown"] = True
    fleet = build_fleet(example_data)
    assert fleet.confirm_shutdown("nas") is False
    assert fleet.confirm_shutdown("sandbox") is True


def test_ssh_falls_back_to_defaults_field_by_field(example_fleet):
    nas = example_fleet.ssh_of("nas")  # sets only its user
    assert (nas.user, nas.private_key_file, nas.port) == ("admin", "~/.ssh/wakegrid_ed25519", 22)
    pve1 = example_fleet.ssh_of("pve1")  # sets nothing
    assert (pve1.user, pve1.private_key_file, pve1.port) == ("root", "~/.ssh/wakegrid_ed25519", 22)
    edge = example_fleet.ssh_of("vps")  # the edge host, no ssh of its own
    assert (edge.user, edge.private_key_file) == ("root", "~/.ssh/wakegrid_ed25519")


def test_ssh_own_port_keeps_default_user(example_data, build_fleet):
    example_data["nodes"]["nas"]["ssh"] = {"port": 2222}
    example_data["edge"]["ssh"] = {"user": "deploy"}
    fleet = build_fleet(example_data)
    nas = fleet.ssh_of("nas")
    assert (nas.user, nas.private_key_file, nas.port) == ("root", "~/.ssh/wakegrid_ed25519", 2222)
    edge = fleet.ssh_of("vps")
    assert (edge.user, edge.private_key_file, edge.port) == ("deploy", "~/.ssh/wakegrid_ed25519", 22)


def test_backend_site_and_address_come_from_the_node(example_fleet):
    stream = example_fleet.services["stream"]
    assert [example_fleet.backend_site(b) for b in stream.backends] == ["dijon", "thory"]
    assert [example_fleet.backend_address(b) for b in stream.backends] == ["192.168.1.30", "192.168.2.30"]


def test_site_order_follows_priority_then_name(example_fleet, example_data, build_fleet):
    assert example_fleet.site_order(example_fleet.services["stream"]) == ["dijon", "thory"]
    assert example_fleet.site_order(example_fleet.services["home"]) == ["dijon"]
    example_data["sites"]["dijon"]["priority"] = 5
    example_data["sites"]["thory"]["priority"] = 1
    assert build_fleet(example_data).site_order(example_fleet.services["stream"]) == ["thory", "dijon"]
    example_data["sites"]["dijon"]["priority"] = 1
    assert build_fleet(example_data).site_order(example_fleet.services["stream"]) == ["dijon", "thory"]


def test_explicit_failover_order_wins_over_priority(example_data, build_fleet):
    example_data["services"]["stream"]["failover"] = ["thory", "dijon"]
    fleet = build_fleet(example_data)
    assert fleet.site_order(fleet.services["stream"]) == ["thory", "dijon"]


def test_window_wrapping_midnight_is_accepted(example_fleet):
    windows = example_fleet.services["home"].policy.windows
    assert [(w.days, w.start, w.end) for w in windows] == [
        (["mon", "tue", "wed", "thu", "fri"], "07:00", "23:30"),
        (["sat", "sun"], "09:00", "01:00"),
    ]
    assert example_fleet.services["stream"].policy.idle_after == 1200.0


# --------------------------------------------------------------------------- hostile and large YAML

HEAD = (
    "plugin: wakegrid.fleet.fleet\n"
    'edge: {host: vps, domain: example.net, wireguard: {address: 10.200.0.1/24, endpoint: "vps:51820"}}\n'
    "sites: {home: {gateway: gw, wireguard: {address: 10.200.1.1/24}}}\n"
    "nodes: {gw: {kind: machine, site: home}}\n"
    "lab:\n"
)


def _alias_bomb() -> str:
    """Ten levels of nine aliases each: 600 bytes that expand to 9**10 (3.5 billion) values."""
    lines = ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for previous, name in itertools.pairwise("abcdefghij"):
        lines.append(f"  {name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return HEAD + "\n".join(lines) + "\n"


def _deep(levels: int, flow: bool) -> str:
    if flow:
        return HEAD + "  deep: " + "[" * levels + "]" * levels + "\n"
    return HEAD + "".join("  " + " " * i + f"k{i}:\n" for i in range(levels)) + " " * (levels + 2) + "v\n"


HOSTILE = {
    # name: (text, line, reason)
    "alias-bomb": (_alias_bomb(), 11, "aliases expand the document by more than 100,000 values"),
    "deep-block": (_deep(5000, flow=False), 1004, "exceeded maximum nesting depth"),
    "deep-flow": (_deep(5000, flow=True), 6, "exceeded maximum nesting depth"),
    "deep-under-the-parser-limit": (_deep(150, flow=False), 105, "nested more than 100 levels deep"),
    "recursive-alias": (HEAD + "  loop: &loop [*loop]\n", 6, "an alias refers to its own anchor"),
}


@pytest.mark.parametrize("pure", [False, True], ids=["libyaml", "pure-python"])
@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_yaml_is_a_fleet_problem_with_its_line_in_a_second(case, pure, monkeypatch):
    text, line, reason = HOSTILE[case]
    if pure:
        monkeypatch.setattr(yamlsource, "_LOADERS", [yamlsource._PyLoader])
    began = time.process_time()
    with pytest.raises(FleetError) as caught:
        parse_fleet(text)
    assert time.process_time() - began < 1.0
    [problem] = caught.value.problems
    if pure and case.startswith("deep"):  # it has no nesting limit of its own: ours applies, a line or two apart
        assert problem.reason == f"invalid YAML: nested more than {yamlsource.MAX_DEPTH} levels deep"
    else:
        assert problem.reason.startswith(f"invalid YAML: {reason}")
        assert problem.line == line


def _bounded_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # the bomb used to take 3.6 GB


@pytest.mark.parametrize("case", ["alias-bomb", "deep-block"])
def test_wakegrid_validate_refuses_hostile_yaml_in_bounded_memory(case, tmp_path):
    text, line, reason = HOSTILE[case]
    path = tmp_path / "hostile.fleet.yml"
    path.write_text(text)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "wakegrid"), "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_bounded_memory,
    )
    assert result.returncode == 1, result.stderr
    assert f"{path}:{line}: invalid YAML: {reason}" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["alias-bomb", "deep-block"])
def test_ansible_inventory_reports_hostile_yaml_as_a_fleet_problem(case, tmp_path, ansible_env):  # noqa: F811
    text, line, reason = HOSTILE[case]
    path = tmp_path / "hostile.fleet.yml"
    path.write_text(text)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ansible_env,
        preexec_fn=_bounded_memory,
    )
    assert result.returncode != 0
    assert f"{path}:{line}: invalid YAML: {reason}" in result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr


def test_the_pure_python_parser_reads_every_file_as_libyaml_does():
    """The fallback for a PyYAML without libyaml: same values, lines and duplicates."""
    files = [Path(__file__).parents[2] / "inventories" / "example" / "example.fleet.yml", *CORPUS.glob("*.yml")]
    for path in files:
        text = path.read_text()
        try:
            fast = yamlsource.load_yaml(text)
        except yamlsource.YamlSyntaxError as exc:
            with pytest.raises(yamlsource.YamlSyntaxError) as pure:
                yamlsource.load_yaml(text, pure=True)
            assert pure.value.line == exc.line, path.name
            continue
        slow = yamlsource.load_yaml(text, pure=True)
        assert (fast.data, fast.lines, fast.duplicates) == (slow.data, slow.lines, slow.duplicates), path.name


def test_merge_keys_anchors_and_duplicates_still_work():
    document = yamlsource.load_yaml(
        "base: &base {kind: vm, vmid: 100}\n"
        "nodes:\n"
        "  a: {<<: *base, vmid: 101}\n"
        "  b: *base\n"
        "  a: {kind: lxc}\n"
        "mac: 52:54:00:12:34:56\n"
        "time: 23:30\n"
    )
    assert document.data["nodes"] == {"a": {"kind": "lxc"}, "b": {"kind": "vm", "vmid": 100}}
    assert (document.data["mac"], document.data["time"]) == ("52:54:00:12:34:56", "23:30")
    assert document.duplicates == [(("nodes", "a"), 5, 3)]
    assert document.lines[("nodes", "a", "kind")] == 5  # the copy that counts


def test_a_fleet_file_that_is_not_utf8_is_a_fleet_error(tmp_path):
    path = tmp_path / "latin1.fleet.yml"
    path.write_bytes(HEAD.encode() + b"  note: caf\xe9\n")
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    assert [(p.reason, p.line) for p in caught.value.problems] == [("the fleet file is not UTF-8 text", 6)]


# --------------------------------------------------------------------------- backend addresses


def test_a_container_backend_is_reached_at_its_docker_hosts_address(example_data, build_fleet):
    assert all("address" not in b for b in example_data["services"]["api"]["backends"])  # containers
    fleet = build_fleet(example_data)
    backends = fleet.services["api"].backends
    assert [fleet.backend_address(b) for b in backends] == ["192.168.1.21", "192.168.2.21"]


def test_a_containers_own_address_wins_over_its_hosts(example_data, build_fleet):
    example_data["nodes"]["api"]["address"] = "172.17.0.5"
    fleet = build_fleet(example_data)
    assert fleet.backend_address(fleet.services["api"].backends[0]) == "172.17.0.5"


def test_the_inventory_gives_the_derived_backend_address(example_data, tmp_path, ansible_env):  # noqa: F811
    path = tmp_path / "derived.fleet.yml"
    path.write_text(yaml.safe_dump(example_data, sort_keys=False))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(path), "--list", "--export"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ansible_env,
        check=True,
    )
    services = json.loads(result.stdout)["all"]["vars"]["wakegrid_services"]
    addresses = [b["address"] for b in services["api"]["backends"]]
    assert [a.get("__ansible_unsafe", a) if isinstance(a, dict) else a for a in addresses] == [
        "192.168.1.21",
        "192.168.2.21",
    ]
