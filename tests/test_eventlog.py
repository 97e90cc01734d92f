"""The event-log interface, the same tests for every store the server can run on."""

import sqlite3

import pytest

from local_ensign.eventlog import MemoryEventLog, Record, SQLiteEventLog, TopicStats, read_topics
from local_ensign.ids import ZERO_RLID, RLIDSequence, new_ulid

STORES = ["memory", "sqlite"]


@pytest.fixture(params=STORES)
def log(request, tmp_path):
    store = SQLiteEventLog(tmp_path) if request.param == "sqlite" else MemoryEventLog()
    yield store
    store.close()


def records_for(
    topics: list[bytes], rounds: int, size: int = 10, rlids: RLIDSequence | None = None
) -> list[Record]:
    """``rounds`` records for each topic, interleaved, with strictly increasing RLIDs."""
    rlids = rlids or RLIDSequence()
    return [Record(topic, rlids.next(), bytes([n % 256]) * size) for n in range(rounds) for topic in topics]


def test_reads_go_forward_from_a_position_within_their_bounds(log):
    topic, other = new_ulid(), new_ulid()
    stored = records_for([topic, other], 100)
    log.append(stored)
    mine = [r for r in stored if r.topic_id == topic]
    assert log.read(topic, ZERO_RLID, 1000, 2**30) == mine
    assert log.read(topic, mine[9].rlid, 5, 2**30) == mine[10:15]
    assert log.read(topic, ZERO_RLID, 1000, 25) == mine[:3]  # stops once 25 bytes are taken
    assert log.read(topic, ZERO_RLID, 1000, 1) == mine[:1]  # one record, however large
    assert log.read(topic, mine[-1].rlid, 10, 2**30) == []


def test_several_topics_merge_in_commit_order_without_skipping_any(log):
    topics = [new_ulid() for _ in range(3)]
    stored = records_for(topics, 50)
    log.append(stored)
    seen, position = [], ZERO_RLID
    while batch := read_topics(log, topics[:2], position, 7, 45):
        seen.extend(batch)
        position = batch[-1].rlid
    assert seen == [r for r in stored if r.topic_id in topics[:2]]


def test_topic_stats_count_events_and_stored_bytes(log):
    topic, other = new_ulid(), new_ulid()
    rlids = RLIDSequence()
    stored = records_for([topic], 5, size=10, rlids=rlids) + records_for([other], 3, size=7, rlids=rlids)
    log.append(stored)
    stats = log.topic_stats()
    assert stats[topic] == TopicStats(5, 50, stored[4].rlid)
    assert stats[other] == TopicStats(3, 21, stored[-1].rlid)
    assert log.last_rlid() == max(r.rlid for r in stored)


def test_group_positions_are_kept_per_group_and_topic_and_go_with_a_destroyed_topic(log):
    group, other_group, topic, kept = new_ulid(), new_ulid(), new_ulid(), new_ulid()
    stored = records_for([topic, kept], 4)
    log.append(stored)
    assert log.group_positions(group) == {}
    log.save_group_positions(group, {topic: stored[0].rlid, kept: stored[1].rlid})
    log.save_group_positions(group, {topic: stored[2].rlid})
    log.save_group_positions(other_group, {topic: stored[4].rlid})
    assert log.group_positions(group) == {topic: stored[2].rlid, kept: stored[1].rlid}
    log.destroy_topic(topic)
    assert log.read(topic, ZERO_RLID, 100, 2**30) == []
    assert topic not in log.topic_stats() and kept in log.topic_stats()
    assert log.group_positions(group) == {kept: stored[1].rlid}
    assert log.group_positions(other_group) == {}


def test_the_durable_store_keeps_events_and_positions_across_a_reopen(tmp_path):
    topic, group = new_ulid(), new_ulid()
    stored = records_for([topic], 10)
    first = SQLiteEventLog(tmp_path)
    first.append(stored)
    first.save_group_positions(group, {topic: stored[5].rlid})
    log_id = first.log_id
    first.close()
    again = SQLiteEventLog(tmp_path)
    assert again.read(topic, ZERO_RLID, 100, 2**30) == stored
    assert again.group_positions(group) == {topic: stored[5].rlid}
    assert again.log_id == log_id
    again.close()


def test_a_batch_moves_group_positions_with_it_and_marks_stored_records_anew(log):
    topic, group = new_ulid(), new_ulid()
    stored = records_for([topic], 4)
    log.append(stored[:3], {group: {topic: stored[1].rlid}})
    assert log.group_positions(group) == {topic: stored[1].rlid}
    marked = stored[0]._replace(wrapper=b"marked!", duplicate_of=stored[2].rlid)
    log.append([stored[3]], {group: {topic: stored[2].rlid}}, remarked=[marked])
    assert log.read(topic, ZERO_RLID, 100, 2**30) == [marked, *stored[1:]]
    assert log.group_positions(group) == {topic: stored[2].rlid}
    assert log.topic_stats()[topic] == TopicStats(4, 30 + len(b"marked!"), stored[3].rlid, duplicates=1)
    assert log.last_rlid() == stored[3].rlid


def test_a_log_made_before_deduplication_opens_and_gains_the_mark(tmp_path):
    topic = new_ulid()
    (record,) = records_for([topic], 1)
    old = sqlite3.connect(tmp_path / SQLiteEventLog.FILENAME)
    old.executescript(
        "CREATE TABLE events (topic_id BLOB NOT NULL, rlid BLOB NOT NULL, wrapper BLOB NOT NULL,"
        " PRIMARY KEY (topic_id, rlid)) WITHOUT ROWID;"
    )
    old.execute("INSERT INTO events VALUES (?, ?, ?)", record[:3])
    old.commit()
    old.close()
    log = SQLiteEventLog(tmp_path)
    assert log.read(topic, ZERO_RLID, 10, 2**30) == [record]
    log.close()
