"""Models as events: a trainer publishes snapshots to a topic, a scorer serves the newest one.

The trainer calls :func:`publish_snapshot` every N events; each snapshot is one event
on a ``models`` topic (see :mod:`helpers.snapshots` for its bytes). A :class:`Scorer`
follows that topic (:func:`follow`) and hot-swaps its model for each newer snapshot,
after checking it; between swaps it serves predictions (:meth:`Scorer.predict`). The
topic keeps every snapshot ever published, so rolling back is a query:
:func:`find_snapshot` fetches an older version, and :meth:`Scorer.roll_back` serves it.

What the scorer checks before it swaps, in order:

1. the header says it is a snapshot of a format this code reads (read without unpickling);
2. its version is newer than the one being served (an old or replayed snapshot is ignored);
3. the SHA-256 of the model's bytes matches the header (a damaged event is refused).

Only then is the model unpickled, and unpickling runs whatever code the writer chose:
follow only topics that only trusted trainers can publish to. The digest catches
damage, not an attacker who can also write the header.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.snapshots import Snapshot, SnapshotError, from_event, read_header, to_event
from helpers.streams import ConsumeReport, Subscription, consume, publish_records, query_events


class SnapshotNotPublished(RuntimeError):
    """The server nacked a snapshot, or did not answer in time: nobody can load it."""


async def publish_snapshot(ensign: Ensign, topic: str, snapshot: Snapshot, *, timeout: float = 30.0) -> Event:
    """Publish ``snapshot`` to ``topic`` and return its event once the server acked it.

    Raises :class:`SnapshotNotPublished` with the server's reason if the event is nacked
    (a snapshot over the event size limit, say), or if no answer comes within
    ``timeout`` seconds: a trainer must not believe a model is out when it is not.
    """
    event = to_event(snapshot)
    report = await publish_records(ensign, topic, [event], timeout=timeout)
    if not event.acked():
        reason = report.nack_errors[0] if report.nacked else f"no answer within {timeout} s"
        raise SnapshotNotPublished(f"snapshot version {snapshot.version} was not stored: {reason}")
    return event


class Scorer:
    """Serves predictions with the newest checked snapshot it was offered.

    ``swaps`` lists the versions it swapped to, in order; ``ignored`` counts the events
    it turned down, by reason: "not a snapshot", "stale" (a version not newer than the
    one served) or "damaged" (the digest does not match).
    """

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.swaps: list[int] = []
        self.ignored: Counter[str] = Counter()

    @property
    def version(self) -> int:
        """The version being served; 0 before the first swap."""
        return self.snapshot.version if self.snapshot else 0

    def offer(self, event: Event) -> str:
        """Check a snapshot event and swap to it if it passes; returns "swapped" or why not.

        The checks run cheapest first, and the model is unpickled only if all pass, so a
        stale or damaged snapshot costs no unpickling and leaves the model being served as
        it was.
        """
        try:
            header = read_header(event.data)
        except SnapshotError:
            return self._ignore("not a snapshot")
        version = header.get("version")
        if not isinstance(version, int):
            return self._ignore("not a snapshot")
        if version <= self.version:
            return self._ignore("stale")
        try:
            snapshot = from_event(event)  # checks the digest before unpickling
        except SnapshotError:
            return self._ignore("damaged")
        self.snapshot = snapshot  # one assignment: a prediction uses the old model or the new one
        self.swaps.append(version)
        return "swapped"

    def _ignore(self, reason: str) -> str:
        self.ignored[reason] += 1
        return reason

    def roll_back(self, snapshot: Snapshot) -> None:
        """Serve ``snapshot`` (an older one, from :func:`find_snapshot`), whatever its version.

        The scorer then takes the next snapshot newer than it again: stop the trainer, or
        fix it, before rolling back, or its next snapshot undoes the rollback.
        """
        self.snapshot = snapshot
        self.swaps.append(snapshot.version)

    def predict(self, text: str) -> Any:
        """The served model's prediction for ``text``; None if no model was swapped in yet."""
        return self.snapshot.model.predict_one(text) if self.snapshot else None

    def predict_proba(self, text: str) -> dict[Any, float]:
        """The served model's probabilities for ``text``; empty if no model was swapped in yet."""
        return self.snapshot.model.predict_proba_one(text) if self.snapshot else {}

    def __repr__(self) -> str:
        ignored = ", ".join(f"{count} {reason}" for reason, count in self.ignored.items()) or "none"
        return f"<Scorer serving version {self.version}; swaps {self.swaps}; ignored: {ignored}>"


async def follow(
    subscription: Subscription, scorer: Scorer, *, max_events: int | None = None, idle_timeout: float = 10.0
) -> ConsumeReport:
    """Offer each event of a subscription to the ``models`` topic to ``scorer``, and ack it.

    Bounded as :func:`helpers.streams.consume` is. Every event is acked, swapped to or
    not: a snapshot turned down would be turned down again.
    """

    async def offer_and_ack(event: Event) -> None:
        scorer.offer(event)
        await event.ack()

    return await consume(subscription, offer_and_ack, max_events=max_events, idle_timeout=idle_timeout)


async def snapshot_headers(ensign: Ensign, topic: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The header of every snapshot stored in ``topic``, in the order they were published.

    An EnSQL query reads them from the log; nothing is unpickled, and events that are
    not snapshots are left out. ``WHERE`` cannot select snapshots (it reads JSON event
    data, and a snapshot is not JSON), so the headers are read here instead.
    """
    return [header for header, _ in await _stored_snapshots(ensign, topic, timeout)]


async def find_snapshot(ensign: Ensign, topic: str, version: int, *, timeout: float = 30.0) -> Snapshot:
    """The snapshot of ``version`` stored in ``topic`` (the last published, if several were).

    For a rollback. Raises ``LookupError`` if the topic holds no such snapshot, and
    :class:`SnapshotError` if the one it holds is damaged. Unpickles: trusted topics only.
    """
    stored = await _stored_snapshots(ensign, topic, timeout)
    matches = [event for header, event in stored if header["version"] == version]
    if not matches:
        raise LookupError(f"no snapshot of version {version} in topic {topic!r}")
    return from_event(matches[-1])


async def _stored_snapshots(ensign: Ensign, topic: str, timeout: float) -> list[tuple[dict[str, Any], Event]]:
    """Each stored snapshot event of ``topic`` with its header, in log order; [] if there is none.

    ``TimeoutError`` if the query has not ended within ``timeout`` seconds: never a partial list.
    """
    found = []
    for event in await query_events(ensign, f"SELECT * FROM {topic}", timeout=timeout):
        try:
            found.append((read_header(event.data), event))
        except SnapshotError:
            continue
    return found
