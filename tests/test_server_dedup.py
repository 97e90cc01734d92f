"""Topic deduplication policies through the real pyensign client: what each strategy drops.

pyensign 0.12.1b0's ``Ensign.set_topic_deduplication_policy`` fails in the client
itself (it passes its enums the wrong way), so these tests call the RPC through
``ensign.client``, as a program would.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from pyensign.api.v1beta1 import topic_pb2
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import EnsignRPCError, QueryNoRows

from helpers.streams import close_client
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run

Strategy = topic_pb2.Deduplication.Strategy
Offset = topic_pb2.Deduplication.OffsetPosition
State = topic_pb2.TopicState
Sharding = topic_pb2.ShardingStrategy


def event(data: str, mimetype: str = "text/plain", **meta: str) -> Event:
    return Event(data.encode(), mimetype, meta=meta or None)


def order(number: int) -> Event:
    return event(json.dumps({"order": number}), "application/json")


async def publish(client: Ensign, topic: str, events: list[Event]) -> None:
    counter = AckCounter()
    for item in events:
        await client.publish(topic, item, on_ack=counter.on_ack, on_nack=counter.on_nack)
    await counter.wait_for(len(events))
    assert not counter.nacks, counter.nacks


async def rows(client: Ensign, topic: str, include_duplicates: bool = False) -> list[Event]:
    try:
        cursor = await client.query(f"SELECT * FROM {topic}", include_duplicates=include_duplicates)
    except QueryNoRows:
        return []
    return await cursor.fetchall()


async def set_policy(
    client: Ensign, topic_id: str, strategy, offset=Offset.OFFSET_EARLIEST, keys=None, fields=None
):
    status = await client.client.set_topic_deduplication_policy(topic_id, strategy, offset, keys, fields)
    return status.state


async def wait_ready(client: Ensign, topic: str) -> None:
    async def ready() -> None:
        while True:
            (found,) = [t for t in await client.get_topics() if t.name == topic]
            if found.status.name == "READY":  # pyensign's own TopicState enum
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(ready(), 20)


CASES = {
    # strategy: (keys, fields, published, the data of those kept)
    "NONE": (None, None, [event("a"), event("a")], ["a", "a"]),
    "STRICT": (
        None,
        None,
        [event("a", k="1"), event("a", k="1"), event("a", k="2"), event("a", "application/json", k="1")],
        ["a", "a", "a"],
    ),
    "DATAGRAM": (None, None, [event("a", k="1"), event("a", k="2"), event("b", k="1")], ["a", "b"]),
    "KEY_GROUPED": (
        ["user"],
        None,
        [event("a", user="u1"), event("a", user="u1"), event("a", user="u2"), event("b", user="u1")],
        ["a", "a", "b"],
    ),
    "UNIQUE_KEY": (
        ["user"],
        None,
        [event("a", user="u1"), event("b", user="u1"), event("a", user="u2"), event("c")],
        ["a", "a", "c"],
    ),
    "UNIQUE_FIELD": (
        None,
        ["id"],
        [
            event('{"id": 1, "v": "x"}', "application/json"),
            event('{"id": 1, "v": "y"}', "application/json"),
            event('{"id": 2, "v": "x"}', "application/json"),
            event("not json"),
            event("not json"),
        ],
        ['{"id": 1, "v": "x"}', '{"id": 2, "v": "x"}', "not json", "not json"],
    ),
}


@pytest.mark.parametrize("strategy", list(CASES))
def test_each_strategy_drops_its_duplicates_from_queries_and_subscribers(server, strategy):
    keys, fields, published, kept = CASES[strategy]
    topic = f"dedup-{strategy.lower().replace('_', '-')}"

    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists(topic)
        if strategy != "NONE":
            assert await set_policy(client, topic_id, Strategy.Value(strategy), keys=keys, fields=fields) in (
                State.PENDING,
                State.READY,
            )
            await wait_ready(client, topic)
        delivered: list[Event] = []

        async def subscribe() -> None:
            async for item in client.subscribe(topic):
                delivered.append(item)

        reading = asyncio.create_task(subscribe())
        await asyncio.sleep(0.5)
        await publish(client, topic, published)
        await asyncio.sleep(0.5)
        reading.cancel()
        found = await rows(client, topic)
        everything = await rows(client, topic, include_duplicates=True)
        info = await client.info([topic_id])
        await close_client(client)
        return delivered, found, everything, info

    delivered, found, everything, info = run(body())
    assert [e.data.decode() for e in found] == kept
    assert [e.data.decode() for e in delivered] == kept
    assert len(everything) == len(published)
    assert info.topics[0].duplicates == info.duplicates == len(published) - len(kept)


def test_offset_latest_keeps_the_newest_copy(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("latest")
        await set_policy(client, topic_id, Strategy.UNIQUE_KEY, Offset.OFFSET_LATEST, keys=["user"])
        await wait_ready(client, "latest")
        await publish(
            client, "latest", [event("v1", user="u1"), event("w1", user="u2"), event("v2", user="u1")]
        )
        # A second client: pyensign 0.12.1b0 keeps the on_ack of a client's first publish to a topic.
        later = Ensign(**server.client_kwargs())
        await publish(later, "latest", [event("v3", user="u1")])  # replaces a stored copy
        await close_client(later)
        found = await rows(client, "latest")
        everything = await rows(client, "latest", include_duplicates=True)
        await close_client(client)
        return found, everything

    found, everything = run(body())
    assert [e.data.decode() for e in found] == ["w1", "v3"]
    assert [e.data.decode() for e in everything] == ["v1", "w1", "v2", "v3"]


def test_a_new_policy_marks_events_already_stored_and_can_be_lifted(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("rehashed")
        await publish(client, "rehashed", [event("a"), event("b"), event("a"), event("a")])
        before = await rows(client, "rehashed")
        state = await set_policy(client, topic_id, Strategy.DATAGRAM)
        await wait_ready(client, "rehashed")
        marked = await rows(client, "rehashed")
        again = await set_policy(client, topic_id, Strategy.DATAGRAM)
        await set_policy(client, topic_id, Strategy.NONE)
        await wait_ready(client, "rehashed")
        lifted = await rows(client, "rehashed")
        await close_client(client)
        return before, state, marked, again, lifted

    before, state, marked, again, lifted = run(body())
    assert len(before) == 4 and state == State.PENDING
    assert [e.data for e in marked] == [b"a", b"b"]
    assert again == State.READY, "the policy in place: nothing to do"
    assert [e.data for e in lifted] == [b"a", b"b", b"a", b"a"]


def test_bad_policies_are_refused_as_ensign_refuses_them(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("policed")
        errors = {}
        attempts = {
            "no keys": client.client.set_topic_deduplication_policy(topic_id, Strategy.KEY_GROUPED),
            "no fields": client.client.set_topic_deduplication_policy(topic_id, Strategy.UNIQUE_FIELD),
            "stray keys": client.client.set_topic_deduplication_policy(topic_id, Strategy.STRICT, keys=["k"]),
            "nothing": client.client.set_topic_deduplication_policy(topic_id, Strategy.UNKNOWN),
            "sharding": client.client.set_topic_sharding_strategy(
                topic_id, topic_pb2.ShardingStrategy.RANDOM
            ),
            "unknown topic": client.client.set_topic_deduplication_policy("01H0000000000000000000000Z", 2),
        }
        for name, attempt in attempts.items():
            try:
                await attempt
            except EnsignRPCError as err:
                errors[name] = str(err)
        await client.client.archive_topic(topic_id)
        try:
            await client.client.set_topic_deduplication_policy(topic_id, Strategy.STRICT)
        except EnsignRPCError as err:
            errors["archived"] = str(err)
        await close_client(client)
        return errors

    errors = run(body())
    assert "INVALID_ARGUMENT" in errors["no keys"] and "no keys specified" in errors["no keys"]
    assert "no fields specified" in errors["no fields"]
    assert "do not specify keys for STRICT" in errors["stray keys"]
    assert "no policies defined" in errors["nothing"]
    assert "UNIMPLEMENTED" in errors["sharding"]
    assert "NOT_FOUND" in errors["unknown topic"]
    assert "FAILED_PRECONDITION" in errors["archived"] and "archived" in errors["archived"]


def test_a_policy_survives_a_restart_and_keeps_marking(tmp_path):
    server = LocalEnsign(tmp_path / "kept", project="tests").start()
    try:

        async def before():
            client = Ensign(**server.client_kwargs())
            topic_id = await client.ensure_topic_exists("orders")
            await set_policy(client, topic_id, Strategy.UNIQUE_FIELD, fields=["order"])
            await wait_ready(client, "orders")
            await publish(
                client, "orders", [event(json.dumps({"order": n}), "application/json") for n in (1, 2)]
            )
            await close_client(client)

        run(before())
        server.stop()
        server.start()

        async def after():
            client = Ensign(**server.client_kwargs())
            await publish(
                client, "orders", [event(json.dumps({"order": n}), "application/json") for n in (2, 3)]
            )
            found = await rows(client, "orders")
            (topic,) = [t for t in await client.get_topics() if t.name == "orders"]
            await close_client(client)
            return found, topic

        found, topic = run(after())
    finally:
        server.stop()
    assert [json.loads(e.data)["order"] for e in found] == [1, 2, 3]
    assert topic.deduplication.strategy.name == "UNIQUE_FIELD"  # pyensign's own enum
    assert list(topic.deduplication.fields) == ["order"]


def test_a_consumer_group_skips_duplicates_and_moves_past_them(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("grouped-dedup")
        await set_policy(client, topic_id, Strategy.DATAGRAM)
        await wait_ready(client, "grouped-dedup")
        await publish(client, "grouped-dedup", [event("a"), event("a"), event("b"), event("a")])
        received: list[Event] = []

        async def read(count: int) -> None:
            async for item in client.subscribe("grouped-dedup", consumer_group=ConsumerGroup(name="g")):
                received.append(item)
                await item.ack()
                if len(received) == count:
                    return

        with pytest.raises(TimeoutError):  # a third event never comes: the duplicates are not sent
            await asyncio.wait_for(read(3), 3)
        await close_client(client)
        return received

    received = run(body())
    assert [e.data for e in received] == [b"a", b"b"]
