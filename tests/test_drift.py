"""Lesson 07's comparison: frozen, learning and reset-on-drift models over a shifting stream, and its CLI.

Small slices of the real corpora keep these fast; the figures measured on them are noted next to
each assertion, and the floors sit below them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers.data import Record, drift_order, load_records
from helpers.drift import (
    STRATEGIES,
    Comparison,
    compare,
    domain_starts,
    head_of_each_domain,
    split_first_domain,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stream() -> list[Record]:
    return drift_order(load_records())


@pytest.fixture(scope="module")
def small(stream: list[Record]) -> Comparison:
    """1,000 records of each domain: fitted on the tweets, then 3,000 records in three domains."""
    train, later = split_first_domain(head_of_each_domain(stream, 1000))
    return compare(train, later)


def flipped(record: Record) -> Record:
    """The record with the opposite label, as if the meaning of the labels had changed."""
    label = "negative" if record["label"] == "positive" else "positive"
    return {**record, "domain": "tweets, flipped", "label": label}


def test_a_small_drift_stream_keeps_the_domains_in_order(stream: list[Record]) -> None:
    small_stream = head_of_each_domain(stream, 1000)
    assert domain_starts(small_stream) == {
        "tweets": 0,
        "movie_reviews": 1000,
        "amazon_reviews": 2000,
        "nyt_editorials": 3000,
    }
    train, later = split_first_domain(small_stream)
    assert {r["domain"] for r in train} == {"tweets"} and len(later) == 3000
    kept = {r["id"] for r in small_stream}
    assert small_stream == [r for r in stream if r["id"] in kept]  # the drift order, unchanged


def test_the_learning_model_beats_the_frozen_one_on_every_later_domain(small: Comparison) -> None:
    assert list(small.contenders) == list(STRATEGIES)
    assert small.later_domains() == ["movie_reviews", "amazon_reviews", "nyt_editorials"]
    # Measured (frozen / learning): movies 0.512 / 0.581, Amazon 0.568 / 0.707, NYT 0.581 / 0.605.
    for domain in small.later_domains():
        assert small.accuracy("learning", domain) > small.accuracy("frozen", domain), domain
        assert small.contenders["frozen"].accuracy[domain].cm.n_samples == 1000


def test_the_frozen_model_learns_nothing_and_has_no_detector(small: Comparison, stream: list[Record]) -> None:
    frozen = small.contenders["frozen"]
    train, _ = split_first_domain(head_of_each_domain(stream, 1000))
    fresh = compare(train, [])  # fitted on the same tweets, and nothing after
    probe = stream[-1]["text"]
    assert frozen.model.predict_proba_one(probe) == fresh.contenders["frozen"].model.predict_proba_one(probe)
    assert frozen.detector is None and frozen.alarms == []


def test_the_curves_have_a_point_every_50_records_and_one_at_the_end(small: Comparison) -> None:
    assert small.positions[0] == 1000 + 49
    assert small.positions[-1] == 3999
    assert len(small.positions) == 3000 // 50
    assert all(len(curve) == len(small.positions) for curve in small.curves.values())
    assert all(0.0 <= value <= 1.0 for curve in small.curves.values() for value in curve)


def test_adwin_fires_when_the_labels_flip_and_resetting_then_wins(stream: list[Record]) -> None:
    tweets = [r for r in stream if r["domain"] == "tweets"]
    train, before, after = tweets[:1000], tweets[1000:2000], [flipped(r) for r in tweets[2000:4000]]
    result = compare(train, before + after)
    learning, resetting = result.contenders["learning"], result.contenders["reset on drift"]

    # Measured: ADWIN fired at 2,055 (error rate 0.241 → 0.510), 55 records after the flip.
    first = learning.alarms[0]
    assert 2000 <= first.position < 2300 and first.rose
    assert resetting.alarms[0] == first  # the same model, fed the same records, until then
    assert all(alarm.position >= 2000 for alarm in learning.alarms)  # no alarm before the flip
    # Measured (learning / reset on drift) after the flip: 0.313 / 0.657.
    assert (
        result.accuracy("reset on drift", "tweets, flipped")
        > result.accuracy("learning", "tweets, flipped") + 0.2
    )
    assert result.accuracy("frozen", "tweets, flipped") < 0.3


def test_the_command_line_prints_the_table_and_writes_the_plot(tmp_path) -> None:
    plot = tmp_path / "drift.png"
    result = subprocess.run(
        [sys.executable, "-m", "helpers.drift", "--limit", "300", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "fitted on 300 tweets, then 900 records" in result.stdout
    for row in ("movie_reviews", "amazon_reviews", "nyt_editorials", "learning: ADWIN fired"):
        assert row in result.stdout
    assert plot.read_bytes().startswith(PNG_MAGIC)
