"""How a wake is followed: one per service, its layers moved by the bus's events, its failure in words.

A real :class:`Reconciler` on the lab fleet (nothing started: no round runs here), its real
bus and a real SQLite journal. The events are shaped as the actuator and the rounds publish them
(``wakegrid.actuate.service``, ``Reconciler._after_observation``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wakegrid.daemon.config import DaemonConfig
from wakegrid.daemon.reconciler import Reconciler
from wakegrid.journal import SqliteStore
from wakegrid.observe.power import PowerState
from wakegrid.state import Health, Observed
from wakegrid.web.wake import WakeDesk

REPO = Path(__file__).resolve().parents[2]
LAB_FLEET = REPO / "inventories" / "lab" / "lab.fleet.yml"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
# What every event of the actuator's run carries (wakegrid.actuate.service.Actuator._emit).
START = {"action_id": 1, "operation": "start", "target": "jellyfin", "at": "2026-01-05T12:00:00+00:00"}


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    async def bounded():
        return await asyncio.wait_for(coroutine, timeout=30)  # a hang is a failure

    return asyncio.run(bounded())


@pytest.fixture
def desk(tmp_path: Path):
    store = SqliteStore(tmp_path / "journal.sqlite3")
    reconciler = Reconciler(LAB_FLEET, DaemonConfig(), store)
    kicks = []
    reconciler.on_kick = lambda: kicks.append(1)
    desk = WakeDesk(reconciler)
    desk.kicks = kicks
    yield desk
    store.close()


async def settle() -> None:
    """Let the wake's follower take what the bus delivered (each event takes it a few loop turns)."""
    for _ in range(50):
        await asyncio.sleep(0)


def states(wake) -> dict[str, tuple[str, str]]:
    return {layer["key"]: (layer["state"], layer["detail"]) for layer in wake.snapshot()["layers"]}


def pending(desk) -> int:
    return len(desk.reconciler.store.memory(LONG_AGO, datetime.now(UTC)).wake_requests)


def test_one_wake_per_service_and_its_layers_follow_the_events(desk):
    async def scenario():
        bus = desk.reconciler.bus
        wakes = await asyncio.gather(*(desk.join("stream", f"10.0.0.{i}", "held GET") for i in range(20)))
        wake = wakes[0]
        assert all(w is wake for w in wakes) and wake.requests == 20
        assert len(desk.kicks) == 1 and pending(desk) == 1  # one wake request journaled, one round asked for
        assert [layer["key"] for layer in wake.snapshot()["layers"]] == ["nas", "pve1", "jellyfin", "application"]
        await settle()
        assert states(wake)["application"] == ("waiting", "waits for machine nas")

        bus.publish("node:nas", {"kind": "power", "power": "down", "detail": "no answer on 10.231.1.10:22"})
        bus.publish(["action:1", "node:nas"], {**START, "kind": "step_started", "node": "nas", "title": "wake nas"})
        bus.publish(["action:1", "node:nas"], {**START, "kind": "booting", "node": "nas", "step": "magic packet sent"})
        await settle()
        assert states(wake)["nas"] == ("starting", "magic packet sent")
        version = wake.version
        bus.publish("node:nas", {"kind": "power", "power": "down", "detail": "still asleep"})  # still booting
        await settle()
        assert states(wake)["nas"] == ("starting", "magic packet sent")
        # A stop of the same node (another run) is not this wake's business.
        bus.publish(["action:2", "node:nas"], {**START, "operation": "stop", "kind": "step_started", "node": "nas"})
        bus.publish(
            ["action:1", "node:nas"], {**START, "kind": "step_done", "node": "nas", "seconds": 41.5, "line": "nas up"}
        )
        await settle()
        assert wake.version > version
        assert states(wake)["nas"] == ("up", "nas up") and wake.snapshot()["layers"][0]["took"] == 41.5

        # A decision about the service, in words, for the page's status line; others are not its business.
        bus.publish("decision", {"subject": "service www", "verdict": "keep", "reason": "always on"})
        bus.publish("decision", {"subject": "node pve1", "verdict": "wait", "reason": "wait: booting since 14:02"})
        await settle()
        assert wake.message == "pve1: wait: booting since 14:02"

        # The start of pve1 fails: the layer and the error say so, in words.
        bus.publish(["action:1", "node:pve1"], {**START, "kind": "step_started", "node": "pve1", "title": "wake pve1"})
        bus.publish(
            ["action:1", "node:jellyfin"],
            {**START, "kind": "failed", "message": "pve1 did not come up within 300 s"},
        )
        await settle()
        assert states(wake)["pve1"][0] == "failed"
        snapshot = wake.snapshot()
        assert snapshot["state"] == "failed" and snapshot["error"] == "pve1 did not come up within 300 s"

        # "Try again": the same wake, asked for again (journaled, a round), the error cleared.
        again = await desk.join("stream", "10.0.0.99", "browser GET")
        assert again is wake and wake.error is None and len(desk.kicks) == 2

        # The round sees the service healthy and says "ready": every waiter is released, the wake is over.
        wake.pages = 1
        bus.publish("service:stream", {"kind": "ready", "requested_at": "…"})
        await asyncio.wait_for(wake.ready.wait(), 5)
        assert wake.snapshot()["state"] == "ready" and "stream" not in desk.wakes
        assert {state for state, _ in states(wake).values()} == {"up"}
        # A visit through the waiting page is activity from now on.
        assert "stream" in desk.reconciler.store.memory(LONG_AGO, datetime.now(UTC)).last_activity
        # The next request after this wake starts a new one.
        assert await desk.join("stream", "10.0.0.1", "held GET") is not wake
        await desk.close()

    run(scenario())


def test_a_stale_healthy_observation_does_not_end_a_new_wake(desk):
    async def scenario():
        reconciler = desk.reconciler
        old = datetime(2026, 1, 1, tzinfo=UTC)
        up = PowerState("jellyfin", "up", "running")
        reconciler.last_observed = Observed(
            at=old, power={"jellyfin": up}, health={("stream", 0): Health("up", "200 in 3 ms")}
        )
        wake = await desk.join("stream", "10.0.0.1", "held POST")
        await settle()
        assert not wake.ready.is_set()  # seen healthy before the request: not proof it is up now
        reconciler.last_observed = Observed(
            at=datetime.now(UTC),
            power={n: PowerState(n, "up", "up") for n in ("nas", "pve1", "jellyfin")},
            health={("stream", 0): Health("up", "200 in 3 ms")},
        )
        await asyncio.wait_for(wake.ready.wait(), 5)  # the next observation does it, even with no event
        await desk.close()

    run(scenario())


def test_unknown_power_is_said_with_its_reason_and_the_application_waits(desk):
    async def scenario():
        desk.reconciler.last_observed = Observed(
            at=datetime.now(UTC),
            power={
                "nas": PowerState("nas", "up", "SSH port accepts connections"),
                "pve1": PowerState("pve1", "unknown", "10.231.1.20:22 refuses connections"),
                "jellyfin": PowerState("jellyfin", "unknown", "pve1 unknown"),
            },
            health={("stream", 0): Health("unknown", "1 of 2 passes")},
        )
        wake = await desk.join("stream", "10.0.0.1", "held GET")
        await settle()
        assert states(wake) == {
            "nas": ("up", "SSH port accepts connections"),
            "pve1": ("unknown", "10.231.1.20:22 refuses connections"),
            "jellyfin": ("unknown", "pve1 unknown"),
            "application": ("waiting", "waits for machine pve1"),
        }
        await desk.close()

    run(scenario())
