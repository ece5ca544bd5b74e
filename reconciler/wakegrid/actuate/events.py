"""ansible-runner events of a wake/shutdown/discover run turned into live progress and timings (pure).

The playbooks mark each step with facts (``wakegrid_step_started`` / ``wakegrid_step_done``);
:class:`Progress` follows them and the ``power_plan`` result, and says what to print.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PLAN_ACTION = "wakegrid.fleet.power_plan"
# The tasks that do a step's real work (and its waiting); the rest of a run is overhead.
POWER_MODULES = frozenset(
    {
        "wakegrid.fleet.wake_on_lan",
        "wakegrid.fleet.proxmox_guest",
        "wakegrid.fleet.docker_container_power",
        "community.general.shutdown",
        "ansible.builtin.wait_for",
        "ansible.builtin.command",
        "ansible.builtin.uri",
    }
)
STEP_STARTED, STEP_DONE = "wakegrid_step_started", "wakegrid_step_done"


@dataclass
class StepTiming:
    index: int
    total: int
    title: str
    wait_for: str
    started: float  # runner event time, seconds since the epoch
    seconds: float | None = None
    changed: bool | None = None
    working: float = 0.0  # seconds inside the modules that act and wait (POWER_MODULES)


@dataclass
class Progress:
    """Follows the events of one wake/shutdown run: the plan, each step and its time, the failure."""

    plan: dict[str, Any] | None = None
    plan_seconds: float | None = None  # observing and planning (the power_plan task)
    steps: list[StepTiming] = field(default_factory=list)
    failure: str | None = None
    started: float | None = None
    finished: float | None = None

    def feed(self, event: Mapping[str, Any]) -> list[str]:
        """Take one ansible-runner event; return the lines to show for it (maybe none)."""
        stamp = _event_time(event)
        if self.started is None and stamp is not None:
            self.started = stamp
        if stamp is not None:
            self.finished = stamp
        kind = event.get("event")
        data = event.get("event_data") or {}
        result = data.get("res") or {}
        if kind == "runner_on_ok" and data.get("task_action") == PLAN_ACTION:
            self.plan = {key: value for key, value in result.items() if not key.startswith("_")}
            self.plan_seconds = _float(data.get("duration"))
            return list(self.plan.get("lines") or [])
        if kind in ("runner_on_ok", "runner_on_failed") and data.get("task_action") in POWER_MODULES and self.steps:
            self.steps[-1].working += _float(data.get("duration")) or 0.0
        if kind == "runner_on_ok":
            facts = result.get("ansible_facts") or {}
            if STEP_STARTED in facts:
                info = facts[STEP_STARTED]
                self.steps.append(
                    StepTiming(int(info["index"]), int(info["total"]), info["title"], info["wait_for"], stamp or 0.0)
                )
                return [progress_line(info)]
            if "wakegrid_report" in facts:
                return [*facts["wakegrid_report"], *entries_lines(facts.get("wakegrid_entries") or {})]
            if STEP_DONE in facts and self.steps:
                info = facts[STEP_DONE]
                step = self.steps[-1]
                step.seconds = (stamp - step.started) if stamp is not None else None
                step.changed = bool(info.get("changed"))
                return [done_line(step)]
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            message = _failure_message(result)
            if self.steps and self.steps[-1].seconds is None and stamp is not None:
                self.steps[-1].seconds = stamp - self.steps[-1].started  # the step that failed
            if data.get("task_action") in ("ansible.builtin.fail", "fail") or self.failure is None:
                self.failure = message
            return [f"failed: {message}"] if data.get("task_action") in ("ansible.builtin.fail", "fail") else []
        if kind == "runner_on_unreachable":
            self.failure = _failure_message(result)
        return []

    @property
    def wall(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def working(self) -> float:
        """Seconds inside the modules that act and wait, over all steps."""
        return sum(step.working for step in self.steps)


def entries_lines(entries: Mapping[str, Any]) -> list[str]:
    """Discovered fleet entries as YAML to complete and paste under ``nodes:``."""
    if not entries:
        return []
    import yaml

    text = yaml.safe_dump({"nodes": dict(entries)}, default_flow_style=False, sort_keys=False)
    return ["", "to complete and add to the fleet file:", *text.rstrip().splitlines()]


def progress_line(info: Mapping[str, Any]) -> str:
    """``step 2 of 3: start lxc jellyfin via Proxmox API of pve1… waiting for Proxmox reports lxc 201 running``"""
    return f"step {info['index']} of {info['total']}: {info['title']}… waiting for {info['wait_for']}"


def done_line(step: StepTiming) -> str:
    took = f" in {step.seconds:.1f}s" if step.seconds is not None else ""
    what = "done" if step.changed or step.changed is None else "already so, nothing changed"
    return f"step {step.index} of {step.total}: {what}{took}"


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _failure_message(result: Mapping[str, Any]) -> str:
    message = result.get("msg") or result.get("stderr") or result.get("reason") or "failed"
    return str(message).strip()


def _event_time(event: Mapping[str, Any]) -> float | None:
    created = event.get("created")
    if not created:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(created)).timestamp()
    except ValueError:
        return None
