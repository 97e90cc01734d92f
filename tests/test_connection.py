"""helpers.connection: the local server on demand, or any deployment named by the environment."""

import pytest

from helpers import connection
from helpers.streams import close_client
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
    for server in connection._started_servers:
        server.stop()
    connection._started_servers.clear()


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
    assert run(status_of(connection.connect())) == 1


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
        assert run(status_of(connection.connect())) == 1
    assert not connection._started_servers  # no local server was started


def test_an_endpoint_without_credentials_is_a_clear_error(clean_environment):
    clean_environment.setenv("ENSIGN_ENDPOINT", "ensign.example.com:443")
    with pytest.raises(RuntimeError, match="ENSIGN_CLIENT_ID and ENSIGN_CLIENT_SECRET"):
        connection.configure()
