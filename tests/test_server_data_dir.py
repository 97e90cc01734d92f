"""The data directory: owner-only files, and one-line refusals to start on one the server cannot use.

Everything here runs real servers (``python -m local_ensign serve`` or ``LocalEnsign``)
and the real pyensign client against real files: garbage, truncated, emptied or
missing SQLite files, another user's files and a full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from pyensign.ensign import Ensign

from helpers.streams import json_event
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run
from tests.test_cli import PYTHON, assert_one_line_error, cli

CATALOG = "catalog.sqlite3"
EVENTS = "events.sqlite3"
SIGNING_KEY = "signing.key"
RESTORE = "restore it from a backup"
FREE_SPACE = "free some space"
OWNER = "owner"
# What a stopped server leaves behind; a running one adds server.json and the SQLite -wal/-shm files.
STOPPED_FILES = {CATALOG, EVENTS, SIGNING_KEY, "server.lock", "server.log"}
# The server runs as root without the capabilities that let root ignore file permissions.
PERMISSION_CAPABILITIES = "-dac_override,-dac_read_search,-fowner"
SERVE_TIMEOUT = 30


# Helpers -------------------------------------------------------------------------------------


def serve_once(data_dir: Path, *, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``serve`` on ``data_dir`` through the command line and return how it ended.

    Its standard input is closed from the start and it is told to stop when that
    happens, so a server that should have refused but started stops at once: the
    test then fails on its exit status instead of hanging. ``prefix`` goes before
    the command (to run it with fewer privileges, say).
    """
    command = [*prefix, *PYTHON, "serve", "--data-dir", str(data_dir), "--port", "0", "--auth-port", "0"]
    return subprocess.run(
        [*command, "--exit-with-parent"], input="", capture_output=True, text=True, timeout=SERVE_TIMEOUT
    )


def mode_of(path: Path) -> int:
    """The permission bits of ``path``."""
    return path.stat().st_mode & 0o777


def assert_owner_only(data_dir: Path, expected: set[str]) -> None:
    """``data_dir`` is 0700, holds at least the ``expected`` files, and every file in it is 0600."""
    assert mode_of(data_dir) == 0o700, oct(mode_of(data_dir))
    present = {entry.name for entry in data_dir.iterdir()}
    assert expected <= present, f"missing: {expected - present}"
    modes = {entry.name: oct(mode_of(entry)) for entry in data_dir.iterdir()}
    assert all(mode == oct(0o600) for mode in modes.values()), modes


async def publish_events(server: LocalEnsign, topic: str, count: int, size: int = 10) -> int:
    """Publish ``count`` JSON events of about ``size`` bytes with the real client; return the acks."""
    client = Ensign(**server.client_kwargs())
    await client.ensure_topic_exists(topic)
    counter = AckCounter()
    for seq in range(count):
        event = json_event({"seq": seq, "text": "x" * size})
        await client.publish(topic, event, on_ack=counter.on_ack, on_nack=counter.on_nack)
    await counter.wait_for(count)
    await client.close()
    assert not counter.nacks, counter.nacks
    return len(counter.acks)


def checkpoint(database: Path) -> None:
    """Fold any write-ahead log back into ``database``, so the file alone holds every page."""
    wal = database.with_name(database.name + "-wal")
    if wal.exists() and wal.stat().st_size:
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert not wal.exists() or wal.stat().st_size == 0


def copy_data_dir(source: Path, target: Path) -> Path:
    """A copy of a stopped server's data directory, for a test to damage."""
    shutil.copytree(source, target)
    return target


def truncate_to_half(path: Path) -> None:
    """Cut ``path`` to half its length, as a crash of the disk or a botched copy might."""
    os.truncate(path, path.stat().st_size // 2)


def fill_disk(mount_point: Path) -> None:
    """Write a file in ``mount_point`` until the file system has no space left."""
    chunk = b"\0" * 4096
    with open(mount_point / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(chunk)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str):
    """A tmpfs of ``size`` mounted at ``mount_point`` (skip if mounting is not permitted)."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("needs mount and umount to make a small disk to fill")
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def without_permission_override() -> tuple[str, ...]:
    """A command prefix that runs root without the power to ignore file permissions.

    Root reads and writes any file, so "another user's files" cannot be shown to root
    as it is. Stripped of CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER, root
    is just another user to files owned by ``nobody``. (Running the server as
    ``nobody`` instead needs an interpreter that ``nobody`` may read, which a Python
    installed under /root is not.)
    """
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the data directory's files to another user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop root's permission override")
    prefix = ("setpriv", f"--bounding-set={PERMISSION_CAPABILITIES}")
    if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv may not drop capabilities here")
    return prefix


def give_to_nobody(*paths: Path) -> None:
    """Make ``nobody`` (uid and gid 65534) the owner of ``paths``."""
    for path in paths:
        os.chown(path, 65534, 65534)


# A data directory whose topics have events -----------------------------------------------------


@pytest.fixture(scope="module")
def used_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped server's data directory: one topic with 2,000 events of about 300 bytes (~1 MB).

    Stopped cleanly, so each SQLite file holds all its pages and none is in a -wal file;
    tests damage copies of it.
    """
    data_dir = tmp_path_factory.mktemp("used") / "data"
    server = LocalEnsign(data_dir).start()
    try:
        assert run(publish_events(server, "reviews", 2_000, size=300)) == 2_000
    finally:
        server.stop()
    for name in (CATALOG, EVENTS):
        checkpoint(data_dir / name)
    assert (data_dir / EVENTS).stat().st_size > 500_000
    return data_dir


# A. Owner-only files ------------------------------------------------------------------------------


def test_a_server_that_stored_events_keeps_its_directory_0700_and_every_file_0600(tmp_path):
    """API key hashes, the signing key and event data must never be readable by other users."""
    server = LocalEnsign(tmp_path / "data").start()
    try:
        assert run(publish_events(server, "reviews", 2)) == 2
        wal_files = {f"{EVENTS}-wal", f"{EVENTS}-shm", f"{CATALOG}-wal", f"{CATALOG}-shm"}
        assert_owner_only(server.data_dir, STOPPED_FILES | {"server.json"} | wal_files)
    finally:
        server.stop()
    assert_owner_only(server.data_dir, STOPPED_FILES)


def test_a_server_narrows_a_data_directory_others_could_read(tmp_path):
    """A directory made by hand (0755, files 0644) is made owner-only when a server starts on it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    for name in ("notes.txt", "server.log"):
        (data_dir / name).write_text("written before the server started\n")
        (data_dir / name).chmod(0o644)
    with LocalEnsign(data_dir):
        assert_owner_only(data_dir, STOPPED_FILES | {"notes.txt"})


def test_keys_create_narrows_an_existing_key_file_to_0600(tmp_path):
    """A key file written over one that others could read is left readable by its owner only."""
    key_file = tmp_path / "key.json"
    key_file.write_text("{}\n")
    key_file.chmod(0o644)
    data_dir = tmp_path / "data"
    result = cli("keys", "create", "--data-dir", str(data_dir), "--project", "p", "--out", str(key_file))
    assert result.returncode == 0, result.stderr
    assert mode_of(key_file) == 0o600
    assert_owner_only(data_dir, {CATALOG})


# B. Refusing a data directory it cannot use --------------------------------------------------------


@pytest.mark.parametrize("name", [EVENTS, CATALOG])
def test_a_file_that_is_not_a_database_is_named_in_one_line(tmp_path, name):
    """Garbage where a SQLite file should be: say which file, and that backups are the way out."""
    (tmp_path / name).write_bytes(b"not a database" * 1000)
    assert_one_line_error(serve_once(tmp_path), name, "not a SQLite database", RESTORE)


@pytest.mark.parametrize("name", [EVENTS, CATALOG])
def test_a_truncated_database_is_named_in_one_line(used_data_dir, tmp_path, name):
    """Half a SQLite file (a failing disk, a copy cut short) is reported as damaged, not served."""
    data_dir = copy_data_dir(used_data_dir, tmp_path / "data")
    truncate_to_half(data_dir / name)
    assert_one_line_error(serve_once(data_dir), name, "it is damaged", RESTORE)


def test_an_emptied_or_deleted_event_log_is_refused_while_the_catalog_has_topics(used_data_dir, tmp_path):
    """Topics whose events file is gone must not be served as if they had no events."""
    emptied = copy_data_dir(used_data_dir, tmp_path / "emptied")
    os.truncate(emptied / EVENTS, 0)
    deleted = copy_data_dir(used_data_dir, tmp_path / "deleted")
    (deleted / EVENTS).unlink()
    for data_dir in (emptied, deleted):
        for leftover in (f"{EVENTS}-wal", f"{EVENTS}-shm"):
            (data_dir / leftover).unlink(missing_ok=True)
        assert_one_line_error(serve_once(data_dir), EVENTS, "events are missing", "from a backup")


def test_restoring_the_event_log_as_advised_lets_the_server_start(used_data_dir, tmp_path):
    """After the refusal, putting the events file back must be enough: nothing the refused start
    left behind (a -wal file, say) may be replayed over the restored file."""
    data_dir = copy_data_dir(used_data_dir, tmp_path / "data")
    os.truncate(data_dir / EVENTS, 0)
    assert_one_line_error(serve_once(data_dir), EVENTS, "events are missing")
    shutil.copyfile(used_data_dir / EVENTS, data_dir / EVENTS)
    result = serve_once(data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("local_ensign ready:")


def test_a_clean_restart_is_not_mistaken_for_a_missing_event_log(used_data_dir, tmp_path):
    """The events-missing check must not refuse the same files after a normal stop."""
    data_dir = copy_data_dir(used_data_dir, tmp_path / "data")
    result = serve_once(data_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("local_ensign ready:")


def test_an_empty_signing_key_is_named_in_one_line(tmp_path):
    """An empty key would let anyone forge tokens: refuse, name the file and say how to renew it."""
    (tmp_path / SIGNING_KEY).write_bytes(b"")
    assert_one_line_error(serve_once(tmp_path), SIGNING_KEY, "is empty", "delete it")


def test_another_users_data_directory_is_refused_in_one_line(used_data_dir, tmp_path):
    """Files the server may not touch: say so and point at their owner."""
    prefix = without_permission_override()
    whole = copy_data_dir(used_data_dir, tmp_path / "whole")
    give_to_nobody(whole, *whole.iterdir())
    assert_one_line_error(serve_once(whole, prefix=prefix), str(whole), OWNER)
    one_file = copy_data_dir(used_data_dir, tmp_path / "one-file")
    give_to_nobody(one_file / CATALOG)
    assert_one_line_error(serve_once(one_file, prefix=prefix), CATALOG, OWNER)


def test_a_full_disk_under_a_new_data_directory_is_named_in_one_line(tmp_path):
    """No room for the first file: say the disk is full, not a SQLite error code."""
    with small_disk(tmp_path / "disk", "64k") as disk:
        fill_disk(disk)
        result = serve_once(disk / "data")
    assert_one_line_error(result, CATALOG, "the disk is full", FREE_SPACE)


def test_a_full_disk_under_an_existing_data_directory_is_named_in_one_line(used_data_dir, tmp_path):
    """A disk that filled up while the server was stopped: opening needs room too, so say it is full."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        copy_data_dir(used_data_dir, disk / "data")
        fill_disk(disk)
        result = serve_once(disk / "data")
    assert_one_line_error(result, CATALOG, "the disk is full", FREE_SPACE)


def test_a_data_directory_on_a_read_only_disk_is_named_in_one_line(used_data_dir, tmp_path):
    """A disk mounted read-only: say so, and what to do (not "run as the owner", which would not help)."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        copy_data_dir(used_data_dir, disk / "data")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        result = serve_once(disk / "data")
    assert_one_line_error(result, "read-only", "writable --data-dir")
