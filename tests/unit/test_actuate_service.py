"""The actuator service with the real ansible-runner, on a tiny collection of localhost playbooks.

``WAKEGRID_COLLECTION`` points at a temporary collection whose ``wake.yml`` / ``shutdown.yml`` /
``routes.yml`` have the real ones' shape (a ``wakegrid.fleet.power_plan`` task, then each step
announced with ``wakegrid_step_started`` exactly as ``playbooks/tasks/power_step.yml`` does) but
only sleep or fail on localhost. What is checked: one run per node, the global limit, joining a
start already queued or running, timeouts, cancellation at shutdown, the journal's states and the
order of the events on the bus, and bad requests refused with a clear error.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wakegrid.actuate.service import ActionHandle, Actuator, ActuatorClosed
from wakegrid.bus import EventBus
from wakegrid.journal import JournalError, SqliteStore

FAKE_POWER_PLAN = """
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "operation": {"type": "str", "required": True},
            "steps": {"type": "list", "elements": "dict", "default": []},
        }
    )
    node, operation = module.params["node"], module.params["operation"]
    wanted = module.params["steps"]
    steps = []
    for index, step in enumerate(wanted, 1):
        channel = step.get("channel") or {"kind": "ssh", "via": step.get("node", node)}
        title = f"{operation} machine {step.get('node', node)} via {channel['kind']} of {channel['via']}"
        steps.append({
            "index": index, "total": len(wanted), "action": operation, "node": step.get("node", node),
            "channel": channel, "title": title, "wait_for": f"{step.get('node', node)} answers",
            "sleep": step.get("sleep", 0), "fail": step.get("fail"),
        })
    lines = [f"plan: {operation} {node}: {len(steps)} steps"] + [f"  {s['index']}. {s['title']}" for s in steps]
    module.exit_json(changed=False, steps=steps, lines=lines, blocked=[], runnable=True)


if __name__ == "__main__":
    main()
"""

POWER_PLAYBOOK = """
- name: Fake {operation}
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Check the request
      ansible.builtin.assert:
        that: [node is defined]
    - name: Observe the fleet and plan
      wakegrid.fleet.power_plan:
        node: "{{{{ node }}}}"
        operation: {operation}
        steps: "{{{{ test_steps | default([]) }}}}"
      register: wakegrid_plan
    - name: Sleep before the steps
      ansible.builtin.command: sleep {{{{ test_sleep | default(0) }}}}
      changed_when: false
    - name: Fail when asked
      ansible.builtin.fail:
        msg: "{{{{ test_fail }}}}"
      when: test_fail is defined
    - name: Run the steps in order
      ansible.builtin.include_tasks: tasks/step.yml
      loop: "{{{{ wakegrid_plan.steps }}}}"
      loop_control:
        loop_var: wakegrid_step
"""

STEP_TASKS = """
- name: Announce the step (as playbooks/tasks/power_step.yml does)
  ansible.builtin.set_fact:
    wakegrid_step_started:
      index: "{{ wakegrid_step.index }}"
      total: "{{ wakegrid_step.total }}"
      title: "{{ wakegrid_step.title }}"
      wait_for: "{{ wakegrid_step.wait_for }}"
- name: Carry the step out
  ansible.builtin.command: sleep {{ wakegrid_step.sleep }}
  register: wakegrid_step_result
- name: Fail the step when asked
  ansible.builtin.fail:
    msg: "step {{ wakegrid_step.index }}/{{ wakegrid_step.total }}: {{ wakegrid_step.title }}: {{ wakegrid_step.fail }}"
  when: wakegrid_step.fail is not none
- name: Record the step as done
  ansible.builtin.set_fact:
    wakegrid_step_done:
      index: "{{ wakegrid_step.index }}"
      changed: true
"""

ROUTES_PLAYBOOK = """
- name: Fake routes
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Push the routes
      ansible.builtin.command: sleep {{ test_sleep | default(0) }}
      changed_when: false
"""


def make_collection(root: Path) -> Path:
    """A collection with the real playbooks' names and event shapes that only sleeps or fails on localhost."""
    (root / "playbooks" / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "plugins" / "modules").mkdir(parents=True, exist_ok=True)
    (root / "galaxy.yml").write_text("namespace: wakegrid\nname: fleet\nversion: 0.0.1\nauthors: [test]\nreadme: x\n")
    (root / "plugins" / "modules" / "power_plan.py").write_text(FAKE_POWER_PLAN)
    (root / "playbooks" / "wake.yml").write_text(POWER_PLAYBOOK.format(operation="start"))
    (root / "playbooks" / "shutdown.yml").write_text(POWER_PLAYBOOK.format(operation="stop"))
    (root / "playbooks" / "routes.yml").write_text(ROUTES_PLAYBOOK)
    (root / "playbooks" / "tasks" / "step.yml").write_text(STEP_TASKS)
    # The "fleet": the runner hands it to Ansible as the inventory; an INI file is enough here.
    (root / "hosts.ini").write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return root


class Journal(SqliteStore):
    """The real journal, with what the tests read back made short."""

    def states(self, action_id: int) -> list[str]:
        """The states an action went through: planned, running when it started, then its end."""
        row = self.action(action_id)
        return ["planned", *(["running"] if row["started_at"] else []), *([row["state"]] * (row["state"] != "planned"))]

    def kinds(self, action_id: int) -> list[str]:
        return [event["kind"] for event in self.action(action_id)["events"]]

    def events_of(self, action_id: int, kind: str) -> list[dict[str, Any]]:
        return [event["data"] for event in self.action(action_id)["events"] if event["kind"] == kind]

    def all_actions(self) -> list[dict[str, Any]]:
        return list(reversed(self.actions(limit=1000)))


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    return make_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture
def env(collection, monkeypatch) -> Path:
    monkeypatch.setenv("WAKEGRID_COLLECTION", str(collection))
    return collection


@pytest.fixture
def journal(tmp_path) -> Journal:
    with Journal(tmp_path / "journal.sqlite") as store:
        yield store


def run(test: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Run an async test body with a hard bound: a hang is a failure, not a stuck suite."""

    async def bounded():
        return await asyncio.wait_for(test(*args), timeout=120)

    return asyncio.run(bounded())


def actuator(collection: Path, journal: Journal, bus: EventBus, **options: Any) -> Actuator:
    return Actuator(lambda: collection / "hosts.ini", journal, bus, **options)


def steps(*sleeps: float, node: str = "app", channel: str = "wake_on_lan", via: str = "gw") -> list[dict]:
    return [{"sleep": s, "node": node, "channel": {"kind": channel, "via": via}} for s in sleeps]


def interval(handle: ActionHandle) -> tuple[datetime, datetime]:
    assert handle.started_at is not None and handle.finished_at is not None, handle.describe()
    return handle.started_at, handle.finished_at


def most_at_once(handles: list[ActionHandle]) -> int:
    edges = sorted([(s, 1) for s, _ in map(interval, handles)] + [(e, -1) for _, e in map(interval, handles)])
    now = most = 0
    for _, delta in edges:
        now += delta
        most = max(most, now)
    return most


# --------------------------------------------------------------------------- a run, its events and its journal


def test_a_start_runs_wake_yml_publishes_its_steps_and_journals_them(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus)
        async with bus.subscribe(["node:app"]) as events:
            handle = await act.submit(
                "start",
                "app",
                "waking: request from 10.0.0.5",
                extravars={"test_steps": [*steps(0.1, node="nas"), *steps(0.1, channel="proxmox", via="pve1")]},
                timeout=60,
            )
            assert act.running() == {"app": handle}
            result = await handle.wait()
            seen = [event async for event in _until_finished(events)]
        return journal, handle, result, seen

    journal, handle, result, seen = run(body)
    assert result.state == "done" and result.status == "successful" and result.rc == 0, result.failure
    assert handle.state == "done" and handle.reason == "waking: request from 10.0.0.5"
    assert [step.title for step in result.steps] == [
        "start machine nas via wake_on_lan of gw",
        "start machine app via proxmox of pve1",
    ]
    assert all(step.seconds is not None and step.seconds >= 0.1 for step in result.steps)
    assert result.first_task_at is not None and result.first_task_at >= handle.submitted_at.timestamp()
    kinds = [event["kind"] for event in seen]
    assert kinds == [
        "queued",
        "running",
        "playbook_started",
        "plan",
        "step_started",
        "booting",
        "step_done",
        "step_started",
        "booting",
        "step_done",
        "finished",
    ]
    # The step of nas is published under nas's topic too: a follower of app sees its whole chain.
    booting = [event for event in seen if event["kind"] == "booting"]
    assert [(b["node"], b["channel"], b["via"], b["step"]) for b in booting] == [
        ("nas", "wake_on_lan", "gw", "Wake-on-LAN magic packet sent from gw"),
        ("app", "proxmox", "pve1", "start requested from the Proxmox API of pve1"),
    ]
    assert "node:nas" in booting[0]["topics"] and f"action:{handle.id}" in booting[0]["topics"]
    started = next(event for event in seen if event["kind"] == "step_started")
    assert started["line"] == "step 1 of 2: start machine nas via wake_on_lan of gw… waiting for nas answers"
    assert all(event["action_id"] == handle.id and event["operation"] == "start" for event in seen)
    assert seen[-1]["state"] == "done" and seen[-1]["timings"]["first_task_after_submit"] >= 0
    # The journal has what the bus had, and the states in order.
    assert journal.states(handle.id) == ["planned", "running", "done"]
    assert journal.kinds(handle.id) == kinds
    assert journal.action(handle.id)["key"].startswith("start:app:")
    # What a restarted daemon reads back: the node the step started, since the step began (no second burst).
    booting_memory = journal.memory(datetime.now(UTC), datetime.now(UTC)).booting
    assert {node: b.step for node, b in booting_memory.items()} == {
        "nas": "Wake-on-LAN magic packet sent from gw",
        "app": "start requested from the Proxmox API of pve1",
    }
    assert booting_memory["nas"].since == datetime.fromisoformat(booting[0]["since"])


async def _until_finished(events):
    async for event in events:
        yield event
        if event["kind"] == "finished":
            return


def test_a_failing_playbook_is_journaled_failed_with_the_step_that_failed(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus)
        broken = [{"sleep": 0, "node": "app", "channel": {"kind": "ssh", "via": "app"}, "fail": "no answer on :22"}]
        handle = await act.submit("stop", "app", "idle for 21m", extravars={"test_steps": broken}, timeout=60)
        return journal, handle, await handle.wait()

    journal, handle, result = run(body)
    assert result.state == "failed" and result.status == "failed" and result.rc != 0
    assert result.failure == "step 1/1: stop machine app via ssh of app: no answer on :22"
    assert journal.states(handle.id) == ["planned", "running", "failed"]
    assert journal.action(handle.id)["error"] == result.failure
    assert [data["message"] for data in journal.events_of(handle.id, "failed")] == [result.failure]
    assert "booting" not in journal.kinds(handle.id)  # a stop boots nothing


# --------------------------------------------------------------------------- one per node, a global limit, joining


def test_runs_of_one_node_wait_for_each_other_and_all_share_the_global_limit(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus, max_parallel=2)
        same = [
            await act.submit("stop", "app", "idle", extravars={"confirm": [name]}, timeout=60) for name in ("x", "y")
        ]
        others = [await act.submit("start", name, "wanted", extravars={"test_sleep": 1}, timeout=60) for name in "bc"]
        everything = [*same, *others]
        await asyncio.gather(*(h.wait() for h in everything))
        return everything

    everything = run(body)
    first, second, *_ = everything
    assert all(h.state == "done" for h in everything), [h.result for h in everything]
    assert interval(second)[0] >= interval(first)[1]  # never two runs on one node at once
    assert most_at_once(everything) <= 2
    assert second.result.queued_seconds > 0.5  # it waited for the first


def test_runs_sharing_a_node_of_their_chain_wait_for_each_other(env, journal):
    async def body():
        act = actuator(env, journal, EventBus())
        chain = {"extravars": {"test_sleep": 1}, "timeout": 60, "nodes": ["pve1", "nas"]}
        handles = [await act.submit("start", name, "wanted", **chain) for name in ("jellyfin", "vm-docker")]
        await asyncio.gather(*(h.wait() for h in handles))
        return handles

    jellyfin, vm_docker = run(body)
    assert interval(vm_docker)[0] >= interval(jellyfin)[1]  # both wake pve1: never at once


def test_a_second_start_of_a_node_joins_the_queued_or_running_one(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus)
        first = await act.submit("start", "app", "request from 10.0.0.5", extravars={"test_sleep": 1}, timeout=60)
        joined_queued = await act.submit(
            "start", "app", "request from 10.0.0.6", extravars={"test_sleep": 1}, timeout=60
        )
        await _wait_for(lambda: first.state == "running")
        joined_running = await act.submit("start", "app", "POST /api/wake", extravars={"test_sleep": 1}, timeout=60)
        other_vars = await act.submit("start", "app", "other", extravars={"test_sleep": 0}, timeout=60)
        await asyncio.gather(first.wait(), other_vars.wait())
        routes = await act.submit("routes", None, "pool of stream changed", timeout=60)
        routes_again = await act.submit("routes", None, "pool of cloud changed", timeout=60)  # queued: joins
        await _wait_for(lambda: routes.state == "running")
        routes_after = await act.submit(
            "routes", None, "pool of stream changed back", timeout=60
        )  # running: a new pass
        await asyncio.gather(routes.wait(), routes_after.wait())
        return journal, first, joined_queued, joined_running, other_vars, routes, routes_again, routes_after

    journal, first, joined_queued, joined_running, other_vars, routes, routes_again, routes_after = run(body)
    assert joined_queued is first and joined_running is first
    assert first.reasons == ["request from 10.0.0.5", "request from 10.0.0.6", "POST /api/wake"]
    assert other_vars is not first and interval(other_vars)[0] >= interval(first)[1]
    joins = [data["reason"] for data in journal.events_of(first.id, "joined")]
    assert joins == ["request from 10.0.0.6", "POST /api/wake"]
    assert len([a for a in journal.all_actions() if a["kind"] == "start"]) == 2  # one per distinct request
    assert routes_again is routes and routes_after is not routes
    assert routes.target is None and routes.state == routes_after.state == "done"


async def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- timeout, cancel, shutdown


def test_a_run_over_its_timeout_is_stopped_and_fails_saying_so(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus)
        started = time.monotonic()
        handle = await act.submit("start", "app", "wanted", extravars={"test_steps": steps(30)}, timeout=4)
        result = await handle.wait()
        return journal, handle, result, time.monotonic() - started

    journal, handle, result, took = run(body)
    assert result.state == "failed" and result.status == "timeout"
    assert result.failure.startswith("timed out after 4.")
    assert result.failure.endswith("(timeout 4s) during step 1 of 1: start machine app via wake_on_lan of gw")
    assert took < 15  # the 30 s step was killed, not waited for
    assert journal.states(handle.id) == ["planned", "running", "failed"]


def test_shutdown_lets_runs_finish_within_grace_then_interrupts_them(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus, max_parallel=1)
        quick = await act.submit("start", "quick", "wanted", extravars={"test_sleep": 0}, timeout=60)
        await _wait_for(lambda: quick.state == "running")
        await quick.wait()
        short = await act.submit("start", "short", "wanted", extravars={"test_sleep": 1}, timeout=60)
        await _wait_for(lambda: short.state == "running")
        await short.wait()
        slow = await act.submit("start", "slow", "wanted", extravars={"test_steps": steps(60)}, timeout=120)
        queued = await act.submit("start", "queued", "wanted", timeout=60)  # no place: max_parallel=1
        await _wait_for(lambda: slow.state == "running" and slow.events[-1]["kind"] == "booting")
        started = time.monotonic()
        await act.shutdown(grace=1)
        took = time.monotonic() - started
        with pytest.raises(ActuatorClosed):
            await act.submit("start", "late", "wanted", timeout=60)
        return journal, slow, queued, took

    journal, slow, queued, took = run(body)
    assert slow.state == "interrupted" and slow.result.status == "canceled"
    assert slow.result.failure.startswith("the daemon stopped and its grace period (1s) ran out (cancelled after")
    assert journal.states(slow.id) == ["planned", "running", "interrupted"]
    assert queued.state == "interrupted" and queued.result.status == "not started"
    assert journal.states(queued.id) == ["planned", "interrupted"]
    assert journal.action(queued.id)["error"] == "not started: the daemon is stopping"
    assert took < 10


def test_shutdown_waits_for_a_run_that_ends_within_grace(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus)
        handle = await act.submit("stop", "app", "idle", extravars={"test_sleep": 1}, timeout=60)
        await _wait_for(lambda: handle.state == "running")
        await act.shutdown(grace=60)
        return handle

    assert run(body).state == "done"


def test_a_cancelled_handle_is_interrupted(env, journal):
    async def body():
        bus = EventBus()
        act = actuator(env, journal, bus)
        handle = await act.submit("start", "app", "wanted", extravars={"test_steps": steps(60)}, timeout=120)
        await _wait_for(lambda: handle.events[-1]["kind"] == "booting")
        handle.cancel("a person cancelled it")
        return await handle.wait()

    result = run(body)
    assert result.state == "interrupted" and result.failure.startswith("a person cancelled it (cancelled after")


# --------------------------------------------------------------------------- bad requests and faults


@pytest.mark.parametrize(
    ("kind", "target", "options", "message"),
    [
        ("reboot", "app", {}, "unknown action 'reboot': one of start, stop, routes"),
        ("start", None, {}, "a start needs the node to act on"),
        ("stop", "  ", {}, "a stop needs the node to act on"),
        ("routes", "vps", {}, "a routes run has no target"),
        ("start", "app", {"timeout": 0}, "timeout must be a positive number of seconds, not 0"),
        ("start", "app", {"timeout": float("nan")}, "timeout must be a positive number"),
        ("start", "app", {"extravars": ["x"]}, "extravars must be a mapping, not list"),
        ("start", "app", {"extravars": {"when": object()}}, "extravars must be plain data (JSON)"),
        ("start", "app", {"extravars": {"node": "nas"}}, "extravars name node 'nas', the target is 'app'"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_journaled(env, journal, kind, target, options, message):
    async def body():
        act = actuator(env, journal, EventBus())
        with pytest.raises(ValueError, match="^" + _escaped(message)):
            await act.submit(kind, target, "because", **{"timeout": 60, **options})
        with pytest.raises(ValueError, match="needs a reason"):
            await act.submit("start", "app", " ", timeout=60)
        return journal

    run(body)
    assert journal.all_actions() == []


def _escaped(text: str) -> str:
    return re.escape(text)


def test_a_missing_fleet_file_or_collection_fails_the_run_not_the_daemon(env, journal, tmp_path, monkeypatch):
    async def body():
        act = Actuator(lambda: tmp_path / "gone.fleet.yml", journal, EventBus())
        no_fleet = await (await act.submit("start", "app", "wanted", timeout=60)).wait()
        monkeypatch.setenv("WAKEGRID_COLLECTION", str(tmp_path))
        act = actuator(env, journal, EventBus())
        no_collection = await (await act.submit("start", "app", "wanted", timeout=60)).wait()
        return journal, no_fleet, no_collection

    journal, no_fleet, no_collection = run(body)
    assert no_fleet.state == "failed" and no_fleet.failure == f"no fleet file at {tmp_path / 'gone.fleet.yml'}"
    assert no_collection.state == "failed"
    assert no_collection.failure.startswith(f"the wakegrid.fleet collection is not at {tmp_path}")
    assert [journal.states(a["id"]) for a in journal.all_actions()] == [["planned", "running", "failed"]] * 2


def test_a_journal_that_fails_mid_run_does_not_stop_the_run(env, tmp_path):
    class FullDisk(Journal):
        def add_event(self, action_id, kind, data, at=None):
            raise JournalError(self.path, "database or disk is full")

    async def body():
        act = actuator(env, FullDisk(tmp_path / "full.sqlite"), EventBus())
        handle = await act.submit("start", "app", "wanted", timeout=60)
        return act, await handle.wait()

    act, result = run(body)
    assert result.state == "done"
    assert act.journal_errors >= 4  # queued, running, plan, finished: each failed, was counted, the run went on


def test_a_journal_that_cannot_begin_an_action_refuses_it(env, tmp_path):
    class ReadOnly(Journal):
        def begin_action(self, *args, **kwargs):
            raise JournalError(self.path, "attempt to write a readonly database")

    async def body():
        act = actuator(env, ReadOnly(tmp_path / "ro.sqlite"), EventBus())
        with pytest.raises(JournalError, match="readonly"):
            await act.submit("start", "app", "wanted", timeout=60)
        return act.running()

    assert run(body) == {}
