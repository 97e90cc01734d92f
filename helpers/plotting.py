"""A live plot of stream metrics that redraws in place in a notebook, and also works without one.

The plot is shown once through a display handle, ``display(image, display_id=True)``, and each
redraw replaces that same output with ``handle.update(image)``: one image per cell, which nbval can
check (it ignores ``clear_output``, so the usual clear-and-redraw loop fails there). The image is a
PNG rendered here, not left to the matplotlib backend: under ``MPLBACKEND=Agg``, as ``make
notebooks`` runs, a kernel would display a figure as the text ``<Figure size ...>``. The figure is
a plain ``matplotlib.figure.Figure`` that pyplot never holds, so nothing shows it a second time.
Outside a notebook (a script, CI, tests) the plot draws without displaying and ``save`` writes a PNG.

Works when copied alone next to a notebook: it needs matplotlib (and IPython to display), not the
other helpers modules, and it neither picks nor changes a matplotlib backend.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def in_notebook() -> bool:
    """True when running in a Jupyter kernel (where ``display`` can show images), else False."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return getattr(get_ipython(), "kernel", None) is not None


def _image(png: bytes) -> Any:
    from IPython.display import Image

    return Image(data=png, format="png")


class LivePlot:
    """Metric curves against the number of events seen, redrawn every ``every`` points added.

    ``add(n, snapshot)`` takes the event count and a dict holding a number for each of
    ``metric_names``, such as ``StreamMetrics.snapshot()`` or the values of a River
    ``iter_progressive_val_score`` checkpoint.
    ``threshold`` draws a dashed line at that score (an alert level, say). ``display=None`` shows the
    plot only inside a Jupyter kernel; ``False`` never shows it. Call ``close()`` at the end: it
    draws the points added since the last redraw.
    """

    def __init__(
        self,
        metric_names: Iterable[str] = ("accuracy", "precision", "recall"),
        title: str = "Progressive validation",
        every: int = 10,
        threshold: float | None = None,
        display: bool | None = None,
        figsize: tuple[float, float] = (7.0, 3.5),
    ) -> None:
        self.metric_names = tuple(metric_names)
        self.every = every
        self.xs: list[int] = []
        self.ys: dict[str, list[float]] = {name: [] for name in self.metric_names}
        self.frames = 0  # redraws so far: one every ``every`` points, and one on close()
        self.closed = False

        self.fig = Figure(figsize=figsize, layout="tight")
        self.ax = self.fig.add_subplot()
        self.ax.set(title=title, xlabel="events", ylabel="score", ylim=(0, 1), xlim=(0, 1))
        self.ax.grid(alpha=0.3)
        self.lines = {name: self.ax.plot([], [], label=name)[0] for name in self.metric_names}
        if threshold is not None:
            self.ax.axhline(threshold, linestyle="--", color="grey", label=f"threshold {threshold:g}")
        self.ax.legend(loc="lower right")

        self.handle: Any = None
        show = in_notebook() if display is None else display
        if show:
            from IPython.display import display as ipython_display

            self.handle = ipython_display(_image(self.png()), display_id=True)

    def add(self, n: int, snapshot: Mapping[str, float]) -> None:
        """Append the point (n, snapshot[name]) to each curve; redraw every ``every`` points."""
        self.xs.append(n)
        for name in self.metric_names:
            self.ys[name].append(float(snapshot[name]))
        if len(self.xs) % self.every == 0:
            self.redraw()

    def redraw(self) -> None:
        """Show every point added so far: update the displayed image (if displayed)."""
        self.frames += 1
        if self.handle is not None:
            self.handle.update(_image(self.png()))

    def close(self) -> None:
        """Draw the final frame, with the points added since the last redraw, and stop redrawing."""
        self.redraw()
        self.handle = None
        self.closed = True

    def png(self) -> bytes:
        """The plot with every point added so far, as PNG bytes."""
        for name, line in self.lines.items():
            line.set_data(self.xs, self.ys[name])
        self.ax.set_xlim(0, max(self.xs[-1] if self.xs else 1, 1))
        buffer = io.BytesIO()
        self.fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the plot with every point added so far to ``path`` as a PNG; returns the path."""
        path = Path(path)
        path.write_bytes(self.png())
        return path
