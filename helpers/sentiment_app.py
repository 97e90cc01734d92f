"""The streaming sentiment application: publisher → reviews → model → metrics → monitor.

Three services that only know each other through topics, as in the workshop:

* the **publisher** sends each review as a JSON event to ``reviews``, then an
  end-of-stream marker;
* the **trainer** reads ``reviews`` as a member of a consumer group; for each review it
  predicts, is scored, then learns (predict→fit), and every ``metrics_every`` reviews it
  publishes the running metrics to ``sentiment-metrics``; an event that is not JSON or
  lacks ``text``/``label`` is counted as bad input, skipped and nacked. It checkpoints its
  model, so it can be stopped, killed and restarted: it learns every review exactly once;
* the **monitor** subscribes to ``sentiment-metrics`` and raises an alert when the
  rolling accuracy falls under a threshold, once the model has warmed up.

Run all three together (``run_app``, used by lesson 06 and ``make demo``) or each in
its own process against a running server, as three terminals would:
``python -m helpers.sentiment_app train``, ``... monitor``, then ``... publish``.

How the trainer learns each event exactly once (lesson 09): a checkpoint
(``helpers.snapshots``) holds the model, its metrics and the id of the last event they
include, written whole or not at all. The trainer acks events only once a checkpoint
that includes them is stored, so the consumer group's position never runs ahead of the
stored model: after a crash the server sends again everything after the checkpoint.
Events are delivered to a group's member in commit order and RLIDs grow with it, so an
event whose id is not above the checkpoint's is already in the model: it is skipped.
This assumes one trainer per group at a time; a second member would share the events.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.nack import UnknownType

from helpers import snapshots
from helpers.connection import Deployment, configure, connect
from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, examples, make_model, predict_then_learn
from helpers.streams import (
    STOP,
    ConsumeReport,
    PublishReport,
    Subscription,
    close_client,
    consume,
    json_event,
    publish_records,
)

REVIEWS, METRICS = "reviews", "sentiment-metrics"
END_OF_STREAM = {"end_of_stream": True}
TRAINER_GROUP = "trainer"  # the trainer program's consumer group
APP_GROUP = "sentiment-app"  # run_app's, so a run_app never shares events with a trainer program
# Events a trainer takes in between two checkpoints. It acks them only once the checkpoint that
# includes them is stored, so it holds up to this many unacked: this must stay below the server's
# bound on unacked events per group member (local_ensign's --max-unacked, 10,000 by default), or
# the server stops sending before the next checkpoint is due. Each checkpoint pickles the whole
# model (seconds once it has learned the corpus), which is why they are not more frequent.
CHECKPOINT_EVERY = 5_000
WARM_UP = 2_000  # predictions before the monitor may alert (see Monitor)


def _review(event: Event) -> dict | None:
    """The review an event holds, END_OF_STREAM for the marker, or None for bad input."""
    try:
        record = json.loads(event.data)
        if record.get("end_of_stream"):
            return END_OF_STREAM
        text, label = record["text"], record["label"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(text, str) or label not in ("positive", "negative"):
        return None
    return record


async def topic_end(ensign: Ensign, topic: str) -> tuple[bytes, int]:
    """The id of the newest event stored in ``topic`` (``b""`` if none) and how many it holds."""
    topic_id = await ensign.topic_id(topic)
    info = await ensign.info([topic_id])
    if not info.topics:
        return b"", 0
    return bytes(info.topics[0].event_offset_id), info.topics[0].events


def _quiet(message: str) -> None:
    """The default ``log``: say nothing."""


@dataclass
class Trainer:
    """The model service: predict→fit on each review exactly once, metrics every N reviews.

    ``ensign`` is its client: it reads ``reviews`` as a member of the consumer group
    ``group`` and publishes its metrics with it. Its checkpoint is the file
    ``<checkpoint_dir>/<group>.snapshot``. ``on_step(trainer)`` is called after each
    prediction (for a progress bar or a live plot); ``log(message)`` gets a line when it
    starts and at each checkpoint.

    A trainer without a checkpoint starts after the events already in ``reviews``, as a
    live tail would, and stores that position as its first checkpoint (a group new to the
    server still sends it those events, from the earliest: it skips them, one pass over
    the topic). With a checkpoint, it resumes where the checkpoint stops. One trainer per
    group at a time: a second member would share the events. ``predicted``, ``bad_input``
    and ``metrics`` count every event the model includes, across restarts; ``skipped``
    counts the events this process was sent again and did not learn again.
    """

    ensign: Ensign
    checkpoint_dir: Path
    group: str = TRAINER_GROUP
    checkpoint_every: int = CHECKPOINT_EVERY
    metrics_every: int = 100
    on_step: Callable[[Trainer], None] | None = None
    log: Callable[[str], None] = _quiet
    model: Any = field(default_factory=make_model)
    metrics: StreamMetrics = field(default_factory=StreamMetrics)
    predicted: int = 0
    bad_input: int = 0
    last_event_id: bytes = b""  # the newest event the model includes
    version: int = 0  # checkpoints stored so far, by this trainer and those before it
    resumed_from: int = 0  # reviews the checkpoint it started from had learned
    skipped: int = 0
    started: bool = False
    history: list[dict] = field(default_factory=list)
    # Events the model includes but no stored checkpoint does yet, and whether each was a review
    # (acked once a checkpoint includes it) or bad input (nacked then).
    unsettled: collections.deque[tuple[Event, bool]] = field(default_factory=collections.deque, repr=False)
    saved_event_id: bytes = b""  # the newest event the stored checkpoint includes

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) / f"{self.group}.snapshot"

    async def start(self) -> None:
        """Resume from the checkpoint; without one, start after the events already in ``reviews``."""
        saved = snapshots.load(self.checkpoint_path)
        if saved is None:
            self.last_event_id, events = await topic_end(self.ensign, REVIEWS)
            self.started = True
            self.save_checkpoint()
            self.log(
                f"new trainer in group {self.group!r}: no checkpoint yet, so it starts after "
                f"the {events:,} events already in {REVIEWS!r}"
            )
            return
        self.model, self.last_event_id, self.predicted = saved.model, saved.last_event_id, saved.learned
        self.metrics, self.bad_input = saved.metrics["scores"], saved.metrics["bad_input"]
        self.version, self.resumed_from = saved.version, saved.learned
        self.saved_event_id = saved.last_event_id
        self.started = True
        self.log(f"resumed from checkpoint {saved.version}: {saved.learned:,} reviews learned")

    async def handle(self, event: Event) -> object:
        """One event in: skip it if the model has it, else predict, score and learn, or count bad input.

        Nothing is acked here: :meth:`checkpoint` settles the events once they are stored.
        The state changes before the first ``await``, so a cancelled handler leaves the
        model and the events to settle in step.
        """
        event_id = event.id.bytes
        if event_id <= self.last_event_id:
            self.skipped += 1  # sent again after a restart, and in the model already
            if event_id <= self.saved_event_id:
                await event.ack()  # a stored checkpoint includes it
            else:
                self.unsettled.append((event, True))
            return None
        self.last_event_id = event_id
        record = _review(event)
        self.unsettled.append((event, record is not None))
        if record is END_OF_STREAM:
            await self.publish_metrics(final=True)
            await self.checkpoint()
            return STOP
        if record is None:
            self.bad_input += 1
        else:
            predict_then_learn(self.model, self.metrics, record["text"], record["label"] == "positive")
            self.predicted += 1
            if self.on_step:
                self.on_step(self)
            if self.predicted % self.metrics_every == 0:
                await self.publish_metrics()
        if len(self.unsettled) >= self.checkpoint_every:
            await self.checkpoint()
        return None

    def save_checkpoint(self) -> None:
        """Store the model, its metrics and the id of the newest event they include, atomically."""
        self.version += 1
        snapshot = snapshots.Snapshot(
            model=self.model,
            last_event_id=self.last_event_id,
            learned=self.predicted,
            version=self.version,
            metrics={"scores": self.metrics, "bad_input": self.bad_input},
        )
        Path(self.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        snapshots.save(snapshot, self.checkpoint_path)
        self.saved_event_id = self.last_event_id

    async def checkpoint(self) -> None:
        """Store a checkpoint, then ack the reviews and nack the bad input it includes.

        The order is the point: an event acked before the checkpoint that includes it is
        stored would be lost by a crash in between (the server would not send it again).
        Bad input is nacked ``UnknownType``, which the server does not redeliver.
        """
        if not self.started:
            return  # nothing loaded or learned yet: a checkpoint would start the trainer over
        started = time.perf_counter()
        self.save_checkpoint()
        count = len(self.unsettled)
        self.log(
            f"checkpoint {self.version} stored in {time.perf_counter() - started:.1f} s: "
            f"{self.predicted:,} reviews learned; acking the {count:,} event{'s' * (count != 1)} it adds"
        )
        while self.unsettled:
            event, is_review = self.unsettled.popleft()
            if is_review:
                await event.ack()
            else:
                await event.nack(UnknownType)

    async def publish_metrics(self, final: bool = False) -> None:
        """Send the running metrics to the metrics topic (no wait for the ack)."""
        figures = {**self.metrics.snapshot(), "predicted": self.predicted, "bad_input": self.bad_input}
        figures["final"] = final
        self.history.append(figures)
        await self.ensign.publish(METRICS, json_event(figures))

    async def run(self, idle_timeout: float, *, crash_after: int | None = None) -> ConsumeReport:
        """Read ``reviews`` until the end-of-stream marker or ``idle_timeout`` seconds without an event.

        Starts the trainer if :meth:`start` was not called. On a quiet stream it stores a
        checkpoint before returning. ``crash_after`` is for demonstrations: return once
        that many reviews are learned in all, without a checkpoint, as a crash would.
        """
        for topic in (REVIEWS, METRICS):
            await self.ensign.ensure_topic_exists(topic)
        if not self.started:
            await self.start()

        async def handle(event: Event) -> object:
            outcome = await self.handle(event)
            return STOP if crash_after is not None and self.predicted >= crash_after else outcome

        group = ConsumerGroup(name=self.group)
        async with Subscription(self.ensign, REVIEWS, consumer_group=group) as reviews:
            report = await consume(reviews, handle, idle_timeout=idle_timeout)
        if report.reason == "idle" and self.unsettled:
            await self.checkpoint()
        return report


@dataclass
class Monitor:
    """The alerting service: warns when rolling accuracy drops under ``threshold``.

    No alert before ``warm_up`` predictions: a model that has seen a few hundred reviews
    scores poorly whatever the stream holds, and that cold start should page no one. A
    metrics event no newer than the last one (a restarted trainer publishes again the
    metrics of what it learns again after its checkpoint) is counted in ``repeated`` and
    otherwise ignored, so it cannot raise the same alert twice.
    """

    threshold: float = 0.60
    warm_up: int = WARM_UP
    on_alert: Callable[[str], None] = print  # gets each alert's message
    alerts: list[dict] = field(default_factory=list)
    seen: int = 0
    repeated: int = 0
    below: bool = False
    last_predicted: int = -1

    async def handle(self, event: Event) -> object:
        """One metrics event in: alert on the way down through the threshold, once warmed up."""
        figures = json.loads(event.data)
        await event.ack()
        self.seen += 1
        final, predicted = bool(figures.get("final")), figures.get("predicted", 0)
        if predicted <= self.last_predicted and not final:
            self.repeated += 1
            return None
        self.last_predicted = predicted
        rolling = figures.get("rolling_accuracy")
        if predicted >= self.warm_up and rolling is not None:
            if rolling < self.threshold and not self.below:
                self.alerts.append(figures)
                self.on_alert(
                    f"ALERT after {predicted:,} reviews: rolling accuracy {rolling:.2f}, "
                    f"under {self.threshold:.2f}"
                )
            self.below = rolling < self.threshold
        return STOP if final else None


@dataclass
class AppResult:
    published: PublishReport
    trainer: Trainer  # the trainer that saw the stream end
    monitor: Monitor
    stopped: Trainer | None = None  # the trainer stopped mid-stream, when run_app was asked to restart it


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
    warm_up: int = WARM_UP,
    idle_timeout: float = 30.0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    restart_after: int | None = None,
    on_step: Callable[[Trainer], None] | None = None,
    on_alert: Callable[[str], None] = print,
    log: Callable[[str], None] = _quiet,
) -> AppResult:
    """Run the three services together, each with its own client, until the stream ends.

    ``new_client()`` makes each service's client (``helpers.connection.connect`` does).
    The trainer keeps its checkpoint in ``checkpoint_dir``: a later run with the same
    directory carries on with the same model; without one, it uses a temporary directory
    and starts with a fresh model, after the events already in ``reviews``. With
    ``restart_after=N`` the trainer stops once it has learned N reviews, without a
    checkpoint, as a crash would, and a new trainer with a new client takes over from the
    checkpoint. ``on_step`` and ``log`` go to the trainers, ``on_alert`` to the monitor.
    """
    publisher, monitor_client = new_client(), new_client()
    clients = [publisher, monitor_client]
    monitor = Monitor(threshold=threshold, warm_up=warm_up, on_alert=on_alert)
    with contextlib.ExitStack() as stack:
        if checkpoint_dir is None:
            checkpoint_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="trainer-"))

        def new_trainer() -> Trainer:
            clients.append(new_client())
            return Trainer(
                clients[-1],
                Path(checkpoint_dir),
                group=APP_GROUP,
                checkpoint_every=checkpoint_every,
                metrics_every=metrics_every,
                on_step=on_step,
                log=log,
            )

        trainer, stopped = new_trainer(), None

        async def train() -> None:
            nonlocal trainer, stopped
            if restart_after:
                await trainer.run(idle_timeout, crash_after=restart_after)
                if trainer.predicted < restart_after:
                    return  # the stream ended first
                # Its unacked events go back to the group. Its subscription stopped being read with a
                # full buffer, which holds close() up (see close_client): a crash would not wait.
                await close_client(trainer.ensign, timeout=1.0)
                log(f"trainer stopped after {trainer.predicted:,} reviews, without a checkpoint")
                stopped, trainer = trainer, new_trainer()
            await trainer.run(idle_timeout)

        try:
            for topic in (REVIEWS, METRICS):
                await publisher.ensure_topic_exists(topic)
            # The trainer takes its place in the stream, and the monitor opens its live tail,
            # before the first review is published.
            await trainer.start()
            async with Subscription(monitor_client, METRICS) as metrics:
                _, _, published = await asyncio.gather(
                    train(),
                    consume(metrics, monitor.handle, idle_timeout=idle_timeout),
                    publish_reviews(publisher, records),
                )
        finally:
            for client in clients:
                await close_client(client)
    return AppResult(published, trainer, monitor, stopped)


def single_pass(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The metrics of predict→fit over ``records`` in one pass, in memory: no Ensign, no restart."""
    model, scores = make_model(), StreamMetrics()
    for x, y in examples(records):
        predict_then_learn(model, scores, x, y)
    return scores.snapshot()


# The program: python -m helpers.sentiment_app demo | publish | train | monitor -----------


def _records(args: argparse.Namespace) -> list[dict]:
    records = shuffled(load_records())
    return records[: args.limit] if args.limit else records


def default_checkpoint_dir(deployment: Deployment) -> Path:
    """Where the trainer program keeps its checkpoint unless told: next to the local server's data.

    The checkpoint goes with the server's consumer-group positions, so a new data
    directory means a new trainer too. For another deployment: ``.checkpoints/``.
    """
    if not deployment.local:
        return Path(".checkpoints")
    from local_ensign.discovery import default_data_dir  # only the local server needs it

    return default_data_dir() / "checkpoints"


def _describe(figures: Mapping[str, float]) -> str:
    """A metrics snapshot as one readable line."""
    return (
        f"accuracy {figures['accuracy']:.3f}, rolling {figures['rolling_accuracy']:.3f}, "
        f"precision {figures['precision']:.3f}, recall {figures['recall']:.3f}"
    )


def _row(label: str, figure: str, note: str) -> None:
    """One line of the demo's summary: a label, a right-aligned figure, a note."""
    print(f"{label:<22}{figure:>9}   {note}".rstrip())


async def _demo(args: argparse.Namespace) -> int:
    """Run the app over the corpus, restarting the trainer mid-stream, and check it against one pass."""
    import concurrent.futures
    import multiprocessing

    from tqdm import tqdm  # the demo alone needs these two, and matplotlib is slow to import

    from helpers.plotting import LivePlot

    deployment = configure()
    records = _records(args)
    restart_after = len(records) // 2 if args.restart_after is None else args.restart_after
    plot = LivePlot(
        title="Streaming sentiment: metrics as the model learns", display=False, threshold=args.threshold
    )
    bar = tqdm(total=len(records), unit="review", desc="predict→fit")

    def step(trainer: Trainer) -> None:
        if trainer.predicted > bar.n:  # after the restart, the reviews learned again are not progress
            bar.update(trainer.predicted - bar.n)
            if trainer.predicted % args.metrics_every == 0:
                plot.add(trainer.predicted, trainer.metrics.snapshot())

    # The reference, one pass in memory, runs meanwhile in a process of its own (spawned: forking a
    # process that runs gRPC is unsafe).
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        reference = asyncio.get_running_loop().run_in_executor(pool, single_pass, records)
        started = time.perf_counter()
        result = await run_app(
            lambda: connect(deployment),
            records,
            metrics_every=args.metrics_every,
            threshold=args.threshold,
            restart_after=restart_after or None,
            on_step=step,
            on_alert=tqdm.write,
            log=tqdm.write,
        )
        seconds = time.perf_counter() - started
        expected = await reference
    trainer, monitor, stopped, published = result.trainer, result.monitor, result.stopped, result.published
    bar.close()
    plot.add(trainer.predicted, trainer.metrics.snapshot())
    plot.close()
    plot.save(args.plot)
    final = trainer.metrics.snapshot()
    print(f"\nEnsign at {deployment.endpoint} ({'local server' if deployment.local else 'remote'})")
    answers = f"acked {published.acked:,}, nacked {published.nacked:,}"
    _row("events published", f"{published.published:,}", answers)
    if stopped is not None:
        lost = stopped.predicted - trainer.resumed_from
        resumed, learned_here = f"{trainer.resumed_from:,}", f"{trainer.predicted - trainer.resumed_from:,}"
        _row("trainer stopped after", f"{stopped.predicted:,}", "without a checkpoint, as a crash would")
        _row("resumed from", resumed, f"its last checkpoint: the {lost:,} reviews after it came again")
        skipped = f"skipped {trainer.skipped:,} sent again but in the checkpoint"
        _row("learned after restart", learned_here, skipped)
    once = trainer.predicted == published.acked - trainer.bad_input
    verdict = "each exactly once" if once else "NOT each exactly once"
    bad = f"bad input nacked {trainer.bad_input:,}"
    _row("reviews in the model", f"{trainer.predicted:,}", f"{verdict}; {bad}")
    figures = {"accuracy": "accuracy", "precision": "precision (positive)", "recall": "recall (positive)"}
    for key, name in figures.items():
        _row(name, f"{final[key]:.3f}", f"single pass in memory: {expected[key]:.3f}")
    same = final == expected
    _row("metrics vs one pass", "identical" if same else "DIFFERENT", "every figure, to the last bit")
    alerts = f"rolling accuracy under {args.threshold:.2f}, after {monitor.warm_up:,} predictions"
    _row("alerts raised", f"{len(monitor.alerts):,}", alerts)
    rate = published.published / seconds
    _row("events per second", f"{rate:,.0f}", f"{seconds:.1f} s, publish to last metric, restart included")
    _row("plot", "", args.plot)
    return 0 if published.settled and once and same else 1


async def _publish(args: argparse.Namespace) -> int:
    client = connect()
    try:
        report = await publish_reviews(client, _records(args))
    finally:
        await close_client(client)
    print(f"published {report.published:,} reviews: {report.acked:,} acked, {report.nacked:,} nacked")
    return 0 if report.settled else 1


def _say(message: str) -> None:
    print(message, flush=True)


async def _train(args: argparse.Namespace) -> int:
    deployment = configure()

    def progress(trainer: Trainer) -> None:
        if trainer.predicted % args.metrics_every == 0:
            _say(f"{trainer.predicted:>8,} reviews learned: {_describe(trainer.metrics.snapshot())}")

    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else default_checkpoint_dir(deployment)
    trainer = Trainer(
        connect(deployment),
        checkpoint_dir,
        group=args.group,
        checkpoint_every=args.checkpoint_every,
        metrics_every=args.metrics_every,
        on_step=progress,
        log=_say,
    )
    _say(f"training on {REVIEWS!r} as group {args.group!r}, checkpoints in {checkpoint_dir} (Ctrl-C stops)")
    try:
        report = await trainer.run(args.idle_timeout)
    except asyncio.CancelledError:  # Ctrl-C: store what was learned, so the next trainer goes on from here
        await trainer.checkpoint()
        raise
    finally:
        await close_client(trainer.ensign)
    learned_here = trainer.predicted - trainer.resumed_from
    in_model = f"{trainer.predicted:,} reviews in the model"
    _say(f"stopped ({report.reason}): {in_model}, {learned_here:,} learned here")
    _say(f"skipped {trainer.skipped:,} events sent again that the model had; bad input {trainer.bad_input:,}")
    _say(f"final metrics: {_describe(trainer.metrics.snapshot())}")
    return 0


async def _monitor(args: argparse.Namespace) -> int:
    monitor = Monitor(threshold=args.threshold, warm_up=args.warm_up, on_alert=_say)
    client = connect()
    under = f"rolling accuracy under {args.threshold:.2f} after {args.warm_up:,} predictions"
    _say(f"watching {METRICS!r} for {under} (Ctrl-C stops)")
    try:
        await client.ensure_topic_exists(METRICS)
        async with Subscription(client, METRICS) as metrics:
            report = await consume(metrics, monitor.handle, idle_timeout=args.idle_timeout)
    finally:
        await close_client(client)
    repeats = f", {monitor.repeated:,} repeated by a restarted trainer" if monitor.repeated else ""
    events = f"{monitor.seen:,} metrics events{repeats}"
    _say(f"stopped ({report.reason}): {events}, {len(monitor.alerts):,} alerts")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.sentiment_app", description=__doc__.splitlines()[0]
    )
    parser.add_argument("role", choices=("demo", "publish", "train", "monitor"))
    parser.add_argument("--limit", type=int, default=0, help="publish only the first N shuffled reviews")
    parser.add_argument("--metrics-every", type=int, default=100, help="publish metrics every N reviews")
    parser.add_argument("--threshold", type=float, default=0.60, help="alert under this rolling accuracy")
    parser.add_argument("--warm-up", type=int, default=WARM_UP, help="no alert before N predictions")
    parser.add_argument(
        "--idle-timeout", type=float, default=3600.0, help="stop after this many idle seconds"
    )
    parser.add_argument("--group", default=TRAINER_GROUP, help="the trainer's consumer group")
    parser.add_argument(
        "--checkpoint-dir", help="where the trainer keeps its checkpoint (default: in the server's data)"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=CHECKPOINT_EVERY,
        help="events between checkpoints; keep it under the server's --max-unacked",
    )
    parser.add_argument(
        "--restart-after", type=int, help="the demo restarts its trainer after N reviews (0: never)"
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
