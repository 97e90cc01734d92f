"""Publish and subscribe streams: the real pyensign client against a real local_ensign server."""

import asyncio
import json

from pyensign.api.v1beta1 import ensign_pb2

from helpers.streams import close_client, json_event, wait_until_subscribed
from local_ensign.service import MAX_EVENT_SIZE
from tests.conftest import AckCounter, run, stored_records


async def collect(client, topic: str, count: int, received: list, ready: asyncio.Event) -> None:
    """Subscribe and append decoded events to ``received`` until ``count`` arrived."""
    subscription = client.subscribe(topic)
    ready.set()
    async for event in subscription:
        received.append(json.loads(event.data))
        await event.ack()
        if len(received) == count:
            return


async def open_subscriber(client, topic: str, count: int, received: list, name: str = "") -> asyncio.Task:
    """Start a bounded subscriber and wait until its stream is registered on the server.

    A subscription opens on its first iteration and starts at the live tail, so the
    test waits for the server's ``ready`` (whose map is keyed by topic ``name``; give
    it when ``topic`` is an id) before it publishes anything.
    """
    ready = asyncio.Event()
    task = asyncio.create_task(collect(client, topic, count, received, ready))
    await ready.wait()
    await wait_until_subscribed(client, name or topic)
    return task


def test_5000_json_events_are_all_acked_and_stored_in_order(server, new_client):
    total = 5_000

    async def body():
        client = new_client()
        topic_id = await client.ensure_topic_exists("five-thousand")
        counter = AckCounter()
        for i in range(total):
            await client.publish(
                "five-thousand", json_event({"seq": i}), on_ack=counter.on_ack, on_nack=counter.on_nack
            )
        await counter.wait_for(total)
        await client.close()
        return topic_id, counter

    topic_id, counter = run(body())
    assert len(counter.acks) == total and not counter.nacks
    committed = [ack.committed.ToNanoseconds() for ack in counter.acks]
    assert committed == sorted(committed)
    if server.store != "sqlite":
        return  # what is on disk is the durable store's to show
    stored = stored_records(server.data_dir, topic_id)
    assert [record["data"]["seq"] for record in stored] == list(range(total))
    assert [record["offset"] for record in stored] == list(range(1, total + 1))
    rlids = [record["rlid"] for record in stored]
    assert all(len(rlid) == 10 for rlid in rlids) and rlids == sorted(set(rlids))


def test_subscriber_opened_first_receives_later_events_in_order(new_client):
    async def body():
        subscriber, publisher = new_client(), new_client()
        await publisher.ensure_topic_exists("live-tail")
        counter = AckCounter()  # the first publish to a topic fixes its handlers
        await publisher.publish("live-tail", json_event({"seq": -1}), on_ack=counter.on_ack)
        await counter.wait_for(1)  # committed before the subscription: never delivered to it
        received: list = []
        task = await open_subscriber(subscriber, "live-tail", 5, received)
        for i in range(5):
            await publisher.publish(
                "live-tail", json_event({"seq": i, "text": f"review {i}"}), on_ack=counter.on_ack
            )
        await asyncio.wait_for(task, 20)
        await counter.wait_for(6)
        await publisher.close()
        await subscriber.close()
        return received

    received = run(body())
    assert received == [{"seq": i, "text": f"review {i}"} for i in range(5)]


def test_every_subscriber_gets_every_event_and_a_stalled_one_holds_up_nobody(new_client):
    total = 5_000

    async def body():
        publisher = new_client()
        subscribers = [new_client(), new_client(), new_client()]
        await publisher.ensure_topic_exists("fan-out")
        first, second, stalled = [], [], []
        tasks = [
            await open_subscriber(subscribers[0], "fan-out", total, first),
            await open_subscriber(subscribers[1], "fan-out", total, second),
            await open_subscriber(subscribers[2], "fan-out", 1, stalled),  # reads one, then stops
        ]
        counter = AckCounter()
        for i in range(total):
            await publisher.publish("fan-out", json_event({"seq": i}), on_ack=counter.on_ack)
        await counter.wait_for(total, timeout=90)
        await asyncio.wait_for(asyncio.gather(*tasks), 90)
        for client in (publisher, *subscribers):
            await close_client(client)
        return counter, first, second, stalled

    counter, first, second, stalled = run(body(), timeout=240)
    assert len(counter.acks) == total
    assert [r["seq"] for r in first] == list(range(total))
    assert [r["seq"] for r in second] == list(range(total))
    assert stalled == [{"seq": 0}]


def test_oversized_event_is_nacked_and_the_server_keeps_serving(new_client):
    async def body():
        client = new_client()
        await client.ensure_topic_exists("sizes")
        counter = AckCounter()
        await client.publish("sizes", json_event({"seq": 0}), on_ack=counter.on_ack, on_nack=counter.on_nack)
        huge = json_event({"blob": "x" * (MAX_EVENT_SIZE + 10)})
        await client.publish("sizes", huge)
        await client.publish("sizes", json_event({"seq": 2}))
        await counter.wait_for(3)
        await client.close()
        second = new_client()
        state = await second.status()
        await second.close()
        return counter, state

    counter, state = run(body())
    assert len(counter.acks) == 2
    assert [nack.code for nack in counter.nacks] == [ensign_pb2.Nack.Code.MAX_EVENT_SIZE_EXCEEDED]
    assert "limit" in counter.nacks[0].error
    assert state.status == 1


def test_a_warm_client_subscribes_by_topic_id(new_client):
    async def body():
        subscriber, publisher = new_client(), new_client()
        topic_id = await subscriber.ensure_topic_exists("by-id")  # cached: subscribe sends the id
        received: list = []
        task = await open_subscriber(subscriber, topic_id, 3, received, name="by-id")
        counter = AckCounter()
        for i in range(3):
            await publisher.publish("by-id", json_event({"seq": i}), on_ack=counter.on_ack)
        await asyncio.wait_for(task, 20)
        await counter.wait_for(3)
        await publisher.close()
        await close_client(subscriber)
        return received

    assert run(body()) == [{"seq": i} for i in range(3)]
