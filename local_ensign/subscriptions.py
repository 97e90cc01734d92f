"""Live-tail subscriptions: every committed event goes to every matching subscription.

A subscription starts at the tail of the log (the last committed RLID when it was
registered) and then receives each later event of its topics in commit order.

Fast subscribers are fed from memory: the committer hands each new batch to
``offer``. A subscriber that falls behind by more than ``BUFFER_EVENTS`` events or
``BUFFER_BYTES`` bytes (a stalled notebook, say) stops buffering and, once its
buffer is drained, catches up by reading the event log after the last event it
buffered, ``READ_BYTES`` at a time. So it never holds up a publisher or another
subscriber, never costs more than a few megabytes, and never loses an event.

Writing to subscribers shares the event loop with publishing. Each subscription
waits for a turn (``WriteTurns``) before each write, and only a few turns are
handed out per round of the loop, so two hundred subscribers cost publishers a few
writes' time per round, not two hundred; the subscribers then read from the log
what they could not be sent live.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from .eventlog import EventLog, Record
from .storage import StoreError

log = logging.getLogger("local_ensign.subscriptions")

BUFFER_EVENTS = 10_000
BUFFER_BYTES = 4 * 1024 * 1024
READ_EVENTS = 500
READ_BYTES = 1024 * 1024
READ_RETRY = 0.5  # seconds before reading the log again after it failed
WRITES_PER_ROUND = 4


class WriteTurns:
    """Hands out at most ``per_round`` turns to write per round of the event loop, in FIFO order.

    A subscription awaits ``turn()`` before writing an event. Turns are not held
    while the write is in flight, so a subscriber whose client stopped reading
    blocks only itself.
    """

    def __init__(self, per_round: int = WRITES_PER_ROUND) -> None:
        self._per_round = per_round
        self._left = per_round
        self._waiting: deque[asyncio.Future] = deque()
        self._refill_scheduled = False

    async def turn(self) -> None:
        """Return when this caller may write (at once, if turns are left this round)."""
        if self._left and not self._waiting:
            self._left -= 1
            self._schedule_refill()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._schedule_refill()
        await waiter

    def _schedule_refill(self) -> None:
        if not self._refill_scheduled:
            self._refill_scheduled = True
            asyncio.get_running_loop().call_soon(self._refill)

    def _refill(self) -> None:
        """Start a new round: wake the next waiters, up to the round's turns."""
        self._refill_scheduled = False
        self._left = self._per_round
        while self._left and self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a cancelled waiter gives its turn to the next
                waiter.set_result(None)
                self._left -= 1
        if self._waiting or self._left < self._per_round:
            self._schedule_refill()


class Subscription:
    """One subscribe stream's place in the log and the events waiting for it."""

    def __init__(
        self, topic_ids: Iterable[bytes], tail: bytes, log_: EventLog, buffer_events: int, buffer_bytes: int
    ) -> None:
        self.topic_ids = frozenset(topic_ids)
        self._log = log_
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._tail = tail  # RLID of the last event handed out or buffered
        self._buffer: deque[Record] = deque()
        self._buffered_bytes = 0
        self._lagging = False
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, records: list[Record], size: int) -> None:
        """Take newly committed records of ``size`` bytes in all (called by the committer, in order)."""
        if self._lagging:
            self._wake.set()
            return
        fresh = [r for r in records if r.topic_id in self.topic_ids and r.rlid > self._tail]
        if not fresh:
            return
        if len(fresh) != len(records):
            size = sum(len(r.wrapper) for r in fresh)
        if (
            len(self._buffer) + len(fresh) > self._buffer_events
            or self._buffered_bytes + size > self._buffer_bytes
        ):
            # Too far behind to buffer more: hand out what is buffered, then read the
            # rest from the log, starting after the last buffered event.
            self._lagging = True
        else:
            self._buffer.extend(fresh)
            self._buffered_bytes += size
            self._tail = fresh[-1].rlid
        self._wake.set()

    async def next_batch(self) -> list[Record]:
        """Wait for the next events of this subscription, in commit order."""
        while not self.closed:
            if self._buffer:
                batch = list(self._buffer)
                self._buffer.clear()
                self._buffered_bytes = 0
                return batch
            if self._lagging:
                batch = await self._read_log()
                if batch:
                    return batch
            self._wake.clear()
            await self._wake.wait()
        return []

    async def _read_log(self) -> list[Record]:
        """The next events from the log; when it is all read, go back to live buffering."""
        try:
            batch = self._log.read_after(sorted(self.topic_ids), self._tail, READ_EVENTS, READ_BYTES)
        except StoreError as err:
            log.warning("a lagging subscriber could not read the event log, retrying: %s", err)
            await asyncio.sleep(READ_RETRY)
            return []
        if batch:
            self._tail = batch[-1].rlid
        else:
            self._lagging = False  # caught up: offer() buffers again from here
        return batch

    def close(self) -> None:
        self.closed = True
        self._wake.set()


class SubscriptionRegistry:
    """All open subscriptions of the server, and the turns they take to write."""

    def __init__(
        self, log_: EventLog, buffer_events: int = BUFFER_EVENTS, buffer_bytes: int = BUFFER_BYTES
    ) -> None:
        self._log = log_
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._subscriptions: set[Subscription] = set()
        self.tail = log_.last_rlid()
        self.turns = WriteTurns()

    def register(self, topic_ids: Iterable[bytes]) -> Subscription:
        """Open a subscription at the live tail; call before telling the client it is ready."""
        subscription = Subscription(topic_ids, self.tail, self._log, self._buffer_events, self._buffer_bytes)
        self._subscriptions.add(subscription)
        return subscription

    def unregister(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscriptions.discard(subscription)

    def publish(self, records: list[Record]) -> None:
        """Hand a committed batch to every subscription."""
        if not records:
            return
        self.tail = records[-1].rlid
        size = sum(len(record.wrapper) for record in records)
        for subscription in self._subscriptions:
            subscription.offer(records, size)

    def __len__(self) -> int:
        return len(self._subscriptions)
