"""The sentiment app scaled out on a NATS JetStream cluster: training has one writer, serving scales out.

::

    publisher ──▶ reviews ──▶ trainer ──▶ models
    (gateway A)        │      (gateway B)    │ newest snapshot
                       └──▶ scorers, one consumer group: one on gateway A, one on B ──▶ scores

* the **publisher** sends each review to ``reviews`` through gateway A;
* the **trainer** reads ``reviews`` through gateway B (a live tail: it is the only
  writer of the model), learns predict→fit, and publishes a model snapshot to ``models``
  every ``snapshot_every`` reviews (``helpers.scorer.publish_snapshot``);
* two **scorers**, members of one consumer group on different gateways, share the
  reviews: each follows ``models`` and scores its reviews with the newest snapshot, then
  publishes the score to ``scores``, and acks the review only once the score is acked.

A review may reach a second scorer (its first scorer's gateway lost the ack, say): at
least once. ``scores`` has the deduplication policy ``UNIQUE_FIELD`` on ``review``, so
the log keeps one score per review and a query returns each review once: exactly once
where it counts, in what the app stored.

``python -m helpers.scaled_app`` (``make demo-cluster``) starts 3 NATS nodes and 2
gateways (``local_ensign.cluster``), runs the app over the corpus, kills the events
stream's leader node with SIGKILL halfway and starts it again, then checks through the
other gateway that every acked review is stored once and scored once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyensign.api.v1beta1 import topic_pb2
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import NackError

from helpers import snapshots
from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, features, make_model, predict_then_learn, target
from helpers.scorer import Scorer, follow, publish_snapshot
from helpers.streams import Subscription, close_client, consume, json_event, publish_records, query_events

REVIEWS, MODELS, SCORES = "reviews", "models", "scores"
SCORERS = ConsumerGroup(name="scorers")
SNAPSHOT_EVERY = 1_000  # reviews between two published models
SCORE_TRIES = 5  # publishes of one score before its review is left to the group's redelivery
IDLE = 30.0  # seconds a service waits for its next event before it decides the stream is over


@dataclass
class ScorerReport:
    """What one scorer did."""

    gateway: int
    scored: int = 0
    last_scored: float = 0.0  # time.perf_counter() of its last score
    versions: Counter[int] = field(default_factory=Counter)  # reviews scored with each model version


async def prepare_topics(ensign: Ensign) -> None:
    """Create the topics; ``scores`` keeps one score per review (deduplication on the ``review`` field)."""
    for topic in (REVIEWS, MODELS):
        await ensign.ensure_topic_exists(topic)
    scores = await ensign.ensure_topic_exists(SCORES)
    # pyensign 0.12.1b0's Ensign.set_topic_deduplication_policy fails in the client: call the RPC directly.
    await ensign.client.set_topic_deduplication_policy(
        scores,
        topic_pb2.Deduplication.Strategy.UNIQUE_FIELD,
        topic_pb2.Deduplication.OFFSET_EARLIEST,
        None,
        ["review"],
    )


async def train(ensign: Ensign, reviews: int, snapshot_every: int = SNAPSHOT_EVERY) -> tuple[int, int]:
    """The trainer: learn each review of a live tail of ``reviews``, publishing a snapshot every N."""
    model, metrics, learned, version = make_model(), StreamMetrics(), 0, 0

    async def learn(event: Event) -> None:
        nonlocal learned, version
        record = json.loads(event.data)
        predict_then_learn(model, metrics, features(record), target(record))
        learned += 1
        await event.ack()
        if learned % snapshot_every == 0 or learned == reviews:
            version += 1
            snapshot = snapshots.Snapshot(model, event.id.bytes, learned, version, metrics.snapshot())
            await publish_snapshot(ensign, MODELS, snapshot)

    async with Subscription(ensign, REVIEWS) as subscription:
        await consume(subscription, learn, max_events=reviews, idle_timeout=IDLE)
    return learned, version


async def score(ensign: Ensign, report: ScorerReport, ready: asyncio.Event) -> None:
    """A scorer: follow ``models``, and score its share of ``reviews`` with the newest snapshot."""
    scorer = Scorer()
    pending: set[asyncio.Task] = set()

    async def settle(body: dict[str, Any], review: Event) -> None:
        """Store the score, publishing it again if nacked; then ack the review, never before."""
        for _ in range(SCORE_TRIES):
            score_event = json_event(body)
            await ensign.publish(SCORES, score_event)
            with contextlib.suppress(NackError):  # nacked: nothing was stored, so publish it again
                await score_event.wait_for_ack()
            if score_event.acked():
                await review.ack()
                return
            await asyncio.sleep(1.0)

    async def handle(review: Event) -> None:
        record = json.loads(review.data)
        predicted = scorer.predict(features(record))
        body = {
            "review": record["id"],
            "predicted": predicted,
            "label": target(record),
            "version": scorer.version,
        }
        task = asyncio.create_task(settle(body, review))
        pending.add(task)
        task.add_done_callback(pending.discard)
        report.scored += 1
        report.versions[scorer.version] += 1
        report.last_scored = time.perf_counter()

    async with (
        Subscription(ensign, MODELS) as models,
        Subscription(ensign, REVIEWS, consumer_group=SCORERS) as reviews,
    ):
        ready.set()
        following = asyncio.create_task(follow(models, scorer, idle_timeout=2 * IDLE))
        try:
            await consume(reviews, handle, idle_timeout=IDLE / 2)
            await asyncio.wait_for(asyncio.gather(*pending), IDLE)
        finally:
            following.cancel()


async def run(cluster, records: Sequence[Mapping[str, Any]], kill_node_at: float = 0.5) -> dict[str, Any]:
    """Run the four services on ``cluster`` (a started LocalCluster); kill a node partway; the figures."""
    clients = {
        name: Ensign(**cluster.client_kwargs(gateway=g))
        for name, g in (
            ("publisher", 0),
            ("trainer", 1),
            ("scorer-a", 0),
            ("scorer-b", 1),
            ("checker-a", 0),
            ("checker-b", 1),
        )
    }
    figures: dict[str, Any] = {}
    try:
        await prepare_topics(clients["publisher"])
        scorer_reports = [ScorerReport(0), ScorerReport(1)]
        ready = [asyncio.Event(), asyncio.Event()]
        trainer = asyncio.create_task(train(clients["trainer"], len(records)))
        scorers = [
            asyncio.create_task(score(clients[name], report, flag))
            for name, report, flag in zip(("scorer-a", "scorer-b"), scorer_reports, ready, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(flag.wait() for flag in ready)), IDLE)
        await asyncio.sleep(1.0)  # the trainer's live tail is open too
        events = [json_event(dict(record)) for record in records]
        fault = asyncio.create_task(_kill_a_node(cluster, events, kill_node_at, figures))
        started = time.perf_counter()
        published = await publish_records(clients["publisher"], REVIEWS, events, timeout=300)
        await fault
        learned, versions = await trainer
        await asyncio.gather(*scorers)
        figures["seconds"] = max(report.last_scored for report in scorer_reports) - started
        stored = await query_events(clients["checker-b"], f"SELECT * FROM {REVIEWS}")
        scores = await query_events(clients["checker-a"], f"SELECT * FROM {SCORES}")
        figures.update(
            published=published,
            acked={record["id"] for record, event in zip(records, events, strict=True) if event.acked()},
            stored=Counter(json.loads(event.data)["id"] for event in stored),
            scored=Counter(json.loads(event.data)["review"] for event in scores),
            served=[json.loads(event.data) for event in scores if json.loads(event.data)["version"]],
            learned=learned,
            versions=versions,
            scorers=scorer_reports,
        )
    finally:
        for client in clients.values():
            await close_client(client)
    return figures


async def _kill_a_node(cluster, events: list[Event], at: float, figures: dict[str, Any]) -> None:
    """Once ``at`` of the events are acked, SIGKILL the stream's leader node; start it again 5 s later."""
    while sum(event.acked() for event in events) < at * len(events):
        await asyncio.sleep(0.1)
    node = await asyncio.to_thread(cluster.stream_leader)
    await asyncio.to_thread(cluster.kill_node, node)
    figures["killed"] = (cluster.nats.nodes[node].name, sum(event.acked() for event in events))
    await asyncio.sleep(5.0)
    await asyncio.to_thread(cluster.start_node, node)


def summarise(figures: Mapping[str, Any], reviews: int) -> bool:
    """Print what happened; True if every acked review is stored once and scored once."""
    acked, stored, scored = figures["acked"], figures["stored"], figures["scored"]
    stored_once = all(stored[review] == 1 for review in acked) and len(stored) == len(acked)
    scored_once = set(scored) == acked and all(count == 1 for count in scored.values())
    total_scored = sum(report.scored for report in figures["scorers"])
    served = figures["served"]
    node, at = figures.get("killed", ("no node", 0))
    rows = [
        ("reviews published", f"{reviews:,}", f"through gateway A; acked {len(acked):,}"),
        (
            "NATS node killed",
            node,
            f"SIGKILL after {at:,} acks (the events stream's leader), started 5 s later",
        ),
        (
            "stored in reviews",
            f"{sum(stored.values()):,}",
            "each acked review once" if stored_once else "NOT each once",
        ),
        (
            "trainer (gateway B)",
            f"{figures['learned']:,}",
            f"reviews learned; {figures['versions']} models published",
        ),
    ]
    for report in figures["scorers"]:
        versions = ", ".join(f"v{v}: {n:,}" for v, n in sorted(report.versions.items()))
        rows.append(
            (f"scorer on gateway {'AB'[report.gateway]}", f"{report.scored:,}", f"scored ({versions})")
        )
    rows += [
        (
            "scores stored",
            f"{sum(scored.values()):,}",
            "one per acked review" if scored_once else "NOT one per review",
        ),
        (
            "scored twice",
            f"{total_scored - sum(scored.values()):,}",
            "redelivered, kept once by the topic's policy",
        ),
        (
            "accuracy served",
            f"{sum(s['predicted'] == s['label'] for s in served) / max(1, len(served)):.3f}",
            f"over the {len(served):,} reviews scored once a model was out (before: no prediction)",
        ),
        (
            "events per second",
            f"{reviews / figures['seconds']:,.0f}",
            f"{figures['seconds']:.1f} s, publish to last score",
        ),
    ]
    for label, figure, note in rows:
        print(f"{label:<24}{figure:>10}   {note}")
    return stored_once and scored_once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The sentiment app on 3 NATS nodes and 2 gateways")
    parser.add_argument(
        "--reviews", type=int, default=10_000, help="reviews to publish (default %(default)s)"
    )
    args = parser.parse_args(argv)
    from local_ensign.cluster import LocalCluster  # the demo alone starts servers

    records = shuffled(load_records())[: args.reviews]
    print("starting 3 NATS nodes and 2 gateways ...", flush=True)
    with LocalCluster(nodes=3, gateways=2, project="scaled-app") as cluster:
        figures = asyncio.run(run(cluster, records))
    return 0 if summarise(figures, len(records)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
