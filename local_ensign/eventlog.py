"""The event log: committed events per topic, in RLID (commit) order, and consumer-group positions.

``EventLog`` is everything the server asks of a store; the service, the committer
and the subscriptions know nothing else about where events live. Two stores
implement it:

* ``SQLiteEventLog`` — the durable default. One SQLite file in WAL mode; a batch of
  events is one transaction, committed before ``append`` (and so ``commit``) returns, so an acked event
  survives ``kill -9``; with ``sync="full"`` (the default) each commit is also
  fsynced, so it survives power loss too. A write never waits for another
  process's lock (the event loop must not block): it fails with ``StoreBusy`` and
  the committer decides how long to keep trying.
* ``MemoryEventLog`` — the same interface over Python lists, for measuring what
  durability costs (``benchmarks/server_throughput.py``) and for throwaway servers.

A third, ``jetstream_log.JetStreamEventLog``, keeps the log in a NATS JetStream stream
that several server processes share (``shared``): it commits asynchronously and tells
each process of the others' commits (see that module).

Each stored record is the serialized ``EventWrapper`` exactly as it is delivered to
subscribers, so reading never re-encodes anything. Reads go forward from a position
and are bounded in events and in bytes, so a reader never loads more than a few
megabytes at a time however large the topic.
"""

from __future__ import annotations

import bisect
import heapq
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from .ids import ZERO_RLID, RLIDSequence, new_ulid, ulid_to_str
from .storage import connect, store_error, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    topic_id BLOB NOT NULL, rlid BLOB NOT NULL, wrapper BLOB NOT NULL, duplicate_of BLOB,
    PRIMARY KEY (topic_id, rlid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_positions (
    group_id BLOB NOT NULL, topic_id BLOB NOT NULL, rlid BLOB NOT NULL,
    PRIMARY KEY (group_id, topic_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_SAVE_POSITION = "INSERT OR REPLACE INTO group_positions (group_id, topic_id, rlid) VALUES (?, ?, ?)"
READ_LOCK_TIMEOUT = 0.1  # reads in WAL mode wait for nobody, except a moment of crash recovery
READ_SLICE = 64  # rows fetched at a time by read()


class Record(NamedTuple):
    """One committed event: its topic, its RLID, its serialized EventWrapper and what it duplicates.

    ``duplicate_of`` is the RLID of the original when the topic's deduplication
    policy marked this event a duplicate (see ``dedup``): such events are stored but
    not delivered.
    """

    topic_id: bytes
    rlid: bytes
    wrapper: bytes
    duplicate_of: bytes | None = None


@dataclass(frozen=True)
class TopicStats:
    """What a topic's stored events add up to."""

    events: int
    bytes: int  # the stored wrappers' sizes, as Ensign's Info reports them
    last_rlid: bytes
    duplicates: int = 0


GroupPositions = dict[bytes, dict[bytes, bytes]]  # group id -> topic id -> last RLID it is done with


class EventLog(Protocol):
    """Everything the server needs from a store of events."""

    log_id: str  # identifies this log's contents; empty for a log that forgets them
    shared: bool  # whether other processes append to the same log
    events_per_commit: int | None  # the most events one commit may hold (None: no limit)
    record_limit: int | None  # the largest stored record, in bytes (None: the server's own limit)

    def rlids(self) -> RLIDSequence:
        """Where the RLIDs of the next commit's records come from."""

    async def commit(
        self, records: list[Record], positions: GroupPositions | None = None, remarked: list[Record] = ()
    ) -> None:
        """Store a batch of new records and move consumer groups' positions: all or none, durably.

        ``positions`` maps a group's id to the topics whose position moved; storing
        them with the batch costs no extra commit. ``remarked`` are stored records
        whose duplicate mark changed (see ``dedup``): each replaces the stored record
        with its topic and RLID, which must exist.
        """

    def read(self, topic_id: bytes, after: bytes, limit: int, max_bytes: int) -> list[Record]:
        """A topic's records after the RLID ``after``, in order, within ``limit`` and ``max_bytes``.

        At least one record is returned when there is one, however large.
        """

    def last_rlid(self) -> bytes:
        """The highest RLID ever committed (all zeros for an empty log)."""

    def topic_stats(self) -> dict[bytes, TopicStats]:
        """Every topic that has events, with its totals."""

    def group_positions(self, group_id: bytes) -> dict[bytes, bytes]:
        """A consumer group's position (the last RLID it is done with) in each topic it has one for."""

    def save_group_positions(self, group_id: bytes, positions: dict[bytes, bytes]) -> None:
        """Move a consumer group's positions, durably."""

    def destroy_topic(self, topic_id: bytes) -> None:
        """Remove a topic's events and every group's position in it."""

    def probe(self) -> None:
        """Write something small: raise StoreError while the log cannot be written."""

    def close(self) -> None: ...


def read_topics(
    log: EventLog, topic_ids: list[bytes], after: bytes, limit: int, max_bytes: int
) -> list[Record]:
    """The records of several topics after ``after``, merged in RLID order, within the same bounds."""
    runs = [log.read(topic_id, after, limit, max_bytes) for topic_id in topic_ids]
    if len(runs) == 1:
        return runs[0]
    # A run cut short by a bound ends the merge at its last record, so no record of
    # another topic past that point is returned before it.
    ends = [run[-1].rlid for run in runs if run and (len(run) == limit or _size(run) >= max_bytes)]
    horizon = min(ends) if ends else None
    merged = heapq.merge(*runs, key=lambda record: record.rlid)
    return _bounded((r for r in merged if horizon is None or r.rlid <= horizon), max_bytes)[:limit]


class _LocalLog:
    """What the logs kept by this process alone share: one RLID sequence, writes that return at once."""

    shared = False
    events_per_commit: int | None = None
    record_limit: int | None = None
    _rlid_sequence: RLIDSequence

    def rlids(self) -> RLIDSequence:
        return self._rlid_sequence

    async def commit(
        self, records: list[Record], positions: GroupPositions | None = None, remarked: list[Record] = ()
    ) -> None:
        """Write at once (``append``, each log's own), before the loop runs anything else."""
        self.append(records, positions, remarked)  # type: ignore[attr-defined]


class SQLiteEventLog(_LocalLog):
    """Durable event log in ``<data_dir>/events.sqlite3``; raises StoreError when it cannot."""

    FILENAME = "events.sqlite3"

    def __init__(self, data_dir: Path, sync: str = "full") -> None:
        self.path = Path(data_dir) / self.FILENAME
        self._writer = connect(self.path, sync)
        self._reader = connect(self.path, lock_timeout=READ_LOCK_TIMEOUT)
        try:
            self._writer.executescript(_SCHEMA)
            columns = {row[1] for row in self._writer.execute("PRAGMA table_info(events)")}
            if "duplicate_of" not in columns:  # a log made before deduplication
                self._writer.execute("ALTER TABLE events ADD COLUMN duplicate_of BLOB")
        except sqlite3.Error as err:
            self.close()
            raise store_error(self.path, err) from None
        self.log_id = self._meta("log_id") or self._new_log_id()
        self._rlid_sequence = RLIDSequence(self.last_rlid())

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def _new_log_id(self) -> str:
        """Give a log its identity once; a catalog remembers it (see ``Catalog.claim_event_log``)."""
        log_id = ulid_to_str(new_ulid())
        self._write(lambda db: db.execute("INSERT INTO meta (key, value) VALUES ('log_id', ?)", (log_id,)))
        return log_id

    def _write(self, statements) -> None:
        write_transaction(self._writer, self.path, statements)

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a read and fetch its rows (a damaged page can surface while fetching, too)."""
        try:
            return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise store_error(self.path, err) from None

    def append(
        self, records: list[Record], positions: GroupPositions | None = None, remarked: list[Record] = ()
    ) -> None:
        """Write a batch of records, group positions and new marks in one transaction (group commit)."""
        rows = _position_rows(positions or {})

        def insert(db) -> None:
            db.executemany(
                "INSERT INTO events (topic_id, rlid, wrapper, duplicate_of) VALUES (?, ?, ?, ?)", records
            )
            if remarked:
                db.executemany(
                    "UPDATE events SET wrapper = ?, duplicate_of = ? WHERE topic_id = ? AND rlid = ?",
                    [(r.wrapper, r.duplicate_of, r.topic_id, r.rlid) for r in remarked],
                )
            if rows:
                db.executemany(_SAVE_POSITION, rows)

        self._write(insert)

    def read(self, topic_id: bytes, after: bytes, limit: int, max_bytes: int) -> list[Record]:
        # Fetched in slices, so a byte bound reached early does not load the rest of ``limit``.
        query = (
            "SELECT topic_id, rlid, wrapper, duplicate_of FROM events"
            " WHERE topic_id = ? AND rlid > ? ORDER BY rlid LIMIT ?"
        )
        records: list[Record] = []
        size = 0
        while len(records) < limit and size < max_bytes:
            start = records[-1].rlid if records else after
            rows = self._query(query, (topic_id, start, min(READ_SLICE, limit - len(records))))
            for row in rows:
                records.append(Record._make(row))
                size += len(row[2])
                if size >= max_bytes:
                    break
            if len(rows) < READ_SLICE:
                break
        return records

    def last_rlid(self) -> bytes:
        return self._query("SELECT max(rlid) FROM events")[0][0] or ZERO_RLID

    def topic_stats(self) -> dict[bytes, TopicStats]:
        rows = self._query(
            "SELECT topic_id, count(*), sum(length(wrapper)), max(rlid), count(duplicate_of)"
            " FROM events GROUP BY topic_id"
        )
        return {row[0]: TopicStats(*row[1:]) for row in rows}

    def group_positions(self, group_id: bytes) -> dict[bytes, bytes]:
        return dict(self._query("SELECT topic_id, rlid FROM group_positions WHERE group_id = ?", (group_id,)))

    def save_group_positions(self, group_id: bytes, positions: dict[bytes, bytes]) -> None:
        rows = _position_rows({group_id: positions})
        self._write(lambda db: db.executemany(_SAVE_POSITION, rows))

    def destroy_topic(self, topic_id: bytes) -> None:
        def delete(db) -> None:
            db.execute("DELETE FROM events WHERE topic_id = ?", (topic_id,))
            db.execute("DELETE FROM group_positions WHERE topic_id = ?", (topic_id,))

        self._write(delete)

    def probe(self) -> None:
        self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probed', ?)", (str(time.time()),)
            )
        )

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class MemoryEventLog(_LocalLog):
    """Event log held in memory only: lost when the process ends."""

    log_id = ""

    def __init__(self) -> None:
        self._rlid_sequence = RLIDSequence()
        self._rlids: dict[bytes, list[bytes]] = {}
        self._records: dict[bytes, list[Record]] = {}
        self._bytes: dict[bytes, int] = {}
        self._groups: dict[bytes, dict[bytes, bytes]] = {}
        self._last = ZERO_RLID

    def append(
        self, records: list[Record], positions: GroupPositions | None = None, remarked: list[Record] = ()
    ) -> None:
        for record in records:
            self._rlids.setdefault(record.topic_id, []).append(record.rlid)
            self._records.setdefault(record.topic_id, []).append(record)
            self._bytes[record.topic_id] = self._bytes.get(record.topic_id, 0) + len(record.wrapper)
        if records:
            self._last = max(self._last, records[-1].rlid)
        for record in remarked:
            stored = self._records[record.topic_id]
            at = bisect.bisect_left(self._rlids[record.topic_id], record.rlid)
            self._bytes[record.topic_id] += len(record.wrapper) - len(stored[at].wrapper)
            stored[at] = record
        for group_id, moved in (positions or {}).items():
            self.save_group_positions(group_id, moved)

    def read(self, topic_id: bytes, after: bytes, limit: int, max_bytes: int) -> list[Record]:
        start = bisect.bisect_right(self._rlids.get(topic_id, []), after)
        return _bounded(iter(self._records.get(topic_id, [])[start : start + limit]), max_bytes)

    def last_rlid(self) -> bytes:
        return self._last

    def topic_stats(self) -> dict[bytes, TopicStats]:
        return {
            topic_id: TopicStats(
                len(records),
                self._bytes[topic_id],
                records[-1].rlid,
                sum(record.duplicate_of is not None for record in records),
            )
            for topic_id, records in self._records.items()
            if records
        }

    def group_positions(self, group_id: bytes) -> dict[bytes, bytes]:
        return dict(self._groups.get(group_id, {}))

    def save_group_positions(self, group_id: bytes, positions: dict[bytes, bytes]) -> None:
        self._groups.setdefault(group_id, {}).update(positions)

    def destroy_topic(self, topic_id: bytes) -> None:
        self._records.pop(topic_id, None)
        self._rlids.pop(topic_id, None)
        self._bytes.pop(topic_id, None)
        for positions in self._groups.values():
            positions.pop(topic_id, None)

    def probe(self) -> None:
        """Memory can always be written."""

    def close(self) -> None:
        self._records.clear()
        self._rlids.clear()


def _position_rows(positions: GroupPositions) -> list[tuple[bytes, bytes, bytes]]:
    return [(group_id, topic, rlid) for group_id, moved in positions.items() for topic, rlid in moved.items()]


def _bounded(records, max_bytes: int) -> list[Record]:
    """Take records in order until they hold ``max_bytes`` (always at least one)."""
    taken: list[Record] = []
    size = 0
    for record in records:
        taken.append(record)
        size += len(record.wrapper)
        if size >= max_bytes:
            break
    return taken


def _size(run: list[Record]) -> int:
    return sum(len(record.wrapper) for record in run)
