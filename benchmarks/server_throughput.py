"""What durability costs, and what a replicated log costs: local Ensign servers on four stores.

    python benchmarks/server_throughput.py [--events 4000] [--repeats 5] [--sync full|normal]
        [--stores sqlite,memory,jetstream-1,jetstream-3] [--target-rate 10000]

The ``local_ensign`` servers run side by side in their own processes, the same code but for
the store: ``sqlite`` (WAL, group commit; ``--sync full`` fsyncs before every ack, ``normal``
only at checkpoints), ``memory``, and JetStream: ``jetstream-1``, one gateway on one NATS node,
and ``jetstream-3``, one gateway on a 3-node NATS cluster keeping 3 replicas (an ack waits for
a quorum; nats-server, as configured by default, fsyncs on a timer, not before each ack).
``--stores`` picks some of them. Each repeat measures every store with the real pyensign
client, the stores alternating so that drift in the machine's load affects all alike:

* publish with acks: events/s from the first ``publish()`` to the last ack;
* paced publish→ack latency, p50 and p99: events published one by one at ``--latency-rate``/s,
  well below saturation, as a live application publishes;
* live tail with acks, then without: events/s from the first event a new subscriber receives
  to the last, while another client publishes them;
* grouped with acks: the same, the subscriber the only member of a new consumer group;
* query: ``SELECT * FROM`` the topic the live tail without acks filled, read to the end;
* the server's CPU µs per event (psutil), which varies far less with the load than throughput
  does (waiting for fsync is not CPU time): for a JetStream store, its gateway process and
  its nats-server processes together (for the live tail with acks also the gateway's part
  and the busiest node's).

Why ratios: the Python client, not the server, bounds these rates. durable / in-memory says
what durability costs (target ≥ 0.9 for publish and for the live tail with acks). Within one
store, run back to back: grouped / live tail, both acking, says what a consumer group costs
(target ≥ 0.9); query / live tail without acks, neither acking, whether stored events stream
at least as fast as the client takes them (target ≥ 1.0). The targets are SQLite's and
memory's; JetStream's ratios, to durable SQLite and within its stores, are printed without one.
The table shows medians of repeats. Last comes a capacity on paper for the JetStream stores:
from this run's medians and this machine's core count, what ``--target-rate`` events/s would take
in gateway processes and NATS nodes, under the assumptions it prints.

The subscribers loop over ``Ensign.subscribe()`` themselves, since a consumer group is an
option of it and every kind of delivery must take the same path. Every delivery and query is
checked event by event: the script exits 1 if one is lost, duplicated or out of order, if a
store does not start, or if a wait runs out (``--timeout``), never because a ratio is below
its target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import harness
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign

from helpers.streams import close_client, publish_records, wait_until_subscribed
from local_ensign.cluster import LocalCluster
from local_ensign.launcher import LaunchError, LocalEnsign
from local_ensign.nats_launcher import NatsCluster, NatsLaunchError

STORES = {"sqlite": "durable", "memory": "in-memory"}
CHOICES = (*STORES, "jetstream-1", "jetstream-3")  # JetStream: the column's name is the store's
TAIL, TAIL_NO_ACKS = "live tail with acks, events/s", "live tail without acks, events/s"
GROUPED, QUERY = "grouped with acks, events/s", "query SELECT *, events/s"
P50, P99 = "paced publish→ack p50, ms", "paced publish→ack p99, ms"
TAIL_CPU, GROUPED_CPU = "live tail with acks: server CPU, µs/event", "grouped with acks: server CPU, µs/event"
GATEWAY_CPU, NODE_CPU = (
    "live tail with acks: gateway CPU, µs/event",
    "live tail with acks: busiest node, µs/event",
)
WITHIN_A_STORE = (  # label, numerator, denominator, target
    ("grouped / live tail, both with acks", GROUPED, TAIL, 0.9),
    ("query / live tail without acks", QUERY, TAIL_NO_ACKS, 1.0),
)
TO_DURABLE = (("publish with acks", harness.PUBLISH), ("live tail with acks", TAIL))  # JetStream / durable
ASSUMPTIONS = """\
  - CPU per event: this run's live tail with acks (median), each event published and delivered once
  - machines of {cores} cores, like this one; clients, the network and disks are not counted
  - a gateway is one Python process, so one core at most; gateways share the clients evenly, but
    each also reads every event of the stream, a cost one gateway does not show: more need more
  - JetStream keeps every topic in one stream on `replicas` nodes: more nodes do not spread it, its
    busiest node bounds the rate; a node has a machine's cores to itself and keeps them all busy
    (optimistic, for a single stream)"""


@dataclass
class Store:
    """One column of the table: the server clients use, and the NATS nodes whose CPU counts too."""

    column: str
    gateway: LocalEnsign
    nats: NatsCluster | None = None
    replicas: int = 0

    def client_kwargs(self) -> dict:
        """Keyword arguments for ``Ensign(...)`` to reach the server (the gateway)."""
        return self.gateway.client_kwargs()

    def cpu(self) -> list[float]:
        """CPU seconds used so far: the server (the gateway), then each NATS node."""
        assert self.gateway.process is not None
        nodes = self.nats.pids if self.nats else []
        return [harness.cpu_seconds(pid) for pid in [self.gateway.process.pid, *nodes]]


def per_event(before: Sequence[float], after: Sequence[float], count: int) -> list[float]:
    """CPU µs per event of each process between two ``Store.cpu()`` readings."""
    return [(b - a) / count * 1e6 for a, b in zip(before, after, strict=True)]


def start_store(name: str, stack: ExitStack, args: argparse.Namespace) -> Store:
    """Start store ``name``'s processes, to stop when ``stack`` closes; BenchmarkFailure if one fails."""
    try:
        if name in STORES:
            sync = {"sync": args.sync} if name == "sqlite" else {}
            return Store(STORES[name], stack.enter_context(LocalEnsign(project="bench", store=name, **sync)))
        if name == "jetstream-1":
            nats = stack.enter_context(NatsCluster(nodes=1))
            options = ("--nats", nats.urls[0], "--jetstream-name", f"bench-{os.getpid()}")
            gateway = LocalEnsign(project="bench", store="jetstream", options=options)
            return Store(name, stack.enter_context(gateway), nats, replicas=1)
        cluster = stack.enter_context(LocalCluster(nodes=3, gateways=1, project="bench"))
        return Store(name, cluster.gateways[0], cluster.nats, cluster.replicas)
    except (LaunchError, NatsLaunchError) as error:
        raise harness.BenchmarkFailure(f"{name} did not start: {error}") from error


async def publish_rate(store: Store, count: int, timeout: float) -> tuple[float, list[float]]:
    """Events/s of acked publishing, and CPU µs/event of each process of the store."""
    return await harness.timed_publish(
        store.client_kwargs(), f"publish-{time.time_ns()}", count, timeout, store.cpu
    )


async def paced_latencies(store: Store, count: int, rate: float, timeout: float) -> list[float]:
    """Publish→ack milliseconds of ``count`` events published one by one, ``rate`` per second."""
    ensign, topic, events, sent = Ensign(**store.client_kwargs()), f"paced-{time.time_ns()}", [], []
    try:
        acked_at = await harness.open_publisher(ensign, topic, timeout)
        events, start = harness.numbered_events(count), time.perf_counter()
        async with asyncio.timeout(count / rate + timeout):  # publish() waits while its queue is full
            for index, event in enumerate(events):
                await asyncio.sleep(start + index / rate - time.perf_counter())
                sent.append(time.perf_counter())
                await ensign.publish(topic, event)
        await harness.bounded(asyncio.gather(*(e.wait_for_ack() for e in events)), timeout, "paced acks")
    finally:
        await close_client(ensign)
    return [(acked_at[event.id] - at) * 1000 for event, at in zip(events, sent, strict=True)]


async def delivery(
    store: Store, count: int, timeout: float, *, ack: bool = True, grouped: bool = False
) -> tuple[float, list[float], str]:
    """Events/s to a new subscriber while another client publishes; CPU µs/event per process; the topic."""
    topic = f"deliver-{time.time_ns()}"
    publisher, subscriber = Ensign(**store.client_kwargs()), Ensign(**store.client_kwargs())
    group = ConsumerGroup(name=f"group-{topic}") if grouped else None
    times, seqs = [], []

    async def receive() -> None:
        async for event in subscriber.subscribe(topic, consumer_group=group):
            times.append(time.perf_counter())
            if ack:
                await event.ack()
            seqs.append(json.loads(event.data)["seq"])
            if len(seqs) == count:
                return

    receiving = None
    try:
        await harness.bounded(publisher.ensure_topic_exists(topic), timeout, f"creating topic {topic}")
        receiving = asyncio.create_task(receive())
        await harness.bounded(wait_until_subscribed(subscriber, topic, timeout), timeout, "subscribing")
        cpu = store.cpu()
        report = await publish_records(publisher, topic, harness.numbered_events(count), timeout=timeout)
        harness.check_acked(report, count, "publishing")
        await harness.bounded(receiving, timeout, lambda: f"delivery, {len(seqs)} of {count} events")
        cpu_us = per_event(cpu, store.cpu(), count)
    finally:
        if receiving is not None:
            receiving.cancel()
        await close_client(publisher)
        await close_client(subscriber)
    harness.check_sequence(seqs, range(count), "grouped delivery" if grouped else "live tail")
    return (count - 1) / (times[-1] - times[0]), cpu_us, topic


async def query_rate(store: Store, topic: str, count: int, timeout: float) -> float:
    """Events/s of ``SELECT * FROM topic`` read to the end, from the ``query()`` call on."""
    ensign, seqs = Ensign(**store.client_kwargs()), []

    async def read_all() -> None:
        async for event in await ensign.query(f"SELECT * FROM {topic}"):
            seqs.append(json.loads(event.data)["seq"])

    try:
        start = time.perf_counter()
        await harness.bounded(read_all(), timeout, lambda: f"the query, {len(seqs)} of {count} events")
        seconds = time.perf_counter() - start
    finally:
        await close_client(ensign)
    harness.check_sequence(seqs, range(count), "query")
    return count / seconds


async def measure(store: Store, args: argparse.Namespace) -> dict[str, float]:
    """One repeat's figures against one store; the pairs compared within a store run back to back."""
    events, timeout = args.events, args.timeout
    publish, publish_cpu = await publish_rate(store, events, timeout)
    latencies = await paced_latencies(store, args.latency_events, args.latency_rate, timeout)
    tail, tail_cpu, _ = await delivery(store, events, timeout)
    grouped, grouped_cpu, _ = await delivery(store, events, timeout, grouped=True)
    tail_no_acks, _, topic = await delivery(store, events, timeout, ack=False)
    query = await query_rate(store, topic, events, timeout)
    pct = statistics.quantiles(latencies, n=100, method="inclusive")
    rates = {TAIL: tail, TAIL_NO_ACKS: tail_no_acks, GROUPED: grouped, QUERY: query}
    cpu = {harness.PUBLISH_CPU: sum(publish_cpu), TAIL_CPU: sum(tail_cpu), GROUPED_CPU: sum(grouped_cpu)}
    parts = {GATEWAY_CPU: tail_cpu[0], NODE_CPU: max(tail_cpu[1:])} if store.nats else {}
    return {harness.PUBLISH: publish} | rates | {P50: pct[49], P99: pct[98]} | cpu | parts


def only(results: harness.Results, columns: list[str]) -> harness.Results:
    """The measurements of ``columns`` alone, as a table of their own."""
    part = harness.Results(columns)
    part.measurements = [m for m in results.measurements if m.column in columns]
    return part


def medians(results: harness.Results, figure: str, columns: Sequence[str]) -> list[float]:
    """The median of ``figure`` in each of ``columns``."""
    return [results.median(figure, column) for column in columns]


def print_heading(label: str, columns: Sequence[str]) -> None:
    """A blank line, then a table's first: ``label`` over the labels, the column names over the cells."""
    cells = "".join(f"{column:>{harness.CELL_WIDTH}}" for column in columns)
    print(f"\n{label:<{harness.LABEL_WIDTH}}{cells}")


def print_sqlite_and_memory(results: harness.Results, columns: list[str]) -> None:
    """The durable and in-memory table, their ratio with its verdict, and the ratios within each."""
    both = len(columns) == 2
    only(results, columns).print_table({harness.PUBLISH: 0.9, TAIL: 0.9} if both else {})
    print("\nwithin one store (the target holds for both)" if both else "\nwithin one store")
    for label, numerator, denominator, target in WITHIN_A_STORE:
        ratios = [results.median(numerator, s) / results.median(denominator, s) for s in columns]
        harness.print_row(label, ratios, harness.verdict(min(ratios), target))


def print_jetstream(results: harness.Results, columns: list[str], sync: str) -> None:
    """The JetStream table, its ratios to durable SQLite and within each store: figures, no target."""
    repeats = len({m.repeat for m in results.measurements})
    print_heading(f"median of {repeats} repeats", columns)
    for figure in dict.fromkeys(m.figure for m in results.measurements if m.column in columns):
        harness.print_row(figure, medians(results, figure, columns))
    print("(JetStream's server CPU: its gateway process + all its nats-server processes; busiest node:")
    print(" the nats-server process that used the most)")
    if STORES["sqlite"] not in results.columns:
        print("\nJetStream / durable: not measured, --stores has no sqlite")
    else:
        print_heading("JetStream / durable (no target)", columns)
        for label, figure in TO_DURABLE:
            durable = results.median(figure, STORES["sqlite"])
            harness.print_row(label, [value / durable for value in medians(results, figure, columns)])
        print(f"(durable: --sync {sync}; nats-server fsyncs on its default timer, not before each ack)")
    print_heading("within one store (no target)", columns)
    for label, numerator, denominator, _ in WITHIN_A_STORE:
        ratios = [results.median(numerator, s) / results.median(denominator, s) for s in columns]
        harness.print_row(label, ratios)


def print_capacity(results: harness.Results, stores: list[Store], target: float) -> None:
    """What ``target`` events/s would take, on paper, from this run's JetStream medians and core count."""
    cores, columns = os.cpu_count() or 1, [store.column for store in stores]
    per_gateway = [1e6 / us if us else math.inf for us in medians(results, GATEWAY_CPU, columns)]
    per_node = [cores * 1e6 / us if us else math.inf for us in medians(results, NODE_CPU, columns)]
    gateways = [math.ceil(target / rate) for rate in per_gateway]
    print(f"\ncapacity on paper for {target:,.0f} events/s, from this run's figures; assumptions:")
    print(ASSUMPTIONS.format(cores=cores))
    print_heading("", columns)
    harness.print_row("measured: publish with acks, events/s", medians(results, harness.PUBLISH, columns))
    harness.print_row("measured: live tail with acks, events/s", medians(results, TAIL, columns))
    harness.print_row("one gateway's CPU at one core, events/s", per_gateway)
    harness.print_row(f"busiest NATS node at {cores} cores, events/s", per_node)
    print_counts("gateway processes needed", gateways)
    print_counts("machines for the gateways", [math.ceil(count / cores) for count in gateways])
    nodes = [store.replicas if rate >= target else None for store, rate in zip(stores, per_node, strict=True)]
    note = "  —: one stream's busiest node cannot take it" if None in nodes else ""
    print_counts("NATS nodes needed, one machine each", nodes, note)


def print_counts(label: str, counts: Sequence[int | None], note: str = "") -> None:
    """A table line of whole numbers (``—`` for none), then ``note``."""
    cells = "".join(f"{'—' if count is None else count:>{harness.CELL_WIDTH}}" for count in counts)
    print(f"{label:<{harness.LABEL_WIDTH}}{cells}{note}")


async def benchmark(args: argparse.Namespace) -> None:
    """Start the stores, run the repeats with the stores alternating, print the tables and the capacity."""
    with ExitStack() as stack:
        stores = [start_store(name, stack, args) for name in args.stores]
        results = harness.Results([store.column for store in stores])
        for repeat in range(1, args.repeats + 1):
            for store in stores:
                results.add(repeat, store.column, await measure(store, args))
    if sqlite_and_memory := [store.column for store in stores if store.nats is None]:
        print_sqlite_and_memory(results, sqlite_and_memory)
    if jetstream := [store for store in stores if store.nats is not None]:
        print_jetstream(results, [store.column for store in jetstream], args.sync)
        print_capacity(results, jetstream, args.target_rate)


def store_names(text: str) -> list[str]:
    """``--stores``: names from CHOICES, comma-separated, kept in CHOICES' order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    if not names or names - set(CHOICES):
        raise argparse.ArgumentTypeError(f"{text!r}: give some of {','.join(CHOICES)}")
    return [name for name in CHOICES if name in names]


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run; 1 if a correctness check failed, a store did not start or a wait ran out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=4000, help="events per run (default 4000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per store (default 5)")
    parser.add_argument("--sync", choices=("full", "normal"), default="full", help="the durable store's sync")
    parser.add_argument("--latency-events", type=int, default=500, help="paced events (default 500)")
    parser.add_argument("--latency-rate", type=float, default=250.0, help="paced events/s (default 250)")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each wait, s (default 60)")
    parser.add_argument(
        "--stores",
        type=store_names,
        default=list(CHOICES),
        help=f"stores to measure, comma-separated (default {','.join(CHOICES)})",
    )
    parser.add_argument(
        "--target-rate",
        type=float,
        default=10_000.0,
        help="events/s the capacity on paper is for (default 10000)",
    )
    args = parser.parse_args(argv)
    if min(args.events, args.latency_events) < 2 or args.repeats < 1 or args.target_rate <= 0:
        parser.error(
            "--events and --latency-events must be at least 2, --repeats at least 1, --target-rate > 0"
        )
    settings = f"--sync {args.sync}, {args.events:,} events per run, {args.repeats} repeats, paced latency"
    settings += f" over {args.latency_events:,} events at {args.latency_rate:g}/s; {', '.join(args.stores)}"
    title = "local_ensign server throughput: durable (sqlite) against in-memory store, and JetStream"
    return harness.run(title, settings, benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
