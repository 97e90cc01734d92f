"""Protobuf encoding of the messages on the hot path, built straight from bytes.

Every published event becomes a stored ``EventWrapper`` and an ``Ack`` reply, and
every delivered one a ``SubscribeReply``. Building these as protobuf objects costs
more than the rest of the server's work per event, so they are concatenated from
their fields here, byte for byte what ``SerializeToString`` gives (a unit test
checks that). Everything else uses the generated classes as they are.
"""

from __future__ import annotations

from pyensign.api.v1beta1 import ensign_pb2, event_pb2

_LENGTH_DELIMITED = 2
_VARINT = 0


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(message, field: str, wire_type: int = _LENGTH_DELIMITED) -> bytes:
    """A field's tag, from the field number in pyensign's generated descriptor."""
    return varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | wire_type)


_WRAPPER_ID = _tag(event_pb2.EventWrapper, "id")
_WRAPPER_TOPIC_ID = _tag(event_pb2.EventWrapper, "topic_id")
_WRAPPER_OFFSET = _tag(event_pb2.EventWrapper, "offset", _VARINT)
_WRAPPER_PUBLISHER = _tag(event_pb2.EventWrapper, "publisher")
_WRAPPER_EVENT = _tag(event_pb2.EventWrapper, "event")
_WRAPPER_COMMITTED = _tag(event_pb2.EventWrapper, "committed")
_ACK_ID = _tag(ensign_pb2.Ack, "id")
_ACK_COMMITTED = _tag(ensign_pb2.Ack, "committed")
_PUBLISHER_REPLY_ACK = _tag(ensign_pb2.PublisherReply, "ack")
_SUBSCRIBE_REPLY_EVENT = _tag(ensign_pb2.SubscribeReply, "event")

# What a delivered event adds around its Event bytes: the SubscribeReply and
# EventWrapper framing, the RLID, topic id, offset and commit time, and the
# publisher (four strings, each cut to PUBLISHER_FIELD_LIMIT characters): about
# 2,100 bytes at the very most.
PUBLISHER_FIELD_LIMIT = 128
DELIVERY_OVERHEAD = 4096


def length_delimited(tag: bytes, data: bytes) -> bytes:
    """One length-delimited field (bytes, string or embedded message)."""
    return tag + varint(len(data)) + data


def stored_wrapper(
    rlid: bytes, topic_id: bytes, offset: int, publisher: bytes, event: bytes, committed: bytes
) -> bytes:
    """``EventWrapper{id, topic_id, offset, publisher, event, committed}`` as stored and delivered.

    ``publisher`` and ``committed`` are the encodings of the Publisher and Timestamp
    messages; the client's ``local_id`` is left out, as the real server does.
    """
    return b"".join(
        (
            length_delimited(_WRAPPER_ID, rlid),
            length_delimited(_WRAPPER_TOPIC_ID, topic_id),
            _WRAPPER_OFFSET,
            varint(offset),
            length_delimited(_WRAPPER_PUBLISHER, publisher),
            length_delimited(_WRAPPER_EVENT, event),
            length_delimited(_WRAPPER_COMMITTED, committed),
        )
    )


def ack_reply(local_id: bytes, committed: bytes) -> bytes:
    """``PublisherReply{ack: Ack{id: local_id, committed}}``."""
    ack = length_delimited(_ACK_ID, local_id) + length_delimited(_ACK_COMMITTED, committed)
    return length_delimited(_PUBLISHER_REPLY_ACK, ack)


def event_reply(wrapper: bytes) -> bytes:
    """``SubscribeReply{event: wrapper}`` from stored wrapper bytes."""
    return length_delimited(_SUBSCRIBE_REPLY_EVENT, wrapper)
