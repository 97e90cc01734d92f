"""helpers.connection: the local server on demand, or any deployment named by the environment."""

import ast
from pathlib import Path

import pytest

from helpers import connection
from helpers.streams import close_client
from local_ensign.discovery import stop_started_servers
from local_ensign.launcher import LocalEnsign
from tests.conftest import run

VARIABLES = (
    "ENSIGN_CLIENT_ID",
    "ENSIGN_CLIENT_SECRET",
    "ENSIGN_ENDPOINT",
    "ENSIGN_AUTH_URL",
    "ENSIGN_INSECURE",
)


@pytest.fixture
def clean_environment(monkeypatch, tmp_path):
    for name in VARIABLES:  # recorded, so the values configure() writes are undone afterwards
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOCAL_ENSIGN_DATA_DIR", str(tmp_path / "local"))
    yield monkeypatch
    stop_started_servers()


async def status_of(client):
    try:
        return (await client.status()).status
    finally:
        await close_client(client)


def test_without_an_endpoint_a_local_server_is_started_once_and_reused(clean_environment):
    first = connection.configure()
    again = connection.configure()
    assert first.local and first.started_here and first.insecure
    assert again.endpoint == first.endpoint and not again.started_here
    assert connection.os.environ["ENSIGN_CLIENT_ID"] and connection.os.environ["ENSIGN_CLIENT_SECRET"]
    assert run(status_of(connection.connect(first))) == 1
    assert run(status_of(connection.connect())) == 1  # configures by itself when given nothing


def test_connect_with_a_deployment_configures_nothing(clean_environment, tmp_path):
    clean_environment.setenv("ENSIGN_CLIENT_ID", "id")
    clean_environment.setenv("ENSIGN_CLIENT_SECRET", "secret")
    elsewhere = connection.Deployment("127.0.0.1:1", "http://127.0.0.1:1", insecure=True, local=False)
    client = connection.connect(elsewhere)
    assert client is not None
    assert not (tmp_path / "local").exists()  # configure() would have started a server there


def test_an_endpoint_in_the_environment_is_used_as_another_deployment(clean_environment, tmp_path):
    with LocalEnsign(tmp_path / "elsewhere") as elsewhere:
        key = elsewhere.credentials
        clean_environment.setenv("ENSIGN_ENDPOINT", elsewhere.endpoint)
        clean_environment.setenv("ENSIGN_AUTH_URL", elsewhere.auth_url)
        clean_environment.setenv("ENSIGN_INSECURE", "true")
        clean_environment.setenv("ENSIGN_CLIENT_ID", key["ClientID"])
        clean_environment.setenv("ENSIGN_CLIENT_SECRET", key["ClientSecret"])
        deployment = connection.configure()
        assert not deployment.local and deployment.endpoint == elsewhere.endpoint
        assert run(status_of(connection.connect(deployment))) == 1
    assert not (tmp_path / "local").exists()  # no local server was started


def test_an_endpoint_without_credentials_is_a_clear_error(clean_environment):
    clean_environment.setenv("ENSIGN_ENDPOINT", "ensign.example.com:443")
    with pytest.raises(RuntimeError, match="ENSIGN_CLIENT_ID and ENSIGN_CLIENT_SECRET"):
        connection.configure()


def test_the_helper_finds_the_server_through_discovery_alone():
    """No catalog, key or database code in the lessons' kernel: local_ensign.discovery does that."""
    tree = ast.parse(Path(connection.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import)]
    imported |= {alias.name for node in imports for alias in node.names}
    assert {name for name in imported if name.startswith("local_ensign")} == {"local_ensign.discovery"}
    assert "sqlite3" not in imported
