"""What the benchmarks share: the server's CPU clock, timed publishing, one record per figure, the table.

Each benchmark measures two things side by side in one run on one machine and judges their
ratio against a target: the Python client, not the server, bounds most rates, so absolute
figures say more about the machine than about the code. A ratio under its target is printed
as "below target"; only a failed correctness check (an event lost, duplicated or out of order)
or a wait that ran out makes a benchmark exit 1.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import psutil
from pyensign.ensign import Ensign
from pyensign.events import Event

from helpers.streams import PublishReport, close_client, json_event, publish_records
from local_ensign.launcher import LocalEnsign

LABEL_WIDTH, CELL_WIDTH = 44, 12
PUBLISH, PUBLISH_CPU = "publish with acks, events/s", "publish: server CPU, µs/event"  # measure_publish rows
REVIEW = "Arrived on time, sturdy, does the job; would buy again. Five stars from me."


class BenchmarkFailure(RuntimeError):
    """A correctness check failed or a wait ran out: the benchmark says why and exits 1."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds that process ``pid`` has used so far, all its threads together."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def bounded(awaitable: Awaitable, seconds: float, what: str | Callable[[], str]) -> Any:
    """Await ``awaitable`` for at most ``seconds``, then raise BenchmarkFailure saying what was awaited."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        what = what() if callable(what) else what
        raise BenchmarkFailure(f"timed out after {seconds:g} s: {what}") from None


def numbered_events(count: int) -> list[Event]:
    """``count`` review-like JSON events of about 100 bytes, numbered 0, 1, ... in ``seq``."""
    return [json_event({"seq": seq, "rating": 1 + seq % 5, "text": REVIEW}) for seq in range(count)]


def check_sequence(got: Sequence[Hashable], expected: Sequence[Hashable], what: str) -> None:
    """Raise BenchmarkFailure unless ``got`` is ``expected``: nothing lost, duplicated or reordered."""
    if list(got) != list(expected):
        lost, repeated = len(set(expected) - set(got)), len(got) - len(set(got))
        counts = f"{len(got)} events of {len(expected)}, {lost} lost, {repeated} repeated"
        raise BenchmarkFailure(f"{what}: {counts}, or out of order")


def check_acked(report: PublishReport, count: int, what: str) -> None:
    """Raise BenchmarkFailure unless the server acked all ``count`` events of a ``publish_records`` call."""
    if report.acked != count:
        late = f", timed out after {report.seconds:.0f} s" if report.timed_out else ""
        errors = "".join(f" ({error})" for error in report.nack_errors[:1])
        nacked = f"{report.nacked} nacked{errors}{late}"
        raise BenchmarkFailure(f"{what}: {report.acked} of {count} events acked, {nacked}")


async def open_publisher(ensign: Ensign, topic: str, timeout: float) -> dict[bytes, float]:
    """Open a publish stream to ``topic`` with one event (``seq`` -1); return when each ack came, by id."""
    acked_at: dict[bytes, float] = {}

    async def note(ack: Any) -> None:
        acked_at[ack.id] = time.perf_counter()

    opening = json_event({"seq": -1})
    await bounded(ensign.ensure_topic_exists(topic), timeout, f"creating topic {topic}")
    # pyensign 0.12.1b0 fixes a topic's on_ack handler at a client's first publish() to it, so the
    # clock goes in here; publish_records later settles its events through their wait_for_ack().
    await bounded(ensign.publish(topic, opening, on_ack=note), timeout, "opening the publish stream")
    await bounded(opening.wait_for_ack(), timeout, "the ack of the publish stream's first event")
    return acked_at


async def measure_publish(server: LocalEnsign, topic: str, count: int, timeout: float) -> dict[str, float]:
    """Publish ``count`` events with a new client: events/s to the last ack, and server CPU µs per event."""
    assert server.process is not None
    pid = server.process.pid
    rate, (cpu_us,) = await timed_publish(
        server.client_kwargs(), topic, count, timeout, lambda: [cpu_seconds(pid)]
    )
    return {PUBLISH: rate, PUBLISH_CPU: cpu_us}


async def timed_publish(
    client_kwargs: dict, topic: str, count: int, timeout: float, cpu: Callable[[], list[float]]
) -> tuple[float, list[float]]:
    """Publish ``count`` events with a new client: events/s to the last ack, and CPU µs per event.

    ``cpu()`` reads the CPU seconds of each process that serves the events (one server,
    or a gateway and its NATS nodes); the CPU cost is given per process, in that order.
    """
    ensign = Ensign(**client_kwargs)
    try:
        acked_at = await open_publisher(ensign, topic, timeout)
        events = numbered_events(count)
        before, start = cpu(), time.perf_counter()
        report = await publish_records(ensign, topic, events, timeout=timeout)
        cpu_us = [(after - used) / count * 1e6 for used, after in zip(before, cpu(), strict=True)]
    finally:
        await close_client(ensign)
    check_acked(report, count, "publishing")
    return count / (max(acked_at[event.id] for event in events) - start), cpu_us


@dataclass(frozen=True)
class Measurement:
    """One figure from one repeat, in one column of the table (a store, a layout)."""

    repeat: int
    column: str
    figure: str  # the row's label: what was measured, then its unit after the last comma
    value: float


class Results:
    """Every measurement of a run; the table shows each figure's median over the repeats."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.measurements: list[Measurement] = []

    def add(self, repeat: int, column: str, figures: Mapping[str, float]) -> None:
        """Keep one repeat's figures for ``column``, and print them as a progress line."""
        self.measurements += [Measurement(repeat, column, name, value) for name, value in figures.items()]
        shown = "; ".join(f"{name.rsplit(',', 1)[0]} {value:,.1f}" for name, value in figures.items())
        print(f"  repeat {repeat}, {column}: {shown}", flush=True)

    def median(self, figure: str, column: str) -> float:
        """The median of ``figure`` in ``column`` over the repeats."""
        values = [m.value for m in self.measurements if (m.figure, m.column) == (figure, column)]
        return statistics.median(values)

    def print_table(self, targets: Mapping[str, float]) -> None:
        """A row of medians per figure; with two columns, also their ratio, with its target's verdict."""
        repeats = len({m.repeat for m in self.measurements})
        ratio = ["ratio"] if len(self.columns) == 2 else []
        heading = "".join(f"{name:>{CELL_WIDTH}}" for name in self.columns + ratio)
        print(f"\n{f'median of {repeats} repeats':<{LABEL_WIDTH}}{heading}")
        for figure in dict.fromkeys(m.figure for m in self.measurements):
            values = [self.median(figure, column) for column in self.columns]
            values += [values[0] / values[1]] if ratio else []
            print_row(figure, values, verdict(values[-1], targets[figure]) if figure in targets else "")


def verdict(ratio: float, target: float) -> str:
    """PASS or below target: a verdict, never a failure."""
    return f"target ≥ {target:.1f}: {'PASS' if ratio >= target else 'below target'}"


def print_row(label: str, values: Sequence[float], note: str = "") -> None:
    """One line of the table: the label, the numbers in aligned columns, then a note (the verdict)."""
    cells = "".join(f"{v:>{CELL_WIDTH},.3f}" if abs(v) < 10 else f"{v:>{CELL_WIDTH},.1f}" for v in values)
    print(f"{label:<{LABEL_WIDTH}}{cells}  {note}".rstrip())


def run(title: str, settings: str, benchmark: Coroutine[Any, Any, None]) -> int:
    """Say what is measured on what, run it: 0, or 1 if a correctness check failed or a wait ran out."""
    machine = f"{os.cpu_count()} cores {platform.machine()}, Python {platform.python_version()}"
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{title}\n{machine}, pyensign {version('pyensign')}, load average {load}; {settings}", flush=True)
    try:
        asyncio.run(benchmark)
    except Exception as error:
        # pyensign 0.12.1b0's close() raises AttributeError for a client that never connected:
        # the failure that stopped the benchmark before that client's first call is its context.
        failure: BaseException | None = error
        while failure is not None and not isinstance(failure, BenchmarkFailure | TimeoutError):
            failure = failure.__context__
        if failure is None:
            raise
        print(f"\nFAILED: {failure or 'a wait ran out'}", flush=True)
        return 1
    return 0
