"""Benchmarks run in a few seconds on a few hundred events, so a change that breaks one fails the tests."""

import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_fan_out_benchmark_runs_and_every_subscription_gets_every_event():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "subscriber_fan_out.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "20/20 got every event in order" in result.stdout
    assert "delivery PASS" in result.stdout


def test_the_server_throughput_benchmark_reports_grouped_delivery_and_query_ratios():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "server_throughput.py"),
            *("--events", "300", "--repeats", "1", "--latency-events", "50", "--latency-rate", "500"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    number = r"[0-9][0-9,]*\.[0-9]+"
    for row in (
        "grouped delivery with acks (1 member), events/s",
        "query SELECT * (whole cursor), events/s",
    ):
        assert re.search(rf"^{re.escape(row)} +{number} +{number} ", result.stdout, re.M), result.stdout
    for ratio, target in (
        ("grouped delivery / live tail, both with acks", "0.9"),
        ("query / live tail without acks", "1.0"),
    ):
        verdict = rf"target ≥ {re.escape(target)}×: (PASS|below target)"
        line = rf"^{re.escape(ratio)} +{number} +{number}  {verdict}$"
        assert re.search(line, result.stdout, re.M), result.stdout
    assert "anomaly" not in result.stdout, result.stdout
