"""Every notebook in notebooks/ executes top to bottom (offline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.llama
@pytest.mark.recall
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    if path.name == "explore.ipynb":
        check_explore_outputs(nb)


def check_explore_outputs(nb: Any) -> None:
    """The exploration notebook shows what it promises: plans and a conversation as HTML (one
    of them with a summary), and its plots as images."""
    html = [
        out["data"]["text/html"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "text/html" in out.get("data", {})
    ]
    assert any('class="convmem-plan"' in h and 'data-segment="summary"' in h for h in html)
    assert any('class="convmem-conversation"' in h for h in html)
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(images) >= 3  # conv.plot(), compare(), the probe plot


def test_there_is_a_notebook() -> None:
    assert NOTEBOOKS
