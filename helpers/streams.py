"""Bounded publish and consume loops for notebooks: every await has an end.

A notebook cell that waits forever is the worst failure a lesson can have, so:

* :func:`publish_records` returns once every event it published was acked or
  nacked by the server, or once ``timeout`` seconds passed, whichever comes first;
* :func:`open_subscription` returns once the server said the subscription is open,
  and the :class:`Subscription` it returns is what :func:`consume` reads from;
* :func:`consume` stops after ``max_events``, after ``idle_timeout`` seconds without
  an event, or when the handler returns :data:`STOP` (a sentinel), whichever comes first;
* :func:`query_events` returns every event an EnSQL query selects (history, which has an
  end), or raises ``TimeoutError`` once ``timeout`` seconds passed;
* :func:`close_client` closes a client even when a subscription stalled.

They run in the foreground of a cell (``await publish_records(...)``); to publish and
consume at once, ``asyncio.gather`` both inside one cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pyensign.api.v1beta1.groups_pb2 import ConsumerGroup
from pyensign.ensign import Ensign
from pyensign.events import Event
from pyensign.exceptions import NackError, QueryNoRows

STOP = object()  # return this from a consume() handler to stop consuming


def json_event(record: Mapping[str, Any]) -> Event:
    """Encode a record as a JSON event."""
    return Event(json.dumps(record).encode("utf-8"), mimetype="application/json")


@dataclass
class PublishReport:
    """What happened to the events one :func:`publish_records` call published."""

    published: int = 0
    acked: int = 0
    nacked: int = 0
    nack_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False

    @property
    def settled(self) -> bool:
        """True when the server answered every published event."""
        return self.acked + self.nacked == self.published


async def publish_records(
    ensign: Ensign,
    topic: str,
    records: Iterable[Mapping[str, Any] | Event],
    *,
    timeout: float = 60.0,
) -> PublishReport:
    """Publish each record as a JSON event (an ``Event`` as it is), then wait for every answer.

    Returns once the server acked or nacked each event, or after ``timeout`` seconds in
    all (``timed_out`` is then set). Each event's own ``wait_for_ack()`` tells when it
    is settled, so this works whatever ``on_ack``/``on_nack`` handlers the topic has:
    with pyensign 0.12.1b0 the first ``publish()`` to a topic fixes them for the client.
    ``Ensign.flush()`` is no substitute: it returns once the client has sent the events,
    before the server has answered them.
    """
    start = time.perf_counter()
    events = [record if isinstance(record, Event) else json_event(record) for record in records]
    report = PublishReport()
    try:
        # publish() waits while the client's 100-event queue is full, for as long as the
        # server does not answer, and wait_for_ack() polls forever: this bounds both.
        async with asyncio.timeout(timeout):
            for event in events:
                await ensign.publish(topic, event)
                report.published += 1
            for event in events:
                with contextlib.suppress(NackError):  # a nack is an answer too; counted below
                    await event.wait_for_ack()
    except TimeoutError:
        report.timed_out = True
    report.acked = sum(event.acked() for event in events)
    report.nacked = sum(event.nacked() for event in events)
    report.nack_errors = [event.error.error for event in events if event.nacked()]
    report.seconds = time.perf_counter() - start
    return report


def _subscribed(ensign: Ensign, topic: str) -> bool:
    """True once the server said ready to one of this client's subscriptions to ``topic``."""
    # pyensign 0.12.1b0 has no signal for "open": its subscriber streams fill this topic
    # map from the server's ready message, so that map is the signal.
    return any(topic in getattr(stream, "_topics", {}) for stream in ensign.client.subscribers.values())


async def wait_until_subscribed(ensign: Ensign, topic: str, timeout: float = 10.0) -> None:
    """Wait until ``ensign`` has an open subscription to ``topic`` (the server said ready).

    For a loop over ``ensign.subscribe(topic)`` written by hand: a subscription opens on
    the first iteration of ``subscribe()`` and, like real Ensign, sees only the events
    committed after that, so publish once this returns. :func:`open_subscription` does
    this wait itself.
    """

    async def opened() -> None:
        while not _subscribed(ensign, topic):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(opened(), timeout)


class Subscription:
    """One client's open subscription to one topic: what :func:`consume` reads from.

    Open it with ``await open_subscription(ensign, topic)``, or with ``async with
    Subscription(ensign, topic) as subscription:``, which also closes it. Read it with
    :func:`consume`, with ``await subscription.read(timeout)``, or with ``async for``.
    Reads continue where the last one stopped, whoever made it.

    Without ``consumer_group`` it is a live tail: it sees the events committed after it
    opened. With one (``ConsumerGroup(name="trainer")``) it joins that group, which
    starts at the topic's earliest event the first time and after its last acked events
    later on (see the server's consumer groups in the README).

    pyensign 0.12.1b0 keeps one stream per client and topic, and closes it only with the
    client: two subscriptions to the same topic on one client share that stream, and
    split its events; subscriptions to different topics are independent. :meth:`close`
    stops this object reading, not the stream: close the client with :func:`close_client`.
    """

    def __init__(self, ensign: Ensign, topic: str, consumer_group: ConsumerGroup | None = None) -> None:
        self.ensign = ensign
        self.topic = topic
        self.consumer_group = consumer_group  # join this group: it decides where reading starts
        self.closed = False
        self._events: AsyncIterator[Event] | None = None
        # The read in progress. pyensign 0.12.1b0's subscribe() cannot be read with a
        # timeout: cancelling a read ends the generator and loses the event its queue
        # then receives. So a read that outlives a timeout is kept for the next one.
        self._waiting: asyncio.Future[Event] | None = None

    async def open(self, timeout: float = 10.0) -> Subscription:
        """Start reading the topic, and return once the server said the subscription is open."""
        if self._events is not None:
            raise RuntimeError(f"the subscription to {self.topic!r} is already open")
        self._events = self.ensign.subscribe(self.topic, consumer_group=self.consumer_group)
        waiting = self._read_next()  # pyensign opens the stream on the first read

        async def opened() -> None:
            while not (_subscribed(self.ensign, self.topic) or waiting.done()):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(opened(), timeout)
        if waiting.done() and not waiting.cancelled() and waiting.exception() is not None:
            self.closed = True
            raise waiting.exception()  # e.g. the topic does not exist
        return self

    def _read_next(self) -> asyncio.Future[Event]:
        """The read in progress, started if there is none."""
        if self._waiting is None:
            self._waiting = asyncio.ensure_future(anext(self._events))
            self._waiting.add_done_callback(_retrieve)
        return self._waiting

    async def read(self, timeout: float | None = None) -> Event:
        """The next event; ``TimeoutError`` after ``timeout`` seconds without one (None: no limit).

        Raises ``StopAsyncIteration`` once the stream has ended (its client was closed).
        """
        if self._events is None or self.closed:
            raise RuntimeError(f"the subscription to {self.topic!r} is not open")
        waiting = self._read_next()
        done, _ = await asyncio.wait({waiting}, timeout=timeout)
        if not done:
            raise TimeoutError(f"no event on {self.topic!r} for {timeout} s")
        self._waiting = None
        return waiting.result()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        """The next event, however long it takes, as with ``subscribe()``: bound the loop yourself."""
        return await self.read()

    async def close(self) -> None:
        """Stop reading. Returns at once: it waits neither for the server nor for a read.

        A read still waiting ends when the client closes, and the event it may get
        before then is dropped. (Cancelling it instead would leave a task inside
        pyensign 0.12.1b0 that takes that event anyway and is never finished.)
        """
        self.closed = True
        self._waiting = None

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self._events is not None else "not opened"
        return f"<Subscription to {self.topic!r}, {state}>"


def _retrieve(read: asyncio.Future) -> None:
    """Mark a read's outcome as seen, so a read nobody collects logs no error."""
    if not read.cancelled():
        read.exception()


async def open_subscription(ensign: Ensign, topic: str, timeout: float = 10.0) -> Subscription:
    """Subscribe ``ensign`` to ``topic`` and return the :class:`Subscription` once it is open.

    Like real Ensign, the subscription sees only the events committed after it opened:
    publish once this returns. Close it with ``await subscription.close()``.
    """
    return await Subscription(ensign, topic).open(timeout)


@dataclass
class ConsumeReport:
    """How a :func:`consume` call ended."""

    events: int = 0
    reason: str = ""  # "max_events", "idle", "sentinel" or "ended"
    seconds: float = 0.0


async def consume(
    subscription: Subscription,
    handler: Callable[[Event], Any],
    *,
    max_events: int | None = None,
    idle_timeout: float = 10.0,
) -> ConsumeReport:
    """Feed each event of ``subscription`` to ``handler`` (sync or async) until a bound is reached.

    The handler acks or nacks the event itself. The subscription stays open after this
    returns, so the next ``consume`` on it carries on where this one stopped.
    """
    report = ConsumeReport()
    start = time.perf_counter()
    while max_events is None or report.events < max_events:
        try:
            event = await subscription.read(idle_timeout)
        except TimeoutError:
            report.reason = "idle"
            break
        except StopAsyncIteration:
            report.reason = "ended"
            break
        report.events += 1
        outcome = handler(event)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome is STOP:
            report.reason = "sentinel"
            break
    else:
        report.reason = "max_events"
    report.seconds = time.perf_counter() - start
    return report


async def query_events(ensign: Ensign, query: str, *, timeout: float = 60.0) -> list[Event]:
    """Every event an EnSQL query selects, in the order the server returns them; ``[]`` if none.

    A subscription sees what is committed after it opens; a query reads what the topic has
    stored, whenever it was published, in commit order, and it ends. Raises ``TimeoutError``
    if the server has not returned the last event within ``timeout`` seconds: a partial
    history would quietly train a different model. The events are held in memory; for a
    history too large for that, read ``await ensign.query(...)`` with ``async for``.
    """
    events: list[Event] = []
    async with asyncio.timeout(timeout) as deadline:
        try:
            cursor = await ensign.query(query)
        except QueryNoRows:
            cursor = None
        if cursor is not None:
            try:
                async for event in cursor:
                    events.append(event)
            finally:
                cursor.close()  # a plain method in pyensign 0.12.1b0, not a coroutine
    # pyensign 0.12.1b0's cursor takes a read cancelled by a timeout for the end of the results
    # (and a query cancelled before its first event for QueryNoRows), so nothing was raised:
    # the deadline tells whether the history was cut short.
    if deadline.expired():
        raise TimeoutError(f"{query!r}: {len(events):,} events in {timeout} s, and not the last")
    return events


async def close_client(ensign: Ensign, timeout: float = 5.0) -> None:
    """Close a client, even when a subscription stopped being read.

    pyensign 0.12.1b0's ``close()`` waits for every stream task, and a subscription
    whose 100-event buffer is full never finishes, so ``close()`` alone can wait
    forever. After ``timeout`` those tasks are cancelled and a second ``close()``
    closes the channel.
    """
    try:
        await asyncio.wait_for(ensign.close(), timeout)
    except TimeoutError:
        await asyncio.wait_for(ensign.close(), timeout)
