"""A scaled-out Ensign on one machine: a NATS JetStream cluster and several gateways on it.

>>> with LocalCluster(nodes=3, gateways=2) as cluster:       # doctest: +SKIP
...     publisher = Ensign(**cluster.client_kwargs(gateway=0))
...     subscriber = Ensign(**cluster.client_kwargs(gateway=1))

Each gateway is a ``local_ensign serve --store jetstream`` process (a ``LocalEnsign``)
with a data directory of its own for its ``server.json`` and log, and nothing else:
projects, keys, topics, events and group positions are in the cluster, kept
``replicas`` times (3 by default, so losing one node of three loses nothing). Every
gateway accepts the same API key, so a client may use any of them.

The nodes and gateways end when this process ends, however it ends: the gateways watch
a pipe from this process, the nodes get a parent-death signal (see ``nats_launcher``).
``kill_gateway``/``restart_gateway`` and ``kill_node``/``start_node`` crash and bring
back one part, as a fault test needs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import nats

from .jetstream_log import events_stream
from .launcher import LocalEnsign, StartsProcesses
from .nats_launcher import NatsCluster, run_coroutine

DEFAULT_NAME = "local-ensign"


class LocalCluster(StartsProcesses):
    """``nodes`` NATS nodes with JetStream and ``gateways`` Ensign servers sharing one log on them."""

    def __init__(
        self,
        nodes: int = 3,
        gateways: int = 2,
        *,
        replicas: int | None = None,
        data_dir: str | Path | None = None,
        project: str = "local",
        name: str = DEFAULT_NAME,
    ) -> None:
        if gateways < 1:
            raise ValueError("a cluster needs at least one gateway")
        self.replicas = replicas if replicas is not None else min(3, nodes)
        if not 1 <= self.replicas <= nodes:
            raise ValueError(f"replicas must be between 1 and the number of nodes ({nodes})")
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="local-ensign-cluster-"))
        self.name = name
        self.nats = NatsCluster(nodes, self.data_dir / "nats")
        self.gateways = [
            LocalEnsign(self.data_dir / f"gateway-{index}", project=project, store="jetstream")
            for index in range(gateways)
        ]

    def _gateway_options(self) -> tuple[str, ...]:
        return (
            "--nats", ",".join(self.nats.urls),
            "--jetstream-name", self.name,
            "--replicas", str(self.replicas),
        )  # fmt: skip

    def start(self) -> LocalCluster:
        """Start the nodes, then the gateways; every gateway uses the first one's API key."""
        self.nats.start()
        for gateway in self.gateways:
            gateway.options = self._gateway_options()
            gateway.credentials = self.gateways[0].credentials
            gateway.start()
        return self

    @property
    def credentials(self) -> dict[str, str]:
        """The API key (of the project given at creation) that every gateway accepts."""
        credentials = self.gateways[0].credentials
        if credentials is None:
            raise RuntimeError("the cluster has not been started")
        return credentials

    def client_kwargs(self, gateway: int = 0, credentials: dict[str, str] | None = None) -> dict:
        """Keyword arguments for ``pyensign.ensign.Ensign(...)`` to reach one gateway."""
        return self.gateways[gateway].client_kwargs(credentials or self.credentials)

    def create_key(self, project: str) -> dict[str, str]:
        """Another API key, for ``project``: valid at every gateway."""
        return self.gateways[0].create_key(project)

    def kill_gateway(self, gateway: int) -> None:
        """Kill one gateway with SIGKILL, as a crash would."""
        self.gateways[gateway].kill()

    def restart_gateway(self, gateway: int) -> None:
        """Start a stopped or killed gateway again, on its ports."""
        self.gateways[gateway].start()

    def stream_leader(self) -> int:
        """The index of the NATS node leading the events stream: the one whose loss a fault test wants."""

        async def ask() -> str:
            nc = await nats.connect(self.nats.urls)
            try:
                return (await nc.jetstream().stream_info(events_stream(self.name))).cluster.leader
            finally:
                await nc.close()

        leader = run_coroutine(ask())
        return [node.name for node in self.nats.nodes].index(leader)

    def kill_node(self, node: int) -> None:
        """Kill one NATS node with SIGKILL (its store is kept)."""
        self.nats.kill(node)

    def start_node(self, node: int) -> None:
        """Start a killed NATS node again, on its ports and store."""
        self.nats.start(node)

    def stop(self) -> None:
        """Stop the gateways, then the nodes."""
        for gateway in self.gateways:
            gateway.stop()
        self.nats.stop()

    def cleanup(self) -> None:
        """Stop everything and delete the data directory if this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
