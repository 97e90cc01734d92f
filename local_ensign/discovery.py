"""Finding the local server: its data directory, the server running there, and a key for it.

Everything that needs a local server asks here: ``python -m local_ensign`` (``serve``,
``keys create``, ``status`` and the workshop commands), ``helpers.connection`` in the
lessons, and ``make``. So they agree on one data directory by default, and a client
finds the server running for it through the ``server.json`` the server writes there.

>>> server = attach_or_start()                          # doctest: +SKIP
>>> Ensign(cred_path=str(server.key_file), endpoint=server.endpoint,
...        auth_url=server.auth_url, insecure=not server.tls)
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from .credentials import create_key, write_key_file
from .launcher import LaunchError, LocalEnsign, ask_status
from .server import ServerError, read_state, serves_tls

DATA_DIR_NAME = ".local_ensign"
WORKSHOP_PROJECT = "workshop"  # the project of the lessons' key, and of the workshop commands
STATUS_TIMEOUT = 2.0  # seconds a running server gets to answer Status
_KEY_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# Servers attach_or_start started, by data directory. Holding them keeps them running until
# this process exits (each child also stops by itself then: it watches a pipe from us).
_started: dict[Path, LocalEnsign] = {}


@dataclass(frozen=True)
class RunningServer:
    """A local server that answers, and a key file a client of it can use."""

    data_dir: Path
    endpoint: str  # host:port of the gRPC API
    auth_url: str
    key_file: Path  # JSON that Ensign(cred_path=...) reads
    tls: bool
    started_here: bool  # False when another process (make server, make lab, a kernel) runs it


def default_data_dir() -> Path:
    """Where the local server keeps its data unless told otherwise.

    ``$LOCAL_ENSIGN_DATA_DIR`` if set, else a folder at the repository's root (the folder
    that holds this package), whatever the working directory: the lessons run in
    ``notebooks/``, ``make`` at the root, and both must find the same server.
    """
    configured = os.environ.get("LOCAL_ENSIGN_DATA_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / DATA_DIR_NAME


def running_server(data_dir: Path, timeout: float = STATUS_TIMEOUT) -> dict | None:
    """The ``server.json`` of the server running for ``data_dir``, if it answers ``Status``, else None."""
    state = read_state(Path(data_dir))
    if not (isinstance(state, dict) and isinstance(state.get("endpoint"), str) and "auth_url" in state):
        return None
    try:
        ask_status(state["endpoint"], timeout, tls=serves_tls(state))
    except grpc.RpcError:
        return None  # a server that was killed left its server.json behind
    return state


def attach_or_start(data_dir: Path | None = None, project: str = WORKSHOP_PROJECT) -> RunningServer:
    """The server running for ``data_dir`` (default :func:`default_data_dir`), started if none runs.

    A server started here lives as long as this process. The key file is the project's,
    kept in the data directory (:func:`project_key_file`).
    """
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    state, started = running_server(data_dir), False
    if state is None:
        server = LocalEnsign(data_dir, project=project)
        try:
            server.start()
        except LaunchError:
            state = running_server(data_dir)  # another process started one meanwhile
            if state is None:
                raise
        else:
            _started[data_dir.resolve()] = server
            state, started = {"endpoint": server.endpoint, "auth_url": server.auth_url}, True
    return RunningServer(
        data_dir=data_dir,
        endpoint=state["endpoint"],
        auth_url=state["auth_url"],
        key_file=project_key_file(data_dir, project),
        tls=serves_tls(state),
        started_here=started,
    )


def stop_started_servers() -> None:
    """Stop the servers :func:`attach_or_start` started in this process, before it exits."""
    while _started:
        _started.popitem()[1].stop()


def project_key_file(data_dir: Path, project: str = WORKSHOP_PROJECT) -> Path:
    """The project's key file in ``data_dir`` (``<project>-key.json``), created on first use.

    Every later call returns the same file, so the lessons and the workshop commands share
    one key per project instead of adding a key to the catalog each time they run.
    """
    if not _KEY_FILE_NAME.fullmatch(project):
        raise ValueError(f"project name {project!r} cannot name a key file")
    path = Path(data_dir) / f"{project}-key.json"
    if not path.exists():
        create_key_file(path, data_dir, project)
    return path


def create_key_file(
    path: Path, data_dir: Path, project: str, permissions: Iterable[str] | None = None
) -> dict[str, str]:
    """Create an API key for ``project`` in ``data_dir``'s catalog and write it to ``path`` (mode 0600).

    The file is written whole or not at all (a temporary file renamed over ``path``), so a
    process reading it meanwhile never sees half a key. Returns the key's id and secret.
    Raises ValueError for a permission Ensign does not define, ServerError if ``path``
    cannot be written.
    """
    path = Path(path)
    credentials = create_key(data_dir, project, permissions)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        write_key_file(partial, credentials)
        partial.replace(path)
    except OSError as err:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise ServerError(f"cannot write key file {path}: {err.strerror}") from None
    return credentials
