"""Start a local Ensign server from Python: for tests, helpers, demos and benchmarks.

>>> with LocalEnsign() as server:                      # doctest: +SKIP
...     ensign = Ensign(**server.client_kwargs())

The server runs in its own process (sharing the client's interpreter would halve
the client's throughput), on free ports unless told otherwise, with a temporary
data directory unless given one. It is ready once it has written ``server.json``
(where it listens) into its data directory. The child watches its standard input,
which is a pipe from this process: when this process ends, however it ends, the pipe
closes and the child shuts down, so it never outlives the process that started it.
A ``LocalEnsign`` that is dropped without being stopped stops its server too.

Given ``tls_cert`` and ``tls_key``, the server speaks TLS only and ``client_kwargs()``
asks for a TLS connection; pyensign trusts the roots gRPC finds, so the client's
process must trust the certificate's CA (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` for
gRPC, ``SSL_CERT_FILE`` for the auth request), set before it first uses gRPC.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import grpc
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc

from .credentials import create_key
from .server import read_state

READY_POLL = 0.02  # seconds between looks for the child's server.json
STOP_TIMEOUT = 10.0  # seconds the child gets to stop after SIGTERM, before SIGKILL


def ask_status(
    endpoint: str, timeout: float = 2.0, *, tls: bool = False, root_certificates: bytes | None = None
) -> ensign_pb2.ServiceState:
    """The ``Status`` of the Ensign server at ``endpoint`` (public: no token needed).

    Over TLS if ``tls`` or ``root_certificates`` is given, trusting those PEM roots, else
    the roots gRPC finds (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``, else its own bundle).
    Raises ``grpc.RpcError`` if nothing answers within ``timeout`` seconds.
    """
    if tls or root_certificates:
        channel = grpc.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates))
    else:
        channel = grpc.insecure_channel(endpoint)
    with channel:
        return ensign_pb2_grpc.EnsignStub(channel).Status(ensign_pb2.HealthCheck(), timeout=timeout)


class StartsProcesses:
    """``with`` support for objects that start processes: ``start()`` on entry, ``cleanup()`` on exit.

    A start that fails part-way is cleaned up too, so no process outlives a failed ``with``.
    """

    def start(self):
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()


class LaunchError(RuntimeError):
    """The server did not start; the message holds the end of its log."""


class LocalEnsign(StartsProcesses):
    """A ``python -m local_ensign serve`` child process and an API key for it."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        project: str = "local",
        store: str = "sqlite",
        sync: str = "full",
        access_ttl: float | None = None,
        port: int = 0,
        auth_port: int = 0,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        options: Sequence[str] = (),
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="local-ensign-"))
        self.project = project
        self.store = store
        self.sync = sync
        self.access_ttl = access_ttl
        self.port = port
        self.auth_port = auth_port
        self.tls_cert = Path(tls_cert) if tls_cert is not None else None
        self.tls_key = Path(tls_key) if tls_key is not None else None
        self.options = tuple(options)  # further ``serve`` options, e.g. ("--max-unacked", "100")
        self.endpoint = ""
        self.auth_url = ""
        self.credentials: dict[str, str] | None = None
        self.process: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None  # stops the child if this object is dropped
        self.log_path = self.data_dir / "server.log"

    def start(self, timeout: float = 30.0) -> LocalEnsign:
        """Start the child and wait until it accepts connections; keep its ports for restarts."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "local_ensign",
            "serve",
            "--exit-with-parent",
            "--data-dir",
            str(self.data_dir),
            "--store",
            self.store,
            "--sync",
            self.sync,
            "--port",
            str(self.port),
            "--auth-port",
            str(self.auth_port),
        ]
        if self.access_ttl:
            command += ["--access-ttl", str(self.access_ttl)]
        if self.tls:
            command += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        command += self.options
        # Like every file in the data directory, the log is its owner's alone (0600).
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        # Runs if this object is dropped, or at exit through weakref's one atexit hook: no handler per start.
        self._finalizer = weakref.finalize(self, end_process, self.process, signal.SIGTERM, STOP_TIMEOUT)
        state = self._wait_for_state(timeout)
        if state is None:
            self._terminate(signal.SIGKILL)
            raise LaunchError(f"local_ensign did not start: {self.log_tail()}")
        self.endpoint, self.auth_url = state["endpoint"], state["auth_url"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.auth_port = int(self.auth_url.rsplit(":", 1)[1])
        if self.credentials is None:
            self.credentials = self.create_key(self.project)
        return self

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS (gRPC and the auth endpoint alike)."""
        return self.tls_cert is not None

    def _wait_for_state(self, timeout: float) -> dict | None:
        """The ``server.json`` our child writes once both its endpoints accept connections.

        None if the child exits first or nothing comes within ``timeout`` seconds. A file
        with another pid is what a killed server left behind, or another server's.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = read_state(self.data_dir)
            if isinstance(state, dict) and state.get("pid") == self.process.pid:
                return state
            if self.process.poll() is not None:
                return None
            time.sleep(READY_POLL)
        return None

    def create_key(self, project: str) -> dict[str, str]:
        """Create another API key (for ``project``) in this server's data directory."""
        return create_key(self.data_dir, project)

    def client_kwargs(self, credentials: dict[str, str] | None = None) -> dict:
        """Keyword arguments for ``pyensign.ensign.Ensign(...)`` to reach this server.

        With TLS the client must trust the certificate's CA: see the module's docstring.
        """
        credentials = credentials or self.credentials
        if credentials is None or not self.endpoint:
            raise LaunchError("the server has not been started")
        return {
            "client_id": credentials["ClientID"],
            "client_secret": credentials["ClientSecret"],
            "endpoint": self.endpoint,
            "insecure": not self.tls,
            "auth_url": self.auth_url,
        }

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut the server down cleanly (SIGTERM, then SIGKILL after ``timeout``)."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would (data directory kept)."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = 30.0) -> LocalEnsign:
        """Start again on the same ports and data directory after a stop or a kill."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        """Stop the server and delete the data directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _terminate(self, signum: int, timeout: float = STOP_TIMEOUT) -> None:
        process, self.process = self.process, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if process is not None:
            end_process(process, signum, timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def end_process(process: subprocess.Popen, signum: int, timeout: float) -> None:
    """Send ``signum`` to a server child, wait for it (SIGKILL after ``timeout``), close its pipe."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdin is not None:
        process.stdin.close()
