"""Two gateways on one JetStream log: writes from both, one order, the same ids everywhere."""

from __future__ import annotations

import asyncio
import json

import pytest
from pyensign.ensign import Ensign

from helpers.streams import close_client, json_event, query_events
from local_ensign.cluster import LocalCluster
from tests.conftest import AckCounter, run

PER_GATEWAY = 2_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(
        nodes=1, gateways=2, data_dir=tmp_path_factory.mktemp("cluster"), project="tests"
    ) as running:
        yield running


def test_both_gateways_publish_to_one_topic_and_every_reader_sees_one_order_with_the_same_ids(cluster):
    async def body():
        clients = [Ensign(**cluster.client_kwargs(gateway=g)) for g in (0, 1)]
        await clients[0].ensure_topic_exists("both")
        received: list[list] = [[], []]

        async def read(g: int) -> None:
            async for event in clients[g].subscribe("both"):
                received[g].append((bytes(event.id.bytes), json.loads(event.data)["key"]))
                if len(received[g]) == 2 * PER_GATEWAY:
                    return

        readers = [asyncio.create_task(read(g)) for g in (0, 1)]
        await asyncio.sleep(1.0)
        counters = [AckCounter(), AckCounter()]

        async def publish(g: int) -> None:
            for n in range(PER_GATEWAY):
                event = json_event({"key": f"{g}-{n}"})
                await clients[g].publish(
                    "both", event, on_ack=counters[g].on_ack, on_nack=counters[g].on_nack
                )
            await counters[g].wait_for(PER_GATEWAY)

        await asyncio.gather(publish(0), publish(1))  # both at once: their commits race for the stream
        await asyncio.wait_for(asyncio.gather(*readers), 60)
        stored = await query_events(clients[1], "SELECT * FROM both")
        for client in clients:
            await close_client(client)
        return counters, received, stored

    counters, received, stored = run(body())
    assert [len(c.acks) for c in counters] == [PER_GATEWAY, PER_GATEWAY]
    assert not counters[0].nacks and not counters[1].nacks
    assert received[0] == received[1], "the two gateways delivered different orders or ids"
    ids = [rlid for rlid, _ in received[0]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "ids are not strictly increasing"
    keys = [key for _, key in received[0]]
    assert sorted(keys) == sorted(f"{g}-{n}" for g in (0, 1) for n in range(PER_GATEWAY))
    for g in (0, 1):  # each publisher's events keep their order
        assert [k for k in keys if k.startswith(f"{g}-")] == [f"{g}-{n}" for n in range(PER_GATEWAY)]
    assert [bytes(event.id.bytes) for event in stored] == ids, "the log's order is not the delivered one"


def test_a_key_and_a_topic_made_through_one_gateway_work_at_the_other(cluster):
    credentials = cluster.create_key("elsewhere")

    async def body():
        first = Ensign(**cluster.client_kwargs(gateway=0, credentials=credentials))
        second = Ensign(**cluster.client_kwargs(gateway=1, credentials=credentials))
        await first.create_topic("made-at-0")
        found = await second.topic_exists("made-at-0")
        await close_client(first)
        await close_client(second)
        return found

    assert run(body()) is True
