"""local_ensign.nats_launcher: real nats-server processes with JetStream, one node or a cluster."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from local_ensign.nats_launcher import NatsCluster, NatsLaunchError, nats_server_binary
from tests.conftest import run

pytestmark = pytest.mark.timeout(60)

PUBLISH_TIMEOUT = 2.0  # seconds one publish waits for its ack (a lost leader is re-elected within it)
PUBLISH_DEADLINE = 20.0  # seconds one publish keeps retrying while a stream elects a new leader


async def publish(js: JetStreamContext, subject: str, number: int) -> int:
    """Publish message ``number`` (retried, deduplicated by its id) and return its stream sequence."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PUBLISH_DEADLINE
    while True:
        try:
            ack = await js.publish(
                subject, str(number).encode(), timeout=PUBLISH_TIMEOUT, headers={"Nats-Msg-Id": str(number)}
            )
            return ack.seq
        except Exception:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)


async def read_all(js: JetStreamContext, subject: str, count: int) -> list[tuple[int, int]]:
    """``(stream sequence, message number)`` of the first ``count`` messages, read in order.

    Creating the consumer and fetching are retried while a new leader is being elected.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PUBLISH_DEADLINE
    while True:
        try:
            subscription = await js.pull_subscribe(subject)  # an ephemeral pull consumer from the start
            break
        except nats.errors.TimeoutError:
            if loop.time() >= deadline:
                raise
    read: list[tuple[int, int]] = []
    while len(read) < count:
        try:
            messages = await subscription.fetch(count - len(read), timeout=2)
        except nats.errors.TimeoutError:
            if loop.time() >= deadline:
                raise
            continue
        for message in messages:
            read.append((message.metadata.sequence.stream, int(message.data)))
            await message.ack()
    await subscription.unsubscribe()
    return read


def running_nats_servers(pids: list[int]) -> list[int]:
    """Which of ``pids`` are still a running nats-server."""
    alive = []
    for pid in pids:
        try:
            if b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                alive.append(pid)
        except OSError:
            pass
    return alive


def test_the_binary_is_the_one_next_to_the_interpreter():
    assert nats_server_binary().name == "nats-server"
    assert os.access(nats_server_binary(), os.X_OK)


def test_one_node_stores_and_replays_a_stream_in_order(tmp_path):
    with NatsCluster(nodes=1, data_dir=tmp_path) as cluster:
        assert len(cluster.urls) == 1 and cluster.urls[0].startswith("nats://127.0.0.1:")

        async def body() -> None:
            nc = await nats.connect(cluster.urls, allow_reconnect=False)
            try:
                js = nc.jetstream()
                await js.add_stream(StreamConfig(name="events", subjects=["events.>"]))
                sequences = [await publish(js, "events.one", n) for n in range(1, 101)]
                assert sequences == list(range(1, 101))
                assert await read_all(js, "events.one", 100) == [(n, n) for n in range(1, 101)]
            finally:
                await nc.close()

        run(body(), timeout=30)
        assert (tmp_path / "node-0" / "jetstream").is_dir()  # the store is in the given directory
        assert (tmp_path / "node-0" / "nats-server.pid").read_text().strip() == str(cluster.pids[0])


def test_a_replicated_stream_survives_its_killed_leader_and_the_node_rejoins(tmp_path):
    with NatsCluster(nodes=3, data_dir=tmp_path) as cluster:

        async def before() -> str:
            nc = await nats.connect(cluster.urls[0], allow_reconnect=False)
            try:
                js = nc.jetstream()
                info = await js.add_stream(StreamConfig(name="events", subjects=["events.>"], num_replicas=3))
                assert info.config.num_replicas == 3
                assert [await publish(js, "events.r3", n) for n in range(1, 51)] == list(range(1, 51))
                return (await js.stream_info("events")).cluster.leader
            finally:
                await nc.close()

        async def after(url: str) -> None:
            nc = await nats.connect(url, allow_reconnect=False)
            try:
                js = nc.jetstream()
                assert [await publish(js, "events.r3", n) for n in range(51, 101)] == list(range(51, 101))
                assert await read_all(js, "events.r3", 100) == [(n, n) for n in range(1, 101)]
            finally:
                await nc.close()

        async def rejoined(url: str) -> None:
            nc = await nats.connect(url, allow_reconnect=False)
            try:
                info = await nc.jetstream().stream_info("events")
                assert info.state.messages == 100 and len(info.cluster.replicas) == 2
            finally:
                await nc.close()

        leader = run(before(), timeout=30)
        killed = next(node for node in cluster.nodes if node.name == leader)  # the worst node to lose
        other = cluster.nodes[(killed.index + 1) % 3]
        url, pid = killed.url, killed.process.pid
        cluster.kill(killed.index)
        assert running_nats_servers([pid]) == [] and len(cluster.pids) == 2
        run(after(other.url), timeout=40)
        cluster.start(killed.index)
        assert killed.url == url and len(cluster.pids) == 3  # same ports, running again
        run(rejoined(url), timeout=30)


def test_stop_leaves_no_nats_server_of_ours_running(tmp_path):
    cluster = NatsCluster(nodes=3, data_dir=tmp_path).start()
    pids = cluster.pids
    assert len(pids) == 3 and running_nats_servers(pids) == pids
    cluster.stop()
    assert running_nats_servers(pids) == []
    assert cluster.pids == []


def test_a_node_that_cannot_listen_fails_at_once_with_its_log(tmp_path):
    cluster = NatsCluster(nodes=1, data_dir=tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cluster.nodes[0].port = taken.getsockname()[1]
        with pytest.raises(NatsLaunchError, match="exited"):
            cluster.start(timeout=10)
    assert cluster.pids == []


def test_nodes_die_with_a_parent_killed_by_sigkill(tmp_path):
    """A process that starts a cluster and is killed outright (no finalizer runs) leaves no node behind."""
    script = (
        "import sys, time; from local_ensign.nats_launcher import NatsCluster;"
        f" c = NatsCluster(nodes=2, data_dir={str(tmp_path)!r}).start();"
        " print(*c.pids, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _alive(pid)], "nats-server outlived the process that started it"


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
