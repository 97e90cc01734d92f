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

It measures the last two in two layouts:

* **one process**: publisher, subscriber(s) and model share this process, as in
  lesson 06 and ``make demo``. The stages then take turns on one interpreter, so the
  app's time per event is close to the *sum* of the stages' times, not the larger one.
* **publisher apart**: the publisher runs as its own process
  (``python -m helpers.sentiment_app publish``), as the services are deployed; this
  process only subscribes (and, for the app, learns and monitors). Timing starts at
  the first event received, so the publisher's start-up is not counted.

Figures are medians over the repeats. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

from pyensign.ensign import Ensign

from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, make_model, predict_then_learn
from helpers.sentiment_app import METRICS, REVIEWS, Monitor, Trainer, run_app
from helpers.streams import STOP, close_client, consume, publish_records, wait_until_subscribed
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


def start_publisher(server: LocalEnsign, count: int) -> subprocess.Popen:
    """The publisher service in its own process: the first ``count`` shuffled reviews, then an end marker."""
    key = server.credentials or {}
    environment = {
        **os.environ,
        "ENSIGN_ENDPOINT": server.endpoint,
        "ENSIGN_AUTH_URL": server.auth_url,
        "ENSIGN_INSECURE": "true",
        "ENSIGN_CLIENT_ID": key["ClientID"],
        "ENSIGN_CLIENT_SECRET": key["ClientSecret"],
    }
    command = [sys.executable, "-m", "helpers.sentiment_app", "publish", "--limit", str(count)]
    return subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)


async def subscribe_rate_apart(server: LocalEnsign, count: int, timeout: float) -> float:
    """Events per second to a subscriber that decodes and acks, the publisher in its own process."""
    client = Ensign(**server.client_kwargs())
    times: list[float] = []

    async def handle(event) -> object:
        record = json.loads(event.data)
        await event.ack()
        times.append(time.perf_counter())
        return STOP if record.get("end_of_stream") else None

    for topic in (REVIEWS, METRICS):
        await client.ensure_topic_exists(topic)
    try:
        consuming = asyncio.create_task(consume(client, REVIEWS, handle, idle_timeout=timeout))
        await wait_until_subscribed(client, REVIEWS)
        publisher = start_publisher(server, count)
        await asyncio.wait_for(consuming, timeout)
        publisher.wait(timeout)
    finally:
        await close_client(client)
    if len(times) != count + 1:
        raise RuntimeError(f"subscriber got {len(times) - 1} of {count} events")
    return count / (times[-1] - times[0])


async def app_rate_apart(server: LocalEnsign, count: int, metrics_every: int, timeout: float) -> float:
    """Events per second through trainer and monitor here, the publisher in its own process."""
    model_client, monitor_client = Ensign(**server.client_kwargs()), Ensign(**server.client_kwargs())
    first: list[float] = []
    trainer = Trainer(model_client, metrics_every=metrics_every)
    trainer.on_step = lambda t: first or first.append(time.perf_counter())
    monitor = Monitor(report=lambda _: None)
    for topic in (REVIEWS, METRICS):
        await model_client.ensure_topic_exists(topic)
        await monitor_client.ensure_topic_exists(topic)
    try:
        tasks = [
            asyncio.create_task(consume(monitor_client, METRICS, monitor.handle, idle_timeout=timeout)),
            asyncio.create_task(consume(model_client, REVIEWS, trainer.handle, idle_timeout=timeout)),
        ]
        await wait_until_subscribed(monitor_client, METRICS)
        await wait_until_subscribed(model_client, REVIEWS)
        publisher = start_publisher(server, count)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        finished = time.perf_counter()
        publisher.wait(timeout)
    finally:
        await close_client(model_client)
        await close_client(monitor_client)
    if trainer.predicted != count or monitor.seen != len(trainer.history):
        raise RuntimeError("the application did not process every record")
    return count / (finished - first[0])


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
    count, every, timeout = len(records), args.metrics_every, args.timeout
    figures: dict[str, list[float]] = {
        "river": [],
        "subscribe": [],
        "app": [],
        "subscribe apart": [],
        "app apart": [],
    }
    with LocalEnsign(project="benchmark") as server:
        for repeat in range(1, args.repeats + 1):
            figures["river"].append(river_rate(records))
            figures["subscribe"].append(asyncio.run(subscribe_rate(server, records, timeout)))
            figures["app"].append(asyncio.run(app_rate(server, records, every, timeout)))
            figures["subscribe apart"].append(asyncio.run(subscribe_rate_apart(server, count, timeout)))
            figures["app apart"].append(asyncio.run(app_rate_apart(server, count, every, timeout)))
            print(
                f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in figures.items()),
                flush=True,
            )
    median = {name: statistics.median(values) for name, values in figures.items()}
    print(f"\n{count:,} records, median of {args.repeats} repeats, metrics every {every}")
    print(f"River predict→fit alone                      {median['river']:>7,.0f} records/s")
    for layout, suffix in (("one process", ""), ("publisher apart", " apart")):
        subscribe, app = median["subscribe" + suffix], median["app" + suffix]
        ratio = app / min(median["river"], subscribe)
        verdict = "PASS" if ratio >= 0.7 else "below target"
        print(f"{layout}:")
        print(f"  pyensign subscribe + ack alone             {subscribe:>7,.0f} events/s")
        print(f"  whole application                          {app:>7,.0f} events/s   (publish → last metric)")
        print(f"  app / min(river, subscribe)                {ratio:>7.2f}   target ≥ 0.70: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
