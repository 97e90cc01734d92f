"""Start a local Ensign server from Python: for tests, helpers, demos and benchmarks.

>>> with LocalEnsign() as server:                      # doctest: +SKIP
...     ensign = Ensign(**server.client_kwargs())

The server runs in its own process (sharing the client's interpreter would halve
the client's throughput), on free ports unless told otherwise, with a temporary
data directory unless given one. The child watches its standard input, which is
a pipe from this process: when this process ends, however it ends, the pipe
closes and the child shuts down, so it never outlives the process that started it.

Given ``tls_cert`` and ``tls_key``, the server speaks TLS only and ``client_kwargs()``
asks for a TLS connection; pyensign trusts the roots gRPC finds, so the client's
process must trust the certificate's CA (``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` for
gRPC, ``SSL_CERT_FILE`` for the auth request), set before it first uses gRPC.
"""

from __future__ import annotations

import atexit
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from pyensign.api.v1beta1 import ensign_pb2, ensign_pb2_grpc

from .catalog import Catalog
from .credentials import create_api_key
from .server import READY_PREFIX, read_state, serves_tls

_READY = re.compile(r"gRPC at (?P<endpoint>\S+), auth at (?P<auth_url>\S+),")


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


def running_server(data_dir: str | Path, timeout: float = 2.0) -> dict | None:
    """Where the server using ``data_dir`` listens, if one runs and answers ``Status``."""
    state = read_state(Path(data_dir))
    if not state:
        return None
    try:
        ask_status(state["endpoint"], timeout, tls=serves_tls(state))
    except grpc.RpcError:
        return None
    return state


class LaunchError(RuntimeError):
    """The server did not start; the message holds the end of its log."""


class LocalEnsign:
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
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        line = self._read_ready_line(timeout)
        found = _READY.search(line)
        if not found:
            self._terminate(signal.SIGKILL)
            raise LaunchError(f"local_ensign did not start: {self.log_tail()}")
        self.endpoint, self.auth_url = found["endpoint"], found["auth_url"]
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.auth_port = int(self.auth_url.rsplit(":", 1)[1])
        if self.credentials is None:
            self.credentials = self.create_key(self.project)
        atexit.register(self.stop)
        return self

    @property
    def tls(self) -> bool:
        """Whether the server speaks TLS (gRPC and the auth endpoint alike)."""
        return self.tls_cert is not None

    def _read_ready_line(self, timeout: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    break
                line = self.process.stdout.readline().decode(errors="replace")
                if not line or line.startswith(READY_PREFIX):
                    return line
        return ""

    def create_key(self, project: str) -> dict[str, str]:
        """Create another API key (for ``project``) in this server's data directory."""
        catalog = Catalog(self.data_dir)
        try:
            return create_api_key(catalog, project)
        finally:
            catalog.close()

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

    def stop(self, timeout: float = 10.0) -> None:
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

    def _terminate(self, signum: int, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> LocalEnsign:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
