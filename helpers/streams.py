"""Bounded publish and consume loops for notebooks: every await has an end.

A notebook cell that waits forever is the worst failure a lesson can have, so:

* :func:`publish_records` returns once every event it published was acked or
  nacked by the server, or once ``timeout`` seconds passed, whichever comes first;
* :func:`consume` stops after ``max_events``, after ``idle_timeout`` seconds without
  an event, or when the handler returns :data:`STOP` (a sentinel), whichever comes first;
* :func:`close_client` closes a client even when a subscription stalled.

They run in the foreground of a cell (``await publish_records(...)``); to publish and
consume at once, ``asyncio.gather`` both inside one cell.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

from pyensign.ensign import Ensign
from pyensign.events import Event

STOP = object()  # return this from a consume() handler to stop consuming


def json_event(record: dict) -> Event:
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
    records: Iterable[dict],
    *,
    timeout: float = 60.0,
    on_ack: Callable[[Any], Awaitable[None]] | None = None,
    on_nack: Callable[[Any], Awaitable[None]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> PublishReport:
    """Publish each record as a JSON event, then wait for all acks and nacks (or ``timeout``).

    ``on_ack``/``on_nack`` are passed to pyensign (``async def`` functions; the first
    publish to a topic fixes them for that client). Waiting uses each event's own
    state, so it works whatever handlers the topic already has. ``progress(n)`` is
    called with the number of events settled so far, for progress bars.
    """
    start = time.perf_counter()
    deadline = start + timeout
    events: list[Event] = []
    report = PublishReport()
    for record in records:
        event = record if isinstance(record, Event) else json_event(record)
        try:
            await asyncio.wait_for(
                ensign.publish(topic, event, on_ack=on_ack, on_nack=on_nack),
                max(deadline - time.perf_counter(), 0.001),
            )
        except TimeoutError:  # the client's queue stayed full: the server is not answering
            report.timed_out = True
            break
        events.append(event)
    report.published = len(events)
    settled = 0
    while settled < len(events) and not report.timed_out:
        while settled < len(events) and (events[settled].acked() or events[settled].nacked()):
            settled += 1
        if progress:
            progress(settled)
        if settled < len(events):
            if time.perf_counter() > deadline:
                report.timed_out = True
                break
            await asyncio.sleep(0.01)
    report.acked = sum(event.acked() for event in events)
    report.nacked = sum(event.nacked() for event in events)
    report.nack_errors = [event.error.error for event in events if event.nacked()]
    report.seconds = time.perf_counter() - start
    return report


@dataclass
class ConsumeReport:
    """How a :func:`consume` call ended."""

    events: int = 0
    reason: str = ""  # "max_events", "idle", "sentinel" or "ended"
    seconds: float = 0.0


@dataclass
class _Subscription:
    """One client's subscription to one topic, kept open between ``consume`` calls."""

    events: AsyncIterator[Event]
    waiting: asyncio.Task | None = None  # a read that outlived an idle timeout


_subscriptions: WeakKeyDictionary[Ensign, dict[str, _Subscription]] = WeakKeyDictionary()


def _subscription(ensign: Ensign, topic: str) -> _Subscription:
    """The client's open subscription to ``topic``, opened on first use.

    Reusing it keeps one stream per client and topic: with pyensign 0.12.1b0, a second
    ``subscribe()`` may open a second stream, and one left unread stalls ``close()``.
    """
    per_client = _subscriptions.setdefault(ensign, {})
    if topic not in per_client:
        per_client[topic] = _Subscription(ensign.subscribe(topic).__aiter__())
    return per_client[topic]


async def consume(
    ensign: Ensign,
    topic: str,
    handler: Callable[[Event], Any],
    *,
    max_events: int | None = None,
    idle_timeout: float = 10.0,
) -> ConsumeReport:
    """Feed each event of ``topic`` to ``handler`` (sync or async) until a bound is reached.

    The handler acks or nacks the event itself. The subscription is live: it sees
    events committed after it opened (see :func:`wait_until_subscribed`). It stays
    open after this returns, so a later call on the same client carries on where this
    one stopped; a read still waiting at an idle timeout is kept for that next call
    rather than cancelled (cancelling it would lose the event it then receives).
    """
    report = ConsumeReport()
    start = time.perf_counter()
    subscription = _subscription(ensign, topic)
    while max_events is None or report.events < max_events:
        if subscription.waiting is None:
            subscription.waiting = asyncio.ensure_future(subscription.events.__anext__())
        done, _ = await asyncio.wait({subscription.waiting}, timeout=idle_timeout)
        if not done:
            report.reason = "idle"
            break
        read, subscription.waiting = subscription.waiting, None
        try:
            event = read.result()
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


async def wait_until_subscribed(ensign: Ensign, topic: str, timeout: float = 10.0) -> None:
    """Wait until ``ensign`` has an open subscription to ``topic`` (server said ready).

    A subscription opens on the first iteration of ``subscribe()`` and, like real
    Ensign, sees only events committed after that. pyensign 0.12.1b0 offers no signal
    for "open", so this looks at the client's subscriber streams, whose topic map is
    filled by the server's ready message.
    """

    async def opened() -> None:
        while not any(topic in getattr(s, "_topics", {}) for s in ensign.client.subscribers.values()):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(opened(), timeout)


async def close_client(ensign: Ensign, timeout: float = 5.0) -> None:
    """Close a client, even when a subscription stopped being read.

    pyensign 0.12.1b0's ``close()`` waits for every stream task, and a subscription
    whose 100-event buffer is full never finishes, so ``close()`` alone can wait
    forever. After ``timeout`` those tasks are cancelled and a second ``close()``
    closes the channel.
    """
    for subscription in _subscriptions.pop(ensign, {}).values():
        if subscription.waiting is not None:
            subscription.waiting.cancel()
    try:
        await asyncio.wait_for(ensign.close(), timeout)
    except TimeoutError:
        await asyncio.wait_for(ensign.close(), timeout)
