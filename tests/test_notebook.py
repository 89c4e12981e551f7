"""The walkthrough notebook executes from top to bottom on the tiny zoo."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]


def test_walkthrough_notebook_executes(tiny_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(REPO / "notebooks" / "walkthrough.ipynb", as_version=4)
    monkeypatch.setenv("HUREF_ZOO_CACHE", str(tiny_zoo))  # the kernel inherits the environment
    monkeypatch.setenv("HUREF_REPO", str(REPO))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    ).execute()
    outputs = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "derived" in outputs and "independent" in outputs
    assert not any(
        o.get("output_type") == "error"
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
