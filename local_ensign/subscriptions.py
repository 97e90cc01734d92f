"""Live-tail subscriptions: every committed event goes to every matching subscription.

A subscription starts at the tail of the log (the last committed RLID when it was
registered) and then receives each later event of its topics in commit order.

Fast subscribers are fed from memory: the committer hands each new batch to
``offer``. A subscriber that falls more than ``buffer_limit`` events behind (a
stalled notebook, say) stops buffering and, once its buffer is drained, catches up
by reading the event log after the last event it buffered, so it never holds up a publisher
or another subscriber, never costs unbounded memory, and never loses an event.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from .eventlog import EventLog, Record

BUFFER_LIMIT = 10_000
READ_BATCH = 500


class Subscription:
    """One subscribe stream's place in the log and the events waiting for it."""

    def __init__(self, topic_ids: Iterable[bytes], tail: bytes, log: EventLog, buffer_limit: int) -> None:
        self.topic_ids = frozenset(topic_ids)
        self._log = log
        self._tail = tail  # RLID of the last event handed out or buffered
        self._buffer: deque[Record] = deque()
        self._buffer_limit = buffer_limit
        self._lagging = False
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, records: list[Record]) -> None:
        """Take newly committed records (called by the committer, in commit order)."""
        if self._lagging:
            self._wake.set()
            return
        fresh = [r for r in records if r.topic_id in self.topic_ids and r.rlid > self._tail]
        if not fresh:
            return
        if len(self._buffer) + len(fresh) > self._buffer_limit:
            # Too far behind to buffer more: hand out what is buffered, then read the
            # rest from the log, starting after the last buffered event.
            self._lagging = True
        else:
            self._buffer.extend(fresh)
            self._tail = fresh[-1].rlid
        self._wake.set()

    async def next_batch(self) -> list[Record]:
        """Wait for the next events of this subscription, in commit order."""
        while not self.closed:
            if self._buffer:
                batch = list(self._buffer)
                self._buffer.clear()
                return batch
            if self._lagging:
                batch = self._log.read_after(sorted(self.topic_ids), self._tail, READ_BATCH)
                if batch:
                    self._tail = batch[-1].rlid
                if len(batch) < READ_BATCH:
                    self._lagging = False  # caught up: offer() buffers again from here
                if batch:
                    return batch
            self._wake.clear()
            await self._wake.wait()
        return []

    def close(self) -> None:
        self.closed = True
        self._wake.set()


class SubscriptionRegistry:
    """All open subscriptions of the server."""

    def __init__(self, log: EventLog, buffer_limit: int = BUFFER_LIMIT) -> None:
        self._log = log
        self._buffer_limit = buffer_limit
        self._subscriptions: set[Subscription] = set()
        self.tail = log.last_rlid()

    def register(self, topic_ids: Iterable[bytes]) -> Subscription:
        """Open a subscription at the live tail; call before telling the client it is ready."""
        subscription = Subscription(topic_ids, self.tail, self._log, self._buffer_limit)
        self._subscriptions.add(subscription)
        return subscription

    def unregister(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscriptions.discard(subscription)

    def publish(self, records: list[Record]) -> None:
        """Hand a committed batch to every subscription."""
        if records:
            self.tail = records[-1].rlid
        for subscription in self._subscriptions:
            subscription.offer(records)

    def __len__(self) -> int:
        return len(self._subscriptions)
