"""The daemon's actuator: the collection's playbooks run in the background, one at a time per node.

:class:`Actuator` is the asyncio front of :func:`wakegrid.actuate.runner.run_playbook` (one
thread and one private data dir per run). The daemon asks it for an action and gets an
:class:`ActionHandle` to follow:

- ``start`` runs ``wake.yml`` (node=target), ``stop`` runs ``shutdown.yml`` (node=target, with
  ``confirm`` and the like in ``extravars``), ``routes`` runs ``routes.yml`` (no target: the edge);
- at most one run per node at a time (and one routes run at a time), at most ``max_parallel``
  runs in all; a run waits for its node before it takes a place, and its ``timeout`` counts from
  when it really starts;
- a start (or stop) of a node that is already queued or running with the same variables joins
  that run: the caller gets the same handle, and its reason is journaled. A routes run joins only
  one still queued (a running one may have read the fleet before the change that asks again);
- every run is journaled (planned → running → done / failed / interrupted, with its events) and
  its progress published on the :class:`wakegrid.bus.EventBus`: topics ``action:<id>`` and
  ``node:<target>`` (``routes`` for routes), and ``node:<name>`` of each step's node; a step that
  starts a node is also noted in the journal's booting memory (``note_booting``);
- :meth:`Actuator.shutdown` lets running runs finish for a grace period, then cancels them
  (journaled ``interrupted``).

Events (``kind`` and its fields; each also has ``action_id``, ``operation`` (start, stop, routes), ``target``
and ``at``, an ISO time: the runner event's for what comes from the playbook):
``queued`` (reason, timeout), ``joined`` (reason), ``running`` (queued_seconds), ``playbook_started`` (task:
its first task began), ``plan`` (lines, blocked, steps),
``step_started`` (index, total, title, wait_for, node, action, channel, via, line), ``booting``
(node, channel, via, step, since: a step that starts a node began; journaled *before* the magic
packet leaves, so a daemon restarted mid-wake never sends a second burst), ``step_done`` (index,
total, title, node, seconds, changed, line), ``report`` (lines), ``failed`` (message), ``finished``
(state, rc, status, seconds, failure, timings).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from wakegrid.actuate.events import PLAN_ACTION, STEP_DONE, STEP_STARTED, Progress, StepTiming
from wakegrid.actuate.runner import RunResult, run_playbook
from wakegrid.bus import EventBus
from wakegrid.journal import Store

log = logging.getLogger(__name__)

ActionKind = Literal["start", "stop", "routes"]
ActionState = Literal["planned", "running", "done", "failed", "interrupted"]
PLAYBOOKS: Mapping[str, str] = {"start": "wake", "stop": "shutdown", "routes": "routes"}
ROUTES = "routes"  # the key of routes runs in running() (and their lock: node locks are "node:<name>"), their topic
# How long shutdown() waits for cancelled runs to end (ansible-runner kills them within a fraction of a second).
CANCEL_WAIT = 30.0
EVENTS_KEPT = 500  # per handle, for a follower that comes late (the journal keeps them all)

# What a starting step has done to its node, for Memory.booting (wakegrid.state.Booting.step).
BOOTING_STEP = {
    "wake_on_lan": "Wake-on-LAN magic packet sent from {via}",
    "proxmox": "start requested from the Proxmox API of {via}",
    "docker": "start requested from the Docker API of {via}",
}


class ActuatorClosed(RuntimeError):
    """The actuator is shutting down and takes no new action."""


@dataclass(frozen=True)
class ActionResult:
    """How a run ended."""

    state: ActionState  # done, failed or interrupted
    status: str  # ansible-runner's ("successful", "failed", "timeout", "canceled"), or "not started", "error"
    rc: int | None
    seconds: float  # the playbook's wall time (0 when it never ran)
    failure: str | None  # what went wrong, in words
    steps: tuple[StepTiming, ...] = ()
    plan: Mapping[str, Any] | None = None  # the power_plan result (start/stop)
    queued_seconds: float = 0.0  # from submit() to the run's start (waiting for its node and a place)
    first_task_at: float | None = None  # epoch seconds of the playbook's first task (the runner event's time)

    @property
    def blocked(self) -> bool:
        return bool(self.plan and self.plan.get("blocked"))


@dataclass(eq=False)
class ActionHandle:
    """One action, queued, running or ended: ``await handle.wait()`` gives its :class:`ActionResult`."""

    id: int
    kind: ActionKind
    target: str | None
    extravars: Mapping[str, Any]
    timeout: float
    reasons: list[str]  # the first caller's reason, then each joiner's
    submitted_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    state: ActionState = "planned"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: ActionResult | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # the last EVENTS_KEPT published
    _done: asyncio.Future[ActionResult] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    _cancel: threading.Event = field(default_factory=threading.Event)
    _cancel_reason: str = "cancelled"
    _submitted: float = field(default_factory=time.monotonic)

    @property
    def reason(self) -> str:
        return self.reasons[0]

    @property
    def done(self) -> bool:
        return self._done.done()

    @property
    def topics(self) -> list[str]:
        return [f"action:{self.id}", f"node:{self.target}" if self.target else ROUTES]

    def describe(self) -> str:
        """``start #12``: how decisions name it (wakegrid.state.Memory.running)."""
        return f"{self.kind} #{self.id}"

    async def wait(self) -> ActionResult:
        """The result once the run ended (waiting can be cancelled; the run goes on)."""
        return await asyncio.shield(self._done)

    def cancel(self, why: str = "cancelled") -> None:
        """Stop the run (or drop it if it has not started); it ends ``interrupted``."""
        if not self._cancel.is_set():
            self._cancel_reason = why
            self._cancel.set()


class Actuator:
    """Runs the collection's playbooks for the daemon; see the module docstring."""

    def __init__(
        self,
        fleet_path_provider: Callable[[], str | os.PathLike[str]],
        journal: Store,
        bus: EventBus,
        *,
        max_parallel: int = 4,
        check: bool = False,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel!r}")
        self._fleet_path = fleet_path_provider
        self.journal = journal
        self.bus = bus
        self.max_parallel = max_parallel
        self.check = check
        self.journal_errors = 0  # journal writes that failed during runs (the runs went on)
        self._places: asyncio.Semaphore | None = None  # made inside the loop
        self._locks: dict[str, asyncio.Lock] = {}
        self._pending: dict[str, list[ActionHandle]] = {}  # key → handles queued or running, in order
        self._tasks: dict[ActionHandle, asyncio.Task[None]] = {}
        self._closing = False

    # ------------------------------------------------------------------ the interface

    async def submit(
        self,
        kind: ActionKind,
        target: str | None,
        reason: str,
        *,
        extravars: Mapping[str, Any] | None = None,
        timeout: float,
        key: str | None = None,
        nodes: Iterable[str] = (),
    ) -> ActionHandle:
        """Queue an action, or join the same one already queued or running; returns its handle at once.

        ``key`` is the journal's idempotency key (a fresh one by default). ``nodes``: other nodes
        the run will act on (a start's chain, a stop's cascade, from the daemon's plan), held as
        well, so two runs never act on one node at once. Bad arguments raise ``ValueError``; a
        journal that cannot record the action raises its error (nothing runs unjournaled).
        """
        lock_key, variables = _checked(kind, target, reason, extravars, timeout)
        if self._closing:
            raise ActuatorClosed("the actuator is shutting down: no new action")
        joined = self._joinable(kind, lock_key, variables)
        if joined is not None:
            joined.reasons.append(reason)
            self._emit(joined, "joined", {"reason": reason})
            return joined
        key = key or f"{kind}:{target or ROUTES}:{uuid.uuid4().hex}"
        action_id = self.journal.begin_action(kind, target, reason, key, variables)
        same = next((h for h in self._tasks if h.id == action_id), None)
        if same is not None:  # the journal knows this key: that action is still under way here
            same.reasons.append(reason)
            self._emit(same, "joined", {"reason": reason})
            return same
        handle = ActionHandle(action_id, kind, target, variables, float(timeout), [reason])
        self._pending.setdefault(lock_key, []).append(handle)
        self._emit(handle, "queued", {"reason": reason, "timeout": handle.timeout})
        keys = sorted({lock_key, *(f"node:{node}" for node in nodes)})  # one order for all: no deadlock
        task = asyncio.create_task(self._run(handle, lock_key, keys), name=handle.describe())
        task.add_done_callback(lambda _: self._ended(handle, lock_key))
        self._tasks[handle] = task
        return handle

    def running(self) -> dict[str, ActionHandle]:
        """The action in progress (else the next queued) per node, and ``routes``."""
        return {key.removeprefix("node:"): handles[0] for key, handles in self._pending.items() if handles}

    async def shutdown(self, grace: float) -> None:
        """No new action; queued ones are dropped, running ones get ``grace`` seconds, then are cancelled.

        Each ends ``interrupted`` in the journal, with why.
        """
        self._closing = True
        for handle, task in list(self._tasks.items()):
            if handle.state == "planned":
                handle.cancel("not started: the daemon is stopping")
                task.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, grace))
        for handle in list(self._tasks):
            handle.cancel(f"the daemon stopped and its grace period ({grace:g}s) ran out")
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=CANCEL_WAIT)
            for task in late:
                log.error("a cancelled run did not end within %ss: %s", CANCEL_WAIT, task.get_name())

    # ------------------------------------------------------------------ one run

    def _joinable(self, kind: str, lock_key: str, variables: Mapping[str, Any]) -> ActionHandle | None:
        for handle in self._pending.get(lock_key, ()):
            if handle.kind != kind or handle.extravars != variables or handle._cancel.is_set():
                continue
            if handle.state == "planned" or (handle.state == "running" and kind != "routes"):
                return handle
        return None

    async def _run(self, handle: ActionHandle, lock_key: str, keys: list[str]) -> None:
        loop = asyncio.get_running_loop()
        result: ActionResult | None = None
        try:
            async with contextlib.AsyncExitStack() as held:
                for key in keys:
                    await held.enter_async_context(self._locks.setdefault(key, asyncio.Lock()))
                await held.enter_async_context(self._semaphore())
                if handle._cancel.is_set():
                    result = _not_started(handle, handle._cancel_reason)
                    return
                handle.state, handle.started_at = "running", datetime.now(UTC)
                self._journal_state(handle, "running")
                queued = time.monotonic() - handle._submitted
                self._emit(handle, "running", {"queued_seconds": round(queued, 3)})
                result = await self._play(handle, loop, queued)
        except asyncio.CancelledError:
            handle.cancel(handle._cancel_reason if handle._cancel.is_set() else "the actuator's task was cancelled")
            if result is None and handle.state == "running":  # its thread sees the cancel and kills the playbook
                seconds = (datetime.now(UTC) - (handle.started_at or handle.submitted_at)).total_seconds()
                result = ActionResult("interrupted", "canceled", None, seconds, handle._cancel_reason)
            raise
        except Exception as exc:  # a run must never take the daemon down
            log.exception("the %s run failed before or around its playbook", handle.describe())
            result = ActionResult("failed", "error", None, 0.0, _message(exc), queued_seconds=0.0)
        finally:
            self._finish(handle, lock_key, result or _not_started(handle, handle._cancel_reason))

    async def _play(self, handle: ActionHandle, loop: asyncio.AbstractEventLoop, queued: float) -> ActionResult:
        fleet_path = Path(self._fleet_path())
        if not fleet_path.is_file():
            return ActionResult("failed", "error", None, 0.0, f"no fleet file at {fleet_path}", queued_seconds=queued)
        progress = Progress()
        follower = _Follower(
            handle, progress, lambda kind, data: loop.call_soon_threadsafe(self._emit, handle, kind, data)
        )
        try:
            run: RunResult = await asyncio.to_thread(
                run_playbook,
                PLAYBOOKS[handle.kind],
                fleet_path,
                handle.extravars,
                check=self.check,
                on_event=follower.feed,
                cancel=handle._cancel.is_set,
                timeout=handle.timeout,
                progress=progress,
            )
        except asyncio.CancelledError:
            handle.cancel(handle._cancel_reason)  # the thread sees it and kills the playbook
            raise
        if run.ok:
            state: ActionState = "done"
            failure = None
        elif run.canceled:
            state, failure = "interrupted", f"{handle._cancel_reason} ({run.progress.failure})"
        else:
            state, failure = "failed", run.progress.failure or f"the playbook failed (rc {run.rc})"
        return ActionResult(
            state,
            run.status,
            run.rc,
            run.seconds,
            failure,
            tuple(run.progress.steps),
            run.progress.plan,
            queued_seconds=queued,
            first_task_at=follower.first_task_at,
        )

    def _finish(self, handle: ActionHandle, lock_key: str, result: ActionResult) -> None:
        handle.state, handle.result, handle.finished_at = result.state, result, datetime.now(UTC)
        pending = self._pending.get(lock_key, [])
        if handle in pending:
            pending.remove(handle)
        if not pending:
            self._pending.pop(lock_key, None)
        self._tasks.pop(handle, None)
        self._journal_state(handle, result.state, result.failure)
        timings = {"queued": round(result.queued_seconds, 3), "playbook": round(result.seconds, 3)}
        if result.first_task_at is not None:
            timings["first_task_after_submit"] = round(result.first_task_at - handle.submitted_at.timestamp(), 3)
        if result.steps:
            timings["steps"] = [
                {"index": s.index, "title": s.title, "seconds": s.seconds, "working": round(s.working, 3)}
                for s in result.steps
            ]
        self._emit(
            handle,
            "finished",
            {
                "state": result.state,
                "rc": result.rc,
                "status": result.status,
                "seconds": round(result.seconds, 3),
                "failure": result.failure,
                "timings": timings,
            },
        )
        if not handle._done.done():
            handle._done.set_result(result)

    def _ended(self, handle: ActionHandle, lock_key: str) -> None:
        # A task cancelled before its first step never runs its body: its handle is finished here.
        if not handle.done:
            self._finish(handle, lock_key, _not_started(handle, handle._cancel_reason))

    # ------------------------------------------------------------------ plumbing

    def _semaphore(self) -> asyncio.Semaphore:
        if self._places is None:
            self._places = asyncio.Semaphore(self.max_parallel)
        return self._places

    def _emit(self, handle: ActionHandle, kind: str, data: dict[str, Any]) -> None:
        """Publish one event of ``handle`` and journal it (on the loop's thread)."""
        at = data.pop("at", None) or datetime.now(UTC).isoformat()
        event = {
            "kind": kind,
            "action_id": handle.id,
            "operation": handle.kind,
            "target": handle.target,
            "at": at,
            **data,
        }
        topics = handle.topics
        node = data.get("node")
        if node and f"node:{node}" not in topics:
            topics.append(f"node:{node}")
        handle.events.append(event)
        del handle.events[:-EVENTS_KEPT]
        self.bus.publish(topics, event)
        when = _parsed_time(at)
        try:
            self.journal.add_event(handle.id, kind, data, at=when)
            if kind == "booting":
                # What a restarted daemon reads back (Memory.booting): no second burst for this node.
                self.journal.note_booting(data["node"], _parsed_time(data["since"]) or when, data["step"])
        except Exception:
            self.journal_errors += 1
            log.exception("could not journal the %s event of %s", kind, handle.describe())

    def _journal_state(self, handle: ActionHandle, state: str, error: str | None = None) -> None:
        try:
            self.journal.set_action_state(handle.id, state, error)
        except Exception:
            self.journal_errors += 1
            log.exception("could not journal %s as %s", handle.describe(), state)


class _Follower:
    """Runner events of one run → the actuator's events (runs in the playbook's thread)."""

    def __init__(self, handle: ActionHandle, progress: Progress, emit: Callable[[str, dict[str, Any]], Any]) -> None:
        self.handle = handle
        self.progress = progress  # fed by run_playbook before each event reaches feed()
        self.emit = emit
        self.first_task_at: float | None = None
        self._failure: str | None = None

    def feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        at = event.get("created")
        data = event.get("event_data") or {}
        if kind == "playbook_on_task_start" and self.first_task_at is None and at:
            with contextlib.suppress(ValueError):
                self.first_task_at = datetime.fromisoformat(str(at)).timestamp()
                self.emit("playbook_started", {"at": at, "task": data.get("task") or data.get("name")})
        facts = ((data.get("res") or {}).get("ansible_facts") or {}) if kind == "runner_on_ok" else {}
        if kind == "runner_on_ok" and data.get("task_action") == PLAN_ACTION and self.progress.plan is not None:
            plan = self.progress.plan
            steps = [_step_fields(step, plan) for step in plan.get("steps") or []]
            self.emit(
                "plan",
                {
                    "at": at,
                    "lines": list(plan.get("lines") or []),
                    "blocked": list(plan.get("blocked") or []),
                    "steps": steps,
                },
            )
        elif STEP_STARTED in facts:
            step = _step_fields(facts[STEP_STARTED], self.progress.plan)
            self.emit("step_started", {"at": at, **step, "line": _started_line(step)})
            if step["action"] == "start" and step["node"]:
                what = BOOTING_STEP.get(step["channel"] or "", "start requested through {via}")
                self.emit(
                    "booting",
                    {
                        "at": at,
                        "node": step["node"],
                        "channel": step["channel"],
                        "via": step["via"],
                        "step": what.format(via=step["via"]),
                        "since": at or datetime.now(UTC).isoformat(),
                    },
                )
        elif STEP_DONE in facts and self.progress.steps:
            timing = self.progress.steps[-1]
            planned = _step_fields({"index": timing.index}, self.progress.plan)
            self.emit(
                "step_done",
                {
                    "at": at,
                    "index": timing.index,
                    "total": timing.total,
                    "title": timing.title,
                    "node": planned["node"],
                    "seconds": timing.seconds,
                    "changed": timing.changed,
                    "line": f"step {timing.index} of {timing.total}: {'done' if timing.changed else 'already so'}"
                    + (f" in {timing.seconds:.1f}s" if timing.seconds is not None else ""),
                },
            )
        elif "wakegrid_report" in facts:
            self.emit("report", {"at": at, "lines": list(facts["wakegrid_report"])})
        if self.progress.failure is not None and self.progress.failure != self._failure:
            self._failure = self.progress.failure
            self.emit("failed", {"at": at, "message": self._failure})


def _step_fields(info: Mapping[str, Any], plan: Mapping[str, Any] | None) -> dict[str, Any]:
    """A step as events carry it: the announced fact, completed from the plan's step of that index."""
    index = int(info.get("index") or 0)
    planned_steps = (plan or {}).get("steps") or []
    planned = planned_steps[index - 1] if 0 < index <= len(planned_steps) else {}
    channel = info.get("channel") or planned.get("channel") or {}
    return {
        "index": index,
        "total": int(info.get("total") or planned.get("total") or 0),
        "title": info.get("title") or planned.get("title"),
        "wait_for": info.get("wait_for") or planned.get("wait_for"),
        "node": info.get("node") or planned.get("node"),
        "action": info.get("action") or planned.get("action"),
        "channel": channel.get("kind"),
        "via": channel.get("via"),
    }


def _started_line(step: Mapping[str, Any]) -> str:
    return f"step {step['index']} of {step['total']}: {step['title']}… waiting for {step['wait_for']}"


def _checked(
    kind: str, target: str | None, reason: str, extravars: Mapping[str, Any] | None, timeout: float
) -> tuple[str, dict[str, Any]]:
    """The lock key and the playbook's variables of a request, or ``ValueError`` saying what is wrong."""
    if kind not in get_args(ActionKind):
        raise ValueError(f"unknown action {kind!r}: one of {', '.join(get_args(ActionKind))}")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError("an action needs a reason in words")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if extravars is not None and not isinstance(extravars, Mapping):
        raise ValueError(f"extravars must be a mapping, not {type(extravars).__name__}")
    variables = dict(extravars or {})
    if not all(isinstance(name, str) for name in variables):
        raise ValueError("extravars names must be strings")
    try:
        json.dumps(variables)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extravars must be plain data (JSON): {exc}") from None
    if kind == "routes":
        if target is not None:
            raise ValueError("a routes run has no target (it acts on the edge)")
        return ROUTES, variables
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"a {kind} needs the node to act on")
    if variables.get("node", target) != target:
        raise ValueError(f"extravars name node {variables['node']!r}, the target is {target!r}")
    return f"node:{target}", {**variables, "node": target}


def _not_started(handle: ActionHandle, why: str) -> ActionResult:
    return ActionResult(
        "interrupted", "not started", None, 0.0, why, queued_seconds=time.monotonic() - handle._submitted
    )


def _parsed_time(text: str | None) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
