"""The trainer program learns every review exactly once through kill -9 and server restarts.

Real processes against a real server: ``python -m helpers.sentiment_app train`` runs in a
child process, a client here publishes reviews (and two malformed events), and the trainer
is killed with SIGKILL, or the server is killed and started again, part-way through the
stream. The model the trainer ends with must equal, count for count and prediction for
prediction, the one a single pass over the same reviews builds in memory.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers import snapshots
from helpers.data import load_records, shuffled
from helpers.learning import StreamMetrics, examples, make_model, predict_then_learn
from helpers.sentiment_app import REVIEWS, publish_reviews
from helpers.streams import close_client, json_event, publish_records
from local_ensign.launcher import LocalEnsign

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_EVERY = 1_000
PROGRESS = re.compile(r"^\s*([\d,]+) reviews learned:")  # the trainer's progress line


@pytest.fixture(scope="module")
def reviews() -> list[dict]:
    """3,000 shuffled reviews."""
    return shuffled(load_records())[:3000]


@pytest.fixture(scope="module")
def stream(reviews) -> list[dict | Event]:
    """The reviews with two malformed events among them: bare text, and a record without its text."""
    bare_text = Event(b"not JSON at all", mimetype="text/plain")
    no_text = json_event({"id": "x", "label": "positive"})
    return [*reviews[:500], bare_text, *reviews[500:2000], no_text, *reviews[2000:]]


@pytest.fixture(scope="module")
def single_pass(reviews):
    """The model and metrics of one predict→fit pass over the reviews, in memory."""
    model, scores = make_model(), StreamMetrics()
    for x, y in examples(reviews):
        predict_then_learn(model, scores, x, y)
    return model, scores.snapshot()


@pytest.fixture
def local_server(tmp_path: Path):
    """A server of its own for each test (not conftest's, shared by a module), restartable."""
    instance = LocalEnsign(tmp_path / "ensign", project="tests").start()
    yield instance
    instance.stop()


class TrainerProcess:
    """``python -m helpers.sentiment_app train`` in a child process, its output read line by line."""

    def __init__(self, server: LocalEnsign, checkpoint_dir: Path) -> None:
        credentials = server.credentials
        env = {
            **os.environ,
            "ENSIGN_ENDPOINT": server.endpoint,
            "ENSIGN_CLIENT_ID": credentials["ClientID"],
            "ENSIGN_CLIENT_SECRET": credentials["ClientSecret"],
            "ENSIGN_AUTH_URL": server.auth_url,
            "ENSIGN_INSECURE": "true",
        }
        command = [sys.executable, "-u", "-m", "helpers.sentiment_app", "train"]
        command += ["--checkpoint-dir", str(checkpoint_dir), "--checkpoint-every", str(CHECKPOINT_EVERY)]
        command += ["--idle-timeout", "30"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, wanted: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first line from now on for which ``wanted`` is true; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if wanted(line):
                return line
        printed = "\n".join(self.output)
        raise AssertionError(f"the trainer never printed the line awaited; it printed:\n{printed}")

    def learned_at_least(self, count: int) -> Callable[[str], bool]:
        return lambda line: bool(match := PROGRESS.match(line)) and int(match[1].replace(",", "")) >= count

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def finish(self, timeout: float = 60.0) -> list[str]:
        """Wait for the trainer to stop by itself (exit status 0), and return all it printed."""
        self.wait_for(lambda line: line.startswith("final metrics"), timeout)
        assert self.process.wait(10) == 0
        return self.output


def publish_in_background(server: LocalEnsign, events: list, end: bool = True) -> threading.Thread:
    """Publish ``events`` (and the end-of-stream marker if ``end``) from a thread, checking every ack."""

    async def publish() -> None:
        client = Ensign(**server.client_kwargs())
        try:
            if end:
                report = await publish_reviews(client, events, timeout=60)
            else:
                report = await publish_records(client, REVIEWS, events, timeout=60)
        finally:
            await close_client(client)
        assert report.acked == report.published == len(events)

    thread = threading.Thread(target=lambda: asyncio.run(publish()))
    thread.start()
    return thread


def assert_same_as_single_pass(checkpoint: Path, reviews: list[dict], single_pass) -> None:
    """The checkpointed model has every review once: the single pass's counts, predictions and metrics."""
    saved = snapshots.load(checkpoint)
    model, figures = single_pass
    assert saved.learned == len(reviews)
    assert saved.metrics["bad_input"] == 2
    assert saved.metrics["scores"].snapshot() == figures
    ours, theirs = saved.model["MultinomialNB"], model["MultinomialNB"]
    assert ours.class_counts == theirs.class_counts
    assert ours.class_totals == theirs.class_totals
    assert ours.feature_counts == theirs.feature_counts
    texts = [x for x, _ in examples(reviews[::6])]
    assert [saved.model.predict_proba_one(x) for x in texts] == [model.predict_proba_one(x) for x in texts]


def learned_here(output: list[str]) -> int:
    """How many reviews a trainer learned itself, from its last line but two."""
    line = next(line for line in output if line.startswith("stopped ("))
    return int(re.search(r"([\d,]+) learned here", line)[1].replace(",", ""))


KILL_POINTS = {
    # where: (the trainer's line to kill it after, the reviews its stored checkpoint then holds).
    # A checkpoint comes every 1,000 events, the malformed ones included: the second holds the
    # first 999 reviews and the bare text, the third 1,999 reviews and the bare text.
    "before the first checkpoint": (300, 0),
    "between two checkpoints": (1_500, 999),
    "as a checkpoint is stored": ("checkpoint 3 stored", 1_999),
}


@pytest.mark.parametrize("where", KILL_POINTS)
def test_a_trainer_killed_with_sigkill_and_restarted_learns_every_review_exactly_once(
    where, local_server, tmp_path, reviews, stream, single_pass
):
    kill_after, in_checkpoint = KILL_POINTS[where]
    server = local_server
    checkpoints = tmp_path / "checkpoints"
    first = TrainerProcess(server, checkpoints)
    first.wait_for(lambda line: "starts after the 0 events" in line)
    publisher = publish_in_background(server, stream)
    if isinstance(kill_after, int):
        first.wait_for(first.learned_at_least(kill_after))
    else:
        first.wait_for(lambda line: line.startswith(kill_after))
    first.kill()
    saved = snapshots.read_header((checkpoints / "trainer.snapshot").read_bytes())
    assert saved["learned"] == in_checkpoint  # killed where this case means to

    second = TrainerProcess(server, checkpoints)
    output = second.finish()
    publisher.join(60)
    assert not publisher.is_alive()
    assert f"resumed from checkpoint {saved['version']}: {in_checkpoint:,} reviews learned" in output
    assert learned_here(output) == len(reviews) - in_checkpoint  # the rest, once
    assert_same_as_single_pass(checkpoints / "trainer.snapshot", reviews, single_pass)


def test_a_trainer_keeps_learning_each_review_once_through_a_server_killed_and_restarted(
    local_server, tmp_path, reviews, stream, single_pass
):
    server, checkpoints = local_server, tmp_path / "checkpoints"
    trainer = TrainerProcess(server, checkpoints)
    trainer.wait_for(lambda line: "starts after the 0 events" in line)
    first_half = publish_in_background(server, stream[:1500], end=False)
    trainer.wait_for(trainer.learned_at_least(1_200))
    first_half.join(60)
    server.kill()  # SIGKILL: what the server had not committed is lost, as in a crash
    server.start()
    second_half = publish_in_background(server, stream[1500:])
    output = trainer.finish()
    second_half.join(60)
    assert not second_half.is_alive()
    assert learned_here(output) == len(reviews)  # one process, every review once
    skipped = next(line for line in output if line.startswith("skipped "))
    assert int(skipped.split()[1].replace(",", "")) > 0  # the server sent again what the model had
    assert_same_as_single_pass(checkpoints / "trainer.snapshot", reviews, single_pass)


def test_ctrl_c_stores_a_checkpoint_of_everything_learned_so_the_next_trainer_learns_only_the_rest(
    local_server, tmp_path, reviews, stream, single_pass
):
    server, checkpoints = local_server, tmp_path / "checkpoints"
    first = TrainerProcess(server, checkpoints)
    first.wait_for(lambda line: "starts after the 0 events" in line)
    publisher = publish_in_background(server, stream)
    first.wait_for(first.learned_at_least(1_500))
    first.process.send_signal(signal.SIGINT)
    assert first.process.wait(30) == 130
    saved = snapshots.read_header((checkpoints / "trainer.snapshot").read_bytes())
    assert 1_500 <= saved["learned"] < len(reviews)  # more than the last periodic checkpoint (999)

    second = TrainerProcess(server, checkpoints)
    output = second.finish()
    publisher.join(60)
    assert learned_here(output) == len(reviews) - saved["learned"]
    assert_same_as_single_pass(checkpoints / "trainer.snapshot", reviews, single_pass)
