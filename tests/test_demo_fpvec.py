"""The demo's FP-Vec step: train's defaults first; a refusal by the end check does not stop the demo,
which trains again unchecked and says so in its step line."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import huref.fpvec
from huref import demo
from huref.errors import FPVecError


class _Verified:
    fsr = 1.0
    likelihood = None


def _chain(monkeypatch: pytest.MonkeyPatch, refuse: bool) -> list[Any]:
    """Replace train (refusing its checked run when ``refuse``), extract, stamp and verify; return
    the configurations train was called with."""
    calls: list[Any] = []

    def train(base: Path, keys: Any, out: Path, cfg: Any = None) -> Any:
        calls.append(cfg)
        if refuse and (cfg is None or cfg.until_fires):
            raise FPVecError("the fingerprint did not take: 10 of 10 keys and 2 of 40 near-miss controls")
        out.mkdir(parents=True)
        return type("Report", (), {"steps": 300 if cfg is not None else 450})()

    monkeypatch.setattr(huref.fpvec, "train_fingerprint", train)
    monkeypatch.setattr(huref.fpvec, "extract_vector", lambda *a, **k: None)
    monkeypatch.setattr(huref.fpvec, "stamp_model", lambda *a, **k: None)
    monkeypatch.setattr(huref.fpvec, "verify_model", lambda *a, **k: _Verified())
    return calls


@pytest.mark.parametrize("refuse", [False, True])
def test_a_refused_fingerprint_is_trained_again_unchecked_and_said(
    refuse: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _chain(monkeypatch, refuse)
    text = io.StringIO()
    steps = demo._Steps(Console(file=text, markup=False, width=400))
    stamped, vectors = demo._fpvec_step(tmp_path, tmp_path / "zoo", steps)
    assert stamped == tmp_path / "suspects" / demo.STAMPED
    assert [v.name for pair in vectors for v in pair] == [f"{demo.FP_BASE}.fpvec.safetensors", "keys.json"]
    line = steps.steps[-1][0]
    if refuse:
        assert calls[0] is None and calls[1].until_fires is False and len(calls) == 2
        assert "300 steps, end check off: it refused the checked run" in line
        assert "did not take" in text.getvalue() and "training again without the end check" in text.getvalue()
    else:
        assert calls == [None]  # train's defaults, the end check included
        assert "450 steps, end check passed" in line
