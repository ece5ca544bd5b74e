"""The actuator: power plans turned into playbook steps, and playbooks run through ansible-runner.

- :mod:`~wakegrid.actuate.steps` (pure): a plan → what ``wake.yml`` / ``shutdown.yml`` run;
- :mod:`~wakegrid.actuate.events` (pure): ansible-runner events → live progress and timings;
- :mod:`~wakegrid.actuate.runner` (I/O): run a collection playbook, the fleet as inventory;
- :mod:`~wakegrid.actuate.service` (asyncio): the daemon's actuator, runs queued per node, journaled
  and published on the event bus.

The ``wakegrid wake|shutdown|discover`` commands are built on it (:mod:`wakegrid.cli.power`).
"""

from wakegrid.actuate.events import (
    PLAN_ACTION,
    POWER_MODULES,
    STEP_DONE,
    STEP_STARTED,
    Progress,
    StepTiming,
    done_line,
    entries_lines,
    progress_line,
)
from wakegrid.actuate.runner import RunResult, collection_root, run_playbook, search_path
from wakegrid.actuate.service import ActionHandle, ActionResult, Actuator, ActuatorClosed
from wakegrid.actuate.steps import docker_delegate, plan_data, step_data, step_title

__all__ = [
    "PLAN_ACTION",
    "POWER_MODULES",
    "STEP_DONE",
    "STEP_STARTED",
    "ActionHandle",
    "ActionResult",
    "Actuator",
    "ActuatorClosed",
    "Progress",
    "RunResult",
    "StepTiming",
    "collection_root",
    "docker_delegate",
    "done_line",
    "entries_lines",
    "plan_data",
    "progress_line",
    "run_playbook",
    "search_path",
    "step_data",
    "step_title",
]
