"""Harmlessness without a download: perplexity on held-out text before and after stamping.

The text is the held-out slice of the local corpus (``huref.zoo.corpus``: the Python standard
library's own sources, a slice no zoo model was trained on), tokenised by each model's own
tokenizer, in consecutive windows no longer than the model's context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from huref.fpvec import data as D
from huref.fpvec.train import SMALL_MODEL, cpu_threads, load_causal_lm, resolve_device
from huref.fpvec.vector import open_checkpoint_or_fail
from huref.zoo.corpus import corpus_text
from huref.zoo.train import perplexity

DEFAULT_CHARS = 200_000
DEFAULT_WINDOWS = 64


@dataclass
class HarmReport:
    before: float
    after: float
    relative_change: float  # after / before - 1
    windows: int
    seq: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def heldout_perplexity(
    model: str | Path,
    max_chars: int = DEFAULT_CHARS,
    seq: int = 128,
    max_windows: int = DEFAULT_WINDOWS,
    device: str = "auto",
) -> tuple[float, int, int]:
    """(perplexity, windows, window length) of a model on the held-out text."""
    path = Path(model)
    ckpt = open_checkpoint_or_fail(path, "model")
    tok = D.load_tokenizer(path)
    ctx = int(ckpt.config.get("max_position_embeddings") or ckpt.config.get("n_positions") or seq)
    seq = max(8, min(seq, ctx))
    ids = tok(corpus_text("heldout", max_chars), add_special_tokens=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    dev = resolve_device(device)
    n_params = sum(ckpt.source.info(n).numel for n in ckpt.source.names())
    with cpu_threads(1 if dev.type == "cpu" and n_params < SMALL_MODEL else None):
        lm = load_causal_lm(path, dev)
        windows = min(max_windows, (stream.numel() - 1) // seq)
        return perplexity(lm, stream.to(dev), seq=seq, max_windows=max_windows), windows, seq


def perplexity_change(before: str | Path, after: str | Path, **kw: Any) -> HarmReport:
    p0, w, s = heldout_perplexity(before, **kw)
    p1, _, _ = heldout_perplexity(after, **kw)
    return HarmReport(p0, p1, p1 / p0 - 1.0, w, s)
