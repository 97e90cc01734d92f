"""The catalog (projects, API keys, topics) and the token signing key in a JetStream key-value bucket.

Every gateway on the same NATS cluster and name reads and writes the same bucket,
``<name>-catalog``, so a key created through one gateway authenticates at every
other, a topic created through one is found by all, and a token signed by one is
accepted by all (they share the signing key, created once by whichever gateway
starts first).

Keys of the bucket (hex keeps arbitrary names within the characters a key allows):

* ``projects.<name in hex>``: the project's ids, as JSON;
* ``keys.<client id>``: an API key (its secret only as a salted hash), as JSON;
* ``topics.<topic id in hex>``: a topic, as JSON;
* ``names.<project id in hex>.<topic name in hex>``: the id of the topic with that
  name. It is written with JetStream's create-if-absent, so two gateways creating
  the same topic at once cannot both succeed;
* ``meta.signing-key``: the key that signs access tokens, in hex.

Topics are looked up on every published event, so each gateway keeps a copy of
them, kept current by watching the bucket; a topic it has not heard of yet is
looked up in the bucket before it is called missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from .catalog import READY, ApiKey, Project, Topic, TopicExistsError, validate_topic_name
from .ids import new_ulid
from .nats_connection import NatsConnection
from .storage import StoreError
from .tokens import KEY_BYTES

log = logging.getLogger("local_ensign.jetstream")

_BYTES_FIELDS = ("id", "project_id", "deduplication")  # Topic fields stored as base64


class JetStreamCatalog:
    """Projects, API keys and topics of every gateway using the bucket ``<name>-catalog``."""

    def __init__(self, connection: NatsConnection, name: str = "local-ensign", replicas: int = 1) -> None:
        self._nats = connection
        self.bucket = f"{name}-catalog"
        self._lock = threading.Lock()
        self._topics: dict[bytes, Topic] = {}
        self._kv = connection.call(self._open(replicas))
        for topic in connection.call(self._all_topics()):
            self._topics[topic.id] = topic
        self._watch = connection.spawn(self._follow_topics())

    async def _open(self, replicas: int):
        return await self._nats.bucket(self.bucket, replicas)

    def close(self) -> None:
        self._watch.cancel()

    def claim_event_log(self, log_id: str, log_name: str) -> None:
        """Nothing to check: the events live in the same cluster as the catalog."""

    # Reading and writing entries ---------------------------------------------------------

    def _get(self, key: str) -> dict | None:
        return self._nats.call(self._read(key))

    async def _read(self, key: str) -> dict | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return json.loads(entry.value) if entry.value else None

    def _put(self, key: str, value: dict) -> None:
        self._nats.call(self._kv.put(key, json.dumps(value).encode()))

    def _create(self, key: str, value: dict | str) -> bool:
        """Write ``key`` only if it does not exist; False if it does."""
        data = value.encode() if isinstance(value, str) else json.dumps(value).encode()
        return self._nats.call(self._create_entry(key, data))

    async def _create_entry(self, key: str, data: bytes) -> bool:
        try:
            await self._kv.create(key, data)
        except KeyWrongLastSequenceError:
            return False
        return True

    # Projects and keys -------------------------------------------------------------------

    def ensure_project(self, name: str) -> Project:
        """The project called ``name``, created (with a new org) if no gateway has made it yet."""
        key = f"projects.{name.encode().hex()}"
        self._create(key, {"id": new_ulid().hex(), "org_id": new_ulid().hex(), "created": time.time()})
        stored = self._get(key)
        assert stored is not None
        return Project(bytes.fromhex(stored["id"]), bytes.fromhex(stored["org_id"]), name)

    def add_api_key(
        self, client_id: str, secret_hash: str, project: Project, permissions: tuple[str, ...] | None = None
    ) -> None:
        """Store a new API key for ``project``; the secret only as its hash."""
        entry = {
            "key_id": new_ulid().hex(),
            "secret_hash": secret_hash,
            "project_id": project.id.hex(),
            "org_id": project.org_id.hex(),
            "created": time.time(),
            "permissions": None if permissions is None else list(permissions),
        }
        if not self._create(f"keys.{client_id}", entry):
            raise StoreError(f"an API key with client id {client_id} exists already")

    def find_api_key(self, client_id: str) -> ApiKey | None:
        """The API key with this client id, read from the bucket (keys made anywhere count at once)."""
        if not client_id.isalnum():
            return None  # never a client id this server made, and not a valid bucket key
        entry = self._get(f"keys.{client_id}")
        if entry is None:
            return None
        granted = entry["permissions"]
        return ApiKey(
            client_id,
            bytes.fromhex(entry["key_id"]),
            entry["secret_hash"],
            bytes.fromhex(entry["project_id"]),
            bytes.fromhex(entry["org_id"]),
            None if granted is None else tuple(granted),
        )

    def signing_key(self) -> bytes:
        """The key every gateway signs tokens with, made by the first one to ask."""
        self._create("meta.signing-key", secrets.token_bytes(KEY_BYTES).hex())
        entry = self._nats.call(self._kv.get("meta.signing-key"))
        return bytes.fromhex(entry.value.decode())

    # Topics ----------------------------------------------------------------------------

    def create_topic(self, project_id: bytes, name: str, deduplication: bytes = b"") -> Topic:
        """Create a topic; its name must be new in the project, whichever gateway made the other."""
        validate_topic_name(name)
        now = time.time()
        topic = Topic(new_ulid(), project_id, name, now, now, READY, deduplication)
        if not self._create(_name_key(project_id, name), topic.id.hex()):
            raise TopicExistsError(f"topic {name!r} already exists")
        self._store(topic)
        return topic

    def _store(self, topic: Topic) -> None:
        self._put(f"topics.{topic.id.hex()}", _encode(topic))
        with self._lock:
            self._topics[topic.id] = topic

    def set_state(self, topic_id: bytes, state: str, only_from: str | None = None) -> Topic | None:
        """Move a topic to ``state``; with ``only_from``, only from that state (None if it was not)."""
        return self._change(topic_id, only_from, state=state)

    def set_deduplication(self, topic_id: bytes, policy: bytes, state: str) -> Topic | None:
        """Store a topic's deduplication policy and its state."""
        return self._change(topic_id, None, deduplication=policy, state=state)

    def _change(self, topic_id: bytes, only_from: str | None, **changes) -> Topic | None:
        topic = self.topic(topic_id)
        if topic is None or (only_from is not None and topic.state != only_from):
            return None
        changed = replace(topic, **changes, modified=time.time())
        self._store(changed)
        return changed

    def remove_topic(self, topic_id: bytes) -> None:
        """Forget a destroyed topic: its name can be used again."""
        topic = self.topic(topic_id)
        self._nats.call(self._kv.purge(f"topics.{topic_id.hex()}"))
        if topic is not None:
            self._nats.call(self._kv.purge(_name_key(topic.project_id, topic.name)))
        with self._lock:
            self._topics.pop(topic_id, None)

    def in_state(self, state: str) -> list[Topic]:
        return [t for t in self.all_topics() if t.state == state]

    def all_topics(self) -> list[Topic]:
        with self._lock:
            return sorted(self._topics.values(), key=lambda t: (t.created, t.id))

    def topic(self, topic_id: bytes) -> Topic | None:
        """The topic with this id: from the copy, else from the bucket (made a moment ago elsewhere)."""
        with self._lock:
            topic = self._topics.get(topic_id)
        if topic is None:
            entry = self._get(f"topics.{topic_id.hex()}")
            if entry is not None:
                topic = _decode(entry)
                with self._lock:
                    self._topics[topic.id] = topic
        return topic

    def topic_named(self, project_id: bytes, name: str) -> Topic | None:
        """The project's topic called ``name`` (None while it is being destroyed, or if none)."""
        with self._lock:
            found = [t for t in self._topics.values() if t.project_id == project_id and t.name == name]
        if not found:
            entry = self._nats.call(self._read_text(_name_key(project_id, name)))
            topic = self.topic(bytes.fromhex(entry)) if entry else None
            found = [topic] if topic is not None else []
        return found[0] if found and found[0].live else None

    def topics(self, project_id: bytes) -> list[Topic]:
        return [t for t in self.all_topics() if t.project_id == project_id and t.live]

    async def _read_text(self, key: str) -> str | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def _all_topics(self) -> list[Topic]:
        topics = []
        watcher = await self._kv.watch("topics.*", ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    topics.append(_decode(json.loads(entry.value)))
        finally:
            await watcher.stop()
        return topics

    async def _follow_topics(self) -> None:
        """Keep the copy of the topics current with every gateway's changes."""
        watcher = await self._kv.watch("topics.*", include_history=False)
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                topic_id = bytes.fromhex(entry.key.split(".", 1)[1])
                with self._lock:
                    if entry.value:
                        self._topics[topic_id] = _decode(json.loads(entry.value))
                    else:
                        self._topics.pop(topic_id, None)
        finally:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await watcher.stop()


@contextlib.contextmanager
def shared_catalog(urls: list[str], name: str) -> Iterator[JetStreamCatalog]:
    """The catalog of the gateways named ``name`` on the NATS cluster at ``urls``, for one task.

    For tools that act on a running deployment (``keys create``): connects, opens, and
    closes both again.
    """
    connection = NatsConnection(urls, name="local_ensign tool")
    try:
        catalog = JetStreamCatalog(connection, name)
        try:
            yield catalog
        finally:
            catalog.close()
    finally:
        connection.close()


def _name_key(project_id: bytes, name: str) -> str:
    return f"names.{project_id.hex()}.{name.encode().hex()}"


def _encode(topic: Topic) -> dict:
    fields = asdict(topic)
    for name in _BYTES_FIELDS:
        fields[name] = base64.b64encode(fields[name]).decode()
    return fields


def _decode(fields: dict) -> Topic:
    for name in _BYTES_FIELDS:
        fields[name] = base64.b64decode(fields[name])
    return Topic(**fields)
