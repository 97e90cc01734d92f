"""Connecting to Ensign with credentials from the environment, never from code.

The lessons read five environment variables:

==========================  ============================================================
``ENSIGN_CLIENT_ID``        API key id (pyensign reads it itself)
``ENSIGN_CLIENT_SECRET``    API key secret (pyensign reads it itself)
``ENSIGN_ENDPOINT``         ``host:port`` of the Ensign gRPC API; unset → the local server
``ENSIGN_AUTH_URL``         URL of the authentication endpoint
``ENSIGN_INSECURE``         ``true`` for a plaintext connection (local servers only)
==========================  ============================================================

With ``ENSIGN_ENDPOINT`` unset, :func:`configure` uses the repository's local server
(``local_ensign``): it finds the one already running for the data directory
(``$LOCAL_ENSIGN_DATA_DIR``, else ``.local_ensign`` at the repository root), or starts
one that lives as long as this Python process, and puts its address and a workshop
API key into the variables above. Either way, :func:`connect` then builds the client
from the environment alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pyensign.ensign import Ensign

REPO_DATA_DIR = Path(__file__).resolve().parent.parent / ".local_ensign"
KEY_FILE = "workshop-key.json"
_started_servers: list = []  # servers this process started; they stop when it exits


@dataclass(frozen=True)
class Deployment:
    """Where the client connects, and whether this process started that server."""

    endpoint: str
    auth_url: str
    insecure: bool
    local: bool
    started_here: bool = False


def local_data_dir() -> Path:
    """The local server's data directory: ``$LOCAL_ENSIGN_DATA_DIR`` or the repository's."""
    return Path(os.environ.get("LOCAL_ENSIGN_DATA_DIR") or REPO_DATA_DIR)


def configure() -> Deployment:
    """Fill the environment for the deployment in use, starting a local server if needed."""
    endpoint = os.environ.get("ENSIGN_ENDPOINT", "").strip()
    if endpoint:
        missing = [v for v in ("ENSIGN_CLIENT_ID", "ENSIGN_CLIENT_SECRET") if not os.environ.get(v)]
        if missing:
            raise RuntimeError(f"ENSIGN_ENDPOINT is set but {' and '.join(missing)} is not")
        return Deployment(
            endpoint=endpoint,
            auth_url=os.environ.get("ENSIGN_AUTH_URL", "https://auth.rotational.app"),
            insecure=os.environ.get("ENSIGN_INSECURE", "").lower() in ("1", "true", "yes"),
            local=False,
        )
    return _configure_local(local_data_dir())


def connect() -> Ensign:
    """An Ensign client for the configured deployment; credentials come from the environment."""
    deployment = configure()
    return Ensign(endpoint=deployment.endpoint, insecure=deployment.insecure, auth_url=deployment.auth_url)


def _configure_local(data_dir: Path) -> Deployment:
    from local_ensign.launcher import LaunchError, LocalEnsign, running_server

    state, started = running_server(data_dir), False
    if state is None:
        server = LocalEnsign(data_dir, project="workshop")
        try:
            server.start()
            _started_servers.append(server)
            state, started = {"endpoint": server.endpoint, "auth_url": server.auth_url}, True
        except LaunchError:
            state = running_server(data_dir)  # another process started it meanwhile
            if state is None:
                raise
    credentials = _workshop_key(data_dir)
    os.environ.update(
        ENSIGN_CLIENT_ID=credentials["ClientID"],
        ENSIGN_CLIENT_SECRET=credentials["ClientSecret"],
        ENSIGN_AUTH_URL=state["auth_url"],
        ENSIGN_INSECURE="true",
    )
    return Deployment(state["endpoint"], state["auth_url"], insecure=True, local=True, started_here=started)


def _workshop_key(data_dir: Path) -> dict[str, str]:
    """The local server's workshop API key, created once and kept in its data directory."""
    from local_ensign.catalog import Catalog
    from local_ensign.credentials import create_api_key, write_key_file

    path = data_dir / KEY_FILE
    if not path.exists():
        catalog = Catalog(data_dir)
        try:
            write_key_file(path, create_api_key(catalog, "workshop"))
        finally:
            catalog.close()
    return json.loads(path.read_text())
