"""The streaming sentiment application end to end, on a real local server with real data."""

from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.data import load_records, shuffled
from helpers.sentiment_app import Monitor, run_app
from helpers.streams import json_event
from tests.conftest import run

SERVER_STORES = ("sqlite",)  # this tests the application, not the store

RECORDS = shuffled(load_records())[:400]


def run_on(server, records):
    def connect() -> Ensign:
        return Ensign(**server.client_kwargs())

    quiet = Monitor(report=lambda _: None)
    return run(run_app(connect, records, metrics_every=50, monitor=quiet), timeout=180)


def test_every_record_is_published_acked_and_predicted(server):
    result = run_on(server, RECORDS)
    assert result.published.published == result.published.acked == len(RECORDS)
    assert result.trainer.predicted == len(RECORDS) and result.trainer.bad_input == 0
    assert result.trainer.history[-1]["final"] is True
    assert result.monitor.seen == len(result.trainer.history)


def test_bad_input_is_nacked_counted_and_leaves_the_metrics_unchanged(server):
    not_json = Event(b"this is not JSON", mimetype="text/plain")
    no_text = json_event({"id": "x", "label": "positive"})
    with_bad = [*RECORDS[:100], not_json, *RECORDS[100:200], no_text, *RECORDS[200:]]

    clean = run_on(server, RECORDS)
    dirty = run_on(server, with_bad)

    assert dirty.published.published == dirty.published.acked == len(RECORDS) + 2
    assert dirty.trainer.bad_input == 2
    assert dirty.trainer.predicted + dirty.trainer.bad_input == dirty.published.acked
    assert dirty.trainer.metrics.snapshot() == clean.trainer.metrics.snapshot()
