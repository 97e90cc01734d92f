"""The streaming sentiment application end to end, on a real local server with real data."""

import pytest
from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.data import load_records, shuffled
from helpers.sentiment_app import Trainer, run_app, single_pass
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


def test_a_trainer_restarted_mid_stream_learns_each_review_once_and_ends_with_the_single_pass_metrics(
    server, records
):
    result = run(
        run_app(
            lambda: Ensign(**server.client_kwargs()),
            records,
            metrics_every=50,
            checkpoint_every=150,
            restart_after=250,
            on_alert=lambda _: None,
        ),
        timeout=180,
    )
    stopped, trainer = result.stopped, result.trainer
    assert stopped is not None and stopped.predicted == 250
    assert trainer.resumed_from == 150  # its last checkpoint: the 100 reviews after it came again
    assert trainer.predicted == len(records) == result.published.acked
    assert trainer.metrics.snapshot() == single_pass(records)
    # The new trainer published again the metrics of reviews 200 and 250; the monitor ignored them.
    assert result.monitor.repeated == 2
    assert result.monitor.seen == len(stopped.history) + len(trainer.history)


def test_a_second_run_with_the_same_checkpoint_directory_goes_on_with_the_same_model(
    server, records, tmp_path
):
    def run_on_half(half):
        app = run_app(
            lambda: Ensign(**server.client_kwargs()), half, checkpoint_dir=tmp_path, on_alert=lambda _: None
        )
        return run(app, timeout=180)

    run_on_half(records[:200])
    second = run_on_half(records[200:])
    assert second.trainer.resumed_from == 200
    assert second.trainer.predicted == len(records)
    assert second.trainer.metrics.snapshot() == single_pass(records)


@pytest.mark.parametrize("warm_up", [0, 1_000])
def test_the_monitor_raises_no_alert_before_its_warm_up(server, records, warm_up):
    alerts: list[str] = []
    app = run_app(
        lambda: Ensign(**server.client_kwargs()),
        records,
        metrics_every=50,
        threshold=0.99,  # under it from the start
        warm_up=warm_up,
        on_alert=alerts.append,
    )
    result = run(app, timeout=180)
    if warm_up:
        assert result.monitor.alerts == [] and alerts == []
    else:
        assert [alert["predicted"] for alert in result.monitor.alerts] == [50]
        rolling = result.monitor.alerts[0]["rolling_accuracy"]
        assert alerts == [f"ALERT after 50 reviews: rolling accuracy {rolling:.2f}, under 0.99"]
