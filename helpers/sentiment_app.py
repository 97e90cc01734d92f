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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.nack import Unprocessed

from helpers.connection import configure, connect
from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, make_model, predict_then_learn
from helpers.streams import (
    STOP,
    PublishReport,
    close_client,
    consume,
    json_event,
    publish_records,
    wait_until_subscribed,
)

REVIEWS, METRICS = "reviews", "sentiment-metrics"
END_OF_STREAM = {"end_of_stream": True}


@dataclass
class Trainer:
    """The model service: predict→fit on each review, publish metrics every N reviews."""

    ensign: Ensign | None = None  # the client metrics are published with (run_app sets it)
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
    alerts: list[dict] = field(default_factory=list)
    seen: int = 0
    below: bool = False
    report: Callable[[str], None] = print

    async def handle(self, event: Event) -> object:
        """One metrics event in: alert on the way down through the threshold."""
        snapshot = json.loads(event.data)
        await event.ack()
        self.seen += 1
        rolling = snapshot.get("rolling_accuracy")
        if rolling is not None and rolling < self.threshold and not self.below:
            self.alerts.append(snapshot)
            self.report(f"ALERT after {snapshot['predicted']} reviews: rolling accuracy {rolling:.2f}")
        self.below = rolling is not None and rolling < self.threshold
        return STOP if snapshot.get("final") else None


@dataclass
class AppResult:
    published: PublishReport
    trainer: Trainer
    monitor: Monitor


async def publish_reviews(
    ensign: Ensign, records: Sequence[dict], timeout: float = 300.0, **kwargs
) -> PublishReport:
    """The publisher service: every review, then the end-of-stream marker."""
    await ensign.ensure_topic_exists(REVIEWS)
    report = await publish_records(ensign, REVIEWS, records, timeout=timeout, **kwargs)
    await publish_records(ensign, REVIEWS, [END_OF_STREAM], timeout=30)
    return report


async def run_app(
    connect: Callable[[], Ensign],
    records: Sequence[dict],
    *,
    metrics_every: int = 100,
    threshold: float = 0.60,
    idle_timeout: float = 30.0,
    trainer: Trainer | None = None,
    monitor: Monitor | None = None,
    progress: Callable[[int], None] | None = None,
) -> AppResult:
    """Run the three services together, each with its own client, until the stream ends."""
    publisher, model_client, monitor_client = connect(), connect(), connect()
    for client, topic in ((publisher, REVIEWS), (publisher, METRICS)):
        await client.ensure_topic_exists(topic)
    trainer = trainer or Trainer(model_client, metrics_every=metrics_every)
    trainer.ensign = model_client
    monitor = monitor or Monitor(threshold=threshold)
    try:
        watching = asyncio.create_task(
            consume(monitor_client, METRICS, monitor.handle, idle_timeout=idle_timeout)
        )
        training = asyncio.create_task(
            consume(model_client, REVIEWS, trainer.handle, idle_timeout=idle_timeout)
        )
        await wait_until_subscribed(monitor_client, METRICS)
        await wait_until_subscribed(model_client, REVIEWS)
        published = await publish_reviews(publisher, records, progress=progress)
        await asyncio.gather(training, watching)
    finally:
        for client in (publisher, model_client, monitor_client):
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
    trainer = Trainer(metrics_every=args.metrics_every)

    def step(trainer: Trainer) -> None:
        bar.update(1)
        if trainer.predicted % args.metrics_every == 0:
            plot.add(trainer.predicted, trainer.metrics.snapshot())

    trainer.on_step = step
    monitor = Monitor(threshold=args.threshold, report=tqdm.write)
    started = time.perf_counter()
    result = await run_app(
        connect, records, metrics_every=args.metrics_every, trainer=trainer, monitor=monitor
    )
    seconds = time.perf_counter() - started
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
    for name in (REVIEWS, METRICS):
        await client.ensure_topic_exists(name)
    try:
        await consume(client, topic, handler, idle_timeout=args.idle_timeout)
    finally:
        await close_client(client)


async def _train(args: argparse.Namespace) -> int:
    trainer = Trainer(connect(), metrics_every=args.metrics_every)
    trainer.on_step = lambda t: t.predicted % args.metrics_every or print(t.metrics.snapshot(), flush=True)
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
