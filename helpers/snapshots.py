"""Model snapshots: a River model and the stream position it has learned up to, as bytes.

A snapshot is what makes a trainer restartable and a model shareable. It holds the
model, the id of the last event the model learned (so a restarted trainer knows what
to skip), how many events it learned and, optionally, what the trainer measured up to
that event (so its metrics resume with the model), and it travels as bytes: to a file (a
checkpoint, :func:`save` and :func:`load`) or as an Ensign event (:func:`to_event`
and :func:`from_event`, for a scorer service).

The bytes are one line of JSON (the header), a newline, then the model and the
metrics pickled together and compressed with zlib (a pickled model is several megabytes, over an event's size
limit; compressed it is about a quarter of that). The header carries the SHA-256 of
the compressed model, checked before anything is unpickled.

Unpickling runs code chosen by whoever wrote the bytes: load snapshots only from
files and topics you trust. The digest catches damage, not an attacker who can also
write the header.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyensign.events import Event

FORMAT = 1
MIMETYPE = "application/octet-stream"
SCHEMA = "ModelSnapshot"


class SnapshotError(ValueError):
    """Bytes that are not a whole, undamaged snapshot of a format this module reads."""


@dataclass(frozen=True)
class Snapshot:
    """A model and where in the stream it stands."""

    model: Any
    last_event_id: bytes  # the id (RLID bytes) of the last event the model learned; b"" if none
    learned: int  # events the model has learned
    version: int = 1  # counts the snapshots of one trainer: a scorer keeps the highest
    metrics: Any = None  # what the trainer measured up to last_event_id (River metrics, counts)


def dumps(snapshot: Snapshot) -> bytes:
    """The snapshot as bytes: a JSON header line, then the zlib-compressed pickled model."""
    pickled = pickle.dumps((snapshot.model, snapshot.metrics), protocol=pickle.HIGHEST_PROTOCOL)
    payload = zlib.compress(pickled)
    header = {
        "format": FORMAT,
        "version": snapshot.version,
        "learned": snapshot.learned,
        "last_event_id": snapshot.last_event_id.hex(),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    return json.dumps(header).encode() + b"\n" + payload


def read_header(data: bytes) -> dict[str, Any]:
    """The header of snapshot bytes, without unpickling anything; SnapshotError if it is not one."""
    line, newline, _ = data.partition(b"\n")
    try:
        header = json.loads(line) if newline else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError(f"not a model snapshot of format {FORMAT}")
    return header


def loads(data: bytes) -> Snapshot:
    """The snapshot in ``data``, after checking its digest (only for bytes you trust: see above)."""
    header = read_header(data)
    payload = data.partition(b"\n")[2]
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise SnapshotError("the model's bytes do not match the snapshot's digest: damaged or truncated")
    model, metrics = pickle.loads(zlib.decompress(payload))
    return Snapshot(
        model=model,
        last_event_id=bytes.fromhex(header["last_event_id"]),
        learned=header["learned"],
        version=header["version"],
        metrics=metrics,
    )


def save(snapshot: Snapshot, path: str | Path) -> None:
    """Write a checkpoint file whole or not at all: a crash leaves the previous one in place."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        file.write(dumps(snapshot))
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load(path: str | Path) -> Snapshot | None:
    """The checkpoint at ``path``, or None if there is none yet."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return loads(data)


def to_event(snapshot: Snapshot) -> Event:
    """The snapshot as an Ensign event; its metadata lets a scorer decide before unpickling."""
    data = dumps(snapshot)
    header = read_header(data)
    meta = {key: str(header[key]) for key in ("version", "learned", "sha256")}
    return Event(data, MIMETYPE, schema_name=SCHEMA, schema_version="1.0.0", meta=meta)


def from_event(event: Event) -> Snapshot:
    """The snapshot an event carries (only from a topic you trust: see above)."""
    return loads(event.data)
