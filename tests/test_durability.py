"""Acked events survive ``kill -9``: the server is a subprocess, killed mid-stream, restarted."""

import asyncio
import json
from collections import Counter

import pytest
from pyensign.ensign import Ensign

from helpers.streams import close_client, json_event
from local_ensign.launcher import LocalEnsign
from tests.conftest import AckCounter, run, stored_records

TOTAL = 20_000


async def publish_until_killed(server: LocalEnsign, kill_after: int) -> tuple[str, list]:
    """Publish up to TOTAL events; SIGKILL the server once ``kill_after`` acks arrived."""
    client = Ensign(**server.client_kwargs())
    topic_id = await client.ensure_topic_exists("durable")
    counter = AckCounter()
    events = []

    async def publish_all() -> None:
        for seq in range(TOTAL):
            event = json_event({"seq": seq})
            events.append(event)
            await client.publish("durable", event, on_ack=counter.on_ack)

    async def kill_when_due() -> None:
        while len(counter.acks) < kill_after:
            await asyncio.sleep(0.001)
        server.kill()

    publishing = asyncio.create_task(publish_all())
    await asyncio.wait_for(kill_when_due(), 120)
    await asyncio.sleep(0.2)  # let replies already on the wire reach the client
    publishing.cancel()
    await asyncio.gather(publishing, return_exceptions=True)
    await close_client(client, timeout=3)
    return topic_id, events


@pytest.mark.parametrize("kill_after", [1, 2_500, 7_000, 11_000, 16_000])
def test_every_acked_event_survives_kill_9_exactly_once(tmp_path, kill_after):
    server = LocalEnsign(tmp_path, project="tests").start()
    try:
        topic_id, events = run(publish_until_killed(server, kill_after), timeout=180)
        acked = {json_seq(event) for event in events if event.acked()}
        assert kill_after <= len(acked) < TOTAL, "the kill must land mid-stream"

        server.start()  # same data directory, after a crash

        async def after_restart():
            client = Ensign(**server.client_kwargs())
            topics = {topic.name: str(topic.id) for topic in await client.get_topics()}
            counter = AckCounter()
            await client.publish("durable", json_event({"seq": "after-restart"}), on_ack=counter.on_ack)
            await counter.wait_for(1)
            await client.close()
            return topics

        topics = run(after_restart())
    finally:
        server.cleanup()

    assert topics == {"durable": topic_id}
    stored = stored_records(tmp_path, topic_id)
    seqs = Counter(record["data"]["seq"] for record in stored)
    assert all(seqs[seq] == 1 for seq in acked), "an acked event is missing or stored twice"
    assert max(seqs.values()) == 1
    assert stored[-1]["data"]["seq"] == "after-restart"  # RLIDs carry on above the old ones
    assert [r["offset"] for r in stored] == list(range(1, len(stored) + 1))


def json_seq(event) -> int:
    return json.loads(event.data)["seq"]
