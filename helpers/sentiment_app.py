"""The streaming sentiment application: publisher → reviews → model → metrics → monitor.

Three services that only know each other through topics, as in the workshop:

* the **publisher** sends each review as a JSON event to ``reviews``, then an
  end-of-stream marker;
* the **trainer** subscribes to ``reviews``; for each review it predicts, is scored,
  then learns (predict→fit), and every ``metrics_every`` reviews it publishes the
  running metrics to ``sentiment-metrics``; an event that is not JSON or lacks
  ``text``/``label`` is nacked, counted and skipped;
* the **monitor** subscribes to ``sentiment-metrics`` and raises an alert when the
  rolling accuracy falls under a threshold.

Run all three together (``run_app``, used by lesson 06 and ``make demo``) or each in
its own process against a running server, as three terminals would:
``python -m helpers.sentiment_app train``, ``... monitor``, then ``... publish``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.nack import Unprocessed

from helpers.connection import configure, connect
from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, make_model, predict_then_learn
from helpers.streams import (
    STOP,
    PublishReport,
    Subscription,
    close_client,
    consume,
    json_event,
    publish_records,
)

REVIEWS, METRICS = "reviews", "sentiment-metrics"
END_OF_STREAM = {"end_of_stream": True}


@dataclass
class Trainer:
    """The model service: predict→fit on each review, publish metrics every N reviews.

    ``ensign`` is the client it publishes its metrics with; ``on_step(trainer)`` is called
    after each prediction (for a progress bar or a live plot).
    """

    ensign: Ensign
    metrics_every: int = 100
    model: object = field(default_factory=make_model)
    metrics: StreamMetrics = field(default_factory=StreamMetrics)
    predicted: int = 0
    bad_input: int = 0
    history: list[dict] = field(default_factory=list)
    on_step: Callable[[Trainer], None] | None = None

    async def handle(self, event: Event) -> object:
        """One review in: predict, score, learn, ack. Bad input is nacked and skipped."""
        try:
            record = json.loads(event.data)
            if record.get("end_of_stream"):
                await event.ack()
                await self.publish_metrics(final=True)
                return STOP
            text, label = record["text"], record["label"]
            if not isinstance(text, str) or label not in ("positive", "negative"):
                raise ValueError("text must be a string and label positive or negative")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.bad_input += 1
            await event.nack(Unprocessed)
            return None
        predict_then_learn(self.model, self.metrics, text, label == "positive")
        self.predicted += 1
        await event.ack()
        if self.on_step:
            self.on_step(self)
        if self.predicted % self.metrics_every == 0:
            await self.publish_metrics()
        return None

    async def publish_metrics(self, final: bool = False) -> None:
        """Send the running metrics to the metrics topic (no wait for the ack)."""
        snapshot = {**self.metrics.snapshot(), "predicted": self.predicted, "bad_input": self.bad_input}
        snapshot["final"] = final
        self.history.append(snapshot)
        await self.ensign.publish(METRICS, json_event(snapshot))


@dataclass
class Monitor:
    """The alerting service: warns when rolling accuracy drops under ``threshold``."""

    threshold: float = 0.60
    on_alert: Callable[[str], None] = print  # gets each alert's message
    alerts: list[dict] = field(default_factory=list)
    seen: int = 0
    below: bool = False

    async def handle(self, event: Event) -> object:
        """One metrics event in: alert on the way down through the threshold."""
        snapshot = json.loads(event.data)
        await event.ack()
        self.seen += 1
        rolling = snapshot.get("rolling_accuracy")
        if rolling is not None and rolling < self.threshold and not self.below:
            self.alerts.append(snapshot)
            self.on_alert(f"ALERT after {snapshot['predicted']} reviews: rolling accuracy {rolling:.2f}")
        self.below = rolling is not None and rolling < self.threshold
        return STOP if snapshot.get("final") else None


@dataclass
class AppResult:
    published: PublishReport
    trainer: Trainer
    monitor: Monitor


async def publish_reviews(
    ensign: Ensign, records: Sequence[Mapping[str, Any] | Event], timeout: float = 300.0
) -> PublishReport:
    """The publisher service: every review, then the end-of-stream marker."""
    await ensign.ensure_topic_exists(REVIEWS)
    report = await publish_records(ensign, REVIEWS, records, timeout=timeout)
    await publish_records(ensign, REVIEWS, [END_OF_STREAM], timeout=30)
    return report


async def run_app(
    new_client: Callable[[], Ensign],
    records: Sequence[Mapping[str, Any] | Event],
    *,
    metrics_every: int = 100,
    threshold: float = 0.60,
    idle_timeout: float = 30.0,
    on_step: Callable[[Trainer], None] | None = None,
    on_alert: Callable[[str], None] = print,
) -> AppResult:
    """Run the three services together, each with its own client, until the stream ends.

    ``new_client()`` makes each service's client (``helpers.connection.connect`` does);
    ``on_step`` and ``on_alert`` go to the trainer and the monitor.
    """
    publisher, trainer_client, monitor_client = new_client(), new_client(), new_client()
    trainer = Trainer(trainer_client, metrics_every=metrics_every, on_step=on_step)
    monitor = Monitor(threshold=threshold, on_alert=on_alert)
    try:
        for topic in (REVIEWS, METRICS):
            await publisher.ensure_topic_exists(topic)
        # Both subscribers are open before the first review is published, since a
        # subscription sees only the events committed after it opened.
        async with (
            Subscription(trainer_client, REVIEWS) as reviews,
            Subscription(monitor_client, METRICS) as metrics,
        ):
            _, _, published = await asyncio.gather(
                consume(reviews, trainer.handle, idle_timeout=idle_timeout),
                consume(metrics, monitor.handle, idle_timeout=idle_timeout),
                publish_reviews(publisher, records),
            )
    finally:
        for client in (publisher, trainer_client, monitor_client):
            await close_client(client)
    return AppResult(published, trainer, monitor)


# The program: python -m helpers.sentiment_app demo | publish | train | monitor -----------


def _records(args: argparse.Namespace) -> list[dict]:
    records = shuffled(load_records())
    return records[: args.limit] if args.limit else records


async def _demo(args: argparse.Namespace) -> int:
    """Run the whole application over the corpus with a progress bar, then summarise it."""
    from tqdm import tqdm  # the demo alone needs these two, and matplotlib is slow to import

    from helpers.plotting import LivePlot

    deployment = configure()
    records = _records(args)
    plot = LivePlot(
        title="Streaming sentiment: metrics as the model learns", display=False, threshold=args.threshold
    )
    bar = tqdm(total=len(records), unit="review", desc="predict→fit")

    def step(trainer: Trainer) -> None:
        bar.update(1)
        if trainer.predicted % args.metrics_every == 0:
            plot.add(trainer.predicted, trainer.metrics.snapshot())

    started = time.perf_counter()
    result = await run_app(
        lambda: connect(deployment),
        records,
        metrics_every=args.metrics_every,
        threshold=args.threshold,
        on_step=step,
        on_alert=tqdm.write,
    )
    seconds = time.perf_counter() - started
    trainer, monitor = result.trainer, result.monitor
    bar.close()
    plot.add(trainer.predicted, trainer.metrics.snapshot())
    plot.close()
    plot.save(args.plot)
    final = trainer.metrics.snapshot()
    published = result.published
    print(f"\nEnsign at {deployment.endpoint} ({'local server' if deployment.local else 'remote'})")
    acks = f"acked {published.acked:,}, nacked {published.nacked:,}"
    print(f"events published      {published.published:>8,}   {acks}")
    print(f"predictions made      {trainer.predicted:>8,}   bad input nacked {trainer.bad_input:,}")
    print(f"accuracy              {final['accuracy']:>8.3f}")
    print(f"precision (positive)  {final['precision']:>8.3f}")
    print(f"recall (positive)     {final['recall']:>8.3f}")
    print(f"alerts raised         {len(monitor.alerts):>8,}   (rolling accuracy under {args.threshold:.2f})")
    rate = trainer.predicted / seconds
    print(f"events per second     {rate:>8,.0f}   ({seconds:.1f} s, publish to last metric)")
    print(f"plot                  {args.plot}")
    return 0 if published.settled and trainer.predicted + trainer.bad_input == published.acked else 1


async def _publish(args: argparse.Namespace) -> int:
    client = connect()
    try:
        report = await publish_reviews(client, _records(args))
    finally:
        await close_client(client)
    print(f"published {report.published:,} reviews: {report.acked:,} acked, {report.nacked:,} nacked")
    return 0 if report.settled else 1


async def _subscribe_until_done(client: Ensign, topic: str, handler, args: argparse.Namespace) -> None:
    """Run one subscribing service until its stream ends, it idles out, or Ctrl-C; then close."""
    try:
        for name in (REVIEWS, METRICS):
            await client.ensure_topic_exists(name)
        async with Subscription(client, topic) as subscription:
            await consume(subscription, handler, idle_timeout=args.idle_timeout)
    finally:
        await close_client(client)


async def _train(args: argparse.Namespace) -> int:
    def print_metrics(trainer: Trainer) -> None:
        if trainer.predicted % args.metrics_every == 0:
            print(trainer.metrics.snapshot(), flush=True)

    trainer = Trainer(connect(), metrics_every=args.metrics_every, on_step=print_metrics)
    print(f"training on '{REVIEWS}' until the end-of-stream marker (Ctrl-C stops)", flush=True)
    await _subscribe_until_done(trainer.ensign, REVIEWS, trainer.handle, args)
    print(f"predicted {trainer.predicted:,}, bad input {trainer.bad_input:,}: {trainer.metrics.snapshot()}")
    return 0


async def _monitor(args: argparse.Namespace) -> int:
    monitor = Monitor(threshold=args.threshold)
    print(f"watching '{METRICS}' for rolling accuracy under {args.threshold:.2f} (Ctrl-C stops)", flush=True)
    await _subscribe_until_done(connect(), METRICS, monitor.handle, args)
    print(f"{monitor.seen:,} metrics events, {len(monitor.alerts):,} alerts")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.sentiment_app", description=__doc__.splitlines()[0]
    )
    parser.add_argument("role", choices=("demo", "publish", "train", "monitor"))
    parser.add_argument("--limit", type=int, default=0, help="publish only the first N shuffled reviews")
    parser.add_argument("--metrics-every", type=int, default=100, help="publish metrics every N reviews")
    parser.add_argument("--threshold", type=float, default=0.60, help="alert under this rolling accuracy")
    parser.add_argument(
        "--idle-timeout", type=float, default=3600.0, help="stop after this many idle seconds"
    )
    parser.add_argument("--plot", default="sentiment-metrics.png", help="where the demo writes its plot")
    args = parser.parse_args(argv)
    roles = {"demo": _demo, "publish": _publish, "train": _train, "monitor": _monitor}
    try:
        return asyncio.run(roles[args.role](args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
