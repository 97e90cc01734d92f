"""Publishing with hundreds of subscriptions open: does it keep its pace?

    python benchmarks/subscriber_fan_out.py [--events 3000] [--subscriptions 200] [--repeats 3]
    python benchmarks/subscriber_fan_out.py --smoke      # a few seconds: is it still working?

The server writes committed events to subscribers on the event loop that also reads,
commits and acks published events. Written to every subscription at once, 200 open
subscriptions took most of the server from publishers. Target: with 200 subscriptions
open (half reading every event, half not reading at all), one pyensign publisher keeps
at least half the rate it has with none, and every subscription still receives every
event, exactly once and in order (the script exits 1 if one does not).

The subscriptions are raw gRPC streams in a process of their own: pyensign opens one
stream per topic and client, and reading 600,000 replies in the publisher's process
would slow its client, not the server. Runs with and without subscriptions alternate,
so the machine's drift affects both alike: compare the ratio, not absolute figures.
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
from urllib.request import urlopen

import grpc
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc, event_pb2
from pyensign.ensign import Ensign

from helpers.streams import close_client, json_event
from local_ensign.launcher import LocalEnsign

CHANNELS = 4  # subscriptions share a few connections, as many clients behind one proxy would


def server_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed_publish(server: LocalEnsign, topic: str, count: int) -> dict:
    """Publish ``count`` events with one pyensign client; rate to the last ack, ack latency, server CPU."""
    client = Ensign(**server.client_kwargs())
    sent: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def on_ack(ack) -> None:
        latencies.append(time.perf_counter() - sent[len(latencies)])
        if len(latencies) == count + 1:
            done.set()

    await client.ensure_topic_exists(topic)
    sent[0] = time.perf_counter()
    await client.publish(topic, json_event({"seq": -1}), on_ack=on_ack)  # opens the stream, untimed
    while len(latencies) < 1:
        await asyncio.sleep(0.01)
    cpu, start = server_cpu_seconds(server.process.pid), time.perf_counter()
    for seq in range(count):
        sent[seq + 1] = time.perf_counter()
        await client.publish(topic, json_event({"seq": seq, "text": "x" * 100}), on_ack=on_ack)
    await asyncio.wait_for(done.wait(), 300)
    seconds = time.perf_counter() - start
    cpu = server_cpu_seconds(server.process.pid) - cpu
    await close_client(client)
    timed = latencies[1:]
    return {"eps": count / seconds, "p99_ms": 1000 * percentile(timed, 0.99), "cpu_us": 1e6 * cpu / count}


async def hold_subscriptions(endpoint: str, token: str, topic: str, count: int, events: int) -> None:
    """Subscriber process: open ``count`` subscriptions, half reading; report when each half has everything.

    Prints ``ready`` once every stream has its ready reply, then waits for a line on
    standard input before the stalled half starts reading, then prints a JSON summary.
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
        assert (await asyncio.wait_for(stream.read(), 60)).WhichOneof("embed") == "ready"

    async def read_all(stream) -> list[int]:
        seqs = []
        while len(seqs) < events:
            reply = await stream.read()
            seqs.append(json.loads(event_pb2.Event.FromString(reply.event.event).data)["seq"])
        return seqs

    print("ready", flush=True)
    reading, stalled = streams[: count // 2], streams[count // 2 :]
    received = await asyncio.wait_for(asyncio.gather(*(read_all(s) for s in reading)), 300)
    readers_done = time.time()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.time()
    received += await asyncio.wait_for(asyncio.gather(*(read_all(s) for s in stalled)), 300)
    expected = list(range(-1, events - 1))  # the publisher's untimed opening event, then the timed ones
    in_order = sum(seqs == expected for seqs in received)
    summary = {"readers_done": readers_done, "stalled_seconds": time.time() - started, "in_order": in_order}
    print(json.dumps(summary), flush=True)
    for channel in channels:
        await channel.close(grace=None)


def access_token(server: LocalEnsign) -> str:
    credentials = server.credentials or {}
    body = json.dumps({"client_id": credentials["ClientID"], "client_secret": credentials["ClientSecret"]})
    with urlopen(f"{server.auth_url}/v1/authenticate", body.encode(), timeout=10) as reply:
        return json.load(reply)["access_token"]


async def fan_out_run(server: LocalEnsign, topic: str, args: argparse.Namespace) -> dict:
    """The same publish run with ``--subscriptions`` open on the topic; then wait for every one of them."""
    setup = Ensign(**server.client_kwargs())
    await setup.ensure_topic_exists(topic)
    await close_client(setup)
    command = [sys.executable, __file__, "--hold", server.endpoint, access_token(server), topic]
    command += [str(args.subscriptions), str(args.events + 1)]  # +1: the untimed opening event
    holder = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        if holder.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscriber process could not open its subscriptions")
        result = await timed_publish(server, topic, args.events)
        last_ack = time.time()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        summary = json.loads(await asyncio.to_thread(holder.stdout.readline))
    finally:
        holder.kill()
        holder.wait()
    result["readers_after_s"] = summary["readers_done"] - last_ack
    result["stalled_s"] = summary["stalled_seconds"]
    result["in_order"] = summary["in_order"]
    return result


def repeat_line(repeat: int, alone: dict, crowded: dict, subscriptions: int) -> str:
    """One repeat's figures, without and with the subscriptions open."""
    return (
        f"repeat {repeat + 1}: {alone['eps']:,.0f} → {crowded['eps']:,.0f} events/s"
        f" (ratio {crowded['eps'] / alone['eps']:.2f});"
        f" ack p99 {alone['p99_ms']:,.0f} → {crowded['p99_ms']:,.0f} ms;"
        f" server CPU {alone['cpu_us']:,.0f} → {crowded['cpu_us']:,.0f} µs/event; readers complete"
        f" {crowded['readers_after_s']:.1f} s after the last ack, stalled ones {crowded['stalled_s']:.1f} s"
        f" after they start reading; {crowded['in_order']}/{subscriptions} got every event in order"
    )


async def benchmark(args: argparse.Namespace) -> bool:
    """Alternate runs without and with subscriptions; print each and the medians; True if delivery held."""
    server = LocalEnsign(project="bench").start()
    rows = []
    try:
        for repeat in range(args.repeats):
            alone = await timed_publish(server, f"alone-{repeat}", args.events)
            crowded = await fan_out_run(server, f"fan-out-{repeat}", args)
            rows.append((alone, crowded))
            print(repeat_line(repeat, alone, crowded, args.subscriptions), flush=True)
    finally:
        server.cleanup()
    ratio = statistics.median(crowded["eps"] / alone["eps"] for alone, crowded in rows)
    complete = all(crowded["in_order"] == args.subscriptions for _, crowded in rows)
    print(
        f"median ratio with {args.subscriptions} subscriptions open: {ratio:.2f} (target ≥ 0.5);"
        f" delivery {'PASS' if complete else 'FAIL'}"
    )
    return complete


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=3000, help="events per publish run (default 3000)")
    parser.add_argument("--subscriptions", type=int, default=200, help="subscriptions open (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (default 3)")
    parser.add_argument("--smoke", action="store_true", help="200 events, 20 subscriptions, one repeat")
    parser.add_argument("--hold", nargs=5, metavar="ARG", help=argparse.SUPPRESS)  # the subscriber process
    args = parser.parse_args(argv)
    if args.smoke:
        args.events, args.subscriptions, args.repeats = 200, 20, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.hold:
        endpoint, token, topic, count, events = args.hold
        asyncio.run(hold_subscriptions(endpoint, token, topic, int(count), int(events)))
        return 0
    return 0 if asyncio.run(benchmark(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
