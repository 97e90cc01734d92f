"""Benchmarks run in a few seconds on a few hundred events, so a change that breaks one fails the tests."""

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
