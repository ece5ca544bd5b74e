"""The actuator's pure half and the power observer, without sockets.

- plan → playbook steps (:func:`wakegrid.actuate.plan_data`): module, options, where it runs;
- ansible-runner events → live progress and timings (:class:`wakegrid.actuate.Progress`);
- which nodes are observed and how a parent's state decides its children's
  (:mod:`wakegrid.observe.power`, with fake probes);
- the ``wake`` / ``shutdown`` / ``discover`` command line (:mod:`wakegrid.cli.power`).
"""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
import yaml

from wakegrid import actuate
from wakegrid.cli import power as cli_power
from wakegrid.graph import start_plan, stop_plan
from wakegrid.model import Fleet, load_fleet, parse_fleet
from wakegrid.observe.power import (
    PowerState,
    ProbeError,
    Probes,
    nodes_to_observe,
    observe_power,
    unknown_nodes,
    up_nodes,
)

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
GATEWAYS = {"gw-dijon", "gw-thory"}
EVERYTHING = {"gw-dijon", "gw-thory", "nas", "pve1", "pve2", "vm-docker", "jellyfin", "sandbox", "srv-thory"}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(LAB_FLEET)


def _variant(**dependencies: list[str]) -> Fleet:
    data = yaml.safe_load(LAB_FLEET.read_text())
    data["dependencies"] = {**data["dependencies"], **dependencies}
    return parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<variant>")


# --------------------------------------------------------------------------- plan → steps


def test_wake_plan_steps_carry_their_channel_and_options(fleet):
    plan = start_plan(fleet, "jellyfin", GATEWAYS)
    data = actuate.plan_data(fleet, plan)
    wol, machine, guest = data["steps"]

    assert [s["title"] for s in data["steps"]] == [
        "start machine nas via Wake-on-LAN from gw-dijon",
        "start machine pve1 via Wake-on-LAN from gw-dijon",
        "start lxc jellyfin via Proxmox API of pve1",
    ]
    assert (wol["index"], wol["total"]) == (1, 3)
    # The magic packet leaves from the site gateway, which waits for the machine's SSH port.
    assert wol["module"] == "wakegrid.fleet.wake_on_lan"
    assert wol["delegate_to"] == "gw-dijon"
    assert wol["args"] == {
        "mac": "02:00:0a:e7:01:0a",
        "broadcast": "10.231.1.255",
        "port": 9,
        "timeout": 300,
        "wait_for": {"host": "10.231.1.10", "port": 22, "protocol": "tcp"},
    }
    assert wol["secureon"] is False
    assert machine["delegate_to"] == "gw-dijon"
    # Guests: the parent's Proxmox API, from the controller, after the API answers.
    assert guest["module"] == "wakegrid.fleet.proxmox_guest"
    assert guest["delegate_to"] == "localhost"
    assert guest["args"] == {
        "api_host": "10.231.1.20",
        "api_port": 8006,
        "api_token_id": "root@pam!wakegrid",
        "validate_certs": False,
        "vmid": 201,
        "node": "pve1",
        "state": "started",
        "timeout": 300,
    }
    assert guest["ready"]["url"] == "https://10.231.1.20:8006/api2/json/version"
    assert guest["ready"]["status"] == [200, 401]
    assert guest["wait_for"] == "Proxmox reports lxc 201 running"


def test_shutdown_plan_steps_go_bottom_up_with_stop_options(fleet):
    plan = stop_plan(fleet, "pve1", EVERYTHING)
    data = actuate.plan_data(fleet, plan)
    titles = [s["title"] for s in data["steps"]]
    assert titles == [
        "stop container sandbox via Docker API of vm-docker",
        "stop vm vm-docker via Proxmox API of pve1",
        "stop lxc jellyfin via Proxmox API of pve1",
        "stop machine pve1 via SSH on pve1",
    ]
    sandbox, vm, _, machine = data["steps"]
    assert sandbox["args"] == {
        "docker_host": "tcp://10.231.1.21:2375",
        "tls": False,
        "validate_certs": False,
        "ca_path": None,
        "client_cert": None,
        "name": "sandbox",
        "state": "stopped",
        "timeout": 30,
        "api_wait_timeout": 0,
        "stop_timeout": 30,
    }
    assert sandbox["delegate_to"] == "localhost" and sandbox["ready"] is None
    assert vm["args"]["state"] == "shutdown" and vm["args"]["force_stop"] is True
    assert machine["module"] == "community.general.shutdown"
    assert machine["delegate_to"] == "pve1"
    assert (machine["address"], machine["port"]) == ("10.231.1.20", 22)
    assert data["proposed"] == [
        {
            "node": "nas",
            "reason": "no active dependant left; confirm_shutdown is on, so it is only proposed",
            "needed_by": [],
        }
    ]
    assert any(line.startswith("proposed: shut down nas") for line in data["lines"])


def test_plan_data_holds_no_secret(fleet, tmp_path, monkeypatch):
    data = yaml.safe_load(LAB_FLEET.read_text())
    token = tmp_path / "token"
    token.write_text("s3cr3t-token-value\n")
    data["nodes"]["pve1"]["proxmox"]["token_secret"] = {"file": str(token)}
    data["nodes"]["nas"]["wol"]["secureon"] = "aa:bb:cc:dd:ee:ff"
    variant = parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<secrets>")
    text = json.dumps(actuate.plan_data(variant, start_plan(variant, "jellyfin", GATEWAYS)))
    assert "s3cr3t" not in text
    assert "aa:bb:cc:dd:ee:ff" not in text
    assert '"secureon": true' in text  # the playbook takes it from the inventory, with no_log


def test_per_node_timeouts_bound_each_step(fleet):
    data = yaml.safe_load(LAB_FLEET.read_text())
    data["nodes"]["nas"]["timeouts"] = {"start": "1m30s", "stop": 2.5}
    variant = parse_fleet(yaml.safe_dump(data, sort_keys=False), source="<timeouts>")
    start = actuate.plan_data(variant, start_plan(variant, "nas", GATEWAYS))["steps"][0]
    stop = actuate.plan_data(variant, stop_plan(variant, "nas", {"gw-dijon", "nas"}))["steps"][0]
    assert (start["timeout"], start["args"]["timeout"]) == (90, 90)
    assert stop["timeout"] == 3  # rounded up, never zero


def test_plan_lines_show_observation_steps_and_blocks(fleet):
    states = {
        "gw-dijon": PowerState("gw-dijon", "down", "no answer on 10.231.1.2:22 within 1s"),
        "nas": PowerState("nas", "unknown", "10.231.1.10:22 refuses connections"),
    }
    plan = start_plan(fleet, "nas", up_nodes(states), unknown=unknown_nodes(states))
    data = actuate.plan_data(fleet, plan, states)
    lines = data["lines"]
    assert lines[0] == "plan: start nas: 0 steps"
    assert "observed up: none" in lines
    assert "observed down: gw-dijon (no answer on 10.231.1.2:22 within 1s)" in lines
    assert "observed unknown: nas (10.231.1.10:22 refuses connections)" in lines
    assert data["observed"]["nas"] == {"power": "unknown", "detail": "10.231.1.10:22 refuses connections"}
    assert data["unknown"] == {"nas": "10.231.1.10:22 refuses connections"}
    assert any(line.startswith("blocked: cannot start nas: its site gateway gw-dijon is down") for line in lines)


# --------------------------------------------------------------------------- runner events → progress


def _event(kind: str, created: str, action: str = "ansible.builtin.set_fact", **data) -> dict:
    return {"event": kind, "created": created, "event_data": {"task_action": action, **data}}


def test_progress_follows_the_plan_and_times_each_step():
    progress = actuate.Progress()
    plan = {"lines": ["plan: start jellyfin: 1 step"], "steps": [{}], "blocked": []}
    started = {
        "index": "1",
        "total": "1",
        "title": "start lxc jellyfin via Proxmox API of pve1",
        "wait_for": "Proxmox reports lxc 201 running",
    }
    events = [
        _event("playbook_on_start", "2026-01-01T10:00:00.000000"),
        _event("runner_on_ok", "2026-01-01T10:00:02.000000", actuate.PLAN_ACTION, res=plan, duration=1.5),
        _event("runner_on_ok", "2026-01-01T10:00:02.500000", res={"ansible_facts": {"wakegrid_step_started": started}}),
        _event("runner_on_ok", "2026-01-01T10:00:03.000000", "ansible.builtin.uri", res={}, duration=0.4),
        _event("runner_on_ok", "2026-01-01T10:00:06.500000", "wakegrid.fleet.proxmox_guest", res={}, duration=3.5),
        _event(
            "runner_on_ok",
            "2026-01-01T10:00:07.000000",
            res={"ansible_facts": {"wakegrid_step_done": {"index": "1", "changed": True}}},
        ),
        _event("playbook_on_stats", "2026-01-01T10:00:07.500000"),
    ]
    lines = [line for event in events for line in progress.feed(event)]
    assert lines == [
        "plan: start jellyfin: 1 step",
        "step 1 of 1: start lxc jellyfin via Proxmox API of pve1… waiting for Proxmox reports lxc 201 running",
        "step 1 of 1: done in 4.5s",
    ]
    assert progress.plan_seconds == 1.5
    (step,) = progress.steps
    assert step.seconds == pytest.approx(4.5)
    assert step.working == pytest.approx(3.9)
    assert progress.wall == pytest.approx(7.5)
    result = actuate.RunResult(0, "successful", progress, {"changed": {"localhost": 1}}, 8.0)
    assert result.overhead == pytest.approx(8.0 - 3.9)
    assert result.changed == 1


def test_progress_keeps_the_failure_that_names_the_step():
    progress = actuate.Progress()
    progress.feed(
        _event(
            "runner_on_failed", "2026-01-01T10:00:01", "wakegrid.fleet.proxmox_guest", res={"msg": "CT 201: timeout"}
        )
    )
    lines = progress.feed(
        _event(
            "runner_on_failed",
            "2026-01-01T10:00:02",
            "ansible.builtin.fail",
            res={"msg": "step 2/3: start lxc jellyfin via Proxmox API of pve1: CT 201: timeout"},
        )
    )
    assert lines == ["failed: step 2/3: start lxc jellyfin via Proxmox API of pve1: CT 201: timeout"]
    assert progress.failure == "step 2/3: start lxc jellyfin via Proxmox API of pve1: CT 201: timeout"
    # ignored failures (like an expected one in a retry loop) do not count
    progress.feed(
        _event(
            "runner_on_failed", "2026-01-01T10:00:03", "ansible.builtin.command", res={"msg": "x"}, ignore_errors=True
        )
    )
    assert progress.failure.startswith("step 2/3")


def test_report_exit_codes(capsys):
    blocked = actuate.Progress(plan={"blocked": ["nas is still needed by jellyfin"], "kept": [], "proposed": []})
    assert cli_power.report(actuate.RunResult(2, "failed", blocked, {}, 1.0)) == cli_power.EXIT_BLOCKED
    failed = actuate.Progress(plan={"blocked": []}, failure="step 1/1: start machine nas via …: timeout")
    assert cli_power.report(actuate.RunResult(2, "failed", failed, {}, 1.0)) == cli_power.EXIT_FAILED
    proposed = actuate.Progress(plan={"blocked": [], "kept": [], "proposed": [{"node": "nas", "reason": "r"}]})
    assert cli_power.report(actuate.RunResult(0, "successful", proposed, {}, 1.0)) == cli_power.EXIT_OK
    out, err = capsys.readouterr()
    assert "nas is still needed by jellyfin" in err
    assert "step 1/1: start machine nas via …: timeout" in err
    assert "proposed, not done: shut down nas (run again with --confirm nas)" in out


def test_discovered_entries_become_yaml_to_paste():
    lines = actuate.entries_lines({"extra": {"kind": "container", "parent": "vm-docker", "container": "extra"}})
    assert lines[1] == "to complete and add to the fleet file:"
    assert yaml.safe_load("\n".join(lines[2:])) == {
        "nodes": {"extra": {"kind": "container", "parent": "vm-docker", "container": "extra"}}
    }
    assert actuate.entries_lines({}) == []


# --------------------------------------------------------------------------- observing


class FakeProbes:
    def __init__(self, machines_up, guests=None, containers=None, broken_api=()):
        self.machines_up = set(machines_up)
        self.guests = guests or {}
        self.containers = containers or {}
        self.broken_api = set(broken_api)
        self.calls: list[str] = []

    def probes(self) -> Probes:
        return Probes(tcp=self.tcp, proxmox_guests=self.proxmox, docker_containers=self.docker)

    def tcp(self, host, port, timeout):
        self.calls.append(f"tcp {host}:{port}")
        return ("up" if host in self.machines_up else "down"), "probed"

    def proxmox(self, config, secret, timeout):
        self.calls.append(f"proxmox {config['api']}")
        assert secret == "token"
        if config["api"] in self.broken_api:
            raise ProbeError(f"Proxmox API {config['api']} did not answer: refused")
        return self.guests

    def docker(self, api, timeout):
        self.calls.append(f"docker {api.api}")
        return self.containers


def test_nodes_to_observe_follow_dependencies_hosts_and_gateways(fleet):
    # pve2 and gw-dijon (the QDevice) too: the quorum of pve1's cluster counts them
    assert nodes_to_observe(fleet, "jellyfin", "start") == ["gw-dijon", "nas", "pve1", "pve2", "jellyfin"]
    assert nodes_to_observe(fleet, "sandbox", "start") == ["gw-dijon", "pve1", "pve2", "vm-docker", "sandbox"]
    # a stop looks at everything linked: what it hosts, its dependants, their dependencies, and their cluster
    assert nodes_to_observe(fleet, "nas", "stop") == [
        "gw-dijon",
        "nas",
        "pve1",
        "pve2",
        "vm-docker",
        "jellyfin",
        "sandbox",
    ]
    assert nodes_to_observe(fleet, "srv-thory", "stop") == ["srv-thory"]


def test_observation_goes_top_down_and_a_down_parent_takes_its_children(fleet):
    fake = FakeProbes(machines_up={"10.231.1.2"})  # pve1 does not answer
    states = observe_power(fleet, ["jellyfin", "sandbox"], proxmox_secret=lambda m: "token", probes=fake.probes())
    assert list(states) == ["pve1", "vm-docker", "jellyfin", "sandbox"]  # the hosts too, in file order
    assert states["jellyfin"] == PowerState("jellyfin", "down", "its host pve1 is down")
    assert states["sandbox"] == PowerState("sandbox", "down", "its host vm-docker is down")
    assert not any(call.startswith(("proxmox", "docker")) for call in fake.calls)  # nothing asked of a down host


def test_observation_asks_each_api_once(fleet):
    fake = FakeProbes(
        machines_up={"10.231.1.2", "10.231.1.10", "10.231.1.20"},
        guests={101: "running", 201: "stopped"},
        containers={"sandbox": "exited", "other": "running"},
    )
    states = observe_power(
        fleet, ["jellyfin", "sandbox", "nas"], proxmox_secret=lambda m: "token", probes=fake.probes()
    )
    assert up_nodes(states) == {"nas", "pve1", "vm-docker"}
    assert states["jellyfin"].detail == "Proxmox API of pve1: lxc 201 stopped"
    assert states["sandbox"].detail == "Docker API of vm-docker: container sandbox exited"
    assert fake.calls.count("proxmox https://10.231.1.20:8006") == 1
    assert fake.calls.count("docker tcp://10.231.1.21:2375") == 1


# Unknown power (an API that does not answer, a token that cannot be read): tests/unit/test_observe_power.py


# --------------------------------------------------------------------------- command line


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli_power.add_power_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_command_line_parses_wake_shutdown_and_discover(monkeypatch):
    args = _parse("shutdown", "pve1", "--fleet", "f.fleet.yml", "--confirm", "nas,pve2", "--confirm", "x")
    assert (args.node, args.fleet, args.confirm, args.include_dependants) == (
        "pve1",
        "f.fleet.yml",
        ["nas,pve2", "x"],
        False,
    )
    assert _parse("wake", "jellyfin", "--check").check is True
    assert _parse("discover", "pve1").host == "pve1"


def test_command_line_needs_a_fleet(monkeypatch, capsys):
    monkeypatch.delenv(cli_power.FLEET_ENV, raising=False)
    args = _parse("wake", "jellyfin")
    assert args.handler(args) == cli_power.EXIT_USAGE
    assert "give --fleet FILE or set WAKEGRID_FLEET" in capsys.readouterr().err


def test_command_line_rejects_unknown_nodes_before_running_anything(capsys, monkeypatch):
    monkeypatch.setattr(cli_power, "run_playbook", lambda *a, **k: pytest.fail("must not run"))
    args = _parse("shutdown", "pve1", "--fleet", str(LAB_FLEET), "--confirm", "nope")
    assert args.handler(args) == cli_power.EXIT_USAGE
    assert "unknown node 'nope'" in capsys.readouterr().err


def test_command_line_hands_the_request_to_the_playbook(monkeypatch):
    seen = {}

    def fake_run(name, fleet_path, extravars, *, check, on_line):
        seen.update(name=name, extravars=extravars, check=check)
        return actuate.RunResult(0, "successful", actuate.Progress(plan={"blocked": []}), {}, 0.1)

    monkeypatch.setattr(cli_power, "run_playbook", fake_run)
    args = _parse("shutdown", "pve1", "--fleet", str(LAB_FLEET), "--confirm", "nas", "--include-dependants")
    assert args.handler(args) == cli_power.EXIT_OK
    assert seen == {
        "name": "shutdown",
        "extravars": {"node": "pve1", "confirm": ["nas"], "include_dependants": True, "force_infrastructure": False},
        "check": False,
    }


def test_command_line_shutdown_can_force_infrastructure(monkeypatch):
    seen = {}

    def fake_run(name, fleet_path, extravars, *, check, on_line):
        seen.update(extravars)
        return actuate.RunResult(0, "successful", actuate.Progress(plan={"blocked": []}), {}, 0.1)

    monkeypatch.setattr(cli_power, "run_playbook", fake_run)
    args = _parse("shutdown", "gw-dijon", "--fleet", str(LAB_FLEET), "--force-infrastructure")
    assert args.handler(args) == cli_power.EXIT_OK
    assert seen["force_infrastructure"] is True


def test_a_refused_infrastructure_shutdown_says_how_to_force_it(fleet, capsys):
    plan = stop_plan(fleet, "gw-dijon", EVERYTHING)
    data = actuate.plan_data(fleet, plan)
    assert data["overrides"] == ["force_infrastructure"]
    assert data["lines"][1].startswith(
        "blocked: gw-dijon is the gateway of site dijon: its Wake-on-LAN (nas, pve1, pve2)"
    )
    assert data["lines"][2].startswith("(-e force_infrastructure=true stops infrastructure anyway")
    result = actuate.RunResult(2, "failed", actuate.Progress(plan=data), {}, 1.0)
    assert cli_power.report(result) == cli_power.EXIT_BLOCKED
    assert "(--force-infrastructure stops infrastructure anyway" in capsys.readouterr().err


# --------------------------------------------------------------------------- power_plan through Ansible, on loopback

LOOPBACK_FLEET = """
plugin: wakegrid.fleet.fleet
edge: {{host: vps, domain: example.net, wireguard: {{address: 10.200.0.1/24, endpoint: "vps:51820"}}}}
sites: {{home: {{gateway: gw, wireguard: {{address: 10.200.1.1/24}}}}}}
nodes:
  gw: {{kind: machine, site: home, address: 127.0.0.1, ssh: {{port: {gw}}}}}
  nas: {{kind: machine, site: home, address: 127.0.0.2, mac: "52:54:00:00:00:0a", ssh: {{port: {nas}}}}}
  app: {{kind: machine, site: home, address: 127.0.0.3, mac: "52:54:00:00:00:0b", ssh: {{port: {app}}}}}
dependencies:
  app: [nas]
"""


@pytest.fixture(scope="module")
def loopback_fleet(tmp_path_factory):
    """gw and nas answer on a real loopback "SSH" port; app's port refuses (booting: unknown)."""
    sockets = {name: socket.socket() for name in ("gw", "nas", "app")}
    for number, (name, sock) in enumerate(sockets.items(), 1):
        sock.bind((f"127.0.0.{number}", 0))
        if name != "app":  # app's port is bound, never listening: connections are refused
            sock.listen(16)
    path = tmp_path_factory.mktemp("loopback") / "loopback.fleet.yml"
    path.write_text(LOOPBACK_FLEET.format(**{name: sock.getsockname()[1] for name, sock in sockets.items()}))
    yield path
    for sock in sockets.values():
        sock.close()


def test_playbook_refuses_to_stop_a_gateway_unless_forced(loopback_fleet):
    refused = actuate.run_playbook("shutdown", loopback_fleet, {"node": "gw"}, check=True)
    assert refused.rc != 0 and refused.blocked
    assert refused.progress.plan["blocked"] == [
        "gw is the gateway of site home: its Wake-on-LAN (nas, app) and its WireGuard tunnel would become unreachable"
    ]
    assert "force_infrastructure=true stops infrastructure anyway" in refused.progress.failure
    forced = actuate.run_playbook("shutdown", loopback_fleet, {"node": "gw", "force_infrastructure": True}, check=True)
    assert forced.rc == 0, forced.progress.failure
    assert [step["node"] for step in forced.progress.plan["steps"]] == ["gw"]


def test_playbook_never_stops_what_an_unknown_node_may_need(loopback_fleet):
    result = actuate.run_playbook("shutdown", loopback_fleet, {"node": "nas", "confirm": ["nas"]}, check=True)
    assert result.rc != 0 and result.blocked
    plan = result.progress.plan
    assert plan["observed"]["app"]["power"] == "unknown"
    assert plan["unknown"] == {"app": plan["observed"]["app"]["detail"]}
    (reason,) = plan["blocked"]
    assert reason.startswith("nas may still be needed by app: power unknown (127.0.0.3:")
    assert reason.endswith("refuses connections (booting or shutting down))")
    assert any(line.startswith("observed unknown: app (") for line in plan["lines"])


def test_playbook_wakes_an_unknown_machine_only_saying_it_is_harmless(loopback_fleet):
    result = actuate.run_playbook("wake", loopback_fleet, {"node": "app"}, check=True)
    assert result.rc == 0, result.progress.failure
    (step,) = result.progress.plan["steps"]
    assert (step["node"], step["channel"]["kind"]) == ("app", "wake_on_lan")
    assert step["reason"].endswith("starting is harmless if it is already up")
