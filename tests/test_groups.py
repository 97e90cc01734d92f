"""Consumer-group bookkeeping on a real in-memory event log, without a network: cases a stream cannot time."""

import asyncio

from pyensign.api.v1beta1 import ensign_pb2

from local_ensign.eventlog import MemoryEventLog, Record
from local_ensign.groups import ConsumerGroup, GroupSettings, Member
from local_ensign.ids import RLIDSequence, new_ulid
from local_ensign.subscriptions import SubscriptionRegistry

Code = ensign_pb2.Nack.Code
TOPIC = new_ulid()


def group_with(events: int, settings: GroupSettings) -> tuple[ConsumerGroup, list[Record]]:
    """A group over a topic that holds ``events`` stored records (each record's wrapper is its number)."""
    log = MemoryEventLog()
    rlids = RLIDSequence()
    records = [Record(TOPIC, rlids.next(), bytes([n])) for n in range(events)]
    log.append(records)
    group = ConsumerGroup(b"g", "g", {}, SubscriptionRegistry(log), lambda g: g.positions_to_save(), settings)
    return group, records


def join(group: ConsumerGroup, timeout: float = 30.0) -> Member:
    return group.join(frozenset({TOPIC}), "", None, at_most_once=False, timeout=timeout)


async def take(member: Member, timeout: float = 1.0) -> list[int]:
    return [wrapper[0] for wrapper in await asyncio.wait_for(member.next_batch(), timeout)]


def test_positions_move_only_past_settled_events_whatever_the_ack_order():
    async def body():
        group, records = group_with(5, GroupSettings())
        member = join(group)
        got = await take(member)
        group.ack(records[1].rlid)  # out of order: the first event is not settled yet
        after_second = dict(group.positions)
        group.ack(records[0].rlid)
        after_first = dict(group.positions)
        group.leave(member)
        return records, got, after_second, after_first

    records, got, after_second, after_first = asyncio.run(body())
    assert got == [0, 1, 2, 3, 4]
    assert after_second.get(TOPIC, bytes(10)) < records[0].rlid, "the unsettled first event is still to read"
    assert after_first == {TOPIC: records[1].rlid}


def test_a_stale_nack_does_not_send_an_event_twice():
    async def body():
        group, records = group_with(1, GroupSettings())
        first, second = join(group, timeout=0.05), join(group)
        held = await take(first)
        await asyncio.sleep(0.1)  # the first member's delivery times out
        taken = await take(second)
        first.nack(records[0].rlid, Code.DELIVER_AGAIN_ANY)  # stale: the second member holds it now
        second.nack(records[0].rlid, Code.DELIVER_AGAIN_ANY)
        again = await take(second)
        try:
            twice = await take(first, timeout=0.3)
        except TimeoutError:
            twice = []
        group.leave(first)
        group.leave(second)
        return held, taken, again, twice

    held, taken, again, twice = asyncio.run(body())
    assert held == taken == again == [0]
    assert twice == [], "the stale nack queued no second copy"


def test_a_member_whose_events_were_taken_over_is_woken_to_take_more():
    async def body():
        group, records = group_with(6, GroupSettings(max_unacked=2))
        slow, quick = join(group, timeout=0.05), join(group, timeout=0.05)
        held = await take(slow)  # full: two unacked
        waiting = asyncio.create_task(take(slow, timeout=2))
        await asyncio.sleep(0.1)
        taken = await take(quick)  # takes the slow member's two expired events
        for rlid in (records[n].rlid for n in taken):
            group.ack(rlid)
        more = await waiting  # room again: it must not sleep through it
        group.leave(slow)
        group.leave(quick)
        return held, taken, more

    held, taken, more = asyncio.run(body())
    assert held == taken == [0, 1]
    assert more == [2, 3]


def test_a_lone_member_keeps_no_record_of_what_it_acked():
    async def body():
        group, records = group_with(200, GroupSettings(max_unacked=10))
        member = join(group)
        for _ in range(20):
            for number in await take(member):
                group.ack(records[number].rlid)
        sizes = len(member.sent), len(member.unacked)
        group.leave(member)
        return records, sizes, dict(group.positions)

    records, (sent, unacked), positions = asyncio.run(body())
    assert unacked == 0 and sent <= 64 + 2 * 10
    assert positions == {TOPIC: records[-1].rlid}
