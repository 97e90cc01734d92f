"""Identifiers on Ensign's wire: ULIDs for topics, projects and keys, RLIDs for events.

A ULID is 16 bytes (26 characters of Crockford base32 as a string). An RLID is
10 bytes: a 6-byte big-endian Unix time in milliseconds, then a 4-byte big-endian
sequence number. RLIDs compare as plain bytes, so the event log can order and
index them without decoding.
"""

from __future__ import annotations

import time

from ulid import ULID

RLID_SIZE = 10
ZERO_RLID = bytes(RLID_SIZE)
_MAX_SEQUENCE = 2**32 - 1


def new_ulid() -> bytes:
    """Return a fresh ULID as its 16 raw bytes."""
    return ULID().bytes


def ulid_to_str(raw: bytes) -> str:
    """Render 16 raw ULID bytes as the 26-character string clients print."""
    return str(ULID.from_bytes(raw))


def parse_ulid(value: str | bytes) -> bytes:
    """Parse a ULID given as a string or as raw bytes; raise ValueError if it is not one."""
    if isinstance(value, bytes):
        if len(value) != 16:
            raise ValueError(f"a ULID is 16 bytes, got {len(value)}")
        return value
    if len(value) != 26:
        raise ValueError(f"a ULID string is 26 characters, got {len(value)}")
    raw = ULID.from_str(value).bytes
    if ulid_to_str(raw) != value:
        # Crockford base32 packs 130 bits into 26 characters; the first character of a
        # 128-bit value is 0-7. Other spellings (a leading 8-Z, lower case) would name
        # the same topic under a second id, so only the canonical one is accepted.
        raise ValueError(f"{value!r} is not a canonical ULID (upper-case base32, first character 0-7)")
    return raw


def rlid_before(rlid: bytes) -> bytes:
    """The RLID just before ``rlid``: reading the log after it starts at ``rlid``."""
    return (int.from_bytes(rlid, "big") - 1).to_bytes(RLID_SIZE, "big")


class RLIDSequence:
    """Hands out strictly increasing RLIDs, continuing after the last one ever issued.

    The real server uses one global counter; so does this one. The time part never
    goes backwards, even if the wall clock does, so every new RLID is greater than
    every earlier one, across restarts too (seed it with the last stored RLID).
    """

    def __init__(self, last: bytes = ZERO_RLID) -> None:
        self._millis = int.from_bytes(last[:6], "big")
        self._sequence = int.from_bytes(last[6:], "big")

    def next(self) -> bytes:
        """Return the next RLID."""
        now = time.time_ns() // 1_000_000
        if now > self._millis:
            self._millis = now
        if self._sequence >= _MAX_SEQUENCE:
            self._millis += 1
            self._sequence = 0
        else:
            self._sequence += 1
        return self._millis.to_bytes(6, "big") + self._sequence.to_bytes(4, "big")
