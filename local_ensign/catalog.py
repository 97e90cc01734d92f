"""The catalog: projects, API keys and topics, kept in one SQLite file.

The gRPC service reads topics from an in-memory copy (topics change rarely and are
looked up on every published event); every change is written through to disk
before it is acknowledged, so topic ids survive restarts. API keys are read from
disk on each authentication, through a connection of their own, so keys created by
another process (the ``keys create`` command) work while the server runs and a
slow write never holds up an authentication.

Writes wait at most ``WRITE_LOCK_TIMEOUT`` for another process's lock; the server
runs them off its event loop. Every failure is a ``StoreError`` naming the cause.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .ids import new_ulid
from .storage import StoreError, connect, store_error, write_transaction

TOPIC_NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")
MAX_TOPIC_NAME = 512
WRITE_LOCK_TIMEOUT = 2.0
# A topic's states, as Ensign names them; PENDING while a new deduplication policy is applied.
READY, READONLY, DELETING, PENDING = "READY", "READONLY", "DELETING", "PENDING"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    id BLOB PRIMARY KEY, org_id BLOB NOT NULL, name TEXT NOT NULL UNIQUE, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    client_id TEXT PRIMARY KEY, key_id BLOB NOT NULL, secret_hash TEXT NOT NULL,
    project_id BLOB NOT NULL REFERENCES projects(id), created REAL NOT NULL, permissions TEXT
);
CREATE TABLE IF NOT EXISTS topics (
    id BLOB PRIMARY KEY, project_id BLOB NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL, created REAL NOT NULL, modified REAL NOT NULL, state TEXT NOT NULL DEFAULT 'READY',
    deduplication BLOB NOT NULL DEFAULT x'', UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class EventLogMismatch(StoreError):
    """The event log is not the one this catalog's topics were stored in."""


class TopicExistsError(Exception):
    """A topic of that name already exists in the project."""


class InvalidTopicName(ValueError):
    """A topic name breaks the naming rule."""


@dataclass(frozen=True)
class Project:
    id: bytes
    org_id: bytes
    name: str


@dataclass(frozen=True)
class ApiKey:
    client_id: str
    key_id: bytes
    secret_hash: str
    project_id: bytes
    org_id: bytes
    permissions: tuple[str, ...] | None = None  # None: every permission (a "full" key)


@dataclass(frozen=True)
class Topic:
    id: bytes
    project_id: bytes
    name: str
    created: float
    modified: float
    state: str = READY  # READY, READONLY (archived), DELETING (being destroyed) or PENDING
    deduplication: bytes = b""  # the policy as ``dedup.stored`` encodes it; empty: none

    @property
    def live(self) -> bool:
        """True unless the topic is being destroyed: it still has a name, events and a place in lists."""
        return self.state != DELETING


def validate_topic_name(name: str) -> None:
    """Raise InvalidTopicName unless ``name`` follows Ensign's topic naming rule."""
    if not name:
        raise InvalidTopicName("topic name is required")
    if len(name) > MAX_TOPIC_NAME:
        raise InvalidTopicName(f"topic name must be at most {MAX_TOPIC_NAME} characters")
    if not TOPIC_NAME_RULE.fullmatch(name):
        raise InvalidTopicName(
            "topic name must start with a letter and contain only letters, digits, '.', '_' or '-'"
        )


class Catalog:
    """Projects, API keys and topics of one data directory."""

    FILENAME = "catalog.sqlite3"

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / self.FILENAME
        self._db = connect(self.path, lock_timeout=WRITE_LOCK_TIMEOUT)
        self._keys_db = connect(self.path, lock_timeout=WRITE_LOCK_TIMEOUT)
        self._lock = threading.Lock()
        self._keys_lock = threading.Lock()
        self._topics: dict[bytes, Topic] = {}
        self._by_name: dict[tuple[bytes, str], Topic] = {}
        try:
            self._db.executescript(_SCHEMA)
            self._add_columns()
            self._reload_topics()
        except sqlite3.Error as err:
            self.close()
            raise store_error(self.path, err) from None

    def close(self) -> None:
        self._keys_db.close()
        self._db.close()

    def _add_columns(self) -> None:
        """Give a catalog made by an earlier version the columns it lacks (with their defaults)."""
        added = (
            ("topics", "state", "TEXT NOT NULL DEFAULT 'READY'"),  # every topic READY
            ("topics", "deduplication", "BLOB NOT NULL DEFAULT x''"),  # no policy
            ("api_keys", "permissions", "TEXT"),  # NULL: every permission, as keys had then
        )
        for table, column, definition in added:
            if column not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")

    def _reload_topics(self) -> None:
        rows = self._db.execute(
            "SELECT id, project_id, name, created, modified, state, deduplication FROM topics"
            " ORDER BY created, id"
        ).fetchall()
        self._topics = {row[0]: Topic(*row) for row in rows}
        self._by_name = {(t.project_id, t.name): t for t in self._topics.values()}

    def claim_event_log(self, log_id: str, log_name: str) -> None:
        """Check that the event log ``log_id`` is the one this catalog's topics were stored in.

        The first log a catalog meets is remembered. Another one later (an events
        file deleted, emptied or swapped) raises EventLogMismatch rather than
        serving topics whose events are silently gone.
        """
        if not log_id:
            return
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'event_log_id'").fetchone()
            if row is None:
                write_transaction(
                    self._db,
                    self.path,
                    lambda db: db.execute(
                        "INSERT INTO meta (key, value) VALUES ('event_log_id', ?)", (log_id,)
                    ),
                )
            elif row[0] != log_id:
                raise EventLogMismatch(
                    f"{log_name} is not the event log this catalog's topics were stored in"
                    " (it is new, emptied or from elsewhere): their events are missing."
                    f" Restore {log_name} from a backup, or move the data directory aside to start afresh"
                )

    # Projects and keys ---------------------------------------------------------------

    def ensure_project(self, name: str) -> Project:
        """Return the project called ``name``, creating it (with a new org) if needed."""
        found: list[tuple] = []

        def find_or_create(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT id, org_id, name FROM projects WHERE name = ?", (name,)).fetchone()
            if row is None:
                row = (new_ulid(), new_ulid(), name)
                db.execute(
                    "INSERT INTO projects (id, org_id, name, created) VALUES (?, ?, ?, ?)",
                    (*row, time.time()),
                )
            found.append(row)

        with self._lock:
            write_transaction(self._db, self.path, find_or_create)
        return Project(*found[0])

    def add_api_key(
        self, client_id: str, secret_hash: str, project: Project, permissions: tuple[str, ...] | None = None
    ) -> None:
        """Store a new API key for ``project``; the secret is stored only as its hash.

        ``permissions`` limits what the key's tokens may do; None grants everything.
        """
        granted = None if permissions is None else " ".join(permissions)
        row = (client_id, new_ulid(), secret_hash, project.id, time.time(), granted)
        with self._lock:
            write_transaction(
                self._db,
                self.path,
                lambda db: db.execute(
                    "INSERT INTO api_keys (client_id, key_id, secret_hash, project_id, created, permissions)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                ),
            )

    def find_api_key(self, client_id: str) -> ApiKey | None:
        """Look an API key up by its client id, reading the file afresh."""
        try:
            with self._keys_lock:
                row = self._keys_db.execute(
                    "SELECT k.client_id, k.key_id, k.secret_hash, k.project_id, p.org_id, k.permissions"
                    " FROM api_keys k JOIN projects p ON p.id = k.project_id WHERE k.client_id = ?",
                    (client_id,),
                ).fetchone()
        except sqlite3.Error as err:
            raise store_error(self.path, err) from None
        if row is None:
            return None
        granted = row[5]
        return ApiKey(*row[:5], permissions=None if granted is None else tuple(granted.split()))

    # Topics -------------------------------------------------------------------------

    def create_topic(self, project_id: bytes, name: str, deduplication: bytes = b"") -> Topic:
        """Create a topic, durably, and return it; the name must be new in the project."""
        validate_topic_name(name)
        with self._lock:
            if (project_id, name) in self._by_name:
                raise TopicExistsError(f"topic {name!r} already exists")
            now = time.time()
            topic = Topic(new_ulid(), project_id, name, now, now, READY, deduplication)
            try:
                write_transaction(
                    self._db,
                    self.path,
                    lambda db: db.execute(
                        "INSERT INTO topics (id, project_id, name, created, modified, deduplication)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            topic.id,
                            topic.project_id,
                            topic.name,
                            topic.created,
                            topic.modified,
                            deduplication,
                        ),
                    ),
                )
            except StoreError as err:
                if "UNIQUE constraint failed" not in str(err):
                    raise
                # Created meanwhile by another process sharing the data directory.
                self._reload_topics()
                raise TopicExistsError(f"topic {name!r} already exists") from None
            self._topics[topic.id] = topic
            self._by_name[(project_id, name)] = topic
        return topic

    def set_state(self, topic_id: bytes, state: str, only_from: str | None = None) -> Topic | None:
        """Move a topic to ``state`` (READONLY to archive it, DELETING before destroying it), durably.

        With ``only_from``, only a topic in that state moves; None if it was not.
        """
        return self._change_topic(topic_id, only_from, state=state)

    def set_deduplication(self, topic_id: bytes, policy: bytes, state: str) -> Topic | None:
        """Store a topic's deduplication policy (as ``dedup.stored`` encodes it) and its state, durably."""
        return self._change_topic(topic_id, None, deduplication=policy, state=state)

    def _change_topic(self, topic_id: bytes, only_from: str | None, **changes) -> Topic | None:
        """Write new values of a topic's columns (and its modification time), then remember them."""
        with self._lock:
            topic = self._topics.get(topic_id)
            if topic is None or (only_from is not None and topic.state != only_from):
                return None
            changed = replace(topic, **changes, modified=time.time())
            columns = ", ".join(f"{column} = ?" for column in changes)
            values = (*changes.values(), changed.modified, topic_id)
            write_transaction(
                self._db,
                self.path,
                lambda db: db.execute(f"UPDATE topics SET {columns}, modified = ? WHERE id = ?", values),
            )
            self._topics[topic_id] = changed
            self._by_name[(topic.project_id, topic.name)] = changed
        return changed

    def remove_topic(self, topic_id: bytes) -> None:
        """Forget a topic once its events are gone: its name can be used again."""
        with self._lock:
            write_transaction(
                self._db, self.path, lambda db: db.execute("DELETE FROM topics WHERE id = ?", (topic_id,))
            )
            topic = self._topics.pop(topic_id, None)
            if topic is not None:
                self._by_name.pop((topic.project_id, topic.name), None)

    def in_state(self, state: str) -> list[Topic]:
        """Every project's topics in ``state`` (DELETING, PENDING: work a stopped server left undone)."""
        return [t for t in self._topics.values() if t.state == state]

    def all_topics(self) -> list[Topic]:
        """Every project's topics, those being destroyed too."""
        return list(self._topics.values())

    def topic(self, topic_id: bytes) -> Topic | None:
        """The topic with this id, or None."""
        return self._topics.get(topic_id)

    def topic_named(self, project_id: bytes, name: str) -> Topic | None:
        """The project's topic called ``name``, or None (a topic being destroyed has no name any more)."""
        topic = self._by_name.get((project_id, name))
        return topic if topic is not None and topic.live else None

    def topics(self, project_id: bytes) -> list[Topic]:
        """The project's topics in creation (id) order, leaving out those being destroyed."""
        return [t for t in self._topics.values() if t.project_id == project_id and t.live]
