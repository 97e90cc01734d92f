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

from . import dedup, wire
from .dedup import Deduplication, TopicIndex
from .eventlog import EventLog, GroupPositions, Record
from .groups import ConsumerGroup
from .ids import rlid_before
from .storage import StoreBusy, StoreConflict, StoreError
from .subscriptions import SubscriptionRegistry

log = logging.getLogger("local_ensign.committer")

MIN_COMMIT_INTERVAL = 0.005
LOCK_TIMEOUT = 2.0
PROBE_INTERVAL = 1.0

Outbox = asyncio.Queue  # a publish stream's queue of replies to send (protobuf messages or bytes)
POSITION_RETRY = 1.0  # seconds before positions that could not be stored are tried again


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
class PendingPositions:
    """Store a consumer group's moved positions with the next commit."""

    group: ConsumerGroup


@dataclass(slots=True)
class PendingPolicy:
    """Mark a topic's stored events by its new deduplication policy, then new events by it too."""

    topic_id: bytes
    policy: Deduplication
    done: asyncio.Future


@dataclass(slots=True)
class PendingDestroy:
    """Remove a topic's events once everything queued before this is committed."""

    topic_id: bytes
    done: asyncio.Future


Pending = PendingEvent | PendingReply | PendingPositions | PendingPolicy | PendingDestroy


class Committer:
    """Batches events into event-log transactions and acks them once written."""

    def __init__(
        self,
        log_: EventLog,
        registry: SubscriptionRegistry,
        policies: dict[bytes, Deduplication] | None = None,
    ) -> None:
        self._log = log_
        self._registry = registry
        self._policies = dict(policies or {})  # topics with a deduplication policy
        self._indexes: dict[bytes, TopicIndex] = {}  # built when a topic with a policy is first published to
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._offsets = {topic_id: stats.events for topic_id, stats in log_.topic_stats().items()}
        self.committed = 0
        self.conflicts = 0  # commits another process beat to a shared log (then numbered again)
        self.problem: str | None = None

    def observe(self, records: list[Record], own: bool) -> None:
        """A shared log's commits, in its order: hand them to subscribers; learn of other processes'.

        Another process's events move the topics' offsets, and each goes into its topic's
        deduplication index as it went into the writer's (same policy, same order, so the
        same outcome; the marks the writer set are in the log already).
        """
        if not own:
            for record in records:
                self._offsets[record.topic_id] = self._offsets.get(record.topic_id, 0) + 1
                if (index := self._indexes.get(record.topic_id)) is not None:
                    index.add(record.rlid, dedup.event_bytes(record))
        self._registry.publish(records)

    def offset(self, topic_id: bytes) -> int:
        """How many events of this topic are committed."""
        return self._offsets.get(topic_id, 0)

    def submit(self, item: PendingEvent | PendingReply) -> None:
        """Queue an event to store, or a reply to send in its turn."""
        self._queue.put_nowait(item)

    def save_positions(self, group: ConsumerGroup) -> None:
        """Store the group's moved positions with the next commit (a group asks once until then)."""
        self._queue.put_nowait(PendingPositions(group))

    async def apply_policy(self, topic_id: bytes, policy: Deduplication) -> None:
        """Mark the topic's stored events by ``policy`` and use it for every later event.

        Runs after everything queued before it is committed. Raises StoreError if
        the marks cannot be written (the old policy stays in force).
        """
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingPolicy(topic_id, dedup.normalize(policy), done))
        await done

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
            room = self._log.events_per_commit or float("inf")
            room -= isinstance(first, PendingEvent)
            while room > 0 and not self._queue.empty():
                item = self._queue.get_nowait()
                batch.append(item)
                room -= isinstance(item, PendingEvent)
            try:
                await self._commit(batch)
            except BaseException as err:
                # A bug: fail whatever waits on this batch, and stop (the server then shuts down).
                for item in batch:
                    if isinstance(item, PendingPolicy | PendingDestroy) and not item.done.done():
                        item.done.set_exception(err)
                raise

    async def _commit(self, batch: list[Pending]) -> None:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        committed = stamp.SerializeToString()  # once per commit, reused for every event in it
        positions: GroupPositions = {}
        for item in batch:
            if isinstance(item, PendingPositions) and (moved := item.group.positions_to_save()):
                positions.setdefault(item.group.group_id, {}).update(moved)
        while True:
            offsets = dict(self._offsets)
            remarked: dict[bytes, Record] = {}  # stored records whose duplicate mark changes
            try:
                records = await self._records(batch, committed, offsets, remarked)
            except StoreError as err:  # the log could not be read to deduplicate
                records, error = [], self._failed([], {}, f"could not read the log to find duplicates: {err}")
                break
            try:
                error = await self._write(records, positions, list(remarked.values()))
            except StoreConflict:
                # Another process committed first: take in what it wrote, then number the batch again.
                self.conflicts += 1
                for record in records:
                    self._indexes.pop(record.topic_id, None)
                positions = {}  # stored already: positions go first
                try:
                    await self._log.catch_up()
                except StoreError as err:
                    error = self._failed(records, {}, str(err))
                    break
                continue
            break
        if error is None:
            self._offsets = offsets
            self.committed += len(records)
        else:
            # Indexes now name events that were not stored: rebuild them from the log when next needed.
            for item in batch:
                if isinstance(item, PendingEvent):
                    self._indexes.pop(item.topic_id, None)
        for item in batch:
            if isinstance(item, PendingDestroy):
                self._destroy(item)
            elif isinstance(item, PendingPolicy):
                await self._apply(item)
            elif isinstance(item, PendingPositions):
                if error is not None and (moved := positions.pop(item.group.group_id, None)):
                    asyncio.get_running_loop().call_later(POSITION_RETRY, item.group.save_failed, moved)
            elif isinstance(item, PendingReply):
                item.outbox.put_nowait(item.reply)
            elif error is None:
                item.outbox.put_nowait(wire.ack_reply(item.local_id, committed))
            else:
                nack = ensign_pb2.Nack(id=item.local_id, code=ensign_pb2.Nack.Code.INTERNAL, error=error)
                item.outbox.put_nowait(ensign_pb2.PublisherReply(nack=nack))
        if error is None and not self._log.shared:  # a shared log hands every commit to ``observe``
            self._registry.publish(records)

    async def _records(
        self, batch: list[Pending], committed: bytes, offsets: dict[bytes, int], remarked: dict[bytes, Record]
    ) -> list[Record]:
        """The batch's events as records to store, each with its RLID and offset, marked by any policy."""
        records: list[Record] = []
        at: dict[bytes, int] = {}  # RLID -> place in ``records``, for topics with a policy
        rlids = self._log.rlids()
        for item in batch:
            if isinstance(item, PendingEvent):
                offset = offsets.get(item.topic_id, 0) + 1
                offsets[item.topic_id] = offset
                rlid = rlids.next()
                wrapper = wire.stored_wrapper(
                    rlid, item.topic_id, offset, item.publisher, item.event, committed
                )
                records.append(Record(item.topic_id, rlid, wrapper))
                if item.topic_id in self._policies:
                    at[rlid] = len(records) - 1
                    await self._deduplicate(records, at, item.event, remarked)
        return records

    async def _deduplicate(
        self, records: list[Record], at: dict[bytes, int], event: bytes, remarked: dict[bytes, Record]
    ) -> None:
        """Mark the batch's last record, or the earlier copy it replaces, by its topic's policy."""
        record = records[-1]
        index = self._indexes.get(record.topic_id)
        if index is None:  # first use since start: index what is stored (and repair any stale mark)
            index = await dedup.rehash(
                self._log, record.topic_id, self._policies[record.topic_id], self._remark
            )
            self._indexes[record.topic_id] = index
        duplicate_of, replaced = index.add(record.rlid, event)
        if duplicate_of is not None:
            records[-1] = dedup.mark(record, duplicate_of)
        elif replaced is not None:
            if replaced in at:
                records[at[replaced]] = dedup.mark(records[at[replaced]], record.rlid)
            elif (earlier := remarked.get(replaced) or self._stored(record.topic_id, replaced)) is not None:
                remarked[replaced] = dedup.mark(earlier, record.rlid)

    def _stored(self, topic_id: bytes, rlid: bytes) -> Record | None:
        """The stored record with this RLID, or None."""
        found = self._log.read(topic_id, rlid_before(rlid), 1, 1)
        return found[0] if found and found[0].rlid == rlid else None

    async def _remark(self, records: list[Record]) -> None:
        """Store new duplicate marks of stored records; raise StoreError if they cannot be."""
        if error := await self._write([], {}, records):
            raise StoreError(error)

    async def _apply(self, item: PendingPolicy) -> None:
        """Rehash a topic's stored events under its new policy, then use it for new events."""
        self._indexes.pop(item.topic_id, None)
        try:
            index = await dedup.rehash(self._log, item.topic_id, item.policy, self._remark)
        except StoreError as err:
            if not item.done.done():
                item.done.set_exception(err)
            return
        if item.policy.strategy == dedup.Strategy.NONE:
            self._policies.pop(item.topic_id, None)
        else:
            self._policies[item.topic_id] = item.policy
            self._indexes[item.topic_id] = index
        if not item.done.done():
            item.done.set_result(None)

    def _destroy(self, item: PendingDestroy) -> None:
        try:
            self._log.destroy_topic(item.topic_id)
        except StoreError as err:
            if not item.done.done():
                item.done.set_exception(err)
            return
        self._offsets.pop(item.topic_id, None)
        self._policies.pop(item.topic_id, None)
        self._indexes.pop(item.topic_id, None)
        if not item.done.done():
            item.done.set_result(None)

    async def _write(
        self, records: list[Record], positions: GroupPositions, remarked: list[Record] = ()
    ) -> str | None:
        """Append records, group positions and new marks to the log; None on success, else the nack's text."""
        if not records and not positions and not remarked:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_TIMEOUT
        pause = 0.005
        while True:
            try:
                await self._log.commit(records, positions, remarked)
            except StoreBusy as err:
                if loop.time() < deadline:
                    self._set_problem(str(err))
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, 0.1)
                    continue
                return self._failed(records, positions, f"{err}, for over {LOCK_TIMEOUT:g} s")
            except StoreError as err:
                return self._failed(records, positions, str(err))
            self._set_problem(None)
            return None

    def _failed(self, records: list[Record], positions: GroupPositions, cause: str) -> str:
        self._set_problem(cause)
        moved = len(positions)
        log.error("could not commit %d events (and %d groups' positions): %s", len(records), moved, cause)
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
