"""Bad input on the event path: every event settles, an ack means deliverable, bad ids match nothing.

The real pyensign client publishes and subscribes wherever it can produce the input;
raw gRPC sends only what the client cannot (bytes that are not an Event).
"""

import asyncio
from pathlib import Path

import grpc
import pytest
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc, event_pb2, topic_pb2
from pyensign.events import Event
from pyensign.exceptions import EnsignRPCError

from helpers.streams import close_client, json_event
from local_ensign.ids import new_ulid, parse_ulid
from local_ensign.service import CLIENT_RECEIVE_LIMIT, MAX_EVENT_SIZE
from tests.conftest import AckCounter, run
from tests.test_server_auth import access_token
from tests.test_server_streams import open_subscriber

Code = ensign_pb2.Nack.Code


def event_of_size(size: int) -> Event:
    """An event whose serialized ``Event`` message is exactly ``size`` bytes."""
    length = size
    for _ in range(5):  # the framing grows by a byte or two with the data's length
        event = Event(b"x" * length, mimetype="application/octet-stream")
        length += size - len(event.proto().SerializeToString())
    assert len(event.proto().SerializeToString()) == size
    return event


async def collect_sizes(client, topic: str, count: int, sizes: list, ready: asyncio.Event) -> None:
    """Subscribe and record the size of each event's data until ``count`` arrived."""
    subscription = client.subscribe(topic)
    ready.set()
    async for event in subscription:
        sizes.append(len(event.data))
        if len(sizes) == count:
            return


def test_an_event_subscribers_could_not_receive_is_nacked_and_the_largest_allowed_is_delivered(new_client):
    """Ensign's 5,243,000-byte limit is over pyensign's 4 MiB receive limit: the lower one rules.

    An event of 4.5 MB was acked and then killed every subscriber's stream, so it and
    the event after it were never delivered.
    """

    async def body():
        publisher, subscriber = new_client(), new_client()
        await publisher.ensure_topic_exists("large-events")
        sizes: list[int] = []
        ready = asyncio.Event()
        task = asyncio.create_task(collect_sizes(subscriber, "large-events", 2, sizes, ready))
        await ready.wait()
        await asyncio.sleep(0.5)  # the subscription opens on its first iteration
        counter = AckCounter()
        largest = event_of_size(MAX_EVENT_SIZE)
        for event in (event_of_size(4_500_000), largest, json_event({"after": True})):
            await publisher.publish("large-events", event, on_ack=counter.on_ack, on_nack=counter.on_nack)
        await counter.wait_for(3)
        await asyncio.wait_for(task, 60)
        await close_client(publisher)
        await close_client(subscriber)
        return counter, sizes, len(largest.data)

    counter, sizes, largest_data = run(body(), timeout=180)
    assert len(counter.acks) == 2 and len(counter.nacks) == 1
    nack = counter.nacks[0]
    assert nack.code == Code.MAX_EVENT_SIZE_EXCEEDED
    assert f"{MAX_EVENT_SIZE:,}" in nack.error and f"{CLIENT_RECEIVE_LIMIT:,}" in nack.error
    assert "pyensign" in nack.error
    assert sizes == [largest_data, len(b'{"after": true}')]


def test_an_event_larger_than_any_message_limit_is_nacked_and_the_events_behind_it_settle(new_client):
    """A 12 MiB event used to end the publish stream: pyensign never settled the events queued behind it."""

    async def body():
        client = new_client()
        await client.ensure_topic_exists("huge-events")
        counter = AckCounter()
        await client.publish(
            "huge-events", json_event({"seq": 0}), on_ack=counter.on_ack, on_nack=counter.on_nack
        )
        await client.publish("huge-events", event_of_size(12 * 1024 * 1024))
        for seq in range(1, 21):
            await client.publish("huge-events", json_event({"seq": seq}))
        await counter.wait_for(22, timeout=60)
        await close_client(client)
        return counter

    counter = run(body(), timeout=120)
    assert len(counter.acks) == 21
    assert [nack.code for nack in counter.nacks] == [Code.MAX_EVENT_SIZE_EXCEEDED]


async def raw_publish(server, topic_id: bytes, events: list[bytes]) -> list[ensign_pb2.PublisherReply]:
    """Publish these serialized ``Event`` payloads on one raw stream; return a reply for each."""
    token = access_token(server)
    async with grpc.aio.insecure_channel(server.endpoint) as channel:
        stream = ensign_pb2_grpc.EnsignStub(channel).Publish(metadata=(("authorization", f"Bearer {token}"),))
        await stream.write(ensign_pb2.PublisherRequest(open_stream=ensign_pb2.OpenStream(client_id="raw")))
        assert (await stream.read()).WhichOneof("embed") == "ready"
        for payload in events:
            wrapper = event_pb2.EventWrapper(topic_id=topic_id, local_id=new_ulid(), event=payload)
            await stream.write(ensign_pb2.PublisherRequest(event=wrapper))
        replies = [await asyncio.wait_for(stream.read(), 10) for _ in events]
        stream.cancel()
    return replies


NOT_EVENTS = {
    "five bytes that do not parse": b"\xff\xff\xff\xff\xff",
    "five letters": b"hello",
    "an event without data": event_pb2.Event(mimetype=50).SerializeToString(),
}


def test_bytes_that_are_not_a_deliverable_event_are_nacked_and_subscribers_live_on(server, new_client):
    """Garbage used to be acked, and then every pyensign subscriber of the topic died parsing it."""

    async def body():
        publisher, subscriber = new_client(), new_client()
        topic_id = await publisher.ensure_topic_exists("garbage-in")
        received: list = []
        task = await open_subscriber(subscriber, "garbage-in", 1, received)
        replies = await raw_publish(server, parse_ulid(topic_id), list(NOT_EVENTS.values()))
        counter = AckCounter()
        await publisher.publish("garbage-in", json_event({"seq": 1}), on_ack=counter.on_ack)
        await counter.wait_for(1)
        await asyncio.wait_for(task, 20)
        await close_client(publisher)
        await close_client(subscriber)
        return replies, received

    replies, received = run(body())
    assert [reply.WhichOneof("embed") for reply in replies] == ["nack"] * len(NOT_EVENTS)
    errors = [reply.nack.error for reply in replies]
    assert all("not a valid ensign.v1beta1.Event" in error for error in errors[:2])
    assert "no data" in errors[2]
    assert received == [{"seq": 1}]


def test_a_topic_name_ending_in_a_newline_is_invalid(new_client):
    """The name rule must hold for the whole string: ``$`` used to match before a final newline."""

    async def body():
        client = new_client()
        try:
            with pytest.raises(EnsignRPCError) as raised:
                await client.create_topic("reviews\n")
        finally:
            await close_client(client)
        return raised.value

    error = run(body())
    assert error.name == "INVALID_ARGUMENT"


def raw_call_metadata(server) -> tuple:
    return (("authorization", f"Bearer {access_token(server)}"),)


@pytest.mark.parametrize("spelling", ["leading 8", "lower case"])
def test_a_topic_id_spelled_other_than_canonically_names_no_topic(server, new_client, spelling):
    """A 26-character id starting with 8 decoded (its top bits dropped) to a real topic's id.

    pyensign rewrites ids to the canonical spelling before sending them, so the
    other spellings go over raw gRPC, as another client could send them.
    """

    async def body():
        owner = new_client()
        topic_id = await owner.ensure_topic_exists(f"canonical-{spelling.replace(' ', '-')}")
        await close_client(owner)
        alias = "8" + topic_id[1:] if spelling == "leading 8" else topic_id.lower()
        metadata = raw_call_metadata(server)
        async with grpc.aio.insecure_channel(server.endpoint) as channel:
            stub = ensign_pb2_grpc.EnsignStub(channel)
            exists = await stub.TopicExists(
                topic_pb2.TopicName(topic_id=alias), metadata=metadata, timeout=10
            )
            stream = stub.Subscribe(metadata=metadata, timeout=10)
            subscription = ensign_pb2.Subscription(client_id="raw", topics=[alias])
            await stream.write(ensign_pb2.SubscribeRequest(subscription=subscription))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stream.read()
        return topic_id, exists, raised.value

    topic_id, exists, error = run(body())
    assert topic_id[0] in "01234567"
    assert not exists.exists
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_the_readme_and_lesson_03_state_the_limit_the_server_enforces():
    """The limit is derived from pyensign's receive limit; what people read must follow it."""
    root = Path(__file__).resolve().parent.parent
    for document in (root / "README.md", root / "notebooks" / "03-publish-events.ipynb"):
        assert f"{MAX_EVENT_SIZE:,}" in document.read_text(), document.name
