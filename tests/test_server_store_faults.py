"""Storage faults: a full disk, a read-only disk, and SQLite files locked by another process.

Each test runs a real server and the real pyensign client against a real fault: a
small tmpfs filled to the last byte, a remount, or a second process holding a
SQLite write lock. The server must name the cause, keep answering ``Status``
quickly (UNHEALTHY while it cannot store events), and recover by itself once the
fault is gone, having stored every acked event exactly once.

The disk tests mount a tmpfs and need root; they skip elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc
from pyensign.ensign import Ensign
from pyensign.exceptions import EnsignRPCError

from helpers.streams import close_client, json_event
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run, stored_records

HEALTHY = ensign_pb2.ServiceState.Status.HEALTHY
UNHEALTHY = ensign_pb2.ServiceState.Status.UNHEALTHY

DISK_SIZE = "3m"
ROOM_LEFT = 300 * 1024  # bytes left free on the small disk before publishing fills it
MAX_FILLING_EVENTS = 20_000
FILLING_BATCH = 50
LOCK_HOLD_SECONDS = 4.0
STATUS_DEADLINE = 1.0  # a locked file used to stall Status for 3.7 s
NEW_CLIENT_DEADLINE = 1.5  # authenticate and make a first call
CREATE_TOPIC_DEADLINE = 3.0
RECOVERY_DEADLINE = 5.0

LOCK_HOLDER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
db.close()
"""


# Faults ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def write_lock_held(
    database: Path, seconds: float = LOCK_HOLD_SECONDS
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holding ``database``'s SQLite write lock for ``seconds``.

    Enters once the lock is held; the process rolls back and exits by itself, and is
    killed on the way out only if a failed test leaves it running.
    """
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCK_HOLDER, str(database), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    try:
        line = await asyncio.wait_for(holder.stdout.readline(), 15)
        assert line.strip() == b"locked", f"the lock holder did not take the lock: {line!r}"
        yield holder
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def wait_for_release(holder: asyncio.subprocess.Process) -> None:
    """Wait (bounded) until the lock holder has rolled back and exited."""
    assert await asyncio.wait_for(holder.wait(), LOCK_HOLD_SECONDS + 10) == 0


def mount(*args: str) -> subprocess.CompletedProcess:
    """Run ``mount`` with ``args``; the result says whether it worked and why not."""
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def free_bytes(path: Path) -> int:
    """Bytes still free on the file system holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def write_filler(filler: Path, size: int | None = None) -> None:
    """Append ``size`` bytes to ``filler`` (or as many as fit when ``size`` is None)."""
    chunk = b"\0" * 4096
    remaining = size if size is not None else 2**62
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while remaining > 0:
            try:
                remaining -= os.write(fd, chunk[: min(len(chunk), remaining)])
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                return
    finally:
        os.close(fd)


# Server and client -------------------------------------------------------------------


async def ask_status_within(endpoint: str, seconds: float = STATUS_DEADLINE) -> int:
    """The server's ``Status`` value; fail the test unless it answers within ``seconds``."""
    started = time.monotonic()
    async with grpc.aio.insecure_channel(endpoint) as channel:
        try:
            state = await ensign_pb2_grpc.EnsignStub(channel).Status(
                ensign_pb2.HealthCheck(), timeout=seconds
            )
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"Status did not answer within {seconds:g} s: {err.code().name} {err.details()}")
    assert time.monotonic() - started < seconds
    return state.status


async def poll_status(endpoint: str, times: int = 5, pause: float = 0.2) -> list[int]:
    """Ask ``Status`` a few times in a row; each must answer within ``STATUS_DEADLINE``."""
    answers = []
    for _ in range(times):
        answers.append(await ask_status_within(endpoint))
        await asyncio.sleep(pause)
    return answers


async def wait_for_status(endpoint: str, wanted: int, timeout: float = RECOVERY_DEADLINE) -> None:
    """Wait until ``Status`` reports ``wanted`` (fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = await ask_status_within(endpoint)
        if seen == wanted:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"Status stayed {seen} for {timeout:g} s, expected {wanted}")


@contextlib.asynccontextmanager
async def connected(server: LocalEnsign) -> AsyncIterator[Ensign]:
    """A pyensign client of ``server``, closed however the test body ends."""
    client = Ensign(**server.client_kwargs())
    try:
        yield client
    finally:
        await close_client(client)


async def first_call_of_a_new_client(server: LocalEnsign, topic: str) -> float:
    """Authenticate a brand-new client and make its first call; return how long both took."""
    async with connected(server) as newcomer:
        started = time.monotonic()
        assert await asyncio.wait_for(newcomer.topic_exists(topic), 15)
        return time.monotonic() - started


class Publisher:
    """One client publishing numbered JSON events to one topic, keeping every event it sent."""

    def __init__(self, client: Ensign, topic: str, padding: int = 0) -> None:
        self.client = client
        self.topic = topic
        self.padding = "x" * padding
        self.counter = AckCounter()
        self.events: list = []

    async def publish(self, count: int = 1) -> None:
        """Publish ``count`` more events (the handlers are fixed by the first publish)."""
        for _ in range(count):
            event = json_event({"seq": len(self.events), "padding": self.padding})
            self.events.append(event)
            await self.client.publish(
                self.topic, event, on_ack=self.counter.on_ack, on_nack=self.counter.on_nack
            )

    async def settle(self, timeout: float = 30.0) -> None:
        """Wait until every event published so far is acked or nacked."""
        await self.counter.wait_for(len(self.events), timeout)

    async def publish_and_settle(self, count: int = 1, timeout: float = 30.0) -> None:
        """Publish ``count`` more events and wait for the server's answer to each."""
        await self.publish(count)
        await self.settle(timeout)

    def acked_seqs(self) -> list[int]:
        """Sequence numbers of the events the server acked, in publishing order."""
        return [seq for seq, event in enumerate(self.events) if event.acked()]

    def nacked_seqs(self) -> list[int]:
        """Sequence numbers of the events the server nacked, in publishing order."""
        return [seq for seq, event in enumerate(self.events) if event.nacked()]


def assert_stored_exactly_the_acked(server: LocalEnsign, topic_id: str, publisher: Publisher) -> None:
    """Every acked event is in the event log once; no nacked event is (read after the server stopped)."""
    stored = [record["data"]["seq"] for record in stored_records(server.data_dir, topic_id)]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert sorted(stored) == publisher.acked_seqs()
    assert not set(stored) & set(publisher.nacked_seqs())


@pytest.fixture
def lone_server(tmp_path: Path) -> Iterator[LocalEnsign]:
    """A server of its own, so a fault cannot leak into another test."""
    server = LocalEnsign(tmp_path / "ensign", project="faults").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A fresh 3 MiB tmpfs (root only), unmounted when the test ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = mount("-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


@pytest.fixture
def server_on_small_disk(small_disk: Path) -> Iterator[LocalEnsign]:
    """A server whose data directory is on ``small_disk`` (stopped before it is unmounted)."""
    server = LocalEnsign(small_disk / "ensign", project="faults").start()
    try:
        yield server
    finally:
        server.stop()


# A full disk -------------------------------------------------------------------------


async def publish_until_nacked(publisher: Publisher, batch: int) -> None:
    """Publish events ``batch`` at a time until the last one is nacked (at most ``MAX_FILLING_EVENTS``)."""
    start = len(publisher.events)
    while len(publisher.events) - start < MAX_FILLING_EVENTS:
        await publisher.publish_and_settle(batch)
        if publisher.events[-1].nacked():
            return
    pytest.fail(f"{len(publisher.events) - start} more events never filled the disk")


def test_a_full_disk_is_named_reported_and_recovered_from(
    server_on_small_disk: LocalEnsign, small_disk: Path
):
    server = server_on_small_disk
    filler = small_disk / "filler"

    async def body() -> tuple[str, Publisher]:
        async with connected(server) as client:
            topic_id = await client.create_topic("filling")
            publisher = Publisher(client, "filling", padding=1000)
            await publisher.publish_and_settle()
            write_filler(filler, free_bytes(small_disk) - ROOM_LEFT)
            await publish_until_nacked(publisher, FILLING_BATCH)
            # Take the last free bytes too, so the catalog cannot grow by a page either. The
            # event log can still reuse the room its failed commit took, so publish single
            # events until even one no longer fits: the next probe of the log is a second away.
            write_filler(filler)
            await publish_until_nacked(publisher, 1)

            for nack in publisher.counter.nacks:
                assert "disk is full" in nack.error and "cannot rollback" not in nack.error, nack.error
            assert await ask_status_within(server.endpoint) == UNHEALTHY

            with pytest.raises(EnsignRPCError) as refused:
                await client.create_topic("overflow")
            assert "disk is full" in refused.value.details, refused.value.details
            assert "Unexpected <class" not in refused.value.details

            filler.unlink()
            await wait_for_status(server.endpoint, HEALTHY)
            nacked_so_far = len(publisher.counter.nacks)
            await publisher.publish_and_settle(3)
            assert len(publisher.counter.nacks) == nacked_so_far, publisher.counter.nacks[-1].error
            assert await client.create_topic("overflow")
        return topic_id, publisher

    topic_id, publisher = run(body(), timeout=120)
    server.stop()
    assert_stored_exactly_the_acked(server, topic_id, publisher)
    assert publisher.events[-1].acked()


# A read-only disk --------------------------------------------------------------------


def test_a_disk_turned_read_only_is_named_reported_and_recovered_from(
    server_on_small_disk: LocalEnsign, small_disk: Path
):
    server = server_on_small_disk

    async def create_topic() -> str:
        async with connected(server) as client:
            return await client.create_topic("read-only")

    async def publish_while_read_only_then_recover() -> Publisher:
        async with connected(server) as client:
            publisher = Publisher(client, "read-only")
            try:
                await publisher.publish_and_settle()
                assert publisher.events[-1].nacked(), "an event was acked on a read-only disk"
                assert "read-only" in publisher.counter.nacks[-1].error, publisher.counter.nacks[-1].error
                assert await ask_status_within(server.endpoint) == UNHEALTHY
            finally:
                assert mount("-o", "remount,rw", str(small_disk)).returncode == 0
            await wait_for_status(server.endpoint, HEALTHY)
            await publisher.publish_and_settle()
            assert publisher.events[-1].acked(), publisher.counter.nacks[-1].error
        return publisher

    topic_id = run(create_topic(), timeout=30)
    remounted = mount("-o", "remount,ro", str(small_disk))
    if remounted.returncode != 0:
        refusal = remounted.stderr.strip().splitlines()[0]
        pytest.skip(
            "Linux refuses to remount a file system read-only while a process holds files on it"
            f" open for writing (the server's SQLite files and log): {refusal}"
        )
    publisher = run(publish_while_read_only_then_recover(), timeout=60)
    server.stop()
    assert_stored_exactly_the_acked(server, topic_id, publisher)


# Locks held by another process -------------------------------------------------------


def test_a_locked_event_log_is_nacked_in_time_and_nothing_else_waits_for_it(lone_server: LocalEnsign):
    server = lone_server

    async def body() -> tuple[str, Publisher]:
        async with connected(server) as client:
            topic_id = await client.create_topic("locked-log")
            publisher = Publisher(client, "locked-log")
            await publisher.publish_and_settle()
            async with write_lock_held(server.data_dir / "events.sqlite3") as holder:
                await publisher.publish()  # its commit meets the lock
                assert UNHEALTHY in await poll_status(server.endpoint)
                assert await first_call_of_a_new_client(server, "locked-log") < NEW_CLIENT_DEADLINE
                await publisher.settle(timeout=LOCK_HOLD_SECONDS + 5)
                assert publisher.events[-1].nacked(), "the event waited for the lock and was acked"
                assert holder.returncode is None, "the nack came only after the lock was released"
                error = publisher.counter.nacks[-1].error
                assert "lock" in error and "events.sqlite3" in error, error

                await wait_for_release(holder)
            await publisher.publish_and_settle()
            assert publisher.events[-1].acked(), publisher.counter.nacks[-1].error
            await wait_for_status(server.endpoint, HEALTHY)
        return topic_id, publisher

    topic_id, publisher = run(body(), timeout=60)
    server.stop()
    assert publisher.acked_seqs() == [0, 2]
    assert_stored_exactly_the_acked(server, topic_id, publisher)


async def create_topic_timed(client: Ensign, name: str) -> tuple[float, BaseException | str]:
    """Create a topic; return how long it took and the new id, or the error raised."""
    started = time.monotonic()
    try:
        outcome: BaseException | str = await client.create_topic(name)
    except EnsignRPCError as err:
        outcome = err
    return time.monotonic() - started, outcome


def test_a_locked_catalog_refuses_new_topics_in_time_and_nothing_else_waits_for_it(lone_server: LocalEnsign):
    server = lone_server

    async def body() -> tuple[str, Publisher]:
        async with connected(server) as client:
            topic_id = await client.create_topic("steady")
            publisher = Publisher(client, "steady")
            await publisher.publish_and_settle()
            async with write_lock_held(server.data_dir / "catalog.sqlite3") as holder:
                creating = asyncio.create_task(create_topic_timed(client, "while-locked"))
                await poll_status(server.endpoint, times=3)
                assert await first_call_of_a_new_client(server, "steady") < NEW_CLIENT_DEADLINE
                await publisher.publish_and_settle(timeout=LOCK_HOLD_SECONDS)
                assert publisher.events[-1].acked(), publisher.counter.nacks[-1].error

                seconds, outcome = await asyncio.wait_for(creating, LOCK_HOLD_SECONDS + 5)
                assert holder.returncode is None, "the lock was released before the checks ran"
                assert isinstance(outcome, EnsignRPCError), f"created {outcome} while the catalog was locked"
                assert outcome.name == "UNAVAILABLE" and "lock" in outcome.details, outcome
                assert seconds < CREATE_TOPIC_DEADLINE

                await wait_for_release(holder)
            assert await client.create_topic("while-locked")
        return topic_id, publisher

    topic_id, publisher = run(body(), timeout=60)
    server.stop()
    assert_stored_exactly_the_acked(server, topic_id, publisher)
