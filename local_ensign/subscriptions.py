"""Subscriptions: every committed event goes to every matching subscription.

A subscription starts at the tail of the log (the last committed RLID when it was
registered), or, for a consumer group, at its position in the log, and then receives
each later event of its topics in commit order.

Fast subscribers are fed from memory: the committer hands each new batch to
``offer``. A subscriber that falls behind by more than ``BUFFER_EVENTS`` events or
``BUFFER_BYTES`` bytes (a stalled notebook, say) stops buffering and, once its
buffer is drained, catches up by reading the event log after the last event it
buffered, ``READ_BYTES`` at a time. So it never holds up a publisher or another
subscriber, never costs more than a few megabytes, and never loses an event.

Writing to subscribers shares the server with publishing. While events are being
published to many subscriptions, they write only in the first 2 ms of every 10 ms
(``WriteTurns``), so two hundred subscribers cannot crowd out the publishers; what
they could not be sent live, they read from the log afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable

from .eventlog import EventLog, Record, read_topics
from .storage import StoreError

log = logging.getLogger("local_ensign.subscriptions")

BUFFER_EVENTS = 10_000
BUFFER_BYTES = 4 * 1024 * 1024
READ_EVENTS = 500
READ_BYTES = 1024 * 1024
READ_RETRY = 0.5  # seconds before reading the log again after it failed
DELIVERY_WINDOW = 0.010  # seconds; see WriteTurns
DELIVERY_SHARE = 0.2
FAN_OUT_ALLOWANCE = 8  # subscriptions a commit may reach before their writes are paced


class WriteTurns:
    """While events are published to many subscribers, their writes start only in part of each window.

    Every write to a subscriber costs the server about as much CPU as a quarter of a
    published event, so two hundred subscribers reading every event would leave
    publishers a sliver of the process. While commits keep coming and each reaches
    more than ``FAN_OUT_ALLOWANCE`` subscriptions, a subscription may start a write
    only in the first ``share`` of every ``window`` seconds and waits for the next
    window otherwise; the rest of the time belongs to publishing. A few subscribers,
    or nothing being published, and writes go out at once. A subscriber that falls
    behind this way reads the rest from the log, so it loses nothing.
    """

    def __init__(self, window: float = DELIVERY_WINDOW, share: float = DELIVERY_SHARE) -> None:
        self._window = window
        self._open = window * share
        self._last_commit = float("-inf")
        self._to_wake: set[asyncio.Event] = set()
        self._wake_scheduled = False

    def committed(self, fan_out: int) -> None:
        """Note that a batch was just committed for ``fan_out`` subscriptions."""
        if fan_out > FAN_OUT_ALLOWANCE:
            self._last_commit = asyncio.get_running_loop().time()

    def _wait(self) -> float:
        """Seconds until subscribers may write (0 when they may write now)."""
        now = asyncio.get_running_loop().time()
        if now - self._last_commit > self._window:
            return 0.0
        phase = now % self._window
        return 0.0 if phase < self._open else self._window - phase

    async def turn(self) -> None:
        """Return when this caller may write: at once, unless publishers need the time now."""
        if wait := self._wait():
            await asyncio.sleep(wait)

    def wake(self, event: asyncio.Event) -> None:
        """Set ``event`` now, or when writing may start again (one timer for every subscription)."""
        wait = self._wait()
        if not wait:
            event.set()
            return
        self._to_wake.add(event)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            asyncio.get_running_loop().call_later(wait, self._wake_all)

    def _wake_all(self) -> None:
        self._wake_scheduled = False
        to_wake, self._to_wake = self._to_wake, set()
        for event in to_wake:
            event.set()


class Subscription:
    """One subscribe stream's place in the log and the events waiting for it."""

    def __init__(
        self,
        topic_ids: Iterable[bytes],
        tail: bytes,
        log_: EventLog,
        turns: WriteTurns,
        buffer_events: int,
        buffer_bytes: int,
        from_log: bool = False,
    ) -> None:
        self.topic_ids = frozenset(topic_ids)
        self._log = log_
        self._turns = turns
        self._buffer_events = buffer_events
        self._buffer_bytes = buffer_bytes
        self._tail = tail  # RLID of the last event handed out or buffered
        self._buffer: deque[Record] = deque()
        self._buffered_bytes = 0
        self._lagging = from_log  # reading the log until it has caught up with the tail
        self._wake = asyncio.Event()
        self.closed = False

    def offer(self, records: list[Record], size: int, topic_ids: frozenset[bytes]) -> bool:
        """Take newly committed records (called by the committer, in order); True if any were its own.

        ``size`` is their size in bytes and ``topic_ids`` their topics, worked out
        once for every subscription.
        """
        if self._lagging:
            self._turns.wake(self._wake)
            return True
        if topic_ids <= self.topic_ids and records[0].rlid > self._tail:
            fresh = records
        else:
            fresh = [r for r in records if r.topic_id in self.topic_ids and r.rlid > self._tail]
            if not fresh:
                return False
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
        self._turns.wake(self._wake)
        return True

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
            batch = read_topics(self._log, sorted(self.topic_ids), self._tail, READ_EVENTS, READ_BYTES)
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

    def register(self, topic_ids: Iterable[bytes], after: bytes | None = None) -> Subscription:
        """Open a subscription at the live tail, or after the RLID ``after`` (read from the log first).

        Call it before telling the client it is ready.
        """
        subscription = Subscription(
            topic_ids,
            self.tail if after is None else after,
            self._log,
            self.turns,
            self._buffer_events,
            self._buffer_bytes,
            from_log=after is not None,
        )
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
        topic_ids = frozenset(record.topic_id for record in records)
        fan_out = sum(subscription.offer(records, size, topic_ids) for subscription in self._subscriptions)
        self.turns.committed(fan_out)

    def __len__(self) -> int:
        return len(self._subscriptions)
