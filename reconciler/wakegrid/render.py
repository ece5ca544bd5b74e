"""A plan, printable (pure): the one renderer behind ``wakegrid plan``, the playbooks and the power commands.

It renders the plan as the playbooks receive it (:func:`wakegrid.actuate.plan_data`), one line
per fact: the power it was computed from, why it is blocked and how a person lifts that, each
step, what stays up, what is only proposed. Two things depend on the reader: whether the power
was observed or assumed (``wakegrid plan`` observes nothing), and whether a block is lifted with
the command's flags or with the playbook's ``-e`` variables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from wakegrid.graph import OVERRIDE_DEPENDANTS, OVERRIDE_INFRASTRUCTURE, Channel

# How a person lifts each kind of block (graph.OVERRIDE_*): the playbook variable, the command's flag.
# Nothing lifts an unknown power state or a node in use.
OVERRIDE_HINTS = {
    OVERRIDE_DEPENDANTS: ("include_dependants=true", "--include-dependants", "stops those dependants first"),
    OVERRIDE_INFRASTRUCTURE: (
        "force_infrastructure=true",
        "--force-infrastructure",
        "stops infrastructure anyway: a person's decision, the reconciler never forces it",
    ),
}


def override_hints(overrides: Sequence[str], *, flags: bool) -> list[str]:
    """``(--include-dependants stops those dependants first)``, or with ``-e include_dependants=true``."""
    return [
        f"({OVERRIDE_HINTS[o][1] if flags else '-e ' + OVERRIDE_HINTS[o][0]} {OVERRIDE_HINTS[o][2]})" for o in overrides
    ]


def plan_lines(data: Mapping[str, Any], *, assumed: bool = False, flags: bool = False) -> list[str]:
    """The plan, one line per fact: the power it starts from, each step, what stays, what is proposed.

    ``assumed``: the power states were given, not observed. ``flags``: the reader lifts blocks and
    confirms shutdowns with the command's flags, not with the playbook's variables.
    """
    verb = "start" if data["operation"] == "start" else "shut down"
    steps = data["steps"]
    lines = [f"plan: {verb} {data['target']}: {len(steps)} step{'s' if len(steps) != 1 else ''}"]
    observed = data.get("observed") or {}
    if observed:
        basis = "assuming" if assumed else "observed"
        for power in ("up", "down", "unknown"):
            listed = _nodes(observed, power, explained_only=assumed and power != "up")
            # What a preview assumes by default (down or unknown, unexplained) is noise; an observation says all.
            if listed != "none" or not assumed or power == "up":
                lines.append(f"{basis} {power}: {listed}")
    for reason in data["blocked"]:
        lines.append(f"blocked: {reason}")
    lines += override_hints(data.get("overrides") or [], flags=flags)
    for step in steps:
        channel = Channel(step["channel"]["kind"], step["channel"]["via"]).describe(step["action"])
        lines.append(
            f"step {step['index']}/{step['total']}: {step['action']} {step['kind']} {step['node']} via {channel}, "
            f"because: {step['reason']}; then wait until {step['wait_for']} (at most {step['timeout']}s)"
        )
    if not steps and not data["blocked"]:
        lines.append(f"nothing to do: {data['target']} is already {'up' if data['operation'] == 'start' else 'down'}")
    for note in data["kept"]:
        lines.append(f"stays up: {note['node']}: {note['reason']}")
    for note in data["proposed"]:
        how = (
            f"--confirm {note['node']}"
            if flags
            else f"-e confirm={note['node']}, or wakegrid shutdown --confirm {note['node']}"
        )
        lines.append(f"proposed: shut down {note['node']}: {note['reason']} (to do it: {how})")
    return lines


def _nodes(states: Mapping[str, Mapping[str, Any]], power: str, *, explained_only: bool = False) -> str:
    """``nas, pve1``, or with how each was found: ``nas (no answer on …); pve1 (its host … is down)``.

    ``explained_only``: list only the nodes whose state comes with a reason (given on the command line).
    """
    # An up node needs no explanation; a down or unknown one says how it was found, when that is known.
    found = {
        name: state.get("detail") if power != "up" else ""
        for name, state in states.items()
        if state["power"] == power and (state.get("detail") or not explained_only)
    }
    if not any(found.values()):
        return ", ".join(found) or "none"
    return "; ".join(f"{name} ({detail})" if detail else name for name, detail in found.items())
