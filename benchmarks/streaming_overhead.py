"""What streaming costs the learning loop: River alone, pyensign alone, and the whole app.

    python benchmarks/streaming_overhead.py [--events 4000] [--repeats 3] [--metrics-every 100]

Over the same shuffled reviews, against one local Ensign server (its own process, durable
store), every repeat measures:

* river: the predict→fit step alone (``helpers.learning.predict_then_learn``), no network;
* subscribe: the reviews delivered as JSON events to a subscriber that decodes and acks each
  one (``helpers.streams.consume``) and learns nothing, while a client here publishes them;
* app: the whole streaming sentiment app (``helpers.sentiment_app.run_app``): publisher →
  ``reviews`` → predict→fit trainer → ``sentiment-metrics`` → monitor.

Subscribe and app rates run from the first event handled to the last, so opening clients and
subscriptions is not counted. Why a ratio: the app is a pipeline of the two stages, so at best
it keeps the slower one's rate, and ``app / min(river, subscribe)`` (target ≥ 0.7) says what
running them together costs, whatever the machine. Here every part shares one interpreter,
as in lesson 06 and ``make demo``, so the app's time per event is near the *sum* of the
stages' times. Not measured: the publisher in a process of its own, as services are deployed;
that layout answers a deployment question, not whether the app keeps up with its stages as the
lessons run it, and it needs a second process configured through the environment.

The subscriber must get every review once and in order, and the app must predict every one
with nothing nacked, or the script exits 1; a ratio below its target is only printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import harness
from pyensign.ensign import Ensign

from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, examples, make_model, predict_then_learn
from helpers.sentiment_app import run_app
from helpers.streams import Subscription, close_client, consume, publish_records
from local_ensign.launcher import LocalEnsign

RIVER, SUBSCRIBE = "river predict→fit alone, records/s", "subscribe + ack alone, events/s"
APP, COLUMN = "app, events/s", "one process"
IDLE = 10.0  # seconds without an event after which a stage is stuck


def river_rate(records: list[dict]) -> float:
    """Records per second of the bare predict→fit step."""
    pairs, model, metrics = list(examples(records)), make_model(), StreamMetrics()
    start = time.perf_counter()
    for x, y in pairs:
        predict_then_learn(model, metrics, x, y)
    return len(pairs) / (time.perf_counter() - start)


async def subscribe_rate(server: LocalEnsign, records: list[dict], timeout: float) -> float:
    """Events per second to a subscriber that decodes and acks, learning nothing."""
    publisher, subscriber = Ensign(**server.client_kwargs()), Ensign(**server.client_kwargs())
    topic, received, times = f"overhead-{time.time_ns()}", [], []

    async def handle(event) -> None:
        received.append(json.loads(event.data))
        await event.ack()
        times.append(time.perf_counter())

    try:
        await harness.bounded(publisher.ensure_topic_exists(topic), timeout, f"creating topic {topic}")
        async with Subscription(subscriber, topic) as subscription:
            consuming = consume(subscription, handle, max_events=len(records), idle_timeout=IDLE)
            publishing = publish_records(publisher, topic, records, timeout=timeout)
            _, published = await harness.bounded(
                asyncio.gather(consuming, publishing), timeout, lambda: f"subscribe, {len(received)} events"
            )
    finally:
        await close_client(publisher)
        await close_client(subscriber)
    harness.check_acked(published, len(records), "publishing")
    harness.check_sequence([r["id"] for r in received], [r["id"] for r in records], "subscribe")
    return (len(times) - 1) / (times[-1] - times[0])


async def app_rate(server: LocalEnsign, records: list[dict], metrics_every: int, timeout: float) -> float:
    """Events per second through the whole app, from the first prediction to the last."""
    times: list[float] = []
    result = await harness.bounded(
        run_app(
            lambda: Ensign(**server.client_kwargs()),
            records,
            metrics_every=metrics_every,
            idle_timeout=IDLE,
            on_step=lambda _: times.append(time.perf_counter()),
            on_alert=lambda _: None,
        ),
        timeout,
        lambda: f"the app, {len(times)} of {len(records)} records predicted",
    )
    trainer, monitor = result.trainer, result.monitor
    harness.check_acked(result.published, len(records), "the app's publisher")
    if trainer.predicted != len(records) or trainer.bad_input or monitor.seen != len(trainer.history):
        predicted = f"predicted {trainer.predicted} of {len(records)} records ({trainer.bad_input} nacked)"
        seen = f"its monitor saw {monitor.seen} of {len(trainer.history)} metrics events"
        raise harness.BenchmarkFailure(f"the app {predicted}; {seen}")
    return (len(times) - 1) / (times[-1] - times[0])


async def benchmark(args: argparse.Namespace) -> None:
    """Measure the three rates per repeat, then print the table and the ratio."""
    records = shuffled(load_records())[: args.events]
    results = harness.Results([COLUMN])
    with LocalEnsign(project="bench") as server:
        for repeat in range(1, args.repeats + 1):
            river = river_rate(records)
            subscribe = await subscribe_rate(server, records, args.timeout)
            app = await app_rate(server, records, args.metrics_every, args.timeout)
            results.add(repeat, COLUMN, {RIVER: river, SUBSCRIBE: subscribe, APP: app})
    results.print_table({})
    river, subscribe, app = (results.median(figure, COLUMN) for figure in (RIVER, SUBSCRIBE, APP))
    ratio = app / min(river, subscribe)
    harness.print_row("app / min(river, subscribe)", [ratio], harness.verdict(ratio, 0.7))


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run; 1 if a correctness check failed or a wait ran out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="reviews per run (default 4000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are shown (default 3)")
    parser.add_argument("--metrics-every", type=int, default=100, help="reviews per metrics event (100)")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each run, s (default 120)")
    args = parser.parse_args(argv)
    if args.events < 2 or args.repeats < 1:
        parser.error("--events must be at least 2, --repeats at least 1")
    settings = f"{args.events:,} reviews per run, {args.repeats} repeats, metrics every {args.metrics_every}"
    title = "streaming overhead: River alone, pyensign alone, the whole app"
    return harness.run(title, settings, benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
