"""Group commit: turns published events into stored records, then acks them.

Publish streams hand their events to one ``Committer``. It takes everything that
has arrived since its last write, gives each event its RLID and topic offset,
writes the whole batch to the event log in one transaction and only then queues
each stream's acks and hands the batch to the live subscriptions.

The write runs on the event loop itself. A commit of a few milliseconds' worth of
events takes about a millisecond, and handing it to a thread was measured to cost
more CPU (thread wake-ups and contention for the interpreter lock) than it saved.
It never waits on the loop for another process's lock: a locked event log is
retried with ``asyncio.sleep`` for up to ``LOCK_TIMEOUT``, and then the batch is
nacked with a message that says so.

Nacks travel through the same queue, so every stream gets its replies in the
order it sent its events.

Commits start at most every ``MIN_COMMIT_INTERVAL`` seconds: a trickle of events
is still written one at a time, at once, but a steady stream is written a few
milliseconds' worth at a time, which keeps the server's CPU cost per event (and
so its share of a 2-core machine) low. The policy is the same whatever the event
log, so the in-memory log measures exactly what storing on disk costs.

While the event log cannot be written (a full or read-only disk, a lock held too
long), ``problem`` says why, and the server's ``Status`` is not HEALTHY; the
committer probes the log every ``PROBE_INTERVAL`` and clears ``problem`` as soon
as a write succeeds again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from pyensign.api.v1beta1 import ensign_pb2

from . import wire
from .eventlog import EventLog, Record
from .ids import RLIDSequence
from .storage import StoreBusy, StoreError
from .subscriptions import SubscriptionRegistry

log = logging.getLogger("local_ensign.committer")

MIN_COMMIT_INTERVAL = 0.005
LOCK_TIMEOUT = 2.0
PROBE_INTERVAL = 1.0

Outbox = asyncio.Queue  # a publish stream's queue of replies to send (protobuf messages or bytes)


@dataclass(slots=True)
class PendingEvent:
    outbox: Outbox
    local_id: bytes
    topic_id: bytes
    event: bytes
    publisher: bytes  # the stream's encoded Publisher message


@dataclass(slots=True)
class PendingReply:
    outbox: Outbox
    reply: ensign_pb2.PublisherReply | None  # None ends the stream


@dataclass(slots=True)
class PendingDestroy:
    """Remove a topic's events once everything queued before this is committed."""

    topic_id: bytes
    done: asyncio.Future


class Committer:
    """Batches events into event-log transactions and acks them once written."""

    def __init__(self, log_: EventLog, registry: SubscriptionRegistry) -> None:
        self._log = log_
        self._registry = registry
        self._queue: asyncio.Queue[PendingEvent | PendingReply | PendingDestroy] = asyncio.Queue()
        self._rlids = RLIDSequence(log_.last_rlid())
        self._offsets = {topic_id: stats.events for topic_id, stats in log_.topic_stats().items()}
        self.committed = 0
        self.problem: str | None = None

    def offset(self, topic_id: bytes) -> int:
        """How many events of this topic are committed."""
        return self._offsets.get(topic_id, 0)

    def submit(self, item: PendingEvent | PendingReply) -> None:
        """Queue an event to store, or a reply to send in its turn."""
        self._queue.put_nowait(item)

    async def destroy_topic(self, topic_id: bytes) -> None:
        """Remove a topic's events and group positions, after any of its events already queued.

        Publishes to the topic are refused before this is called, so nothing of it
        can be committed afterwards. Raises StoreError if the log cannot do it.
        """
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingDestroy(topic_id, done))
        await done

    async def run(self) -> None:
        """Commit batches until cancelled; probe the log while it cannot be written."""
        loop = asyncio.get_running_loop()
        last_start = 0.0
        while True:
            if self.problem is None:
                first = await self._queue.get()
            else:
                try:
                    first = await asyncio.wait_for(self._queue.get(), PROBE_INTERVAL)
                except TimeoutError:
                    self._probe()
                    continue
            batch = [first]
            wait = last_start + MIN_COMMIT_INTERVAL - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last_start = loop.time()
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[PendingEvent | PendingReply | PendingDestroy]) -> None:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        committed = stamp.SerializeToString()  # once per commit, reused for every event in it
        records: list[Record] = []
        offsets = dict(self._offsets)
        for item in batch:
            if isinstance(item, PendingEvent):
                offset = offsets.get(item.topic_id, 0) + 1
                offsets[item.topic_id] = offset
                rlid = self._rlids.next()
                wrapper = wire.stored_wrapper(
                    rlid, item.topic_id, offset, item.publisher, item.event, committed
                )
                records.append(Record(item.topic_id, rlid, wrapper))
        error = await self._write(records)
        if error is None:
            self._offsets = offsets
            self.committed += len(records)
        for item in batch:
            if isinstance(item, PendingDestroy):
                self._destroy(item)
            elif isinstance(item, PendingReply):
                item.outbox.put_nowait(item.reply)
            elif error is None:
                item.outbox.put_nowait(wire.ack_reply(item.local_id, committed))
            else:
                nack = ensign_pb2.Nack(id=item.local_id, code=ensign_pb2.Nack.Code.INTERNAL, error=error)
                item.outbox.put_nowait(ensign_pb2.PublisherReply(nack=nack))
        if error is None:
            self._registry.publish(records)

    def _destroy(self, item: PendingDestroy) -> None:
        try:
            self._log.destroy_topic(item.topic_id)
        except StoreError as err:
            item.done.set_exception(err)
            return
        self._offsets.pop(item.topic_id, None)
        item.done.set_result(None)

    async def _write(self, records: list[Record]) -> str | None:
        """Append records to the log; return None on success, else the nack's text."""
        if not records:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_TIMEOUT
        pause = 0.005
        while True:
            try:
                self._log.append(records)
            except StoreBusy as err:
                if loop.time() < deadline:
                    self._set_problem(str(err))
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, 0.1)
                    continue
                return self._failed(records, f"{err}, for over {LOCK_TIMEOUT:g} s")
            except StoreError as err:
                return self._failed(records, str(err))
            self._set_problem(None)
            return None

    def _failed(self, records: list[Record], cause: str) -> str:
        self._set_problem(cause)
        log.error("could not commit %d events: %s", len(records), cause)
        return f"could not store the event: {cause}; nothing was stored, publish it again"

    def _probe(self) -> None:
        try:
            self._log.probe()
        except StoreError as err:
            self._set_problem(str(err))
        else:
            self._set_problem(None)

    def _set_problem(self, problem: str | None) -> None:
        """Record whether the log can be written; log each change of state once."""
        if problem == self.problem:
            return
        if problem is None:
            log.warning("the event log can be written again")
        elif self.problem is None:
            log.warning("the event log cannot be written: %s", problem)
        self.problem = problem
