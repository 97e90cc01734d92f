"""The data directory's files: how the server opens them, and how their failures read.

Everything in a data directory belongs to its owner alone: the directory is 0700 and
every file 0600 (API key hashes and event data live there). SQLite gives a
database's ``-wal`` and ``-shm`` files the mode of the database, so creating the
database file 0600 before SQLite opens it covers them too.

A failed SQLite call raises ``StoreError`` with one line that names the file and the
cause in plain words, SQLite's own text in brackets; ``StoreBusy`` when another
process holds the write lock, which is worth retrying.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

_RESTORE = "restore it from a backup, or move the data directory aside to start afresh"
_OWNER = "run the server as the data directory's owner, or give it another --data-dir"

# SQLite's (and the system's) messages: what each means, and what to do about it.
_CAUSES = {
    "database or disk is full": ("the disk is full", "free some space"),
    "no space left on device": ("the disk is full", "free some space"),
    "attempt to write a readonly database": ("the file or its disk is read-only", _OWNER),
    "read-only file system": ("its disk is read-only", "give the server a writable --data-dir"),
    "file is not a database": ("it is not a SQLite database", _RESTORE),
    "database disk image is malformed": ("it is damaged", _RESTORE),
    "database is locked": ("another process holds its write lock", "stop the other process"),
    "unable to open database file": ("it cannot be opened", _OWNER),
    "disk i/o error": ("the disk reported an I/O error", "check the disk"),
    "permission denied": ("this user may not read or write it", _OWNER),
    "operation not permitted": ("this user may not change it", _OWNER),
}


class StoreError(Exception):
    """A data-directory file cannot do what was asked; the message says which and why.

    ``advice`` says what a person can do about it, where there is something to do.
    """

    def __init__(self, message: str, advice: str = "") -> None:
        super().__init__(message)
        self.advice = advice


class StoreBusy(StoreError):
    """Another process holds the file's write lock: the same call may work a moment later."""


class StoreConflict(Exception):
    """Another process committed to a shared log first: take in what it wrote, then build the batch again.

    Not a StoreError: nothing is wrong with the store, and nothing is nacked.
    """


def explain(path: Path, err: sqlite3.Error | OSError) -> tuple[str, str]:
    """``(what went wrong, what to do)`` for an error on ``path``, SQLite's or the system's own text kept."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    cause, advice = _CAUSES.get(text.lower(), (text, ""))
    if text.lower() == "disk i/o error" and _disk_is_full(path):
        # SQLite reports a -shm file it could not grow on a full disk as an I/O error.
        cause, advice = _CAUSES["database or disk is full"]
    return (f"{cause} ({text})" if cause != text else text), advice


def store_error(path: Path, err: sqlite3.Error | OSError) -> StoreError:
    """A StoreError (StoreBusy for a lock) naming ``path`` and the cause of ``err``."""
    detail, advice = explain(path, err)
    error_class = StoreBusy if str(err) == "database is locked" else StoreError
    return error_class(f"{path.name}: {detail}", advice)


def _disk_is_full(path: Path) -> bool:
    """True if the file system holding ``path`` has no space left."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except OSError:
        return False


def make_private_dir(path: Path) -> None:
    """Create ``path`` if needed and make it, and every file directly in it, owner-only."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR)
    for entry in path.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(PRIVATE_FILE)


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file is left as it is)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE)
    os.close(fd)


def connect(path: Path, sync: str = "full", lock_timeout: float = 0.0) -> sqlite3.Connection:
    """Open a SQLite database in WAL mode, creating it owner-only; raise StoreError if unusable.

    ``lock_timeout`` is how long a write waits for another process's lock before
    failing with StoreBusy; the default, no wait, is for connections used on the
    event loop, which must never block. ``sync="full"`` fsyncs every commit (it
    survives power loss); ``"normal"`` fsyncs only at checkpoints (it survives the
    process being killed, not the machine losing power).
    """
    path = Path(path)
    try:
        create_private_file(path)
        db = sqlite3.connect(path, timeout=lock_timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    except (sqlite3.Error, OSError) as err:
        raise store_error(path, err) from None
    return db


def write_transaction(db: sqlite3.Connection, path: Path, statements) -> None:
    """Run ``statements(db)`` in one transaction; roll back and raise StoreError on failure.

    When COMMIT itself fails (a full disk, say), SQLite has already rolled back; a
    second ROLLBACK would fail too and hide the real cause, so it is only issued
    while a transaction is still open.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        statements(db)
        db.execute("COMMIT")
    except sqlite3.Error as err:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise store_error(path, err) from None
