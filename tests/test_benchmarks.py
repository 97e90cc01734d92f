"""Every benchmark runs on a few hundred events in seconds, so a change that breaks one fails the tests.

Each runs as a script, as ``make bench`` runs it, and must exit 0 (its correctness checks held)
and print every figure of its table and every ratio with its verdict as numbers.
"""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
NUMBER = r"-?[0-9][0-9,]*\.[0-9]+"
VERDICT = r"target ≥ [0-9.]+: (PASS|below target)"


def run_benchmark(script: str, *options: str) -> str:
    """Run a benchmark script; fail unless it exits 0; return what it printed."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *options], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def assert_row(output: str, label: str, numbers: int, verdict: bool = False) -> None:
    """``label`` starts a line followed by ``numbers`` numbers, then a verdict if ``verdict``."""
    tail = rf"  {VERDICT}" if verdict else ""
    pattern = rf"^{re.escape(label)}" + rf" +{NUMBER}" * numbers + rf"{tail}$"
    assert re.search(pattern, output, re.M), f"no row {label!r} with {numbers} numbers in:\n{output}"


def test_server_throughput_prints_every_figure_per_store_and_each_ratio_with_its_verdict():
    output = run_benchmark(
        "server_throughput.py", "--events", "300", "--repeats", "1", "--latency-events", "50"
    )  # every store: durable and in-memory, then jetstream-1 and jetstream-3
    for label in ("publish with acks, events/s", "live tail with acks, events/s"):
        assert_row(output, label, 3, verdict=True)  # durable, in-memory, their ratio
        assert_row(output, label, 2)  # jetstream-1, jetstream-3
    for label in (
        "live tail without acks, events/s",
        "grouped with acks, events/s",
        "query SELECT *, events/s",
        "paced publish→ack p50, ms",
        "paced publish→ack p99, ms",
        "publish: server CPU, µs/event",
        "live tail with acks: server CPU, µs/event",
        "grouped with acks: server CPU, µs/event",
    ):
        assert_row(output, label, 3)
        assert_row(output, label, 2)
    assert_row(output, "grouped / live tail, both with acks", 2, verdict=True)
    assert_row(output, "query / live tail without acks", 2, verdict=True)
    for label in (
        "live tail with acks: gateway CPU, µs/event",  # JetStream's server CPU, apart
        "live tail with acks: busiest node, µs/event",
        "publish with acks",  # JetStream / durable, no target
        "live tail with acks",
        "grouped / live tail, both with acks",  # within each JetStream store, no target
        "query / live tail without acks",
        "measured: publish with acks, events/s",  # the capacity on paper
        "one gateway's CPU at one core, events/s",
    ):
        assert_row(output, label, 2)
    assert "gateway process + all its nats-server processes" in output
    assert "capacity on paper for 10,000 events/s" in output
    for label in ("gateway processes needed", "machines for the gateways"):
        assert re.search(rf"^{label} +[0-9]+ +[0-9]+$", output, re.M), f"no {label!r} in:\n{output}"
    assert re.search(r"^NATS nodes needed, one machine each +(1|—) +(3|—)", output, re.M), output


def test_streaming_overhead_prints_river_subscribe_and_app_rates_and_their_ratio():
    output = run_benchmark("streaming_overhead.py", "--events", "300", "--repeats", "1")
    for label in ("river predict→fit alone, records/s", "subscribe + ack alone, events/s", "app, events/s"):
        assert_row(output, label, 1)
    assert_row(output, "app / min(river, subscribe)", 1, verdict=True)


def test_subscriber_fan_out_checks_every_subscription_and_prints_the_ratio():
    output = run_benchmark("subscriber_fan_out.py", "--smoke")
    assert_row(output, "publish with acks, events/s", 3, verdict=True)  # 20 open, none open, ratio
    assert_row(output, "publish: server CPU, µs/event", 3)
    assert "each of the 20 subscriptions got every event once and in order" in output
