"""What durability costs: a local Ensign server with the durable SQLite store against one in memory.

    python benchmarks/server_throughput.py [--events 4000] [--repeats 5] [--sync full|normal]

Two ``local_ensign`` servers run side by side in their own processes, the same code but for
the store: ``sqlite`` (WAL, group commit; ``--sync full`` fsyncs before every ack, ``normal``
only at checkpoints) and ``memory``. Each repeat measures both with the real pyensign client,
the stores alternating so that drift in the machine's load affects both alike:

* publish with acks: events/s from the first ``publish()`` to the last ack;
* paced publish→ack latency, p50 and p99: events published one by one at ``--latency-rate``/s,
  well below saturation, as a live application publishes;
* live tail with acks, then without: events/s from the first event a new subscriber receives
  to the last, while another client publishes them;
* grouped with acks: the same, the subscriber the only member of a new consumer group;
* query: ``SELECT * FROM`` the topic the live tail without acks filled, read to the end;
* the server process's CPU µs per event (psutil), which varies far less with the load than
  throughput does (waiting for fsync is not CPU time).

Why ratios: the Python client, not the server, bounds these rates. durable / in-memory says
what durability costs (target ≥ 0.9 for publish and for the live tail with acks). Within one
store, run back to back: grouped / live tail, both acking, says what a consumer group costs
(target ≥ 0.9); query / live tail without acks, neither acking, whether stored events stream
at least as fast as the client takes them (target ≥ 1.0). The table shows medians of repeats.

The subscribers loop over ``Ensign.subscribe()`` themselves, since a consumer group is an
option of it and every kind of delivery must take the same path. Every delivery and query is
checked event by event: the script exits 1 if one is lost, duplicated or out of order, or if
a wait runs out (``--timeout``), never because a ratio is below its target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import harness
from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign

from helpers.streams import close_client, publish_records, wait_until_subscribed
from local_ensign.launcher import LocalEnsign

STORES = {"sqlite": "durable", "memory": "in-memory"}
TAIL, TAIL_NO_ACKS = "live tail with acks, events/s", "live tail without acks, events/s"
GROUPED, QUERY = "grouped with acks, events/s", "query SELECT *, events/s"
P50, P99 = "paced publish→ack p50, ms", "paced publish→ack p99, ms"
TAIL_CPU, GROUPED_CPU = "live tail with acks: server CPU, µs/event", "grouped with acks: server CPU, µs/event"
WITHIN_A_STORE = (  # label, numerator, denominator, target
    ("grouped / live tail, both with acks", GROUPED, TAIL, 0.9),
    ("query / live tail without acks", QUERY, TAIL_NO_ACKS, 1.0),
)


async def paced_latencies(server: LocalEnsign, count: int, rate: float, timeout: float) -> list[float]:
    """Publish→ack milliseconds of ``count`` events published one by one, ``rate`` per second."""
    ensign, topic, events, sent = Ensign(**server.client_kwargs()), f"paced-{time.time_ns()}", [], []
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
    server: LocalEnsign, count: int, timeout: float, *, ack: bool = True, grouped: bool = False
) -> tuple[float, float, str]:
    """Events/s to a new subscriber while another client publishes; server CPU µs/event; the topic."""
    topic = f"deliver-{time.time_ns()}"
    publisher, subscriber = Ensign(**server.client_kwargs()), Ensign(**server.client_kwargs())
    group = ConsumerGroup(name=f"group-{topic}") if grouped else None
    times, seqs, pid = [], [], server.process.pid

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
        cpu = harness.cpu_seconds(pid)
        report = await publish_records(publisher, topic, harness.numbered_events(count), timeout=timeout)
        harness.check_acked(report, count, "publishing")
        await harness.bounded(receiving, timeout, lambda: f"delivery, {len(seqs)} of {count} events")
        cpu_us = (harness.cpu_seconds(pid) - cpu) / count * 1e6
    finally:
        if receiving is not None:
            receiving.cancel()
        await close_client(publisher)
        await close_client(subscriber)
    harness.check_sequence(seqs, range(count), "grouped delivery" if grouped else "live tail")
    return (count - 1) / (times[-1] - times[0]), cpu_us, topic


async def query_rate(server: LocalEnsign, topic: str, count: int, timeout: float) -> float:
    """Events/s of ``SELECT * FROM topic`` read to the end, from the ``query()`` call on."""
    ensign, seqs = Ensign(**server.client_kwargs()), []

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


async def measure(server: LocalEnsign, args: argparse.Namespace) -> dict[str, float]:
    """One repeat's figures against one server; the pairs compared within a store run back to back."""
    events, timeout = args.events, args.timeout
    publish = await harness.measure_publish(server, f"publish-{time.time_ns()}", events, timeout)
    latencies = await paced_latencies(server, args.latency_events, args.latency_rate, timeout)
    tail, tail_cpu, _ = await delivery(server, events, timeout)
    grouped, grouped_cpu, _ = await delivery(server, events, timeout, grouped=True)
    tail_no_acks, _, topic = await delivery(server, events, timeout, ack=False)
    query = await query_rate(server, topic, events, timeout)
    pct = statistics.quantiles(latencies, n=100, method="inclusive")
    rates = {TAIL: tail, TAIL_NO_ACKS: tail_no_acks, GROUPED: grouped, QUERY: query}
    cpu = {harness.PUBLISH_CPU: publish.pop(harness.PUBLISH_CPU), TAIL_CPU: tail_cpu}
    return publish | rates | {P50: pct[49], P99: pct[98]} | cpu | {GROUPED_CPU: grouped_cpu}


async def benchmark(args: argparse.Namespace) -> None:
    """Start both servers, run the repeats with the stores alternating, print the table."""
    results = harness.Results(list(STORES.values()))
    with (
        LocalEnsign(project="bench", store="sqlite", sync=args.sync) as durable,
        LocalEnsign(project="bench", store="memory") as memory,
    ):
        for repeat in range(1, args.repeats + 1):
            for server in (durable, memory):
                results.add(repeat, STORES[server.store], await measure(server, args))
    results.print_table({harness.PUBLISH: 0.9, TAIL: 0.9})
    print("\nwithin one store (the target holds for both)")
    for label, numerator, denominator, target in WITHIN_A_STORE:
        ratios = [results.median(numerator, s) / results.median(denominator, s) for s in results.columns]
        harness.print_row(label, ratios, harness.verdict(min(ratios), target))


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run; 1 if a correctness check failed or a wait ran out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=4000, help="events per run (default 4000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per store (default 5)")
    parser.add_argument("--sync", choices=("full", "normal"), default="full", help="the durable store's sync")
    parser.add_argument("--latency-events", type=int, default=500, help="paced events (default 500)")
    parser.add_argument("--latency-rate", type=float, default=250.0, help="paced events/s (default 250)")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each wait, s (default 60)")
    args = parser.parse_args(argv)
    if min(args.events, args.latency_events) < 2 or args.repeats < 1:
        parser.error("--events and --latency-events must be at least 2, --repeats at least 1")
    settings = f"--sync {args.sync}, {args.events:,} events per run, {args.repeats} repeats, paced latency"
    settings += f" over {args.latency_events:,} events at {args.latency_rate:g}/s"
    title = "local_ensign server throughput: durable (sqlite) against in-memory store"
    return harness.run(title, settings, benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
