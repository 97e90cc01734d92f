"""The command line: serve, keys create, status, and its one-line errors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from pyensign.ensign import Ensign

from local_ensign.launcher import LocalEnsign
from tests.conftest import run

PYTHON = [sys.executable, "-m", "local_ensign"]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*PYTHON, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_flag_is_a_one_line_error():
    assert_one_line_error(cli("serve", "--bogus"), "unrecognized arguments: --bogus")
    assert_one_line_error(cli("serve", "--port", "70000"), "not a port number")


def test_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("serve", "--data-dir", str(tmp_path), "--port", str(port), "--auth-port", "0")
    assert_one_line_error(result, f"127.0.0.1:{port}")


def test_unusable_data_directory_is_a_one_line_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert_one_line_error(cli("serve", "--data-dir", str(not_a_dir)), "not a directory")
    assert_one_line_error(
        cli("keys", "create", "--data-dir", str(not_a_dir), "--project", "p"), "not a directory"
    )


def test_status_without_a_server_is_a_one_line_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert_one_line_error(
        cli("status", "--endpoint", f"127.0.0.1:{port}", "--timeout", "1"), "no Ensign server"
    )


def test_serve_prints_one_ready_line_and_stops_cleanly_on_signals(tmp_path):
    for signum in (signal.SIGINT, signal.SIGTERM):
        process = subprocess.Popen(
            [*PYTHON, "serve", "--data-dir", str(tmp_path), "--port", "0", "--auth-port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = process.stdout.readline()
        assert ready.startswith("local_ensign ready: Ensign gRPC at 127.0.0.1:")
        state = json.loads((tmp_path / "server.json").read_text())
        assert state["pid"] == process.pid
        assert cli("status", "--data-dir", str(tmp_path)).stdout.startswith("HEALTHY")
        process.send_signal(signum)
        assert process.wait(timeout=15) == 0
        assert "Traceback" not in process.stderr.read()
        assert not (tmp_path / "server.json").exists()
        process.stdout.close()
        process.stderr.close()


def test_second_server_on_the_same_data_directory_is_refused(tmp_path):
    with LocalEnsign(tmp_path):
        result = cli("serve", "--data-dir", str(tmp_path), "--port", "0", "--auth-port", "0")
    assert_one_line_error(result, "already using")


def test_keys_create_writes_a_key_file_that_pyensign_reads_while_the_server_runs(tmp_path):
    with LocalEnsign(tmp_path / "data") as server:
        key_file = tmp_path / "keys" / "workshop.json"
        result = cli(
            "keys",
            "create",
            "--data-dir",
            str(server.data_dir),
            "--project",
            "workshop",
            "--out",
            str(key_file),
        )
        assert result.returncode == 0, result.stderr
        credentials = json.loads(key_file.read_text())
        assert set(credentials) == {"ClientID", "ClientSecret"}
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        catalog_bytes = (server.data_dir / "catalog.sqlite3").read_bytes()
        assert credentials["ClientSecret"].encode() not in catalog_bytes

        async def body():
            client = Ensign(
                cred_path=str(key_file), endpoint=server.endpoint, insecure=True, auth_url=server.auth_url
            )
            state = await client.status()
            topic_id = await client.ensure_topic_exists("from-key-file")
            await client.close()
            return state, topic_id

        state, topic_id = run(body())
    assert state.status == 1 and len(topic_id) == 26


def test_keys_create_prints_json_without_out(tmp_path):
    result = cli("keys", "create", "--data-dir", str(tmp_path), "--project", "demo")
    assert result.returncode == 0
    assert set(json.loads(result.stdout)) == {"ClientID", "ClientSecret"}


def test_server_never_outlives_the_process_that_started_it(tmp_path):
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from local_ensign.launcher import LocalEnsign;"
            f"s = LocalEnsign({str(tmp_path)!r}).start(); print(s.process.pid, flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.kill()  # SIGKILL: no atexit, no cleanup in the parent
    parent.wait()
    parent.stdout.close()
    deadline = time.monotonic() + 15
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): count it as gone once it has exited.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def test_launcher_stop_shuts_the_server_down_cleanly(tmp_path):
    server = LocalEnsign(tmp_path).start()
    process = server.process
    server.stop()
    assert process.returncode == 0, server.log_tail()
    assert "Fatal" not in server.log_path.read_text()
