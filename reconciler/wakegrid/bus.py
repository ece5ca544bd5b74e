"""The daemon's in-process event bus: live events for whoever follows a node, a service or an action.

Publishers (the actuator's playbook threads, the reconcile round, the API) call
:meth:`EventBus.publish` from any thread; it never blocks and never fails the caller.
Subscribers (a waiting page's server-sent events, a test) read an async iterator:

    async with bus.subscribe(["node:jellyfin", "service:stream"]) as events:
        async for event in events:
            ...

Topics name what an event is about: ``node:jellyfin``, ``service:stream``, ``action:12``,
``routes``, ``decision``. A subscription's prefix matches a topic equal to it, or a topic
that continues it after a ``:`` (``node:nas`` matches ``node:nas`` but not ``node:nas2``); a
prefix ending in ``:`` matches every topic under it (``node:``); no prefix matches everything.

Each subscriber has its own bounded queue: a slow one loses its oldest events, never the
publisher's time nor the process's memory. The loss is counted and said in the stream itself
(an event ``{"topic": "bus", "kind": "dropped", "count": n}`` before the next one), so a
follower knows to re-read the state instead (the bus is live news, the journal is the record).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

QUEUE_SIZE = 1000


def topic_matches(prefix: str, topic: str) -> bool:
    """Whether a subscription ``prefix`` covers ``topic`` (see the module docstring)."""
    if not topic.startswith(prefix):
        return False
    return len(topic) == len(prefix) or prefix.endswith(":") or topic[len(prefix)] == ":"


class Subscription:
    """One subscriber's bounded queue; an async iterator, and an async context manager that ends it."""

    def __init__(self, bus: EventBus, prefixes: tuple[str, ...], size: int) -> None:
        self._bus = bus
        self.prefixes = prefixes
        self._queue: deque[dict[str, Any]] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0  # events lost to a full queue, in all
        self._dropped_unsaid = 0  # ... not yet said in the stream

    def wants(self, topics: Sequence[str]) -> bool:
        return not self.prefixes or any(topic_matches(p, t) for p in self.prefixes for t in topics)

    def _put(self, event: dict[str, Any]) -> None:
        if self._closed:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            self._dropped_unsaid += 1
            self._bus.dropped += 1
        self._queue.append(event)  # a full deque drops its oldest
        self._ready.set()

    def pending(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop receiving; the iterator ends once what is queued has been read."""
        if not self._closed:
            self._closed = True
            self._bus._remove(self)
            self._ready.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._dropped_unsaid:
                count, self._dropped_unsaid = self._dropped_unsaid, 0
                return {"topic": "bus", "topics": ["bus"], "kind": "dropped", "count": count}
            if self._queue:
                return self._queue.popleft()
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class EventBus:
    """Topics → subscribers, on one asyncio loop; :meth:`publish` is safe from any thread."""

    def __init__(self, *, queue_size: int = QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size!r}")
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: list[Subscription] = []
        self.published = 0
        self.dropped = 0  # events lost by slow subscribers, over all of them

    def subscribe(self, prefixes: Iterable[str] = (), *, queue_size: int | None = None) -> Subscription:
        """Follow the topics under ``prefixes`` (all when empty), from now on. Call it inside the loop."""
        if isinstance(prefixes, str):
            raise TypeError("subscribe() takes a list of topic prefixes, not one string")
        size = self.queue_size if queue_size is None else queue_size
        if size < 1:
            raise ValueError(f"queue_size must be at least 1, not {size!r}")
        self._bind(asyncio.get_running_loop())
        subscription = Subscription(self, tuple(prefixes), size)
        self._subscribers.append(subscription)
        return subscription

    def publish(self, topic: str | Sequence[str], event: dict[str, Any]) -> None:
        """Hand ``event`` to the subscribers of ``topic`` (or of any of several topics: each gets it once).

        Never blocks. From the loop's own thread it is delivered at once; from another thread,
        at the loop's next turn, in publishing order. The event gets ``topic`` (the first) and
        ``topics``; subscribers share it and must not change it.
        """
        topics = [topic] if isinstance(topic, str) else list(topic)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise ValueError(f"an event needs a topic: {topic!r}")
        loop = self._loop
        if loop is None:
            return  # nobody ever subscribed: nobody to tell
        message = {**event, "topic": topics[0], "topics": topics}
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(topics, message)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon stopped, nobody listens any more
            loop.call_soon_threadsafe(self._deliver, topics, message)

    def close(self) -> None:
        """End every subscription (their iterators stop after what they hold)."""
        for subscription in list(self._subscribers):
            subscription.close()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed() and self._subscribers:
                raise RuntimeError("this event bus already serves another running event loop")
            self._loop = loop

    def _deliver(self, topics: Sequence[str], message: dict[str, Any]) -> None:
        self.published += 1
        for subscription in self._subscribers:
            if subscription.wants(topics):
                subscription._put(message)

    def _remove(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
