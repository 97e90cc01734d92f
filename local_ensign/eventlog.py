"""The event log: committed events per topic, in RLID (commit) order.

Two interchangeable implementations share one small interface:

* ``SQLiteEventLog`` — the durable default. One SQLite file in WAL mode; a batch of
  events is one transaction, committed before ``append`` returns, so an acked event
  survives ``kill -9``; with ``sync="full"`` (the default) each commit is also
  fsynced, so it survives power loss too. A write never waits for another
  process's lock (the event loop must not block): it fails with ``StoreBusy`` and
  the committer decides how long to keep trying.
* ``MemoryEventLog`` — the same interface over Python lists, for measuring what
  durability costs (``benchmarks/server_throughput.py``) and for throwaway servers.

Each stored record is the serialized ``EventWrapper`` exactly as it is delivered to
subscribers, so reading never re-encodes anything. Reads are bounded in events and
in bytes, so catching a subscriber up never loads more than a few megabytes.
"""

from __future__ import annotations

import bisect
import heapq
import time
from pathlib import Path
from typing import NamedTuple, Protocol

from .ids import ZERO_RLID, new_ulid, ulid_to_str
from .storage import connect, store_error, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    topic_id BLOB NOT NULL, rlid BLOB NOT NULL, wrapper BLOB NOT NULL,
    PRIMARY KEY (topic_id, rlid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

READ_LOCK_TIMEOUT = 0.1  # reads in WAL mode wait for nobody, except a moment of crash recovery


class Record(NamedTuple):
    """One committed event: its topic, its RLID and its serialized EventWrapper."""

    topic_id: bytes
    rlid: bytes
    wrapper: bytes


class EventLog(Protocol):
    """What the service needs from an event log."""

    log_id: str  # identifies this log's contents; empty for a log that forgets them

    def append(self, records: list[Record]) -> None: ...

    def read_after(
        self, topic_ids: list[bytes], after: bytes, limit: int, max_bytes: int
    ) -> list[Record]: ...

    def last_rlid(self) -> bytes: ...

    def counts(self) -> dict[bytes, int]: ...

    def probe(self) -> None: ...

    def close(self) -> None: ...


class SQLiteEventLog:
    """Durable event log in ``<data_dir>/events.sqlite3``; raises StoreError when it cannot."""

    FILENAME = "events.sqlite3"

    def __init__(self, data_dir: Path, sync: str = "full") -> None:
        self.path = Path(data_dir) / self.FILENAME
        self._writer = connect(self.path, sync)
        self._reader = connect(self.path, lock_timeout=READ_LOCK_TIMEOUT)
        try:
            self._writer.executescript(_SCHEMA)
        except Exception:
            self.close()
            raise
        self.log_id = self._meta("log_id") or self._new_log_id()

    def _meta(self, key: str) -> str | None:
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _new_log_id(self) -> str:
        """Give a log its identity once; a catalog remembers it (see ``Catalog.claim_event_log``)."""
        log_id = ulid_to_str(new_ulid())
        self._write(lambda db: db.execute("INSERT INTO meta (key, value) VALUES ('log_id', ?)", (log_id,)))
        return log_id

    def _write(self, statements) -> None:
        write_transaction(self._writer, self.path, statements)

    def _query(self, sql: str, params: tuple = ()):
        try:
            return self._reader.execute(sql, params)
        except Exception as err:
            raise store_error(self.path, err) from None

    def append(self, records: list[Record]) -> None:
        """Write a batch of records in one transaction (group commit)."""
        self._write(
            lambda db: db.executemany(
                "INSERT INTO events (topic_id, rlid, wrapper) VALUES (?, ?, ?)", records
            )
        )

    def read_after(self, topic_ids: list[bytes], after: bytes, limit: int, max_bytes: int) -> list[Record]:
        """Records of these topics with an RLID above ``after``, in order.

        At most ``limit`` records, and no more than ``max_bytes`` of them once the
        first is taken (one record is always returned if there is one).
        """
        query = (
            "SELECT topic_id, rlid, wrapper FROM events WHERE topic_id = ? AND rlid > ? ORDER BY rlid LIMIT ?"
        )
        runs = [
            _bounded(map(Record._make, self._query(query, (topic_id, after, limit))), max_bytes)
            for topic_id in topic_ids
        ]
        return _merge(runs, limit, max_bytes)

    def last_rlid(self) -> bytes:
        """The highest RLID ever committed (all zeros for an empty log)."""
        row = self._query("SELECT max(rlid) FROM events").fetchone()
        return row[0] or ZERO_RLID

    def counts(self) -> dict[bytes, int]:
        """Number of events per topic id."""
        return dict(self._query("SELECT topic_id, count(*) FROM events GROUP BY topic_id").fetchall())

    def probe(self) -> None:
        """Write and commit a few bytes: raises StoreError while the log cannot be written."""
        self._write(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probed', ?)", (str(time.time()),)
            )
        )

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class MemoryEventLog:
    """Event log held in memory only: lost when the process ends."""

    log_id = ""

    def __init__(self) -> None:
        self._rlids: dict[bytes, list[bytes]] = {}
        self._records: dict[bytes, list[Record]] = {}
        self._last = ZERO_RLID

    def append(self, records: list[Record]) -> None:
        for record in records:
            self._rlids.setdefault(record.topic_id, []).append(record.rlid)
            self._records.setdefault(record.topic_id, []).append(record)
        if records:
            self._last = records[-1].rlid

    def read_after(self, topic_ids: list[bytes], after: bytes, limit: int, max_bytes: int) -> list[Record]:
        runs = []
        for topic_id in topic_ids:
            start = bisect.bisect_right(self._rlids.get(topic_id, []), after)
            runs.append(_bounded(iter(self._records.get(topic_id, [])[start : start + limit]), max_bytes))
        return _merge(runs, limit, max_bytes)

    def last_rlid(self) -> bytes:
        return self._last

    def counts(self) -> dict[bytes, int]:
        return {topic_id: len(records) for topic_id, records in self._records.items()}

    def probe(self) -> None:
        """Memory can always be written."""

    def close(self) -> None:
        self._records.clear()
        self._rlids.clear()


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


def _merge(runs: list[list[Record]], limit: int, max_bytes: int) -> list[Record]:
    """Merge per-topic runs (each in RLID order) into one run within ``limit`` and ``max_bytes``.

    A run cut short by the byte bound ends the merge at its last record, so no
    record of another topic past that point is returned before it.
    """
    if len(runs) == 1:
        return runs[0]
    ends = [run[-1].rlid for run in runs if run and (len(run) == limit or _size(run) >= max_bytes)]
    horizon = min(ends) if ends else None
    merged = heapq.merge(*runs, key=lambda record: record.rlid)
    return _bounded((record for record in merged if horizon is None or record.rlid <= horizon), max_bytes)[
        :limit
    ]


def _size(run: list[Record]) -> int:
    return sum(len(record.wrapper) for record in run)
