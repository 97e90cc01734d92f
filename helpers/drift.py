"""Drift: a frozen model, a learning one and one reset on drift, run side by side over a shifting stream.

Lesson 07 streams the corpora one after another (tweets, then movie reviews, Amazon reviews and New
York Times editorials) and asks two questions. Does a model fitted once and then frozen keep up with
one that learns on? And when a drift detector says the stream changed, should the model be thrown
away and trained again from scratch? ``compare`` answers both in one pass: three copies of the same
model, fitted on the same records, meet every later record in the same order.

* **frozen** only predicts: the batch model, deployed as it is.
* **learning** predicts, then learns (lesson 01's predict→fit); River's ``drift.ADWIN`` watches its
  mistakes and records where it fires, and nothing else happens.
* **reset on drift** does the same with its own ADWIN, and replaces its model with a fresh one each
  time that detector fires.

The detectors read 1 for a mistake and 0 for a right answer, so they watch the error rate. A fresh
model's first answer, ``None``, counts as a mistake there (it is not a right answer), while the
accuracies leave it unscored, as River's evaluation does. ``python -m helpers.drift`` runs the
lesson's comparison, prints the table and writes the plot. Needs River and matplotlib, and the
``data``, ``learning`` and ``plotting`` helpers.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from river import drift, metrics, utils

from helpers.data import DataMissingError, drift_order, load_records
from helpers.learning import MODEL_KINDS, features, make_model, target, train_batch

if TYPE_CHECKING:
    from helpers.plotting import LivePlot

#: ADWIN's confidence parameter: smaller means fewer false alarms and later detections.
#: 0.002 is River's default.
DELTA = 0.002

#: The three ways ``compare`` runs a model, in the order it reports them.
STRATEGIES = ("frozen", "learning", "reset on drift")


@dataclass(frozen=True)
class Alarm:
    """Where a detector fired, and its estimate of the error rate just before and just after.

    ``error_before`` is ADWIN's mean over its whole window before the update that fired;
    ``error_after`` is the mean over the recent part it kept. ADWIN fires on a change either way,
    so ``rose`` tells a model getting worse from one getting better.
    """

    position: int
    error_before: float
    error_after: float

    @property
    def rose(self) -> bool:
        """True if the error rate went up: the change the detector is usually wanted for."""
        return self.error_after > self.error_before


@dataclass
class Contender:
    """One model on the stream, how it is run, and its scores.

    ``learns`` says whether it learns each record after predicting it; ``detector`` (if any) is fed
    its mistakes; ``reset_on_drift`` replaces ``model`` with a fresh ``make_model(kind)`` whenever
    the detector fires. ``accuracy`` holds River's accuracy per domain, ``rolling`` over the last
    records, whichever model is current.
    """

    name: str
    model: Any
    kind: str = "bigram-nb"
    learns: bool = True
    detector: drift.ADWIN | None = None
    reset_on_drift: bool = False
    window: int = 500
    accuracy: dict[str, metrics.Accuracy] = field(default_factory=dict)
    rolling: utils.Rolling = field(init=False)
    alarms: list[Alarm] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rolling = utils.Rolling(metrics.Accuracy, window_size=self.window)

    def step(self, position: int, record: Mapping[str, Any]) -> None:
        """Predict the record, score it, feed the detector, reset if it fired, then learn."""
        x, y = features(record), target(record)
        y_pred = self.model.predict_one(x)
        if y_pred is not None:
            self.accuracy.setdefault(record["domain"], metrics.Accuracy()).update(y, y_pred)
            self.rolling.update(y, y_pred)
        if self.detector is not None:
            before = self.detector.estimation
            self.detector.update(int(y_pred != y))
            if self.detector.drift_detected:
                self.alarms.append(Alarm(position, before, self.detector.estimation))
                if self.reset_on_drift:
                    self.model = make_model(self.kind)  # the fresh model learns this record first
        if self.learns:
            self.model.learn_one(x, y)


@dataclass
class Comparison:
    """What ``compare`` measured: the contenders, where each domain starts, and the rolling curves.

    Positions count records from the start of the whole stream (the fit records included), from 0.
    """

    contenders: dict[str, Contender]
    boundaries: dict[str, int]
    positions: list[int] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)

    def accuracy(self, name: str, domain: str) -> float:
        """The accuracy of contender ``name`` on ``domain`` (0.0 if it scored none there)."""
        metric = self.contenders[name].accuracy.get(domain)
        return metric.get() if metric is not None else 0.0

    def later_domains(self) -> list[str]:
        """The domains of the stream after the fit, in stream order."""
        scored = self.contenders[STRATEGIES[0]].accuracy
        return [domain for domain in self.boundaries if domain in scored]

    def table(self) -> str:
        """Accuracy per later domain, one column per contender, as the lesson and the CLI print it."""
        names = list(self.contenders)
        lines = [f"{'':<16}" + "".join(f"{name:>16}" for name in names)]
        for domain in self.later_domains():
            lines.append(f"{domain:<16}" + "".join(f"{self.accuracy(n, domain):>16.3f}" for n in names))
        return "\n".join(lines)


def domain_starts(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Domain -> position of its first record, in stream order: where the stream shifts."""
    starts: dict[str, int] = {}
    for position, record in enumerate(records):
        starts.setdefault(record["domain"], position)
    return starts


def split_first_domain(stream: Sequence[Mapping[str, Any]]) -> tuple[list, list]:
    """The records of the stream's first domain (what the models are fitted on), and the rest."""
    first = [record for record in stream if record["domain"] == stream[0]["domain"]]
    return first, list(stream[len(first) :])


def head_of_each_domain(stream: Sequence[Mapping[str, Any]], limit: int) -> list:
    """At most ``limit`` records of each domain, keeping the stream's order: a small drift stream."""
    seen: dict[str, int] = {}
    kept = []
    for record in stream:
        seen[record["domain"]] = seen.get(record["domain"], 0) + 1
        if seen[record["domain"]] <= limit:
            kept.append(record)
    return kept


def compare(
    train: Sequence[Mapping[str, Any]],
    stream: Sequence[Mapping[str, Any]],
    *,
    kind: str = "bigram-nb",
    delta: float = DELTA,
    window: int = 500,
    every: int = 50,
) -> Comparison:
    """Fit three copies of ``make_model(kind)`` on ``train``, then run them over ``stream``.

    Every record of ``stream`` goes through each contender's ``step`` in turn: frozen, learning
    (watched by ``drift.ADWIN(delta)``) and reset on drift (with its own ADWIN). Every ``every``
    records the rolling accuracies (over the last ``window``) are added to the curves.
    """
    contenders = [
        Contender("frozen", train_batch(make_model(kind), train), kind, learns=False, window=window),
        Contender(
            "learning",
            train_batch(make_model(kind), train),
            kind,
            detector=drift.ADWIN(delta=delta),
            window=window,
        ),
        Contender(
            "reset on drift",
            train_batch(make_model(kind), train),
            kind,
            detector=drift.ADWIN(delta=delta),
            reset_on_drift=True,
            window=window,
        ),
    ]
    result = Comparison(
        {contender.name: contender for contender in contenders},
        domain_starts([*train, *stream]),
        curves={contender.name: [] for contender in contenders},
    )
    for position, record in enumerate(stream, start=len(train)):
        for contender in contenders:
            contender.step(position, record)
        if (position + 1 - len(train)) % every == 0 or position == len(train) + len(stream) - 1:
            result.positions.append(position)
            for contender in contenders:
                result.curves[contender.name].append(contender.rolling.get())
    return result


def draw(comparison: Comparison, display: bool | None = None) -> LivePlot:
    """The rolling accuracies on one ``LivePlot``, with the domains and the detectors' alarms marked.

    Grey lines mark where each domain starts (the shaded part is what the models were fitted on),
    dotted lines where ADWIN fired on the learning model's mistakes, and crosses at the bottom where
    the reset-on-drift model was replaced. ``display=None`` shows it only inside a Jupyter kernel.
    """
    from helpers.plotting import LivePlot  # matplotlib is slow to import; the comparison does not need it

    window = next(iter(comparison.contenders.values())).window
    plot = LivePlot(
        comparison.contenders,
        title=f"Rolling accuracy (last {window} records) as the stream shifts domain",
        every=len(comparison.positions) + 1,
        display=display,
        figsize=(9.0, 4.0),
    )
    for i, position in enumerate(comparison.positions):
        plot.add(position, {name: curve[i] for name, curve in comparison.curves.items()})
    ax = plot.ax
    starts = list(comparison.boundaries.items())
    ax.axvspan(0, starts[1][1] if len(starts) > 1 else 0, color="grey", alpha=0.12)
    for domain, start in starts:
        ax.axvline(start, color="grey", linewidth=0.8)
        ax.annotate(
            domain,
            (start, 0.96),
            xytext=(3, 0),
            textcoords="offset points",
            color="dimgrey",
            fontsize=8,
            va="top",
        )
    learning = comparison.contenders.get("learning")
    for i, alarm in enumerate(learning.alarms if learning else []):
        ax.axvline(
            alarm.position,
            color=plot.lines["learning"].get_color(),
            linestyle=":",
            label="ADWIN fired (learning)" if i == 0 else None,
        )
    resetting = comparison.contenders.get("reset on drift")
    if resetting and resetting.alarms:
        ax.plot(
            [alarm.position for alarm in resetting.alarms],
            [0.03] * len(resetting.alarms),
            "x",
            color=plot.lines["reset on drift"].get_color(),
            label="reset",
        )
    ax.set_ylim(0, 1)
    ax.legend(loc="lower left", fontsize=8)
    plot.close()
    return plot


def alarm_lines(comparison: Comparison) -> list[str]:
    """One line per contender with a detector: where it fired, and which way the error rate moved."""
    lines = []
    for contender in comparison.contenders.values():
        if contender.detector is None:
            continue
        fired = ", ".join(
            f"{a.position:,} ({'up' if a.rose else 'down'} {a.error_before:.3f}→{a.error_after:.3f})"
            for a in contender.alarms
        )
        count = len(contender.alarms)
        reset = ", a reset each time" if contender.reset_on_drift and count else ""
        lines.append(f"{contender.name}: ADWIN fired {count} time{'s' * (count != 1)}{reset}: {fired or '-'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """The command line: run lesson 07's comparison on the drift order, print it, write the plot."""
    parser = argparse.ArgumentParser(prog="python -m helpers.drift", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="use only the first N records of each domain")
    parser.add_argument("--delta", type=float, default=DELTA, help="ADWIN's delta (default %(default)s)")
    parser.add_argument("--window", type=int, default=500, help="records in the rolling accuracy")
    parser.add_argument(
        "--kind", default="bigram-nb", choices=MODEL_KINDS, help="the model (make_model's kind)"
    )
    parser.add_argument("--plot", default="drift.png", help="where to write the plot (PNG)")
    args = parser.parse_args(argv)
    try:
        stream = drift_order(load_records())
    except DataMissingError as err:
        parser.exit(1, f"{err}\n")
    if args.limit:
        stream = head_of_each_domain(stream, args.limit)
    train, later = split_first_domain(stream)
    print(
        f"fitted on {len(train):,} {train[0]['domain']}, then {len(later):,} records, "
        f"in drift order: {', '.join(domain_starts(later))}",
        flush=True,
    )
    comparison = compare(train, later, kind=args.kind, delta=args.delta, window=args.window)
    print(comparison.table())
    for line in alarm_lines(comparison):
        print(line)
    path = draw(comparison, display=False).save(Path(args.plot))
    print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
