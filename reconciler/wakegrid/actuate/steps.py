"""Power plans turned into what the playbooks run (pure).

:func:`plan_data` turns a :class:`wakegrid.graph.Plan` (and the observed power state it was
computed from) into what ``wake.yml`` / ``shutdown.yml`` execute: per step, the module, its
options resolved from the fleet, where it runs (``delegate_to``), its timeout, the API to wait
for before it, and the printable plan (:func:`wakegrid.render.plan_lines`). Secrets never
appear here: the playbook takes them from the inventory's references (``hostvars[...]``, which
hold the ``wakegrid.fleet.fleet_secret`` lookup) at task time, with ``no_log``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from wakegrid.graph import Note, Plan, Step
from wakegrid.model import Fleet
from wakegrid.render import plan_lines


def step_title(step: Step) -> str:
    """``start lxc jellyfin via Proxmox API of pve1``: what a step does, in the failure messages too."""
    return f"{step.action} {step.kind} {step.node} via {step.channel.describe()}"


def step_data(fleet: Fleet, step: Step, index: int, total: int) -> dict[str, Any]:
    """Everything the playbook needs to run one step (no secrets: see the module docstring)."""
    node = fleet.nodes[step.node]
    seconds = node.timeouts.start if step.action == "start" else node.timeouts.stop
    timeout = max(1, math.ceil(seconds))
    data: dict[str, Any] = {
        "index": index,
        "total": total,
        "action": step.action,
        "node": step.node,
        "kind": step.kind,
        "channel": {"kind": step.channel.kind, "via": step.channel.via},
        "wait_for": step.wait_for,
        "reason": step.reason,
        "title": step_title(step),
        "timeout": timeout,
        "ready": None,  # an API to wait for before acting: {what, url, status, validate_certs}
    }
    kind = step.channel.kind
    if kind == "wake_on_lan":
        wol = fleet.wol_of(step.node)
        args: dict[str, Any] = {"mac": node.mac, "broadcast": wol.broadcast, "port": wol.port, "timeout": timeout}
        if wol.interface:
            args["interface"] = wol.interface
        args["wait_for"] = {"host": node.address or step.node, "port": fleet.ssh_of(step.node).port, "protocol": "tcp"}
        data.update(
            module="wakegrid.fleet.wake_on_lan",
            delegate_to=step.channel.via,
            args=args,
            secureon=node.wol is not None and node.wol.secureon is not None,
        )
    elif kind == "proxmox":
        proxmox = fleet.nodes[step.channel.via].proxmox
        assert proxmox is not None  # the model guarantees it for a guest's parent
        url = urlsplit(proxmox.api)
        port = url.port or 8006
        args = {
            "api_host": url.hostname,
            "api_port": port,
            "api_token_id": proxmox.token_id,
            "validate_certs": proxmox.verify_tls,
            "vmid": node.vmid,
            "node": proxmox.node or step.channel.via,
            "state": "started" if step.action == "start" else "shutdown",
            "timeout": timeout,
        }
        if step.action == "stop":
            args["force_stop"] = True  # a guest that ignores the clean shutdown is stopped hard after `timeout`
        data.update(
            module="wakegrid.fleet.proxmox_guest",
            delegate_to="localhost",
            args=args,
            ready={
                "what": step.channel.describe(),
                "url": f"{url.scheme}://{_netloc(url.hostname or '', port)}/api2/json/version",
                "status": [200, 401],  # 401: up, and asking for credentials
                "validate_certs": proxmox.verify_tls,
            },
        )
    elif kind == "docker":
        docker = fleet.nodes[step.channel.via].docker
        assert docker is not None
        tls = docker.tls or docker.api.startswith("https://")
        args = {
            "docker_host": docker.api,
            "tls": tls,
            "validate_certs": tls and docker.tls_verify,
            "ca_path": docker.ca,
            "client_cert": docker.cert,
            "name": node.container or step.node,
            "state": "started" if step.action == "start" else "stopped",
            "timeout": timeout,
            # The module waits this long for an API still booting (its parent was just started),
            # through the same TLS settings as the step itself.
            "api_wait_timeout": timeout if step.action == "start" else 0,
        }
        if step.action == "stop":
            args["stop_timeout"] = timeout  # the grace period between SIGTERM and SIGKILL
        data.update(
            module="wakegrid.fleet.docker_container_power",
            delegate_to=docker_delegate(docker.api, step.channel.via),
            args=args,
            client_key=docker.key is not None,  # the playbook takes it from the inventory
        )
    else:  # ssh: the machine powers itself off
        data.update(
            module="community.general.shutdown",
            delegate_to=step.node,
            args={"delay": 0, "msg": f"wakegrid: shutting down {step.node} ({step.reason})"},
            address=node.address or step.node,
            port=fleet.ssh_of(step.node).port,
        )
    return data


def docker_delegate(api: str, host: str) -> str:
    """Where a Docker API is reached from: a unix socket only on its own host, the rest from here."""
    return host if urlsplit(api).scheme == "unix" else "localhost"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plan_data(fleet: Fleet, plan: Plan, observed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plan as the playbooks use it: steps with their options, notes, and the printable plan.

    ``observed`` maps node names to objects with ``power`` (``up``, ``down`` or ``unknown``)
    and ``detail`` (the observer's :class:`wakegrid.observe.power.PowerState`) or to
    ``{"power", "detail"}`` dicts.
    """
    observed = observed or {}
    states = {name: _as_state(state) for name, state in observed.items()}
    total = len(plan.steps)
    steps = [step_data(fleet, step, index, total) for index, step in enumerate(plan.steps, 1)]
    data = {
        "operation": plan.operation,
        "target": plan.target,
        "runnable": plan.runnable,
        "blocked": list(plan.blocked),
        "overrides": list(plan.overrides),
        "steps": steps,
        "already": [_note(note) for note in plan.skipped],  # not "skipped": Ansible reads that as a skipped task
        "kept": [_note(note) for note in plan.kept],
        "proposed": [_note(note) for note in plan.proposed],
        "observed": states,
        "up": [name for name, state in states.items() if state["power"] == "up"],
        "unknown": {name: state["detail"] for name, state in states.items() if state["power"] == "unknown"},
    }
    data["lines"] = plan_lines(data)
    return data


def _as_state(state: Any) -> dict[str, Any]:
    if isinstance(state, Mapping):
        return {"power": str(state["power"]), "detail": str(state.get("detail", ""))}
    return {"power": str(state.power), "detail": str(state.detail)}


def _note(note: Note) -> dict[str, Any]:
    return {"node": note.node, "reason": note.reason, "needed_by": list(note.needed_by)}
