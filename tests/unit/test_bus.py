"""The in-process event bus: topics and prefixes, publishing from threads, bounded queues that say what they lost."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import pytest

from wakegrid.bus import EventBus, topic_matches


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    async def bounded():
        return await asyncio.wait_for(coroutine, timeout=30)  # a hang is a failure

    return asyncio.run(bounded())


async def drain(subscription) -> list[dict]:
    """What a subscription holds now (it is closed first, so the iterator ends)."""
    subscription.close()
    return [event async for event in subscription]


@pytest.mark.parametrize(
    ("prefix", "topic", "matches"),
    [
        ("node:nas", "node:nas", True),
        ("node:nas", "node:nas2", False),  # a name is not a prefix of a longer name
        ("node:nas", "node:nas:step", True),
        ("node:", "node:nas", True),
        ("node", "node:nas", True),
        ("node", "nodes", False),
        ("service:", "node:nas", False),
        ("action:1", "action:12", False),
    ],
)
def test_prefixes_match_whole_names(prefix, topic, matches):
    assert topic_matches(prefix, topic) is matches


def test_subscribers_get_their_topics_in_order_and_once():
    async def body():
        bus = EventBus()
        async with bus.subscribe(["node:jellyfin", "action:"]) as mine, bus.subscribe() as everything:
            bus.publish("node:jellyfin", {"kind": "power", "power": "up"})
            bus.publish("node:nas", {"kind": "power", "power": "down"})
            bus.publish(["action:12", "node:jellyfin"], {"kind": "step_started", "index": 1})
            bus.publish("decision", {"subject": "service stream", "verdict": "keep"})
            return await drain(mine), await drain(everything), bus.subscribers

    mine, everything, left = run(body())
    assert [(e["topic"], e["kind"]) for e in mine] == [("node:jellyfin", "power"), ("action:12", "step_started")]
    assert mine[1]["topics"] == ["action:12", "node:jellyfin"]  # both topics matched: delivered once
    assert len(everything) == 4
    assert left == 0  # leaving the context unsubscribed both


def test_publishing_from_threads_never_blocks_and_keeps_each_threads_order():
    async def body():
        bus = EventBus()
        async with bus.subscribe(["node:"]) as events:

            def publisher(name: str) -> None:
                for number in range(200):
                    bus.publish(f"node:{name}", {"n": number})

            threads = [threading.Thread(target=publisher, args=(name,)) for name in ("a", "b", "c")]
            for thread in threads:
                thread.start()
            await asyncio.to_thread(lambda: [thread.join() for thread in threads])
            await asyncio.sleep(0)  # let the loop run the deliveries the threads scheduled
            await asyncio.sleep(0.05)
            return await drain(events)

    received = run(body())
    assert len(received) == 600
    for name in "abc":
        assert [e["n"] for e in received if e["topic"] == f"node:{name}"] == list(range(200))


def test_a_slow_subscriber_loses_its_oldest_events_and_is_told_how_many():
    async def body():
        bus = EventBus(queue_size=5)
        slow = bus.subscribe(["node:"])
        fast = bus.subscribe(["node:"], queue_size=100)
        for number in range(12):
            bus.publish("node:nas", {"n": number})
        assert slow.pending() == 5  # bounded, whatever the publisher does
        return await drain(slow), await drain(fast), bus.dropped, slow.dropped

    slow, fast, dropped, slow_dropped = run(body())
    assert slow[0] == {"topic": "bus", "topics": ["bus"], "kind": "dropped", "count": 7}
    assert [e["n"] for e in slow[1:]] == [7, 8, 9, 10, 11]  # the newest kept
    assert [e["n"] for e in fast] == list(range(12))
    assert dropped == slow_dropped == 7


def test_a_waiting_subscriber_wakes_up_and_closing_the_bus_ends_it():
    async def body():
        bus = EventBus()
        subscription = bus.subscribe(["service:stream"])
        got: list[dict] = []

        async def follow():
            async for event in subscription:
                got.append(event)

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.01)
        await asyncio.to_thread(bus.publish, "service:stream", {"kind": "ready"})
        await asyncio.sleep(0.05)
        bus.close()
        await asyncio.wait_for(follower, 1)
        bus.publish("service:stream", {"kind": "late"})  # nobody left: dropped quietly
        return got

    assert [e["kind"] for e in run(body())] == ["ready"]


def test_publishing_with_nobody_listening_or_after_the_loop_closed_is_harmless():
    bus = EventBus()
    bus.publish("node:nas", {"kind": "power"})  # never subscribed: nothing to do

    async def body():
        bus.subscribe(["node:"])

    asyncio.run(body())
    bus.publish("node:nas", {"kind": "power"})  # from no loop, to a closed one: no error
    thread = threading.Thread(target=bus.publish, args=("node:nas", {"kind": "power"}))
    thread.start()
    thread.join()


def test_bad_arguments_are_refused_clearly():
    bus = EventBus()
    with pytest.raises(ValueError, match="an event needs a topic"):
        bus.publish("", {"kind": "x"})
    with pytest.raises(ValueError, match="an event needs a topic"):
        bus.publish([], {"kind": "x"})
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        EventBus(queue_size=0)

    async def body():
        with pytest.raises(TypeError, match="a list of topic prefixes, not one string"):
            bus.subscribe("node:nas")
        with pytest.raises(ValueError, match="queue_size must be at least 1"):
            bus.subscribe(["node:"], queue_size=0)

    run(body())
    with pytest.raises(RuntimeError, match="no running event loop"):
        bus.subscribe(["node:"])
