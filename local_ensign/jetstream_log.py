"""The event log in a NATS JetStream stream, shared by every gateway that uses the stream.

One stream, ``<name>-events``, holds every topic's events (subject
``<name>.events.<topic id in hex>``, the stored ``EventWrapper`` as the message) and
the duplicate marks set on events after they were stored (``<name>.marks.<topic>``).
Consumer groups are durable consumers on the stream (``shared_groups``). So a
gateway (a ``local_ensign serve --store jetstream`` process) keeps nothing of its own:
any number of them, on any machines, serve the same log.

How gateways agree, with no coordinator of their own:

* **One order.** A commit is a JetStream *atomic batch* whose first message expects
  the stream's last sequence to be the last one this gateway has seen. If another
  gateway wrote in between, JetStream refuses the whole batch (``StoreConflict``);
  the committer reads what it missed (``catch_up``) and builds the batch again. So
  every gateway assigns offsets, RLIDs and duplicate marks knowing every earlier event.
* **The same ids everywhere.** An event's RLID is the gateway's clock in milliseconds
  (never earlier than the last stored RLID's) and the event's stream sequence (mod
  2**32); it is written into the stored wrapper, so whichever gateway delivers the
  event hands out the same id, and RLIDs of a topic strictly increase.
* **Acked only when stored.** ``commit`` returns once JetStream has stored the batch,
  which with replicas > 1 means a quorum of nodes has. A commit whose answer was lost
  (a node died, the connection broke) is sent again with the same expectation; if
  the first attempt had landed, the batch id at the expected place says so.
* **Everyone hears of everything.** Each gateway follows the stream (``follow``):
  JetStream republishes each stored message's headers to a plain NATS subject, which
  wakes a reader that fetches new messages in order and hands them to the server's
  loop, so subscribers on every gateway get every event, in stream order.

Sizes and counts per topic, and the duplicate marks, are kept in memory: they are
read from the stream once when the gateway starts and kept up to date from then on.
State that lives only in memory here is a cache of the stream, never the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from nats.js.api import RePublish, StorageType, StreamConfig

from . import dedup
from .eventlog import Record, TopicStats
from .ids import RLID_SIZE, ZERO_RLID, RLIDSequence
from .nats_connection import NatsConnection, StoredMessage
from .storage import StoreConflict, StoreError

log = logging.getLogger("local_ensign.jetstream")

MAX_BATCH = 1000  # JetStream's limit on the messages of one atomic batch
EVENTS_PER_COMMIT = MAX_BATCH // 2  # leaves room for as many duplicate marks in the same batch
COMMIT_TIMEOUT = 30.0  # seconds a commit keeps trying (a leader election takes a few) before it fails
RETRY_PAUSE = 0.25  # seconds between looks at the stream for a commit whose answer did not come
LOOKS_PER_ATTEMPT = 8  # looks before an attempt that has not landed is sent again
ANSWER_WAIT = 1.0  # seconds to wait for JetStream's answer to a commit before looking at the stream
SCAN_MESSAGES = 1000  # messages fetched at a time when the stream is read in order
SCAN_BYTES = 8 * 1024 * 1024
READ_TIMEOUT = 15.0  # seconds a read keeps asking while the cluster cannot answer
STALE_WAIT = 2.0  # seconds a read waits for a replica that lags behind what this gateway knows
FEED_POLL = 0.5  # seconds between looks at the stream when no notification arrives
HEADROOM = 1024  # bytes of a message kept for its headers
DUPLICATE_OF = "Ensign-Duplicate-Of"  # header of an event stored as a duplicate: the original's RLID
NO_RESPONDERS = "503"  # NATS's status when nothing listens on a subject (JetStream mid-election)
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when the expected last sequence is not the last
_WRAPPER_ID = b"\x0a\x0a"  # an EventWrapper starts with its 10-byte id (see ``wire.stored_wrapper``)


Deliver = Callable[[list[Record], bool], None]  # records in stream order; True if this gateway wrote them


class JetStreamEventLog:
    """The ``EventLog`` over a JetStream stream and bucket named after ``name``."""

    log_id = ""  # the catalog lives in the same cluster: there is no other file to match
    shared = True  # other processes append to the same log
    events_per_commit = EVENTS_PER_COMMIT

    def __init__(self, connection: NatsConnection, name: str = "local-ensign", replicas: int = 1) -> None:
        self._nats = connection
        self.name = name
        self.stream = events_stream(name)
        self._replicas = replicas
        self.record_limit = connection.max_payload - HEADROOM  # the largest stored event
        connection.call(self._create())
        # Everything below changes only on the server's event loop (or before it runs).
        self._last_seq = 0  # the last stream sequence this gateway has taken into account
        self._last_rlid = ZERO_RLID
        self._stats: dict[bytes, list] = {}  # topic -> [events, bytes, last RLID]
        self._marks: dict[bytes, dict[bytes, bytes | None]] = {}  # topic -> RLID -> original (None: unmarked)
        self._committing = False
        self._held: list[StoredMessage] = []  # fetched by the feed while a commit was under way
        self._deliver: Deliver | None = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._feed: Any = None
        self._scan()

    # Setting up --------------------------------------------------------------------

    async def _create(self) -> None:
        """Create the stream unless it exists; explain what stops it."""
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.name}.events.*", f"{self.name}.marks.*"],
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            allow_atomic=True,
            allow_direct=True,
            republish=RePublish(src=f"{self.name}.>", dest=f"{self.name}-committed.>", headers_only=True),
        )
        await self._nats.create(self._nats.js.add_stream, config)

    def _scan(self) -> None:
        """Read the whole stream once: counts, sizes, marks and where it ends."""
        start = 1
        while True:
            messages = self._nats.call(
                self._nats.get_batch(self.stream, start, f"{self.name}.>", SCAN_MESSAGES, SCAN_BYTES)
            )
            if not messages:
                return
            self._take(messages)
            start = messages[-1].sequence + 1

    # What a stored message means -----------------------------------------------------

    def _subject(self, kind: str, topic_id: bytes) -> str:
        return f"{self.name}.{kind}.{topic_id.hex()}"

    @property
    def nats(self) -> NatsConnection:
        """The connection to the cluster (consumer groups pull through it too)."""
        return self._nats

    def events_subject(self, topic_id: bytes) -> str:
        """The subject a topic's events are stored on."""
        return self._subject("events", topic_id)

    def record_of(self, subject: str, headers: dict[str, str], data: bytes) -> Record:
        """The record a stored event message holds (as a consumer delivers it), with its current mark."""
        topic_id = bytes.fromhex(subject.rsplit(".", 1)[1])
        return self._record(topic_id, StoredMessage(0, subject, headers, data))

    def _take(self, messages: list[StoredMessage]) -> list[Record]:
        """Account for stored messages (in order): their events as records, their marks noted."""
        records = []
        for message in messages:
            kind, topic_hex = message.subject.rsplit(".", 2)[1:]
            topic_id = bytes.fromhex(topic_hex)
            if kind == "events":
                record = self._record(topic_id, message)
                records.append(record)
                stats = self._stats.setdefault(topic_id, [0, 0, ZERO_RLID])
                stats[0] += 1
                stats[1] += len(record.wrapper)
                stats[2] = record.rlid
                if record.duplicate_of is not None:
                    self._marks.setdefault(topic_id, {})[record.rlid] = record.duplicate_of
                self._last_rlid = max(self._last_rlid, record.rlid)
            else:
                rlid, original = message.data[:RLID_SIZE], message.data[RLID_SIZE:] or None
                self._marks.setdefault(topic_id, {})[rlid] = original
            self._last_seq = max(self._last_seq, message.sequence)
        return records

    def _record(self, topic_id: bytes, message: StoredMessage) -> Record:
        """The record a stored event message holds, with its current duplicate mark."""
        wrapper = message.data
        if wrapper[:2] != _WRAPPER_ID:
            raise StoreError(f"message {message.sequence} of {self.stream} is not a stored event")
        rlid = wrapper[2 : 2 + RLID_SIZE]
        stored = message.headers.get(DUPLICATE_OF)
        stored_mark = bytes.fromhex(stored) if stored else None
        record = Record(topic_id, rlid, wrapper, stored_mark)
        marks = self._marks.get(topic_id)
        if marks is not None and rlid in marks and marks[rlid] != stored_mark:
            record = dedup.mark(record, marks[rlid])  # marked again after it was stored
        return record

    # The EventLog interface ------------------------------------------------------------

    def rlids(self) -> RLIDSequence:
        """Where the next commit's RLIDs come from: after the last stored RLID, at the next sequence."""
        return RLIDSequence(self._last_rlid[:6] + (self._last_seq % 2**32).to_bytes(4, "big"))

    async def commit(self, records: list[Record], positions=None, remarked: list[Record] = ()) -> None:
        """Store a batch of new records and new marks as one atomic batch.

        Raises StoreConflict if another gateway committed since this one last looked.
        ``positions`` must be empty: groups here keep theirs in their consumers.
        """
        if positions:
            raise ValueError("groups on a JetStream log keep their positions in their consumers")
        if not records and not remarked:
            return
        messages = [(self._subject("events", r.topic_id), r.wrapper, r.duplicate_of) for r in records]
        messages += [
            (self._subject("marks", r.topic_id), r.rlid + (r.duplicate_of or b""), None) for r in remarked
        ]
        if len(messages) > MAX_BATCH:
            raise ValueError(f"a commit holds at most {MAX_BATCH} events and marks, got {len(messages)}")
        self._committing = True
        own: list[Record] | None = None
        try:
            last = await self._nats.call_async(self._publish(messages, self._last_seq), COMMIT_TIMEOUT + 5)
            stored = [
                StoredMessage(self._last_seq + 1 + i, subject, _headers(mark), data)
                for i, (subject, data, mark) in enumerate(messages)
            ]
            assert stored[-1].sequence == last, (stored[-1].sequence, last)
            own = self._take(stored)
        finally:
            # Whatever the outcome, what the feed fetched meanwhile is taken in now, after our own
            # records: left held, it would be skipped once a later message moved the last sequence.
            self._committing = False
            if own is not None and self._deliver is not None:
                self._deliver(own, True)
            self._release_held()

    async def _publish(self, messages: list[tuple[str, bytes, bytes | None]], base: int) -> int:
        """Send ``messages`` as one atomic batch expected right after ``base``; the last sequence stored.

        An answer that does not come (sent as a node died, or lost on the way; seen after a
        stream leader's death) does not make the outcome unknown: the stream says whether
        one of our attempts landed right after ``base``. Only if none did is the batch sent
        again, with the same expectation, so at most one attempt can ever be stored.
        """
        attempts: set[str] = set()
        deadline = time.monotonic() + COMMIT_TIMEOUT
        while True:
            batch_id = uuid.uuid4().hex
            attempts.add(batch_id)
            reply = await self._send_batch(messages, base, batch_id)
            if reply is None:  # no answer: look at the stream itself
                for _ in range(LOOKS_PER_ATTEMPT):
                    found = await self._after(base, attempts)
                    if found == "ours":
                        return base + len(messages)
                    if found == "another":
                        raise StoreConflict("another gateway committed first")
                    await asyncio.sleep(RETRY_PAUSE)
                if time.monotonic() >= deadline:
                    raise StoreError(f"JetStream confirmed no commit within {COMMIT_TIMEOUT:g} s")
                log.warning(
                    "a commit was not stored after %d s; sending it again", LOOKS_PER_ATTEMPT * RETRY_PAUSE
                )
                continue
            error = reply.get("error")
            if error is None:
                return int(reply["seq"])
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                # Something is stored after ``base``: ours (an attempt whose answer was lost) or
                # another gateway's. A replica that lags may show neither yet: ask until one shows,
                # or our own batch would be taken for another's and stored a second time.
                while (found := await self._after(base, attempts)) == "none":
                    if time.monotonic() >= deadline:
                        raise StoreError("JetStream refused a commit, and no replica shows what is stored")
                    await asyncio.sleep(RETRY_PAUSE)
                if found == "ours":
                    return base + len(messages)
                raise StoreConflict("another gateway committed first")
            if time.monotonic() >= deadline or error.get("code") != 503:
                raise StoreError(f"JetStream refused a commit: {error.get('description', error)}")
            await asyncio.sleep(RETRY_PAUSE)  # no stream leader yet: wait for the election

    async def _send_batch(
        self, messages: list[tuple[str, bytes, bytes | None]], base: int, batch_id: str
    ) -> dict | None:
        """Publish one attempt of an atomic batch; JetStream's answer, or None if none came in time."""
        nc = self._nats.nc
        inbox = nc.new_inbox()
        answer = await nc.subscribe(inbox, max_msgs=1)
        try:
            for number, (subject, data, mark) in enumerate(messages, 1):
                headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number), **_headers(mark)}
                if number == 1:
                    headers["Nats-Expected-Last-Sequence"] = str(base)
                last = number == len(messages)
                if last:
                    headers["Nats-Batch-Commit"] = "1"
                await nc.publish(subject, data, reply=inbox if last else "", headers=headers)
            reply = await answer.next_msg(timeout=ANSWER_WAIT)
        except Exception:  # no answer in time, or the connection broke while sending
            return None
        finally:
            with contextlib.suppress(Exception):  # already gone once its one answer came
                await answer.unsubscribe()
        if (reply.headers or {}).get("Status") == NO_RESPONDERS:  # nothing took it: no stream leader yet
            return {"error": {"code": 503, "description": "no stream leader to take the commit"}}
        return _json(reply.data)

    async def _after(self, base: int, attempts: set[str]) -> str:
        """What is stored right after ``base``: "ours" (one of ``attempts``), "another" batch, or "none"."""
        try:
            messages = await self._nats.get_batch(self.stream, base + 1, f"{self.name}.>", 1, 1)
        except StoreError:
            return "none"
        if not messages or messages[0].sequence != base + 1:
            return "none"
        return "ours" if messages[0].headers.get("Nats-Batch-Id") in attempts else "another"

    def read(self, topic_id: bytes, after: bytes, limit: int, max_bytes: int) -> list[Record]:
        """A topic's records after ``after``, from any replica, waiting for one that lags behind."""
        start = int.from_bytes(after[6:], "big") + 1
        known = self._stats.get(topic_id, [0, 0, ZERO_RLID])[2]
        records: list[Record] = []
        size = 0
        waited_until = time.monotonic() + STALE_WAIT
        while len(records) < limit and size < max_bytes:
            wanted = min(limit - len(records), SCAN_MESSAGES)
            messages = self._read_retrying(start, self._subject("events", topic_id), wanted, max_bytes - size)
            for message in messages:
                record = self._record(topic_id, message)
                records.append(record)
                size += len(record.wrapper)
            if messages:
                start = messages[-1].sequence + 1
            if len(messages) < wanted and size < max_bytes:
                seen = records[-1].rlid if records else after
                if seen >= known or time.monotonic() >= waited_until:
                    break  # everything this gateway knows of (a replica still behind: the caller reads again)
                time.sleep(0.01)
        return records

    def _read_retrying(self, start: int, subject: str, wanted: int, max_bytes: int) -> list[StoredMessage]:
        """A batched direct get, asked again while the cluster cannot answer (a node died, an election)."""
        deadline = time.monotonic() + READ_TIMEOUT
        while True:
            try:
                return self._nats.call(self._nats.get_batch(self.stream, start, subject, wanted, max_bytes))
            except StoreError:
                if time.monotonic() >= deadline:
                    raise
                log.warning("reading the stream failed; asking again")
                time.sleep(RETRY_PAUSE)

    def last_rlid(self) -> bytes:
        return self._last_rlid

    def topic_stats(self) -> dict[bytes, TopicStats]:
        return {
            topic_id: TopicStats(
                events,
                size,
                last,
                sum(original is not None for original in self._marks.get(topic_id, {}).values()),
            )
            for topic_id, (events, size, last) in self._stats.items()
            if events
        }

    def group_positions(self, group_id: bytes) -> dict[bytes, bytes]:
        """None: a group on a shared log keeps its place in its JetStream consumer (``shared_groups``)."""
        return {}

    def save_group_positions(self, group_id: bytes, positions: dict[bytes, bytes]) -> None:
        raise ValueError("groups on a JetStream log keep their positions in their consumers")

    def destroy_topic(self, topic_id: bytes) -> None:
        self._nats.call(self._destroy(topic_id), COMMIT_TIMEOUT)
        self._stats.pop(topic_id, None)
        self._marks.pop(topic_id, None)

    async def _destroy(self, topic_id: bytes) -> None:
        for kind in ("events", "marks"):
            await self._nats.js.purge_stream(self.stream, subject=self._subject(kind, topic_id))

    def probe(self) -> None:
        self._nats.call(self._nats.js.stream_info(self.stream))

    def close(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            self._feed = None

    # Following the stream ----------------------------------------------------------------

    def follow(self, deliver: Deliver) -> None:
        """Hand every later record to ``deliver`` on the calling event loop, in stream order.

        ``deliver(records, own)`` gets this gateway's commits as they complete
        (``own`` True) and other gateways' commits as the feed finds them.
        """
        self._server_loop = asyncio.get_running_loop()
        self._deliver = deliver
        self._feed = self._nats.spawn(self._run_feed(self._last_seq))

    async def catch_up(self) -> None:
        """Take in, and deliver, everything committed since this gateway last looked (after a conflict)."""
        while True:
            messages = await self._nats.call_async(
                self._nats.get_batch(
                    self.stream, self._last_seq + 1, f"{self.name}.>", SCAN_MESSAGES, SCAN_BYTES
                )
            )
            if not messages:
                return
            self._observe(messages)

    def _observe(self, messages: list[StoredMessage]) -> None:
        """On the server's loop: take in messages other gateways stored and deliver their events."""
        if self._committing:
            self._held.extend(messages)  # delivered after the commit's own records, in order
            return
        fresh = [message for message in messages if message.sequence > self._last_seq]
        records = self._take(fresh)
        if records and self._deliver is not None:
            self._deliver(records, False)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        if held:
            self._observe(held)

    async def _run_feed(self, position: int) -> None:
        """On the connection's loop: fetch new messages in order whenever the stream says it has some."""
        wake = asyncio.Event()
        notified = position

        async def on_notice(message) -> None:
            nonlocal notified
            sequence = (message.headers or {}).get("Nats-Sequence")
            notified = max(notified, int(sequence)) if sequence else notified
            wake.set()

        notices = await self._nats.nc.subscribe(f"{self.name}-committed.>", cb=on_notice)
        lagging = 0
        try:
            while True:
                wake.clear()
                try:
                    messages = await self._nats.get_batch(
                        self.stream, position + 1, f"{self.name}.>", SCAN_MESSAGES, SCAN_BYTES
                    )
                except Exception as err:  # NATS unreachable for now: the feed keeps trying
                    log.warning("following the stream: %s", err)
                    await asyncio.sleep(FEED_POLL)
                    continue
                if messages:
                    position, lagging = messages[-1].sequence, 0
                    assert self._server_loop is not None
                    self._server_loop.call_soon_threadsafe(self._observe, messages)
                    continue
                if notified > position and lagging < STALE_WAIT / 0.005:
                    lagging += 1  # told of a message a lagging replica does not have yet
                    await asyncio.sleep(0.005)
                    continue
                lagging = 0
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), FEED_POLL)
        finally:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await notices.unsubscribe()


def events_stream(name: str) -> str:
    """The JetStream stream holding the events of the gateways named ``name``."""
    return f"{name}-events"


def _headers(mark: bytes | None) -> dict[str, str]:
    return {DUPLICATE_OF: mark.hex()} if mark else {}


def _json(data: bytes) -> dict:
    try:
        return json.loads(data)
    except ValueError:
        return {"error": {"description": data.decode(errors="replace")}}
