"""Publishing with hundreds of subscriptions open: does the publisher keep its pace?

    python benchmarks/subscriber_fan_out.py [--events 3000] [--subscriptions 200] [--repeats 3]
    python benchmarks/subscriber_fan_out.py --smoke      # 200 events, 20 subscriptions, one repeat

The server writes committed events to subscribers on the event loop that also reads, commits
and acks published events. Every repeat times one pyensign publisher (events/s from the first
``publish()`` to the last ack, and the server process's CPU µs per event) on a topic nobody
reads, then on a topic with ``--subscriptions`` open: half read every event as it comes, half
read nothing until the publishing is over. Why a ratio: runs with and without subscriptions
alternate on one server, so the machine's speed and drift cancel out; with them open the
publisher should keep at least half its rate (target ≥ 0.5, else "below target").

Every subscription must receive every event, exactly once and in order, or the script exits 1
(as it does when a wait runs out, ``--timeout``). The subscriptions are raw gRPC streams in a
process of their own (this script with ``--hold``): pyensign opens one stream per client and
topic, and reading hundreds of thousands of replies in the publisher's process would slow its
client, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from urllib.request import urlopen

import grpc
import harness
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc, event_pb2
from pyensign.ensign import Ensign

from helpers.streams import close_client
from local_ensign.launcher import LocalEnsign

CHANNELS = 4  # the subscriptions share a few connections, as many clients behind one proxy would


async def hold(endpoint: str, token: str, topic: str, count: int, events: int, timeout: float) -> None:
    """The subscriber process: ``count`` subscriptions to ``topic``, half of them reading at once.

    Prints ``ready`` once the server has said so to every one, starts the other half reading
    when a line comes on standard input, then prints how many received the publisher's first
    event (``seq`` -1) and ``events`` more, exactly once and in order.
    """
    metadata = (("authorization", f"Bearer {token}"),)
    channels = [grpc.aio.insecure_channel(endpoint) for _ in range(CHANNELS)]
    streams = []
    for number in range(count):
        stream = ensign_pb2_grpc.EnsignStub(channels[number % CHANNELS]).Subscribe(metadata=metadata)
        subscription = ensign_pb2.Subscription(client_id="fan-out", topics=[topic])
        await stream.write(ensign_pb2.SubscribeRequest(subscription=subscription))
        streams.append(stream)
    for stream in streams:
        reply = await asyncio.wait_for(stream.read(), timeout)
        if reply.WhichOneof("embed") != "ready":
            raise RuntimeError(f"expected the server's ready, got {reply}")

    async def read_all(stream) -> list[int]:
        seqs = []
        while len(seqs) < events + 1:
            reply = await stream.read()
            seqs.append(json.loads(event_pb2.Event.FromString(reply.event.event).data)["seq"])
        return seqs

    print("ready", flush=True)
    reading = asyncio.gather(*(read_all(stream) for stream in streams[: count // 2]))
    await asyncio.to_thread(sys.stdin.readline)  # the parent ends this process if it gives up
    stalled = asyncio.gather(*(read_all(stream) for stream in streams[count // 2 :]))
    received = await asyncio.wait_for(asyncio.gather(reading, stalled), timeout)
    expected = list(range(-1, events))
    print(sum(seqs == expected for half in received for seqs in half), flush=True)
    for channel in channels:
        await channel.close(grace=None)


def access_token(server: LocalEnsign) -> str:
    """An access token for the raw gRPC subscriptions, from the server's auth endpoint."""
    key = server.credentials or {}
    body = json.dumps({"client_id": key["ClientID"], "client_secret": key["ClientSecret"]}).encode()
    with urlopen(f"{server.auth_url}/v1/authenticate", body, timeout=10) as reply:
        return json.load(reply)["access_token"]


async def crowded(server: LocalEnsign, topic: str, args: argparse.Namespace) -> dict[str, float]:
    """The publish run with ``--subscriptions`` open on ``topic``; then check that each got everything."""
    setup = Ensign(**server.client_kwargs())
    try:
        await harness.bounded(setup.ensure_topic_exists(topic), args.timeout, f"creating topic {topic}")
    finally:
        await close_client(setup)
    command = [sys.executable, __file__, "--hold", server.endpoint, access_token(server), topic]
    command += [str(args.subscriptions), str(args.events), str(args.timeout)]
    holder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ready = asyncio.to_thread(holder.stdout.readline)
        if (await harness.bounded(ready, args.timeout, "opening the subscriptions")).strip() != "ready":
            raise harness.BenchmarkFailure("the subscriber process could not open its subscriptions")
        measured = await harness.measure_publish(server, topic, args.events, args.timeout)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        in_order = await harness.bounded(asyncio.to_thread(holder.stdout.readline), args.timeout, "delivery")
    finally:
        holder.kill()
        holder.wait()
    if in_order.strip() != str(args.subscriptions):
        counted = in_order.strip() or "? (the subscriber process failed)"
        raise harness.BenchmarkFailure(f"{counted} of {args.subscriptions} got every event once and in order")
    return measured


async def benchmark(args: argparse.Namespace) -> None:
    """Alternate runs without and with the subscriptions open; print the table."""
    opened, timeout = f"{args.subscriptions} open", args.timeout
    results = harness.Results([opened, "none open"])
    with LocalEnsign(project="bench") as server:
        for repeat in range(1, args.repeats + 1):
            alone = await harness.measure_publish(server, f"alone-{time.time_ns()}", args.events, timeout)
            results.add(repeat, "none open", alone)
            results.add(repeat, opened, await crowded(server, f"fan-out-{time.time_ns()}", args))
    results.print_table({harness.PUBLISH: 0.5})
    print(f"each of the {args.subscriptions} subscriptions got every event once and in order, every repeat")


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run; 1 if a subscription missed an event or a wait ran out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=3000, help="events per publish run (default 3000)")
    parser.add_argument("--subscriptions", type=int, default=200, help="subscriptions open (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on each wait, s (default 120)")
    parser.add_argument("--smoke", action="store_true", help="200 events, 20 subscriptions, one repeat")
    parser.add_argument("--hold", nargs=6, help=argparse.SUPPRESS)  # run as the subscriber process
    args = parser.parse_args(argv)
    if args.hold:
        endpoint, token, topic, count, events, timeout = args.hold
        asyncio.run(hold(endpoint, token, topic, int(count), int(events), float(timeout)))
        return 0
    if args.smoke:
        args.events, args.subscriptions, args.repeats = 200, 20, 1
    if args.events < 1 or args.subscriptions < 2 or args.repeats < 1:
        parser.error("--events and --repeats must be at least 1, --subscriptions at least 2")
    settings = f"{args.events:,} events per run, {args.subscriptions} subscriptions, {args.repeats} repeats"
    title = "subscriber fan-out: one publisher, with and without subscriptions open"
    return harness.run(title, settings, benchmark(args))


if __name__ == "__main__":
    sys.exit(main())
