"""The committed notebooks: executed top to bottom, shaped like lessons, leaking nothing.

Policy: notebooks are committed *with* their executed outputs, so the lessons read
well on the web. These checks keep those outputs honest; ``make test`` also runs
every notebook under nbval.
"""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]-*.ipynb"))
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/(root|home|tmp|work|Users|var/folders)/")
SECRET_LIKE = re.compile(r"\beyJ[\w-]{10,}\.[\w-]{10,}|\b[A-Za-z0-9]{64}\b")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_lessons_are_all_here():
    names = [path.name for path in NOTEBOOKS]
    assert [name[:2] for name in names] == [f"{i:02d}" for i in range(len(names))]
    assert len(names) >= 7
    assert all(re.fullmatch(r"\d\d-[a-z0-9]+(-[a-z0-9]+)*\.ipynb", name) for name in names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_was_executed_in_order_with_the_python3_kernel(path):
    notebook = load(path)
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    counts = [cell.get("execution_count") for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1)), "re-run the notebook top to bottom before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_hold_no_absolute_paths_or_secrets(path):
    for index, cell in enumerate(load(path)["cells"]):
        text = json.dumps(cell.get("outputs", []))
        text = re.sub(r'"image/png": "[^"]*"', "", text)
        assert not ABSOLUTE_PATH.search(text), f"cell {index} shows an absolute path"
        assert not SECRET_LIKE.search(text), f"cell {index} shows something like a token or secret"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_the_shape_of_a_lesson(path):
    cells = load(path)["cells"]
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    assert "".join(cells[0]["source"]).startswith(f"# {path.name[:2]} ·")
    for heading in ("What you'll learn", "What you'll need", "## Setup", "## Recap"):
        assert heading in markdown, f"missing {heading!r}"
    following = sorted(p.name for p in NOTEBOOKS if p.name > path.name)
    if following:
        assert f"({following[0]})" in markdown, "end with a link to the next lesson"
