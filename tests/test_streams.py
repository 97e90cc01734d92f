"""helpers.streams: bounded publish and consume loops, against a real local server."""

import asyncio
import json
import time

import pytest
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import EnsignError

from helpers.streams import (
    STOP,
    Subscription,
    close_client,
    consume,
    json_event,
    open_subscription,
    publish_records,
    query_events,
)
from local_ensign.launcher import LocalEnsign
from local_ensign.service import MAX_EVENT_SIZE
from tests.conftest import AckCounter, run

SERVER_STORES = ("sqlite",)  # these test the helpers, not the store


def number(event: Event) -> int:
    return int(event.data)


def numbered(numbers) -> list[Event]:
    return [Event(str(n).encode(), mimetype="text/plain") for n in numbers]


def test_publish_records_returns_once_every_event_is_acked_or_nacked(new_client):
    async def body():
        client = new_client()
        await client.ensure_topic_exists("helpers-publish")
        oversized = json_event({"text": "x" * MAX_EVENT_SIZE})
        records = [{"seq": i} for i in range(300)]
        report = await publish_records(client, "helpers-publish", [*records[:150], oversized, *records[150:]])
        await close_client(client)
        return report

    report = run(body())
    assert report.settled and not report.timed_out
    assert (report.published, report.acked, report.nacked) == (301, 300, 1)
    assert "limit" in report.nack_errors[0]


def test_publish_records_settles_whatever_handlers_the_first_publish_fixed(new_client):
    """pyensign keeps the first publish's handlers for a topic; publish_records counts from each event."""

    async def body():
        client = new_client()
        await client.ensure_topic_exists("helpers-handlers")
        counter = AckCounter()
        first = json_event({"seq": -1})
        await client.publish("helpers-handlers", first, on_ack=counter.on_ack, on_nack=counter.on_nack)
        await asyncio.wait_for(first.wait_for_ack(), 10)
        oversized = json_event({"text": "x" * MAX_EVENT_SIZE})
        report = await publish_records(client, "helpers-handlers", [{"seq": 0}, oversized, {"seq": 1}])
        await close_client(client)
        return report, counter

    report, counter = run(body())
    assert (report.published, report.acked, report.nacked) == (3, 2, 1) and report.settled
    assert (len(counter.acks), len(counter.nacks)) == (3, 1)  # the first publish's handlers saw them all


def test_publish_records_gives_up_after_its_timeout_when_the_server_is_gone(tmp_path):
    server = LocalEnsign(tmp_path).start()

    async def body():
        client = Ensign(**server.client_kwargs())
        await client.ensure_topic_exists("gone")
        await publish_records(client, "gone", [{"seq": 0}])
        server.kill()
        started = time.perf_counter()
        report = await publish_records(client, "gone", [{"seq": i} for i in range(500)], timeout=3)
        elapsed = time.perf_counter() - started
        await close_client(client, timeout=2)
        return report, elapsed

    try:
        report, elapsed = run(body(), timeout=60)
    finally:
        server.cleanup()
    assert report.timed_out and not report.settled
    assert elapsed < 10


def test_consume_stops_at_max_events_idle_and_sentinel_and_the_next_call_carries_on(new_client):
    async def body():
        publisher, subscriber = new_client(), new_client()
        await publisher.ensure_topic_exists("helpers-consume")
        seen: list[int] = []

        async def handle(event: Event):
            seen.append(number(event))
            await event.ack()
            return STOP if number(event) == 99 else None

        subscription = await open_subscription(subscriber, "helpers-consume")
        reports = [await consume(subscription, handle, idle_timeout=0.5)]  # nothing yet: a read waits
        await publish_records(publisher, "helpers-consume", numbered([*range(20), 99, 100]))
        reports.append(await consume(subscription, handle, max_events=10))
        reports.append(await consume(subscription, handle, idle_timeout=5))
        reports.append(await consume(subscription, handle, idle_timeout=1))
        await subscription.close()
        for client in (publisher, subscriber):
            await close_client(client)
        return reports, seen

    reports, seen = run(body())
    outcomes = [(report.events, report.reason) for report in reports]
    assert outcomes == [(0, "idle"), (10, "max_events"), (11, "sentinel"), (1, "idle")]
    assert seen == [*range(20), 99, 100]  # in order, none lost to the read that idled out


def test_a_subscription_is_read_by_async_for_and_read_where_consume_left_off(new_client):
    async def body():
        publisher, subscriber = new_client(), new_client()
        await publisher.ensure_topic_exists("helpers-read")
        async with Subscription(subscriber, "helpers-read") as subscription:
            await publish_records(publisher, "helpers-read", numbered(range(6)))
            first = await consume(subscription, lambda event: None, max_events=2)
            looped = []
            async for event in subscription:
                looped.append(number(event))
                if len(looped) == 3:
                    break
            last = number(await subscription.read(timeout=5))
            with pytest.raises(TimeoutError):
                await subscription.read(timeout=0.3)
        with pytest.raises(RuntimeError, match="not open"):
            await subscription.read(timeout=1)
        for client in (publisher, subscriber):
            await close_client(client)
        return first.events, looped, last, subscription.closed

    assert run(body()) == (2, [2, 3, 4], 5, True)


def test_two_subscriptions_on_one_client_are_independent(new_client):
    async def body():
        publisher, subscriber = new_client(), new_client()
        for topic in ("helpers-left", "helpers-right"):
            await publisher.ensure_topic_exists(topic)
        left = await open_subscription(subscriber, "helpers-left")
        right = await open_subscription(subscriber, "helpers-right")
        await publish_records(publisher, "helpers-left", numbered(range(5)))
        await publish_records(publisher, "helpers-right", numbered(range(100, 107)))
        got_left, got_right = [], []
        left_report = await consume(left, lambda event: got_left.append(number(event)), idle_timeout=1)
        await left.close()  # the other subscription reads on
        await publish_records(publisher, "helpers-right", numbered(range(107, 110)))
        right_report = await consume(right, lambda event: got_right.append(number(event)), idle_timeout=1)
        await right.close()
        for client in (publisher, subscriber):
            await close_client(client)
        return left_report, right_report, got_left, got_right

    left_report, right_report, got_left, got_right = run(body())
    assert got_left == list(range(5)) and left_report.reason == "idle"
    assert got_right == list(range(100, 110)) and right_report.reason == "idle"


def test_closing_is_bounded_even_when_the_subscription_buffer_is_full(new_client):
    async def body():
        publisher, subscriber = new_client(), new_client()
        await publisher.ensure_topic_exists("helpers-full")
        subscription = await open_subscription(subscriber, "helpers-full")
        report = await publish_records(publisher, "helpers-full", numbered(range(300)))  # never read
        await asyncio.sleep(0.5)  # let the client's 100-event buffer fill
        started = time.perf_counter()
        await asyncio.wait_for(subscription.close(), 1)
        closed_subscription = time.perf_counter() - started
        await close_client(subscriber, timeout=1)
        closed_client = time.perf_counter() - started
        await close_client(publisher)
        return report, closed_subscription, closed_client

    report, closed_subscription, closed_client = run(body(), timeout=60)
    assert report.acked == 300
    assert closed_subscription < 0.1
    assert closed_client < 3  # one timeout for close(), then a second close() that returns


def test_opening_a_subscription_to_a_missing_topic_fails_at_once(new_client):
    async def body():
        client = new_client()
        started = time.perf_counter()
        with pytest.raises(EnsignError):
            await open_subscription(client, "helpers-no-such-topic", timeout=10)
        elapsed = time.perf_counter() - started
        await close_client(client, timeout=2)
        return elapsed

    assert run(body()) < 5


def test_query_events_returns_the_stored_history_in_commit_order_filtered_or_empty(new_client):
    records = [{"seq": i, "domain": "tweets" if i % 3 == 0 else "movies"} for i in range(60)]

    async def body():
        client = new_client()
        await client.ensure_topic_exists("helpers-history")
        before = await query_events(client, "SELECT * FROM helpers-history")
        report = await publish_records(client, "helpers-history", records)
        everything = await query_events(client, "SELECT * FROM helpers-history")
        tweets = await query_events(client, "SELECT * FROM helpers-history WHERE domain = 'tweets'")
        nothing = await query_events(client, "SELECT * FROM helpers-history WHERE domain = 'nyt'")
        await close_client(client)
        return report, before, everything, tweets, nothing

    report, before, everything, tweets, nothing = run(body())
    assert report.acked == 60
    assert before == [] and nothing == []  # the server's "no rows" is an empty history, not an error
    assert [json.loads(event.data) for event in everything] == records
    ids = [event.id.bytes for event in everything]
    assert ids == sorted(ids) and len(set(ids)) == len(records)  # commit order, each event once
    assert [json.loads(event.data)["seq"] for event in tweets] == list(range(0, 60, 3))


def test_query_events_raises_at_its_timeout_where_a_bounded_cursor_returns_part_of_the_history(new_client):
    async def body():
        client = new_client()
        await client.ensure_topic_exists("helpers-long-history")
        report = await publish_records(client, "helpers-long-history", [{"seq": i} for i in range(3000)])
        # What query_events guards against: pyensign's cursor takes a read cancelled by a
        # timeout for the end of the results, so wait_for returns part of them, and no error.
        cursor = await client.query("SELECT * FROM helpers-long-history")
        part = []

        async def read_all() -> None:
            async for event in cursor:
                part.append(event)

        await asyncio.wait_for(read_all(), 0.05)
        with pytest.raises(TimeoutError):
            await query_events(client, "SELECT * FROM helpers-long-history", timeout=0.05)
        whole = await query_events(client, "SELECT * FROM helpers-long-history", timeout=30)
        await close_client(client)
        return report, part, whole

    report, part, whole = run(body())
    assert report.acked == 3000
    assert 0 < len(part) < 3000
    assert [json.loads(event.data)["seq"] for event in whole] == list(range(3000))
