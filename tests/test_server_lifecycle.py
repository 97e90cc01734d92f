"""Topic lifecycle and Info through the real pyensign client: archive, destroy, counts and sizes."""

import json

import grpc
import pytest
from pyensign.api.v1beta1 import ensign_pb2, topic_pb2
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import EnsignRPCError, InvalidQueryError
from pyensign.mimetype.v1beta1.mimetype_pb2 import MIME

from helpers.streams import close_client, json_event
from local_ensign.catalog import DELETING, Catalog
from local_ensign.ids import parse_ulid
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run, stored_records

Code = ensign_pb2.Nack.Code


async def publish_all(client: Ensign, topic: str, events: list[Event]) -> AckCounter:
    counter = AckCounter()
    for event in events:
        await client.publish(topic, event, on_ack=counter.on_ack, on_nack=counter.on_nack)
    await counter.wait_for(len(events))
    return counter


def test_info_totals_equal_what_was_published_with_a_breakdown_by_type(server):
    json_events = [json_event({"seq": n}) for n in range(7)]
    text_events = [
        Event(f"line {n}".encode(), "text/plain", schema_name="Line", schema_version="1.2.0")
        for n in range(3)
    ]

    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("counted")
        other_id = await client.ensure_topic_exists("counted-too")
        await publish_all(client, "counted", json_events + text_events)
        await publish_all(client, "counted-too", [json_event({"x": 1})])
        everything = await client.info()
        one = await client.info([topic_id])
        await close_client(client)
        return topic_id, other_id, everything, one

    topic_id, other_id, everything, one = run(body())
    assert one.num_topics == 1 and one.events == 10
    (topic,) = one.topics
    assert topic.events == 10 and topic.data_size_bytes == one.data_size_bytes > 0
    kinds = {(t.type.name, t.mimetype): t.events for t in topic.types}
    assert kinds[("Line", MIME.TEXT_PLAIN)] == 3 and sum(kinds.values()) == 10
    assert everything.events >= 11 and everything.num_topics >= 2
    assert {str(t.id) for t in everything.topics} >= {topic_id, other_id}


def test_an_archived_topic_nacks_publishes_and_can_still_be_queried(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("archived")
        counter = await publish_all(client, "archived", [json_event({"seq": 0})])
        _, state = await client.client.archive_topic(
            topic_id
        )  # Ensign.archive_topic raises NotImplementedError
        await client.publish("archived", json_event({"seq": 1}))
        await counter.wait_for(2)
        cursor = await client.query("SELECT * FROM archived")
        rows = [json.loads(event.data) for event in await cursor.fetchall()]
        info = await client.info([topic_id])
        await close_client(client)
        return counter, state, rows, info

    counter, state, rows, info = run(body())
    assert state == topic_pb2.TopicState.READONLY
    assert [nack.code for nack in counter.nacks] == [Code.TOPIC_ARCHIVED]
    assert "archived" in counter.nacks[0].error
    assert rows == [{"seq": 0}]
    assert info.num_readonly_topics == 1


def test_a_destroyed_topic_is_gone_for_every_client_and_its_name_can_be_used_again(server):
    async def body():
        owner = Ensign(**server.client_kwargs())
        old_id = await owner.ensure_topic_exists("doomed")
        await publish_all(owner, "doomed", [json_event({"seq": n}) for n in range(5)])
        await close_client(owner)
        destroyer = Ensign(**server.client_kwargs())  # a fresh client: it looks the name up
        await destroyer.destroy_topic("doomed")  # raises unless the server answers DELETING
        await close_client(destroyer)
        checker = Ensign(**server.client_kwargs())
        for _ in range(100):  # the events go in the background, then the name
            if not await checker.topic_exists("doomed"):
                break
        names = [topic.name for topic in await checker.get_topics()]
        with pytest.raises(InvalidQueryError):
            await checker.query("SELECT * FROM doomed")
        new_id = await checker.ensure_topic_exists("doomed")
        await publish_all(checker, "doomed", [json_event({"fresh": True})])
        cursor = await checker.query("SELECT * FROM doomed")
        rows = [json.loads(event.data) for event in await cursor.fetchall()]
        await close_client(checker)
        return old_id, new_id, names, rows

    old_id, new_id, names, rows = run(body())
    assert "doomed" not in names
    assert new_id != old_id
    assert rows == [{"fresh": True}]


@pytest.mark.parametrize(
    ("operation", "expected"),
    [("NOOP", "INVALID_ARGUMENT"), ("unknown id", "NOT_FOUND"), ("bad id", "INVALID_ARGUMENT")],
)
def test_delete_topic_refuses_what_it_cannot_do(server, operation, expected):
    async def body():
        client = Ensign(**server.client_kwargs())
        topic_id = await client.ensure_topic_exists("kept")
        try:
            if operation == "NOOP":  # pyensign never sends it: straight to the stub
                mod = topic_pb2.TopicMod(id=topic_id, operation=topic_pb2.TopicMod.Operation.NOOP)
                with pytest.raises(grpc.aio.AioRpcError) as raw:
                    await client.client.stub.DeleteTopic(mod)
                return raw.value.code().name
            with pytest.raises(EnsignRPCError) as raised:
                await client.client.destroy_topic(
                    "01" + topic_id[2:-4] + "ZZZZ" if operation == "unknown id" else "x"
                )
            return raised.value.name
        finally:
            await close_client(client)

    assert run(body()) == expected


def test_a_destruction_a_stopped_server_left_unfinished_is_completed_when_it_starts(tmp_path):
    """A server stopped between answering DELETING and removing the topic finishes the job at start-up."""
    server = LocalEnsign(tmp_path / "data", project="tests").start()
    try:

        async def publish() -> str:
            client = Ensign(**server.client_kwargs())
            topic_id = await client.ensure_topic_exists("half-destroyed")
            await publish_all(client, "half-destroyed", [json_event({"seq": n}) for n in range(5)])
            await close_client(client)
            return topic_id

        topic_id = run(publish())
        server.stop()
        catalog = Catalog(server.data_dir)
        catalog.set_state(parse_ulid(topic_id), DELETING)  # as a destroy interrupted by a crash leaves it
        catalog.close()
        server.start()

        async def look() -> tuple[bool, list[str]]:
            client = Ensign(**server.client_kwargs())
            exists = await client.topic_exists("half-destroyed")
            names = [topic.name for topic in await client.get_topics()]
            await close_client(client)
            return exists, names

        exists, names = run(look())
    finally:
        server.stop()
    assert not exists and "half-destroyed" not in names
    assert stored_records(server.data_dir, topic_id) == []
