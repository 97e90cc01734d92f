"""Shared fixtures: a real local_ensign server in a subprocess, and real pyensign clients."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Coroutine
from pathlib import Path

import pytest
from pyensign.api.v1beta1 import event_pb2
from pyensign.ensign import Ensign

from local_ensign.eventlog import SQLiteEventLog
from local_ensign.ids import ZERO_RLID, parse_ulid
from local_ensign.launcher import LocalEnsign
from local_ensign.nats_launcher import NatsCluster


def run(coroutine: Coroutine, timeout: float = 120.0):
    """Run an async test body with a bound, so a broken server fails the test instead of hanging it."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


STORES = ("sqlite", "memory", "jetstream")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses a server once per store, unless its module says which stores matter.

    A module sets ``SERVER_STORES = ("sqlite",)`` when what it tests does not depend on the store.
    """
    if "server" in metafunc.fixturenames:
        metafunc.parametrize("store", getattr(metafunc.module, "SERVER_STORES", STORES), scope="module")


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One NATS server with JetStream for the whole test session, started when first needed."""
    with NatsCluster(nodes=1, data_dir=tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


def store_options(request: pytest.FixtureRequest, store: str) -> tuple[str, ...]:
    """The ``serve`` options a store needs: for JetStream, the session's NATS server and a fresh name.

    Each server gets a stream and buckets of its own, so modules never see each other's topics.
    """
    if store != "jetstream":
        return ()
    cluster = request.getfixturevalue("nats_cluster")
    name = f"t{next(_jetstream_names)}"
    return ("--nats", cluster.urls[0], "--jetstream-name", name)


_jetstream_names = itertools.count()


@pytest.fixture(scope="module")
def server(store: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """One server per test module and store, on free ports, in a temporary data directory."""
    instance = LocalEnsign(
        tmp_path_factory.mktemp("ensign"), project="tests", store=store, options=store_options(request, store)
    ).start()
    yield instance
    instance.stop()


@pytest.fixture
def new_client(server: LocalEnsign) -> Callable[..., Ensign]:
    """Make fresh pyensign clients for ``server`` (the key of project 'tests' unless given one)."""

    def make(credentials: dict[str, str] | None = None) -> Ensign:
        return Ensign(**server.client_kwargs(credentials))

    return make


class AckCounter:
    """Async on_ack/on_nack handlers (pyensign awaits them) that count and keep what they get."""

    def __init__(self) -> None:
        self.acks: list = []
        self.nacks: list = []

    async def on_ack(self, ack) -> None:
        self.acks.append(ack)

    async def on_nack(self, nack) -> None:
        self.nacks.append(nack)

    async def wait_for(self, total: int, timeout: float = 60.0) -> None:
        """Wait until ``total`` acks and nacks have arrived (fail after ``timeout``)."""

        async def settled() -> None:
            while len(self.acks) + len(self.nacks) < total:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), timeout)


def stored_records(data_dir: Path, topic_id: str) -> list[dict]:
    """Every stored event of a topic, read straight from the durable event log, in log order."""
    log = SQLiteEventLog(data_dir)
    try:
        records = log.read(parse_ulid(topic_id), ZERO_RLID, 10**9, 2**62)
    finally:
        log.close()
    out = []
    for record in records:
        wrapper = event_pb2.EventWrapper.FromString(record.wrapper)
        event = event_pb2.Event.FromString(wrapper.event)
        out.append({"rlid": record.rlid, "offset": wrapper.offset, "data": json.loads(event.data)})
    return out
