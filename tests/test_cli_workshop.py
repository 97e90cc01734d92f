"""The workshop commands: topics, tail and query, run as subprocesses against a running server."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pyensign.ensign import Ensign
from pyensign.events import Event

from local_ensign.catalog import Catalog
from local_ensign.credentials import create_api_key
from local_ensign.launcher import LocalEnsign
from tests.conftest import run
from tests.test_cli import PYTHON, assert_one_line_error

TOPIC = "rides"
RIDES = [{"ride": 1, "city": "Zürich"}, {"ride": 2, "city": "Lyon"}, {"ride": 3, "city": "Porto"}]
PLAIN = b"a plain text note"


def workshop_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run ``python -m local_ensign ARGS`` without the environment's Ensign credentials unless given."""
    return subprocess.run(
        [*PYTHON, *args], capture_output=True, text=True, timeout=timeout, env=env or clean_env()
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ENSIGN_")}


async def publish(server: LocalEnsign, key_file: Path, topic: str, *events: Event) -> None:
    """Publish events with a real pyensign client and wait until every one is acked."""
    kwargs = {k: v for k, v in server.client_kwargs().items() if k not in ("client_id", "client_secret")}
    client = Ensign(cred_path=str(key_file), **kwargs)
    try:
        await client.ensure_topic_exists(topic)
        await client.publish(topic, *events)
        for event in events:
            await asyncio.wait_for(event.wait_for_ack(), 30)
    finally:
        await asyncio.wait_for(client.close(), 10)


def json_event(data: dict) -> Event:
    return Event(json.dumps(data, ensure_ascii=False).encode(), "application/json")


@pytest.fixture(scope="module")
def workshop(tmp_path_factory: pytest.TempPathFactory):
    """A server, a key file made by ``keys create --out``, and a topic of three JSON events and a text one."""
    server = LocalEnsign(tmp_path_factory.mktemp("workshop-data"), project="workshop").start()
    key_file = tmp_path_factory.mktemp("keys") / "workshop.json"
    made = workshop_cli(
        "keys", "create", "--data-dir", str(server.data_dir), "--project", "workshop", "--out", str(key_file)
    )
    assert made.returncode == 0, made.stderr
    run(publish(server, key_file, TOPIC, *(json_event(ride) for ride in RIDES), Event(PLAIN, "text/plain")))
    yield server, key_file
    server.stop()


def data_dir_and_key(workshop) -> list[str]:
    server, key_file = workshop
    return ["--data-dir", str(server.data_dir), "--key", str(key_file)]


def test_topics_lists_names_ids_counts_and_sizes(workshop):
    result = workshop_cli("topics", *data_dir_and_key(workshop))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["TOPIC", "ID", "EVENTS", "BYTES"]
    [(topic_id, events, size)] = [row.split()[1:] for row in rows if row.split()[0] == TOPIC]
    assert (len(topic_id), events) == (26, "4")
    assert int(size) >= sum(len(json.dumps(ride)) for ride in RIDES) + len(PLAIN)


def test_topics_without_info_still_counts_events(workshop, tmp_path: Path):
    server, _ = workshop
    catalog = Catalog(server.data_dir)
    try:
        credentials = create_api_key(catalog, "workshop", ["topics:read"])  # Info needs metrics:read too
    finally:
        catalog.close()
    key_file = tmp_path / "reader.json"
    key_file.write_text(json.dumps(credentials))
    result = workshop_cli("topics", "--data-dir", str(server.data_dir), "--key", str(key_file))
    assert result.returncode == 0, result.stderr
    [row] = [line.split() for line in result.stdout.splitlines()[1:] if line.split()[0] == TOPIC]
    assert (row[2], row[3]) == ("4", "-")
    assert result.stderr.startswith("sizes unknown")


def test_query_prints_rows_then_a_count(workshop):
    result = workshop_cli("query", *data_dir_and_key(workshop), f"SELECT * FROM {TOPIC}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [json.loads(line) for line in lines[:3]] == RIDES
    assert "Zürich" in lines[0]  # printed as is, not as \\u escapes
    assert lines[3] == f"(text/plain, {len(PLAIN)} bytes)"
    assert result.stderr.strip() == "4 rows"


def test_query_without_rows_and_with_bad_syntax(workshop):
    none = workshop_cli("query", *data_dir_and_key(workshop), f"SELECT * FROM {TOPIC} WHERE ride > 99")
    assert (none.returncode, none.stdout, none.stderr.strip()) == (0, "", "no rows")
    assert_one_line_error(
        workshop_cli("query", *data_dir_and_key(workshop), "SELEC * FROM rides"), "invalid query"
    )
    assert_one_line_error(workshop_cli("query", *data_dir_and_key(workshop), "  "), "the query is empty")


def start_tail(workshop, *args: str) -> subprocess.Popen:
    """``python -m local_ensign tail ARGS`` against the workshop server, its output captured."""
    return subprocess.Popen(
        [*PYTHON, "tail", *args, *data_dir_and_key(workshop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def test_tail_prints_events_as_they_arrive_and_stops_after_count(workshop):
    server, key_file = workshop
    run(publish(server, key_file, "live", json_event({"ride": 0, "before": True})))
    tail = start_tail(workshop, "live", "--count", "3")
    try:
        assert read_line(tail.stderr, 30).startswith("tailing 'live'")
        arriving = [{"ride": n, "live": True} for n in (10, 11, 12, 13)]
        run(publish(server, key_file, "live", *(json_event(ride) for ride in arriving)))
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
        tail.wait()
    assert tail.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == arriving[:3]  # from when it opened
    assert "Traceback" not in err


def test_tail_ends_cleanly_on_ctrl_c(workshop):
    tail = start_tail(workshop, TOPIC)
    try:
        assert read_line(tail.stderr, 30).startswith("tailing")
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=30)
    finally:
        tail.kill()
        tail.wait()
    assert tail.returncode == 130
    assert (out, err) == ("", "")


def test_tail_of_an_unknown_topic_is_a_one_line_error(workshop):
    assert_one_line_error(
        workshop_cli("tail", "no-such-topic", *data_dir_and_key(workshop)), "no topic named"
    )


def test_tail_ends_with_one_line_when_the_server_stops(tmp_path: Path):
    with LocalEnsign(tmp_path / "data", project="workshop") as server:
        key_file = tmp_path / "key.json"
        key_file.write_text(json.dumps(server.credentials))
        run(publish(server, key_file, "short-lived", json_event({"n": 0})))
        tail = subprocess.Popen(
            [*PYTHON, "tail", "short-lived", "--data-dir", str(server.data_dir), "--key", str(key_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        try:
            assert read_line(tail.stderr, 30).startswith("tailing")
            server.stop()
            out, err = tail.communicate(timeout=30)
        finally:
            tail.kill()
            tail.wait()
    assert (tail.returncode, out) == (1, "")
    assert err.strip() == "local_ensign: error: the server stopped answering"


def test_credentials_from_the_environment(workshop):
    server, key_file = workshop
    credentials = json.loads(key_file.read_text())
    env = {
        **clean_env(),
        "ENSIGN_CLIENT_ID": credentials["ClientID"],
        "ENSIGN_CLIENT_SECRET": credentials["ClientSecret"],
    }
    result = workshop_cli(
        "query", "--data-dir", str(server.data_dir), f"SELECT * FROM {TOPIC} LIMIT 1", env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == RIDES[0]

    wrong = {**env, "ENSIGN_CLIENT_SECRET": "not-the-secret"}
    assert_one_line_error(
        workshop_cli("topics", "--data-dir", str(server.data_dir), env=wrong), "cannot authenticate"
    )


def test_without_a_key_the_project_key_in_the_data_directory_is_made_once(workshop):
    server, _ = workshop
    key_path = server.data_dir / "workshop-key.json"
    key_path.unlink(missing_ok=True)
    first = workshop_cli("topics", "--data-dir", str(server.data_dir))
    assert first.returncode == 0, first.stderr
    assert TOPIC in first.stdout  # the same project as the lessons' key: the same topics
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    made = key_path.read_text()
    assert workshop_cli("topics", "--data-dir", str(server.data_dir)).returncode == 0
    assert key_path.read_text() == made

    other = workshop_cli("topics", "--data-dir", str(server.data_dir), "--project", "elsewhere")
    assert (other.returncode, other.stdout, other.stderr.strip()) == (0, "", "no topics in this project")


def test_without_a_server_the_commands_are_one_line_errors(tmp_path: Path):
    assert_one_line_error(
        workshop_cli("topics", "--data-dir", str(tmp_path)), "no local_ensign server is running"
    )
    with socket.socket() as probe:  # a port nothing listens on: a server that was killed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = {"endpoint": f"127.0.0.1:{port}", "auth_url": f"http://127.0.0.1:{port}"}
    (tmp_path / "server.json").write_text(json.dumps(state))
    assert_one_line_error(
        workshop_cli("query", "--data-dir", str(tmp_path), "SELECT * FROM x"), "no Ensign server answering"
    )


def read_line(stream, timeout: float) -> str:
    """The next line of a subprocess's pipe, or '' if none comes within ``timeout`` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline()


def test_help_lists_the_workshop_commands():
    result = subprocess.run([*PYTHON, "--help"], capture_output=True, text=True, timeout=30)
    for command in ("topics", "tail", "query"):
        assert command in result.stdout
