"""A scaled-out deployment under faults: 3 NATS nodes (replicas=3) and 2 gateways, real pyensign clients.

20,000 events are published through gateway A while a subscriber on gateway B reads
them and a consumer group with one member on each gateway shares them. Mid-stream the
stream's leader node (the hardest one to lose) is killed with SIGKILL and later started
again; then gateway A itself is killed and started again. pyensign's own reconnects are
all the clients get. Afterwards an EnSQL query through gateway B must find every acked
event exactly once, B's subscriber must have seen every one, and the group's two
members together must have processed every one.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from google.protobuf.duration_pb2 import Duration
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign

from helpers.streams import close_client, json_event, query_events
from local_ensign.cluster import LocalCluster
from tests.conftest import run

EVENTS = 20_000
TOPIC = "faults"
GROUP = ConsumerGroup(name="scorers", delivery_timeout=Duration(seconds=2))


@pytest.fixture
def cluster(tmp_path):
    with LocalCluster(nodes=3, gateways=2, data_dir=tmp_path, project="faults") as running:
        yield running


def test_every_acked_event_survives_a_killed_node_and_a_killed_gateway_exactly_once(cluster):
    published: list = []  # (n, pyensign Event): each event knows whether it was acked
    acks: list = []
    nacks: list = []
    seen_by_b: list[int] = []
    log: list[str] = []
    processed_by: tuple[list[int], list[int]] = ([], [])  # the group's member on gateway A, on gateway B

    async def body() -> list[int]:
        publisher = Ensign(**cluster.client_kwargs(gateway=0))
        reader = Ensign(**cluster.client_kwargs(gateway=1))
        await publisher.ensure_topic_exists(TOPIC)

        async def subscribe() -> None:
            async for event in reader.subscribe(TOPIC):
                seen_by_b.append(json.loads(event.data)["n"])
                await event.ack()

        async def on_ack(ack) -> None:  # pyensign keeps the first publish's handlers for the topic
            acks.append(ack)

        async def on_nack(nack) -> None:
            nacks.append(nack)

        async def inflict_faults() -> None:
            """Kill the stream leader at 4,000 acks, start it at 8,000; kill, restart gateway A at 12,000."""
            leader = await asyncio.to_thread(cluster.stream_leader)
            for at, fault in ((4_000, "kill node"), (8_000, "start node"), (12_000, "kill gateway")):
                await _until(lambda at=at: len(acks) >= at)
                await asyncio.to_thread(_inflict, cluster, fault, leader)
                log.append(f"{fault} after {len(acks)} acks")
            await asyncio.sleep(2.0)
            await asyncio.to_thread(cluster.restart_gateway, 0)
            log.append(f"gateway restarted after {len(acks)} acks")

        async def member(client: Ensign, processed: list[int]) -> None:
            async for event in client.subscribe(TOPIC, consumer_group=GROUP):
                processed.append(json.loads(event.data)["n"])
                await event.ack()

        members = [Ensign(**cluster.client_kwargs(gateway=g)) for g in (0, 1)]
        member_tasks = [asyncio.create_task(member(c, p)) for c, p in zip(members, processed_by, strict=True)]
        subscriber = asyncio.create_task(subscribe())
        faults = asyncio.create_task(inflict_faults())
        await asyncio.sleep(1.0)
        for n in range(EVENTS):
            event = json_event({"n": n})
            published.append((n, event))
            await publisher.publish(TOPIC, event, on_ack=on_ack, on_nack=on_nack)
            if n - len(acks) - len(nacks) > 1_000:  # a bounded number in flight; never wait on a lost stream
                await _until(lambda n=n: n - len(acks) - len(nacks) <= 500, limit=5.0)
        await faults
        await _until_quiet(lambda: (len(acks), len(seen_by_b)))
        acked_now = {n for n, event in published if event.acked()}
        # Events the member on gateway A held when A died come back once the group's delivery timeout passes.
        await _until(lambda: acked_now <= set(processed_by[0]) | set(processed_by[1]))
        stored = await query_events(reader, f"SELECT * FROM {TOPIC}")
        for task in (subscriber, *member_tasks):
            task.cancel()
        for client in (publisher, reader, *members):
            await close_client(client)
        return [json.loads(event.data)["n"] for event in stored]

    found = run(body(), timeout=300)
    acked = {n for n, event in published if event.acked()}
    shares = f"{len(processed_by[0])} + {len(processed_by[1])} processed by the group's members"
    print("; ".join(log), f"; {len(acked)} acked, {len(found)} stored, {len(seen_by_b)} seen by B; {shares}")
    assert len(acked) > EVENTS * 0.8, f"only {len(acked)} of {EVENTS} events were acked"
    counts: dict[int, int] = {}
    for n in found:
        counts[n] = counts.get(n, 0) + 1
    missing = sorted(acked - counts.keys())
    assert not missing, f"{len(missing)} acked events are not in the log, e.g. {missing[:10]}"
    twice = sorted(n for n, count in counts.items() if count > 1)
    assert not twice, f"{len(twice)} events are in the log more than once, e.g. {twice[:10]}"
    processed = set(processed_by[0]) | set(processed_by[1])
    unprocessed = sorted(acked - processed)
    assert not unprocessed, f"the group's members never processed {len(unprocessed)} acked events"
    assert processed_by[0] and processed_by[1], "one member of the group got no events"
    unseen = sorted(acked - set(seen_by_b))
    assert not unseen, f"the subscriber on gateway B missed {len(unseen)} acked events, e.g. {unseen[:10]}"


async def _until(condition, limit: float = 60.0) -> None:
    """Wait until ``condition()`` holds, at most ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.05)


async def _until_quiet(progress, quiet: float = 3.0, limit: float = 60.0) -> None:
    """Wait until ``progress()`` has not changed for ``quiet`` seconds (at most ``limit`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last, since = progress(), loop.time()
    while loop.time() - since < quiet and loop.time() < deadline:
        await asyncio.sleep(0.2)
        if (now := progress()) != last:
            last, since = now, loop.time()


def _inflict(cluster: LocalCluster, fault: str, leader: int) -> None:
    if fault == "kill node":
        cluster.kill_node(leader)
    elif fault == "start node":
        cluster.start_node(leader)
    else:
        cluster.kill_gateway(0)
