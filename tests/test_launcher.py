"""local_ensign.launcher: ready from server.json, and a child that never outlives its owner."""

from __future__ import annotations

import atexit
import gc
import json
import socket
import time

import pytest

from local_ensign.launcher import LaunchError, LocalEnsign


def test_the_launcher_takes_where_the_server_listens_from_server_json(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = {"pid": 1, "endpoint": "127.0.0.1:1", "auth_url": "http://127.0.0.1:1"}  # a killed server's
    (data_dir / "server.json").write_text(json.dumps(stale))
    with LocalEnsign(data_dir) as server:
        state = json.loads((data_dir / "server.json").read_text())
        assert state["pid"] == server.process.pid
        assert (server.endpoint, server.auth_url) == (state["endpoint"], state["auth_url"])


def test_a_server_that_cannot_start_fails_at_once_with_its_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(LaunchError, match=f"cannot listen on 127.0.0.1:{port}"):
            LocalEnsign(tmp_path, port=port).start(timeout=60)
    assert time.monotonic() - started < 30  # it exited: nobody waited for the timeout


def test_starts_and_restarts_add_no_exit_handlers(tmp_path):
    first = LocalEnsign(tmp_path / "first").start()
    handlers = atexit._ncallbacks()
    first.restart()
    first.restart()
    second = LocalEnsign(tmp_path / "second").start()
    second.stop()
    first.stop()
    assert atexit._ncallbacks() == handlers


def test_a_launcher_dropped_without_stop_stops_its_server(tmp_path):
    server = LocalEnsign(tmp_path).start()
    process = server.process
    del server
    gc.collect()
    assert process.poll() == 0  # stopped cleanly (SIGTERM), before the process that started it ends
