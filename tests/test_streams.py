"""helpers.streams: bounded publish and consume loops, against a real local server."""

import asyncio
import time

from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.streams import STOP, close_client, consume, json_event, publish_records, wait_until_subscribed
from local_ensign.launcher import LocalEnsign
from local_ensign.service import MAX_EVENT_SIZE
from tests.conftest import run

SERVER_STORES = ("sqlite",)  # these test the helpers, not the store


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


def test_consume_stops_at_max_events_idle_and_sentinel_without_losing_events(new_client):
    async def body():
        publisher, subscriber = new_client(), new_client()
        await publisher.ensure_topic_exists("helpers-consume")
        seen: list[int] = []

        async def handle(event: Event):
            seen.append(int(event.data))
            await event.ack()
            return STOP if int(event.data) == 99 else None

        reports = [await consume(subscriber, "helpers-consume", handle, idle_timeout=0.5)]  # nothing yet
        consuming = asyncio.create_task(consume(subscriber, "helpers-consume", handle, max_events=10))
        await wait_until_subscribed(subscriber, "helpers-consume")
        numbers = [*range(20), 99, 100]
        events = [Event(str(n).encode(), mimetype="text/plain") for n in numbers]
        await publish_records(publisher, "helpers-consume", events)
        reports.append(await asyncio.wait_for(consuming, 20))
        reports.append(await consume(subscriber, "helpers-consume", handle, idle_timeout=5))
        reports.append(await consume(subscriber, "helpers-consume", handle, idle_timeout=5))
        for client in (publisher, subscriber):
            await close_client(client)
        return reports, seen

    reports, seen = run(body())
    outcomes = [(report.events, report.reason) for report in reports]
    assert outcomes == [(0, "idle"), (10, "max_events"), (11, "sentinel"), (1, "idle")]
    assert seen == [*range(20), 99, 100]
