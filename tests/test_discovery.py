"""local_ensign.discovery: one default data directory, attach-or-start, and key files."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from pyensign.ensign import Ensign

import local_ensign
from helpers.streams import close_client
from local_ensign.discovery import (
    attach_or_start,
    create_key_file,
    default_data_dir,
    project_key_file,
    running_server,
    stop_started_servers,
)
from local_ensign.launcher import LocalEnsign
from local_ensign.server import ServerError
from tests.conftest import run


@pytest.fixture
def started_here():
    """Stop whatever attach_or_start started during the test."""
    yield
    stop_started_servers()


async def status_with_key_file(found) -> int:
    address = {"endpoint": found.endpoint, "auth_url": found.auth_url, "insecure": not found.tls}
    client = Ensign(cred_path=str(found.key_file), **address)
    try:
        return (await client.status()).status
    finally:
        await close_client(client)


def test_the_default_data_directory_is_the_same_from_any_working_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("LOCAL_ENSIGN_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    from_elsewhere = default_data_dir()
    monkeypatch.chdir(Path(local_ensign.__file__).parent)
    assert default_data_dir() == from_elsewhere
    assert from_elsewhere.is_absolute()
    assert from_elsewhere.parent == Path(local_ensign.__file__).resolve().parent.parent

    monkeypatch.setenv("LOCAL_ENSIGN_DATA_DIR", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"


def test_attach_or_start_starts_a_server_once_then_attaches_to_it(tmp_path, started_here):
    first = attach_or_start(tmp_path / "data")
    again = attach_or_start(tmp_path / "data")
    assert first.started_here and not again.started_here
    assert again.endpoint == first.endpoint and again.auth_url == first.auth_url
    assert again.key_file == first.key_file
    assert run(status_with_key_file(again)) == 1  # HEALTHY, with the key file it returned

    stop_started_servers()
    assert running_server(tmp_path / "data") is None


def test_attach_or_start_uses_the_server_another_process_runs(tmp_path, started_here):
    with LocalEnsign(tmp_path / "data") as other:
        found = attach_or_start(tmp_path / "data")
        assert not found.started_here
        assert (found.endpoint, found.auth_url) == (other.endpoint, other.auth_url)
        assert run(status_with_key_file(found)) == 1


def test_a_server_json_left_by_a_killed_server_is_not_attached_to(tmp_path, started_here):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = {"pid": 1, "endpoint": f"127.0.0.1:{port}", "auth_url": f"http://127.0.0.1:{port}"}
    (data_dir / "server.json").write_text(json.dumps(stale))
    found = attach_or_start(data_dir)
    assert found.started_here and found.endpoint != stale["endpoint"]
    assert run(status_with_key_file(found)) == 1


def test_the_project_key_file_is_made_once_owner_only_and_reused(tmp_path):
    path = project_key_file(tmp_path, "workshop")
    made = path.read_text()
    assert set(json.loads(made)) == {"ClientID", "ClientSecret"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert project_key_file(tmp_path, "workshop") == path
    assert path.read_text() == made
    with pytest.raises(ValueError, match="cannot name a key file"):
        project_key_file(tmp_path, "../elsewhere")


def test_create_key_file_writes_a_whole_owner_only_file_or_a_clear_error(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = tmp_path / "keys" / "reader.json"
    credentials = create_key_file(path, data_dir, "p", ["topics:read"])
    assert json.loads(path.read_text()) == credentials
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in path.parent.iterdir()) == ["reader.json"]  # no partial file left

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ServerError, match="cannot write key file"):
        create_key_file(blocker / "key.json", data_dir, "p")
    with pytest.raises(ValueError, match="unknown permission"):
        create_key_file(tmp_path / "bad.json", data_dir, "p", ["fly"])
