"""Consumer groups through the real pyensign client: resume after acks, share, redeliver, survive kill -9."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable

import pytest
from google.protobuf.duration_pb2 import Duration
from pyensign.api.v1beta1 import ensign_pb2
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup, DeliverySemantic
from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.streams import Subscription, close_client, json_event
from local_ensign.groups import MAX_REDELIVERIES
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run

Code = ensign_pb2.Nack.Code


async def publish_seqs(client: Ensign, topic: str, seqs: range) -> None:
    """Publish ``{"seq": n}`` for each n and wait for every ack."""
    counter = AckCounter()
    for seq in seqs:
        await client.publish(topic, json_event({"seq": seq}), on_ack=counter.on_ack, on_nack=counter.on_nack)
    await counter.wait_for(len(seqs))
    assert not counter.nacks


def seq(event: Event) -> int:
    return json.loads(event.data)["seq"]


async def read_group(
    client: Ensign,
    topic: str,
    group: ConsumerGroup,
    count: int,
    handle: Callable[[Event], object] | None = None,
    timeout: float = 60.0,
) -> list[Event]:
    """Read ``count`` events as a member of ``group``; ``handle`` acks or nacks each (default: ack)."""
    received: list[Event] = []

    async def read() -> None:
        async for event in client.subscribe(topic, consumer_group=group):
            received.append(event)
            outcome = handle(event) if handle else event.ack()
            if asyncio.iscoroutine(outcome):
                await outcome
            if len(received) >= count:
                return

    await asyncio.wait_for(read(), timeout)
    return received


def redelivery_order(store: str, events: list[Event]) -> list:
    """Redelivered events' ids in the order to compare: JetStream redelivers in no set order (README)."""
    ids = [e.id for e in events]
    return sorted(ids) if store == "jetstream" else ids


def test_a_group_resumes_after_its_last_ack_and_a_new_group_starts_at_the_earliest_event(new_client, store):
    async def body():
        publisher = new_client()
        await publisher.ensure_topic_exists("resume")
        await publish_seqs(publisher, "resume", range(1, 1001))
        await close_client(publisher)

        first = new_client()

        def ack_first_600(event: Event):
            return event.ack() if seq(event) <= 600 else None

        got = await read_group(first, "resume", ConsumerGroup(name="G"), 1000, ack_first_600)
        await asyncio.sleep(0.3)  # the acks are on their way
        await close_client(first)

        second = new_client()
        again = await read_group(second, "resume", ConsumerGroup(name="G"), 400)
        await close_client(second)

        fresh = new_client()
        everything = await read_group(fresh, "resume", ConsumerGroup(name="H"), 1000)
        await close_client(fresh)
        return got, again, everything

    got, again, everything = run(body())
    assert [seq(e) for e in got] == list(range(1, 1001))
    assert sorted(seq(e) for e in again) == list(range(601, 1001))
    assert store == "jetstream" or [seq(e) for e in again] == list(range(601, 1001))
    assert [seq(e) for e in everything] == list(range(1, 1001))
    assert redelivery_order(store, again) == redelivery_order(store, got[600:])


def test_two_members_share_10000_events_each_delivered_once(new_client):
    total = 10_000

    async def body():
        publisher = new_client()
        await publisher.ensure_topic_exists("shared")
        members = [new_client(), new_client()]
        seen: list[list[int]] = [[], []]
        done = asyncio.Event()

        # Both members have joined (the server said so) before the first event is published.
        subscriptions = [
            await Subscription(client, "shared", consumer_group=ConsumerGroup(name="pair")).open()
            for client in members
        ]

        async def member(index: int) -> None:
            async for event in subscriptions[index]:
                seen[index].append(seq(event))
                await event.ack()
                if sum(map(len, seen)) >= total:
                    done.set()

        readers = [asyncio.create_task(member(i)) for i in range(2)]
        await publish_seqs(publisher, "shared", range(total))
        await asyncio.wait_for(done.wait(), 90)
        await asyncio.sleep(0.5)  # nothing more arrives
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for client in [publisher, *members]:
            await close_client(client)
        return seen

    seen = run(body())
    counts = Counter(seen[0] + seen[1])
    assert sorted(counts) == list(range(total)), "every event was delivered"
    assert max(counts.values()) == 1, "no event went to both members"
    # Each member takes what it has room for when it asks (no promise of equal halves): both take some.
    assert min(len(seen[0]), len(seen[1])) > 0, f"both members took a share: {len(seen[0])}, {len(seen[1])}"


def test_a_nacked_event_comes_again_with_the_same_id_and_an_unhandled_one_does_not(new_client):
    async def body():
        publisher = new_client()
        await publisher.ensure_topic_exists("nacked")
        await publish_seqs(publisher, "nacked", range(3))
        await close_client(publisher)
        nacked_once: set[int] = set()

        async def handle(event: Event):
            if seq(event) == 0:
                await event.nack(Code.UNHANDLED_MIMETYPE)
            elif seq(event) == 1 and 1 not in nacked_once:
                nacked_once.add(1)
                await event.nack(Code.DELIVER_AGAIN_ANY)
            else:
                await event.ack()

        client = new_client()
        got = await read_group(client, "nacked", ConsumerGroup(name="nacks"), 4, handle)
        await asyncio.sleep(0.3)
        await close_client(client)
        # Everything is settled: the group has nothing left to send.
        later = new_client()
        await publish_seqs(later, "nacked", range(3, 4))
        after = await read_group(later, "nacked", ConsumerGroup(name="nacks"), 1)
        await close_client(later)
        return got, after

    got, after = run(body())
    assert [seq(e) for e in got] == [0, 1, 2, 1]
    assert got[1].id == got[3].id
    assert [seq(e) for e in after] == [3], "the unhandled event was not sent again"


def test_events_left_unacked_go_to_the_next_member_and_not_me_prefers_another(new_client):
    async def body():
        publisher = new_client()
        await publisher.ensure_topic_exists("handover")
        await publish_seqs(publisher, "handover", range(20))
        await close_client(publisher)

        quitter = new_client()
        held = await read_group(quitter, "handover", ConsumerGroup(name="relay"), 5, handle=lambda e: None)
        stayer = new_client()
        reading = asyncio.create_task(read_group(stayer, "handover", ConsumerGroup(name="relay"), 20))
        await asyncio.sleep(0.5)
        await close_client(quitter)  # its unacked events go to the other member
        got = await reading
        await asyncio.sleep(0.3)  # pyensign's close() cancels the stream, dropping acks not yet sent
        await close_client(stayer)

        picky, other = new_client(), new_client()
        await publish_seqs(publisher := new_client(), "handover", range(20, 21))
        await close_client(publisher)
        nacked = await read_group(
            picky,
            "handover",
            ConsumerGroup(name="relay"),
            1,
            handle=lambda e: e.nack(Code.DELIVER_AGAIN_NOT_ME),
        )
        taken = await read_group(other, "handover", ConsumerGroup(name="relay"), 1)
        for client in (picky, other):
            await close_client(client)
        return held, got, nacked, taken

    held, got, nacked, taken = run(body())
    assert [seq(e) for e in held] == [0, 1, 2, 3, 4]
    assert sorted(seq(e) for e in got) == list(range(20))
    assert [seq(e) for e in nacked] == [20] and [e.id for e in taken] == [nacked[0].id]


def test_an_event_not_acked_in_time_goes_to_another_member(new_client, store):
    timeout = Duration(seconds=1)

    async def body():
        publisher = new_client()
        await publisher.ensure_topic_exists("slow")
        await publish_seqs(publisher, "slow", range(3))
        await close_client(publisher)
        group = ConsumerGroup(name="timed", delivery_timeout=timeout)
        stuck, spare = new_client(), new_client()
        held = await read_group(stuck, "slow", group, 3, handle=lambda e: None)
        taken = await read_group(spare, "slow", group, 3, timeout=20)
        for client in (stuck, spare):
            await close_client(client)
        return held, taken

    held, taken = run(body())
    assert redelivery_order(store, taken) == redelivery_order(store, held)


def test_at_most_once_advances_on_send_and_exactly_once_is_refused(new_client):
    async def body():
        publisher = new_client()
        await publisher.ensure_topic_exists("once")
        await publish_seqs(publisher, "once", range(5))
        await close_client(publisher)
        group = ConsumerGroup(name="fire", delivery=DeliverySemantic.AT_MOST_ONCE)
        first = new_client()
        got = await read_group(first, "once", group, 2, handle=lambda e: None)
        await close_client(first)
        second = new_client()
        publisher = new_client()
        await publish_seqs(publisher, "once", range(5, 6))
        await close_client(publisher)
        rest = await read_group(second, "once", group, 1, handle=lambda e: None)
        await close_client(second)

        refused = new_client()
        with pytest.raises(Exception) as caught:
            await read_group(
                refused,
                "once",
                ConsumerGroup(name="x", delivery=DeliverySemantic.EXACTLY_ONCE),
                1,
                timeout=10,
            )
        await close_client(refused)
        return got, rest, caught.value

    got, rest, error = run(body())
    assert [seq(e) for e in got] == [0, 1]
    # Everything handed to the first member (all five, into the client's buffer) counts as sent.
    assert [seq(e) for e in rest] == [5]
    assert "EXACTLY_ONCE" in str(error) and "INVALID_ARGUMENT" in str(error)


def test_a_subscription_query_filters_the_live_stream(new_client):
    async def body():
        client = new_client()
        await client.ensure_topic_exists("mixed")
        received: list[Event] = []

        async def read() -> None:
            query = "SELECT * FROM mixed WHERE label = 'positive' AND domain = 'tweets'"
            async for event in client.subscribe("mixed", query=query):
                received.append(event)
                if len(received) == 2:
                    return

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.5)
        rows = [
            {"label": "positive", "domain": "tweets", "n": 1},
            {"label": "negative", "domain": "tweets", "n": 2},
            {"label": "positive", "domain": "movies", "n": 3},
            {"label": "positive", "domain": "tweets", "n": 4},
        ]
        counter = AckCounter()
        for row in rows:
            await client.publish("mixed", json_event(row), on_ack=counter.on_ack)
        await counter.wait_for(len(rows))
        await asyncio.wait_for(reading, 20)
        await close_client(client)
        return received

    received = run(body())
    assert [json.loads(e.data)["n"] for e in received] == [1, 4]


def test_a_member_holds_at_most_max_unacked_events(tmp_path):
    server = LocalEnsign(tmp_path / "bounded", project="tests", options=("--max-unacked", "50")).start()
    try:

        async def body():
            publisher = Ensign(**server.client_kwargs())
            await publisher.ensure_topic_exists("bounded")
            await publish_seqs(publisher, "bounded", range(300))
            await close_client(publisher)
            hoarder, worker = Ensign(**server.client_kwargs()), Ensign(**server.client_kwargs())
            held = await read_group(hoarder, "bounded", ConsumerGroup(name="b"), 50, handle=lambda e: None)
            done = await read_group(worker, "bounded", ConsumerGroup(name="b"), 250)
            with pytest.raises(TimeoutError):  # the hoarder gets no 51st event while it acks none
                await read_group(hoarder, "bounded", ConsumerGroup(name="b"), 1, timeout=1)
            for client in (hoarder, worker):
                await close_client(client)
            return held, done

        held, done = run(body())
    finally:
        server.stop()
    assert sorted(seq(e) for e in held + done) == list(range(300))


def test_a_group_resumes_after_kill_9_and_restart(tmp_path):
    server = LocalEnsign(tmp_path / "killed", project="tests").start()
    try:

        async def before_kill():
            client = Ensign(**server.client_kwargs())
            await client.ensure_topic_exists("kept")
            await publish_seqs(client, "kept", range(1000))
            got = await read_group(
                client,
                "kept",
                ConsumerGroup(name="K"),
                1000,
                handle=lambda e: e.ack() if seq(e) < 700 else None,
            )
            await asyncio.sleep(0.5)  # the acks reached the server; the client stays connected
            server.kill()
            await close_client(client, timeout=2)
            return got

        got = run(before_kill())
        server.start()

        async def after_restart():
            client = Ensign(**server.client_kwargs())
            rest = await read_group(client, "kept", ConsumerGroup(name="K"), 300)
            await close_client(client)
            return rest

        rest = run(after_restart())
    finally:
        server.stop()
    assert len(got) == 1000
    assert [seq(e) for e in rest] == list(range(700, 1000))


def test_bad_groups_are_refused_with_the_reason(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        await client.ensure_topic_exists("refusals")
        with pytest.raises(Exception) as nameless:
            await read_group(client, "refusals", ConsumerGroup(), 1, timeout=10)
        await close_client(client)
        return nameless.value

    error = run(body())
    assert "needs a name or an id" in str(error)


def test_redeliveries_are_capped_and_the_cap_is_logged(server):
    async def body():
        client = Ensign(**server.client_kwargs())
        await client.ensure_topic_exists("poison")
        await publish_seqs(client, "poison", range(2))

        got: list[Event] = []

        async def refuse_the_first(event: Event):
            got.append(event)
            await (event.nack(Code.DELIVER_AGAIN_ANY) if seq(event) == 0 else event.ack())

        with pytest.raises(TimeoutError):  # after the cap, nothing more comes
            await read_group(client, "poison", ConsumerGroup(name="capped"), 100, refuse_the_first, timeout=3)
        await close_client(client)
        return got

    got = run(body())
    assert Counter(seq(e) for e in got) == {0: MAX_REDELIVERIES + 1, 1: 1}
    assert "giving up on it (the redelivery cap)" in server.log_path.read_text()
