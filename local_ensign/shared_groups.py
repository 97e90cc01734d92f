"""Consumer groups on a shared (JetStream) log: one durable JetStream consumer per group.

With the SQLite or memory store a group lives in one server process (``groups``).
With several gateways on one JetStream log, members of a group may connect to any of
them, so the group's state has to live in the cluster. JetStream's durable consumers
are exactly that: a consumer is a position in the stream plus the messages handed out
and not yet acked, replicated like the stream, and any number of clients pull from it,
each message going to one of them.

So a group is a durable consumer (named after the group's key) on the group's topic
subjects, and each member, on whichever gateway, pulls from it:

* an ack acks the message; the consumer's ack floor is the group's position, kept by
  the cluster across gateway restarts and ``kill -9``;
* a member holds at most ``max_unacked`` events unacked (it pulls no more);
* ``DELIVER_AGAIN_ANY``, ``UNPROCESSED`` and ``TIMEOUT`` nak the message (it comes
  again, same id, to any member); ``DELIVER_AGAIN_NOT_ME`` naks it with a delay of
  ``NOT_ME_DELAY`` so another member can take it first; ``UNHANDLED_MIMETYPE`` and
  ``UNKNOWN_TYPE`` terminate it (never again);
* events a member held unacked when its stream ends are nak'ed, so other members get
  them at once; a member whose gateway died has its events redelivered once the
  group's delivery timeout (the consumer's ack wait) passes;
* after ``max_redeliveries`` deliveries JetStream gives an event up; the log says so
  when it hands out the last try;
* with ``AT_MOST_ONCE`` an event is acked as it is handed out.

Differences from a group in one process, said in the README: the delivery timeout is
the group's (set by the member that created it), not each member's; a lone member
gets an event it did not ack in time again on its own stream; the query a group's
members share is checked across gateways by its text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from .groups import NOT_ME_DELAY, NOT_REDELIVERED, Filter, GroupSettings, NackCode
from .jetstream_log import JetStreamEventLog

log = logging.getLogger("local_ensign.groups")

FETCH_WAIT = 1.0  # seconds one pull waits for events before the member looks again
FETCH_MOST = 500  # events pulled at a time
LAST_LOOK = 0.1  # seconds a leaving member waits for events still on their way to it


class GroupConflict(Exception):
    """The group exists in the cluster with other topics or another query."""


class SharedGroupRegistry:
    """The consumer groups this gateway's members belong to, by project and group key."""

    def __init__(self, event_log: JetStreamEventLog, settings: GroupSettings) -> None:
        self._log = event_log
        self.settings = settings
        self._groups: dict[bytes, SharedGroup] = {}

    def group(self, project_id: bytes, key: bytes, name: str) -> SharedGroup:
        group_id = project_id + key
        if (group := self._groups.get(group_id)) is None:
            group = self._groups[group_id] = SharedGroup(group_id, name, self._log, self.settings)
        return group

    def forget_topic(self, topic_id: bytes) -> None:
        """Nothing to do: destroying a topic purges its messages from every consumer too."""


class SharedGroup:
    """A consumer group backed by a durable JetStream consumer; this gateway's members of it."""

    def __init__(
        self, group_id: bytes, name: str, event_log: JetStreamEventLog, settings: GroupSettings
    ) -> None:
        self.group_id = group_id
        self.name = name
        self.settings = settings
        self._log = event_log
        self.consumer = "g" + hashlib.sha256(group_id).hexdigest()[:40]
        self.members: list[SharedMember] = []
        self.shape: tuple[frozenset[bytes], str] | None = None

    def join(
        self,
        topic_ids: frozenset[bytes],
        query: str,
        filter_: Filter | None,
        at_most_once: bool,
        timeout: float,
    ) -> SharedMember:
        """Add a member on this gateway; ``open()`` it before serving it."""
        if not self.members:
            self.shape = (topic_ids, query)
        member = SharedMember(self, filter_, at_most_once, timeout)
        self.members.append(member)
        return member

    def leave(self, member: SharedMember) -> None:
        """Remove a member: what it held unacked goes back to the group at once."""
        member.close()
        if member in self.members:
            self.members.remove(member)
        if not self.members:
            self.shape = None

    async def _consumer_config(self, timeout: float) -> ConsumerConfig:
        assert self.shape is not None
        topic_ids, query = self.shape
        return ConsumerConfig(
            durable_name=self.consumer,
            description=f"consumer group {self.name}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=timeout,
            max_deliver=self.settings.max_redeliveries + 1,
            filter_subjects=sorted(self._log.events_subject(topic_id) for topic_id in topic_ids),
            max_ack_pending=-1,  # members bound what they hold themselves
            metadata={"query": query},
        )

    async def _bind(self, timeout: float):
        """Create the group's consumer unless it exists (checking it reads the same), and subscribe to it."""
        js = self._log.nats.js
        wanted = await self._consumer_config(timeout)
        try:
            info = await js.consumer_info(self._log.stream, self.consumer)
        except NotFoundError:
            await self._log.nats.create(lambda config: js.add_consumer(self._log.stream, config), wanted)
        else:
            existing = info.config
            subjects = existing.filter_subjects or (
                [existing.filter_subject] if existing.filter_subject else []
            )
            if sorted(subjects) != wanted.filter_subjects or (
                (existing.metadata or {}).get("query", "") != wanted.metadata["query"]
            ):
                raise GroupConflict(
                    f"consumer group {self.name!r} is already reading other topics or another query;"
                    " every member of a group subscribes to the same topics with the same query"
                )
        return await js.pull_subscribe_bind(durable=self.consumer, stream=self._log.stream)


class SharedMember:
    """One subscribe stream of a shared group: its pull subscription and what it holds unacked."""

    def __init__(
        self, group: SharedGroup, filter_: Filter | None, at_most_once: bool, timeout: float
    ) -> None:
        self.group = group
        self._filter = filter_
        self.at_most_once = at_most_once
        self._timeout = timeout
        self._nats = group._log.nats
        self._pull = None
        self._fetching: asyncio.Future | None = None  # the pull under way, if any
        self.unacked: dict[bytes, Msg] = {}
        self.closed = False

    async def open(self) -> None:
        """Bind to the group's consumer; raise GroupConflict if it reads something else."""
        self._pull = await self._nats.call_async(self.group._bind(self._timeout))

    async def next_batch(self) -> list[bytes]:
        """The next events for this member (serialized wrappers); [] once it has left."""
        while not self.closed:
            room = self.group.settings.max_unacked - len(self.unacked)
            if room <= 0:
                await asyncio.sleep(FETCH_WAIT / 10)
                continue
            self._fetching = asyncio.ensure_future(self._nats.call_async(self._fetch(min(room, FETCH_MOST))))
            try:
                # Shielded, and kept in ``_fetching`` if this is cancelled (the stream ended): the pull
                # finishes, and close() gives back what it brings.
                messages = await asyncio.shield(self._fetching)
            except Exception as err:  # the cluster is unreachable for now: keep trying
                self._fetching = None
                log.warning("consumer group %r: could not pull events: %s", self.group.name, err)
                await asyncio.sleep(FETCH_WAIT)
                continue
            self._fetching = None
            if self.closed:
                return []
            if batch := self._hand_out(messages):
                return batch
        return []

    async def _fetch(self, count: int, wait: float = FETCH_WAIT) -> list[Msg]:
        try:
            return await self._pull.fetch(batch=count, timeout=wait)
        except nats.errors.TimeoutError:
            return []

    def _hand_out(self, messages: list[Msg]) -> list[bytes]:
        """What to send of ``messages``; the rest (duplicates, filtered out) is acked at once."""
        batch, skipped = [], []
        for message in messages:
            record = self._log_record(message)
            wrapper = None if record.duplicate_of is not None else record.wrapper
            if wrapper is not None and self._filter is not None:
                wrapper = self._filter(record)
            if wrapper is None:
                skipped.append(message)
                continue
            if (delivered := message.metadata.num_delivered) > self.group.settings.max_redeliveries:
                log.warning(
                    "consumer group %r: event %s delivered %d times; giving up on it (the redelivery cap)"
                    " unless this try is acked",
                    self.group.name,
                    record.rlid.hex(),
                    delivered,
                )
            if self.at_most_once:
                skipped.append(message)
            else:
                self.unacked[record.rlid] = message
            batch.append(wrapper)
        self._settle(skipped, "ack")
        return batch

    def _log_record(self, message: Msg):
        return self.group._log.record_of(message.subject, message.headers or {}, message.data)

    def ack(self, rlid: bytes) -> None:
        if (message := self.unacked.pop(rlid, None)) is not None:
            self._settle([message], "ack")

    def nack(self, rlid: bytes, code: int) -> None:
        message = self.unacked.pop(rlid, None)
        if message is None:
            return
        if code in NOT_REDELIVERED:
            self._settle([message], "term")
        elif code == NackCode.DELIVER_AGAIN_NOT_ME:
            self._nats.spawn(message.nak(delay=NOT_ME_DELAY))
        else:
            self._settle([message], "nak")

    def close(self) -> None:
        """Leave: once no pull of ours is under way, what it held goes back to the group, in order.

        Given back only after our last pull has ended: a pull still open at the server would
        take the very events given back.
        """
        self.closed = True
        asyncio.get_running_loop().create_task(self._give_back(self._fetching))

    async def _give_back(self, fetching: asyncio.Future | None) -> None:
        late: list[Msg] = []
        if fetching is not None:
            with contextlib.suppress(Exception):
                late = await fetching
        if self._pull is not None:  # and what reached our subscription after that pull returned
            with contextlib.suppress(Exception):
                late += await self._nats.call_async(self._fetch(FETCH_MOST, LAST_LOOK))
        held = list(self.unacked.values()) + late
        self.unacked = {}
        held.sort(key=lambda message: message.metadata.sequence.stream)
        self._settle(held, "nak")
        if self._pull is not None:
            pull, self._pull = self._pull, None
            self._nats.spawn(_quietly(pull.unsubscribe()))

    def _settle(self, messages: list[Msg], how: str) -> None:
        """Ack, nak or term messages, in order, from the connection's loop, without waiting for it.

        In order, so events given back come again in the order they were first sent.
        """
        if messages:
            self._nats.spawn(_each(how, messages))


async def _each(how: str, messages: list[Msg]) -> None:
    """``message.<how>()`` for each message in turn; a closed connection means the cluster redelivers."""
    for message in messages:
        with contextlib.suppress(Exception):
            await getattr(message, how)()


async def _quietly(coroutine) -> None:
    """Run a fire-and-forget NATS call; a closed connection just means the cluster will redeliver."""
    with contextlib.suppress(Exception):
        await coroutine
