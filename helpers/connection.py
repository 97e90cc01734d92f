"""Connecting to Ensign with credentials from the environment, never from code.

The lessons read five environment variables:

==========================  ============================================================
``ENSIGN_CLIENT_ID``        API key id (pyensign reads it itself)
``ENSIGN_CLIENT_SECRET``    API key secret (pyensign reads it itself)
``ENSIGN_ENDPOINT``         ``host:port`` of the Ensign gRPC API; unset → the local server
``ENSIGN_AUTH_URL``         URL of the authentication endpoint
``ENSIGN_INSECURE``         ``true`` for a plaintext connection (local servers only)
==========================  ============================================================

:func:`configure` runs once per notebook: with ``ENSIGN_ENDPOINT`` unset it uses the
repository's local server (``local_ensign.discovery.attach_or_start``: the one already
running for the data directory, else one that lives as long as this Python process) and
puts its address and key into the variables above. :func:`connect` then builds each
client from the :class:`Deployment` it returned and the environment alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pyensign.ensign import Ensign


@dataclass(frozen=True)
class Deployment:
    """Where the client connects, and whether this process started that server."""

    endpoint: str
    auth_url: str
    insecure: bool
    local: bool
    started_here: bool = False


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
    from local_ensign.discovery import attach_or_start  # only the local server needs it

    server = attach_or_start()
    key = json.loads(server.key_file.read_text())
    os.environ.update(
        ENSIGN_CLIENT_ID=key["ClientID"],
        ENSIGN_CLIENT_SECRET=key["ClientSecret"],
        ENSIGN_AUTH_URL=server.auth_url,
        ENSIGN_INSECURE="false" if server.tls else "true",
    )
    return Deployment(
        endpoint=server.endpoint,
        auth_url=server.auth_url,
        insecure=not server.tls,
        local=True,
        started_here=server.started_here,
    )


def connect(deployment: Deployment | None = None) -> Ensign:
    """An Ensign client for ``deployment`` (from :func:`configure`, called here if not given).

    The API key comes from the environment, where pyensign looks for it.
    """
    deployment = deployment or configure()
    return Ensign(endpoint=deployment.endpoint, insecure=deployment.insecure, auth_url=deployment.auth_url)
