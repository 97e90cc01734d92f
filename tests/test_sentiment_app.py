"""The streaming sentiment application end to end, on a real local server with real data."""

import pytest
from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.data import load_records, shuffled
from helpers.sentiment_app import Trainer, run_app
from helpers.streams import json_event
from tests.conftest import run

SERVER_STORES = ("sqlite",)  # this tests the application, not the store


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """400 shuffled reviews of the corpus."""
    return shuffled(load_records())[:400]


def run_on(server, records):
    def new_client() -> Ensign:
        return Ensign(**server.client_kwargs())

    return run(run_app(new_client, records, metrics_every=50, on_alert=lambda _: None), timeout=180)


def test_every_record_is_published_acked_and_predicted(server, records):
    result = run_on(server, records)
    assert result.published.published == result.published.acked == len(records)
    assert result.trainer.predicted == len(records) and result.trainer.bad_input == 0
    assert result.trainer.history[-1]["final"] is True
    assert result.monitor.seen == len(result.trainer.history)


def test_a_trainer_is_made_with_the_client_it_publishes_its_metrics_with():
    with pytest.raises(TypeError, match="ensign"):
        Trainer()  # no client to publish with: refused at once, not at the first metrics event


def test_bad_input_is_nacked_counted_and_leaves_the_metrics_unchanged(server, records):
    not_json = Event(b"this is not JSON", mimetype="text/plain")
    no_text = json_event({"id": "x", "label": "positive"})
    with_bad = [*records[:100], not_json, *records[100:200], no_text, *records[200:]]

    clean = run_on(server, records)
    dirty = run_on(server, with_bad)

    assert dirty.published.published == dirty.published.acked == len(records) + 2
    assert dirty.trainer.bad_input == 2
    assert dirty.trainer.predicted + dirty.trainer.bad_input == dirty.published.acked
    assert dirty.trainer.metrics.snapshot() == clean.trainer.metrics.snapshot()
