"""The event log: committed events per topic, in RLID (commit) order.

Two interchangeable implementations share one small interface:

* ``SQLiteEventLog`` — the durable default. One SQLite file in WAL mode; a batch of
  events is one transaction, committed before ``append`` returns, so an acked event
  survives ``kill -9``; with ``sync="full"`` (the default) each commit is also
  fsynced, so it survives power loss too.
* ``MemoryEventLog`` — the same interface over Python lists, for measuring what
  durability costs (``benchmarks/server_throughput.py``) and for throwaway servers.

Each stored record is the serialized ``EventWrapper`` exactly as it is delivered to
subscribers, so reading never re-encodes anything.
"""

from __future__ import annotations

import bisect
import heapq
from pathlib import Path
from typing import NamedTuple, Protocol

from .catalog import connect
from .ids import ZERO_RLID

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    topic_id BLOB NOT NULL, rlid BLOB NOT NULL, wrapper BLOB NOT NULL,
    PRIMARY KEY (topic_id, rlid)
) WITHOUT ROWID;
"""


class Record(NamedTuple):
    """One committed event: its topic, its RLID and its serialized EventWrapper."""

    topic_id: bytes
    rlid: bytes
    wrapper: bytes


class EventLog(Protocol):
    """What the service needs from an event log."""

    def append(self, records: list[Record]) -> None: ...

    def read_after(self, topic_ids: list[bytes], after: bytes, limit: int) -> list[Record]: ...

    def last_rlid(self) -> bytes: ...

    def counts(self) -> dict[bytes, int]: ...

    def close(self) -> None: ...


class SQLiteEventLog:
    """Durable event log in ``<data_dir>/events.sqlite3``."""

    FILENAME = "events.sqlite3"

    def __init__(self, data_dir: Path, sync: str = "full") -> None:
        path = Path(data_dir) / self.FILENAME
        self._writer = connect(path, sync)
        self._writer.executescript(_SCHEMA)
        self._reader = connect(path)

    def append(self, records: list[Record]) -> None:
        """Write a batch of records in one transaction (group commit)."""
        db = self._writer
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO events (topic_id, rlid, wrapper) VALUES (?, ?, ?)", records)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def read_after(self, topic_ids: list[bytes], after: bytes, limit: int) -> list[Record]:
        """Up to ``limit`` records of these topics with an RLID above ``after``, in order."""
        query = (
            "SELECT topic_id, rlid, wrapper FROM events WHERE topic_id = ? AND rlid > ? ORDER BY rlid LIMIT ?"
        )
        runs = [
            [Record(*row) for row in self._reader.execute(query, (topic_id, after, limit))]
            for topic_id in topic_ids
        ]
        return _merge(runs, limit)

    def last_rlid(self) -> bytes:
        """The highest RLID ever committed (all zeros for an empty log)."""
        row = self._reader.execute("SELECT max(rlid) FROM events").fetchone()
        return row[0] or ZERO_RLID

    def counts(self) -> dict[bytes, int]:
        """Number of events per topic id."""
        rows = self._reader.execute("SELECT topic_id, count(*) FROM events GROUP BY topic_id")
        return dict(rows.fetchall())

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


class MemoryEventLog:
    """Event log held in memory only: lost when the process ends."""

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

    def read_after(self, topic_ids: list[bytes], after: bytes, limit: int) -> list[Record]:
        runs = []
        for topic_id in topic_ids:
            start = bisect.bisect_right(self._rlids.get(topic_id, []), after)
            runs.append(self._records.get(topic_id, [])[start : start + limit])
        return _merge(runs, limit)

    def last_rlid(self) -> bytes:
        return self._last

    def counts(self) -> dict[bytes, int]:
        return {topic_id: len(records) for topic_id, records in self._records.items()}

    def close(self) -> None:
        self._records.clear()
        self._rlids.clear()


def _merge(runs: list[list[Record]], limit: int) -> list[Record]:
    """Merge per-topic runs (each in RLID order) into one run of at most ``limit``."""
    if len(runs) == 1:
        return runs[0]
    return list(heapq.merge(*runs, key=lambda record: record.rlid))[:limit]
