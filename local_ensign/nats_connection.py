"""One connection to a NATS cluster, run on its own event loop in a thread.

The JetStream event log and catalog share it. Their synchronous methods (the
``EventLog`` and catalog interfaces are synchronous, like SQLite's) hand a coroutine
to this connection's loop and wait for it with a bound (``call``); the committer,
which must not hold up the server's loop while JetStream replicates a batch, awaits
the same coroutines without blocking (``call_async``).

nats-py reconnects to any node of the cluster on its own; while no node answers,
every call fails with ``StoreError`` after its timeout and says so in one line.

Reading many messages at once uses JetStream's batched direct get: one request, and
one of the stream's replicas answers with up to ``batch`` messages, then an
end-of-batch status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import nats
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig
from nats.js.errors import BadRequestError, BucketNotFoundError

from .storage import StoreError

log = logging.getLogger("local_ensign.nats")

CONNECT_TIMEOUT = 5.0  # seconds to reach a first node at start-up
CALL_TIMEOUT = 10.0  # seconds any one call may take before it fails
RECONNECT_WAIT = 0.25  # seconds between attempts to reach a node again
REPLY_TIMEOUT = 2.0  # seconds a direct get waits for each reply (a request sent as a node died is lost)
END_OF_BATCH = "204"  # the status of a batched direct get's last reply
NOTHING_FOUND = "404"  # its status when nothing is stored at or after the sequence asked for
STREAM_EXISTS = 10058  # JetStream's error code for a stream that exists with another configuration
NO_PLACEMENT = 10005  # JetStream's error code while too few nodes have joined for the replicas asked
PLACEMENT_WAIT = 30.0  # seconds to wait for a forming cluster to have room for a stream's replicas


@dataclass(frozen=True)
class StoredMessage:
    """One message of a stream: where it is, what it holds."""

    sequence: int
    subject: str
    headers: dict[str, str]
    data: bytes


class NatsConnection:
    """A nats-py connection owned by a thread of its own; every NATS failure becomes StoreError."""

    def __init__(self, urls: list[str], name: str = "local_ensign") -> None:
        self.urls = list(urls)
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats", daemon=True)
        self._thread.start()
        try:
            self.nc = self.call(self._connect(name), CONNECT_TIMEOUT + 1)
        except StoreError:
            self._stop_loop()
            raise
        self.js = self.nc.jetstream(timeout=CALL_TIMEOUT)

    def where(self) -> str:
        """The cluster's URLs, for messages."""
        return ", ".join(self.urls)

    async def _connect(self, name: str) -> nats.NATS:
        async def report(error: Exception) -> None:
            log.warning("NATS: %s", error or type(error).__name__)

        async def disconnected() -> None:
            if self._closing:
                return
            log.warning("NATS: disconnected from %s; reconnecting", self.where())

        async def reconnected() -> None:
            log.warning(
                "NATS: reconnected to %s", self.nc.connected_url.netloc if self.nc.connected_url else "?"
            )

        return await nats.connect(
            self.urls,
            name=name,
            connect_timeout=CONNECT_TIMEOUT,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT,
            error_cb=report,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
        )

    @property
    def max_payload(self) -> int:
        """The largest message the cluster accepts, as the node we are connected to says."""
        return self.nc.max_payload

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = CALL_TIMEOUT) -> Any:
        """Run ``coroutine`` on the connection's loop and wait for its result, at most ``timeout`` seconds."""
        future = asyncio.run_coroutine_threadsafe(self._guarded(coroutine, timeout), self._loop)
        return future.result()

    async def call_async(self, coroutine: Coroutine[Any, Any, Any], timeout: float = CALL_TIMEOUT) -> Any:
        """Like ``call``, awaited from another event loop without blocking it."""
        future = asyncio.run_coroutine_threadsafe(self._guarded(coroutine, timeout), self._loop)
        return await asyncio.wrap_future(future)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Future:
        """Run ``coroutine`` in the background on the connection's loop (a feed, a watcher)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    async def _guarded(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        try:
            return await asyncio.wait_for(coroutine, timeout)
        except StoreError:
            raise
        except TimeoutError:
            raise StoreError(f"NATS at {self.where()} did not answer within {timeout:g} s") from None
        except (NatsError, OSError) as err:
            raise StoreError(f"NATS at {self.where()}: {err or type(err).__name__}") from None

    async def get_batch(
        self, stream: str, start: int, subject: str, batch: int, max_bytes: int
    ) -> list[StoredMessage]:
        """Up to ``batch`` messages on ``subject`` from sequence ``start`` on (at least one if any).

        Any replica may answer, and one that lags returns less: a reader that knows of
        later messages asks again.
        """
        request = {"seq": start, "next_by_subj": subject, "batch": batch, "max_bytes": max_bytes}
        inbox = self.nc.new_inbox()
        replies = await self.nc.subscribe(inbox)
        messages: list[StoredMessage] = []
        try:
            await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            while True:
                reply = await replies.next_msg(timeout=REPLY_TIMEOUT)
                headers = reply.headers or {}
                status = headers.get("Status")
                if status in (END_OF_BATCH, NOTHING_FOUND):
                    return messages
                if status is not None:
                    raise StoreError(f"NATS at {self.where()}: direct get failed ({status} {headers})")
                messages.append(
                    StoredMessage(
                        int(headers["Nats-Sequence"]), headers["Nats-Subject"], dict(headers), reply.data
                    )
                )
        finally:
            await replies.unsubscribe()

    async def bucket(self, name: str, replicas: int):
        """The key-value bucket ``name``, created (with ``replicas`` copies) if no one has made it yet.

        An existing bucket is used as it is, whatever its number of replicas.
        """
        try:
            return await self.js.key_value(name)
        except BucketNotFoundError:
            pass
        await self.create(self.js.create_key_value, KeyValueConfig(bucket=name, replicas=replicas, history=1))
        return await self.js.key_value(name)

    async def create(self, method, config) -> None:
        """Create a stream or bucket (``method(config)``) unless it exists, waiting for a forming cluster.

        Right after a cluster starts, its meta leader may not know every node yet and
        refuses replicas it cannot place; that passes within seconds.
        """
        deadline = asyncio.get_running_loop().time() + PLACEMENT_WAIT
        while True:
            try:
                await method(config)
                return
            except BadRequestError as err:
                if err.err_code == STREAM_EXISTS:  # made by another process, maybe with other settings
                    return
                if err.err_code != NO_PLACEMENT or asyncio.get_running_loop().time() > deadline:
                    what = getattr(config, "name", None) or config.bucket
                    raise StoreError(f"JetStream refused to create {what}: {err.description}") from None
                await asyncio.sleep(0.5)

    def close(self) -> None:
        """Drain and close the connection, then stop its thread."""
        self._closing = True
        with contextlib.suppress(StoreError):
            self.call(self.nc.close(), 5.0)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
