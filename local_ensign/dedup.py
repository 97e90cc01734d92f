"""Topic deduplication policies: which events count as the same, and which copy stays the original.

A topic's policy (``SetTopicPolicy``) names what makes two events duplicates, as
Ensign's Go server decides it (``rotationalio/ensign``, ``deduplication.go``):

* ``NONE``: nothing is a duplicate.
* ``STRICT``: the same data, metadata, mimetype and type (a missing type counts as
  ``Unspecified v0.0.0``).
* ``DATAGRAM``: the same data, whatever the metadata, mimetype or type.
* ``KEY_GROUPED``: the same data and the same values of the policy's metadata keys.
* ``UNIQUE_KEY``: the same values of the policy's metadata keys, whatever the data.
* ``UNIQUE_FIELD``: the same values of the policy's fields of JSON data (top-level
  fields; a local extension: Ensign never implemented it). Data that is not a JSON
  object is never a duplicate under it.

A missing metadata key or JSON field counts as empty (``""`` or ``null``), as in
Ensign. With ``OFFSET_EARLIEST`` (the default) the first copy stays the original and
later ones are marked duplicates of it; with ``OFFSET_LATEST`` the newest copy
becomes the original and the copy it replaces is marked a duplicate of it.

Unlike Ensign, which only rehashed stored events when a policy changed, events are
checked as they are committed, so a duplicate is never delivered to subscribers and
is left out of queries unless they ask for duplicates. A duplicate is stored whole,
with ``is_duplicate`` and ``duplicate_id`` (the original's RLID) set.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from pyensign.api.v1beta1 import event_pb2, topic_pb2

from .eventlog import EventLog, Record

Deduplication = topic_pb2.Deduplication
Strategy = Deduplication.Strategy
Offset = Deduplication.OffsetPosition
KEYED = frozenset({Strategy.KEY_GROUPED, Strategy.UNIQUE_KEY})
SCAN_EVENTS = 500  # events read at a time when a topic is rehashed
SCAN_BYTES = 4 * 1024 * 1024


def normalize(policy: Deduplication) -> Deduplication:
    """The policy as stored and compared: defaults filled in, keys or fields sorted and unique.

    As in Ensign: UNKNOWN strategy means NONE, UNKNOWN offset means OFFSET_EARLIEST,
    and only the list the strategy uses is kept.
    """
    strategy = policy.strategy or Strategy.NONE
    normal = Deduplication(strategy=strategy, offset=policy.offset or Offset.OFFSET_EARLIEST)
    if strategy in KEYED:
        normal.keys.extend(sorted(set(policy.keys)))
    elif strategy == Strategy.UNIQUE_FIELD:
        normal.fields.extend(sorted(set(policy.fields)))
    return normal


def problem(policy: Deduplication) -> str | None:
    """Why a requested policy cannot be used, or None (the rules of Ensign's ``Validate``)."""
    strategy = policy.strategy or Strategy.NONE
    name = Strategy.Name(strategy)
    if strategy in KEYED and not policy.keys:
        return f"no keys specified for key based hashing: {name} needs metadata keys"
    if strategy == Strategy.UNIQUE_FIELD and not policy.fields:
        return f"no fields specified for field based hashing: {name} needs JSON fields"
    if strategy not in KEYED and policy.keys:
        return f"do not specify keys for {name}"
    if strategy != Strategy.UNIQUE_FIELD and policy.fields:
        return f"do not specify fields for {name}"
    return None


def describe(policy: Deduplication) -> str:
    """The policy in a few words, for the log: ``UNIQUE_KEY on key user_id, OFFSET_LATEST``."""
    normal = normalize(policy)
    text = Strategy.Name(normal.strategy)
    if normal.keys:
        text += f" on key{'s' if len(normal.keys) > 1 else ''} {', '.join(normal.keys)}"
    if normal.fields:
        text += f" on field{'s' if len(normal.fields) > 1 else ''} {', '.join(normal.fields)}"
    return f"{text}, {Offset.Name(normal.offset)}"


def stored(policy: Deduplication) -> bytes:
    """How the catalog keeps a policy: empty for NONE (no deduplication)."""
    normal = normalize(policy)
    return b"" if normal.strategy == Strategy.NONE else normal.SerializeToString()


def load(data: bytes) -> Deduplication:
    """A policy as the catalog keeps it, back as a message (NONE when empty)."""
    return normalize(Deduplication.FromString(data))


def fingerprint(policy: Deduplication, event: event_pb2.Event) -> bytes | None:
    """What two duplicate events share under ``policy`` (a digest), or None if the event cannot have one."""
    strategy = policy.strategy
    if strategy == Strategy.STRICT:
        parts = [event.data, *_metadata(event, sorted(event.metadata)), _type_parts(event)]
    elif strategy == Strategy.DATAGRAM:
        parts = [event.data]
    elif strategy == Strategy.KEY_GROUPED:
        parts = [*_metadata(event, policy.keys), event.data]
    elif strategy == Strategy.UNIQUE_KEY:
        parts = list(_metadata(event, policy.keys))
    elif strategy == Strategy.UNIQUE_FIELD:
        fields = _json_fields(event.data, policy.fields)
        if fields is None:
            return None
        parts = fields
    else:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _metadata(event: event_pb2.Event, keys) -> Iterator[bytes]:
    for key in keys:
        yield key.encode()
        yield event.metadata.get(key, "").encode()


def _type_parts(event: event_pb2.Event) -> bytes:
    kind = event.type
    name = kind.name if kind.name and kind.name != "Unspecified" else "Unspecified"
    return f"{event.mimetype}|{name}|{kind.major_version}.{kind.minor_version}.{kind.patch_version}".encode()


def _json_fields(data: bytes, fields) -> list[bytes] | None:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    return [json.dumps(document.get(name), sort_keys=True).encode() for name in fields]


def mark(record: Record, duplicate_of: bytes | None) -> Record:
    """The record marked as a duplicate of the RLID ``duplicate_of`` (or unmarked, for None)."""
    wrapper = event_pb2.EventWrapper.FromString(record.wrapper)
    if duplicate_of is None:
        wrapper.ClearField("is_duplicate")
        wrapper.ClearField("duplicate_id")
    else:
        wrapper.is_duplicate = True
        wrapper.duplicate_id = duplicate_of
    return Record(record.topic_id, record.rlid, wrapper.SerializeToString(), duplicate_of)


class TopicIndex:
    """One topic's originals by fingerprint, under one policy."""

    def __init__(self, policy: Deduplication) -> None:
        self.policy = policy
        self._originals: dict[bytes, bytes] = {}  # fingerprint -> RLID of the original

    def add(self, rlid: bytes, event: bytes) -> tuple[bytes | None, bytes | None]:
        """Index a new event: ``(original it duplicates, earlier original it replaces)``.

        With OFFSET_EARLIEST the first of the pair can be set; with OFFSET_LATEST the
        second (the earlier copy becomes a duplicate of this one).
        """
        key = fingerprint(self.policy, event_pb2.Event.FromString(event))
        if key is None:
            return None, None
        original = self._originals.get(key)
        if original is None:
            self._originals[key] = rlid
            return None, None
        if self.policy.offset == Offset.OFFSET_LATEST:
            self._originals[key] = rlid
            return None, original
        return original, None


async def rehash(
    log: EventLog, topic_id: bytes, policy: Deduplication, write: Callable[[list[Record]], Awaitable[None]]
) -> TopicIndex:
    """Index a topic's stored events under ``policy`` and store the marks that change; return the index.

    Reads the topic twice, a batch at a time, in commit order, letting the event
    loop run between batches: once to find the originals (as publishing the events
    one by one under this policy would have), once to hand the records whose stored
    mark differs to ``write``, a batch at a time. Only the duplicates' marks are
    kept in between. ``write`` raises StoreError if it cannot store them; the work
    can be done again from the start (it is how a PENDING topic is finished).
    """
    index = TopicIndex(policy)
    marks: dict[bytes, bytes] = {}  # RLID -> the original it duplicates
    async for batch in _scan(log, topic_id):
        for record in batch:
            duplicate_of, replaced = index.add(record.rlid, event_bytes(record))
            if duplicate_of is not None:
                marks[record.rlid] = duplicate_of
            if replaced is not None:
                marks[replaced] = record.rlid
    async for batch in _scan(log, topic_id):
        if changed := [
            mark(record, marks.get(record.rlid))
            for record in batch
            if record.duplicate_of != marks.get(record.rlid)
        ]:
            await write(changed)
    return index


async def _scan(log: EventLog, topic_id: bytes) -> AsyncIterator[list[Record]]:
    after = bytes(10)
    while batch := log.read(topic_id, after, SCAN_EVENTS, SCAN_BYTES):
        yield batch
        after = batch[-1].rlid
        await asyncio.sleep(0)  # a large topic is read in steps, never holding up the loop


def event_bytes(record: Record) -> bytes:
    return event_pb2.EventWrapper.FromString(record.wrapper).event
