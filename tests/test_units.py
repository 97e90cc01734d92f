"""Unit tests of local_ensign's building blocks (no network)."""

import asyncio
import itertools
import time

import jwt
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pyensign.api.v1beta1 import ensign_pb2, event_pb2

from local_ensign import wire
from local_ensign.catalog import ApiKey, Catalog, InvalidTopicName, TopicExistsError
from local_ensign.credentials import authenticate, create_api_key, hash_secret, secret_matches
from local_ensign.eventlog import MemoryEventLog, Record, SQLiteEventLog
from local_ensign.ids import ZERO_RLID, RLIDSequence, new_ulid, parse_ulid, ulid_to_str
from local_ensign.service import MAX_IN_FLIGHT_BYTES, InFlight
from local_ensign.subscriptions import SubscriptionRegistry
from local_ensign.tokens import InvalidToken, TokenIssuer


def test_rlids_are_10_bytes_strictly_increasing_and_continue_after_a_restart():
    sequence = RLIDSequence()
    rlids = [sequence.next() for _ in range(10_000)]
    assert all(len(r) == 10 for r in rlids)
    assert all(a < b for a, b in itertools.pairwise(rlids))
    future = (int(time.time() * 1000) + 60_000).to_bytes(6, "big") + (5).to_bytes(4, "big")
    assert RLIDSequence(future).next() > future  # a clock behind the log never goes backwards


def test_ulids_round_trip_and_bad_ones_are_rejected():
    raw = new_ulid()
    assert parse_ulid(ulid_to_str(raw)) == raw == parse_ulid(raw)
    for bad in ("short", b"\x00" * 3, "Z" * 27):
        with pytest.raises(ValueError):
            parse_ulid(bad)


def test_secrets_are_salted_hashes_and_checked():
    first, second = hash_secret("s3cret"), hash_secret("s3cret")
    assert first != second and "s3cret" not in first
    assert secret_matches("s3cret", first) and secret_matches("s3cret", second)
    assert not secret_matches("wrong", first)
    assert not secret_matches("s3cret", "garbage")


def test_api_keys_authenticate_only_with_their_secret(tmp_path):
    catalog = Catalog(tmp_path)
    credentials = create_api_key(catalog, "p")
    key = authenticate(catalog, credentials["ClientID"], credentials["ClientSecret"])
    assert key is not None and key.client_id == credentials["ClientID"]
    assert authenticate(catalog, credentials["ClientID"], "nope") is None
    assert authenticate(catalog, "unknown", credentials["ClientSecret"]) is None
    catalog.close()


def test_topic_names_follow_the_rule_and_are_unique_per_project(tmp_path):
    catalog = Catalog(tmp_path)
    a, b = catalog.ensure_project("a"), catalog.ensure_project("b")
    topic = catalog.create_topic(a.id, "reviews")
    assert catalog.create_topic(b.id, "reviews").id != topic.id  # same name, other project
    with pytest.raises(TopicExistsError):
        catalog.create_topic(a.id, "reviews")
    for bad in ("", "1abc", "has space", "x" * 513):
        with pytest.raises(InvalidTopicName):
            catalog.create_topic(a.id, bad)
    catalog.close()
    reopened = Catalog(tmp_path)
    assert reopened.topic_named(a.id, "reviews") == topic
    reopened.close()


def _key() -> ApiKey:
    return ApiKey("client", new_ulid(), "hash", new_ulid(), new_ulid())


def test_tokens_carry_what_pyensign_needs_and_verify_only_with_their_key():
    api_key = _key()
    access, refresh = TokenIssuer(b"k" * 32).issue(api_key)
    refresh_claims = jwt.decode(refresh, options={"verify_signature": False})
    access_claims = jwt.decode(access, options={"verify_signature": False})
    assert {"exp", "nbf"} <= set(refresh_claims)  # pyensign crashes without nbf
    assert refresh_claims["nbf"] == access_claims["exp"] - 900  # usable once the access token nears expiry
    claims = TokenIssuer(b"k" * 32).verify_access(access)
    assert claims.project_id == api_key.project_id and "publisher" in claims.permissions
    with pytest.raises(InvalidToken):
        TokenIssuer(b"k" * 32).verify_refresh(refresh)  # not before its nbf
    issuer = TokenIssuer(b"k" * 32, access_ttl=1)
    access, refresh = issuer.issue(api_key)
    assert issuer.verify_refresh(refresh) == "client"
    with pytest.raises(InvalidToken):
        issuer.verify_access(refresh)  # a refresh token is not an access token
    with pytest.raises(InvalidToken):
        TokenIssuer(b"x" * 32).verify_access(access)


def test_expired_access_tokens_are_rejected():
    issuer = TokenIssuer(b"k" * 32, access_ttl=1)
    access, _ = issuer.issue(_key())
    time.sleep(2.1)
    with pytest.raises(InvalidToken):
        issuer.verify_access(access)


@pytest.mark.parametrize("make_log", [MemoryEventLog, "sqlite"])
def test_a_lagging_subscription_catches_up_from_the_log_without_gaps(tmp_path, make_log):
    log = SQLiteEventLog(tmp_path) if make_log == "sqlite" else make_log()
    topic, other = new_ulid(), new_ulid()
    sequence = RLIDSequence()

    async def body():
        registry = SubscriptionRegistry(log, buffer_events=50)
        slow = registry.register([topic])
        received = []
        for _ in range(20):  # 20 batches of 30 events while nobody reads
            batch = [Record(t, sequence.next(), b"e") for t in [topic, other] * 15]
            log.append(batch)
            registry.publish(batch)
        while len(received) < 300:
            received.extend(await asyncio.wait_for(slow.next_batch(), 5))
        return received

    received = asyncio.run(body())
    rlids = [r.rlid for r in received]
    assert len(rlids) == 300 and rlids == sorted(set(rlids))
    assert {r.topic_id for r in received} == {topic}
    assert log.last_rlid() > ZERO_RLID
    log.close()


def test_a_publish_stream_holds_a_bounded_number_of_bytes_in_flight():
    """The byte bound holds the reader back; one event larger than the bound is still taken alone."""

    async def body():
        in_flight = InFlight()
        half = MAX_IN_FLIGHT_BYTES // 2
        await in_flight.admit(half)
        await in_flight.admit(half)
        third = asyncio.create_task(in_flight.admit(1))
        await asyncio.sleep(0.05)
        blocked = not third.done()
        in_flight.settle()  # the first event is answered: room for one more byte
        await asyncio.wait_for(third, 1)
        in_flight.settle()
        in_flight.settle()
        await asyncio.wait_for(in_flight.admit(3 * MAX_IN_FLIGHT_BYTES), 1)
        return blocked

    assert asyncio.run(body())


def test_hot_path_encodings_are_byte_for_byte_what_protobuf_makes():
    """The committer and the subscriptions build these from bytes; pyensign parses them as protobuf."""
    committed = Timestamp(seconds=1_800_000_000, nanos=123)
    publisher = event_pb2.Publisher(
        publisher_id="key", client_id="client", ipaddr="127.0.0.1", user_agent="ua"
    )
    event = event_pb2.Event(data=b'{"a": 1}', mimetype=50).SerializeToString()
    rlid, topic_id, local_id = b"r" * 10, new_ulid(), new_ulid()
    wrapper = event_pb2.EventWrapper(
        id=rlid, topic_id=topic_id, offset=300, publisher=publisher, event=event, committed=committed
    ).SerializeToString()
    built = wire.stored_wrapper(
        rlid, topic_id, 300, publisher.SerializeToString(), event, committed.SerializeToString()
    )
    assert built == wrapper
    ack = ensign_pb2.PublisherReply(ack=ensign_pb2.Ack(id=local_id, committed=committed))
    assert wire.ack_reply(local_id, committed.SerializeToString()) == ack.SerializeToString()
    reply = ensign_pb2.SubscribeReply(event=event_pb2.EventWrapper.FromString(wrapper))
    assert wire.event_reply(wrapper) == reply.SerializeToString()
