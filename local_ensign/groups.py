"""Consumer groups: members share a topic's events, and the group's place in the log survives restarts.

A local extension (real Ensign ignored consumer groups). A subscription that names a
group joins it; the group reads its topics from the log, starting after its stored
position (the earliest event, for a group never seen before), and hands each event
to one member at a time:

* a member holds at most ``max_unacked`` events it has not acked, so a slow member
  does not hoard the stream (a trainer that acks only after a checkpoint needs this
  above its checkpoint interval);
* an ack settles an event; the group's position in a topic moves to the last event
  before which everything is settled, and is stored with the next commit, so it
  survives restarts and ``kill -9`` (an event acked just before a crash may come
  again: at-least-once);
* events a member had not acked when its stream ends go to the next member;
* a nack ``DELIVER_AGAIN_ANY``, ``UNPROCESSED`` or ``TIMEOUT`` sends the same event
  (same id) again, ``DELIVER_AGAIN_NOT_ME`` to another member if one asks within
  ``NOT_ME_DELAY`` seconds; ``UNHANDLED_MIMETYPE`` and ``UNKNOWN_TYPE`` settle it;
* an event not acked within the group's delivery timeout goes to another member
  when one has room (a lone member keeps it: resending to the same open stream
  would only duplicate it);
* after ``max_redeliveries`` nacks or timeouts, an event is given up on (settled)
  and the log says so, so one poison event cannot stall the group.

With ``AT_MOST_ONCE`` delivery an event is settled when it is handed out, so it is
never sent twice and may be lost with its member.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pyensign.api.v1beta1 import ensign_pb2

from .eventlog import EventLog, Record
from .ids import ZERO_RLID, rlid_before
from .subscriptions import Subscription, SubscriptionRegistry

log = logging.getLogger("local_ensign.groups")

MAX_UNACKED = 10_000  # events a member may hold unacked (the server's --max-unacked)
DELIVERY_TIMEOUT = 30.0  # seconds before an unacked event may go to another member, when unset
MAX_REDELIVERIES = 10  # nacks and timeouts an event may take before it is given up on
NOT_ME_DELAY = 1.0  # seconds a DELIVER_AGAIN_NOT_ME event waits for another member
READ_AHEAD = 2_000  # events read from the log ahead of the members

NackCode = ensign_pb2.Nack.Code
NOT_REDELIVERED = frozenset({NackCode.UNHANDLED_MIMETYPE, NackCode.UNKNOWN_TYPE})

Filter = Callable[[Record], "bytes | None"]  # what to send for a record, or None to skip it


@dataclass(frozen=True)
class GroupSettings:
    """The server's bounds on consumer groups (command-line settings of ``serve``)."""

    max_unacked: int = MAX_UNACKED
    delivery_timeout: float = DELIVERY_TIMEOUT
    max_redeliveries: int = MAX_REDELIVERIES


@dataclass(eq=False, slots=True)
class Delivery:
    """An event handed out by a group and not yet settled."""

    record: Record
    wrapper: bytes  # what is sent (the stored wrapper, or a query's projection of it)
    member: Member | None = None
    deadline: float = 0.0
    redeliveries: int = 0


@dataclass(order=True, slots=True)
class _Again:
    """An event waiting to be sent again, in RLID order."""

    rlid: bytes
    delivery: Delivery = field(compare=False)
    avoid: Member | None = field(default=None, compare=False)
    not_before: float = field(default=0.0, compare=False)


class Member:
    """One subscribe stream of a group: what it holds unacked and when to wake it."""

    def __init__(self, group: ConsumerGroup, at_most_once: bool, delivery_timeout: float) -> None:
        self.group = group
        self.at_most_once = at_most_once
        self.delivery_timeout = delivery_timeout
        self.unacked: set[bytes] = set()
        self.sent: deque[tuple[float, bytes]] = deque()  # (deadline, rlid), in the order sent
        self.wake = asyncio.Event()
        self.closed = False

    async def open(self) -> None:
        """Nothing to prepare: the group is this process's own."""

    async def next_batch(self) -> list[bytes]:
        """Wait for events to send this member (serialized wrappers); [] once it has left."""
        group = self.group
        while not self.closed:
            room = group.settings.max_unacked - len(self.unacked)
            if room > 0 and (batch := group.assign(self, room)):
                return batch
            self.wake.clear()
            timeout = group.next_turn(self) if room > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
        return []

    def ack(self, rlid: bytes) -> None:
        self.group.ack(rlid)

    def nack(self, rlid: bytes, code: int) -> None:
        self.group.nack(self, rlid, code)


class ConsumerGroup:
    """One group's members, the events it has handed out, and its position in each topic."""

    def __init__(
        self,
        group_id: bytes,
        name: str,
        positions: dict[bytes, bytes],
        registry: SubscriptionRegistry,
        request_save: Callable[[ConsumerGroup], None],
        settings: GroupSettings,
    ) -> None:
        self.group_id = group_id  # the project's id, then the group's id or name: its key in the log
        self.name = name
        self.positions = positions  # topic id -> last RLID before which everything is settled
        self.settings = settings
        self._registry = registry
        self._request_save = request_save
        self._unsaved: dict[bytes, bytes] = {}
        self.members: list[Member] = []
        self.shape: tuple[frozenset[bytes], str] | None = None  # topics and query its members share
        self._filter: Filter | None = None
        self._source: Subscription | None = None
        self._pump: asyncio.Task | None = None
        self._ready: deque[Record] = deque()  # read from the log, not yet handed out
        self._room = asyncio.Event()
        self._again: list[_Again] = []  # heap
        self._pending: dict[bytes, Delivery] = {}  # handed out, not settled
        self._open: dict[bytes, dict[bytes, None]] = {}  # per topic: handed-out RLIDs not settled, in order
        self._handed: dict[bytes, bytes] = {}  # per topic: the last RLID taken from the log

    # Membership -----------------------------------------------------------------------

    def join(
        self,
        topic_ids: frozenset[bytes],
        query: str,
        filter_: Filter | None,
        at_most_once: bool,
        timeout: float,
    ) -> Member:
        """Add a member; the first one starts the group reading after its positions."""
        if not self.members:
            self.shape = (topic_ids, query)
            self._filter = filter_
            start = min(self.positions.get(topic_id, ZERO_RLID) for topic_id in topic_ids)
            self._source = self._registry.register(topic_ids, after=start)
            self._pump = asyncio.get_running_loop().create_task(self._read_log())
        member = Member(self, at_most_once, timeout)
        self.members.append(member)
        return member

    def leave(self, member: Member) -> None:
        """Remove a member; what it held unacked goes to the next one (it is not a redelivery)."""
        member.closed = True
        member.wake.set()
        if member in self.members:
            self.members.remove(member)
        for rlid in sorted(member.unacked):
            delivery = self._pending[rlid]
            delivery.member = None
            heapq.heappush(self._again, _Again(rlid, delivery))
        member.unacked.clear()
        if self.members:
            self._wake_all()
        else:
            self._stop()

    def _stop(self) -> None:
        """Forget everything handed out: the next member starts again after the stored positions."""
        if self._pump is not None:
            self._pump.cancel()
        if self._source is not None:
            self._registry.unregister(self._source)
        self._source = self._pump = None
        self.shape = self._filter = None
        self._ready.clear()
        self._again.clear()
        self._pending.clear()
        self._open.clear()
        self._handed.clear()

    # Handing out ----------------------------------------------------------------------

    async def _read_log(self) -> None:
        """Keep up to ``READ_AHEAD`` unsettled events of the group's topics ready, in commit order."""
        assert self._source is not None
        while True:
            while len(self._ready) >= READ_AHEAD:
                self._room.clear()
                await self._room.wait()
            batch = await self._source.next_batch()
            if not batch:
                return
            positions = self.positions
            self._ready.extend(r for r in batch if r.rlid > positions.get(r.topic_id, ZERO_RLID))
            self._wake_all()

    def assign(self, member: Member, room: int) -> list[bytes]:
        """Up to ``room`` events for ``member``: redeliveries first, then timed-out ones, then new ones."""
        now = asyncio.get_running_loop().time()
        out: list[bytes] = []
        if self._again:
            self._take_again(member, room, now, out)
        if len(out) < room and len(self.members) > 1:
            self._take_expired(member, room, now, out)
        while self._ready and len(out) < room:
            record = self._ready.popleft()
            self._handed[record.topic_id] = record.rlid
            if record.duplicate_of is not None:
                wrapper = None  # marked by the topic's deduplication policy: never delivered
            else:
                wrapper = record.wrapper if self._filter is None else self._filter(record)
            if wrapper is None:
                self._moved(record.topic_id)  # not for this group: settled without sending
                continue
            self._open.setdefault(record.topic_id, {})[record.rlid] = None
            out.append(self._hand(member, Delivery(record, wrapper), now))
        if len(self._ready) < READ_AHEAD:
            self._room.set()
        return out

    def _take_again(self, member: Member, room: int, now: float, out: list[bytes]) -> None:
        waiting: list[_Again] = []
        while self._again and len(out) < room:
            entry = heapq.heappop(self._again)
            if entry.delivery.record.rlid not in self._pending or entry.delivery.member is not None:
                continue  # settled, or handed out again, meanwhile
            if entry.avoid is member and now < entry.not_before:
                waiting.append(entry)
                continue
            out.append(self._hand(member, entry.delivery, now))
        for entry in waiting:
            heapq.heappush(self._again, entry)

    def _take_expired(self, member: Member, room: int, now: float, out: list[bytes]) -> None:
        """Take over other members' events whose delivery timeout has passed."""
        for other in self.members:
            if other is member:
                continue
            while other.sent and len(out) < room:
                deadline, rlid = other.sent[0]
                delivery = self._pending.get(rlid)
                if delivery is None or delivery.member is not other or delivery.deadline != deadline:
                    other.sent.popleft()  # settled or handed on since
                    continue
                if deadline > now:
                    break
                other.sent.popleft()
                other.unacked.discard(rlid)
                other.wake.set()  # it has room again
                if self._redelivered(delivery, "was not acked in time"):
                    out.append(self._hand(member, delivery, now))

    def _hand(self, member: Member, delivery: Delivery, now: float) -> bytes:
        """Give ``delivery`` to ``member``; at-most-once members settle it at once."""
        if member.at_most_once:
            self._settle(delivery)
            return delivery.wrapper
        delivery.member = member
        delivery.deadline = now + member.delivery_timeout
        rlid = delivery.record.rlid
        self._pending[rlid] = delivery
        member.unacked.add(rlid)
        member.sent.append((delivery.deadline, rlid))
        if len(member.sent) > 2 * len(member.unacked) + 64:
            # Mostly settled entries (only another member's take-over clears them): keep the live ones.
            member.sent = deque((d, r) for d, r in member.sent if r in member.unacked)
        return delivery.wrapper

    def next_turn(self, member: Member) -> float | None:
        """Seconds until ``member`` could take something it cannot take now (None: only a wake-up will do)."""
        now = asyncio.get_running_loop().time()
        times = [e.not_before for e in self._again if e.avoid is member]
        if len(self.members) > 1:
            times += [other.sent[0][0] for other in self.members if other is not member and other.sent]
        return max(0.0, min(times) - now) + 0.001 if times else None

    # Acks and nacks -------------------------------------------------------------------

    def ack(self, rlid: bytes) -> None:
        """Settle an event, whichever member holds it now; unknown or settled ids are ignored."""
        delivery = self._pending.get(rlid)
        if delivery is not None:
            self._settle(delivery)

    def nack(self, member: Member, rlid: bytes, code: int) -> None:
        """Send the event again, or settle it when the member says no member can handle it."""
        delivery = self._pending.get(rlid)
        if delivery is None or delivery.member is not member:
            return  # settled, or handed to another member since: this member's nack is stale
        if code in NOT_REDELIVERED:
            self._settle(delivery)
            return
        self._release(delivery)
        if not self._redelivered(delivery, f"was nacked ({NackCode.Name(code)})"):
            return
        if code == NackCode.DELIVER_AGAIN_NOT_ME:
            now = asyncio.get_running_loop().time()
            entry = _Again(rlid, delivery, avoid=member, not_before=now + NOT_ME_DELAY)
        else:
            entry = _Again(rlid, delivery)
        heapq.heappush(self._again, entry)
        self._wake_all()

    def _redelivered(self, delivery: Delivery, why: str) -> bool:
        """Count a redelivery; False (and the event settled) once the cap is reached."""
        delivery.redeliveries += 1
        if delivery.redeliveries <= self.settings.max_redeliveries:
            return True
        log.warning(
            "consumer group %r: event %s %s %d times; giving up on it (the redelivery cap)",
            self.name,
            delivery.record.rlid.hex(),
            why,
            delivery.redeliveries,
        )
        self._settle(delivery)
        return False

    def _release(self, delivery: Delivery) -> None:
        """Take a delivery back from the member holding it."""
        if delivery.member is not None:
            delivery.member.unacked.discard(delivery.record.rlid)
            delivery.member.wake.set()
            delivery.member = None

    def _settle(self, delivery: Delivery) -> None:
        record = delivery.record
        self._release(delivery)
        self._pending.pop(record.rlid, None)
        self._open.get(record.topic_id, {}).pop(record.rlid, None)
        self._moved(record.topic_id)

    def _moved(self, topic_id: bytes) -> None:
        """Move the topic's position up to the first unsettled event, and ask for it to be stored."""
        still_open = self._open.get(topic_id)
        if still_open:
            position = rlid_before(next(iter(still_open)))
        else:
            position = self._handed.get(topic_id, ZERO_RLID)
        if position > self.positions.get(topic_id, ZERO_RLID):
            self.positions[topic_id] = position
            if not self._unsaved:
                self._request_save(self)
            self._unsaved[topic_id] = position

    # Storing positions ----------------------------------------------------------------

    def positions_to_save(self) -> dict[bytes, bytes]:
        """The positions that moved since the last save (the committer stores them)."""
        unsaved, self._unsaved = self._unsaved, {}
        return unsaved

    def save_failed(self, positions: dict[bytes, bytes]) -> None:
        """Store again the topics whose positions could not be stored (at their current positions)."""
        retry = {topic_id: self.positions[topic_id] for topic_id in positions if topic_id in self.positions}
        if retry and not self._unsaved:
            self._request_save(self)
        self._unsaved = {**retry, **self._unsaved}

    def forget_topic(self, topic_id: bytes) -> None:
        """A destroyed topic: its position is gone from the log, and goes from here too."""
        self.positions.pop(topic_id, None)
        self._unsaved.pop(topic_id, None)

    def _wake_all(self) -> None:
        for member in self.members:
            member.wake.set()


class GroupRegistry:
    """Every consumer group seen since the server started, by project and group key."""

    def __init__(
        self,
        event_log: EventLog,
        registry: SubscriptionRegistry,
        request_save: Callable[[ConsumerGroup], None],
        settings: GroupSettings,
    ) -> None:
        self._log = event_log
        self._registry = registry
        self._request_save = request_save
        self.settings = settings
        self._groups: dict[bytes, ConsumerGroup] = {}

    def group(self, project_id: bytes, key: bytes, name: str) -> ConsumerGroup:
        """The group with this key in this project, loading its stored positions the first time."""
        group_id = project_id + key
        group = self._groups.get(group_id)
        if group is None:
            positions = self._log.group_positions(group_id)
            group = ConsumerGroup(
                group_id, name, positions, self._registry, self._request_save, self.settings
            )
            self._groups[group_id] = group
        return group

    def forget_topic(self, topic_id: bytes) -> None:
        for group in self._groups.values():
            group.forget_topic(topic_id)

    def groups(self) -> Iterable[ConsumerGroup]:
        return self._groups.values()


def group_key(group_id: bytes, name: str) -> bytes:
    """How a group is stored: by its id when it has one, else by its name (empty when it has neither)."""
    if group_id:
        return b"id:" + group_id
    return b"name:" + name.encode() if name else b""
