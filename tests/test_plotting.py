"""The live metric plot: headless under Agg, and as one updating image in a real Jupyter kernel."""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.image
import matplotlib.pyplot as plt
import nbformat
import pytest
from nbclient import NotebookClient
from river import evaluate, metrics

from helpers.data import load_records, shuffled
from helpers.learning import examples, make_model
from helpers.plotting import LivePlot, in_notebook

matplotlib.use("Agg")  # what CI uses; the plot itself never picks a backend

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def snapshot(i: int) -> dict[str, float]:
    return {"accuracy": 0.5 + i / 100, "precision": 0.6, "recall": 0.7, "rolling_accuracy": 0.8}


def test_outside_a_kernel_it_does_not_display() -> None:
    assert not in_notebook()
    assert LivePlot().handle is None  # display=None: shown only in a kernel


def test_headless_plot_adds_points_and_counts_redraws_every_n() -> None:
    plot = LivePlot(every=10, display=False)
    for i in range(1, 26):
        plot.add(i * 100, snapshot(i))
    assert plot.frames == 2  # after 10 and 20 points
    assert plot.xs == [i * 100 for i in range(1, 26)]
    assert plot.ys["accuracy"][-1] == pytest.approx(0.75)

    plot.close()
    assert plot.frames == 3  # the final frame
    assert plot.closed


def test_curves_axes_and_threshold() -> None:
    plot = LivePlot(
        metric_names=("rolling_accuracy",), title="Monitor", every=5, threshold=0.6, display=False
    )
    for i in range(1, 8):
        plot.add(i * 10, snapshot(i))
    plot.png()

    assert list(plot.lines["rolling_accuracy"].get_xdata()) == [10, 20, 30, 40, 50, 60, 70]
    assert plot.ax.get_ylim() == (0, 1)
    assert plot.ax.get_xlim() == (0, 70)
    assert plot.ax.get_xlabel() == "events"
    assert plot.ax.get_title() == "Monitor"
    threshold = next(line for line in plot.ax.lines if line.get_label() == "threshold 0.6")
    assert list(threshold.get_ydata()) == [0.6, 0.6]
    assert threshold.get_linestyle() == "--"
    assert [text.get_text() for text in plot.ax.get_legend().get_texts()] == [
        "rolling_accuracy",
        "threshold 0.6",
    ]


def test_a_missing_metric_is_named() -> None:
    plot = LivePlot(metric_names=("accuracy", "f1"), display=False)
    with pytest.raises(KeyError, match="f1"):
        plot.add(1, snapshot(1))


def test_save_writes_a_valid_png(tmp_path: Path) -> None:
    plot = LivePlot(every=10, display=False, figsize=(6.0, 3.0))
    for i in range(1, 31):
        plot.add(i * 100, snapshot(i))
    plot.close()

    path = plot.save(tmp_path / "metrics.png")
    data = path.read_bytes()
    assert path == tmp_path / "metrics.png"
    assert len(data) > 1000
    assert data.startswith(PNG_MAGIC)
    assert matplotlib.image.imread(path).shape[:2] == (300, 600)  # decodes, at 100 dpi


def test_no_pyplot_figure_is_left_open() -> None:
    before = plt.get_fignums()
    plot = LivePlot(display=False)
    assert plt.get_fignums() == before  # pyplot never holds it: the inline backend cannot show it twice
    plot.add(1, snapshot(1))
    plot.close()
    assert plt.get_fignums() == before


def test_rivers_progressive_validation_checkpoints(tmp_path: Path) -> None:
    plot = LivePlot(metric_names=("Accuracy", "Recall"), every=2, display=False)
    records = shuffled(load_records())[:450]
    scores = metrics.Accuracy() + metrics.Recall()
    for checkpoint in evaluate.iter_progressive_val_score(examples(records), make_model(), scores, step=100):
        plot.add(checkpoint["Step"], {name: checkpoint[name].get() for name in plot.metric_names})
    plot.close()
    assert plot.xs == [100, 200, 300, 400, 450]
    assert plot.frames == 3
    assert plot.save(tmp_path / "curve.png").read_bytes().startswith(PNG_MAGIC)


LIVE_CELL = textwrap.dedent(
    """\
    from helpers.plotting import LivePlot
    plot = LivePlot(every=10, threshold=0.6)
    for n in range(1, 26):
        plot.add(n * 100, {"accuracy": 0.7, "precision": 0.6, "recall": n / 25})
    plot.close()
    """
)


@pytest.mark.parametrize("backend", [None, "Agg"])
def test_in_a_kernel_one_image_is_updated_in_place(backend: str | None, monkeypatch, tmp_path: Path) -> None:
    """What a lesson gets: one PNG output per cell, holding the last frame, under inline or Agg."""
    if backend is None:
        monkeypatch.delenv("MPLBACKEND", raising=False)
    else:
        monkeypatch.setenv("MPLBACKEND", backend)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(LIVE_CELL),
        nbformat.v4.new_code_cell("plot.frames, plot.closed"),
        nbformat.v4.new_code_cell("plot.save('last.png'); None"),
    ]
    NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()

    outputs = notebook.cells[0].outputs
    assert [output.output_type for output in outputs] == ["display_data"]
    shown = base64.b64decode(outputs[0].data["image/png"])
    assert shown.startswith(PNG_MAGIC)
    assert shown == (tmp_path / "last.png").read_bytes()  # the final frame, not the empty first one
    assert notebook.cells[1].outputs[0].data["text/plain"] == "(3, True)"
