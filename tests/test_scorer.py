"""helpers.scorer against a real server: snapshots published, followed, checked, swapped, rolled back."""

import os

import pytest
from pyensign.events import Event

from helpers.data import load_records, shuffled
from helpers.learning import make_model, train_batch
from helpers.scorer import (
    Scorer,
    SnapshotNotPublished,
    find_snapshot,
    follow,
    publish_snapshot,
    snapshot_headers,
)
from helpers.snapshots import MIMETYPE, SCHEMA, Snapshot, dumps
from helpers.streams import close_client, json_event, open_subscription, publish_records
from local_ensign.service import MAX_EVENT_SIZE
from tests.conftest import run

SERVER_STORES = ("sqlite",)  # these test the helpers, not the store

RECORDS = shuffled(load_records())
PROBES = [record["text"] for record in RECORDS[-20:]]  # texts none of the models learned


def trained(n: int, version: int) -> Snapshot:
    """A snapshot of a model that learned the first ``n`` records."""
    return Snapshot(train_batch(make_model(), RECORDS[:n]), b"", n, version)


def probabilities(model) -> list[dict]:
    return [model.predict_proba_one(text) for text in PROBES]


def damaged(snapshot: Snapshot) -> Event:
    """A snapshot event with one byte of its model flipped: the header is intact, the digest fails."""
    data = bytearray(dumps(snapshot))
    data[-1] ^= 0xFF
    return Event(bytes(data), MIMETYPE, schema_name=SCHEMA, schema_version="1.0.0")


async def published_and_followed(new_client, topic: str, events: list, scorer: Scorer):
    """Publish ``events`` (snapshots or events) from one client; another client's scorer follows them."""
    trainer, serving = new_client(), new_client()
    await trainer.ensure_topic_exists(topic)
    await serving.ensure_topic_exists(topic)
    subscription = await open_subscription(serving, topic)
    for item in events:
        if isinstance(item, Snapshot):
            await publish_snapshot(trainer, topic, item)
        else:
            report = await publish_records(trainer, topic, [item])
            assert report.acked == 1
    followed = await follow(subscription, scorer, max_events=len(events), idle_timeout=10)
    await subscription.close()
    await close_client(trainer)
    await close_client(serving)
    return followed


def test_the_scorer_swaps_to_each_newer_snapshot_and_serves_its_model(new_client):
    first, second = trained(100, version=1), trained(400, version=2)
    scorer = Scorer()
    assert scorer.version == 0 and scorer.predict(PROBES[0]) is None

    followed = run(published_and_followed(new_client, "models-swap", [first, second], scorer))

    assert followed.events == 2
    assert scorer.swaps == [1, 2] and scorer.version == 2 and not scorer.ignored
    assert scorer.snapshot.learned == 400
    assert [scorer.predict_proba(text) for text in PROBES] == probabilities(second.model)
    assert probabilities(second.model) != probabilities(first.model)  # so the check above can fail


def test_the_scorer_ignores_stale_damaged_and_foreign_events(new_client):
    served, older = trained(400, version=2), trained(100, version=1)
    events = [served, older, damaged(trained(800, version=3)), json_event({"not": "a snapshot"})]
    scorer = Scorer()

    run(published_and_followed(new_client, "models-refuse", events, scorer))

    assert scorer.swaps == [2] and scorer.version == 2
    assert scorer.ignored == {"stale": 1, "damaged": 1, "not a snapshot": 1}
    assert [scorer.predict_proba(text) for text in PROBES] == probabilities(served.model)


def test_a_rollback_finds_an_older_snapshot_by_query(new_client):
    snapshots = [trained(100 * version, version) for version in (1, 2, 3)]

    async def body():
        trainer = new_client()
        await trainer.ensure_topic_exists("models-rollback")
        assert await snapshot_headers(trainer, "models-rollback") == []  # no events: QueryNoRows, handled
        for snapshot in snapshots:
            await publish_snapshot(trainer, "models-rollback", snapshot)
        await publish_records(trainer, "models-rollback", [json_event({"not": "a snapshot"})])
        headers = await snapshot_headers(trainer, "models-rollback")
        older = await find_snapshot(trainer, "models-rollback", 1)
        with pytest.raises(LookupError):
            await find_snapshot(trainer, "models-rollback", 7)
        await close_client(trainer)
        return headers, older

    headers, older = run(body())
    assert [(header["version"], header["learned"]) for header in headers] == [(1, 100), (2, 200), (3, 300)]
    assert (older.version, older.learned) == (1, 100)
    scorer = Scorer()
    scorer.roll_back(older)
    assert scorer.version == 1
    assert [scorer.predict_proba(text) for text in PROBES] == probabilities(snapshots[0].model)
    assert probabilities(snapshots[0].model) != probabilities(snapshots[2].model)


def test_a_rollback_takes_the_last_snapshot_published_with_that_version(new_client):
    """A trainer started again publishes its versions again: the newest of a version wins."""
    early, late = trained(100, version=1), trained(300, version=1)

    async def body():
        trainer = new_client()
        await trainer.ensure_topic_exists("models-again")
        await publish_snapshot(trainer, "models-again", early)
        await publish_snapshot(trainer, "models-again", late)
        found = await find_snapshot(trainer, "models-again", 1)
        await close_client(trainer)
        return found

    assert run(body()).learned == 300


def test_a_snapshot_over_the_event_size_limit_is_not_published(new_client):
    incompressible = Snapshot(os.urandom(MAX_EVENT_SIZE), b"", 0, version=1)

    async def body():
        trainer = new_client()
        await trainer.ensure_topic_exists("models-too-big")
        with pytest.raises(SnapshotNotPublished, match="limit"):
            await publish_snapshot(trainer, "models-too-big", incompressible)
        headers = await snapshot_headers(trainer, "models-too-big")
        await close_client(trainer)
        return headers

    assert run(body()) == []  # nothing was stored
