"""What durability costs: a durable local Ensign server against an in-memory one.

Run it as ``python benchmarks/server_throughput.py [--events N] [--repeats R] [--sync full|normal]``.

One run starts two ``local_ensign`` servers, each in its own process: one with the
durable SQLite store (WAL, group commit; with ``--sync full``, the default, an fsync
before every ack, with ``--sync normal`` fsyncs only at checkpoints) and one that keeps
events in memory only (same service code otherwise). Against each, with the real,
unmodified ``pyensign`` client, it measures:

1. publish throughput with acks (events/s): one client publishes N small JSON
   events (review-like records of about 150 bytes) to a fresh topic; the timer runs
   from the first ``publish()`` call to the last ack. The same run gives the
   publish→ack latency *under load*, which is mostly the time an event waits in
   queues (the client's, then the server's) behind the events published before it.
2. publish→ack latency (p50, p99, ms) in a separate *paced* run: events are published
   at a fixed rate well below saturation, each timed from its ``publish()`` call to
   its ack; this is the latency a live application sees.
3. subscribe delivery throughput (events/s): a subscriber (its own client, acking each
   event) receives N events that another client publishes meanwhile; the timer runs
   from the first measured event received to the Nth. The end-to-end figure (first
   publish to Nth received) is printed too.
4. CPU time per event, over the throughput runs of 1 and 3: the server process's
   (user + system, all its threads) and this benchmark process's, where the clients
   run (time.process_time). In the delivery run both include the publishing as well
   as the delivering, and the client figure covers the publisher and the subscriber.
5. the same delivery run twice more, each on a fresh topic: once with a subscriber
   that does not ack (live tail without acks), once with a subscriber that joins a
   new consumer group (``ConsumerGroup(name=...)``) as its only member and acks each
   event (grouped delivery). A new group starts at the topic's earliest event, so the
   member first gets the warm-up events, then the measured ones as they are committed.
6. query throughput (events/s): ``SELECT * FROM <topic>`` over the topic the live
   tail without acks just filled (its warm-up events and N events), from the
   ``query()`` call until the whole cursor has been read.

Why a ratio: the Python client, not the server, is the bottleneck. Against a minimal
server that does nothing but answer, pyensign reaches about 3,000 events/s published
with acks and about 2,300 events/s delivered on the 2-core machine this was written
on. Absolute numbers therefore say little about the server; the ratio durable /
in-memory says what durability costs. The target is a ratio of at least 0.9 for both
throughputs.

The same reasoning, within one store, for the two ways of reading other than a live
tail: grouped delivery / live-tail delivery with acks (both ack every event) says what
a consumer group costs, target at least 0.9; query / live-tail delivery without acks
(neither acks) says whether the server streams stored events at least as fast as the
client takes them, target at least 1.0. Each pair runs back to back in every repeat.

Why CPU time: on a small shared machine client and server compete for the cores with
each other and with whatever else runs, so the throughput ratio swings by ±15 %
between runs. What durability adds to the server's CPU cost per event is what moves
that ratio, and CPU time depends far less on the load. It is read from ``/proc/<pid>/stat``,
so it is Linux-only (psutil is used instead where there is no ``/proc``; without
either the CPU rows show nan); its resolution is one clock tick (usually 10 ms, which
is 2.5 µs per event over a run of 4,000 events). CPU time is steadier than throughput,
not immune: a busy machine inflates it (shared caches), so the table takes the median
of the repeats here too. It does not include time spent waiting for the disk (an
fsync), which slows a durable server without costing CPU.

Repeats alternate the stores (sqlite, memory, sqlite, memory, ...) so that drift in
machine load affects both alike; the table shows the median of the repeats for the
throughputs and CPU time per event, and percentiles over all repeats' samples for the
latencies. Every wait is bounded: on a timeout the script says what had arrived
and exits with status 1. It exits 0 otherwise, whatever the figures: it reports, it does
not test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version

import grpc
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign
from pyensign.events import Event

from local_ensign.launcher import LaunchError, LocalEnsign

STORES = ("sqlite", "memory")
STORE_LABELS = {"sqlite": "durable (sqlite)", "memory": "in-memory"}
TARGET_RATIO = 0.9
# (label, numerator, denominator, target): ratios of two scenarios run against the same store
SCENARIO_RATIOS = (
    ("grouped delivery / live tail, both with acks", "group_per_s", "deliver_per_s", 0.9),
    ("query / live tail without acks", "query_per_s", "deliver_noack_per_s", 1.0),
)
WARMUP_MARK = b'{"warmup"'
SYNC_MODES = {
    "full": "SQLite fsyncs every commit: acked events survive a power cut",
    "normal": "SQLite fsyncs only at checkpoints: acked events survive a killed server, not a power cut",
}
LOG_PROBLEMS = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Fatal")


class BenchmarkError(RuntimeError):
    """A measurement could not finish (a timeout, a nack, a dead server)."""


# CPU time ----------------------------------------------------------------------------


def _proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15


def _psutil_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid``, from psutil (where there is no ``/proc``)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error as err:
        raise OSError(str(err)) from err
    return times.user + times.system


def cpu_reader() -> tuple[str, Callable[[int], float] | None]:
    """Where a process's CPU time comes from (a name for the header) and the function reading it."""
    if os.path.exists("/proc/self/stat"):
        return "/proc/<pid>/stat", _proc_cpu_seconds
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "unavailable (needs Linux /proc or psutil)", None
    return "psutil", _psutil_cpu_seconds


CPU_SOURCE, READ_CPU = cpu_reader()


@dataclass(frozen=True)
class CpuClock:
    """CPU seconds used so far by the server process and by this process (the clients)."""

    server: float
    client: float

    @classmethod
    def read(cls, server: LocalEnsign) -> CpuClock:
        """Both clocks now; the server's is nan if it cannot be read on this system."""
        client = time.process_time()
        if READ_CPU is None or server.process is None:
            return cls(math.nan, client)
        try:
            return cls(READ_CPU(server.process.pid), client)
        except OSError as err:
            raise BenchmarkError(f"cannot read the {server.store} server's CPU time ({err})") from None

    def per_event_us(self, earlier: CpuClock, count: int) -> tuple[float, float]:
        """Server and client CPU µs per event between ``earlier`` and this reading."""
        return (
            (self.server - earlier.server) / count * 1e6,
            (self.client - earlier.client) / count * 1e6,
        )


# Events ------------------------------------------------------------------------------


def review_record(seq: int) -> dict:
    """A small review-like record (about 150 bytes of JSON); ``seq`` numbers it."""
    return {
        "seq": seq,
        "product": f"B{seq * 7919 % 10**9:09d}",
        "user": f"u{seq * 104729 % 10**6:06d}",
        "rating": 1 + seq % 5,
        "summary": "Works as described",
        "text": "Arrived on time, sturdy, does the job; would buy again.",
    }


def make_events(count: int) -> list[Event]:
    """``count`` numbered JSON events, built before any timer starts."""
    return [
        Event(json.dumps(review_record(seq)).encode("utf-8"), mimetype="application/json")
        for seq in range(count)
    ]


def warmup_event(seq: int) -> Event:
    """An event the subscriber recognises as warm-up and does not count."""
    return Event(json.dumps({"warmup": seq}).encode("utf-8"), mimetype="application/json")


# Bounded waiting ---------------------------------------------------------------------


async def bounded(awaitable: Awaitable, seconds: float, what: str, status: Callable[[], str]) -> object:
    """Await ``awaitable`` for at most ``seconds``; on a timeout raise BenchmarkError with ``status()``."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise BenchmarkError(f"timed out after {seconds:g}s {what}; {status()}") from None


async def open_client(server: LocalEnsign, topic: str, timeout: float) -> Ensign:
    """A new pyensign client for ``server``, with ``topic`` created."""
    ensign = Ensign(**server.client_kwargs())
    await bounded(ensign.ensure_topic_exists(topic), timeout, f"creating topic {topic}", lambda: "")
    return ensign


async def close_client(ensign: Ensign, timeout: float, role: str) -> None:
    """Close a client, bounded: pyensign's close() waits for its streams to finish."""
    await bounded(ensign.close(), timeout, f"closing the {role} client", lambda: "pyensign did not return")


# Publishing with acks ------------------------------------------------------------------


@dataclass
class AckTracker:
    """Publish and ack times of one publish stream, in order (the server acks in order)."""

    events: list[Event]
    sent: list[float] = field(default_factory=list)
    acked: list[float] = field(default_factory=list)
    out_of_order: int = 0
    nacks: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0

    async def on_ack(self, ack) -> None:
        """Record the ack time and check that the ack is for the next event sent."""
        index = len(self.acked)
        self.acked.append(time.perf_counter())
        if index >= len(self.events) or self.events[index].id != ack.id:
            self.out_of_order += 1
        self._check_done()

    async def on_nack(self, nack) -> None:
        """Record the nack; it ends the measurement as a failure."""
        self.nacks.append(f"code {nack.code}: {nack.error}")
        self.done.set()

    def expect(self, count: int) -> None:
        """Wait for acks up to ``count`` events in total (warm-up included)."""
        self.target = count
        self.done.clear()
        self._check_done()

    def _check_done(self) -> None:
        if len(self.acked) >= self.target:
            self.done.set()

    def status(self) -> str:
        """What has happened so far, for error messages."""
        return f"{len(self.sent)} events published, {len(self.acked)} acked, {len(self.nacks)} nacked"

    async def wait(self, timeout: float, what: str) -> None:
        """Wait for the expected acks; raise on a timeout or a nack."""
        await bounded(self.done.wait(), timeout, what, self.status)
        if self.nacks:
            raise BenchmarkError(f"the server nacked events ({self.status()}): {self.nacks[0]}")

    def latencies_ms(self, start: int) -> list[float]:
        """Publish→ack latency of each event from index ``start`` on."""
        return [(a - s) * 1000 for s, a in zip(self.sent[start:], self.acked[start:], strict=True)]


async def publish_one_by_one(
    ensign: Ensign, topic: str, tracker: AckTracker, events: list[Event], pace: float | None = None
) -> None:
    """Publish ``events`` in order, recording each call time; with ``pace``, at that many per second."""
    start = time.perf_counter()
    for index, event in enumerate(events):
        if pace:
            delay = start + index / pace - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        tracker.events.append(event)
        tracker.sent.append(time.perf_counter())
        await ensign.publish(topic, event, on_ack=tracker.on_ack, on_nack=tracker.on_nack)


async def open_publisher(ensign: Ensign, topic: str, timeout: float) -> AckTracker:
    """Open the publish stream with one warm-up event and wait for its ack (outside any timer)."""
    tracker = AckTracker(events=[])
    await bounded(
        publish_one_by_one(ensign, topic, tracker, [warmup_event(0)]),
        timeout,
        "opening the publish stream",
        tracker.status,
    )
    tracker.expect(1)
    await tracker.wait(timeout, "waiting for the warm-up ack")
    return tracker


@dataclass
class PublishResult:
    """Outcome of one publish run."""

    events_per_s: float
    latencies_ms: list[float]
    out_of_order: int
    longest_gap_ms: float  # longest wait between two consecutive acks: a stall shows here
    server_cpu_us: float  # per event, from the first publish() call to the last ack
    client_cpu_us: float


async def measure_publish(
    server: LocalEnsign, count: int, timeout: float, pace: float | None = None
) -> PublishResult:
    """Publish ``count`` events to a fresh topic and time them until the last ack."""
    topic = f"bench-publish-{time.time_ns()}"
    ensign = await open_client(server, topic, timeout)
    try:
        tracker = await open_publisher(ensign, topic, timeout)
        events = make_events(count)
        first = len(tracker.sent)
        tracker.expect(first + count)
        cpu_before = CpuClock.read(server)
        await bounded(
            publish_one_by_one(ensign, topic, tracker, events, pace), timeout, "publishing", tracker.status
        )
        await tracker.wait(timeout, "waiting for acks")
        server_cpu_us, client_cpu_us = CpuClock.read(server).per_event_us(cpu_before, count)
        seconds = tracker.acked[-1] - tracker.sent[first]
        return PublishResult(
            count / seconds,
            tracker.latencies_ms(first),
            tracker.out_of_order,
            longest_gap_ms(tracker.acked[first:]),
            server_cpu_us,
            client_cpu_us,
        )
    finally:
        await close_client(ensign, timeout, "publishing")


# Subscribing -----------------------------------------------------------------------


@dataclass
class Delivery:
    """What a subscriber has received: warm-up events and measured events."""

    target: int
    warmups: int = 0
    payloads: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    warm: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self) -> str:
        """What has arrived so far, for error messages."""
        return f"subscriber got {self.warmups} warm-up and {len(self.payloads)} of {self.target} events"


async def consume(
    ensign: Ensign, topic: str, delivery: Delivery, ack: bool = True, group: ConsumerGroup | None = None
) -> None:
    """Receive (and with ``ack``, ack) events until ``delivery.target`` measured events have arrived."""
    async for event in ensign.subscribe(topic, consumer_group=group):
        received = time.perf_counter()
        if ack:
            await event.ack()
        if event.data.startswith(WARMUP_MARK):
            delivery.warmups += 1
            delivery.warm.set()
            continue
        delivery.times.append(received)
        delivery.payloads.append(event.data)
        if len(delivery.payloads) >= delivery.target:
            delivery.done.set()
            return


async def wait_until_subscribed(
    ensign: Ensign, topic: str, tracker: AckTracker, delivery: Delivery, timeout: float
) -> None:
    """Publish a warm-up event every 0.25 s until the subscriber receives one."""
    deadline = time.monotonic() + timeout
    while not delivery.warm.is_set():
        if time.monotonic() > deadline:
            raise BenchmarkError(
                f"timed out after {timeout:g}s waiting for the subscription; {delivery.status()}"
            )
        await bounded(
            publish_one_by_one(ensign, topic, tracker, [warmup_event(len(tracker.sent))]),
            timeout,
            "publishing a warm-up event",
            tracker.status,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(delivery.warm.wait(), 0.25)


def delivery_problems(payloads: list[bytes]) -> str:
    """'' if the measured events arrived once each and in order, else what went wrong."""
    seqs = [json.loads(payload)["seq"] for payload in payloads]
    if seqs == list(range(len(seqs))):
        return ""
    duplicates = len(seqs) - len(set(seqs))
    missing = len(set(range(len(seqs))) - set(seqs))
    order = "kept" if seqs == sorted(seqs) else "broken"
    return f"{duplicates} duplicates, {missing} missing, order {order}"


@dataclass
class DeliveryResult:
    """Outcome of one subscribe run."""

    events_per_s: float
    end_to_end_per_s: float
    longest_gap_ms: float  # longest wait between two consecutive deliveries
    problems: str
    server_cpu_us: float  # per event, from the first publish() call to the Nth delivery and last ack
    client_cpu_us: float  # the publishing and the subscribing client together
    topic: str  # holds the warm-up events and the ``count`` measured ones afterwards


async def measure_delivery(
    server: LocalEnsign, count: int, timeout: float, ack: bool = True, grouped: bool = False
) -> DeliveryResult:
    """Time the delivery of ``count`` events to a live subscriber while another client publishes them.

    With ``ack`` False the subscriber does not ack; with ``grouped`` it is the only
    member of a new consumer group, which also hands it the warm-up events published
    before it joined (a new group starts at the earliest event).
    """
    topic = f"bench-deliver-{time.time_ns()}"
    publisher = await open_client(server, topic, timeout)
    subscriber = Ensign(**server.client_kwargs())
    delivery = Delivery(target=count)
    group = ConsumerGroup(name=f"group-{topic}") if grouped else None
    consuming = asyncio.create_task(consume(subscriber, topic, delivery, ack, group), name="subscriber")
    try:
        tracker = await open_publisher(publisher, topic, timeout)
        await wait_until_subscribed(publisher, topic, tracker, delivery, timeout)
        events = make_events(count)
        first = len(tracker.sent)
        tracker.expect(first + count)
        cpu_before = CpuClock.read(server)
        await bounded(
            publish_one_by_one(publisher, topic, tracker, events),
            timeout,
            "publishing",
            lambda: f"{tracker.status()}; {delivery.status()}",
        )
        await bounded(
            _first_done(delivery.done, consuming),
            timeout,
            "waiting for delivery",
            lambda: f"{tracker.status()}; {delivery.status()}",
        )
        if consuming.done() and not delivery.done.is_set():
            raise BenchmarkError(
                f"the subscription ended early ({consuming.exception()!r}); {delivery.status()}"
            )
        await tracker.wait(timeout, "waiting for the publisher's acks")
        server_cpu_us, client_cpu_us = CpuClock.read(server).per_event_us(cpu_before, count)
        return DeliveryResult(
            events_per_s=(count - 1) / (delivery.times[-1] - delivery.times[0]),
            end_to_end_per_s=count / (delivery.times[-1] - tracker.sent[first]),
            longest_gap_ms=longest_gap_ms(delivery.times),
            problems=delivery_problems(delivery.payloads),
            server_cpu_us=server_cpu_us,
            client_cpu_us=client_cpu_us,
            topic=topic,
        )
    finally:
        await stop_task(consuming, timeout)
        await close_client(publisher, timeout, "publishing")
        await close_client(subscriber, timeout, "subscribing")


@dataclass
class QueryResult:
    """Outcome of one query run."""

    events_per_s: float  # every event received (warm-up ones too), from the query() call to the last
    problems: str
    server_cpu_us: float  # per event received


async def measure_query(server: LocalEnsign, topic: str, count: int, timeout: float) -> QueryResult:
    """Time ``SELECT * FROM topic`` read to the end (``topic``: warm-ups, then ``count`` measured events)."""
    ensign = Ensign(**server.client_kwargs())
    received: list[Event] = []

    async def read_all() -> None:
        cursor = await ensign.query(f"SELECT * FROM {topic}")
        async for event in cursor:
            received.append(event)

    try:
        cpu_before = CpuClock.read(server)
        started = time.perf_counter()
        await bounded(read_all(), timeout, "reading the query", lambda: f"{len(received)} events read")
        seconds = time.perf_counter() - started
        server_cpu_us, _ = CpuClock.read(server).per_event_us(cpu_before, len(received))
        payloads = [event.data for event in received if not event.data.startswith(WARMUP_MARK)]
        problems = delivery_problems(payloads)
        if len(payloads) != count:
            problems = f"{len(payloads)} of {count} events; {problems}".rstrip("; ")
        return QueryResult(len(received) / seconds, problems, server_cpu_us)
    finally:
        await close_client(ensign, timeout, "querying")


async def stop_task(task: asyncio.Task, timeout: float) -> None:
    """Cancel ``task`` (if still running) and wait, bounded, until it has ended."""
    task.cancel()
    await asyncio.wait({task}, timeout=timeout)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a failure has already been reported another way


async def _first_done(event: asyncio.Event, task: asyncio.Task) -> None:
    """Return when ``event`` is set or ``task`` ends, whichever comes first."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


# One round against one server ------------------------------------------------------


@dataclass
class StoreFigures:
    """Everything measured against one store, accumulated over the repeats."""

    publish_per_s: list[float] = field(default_factory=list)
    deliver_per_s: list[float] = field(default_factory=list)
    end_to_end_per_s: list[float] = field(default_factory=list)
    deliver_noack_per_s: list[float] = field(default_factory=list)
    group_per_s: list[float] = field(default_factory=list)
    query_per_s: list[float] = field(default_factory=list)
    loaded_ms: list[float] = field(default_factory=list)
    paced_ms: list[float] = field(default_factory=list)
    publish_server_us: list[float] = field(default_factory=list)  # CPU per event, one per repeat
    publish_client_us: list[float] = field(default_factory=list)
    deliver_server_us: list[float] = field(default_factory=list)
    deliver_client_us: list[float] = field(default_factory=list)
    group_server_us: list[float] = field(default_factory=list)
    query_server_us: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


async def measure_store(server: LocalEnsign, args: argparse.Namespace, figures: StoreFigures) -> str:
    """Run the six measurements against one server; add to ``figures``; return a progress line."""
    loaded = await measure_publish(server, args.events, args.timeout)
    paced = await measure_publish(server, args.latency_events, args.timeout, pace=args.latency_rate)
    delivered = await measure_delivery(server, args.events, args.timeout)
    grouped = await measure_delivery(server, args.events, args.timeout, grouped=True)
    unacked = await measure_delivery(server, args.events, args.timeout, ack=False)
    queried = await measure_query(server, unacked.topic, args.events, args.timeout)
    if server.process is None or server.process.poll() is not None:
        raise BenchmarkError(f"the {server.store} server died; its log ends with:\n{server.log_tail()}")
    figures.publish_per_s.append(loaded.events_per_s)
    figures.loaded_ms.extend(loaded.latencies_ms)
    figures.paced_ms.extend(paced.latencies_ms)
    figures.deliver_per_s.append(delivered.events_per_s)
    figures.end_to_end_per_s.append(delivered.end_to_end_per_s)
    figures.publish_server_us.append(loaded.server_cpu_us)
    figures.publish_client_us.append(loaded.client_cpu_us)
    figures.deliver_server_us.append(delivered.server_cpu_us)
    figures.deliver_client_us.append(delivered.client_cpu_us)
    figures.group_per_s.append(grouped.events_per_s)
    figures.group_server_us.append(grouped.server_cpu_us)
    figures.deliver_noack_per_s.append(unacked.events_per_s)
    figures.query_per_s.append(queried.events_per_s)
    figures.query_server_us.append(queried.server_cpu_us)
    for result, name in ((loaded, "loaded publish"), (paced, "paced publish")):
        if result.out_of_order:
            figures.notes.append(f"{name}: {result.out_of_order} acks not in publish order")
    for result, name in (
        (delivered, "delivery"),
        (grouped, "grouped delivery"),
        (unacked, "delivery without acks"),
        (queried, "query"),
    ):
        if result.problems:
            figures.notes.append(f"{name}: {result.problems}")
    return (
        f"publish {loaded.events_per_s:6,.0f}/s (max gap {loaded.longest_gap_ms:3.0f} ms,"
        f" server {loaded.server_cpu_us:4.0f} µs/ev)"
        f"  deliver {delivered.events_per_s:6,.0f}/s (max gap {delivered.longest_gap_ms:3.0f} ms,"
        f" server {delivered.server_cpu_us:4.0f} µs/ev)"
        f"  grouped {grouped.events_per_s:6,.0f}/s (max gap {grouped.longest_gap_ms:3.0f} ms,"
        f" server {grouped.server_cpu_us:4.0f} µs/ev)"
        f"  no acks {unacked.events_per_s:6,.0f}/s  query {queried.events_per_s:6,.0f}/s"
        f"  paced p50 {percentile(paced.latencies_ms, 50):5.2f} ms"
    )


async def run_rounds(servers: dict[str, LocalEnsign], args: argparse.Namespace) -> dict[str, StoreFigures]:
    """All repeats, alternating the stores (sqlite, memory, sqlite, memory, ...)."""
    figures = {store: StoreFigures() for store in STORES}
    for repeat in range(1, args.repeats + 1):
        for store in STORES:
            started = time.perf_counter()
            line = await measure_store(servers[store], args, figures[store])
            took = time.perf_counter() - started
            print(f"  repeat {repeat}/{args.repeats} {store:6}  {line}  ({took:4.1f} s)", flush=True)
    return figures


# Report --------------------------------------------------------------------------------


def longest_gap_ms(times: list[float]) -> float:
    """The longest interval between consecutive instants, in milliseconds."""
    return max((later - earlier for earlier, later in itertools.pairwise(times)), default=0.0) * 1000


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every figure."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def print_header(args: argparse.Namespace) -> None:
    """Machine and versions, so runs on different machines are not compared blindly."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("local_ensign server throughput: durable (sqlite) vs in-memory store")
    print(
        f"machine: {os.cpu_count()} cores ({usable} usable), {platform.machine()}, "
        f"Python {platform.python_version()}, pyensign {version('pyensign')}, grpcio {grpc.__version__}"
    )
    print(f"durable server: --sync {args.sync} ({SYNC_MODES[args.sync]}); CPU time from {CPU_SOURCE}")
    print(
        f"events per throughput run: {args.events:,}; repeats: {args.repeats} (stores alternate); "
        f"paced latency run: {args.latency_events:,} events at {args.latency_rate:g}/s",
    )
    print(f"load average at the start: {load_average()}", flush=True)


def print_idle_cpu(servers: dict[str, LocalEnsign], seconds: float = 1.0) -> None:
    """The servers' CPU use while nobody talks to them: a floor under every CPU figure."""
    before = {store: CpuClock.read(server) for store, server in servers.items()}
    time.sleep(seconds)
    used = {
        store: (CpuClock.read(server).server - before[store].server) / seconds * 1000
        for store, server in servers.items()
    }
    print(
        "server CPU while idle: "
        + ", ".join(f"{STORE_LABELS[store]} {ms:.0f} ms/s" for store, ms in used.items())
        + "\n",
        flush=True,
    )


def table_rows(
    figures: dict[str, StoreFigures], args: argparse.Namespace
) -> list[tuple[str, float, float, str]]:
    """(label, durable, in-memory, kind) per row; kind "target" has the ratio target, "cpu" is a cost."""
    durable, memory = figures["sqlite"], figures["memory"]
    rows = [
        ("publish with acks, events/s (first publish → last ack)", "publish_per_s", "target"),
        ("subscribe delivery, events/s (first → Nth received)", "deliver_per_s", "target"),
        ("  end to end, events/s (first publish → Nth received)", "end_to_end_per_s", ""),
        ("subscribe delivery without acks, events/s", "deliver_noack_per_s", ""),
        ("grouped delivery with acks (1 member), events/s", "group_per_s", ""),
        ("query SELECT * (whole cursor), events/s", "query_per_s", ""),
    ]
    table = [
        (label, statistics.median(getattr(durable, name)), statistics.median(getattr(memory, name)), kind)
        for label, name, kind in rows
    ]
    for label, samples in ((f"paced {args.latency_rate:g}/s", "paced_ms"), ("under load", "loaded_ms")):
        for pct in (50, 99):
            table.append(
                (
                    f"publish→ack latency p{pct}, ms ({label})",
                    percentile(getattr(durable, samples), pct),
                    percentile(getattr(memory, samples), pct),
                    "",
                )
            )
    cpu_rows = [
        ("server CPU µs/event, publish run", "publish_server_us"),
        ("server CPU µs/event, delivery run (publish + deliver)", "deliver_server_us"),
        ("server CPU µs/event, grouped delivery run (publish + deliver)", "group_server_us"),
        ("server CPU µs/event, query", "query_server_us"),
        ("client CPU µs/event, publish run", "publish_client_us"),
        ("client CPU µs/event, delivery run (both clients)", "deliver_client_us"),
    ]
    for label, name in cpu_rows:
        table.append(
            (
                label,
                statistics.median(getattr(durable, name)),
                statistics.median(getattr(memory, name)),
                "cpu",
            )
        )
    return table


def print_table(figures: dict[str, StoreFigures], args: argparse.Namespace) -> None:
    """The summary table: per store the figures, the ratio durable/in-memory and the verdicts."""
    rows = table_rows(figures, args)
    width = max(len(row[0]) for row in rows)
    print(
        f"\n{'median of ' + str(args.repeats) + ' repeats':<{width}}  {'durable':>9}  {'in-memory':>9}"
        f"  {'ratio':>5}  verdict (target ratio ≥ {TARGET_RATIO}); for CPU: durable − in-memory"
    )
    for label, durable_value, memory_value, kind in rows:
        ratio = durable_value / memory_value if memory_value else math.nan
        verdict = ""
        if kind == "target":
            verdict = "PASS" if ratio >= TARGET_RATIO else "below target"
        elif kind == "cpu":
            verdict = f"{durable_value - memory_value:+.1f} µs/event"
        print(f"{label:<{width}}  {durable_value:9,.2f}  {memory_value:9,.2f}  {ratio:5.3f}  {verdict}")
    print_cpu_summary(figures, args)
    print_scenario_ratios(figures, args)
    print(
        "latencies: percentiles over all repeats' events; the paced run publishes one event at a time "
        "at a fixed rate; the loaded one is the throughput run (time queued in client and server included)"
    )
    print("max gap (progress lines): the longest wait between two consecutive acks or deliveries, a stall")
    for store, store_figures in figures.items():
        spread = ", ".join(f"{v:,.0f}" for v in store_figures.publish_per_s)
        deliver = ", ".join(f"{v:,.0f}" for v in store_figures.deliver_per_s)
        print(f"per repeat, {STORE_LABELS[store]}: publish {spread}; deliver {deliver}")
        others = "; ".join(
            f"{name} " + ", ".join(f"{v:,.0f}" for v in getattr(store_figures, samples))
            for name, samples in (
                ("grouped", "group_per_s"),
                ("deliver without acks", "deliver_noack_per_s"),
                ("query", "query_per_s"),
            )
        )
        print(f"  {others}")
        publish_cpu = ", ".join(f"{v:.0f}" for v in store_figures.publish_server_us)
        deliver_cpu = ", ".join(f"{v:.0f}" for v in store_figures.deliver_server_us)
        print(f"  server CPU µs/event: publish {publish_cpu}; delivery run {deliver_cpu}")
        for note in store_figures.notes:
            print(f"  anomaly ({STORE_LABELS[store]}): {note}")


def print_cpu_summary(figures: dict[str, StoreFigures], args: argparse.Namespace) -> None:
    """What durability adds to the server's CPU per event, and the throughput ratio that CPU implies."""
    durable, memory = figures["sqlite"], figures["memory"]
    extra, implied = [], []
    for run, server, client in (
        ("publishing", "publish_server_us", "publish_client_us"),
        ("in the delivery run", "deliver_server_us", "deliver_client_us"),
    ):
        durable_server = statistics.median(getattr(durable, server))
        memory_server = statistics.median(getattr(memory, server))
        added = durable_server - memory_server
        share = added / memory_server if memory_server else math.nan
        extra.append(f"{added:+.1f} µs/event {run} ({share:+.0%})")
        durable_total = durable_server + statistics.median(getattr(durable, client))
        memory_total = memory_server + statistics.median(getattr(memory, client))
        implied.append(f"{memory_total / durable_total:.3f}")
    print(f"extra server CPU of durability (--sync {args.sync}), lower is better: {'; '.join(extra)}")
    print(
        f"throughput ratios implied by CPU alone: publish {implied[0]}, delivery {implied[1]} "
        "(in-memory ÷ durable client+server CPU per event: the ratio if CPU were the only limit)"
    )
    print(
        "CPU time is the server process's user+system time (all threads) and this process's "
        "(the clients), over each throughput run, median of the repeats; it leaves out waiting for fsync"
    )


def print_scenario_ratios(figures: dict[str, StoreFigures], args: argparse.Namespace) -> None:
    """Per store, the ratios of scenarios measured against the same server, with their targets."""
    title = f"scenario ratios, median of {args.repeats} repeats"
    print(f"\n{title:<46}  {'durable':>7}  {'in-memory':>9}")
    for label, numerator, denominator, target in SCENARIO_RATIOS:
        ratios = [
            statistics.median(getattr(figures[store], numerator))
            / statistics.median(getattr(figures[store], denominator))
            for store in STORES
        ]
        verdict = "PASS" if min(ratios) >= target else "below target"
        print(f"{label:<46}  {ratios[0]:7.3f}  {ratios[1]:9.3f}  target ≥ {target}×: {verdict}")
    print()


def stop_and_report(server: LocalEnsign) -> None:
    """Stop a server, print its exit status and the warnings and errors it logged, remove its files."""
    process = server.process
    server.stop()
    status = "not running" if process is None else f"exit status {process.returncode}"
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    problems = [line for line in lines if any(word in line for word in LOG_PROBLEMS)]
    print(
        f"server ({server.store}): stopped with {status}; log {len(lines)} lines, "
        f"{len(problems)} with warnings/errors"
    )
    for line in problems[:10]:
        print(f"  {line}")
    server.cleanup()


def error_chain(err: BaseException) -> list[str]:
    """The messages of ``err`` and of the benchmark errors it interrupted, oldest first."""
    messages: list[str] = []
    current: BaseException | None = err
    while current is not None:
        if isinstance(current, BenchmarkError):
            messages.insert(0, str(current))
        current = current.__context__
    return messages


# Main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults keep a run under about three minutes on 2 cores."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=4000, help="events per throughput run (default 4000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per store (default 5)")
    parser.add_argument(
        "--sync",
        choices=sorted(SYNC_MODES),
        default="full",
        help="the durable server's SQLite sync mode (default full): "
        + "; ".join(f"{mode}: {meaning}" for mode, meaning in SYNC_MODES.items()),
    )
    parser.add_argument(
        "--latency-events", type=int, default=500, help="events in the paced latency run (default 500)"
    )
    parser.add_argument(
        "--latency-rate", type=float, default=250.0, help="events/s in the paced latency run (default 250)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="limit for each wait, in seconds (default 60)"
    )
    args = parser.parse_args(argv)
    if min(args.events, args.latency_events) < 2 or args.repeats < 1:
        parser.error("--events and --latency-events must be at least 2, --repeats at least 1")
    if args.latency_rate <= 0 or args.timeout <= 0:
        parser.error("--latency-rate and --timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start both servers, run the rounds, print the table; 1 if a measurement failed."""
    args = parse_args(argv)
    print_header(args)
    servers: dict[str, LocalEnsign] = {}
    try:
        for store in STORES:
            sync = args.sync if store == "sqlite" else "full"  # the in-memory store ignores it
            servers[store] = LocalEnsign(store=store, sync=sync).start()
        print_idle_cpu(servers)
        figures = asyncio.run(run_rounds(servers, args))
        print_table(figures, args)
        return 0
    except LaunchError as err:
        print(f"\nFAILED: {err}", flush=True)
        return 1
    except BenchmarkError as err:
        for message in error_chain(err):
            print(f"\nFAILED: {message}", flush=True)
        return 1
    finally:
        print(f"load average at the end: {load_average()}")
        for server in servers.values():
            stop_and_report(server)


if __name__ == "__main__":
    sys.exit(main())
