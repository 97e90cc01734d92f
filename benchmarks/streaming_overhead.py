"""What streaming costs the learning loop: River alone, pyensign alone, and both together.

Run it as ``python benchmarks/streaming_overhead.py [--records N] [--repeats R]``.

Over the same shuffled reviews and the same local Ensign server (its own process,
durable store), one run measures:

1. **River**: the bare predict→fit loop over the records, no network (records/s);
2. **subscribe**: pyensign delivering the records as JSON events to a subscriber that
   decodes and acks each one and learns nothing (events/s, first publish → Nth event);
3. **application**: the whole streaming sentiment app — publisher → ``reviews`` →
   predict→fit trainer → ``sentiment-metrics`` (every ``--metrics-every`` records) →
   monitor (events/s, first publish → final metrics event at the monitor).

The application is a pipeline of those two stages, so its rate should approach the
slower of them; the script prints ``app / min(river, subscribe)`` (target ≥ 0.7).
Figures are medians over the repeats. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from pyensign.ensign import Ensign

from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, make_model, predict_then_learn
from helpers.sentiment_app import Monitor, run_app
from helpers.streams import close_client, consume, publish_records, wait_until_subscribed
from local_ensign.launcher import LocalEnsign


def river_rate(records: list[dict]) -> float:
    """Records per second of the bare predict→fit loop."""
    model, metrics = make_model(), StreamMetrics()
    start = time.perf_counter()
    for record in records:
        predict_then_learn(model, metrics, record["text"], record["label"] == "positive")
    return len(records) / (time.perf_counter() - start)


async def subscribe_rate(server: LocalEnsign, records: list[dict], timeout: float) -> float:
    """Events per second delivered to a subscriber that decodes and acks, learning nothing."""
    publisher, subscriber = Ensign(**server.client_kwargs()), Ensign(**server.client_kwargs())
    topic = f"overhead-{time.time_ns()}"
    await publisher.ensure_topic_exists(topic)
    received = 0

    async def handle(event) -> None:
        nonlocal received
        json.loads(event.data)
        await event.ack()
        received += 1

    try:
        consuming = asyncio.create_task(
            consume(subscriber, topic, handle, max_events=len(records), idle_timeout=timeout)
        )
        await wait_until_subscribed(subscriber, topic)
        start = time.perf_counter()
        await publish_records(publisher, topic, records, timeout=timeout)
        report = await asyncio.wait_for(consuming, timeout)
        seconds = time.perf_counter() - start
    finally:
        await close_client(publisher)
        await close_client(subscriber)
    if report.events != len(records):
        raise RuntimeError(f"subscriber got {report.events} of {len(records)} events ({report.reason})")
    return received / seconds


async def app_rate(server: LocalEnsign, records: list[dict], metrics_every: int, timeout: float) -> float:
    """Events per second through the whole application, first publish to final metrics."""
    start = time.perf_counter()
    result = await asyncio.wait_for(
        run_app(
            lambda: Ensign(**server.client_kwargs()),
            records,
            metrics_every=metrics_every,
            monitor=Monitor(report=lambda _: None),
            idle_timeout=timeout,
        ),
        timeout,
    )
    seconds = time.perf_counter() - start
    if result.trainer.predicted != len(records) or result.monitor.seen != len(result.trainer.history):
        raise RuntimeError("the application did not process every record")
    return len(records) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000, help="records per measurement (default 4000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; medians are reported (default 3)")
    parser.add_argument(
        "--metrics-every", type=int, default=100, help="records per metrics event (default 100)"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each measurement, seconds")
    args = parser.parse_args(argv)
    records = shuffled(load_records())[: args.records]
    figures: dict[str, list[float]] = {"river": [], "subscribe": [], "app": []}
    with LocalEnsign(project="benchmark") as server:
        for repeat in range(1, args.repeats + 1):
            figures["river"].append(river_rate(records))
            figures["subscribe"].append(asyncio.run(subscribe_rate(server, records, args.timeout)))
            figures["app"].append(asyncio.run(app_rate(server, records, args.metrics_every, args.timeout)))
            print(
                f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in figures.items()),
                flush=True,
            )
    river, subscribe, app = (statistics.median(figures[k]) for k in ("river", "subscribe", "app"))
    slower = min(river, subscribe)
    print(f"\n{len(records):,} records, median of {args.repeats} repeats, metrics every {args.metrics_every}")
    print(f"River predict→fit alone            {river:>9,.0f} records/s")
    print(f"pyensign subscribe + ack alone     {subscribe:>9,.0f} events/s")
    print(f"whole application                  {app:>9,.0f} events/s   (publish → last metric)")
    verdict = "PASS" if app / slower >= 0.7 else "below target"
    print(f"app / min(river, subscribe)        {app / slower:>9.2f}   target ≥ 0.70: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
