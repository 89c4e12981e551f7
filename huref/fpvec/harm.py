"""Harmlessness without a download: perplexity on held-out text before and after stamping.

The text is the held-out slice of the local corpus (``huref.lm.corpus``: the Python standard
library's own sources, a slice no zoo model was trained on), tokenised by each model's own
tokenizer, in consecutive windows no longer than the model's context.

A tokenizer that cannot spell that text (more than 5% of it ``<unk>``, e.g. a word-level
vocabulary imported without its original tokenizer) would measure the perplexity of a stream of
``<unk>``. Then the text is a fixed sample the *first* model writes itself (seeded, from random
ordinary first tokens), and both models are scored on those same token ids: the change is the
extra cross-entropy the second model pays on what the first one says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from huref.device import resolve_device
from huref.errors import FPVecError
from huref.fpvec import data as D
from huref.fpvec.vector import open_checkpoint_or_fail
from huref.lm.corpus import corpus_text
from huref.lm.load import cpu_threads, load_causal_lm, threads_for
from huref.lm.train import perplexity
from huref.paths import shown

DEFAULT_CHARS = 200_000
DEFAULT_WINDOWS = 64
MAX_UNKNOWN = 0.05  # share of <unk> ids above which a tokenizer cannot spell the held-out text
SAMPLE_SEED = 20240
CORPUS = "held-out corpus"
SAMPLES = "samples of the first model"


@dataclass
class HarmReport:
    before: float
    after: float
    relative_change: float  # after / before - 1
    windows: int
    seq: int
    text: str = CORPUS  # or SAMPLES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def corpus_ids(tok: Any, max_chars: int = DEFAULT_CHARS) -> torch.Tensor | None:
    """The held-out text in ``tok``'s ids; None when the tokenizer cannot spell it."""
    ids = tok(corpus_text("heldout", max_chars), add_special_tokens=False)["input_ids"]
    stream = torch.tensor(ids, dtype=torch.long)
    unk = D.unknown_id(tok)
    if stream.numel() == 0 or (unk is not None and float((stream == unk).float().mean()) > MAX_UNKNOWN):
        return None
    return stream


class _Model:
    """A model folder opened for scoring: its checkpoint, window length and thread setting."""

    def __init__(self, path: str | Path, seq: int, device: str) -> None:
        self.path = Path(path)
        ckpt = open_checkpoint_or_fail(self.path, "model")
        ctx = ckpt.config.get("max_position_embeddings") or ckpt.config.get("n_positions") or seq
        if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:  # 1e400, NaN, "2k", true
            raise FPVecError(
                f"{shown(self.path)}: config.json context length {shown(repr(ctx))} is not a positive integer"
            )
        self.seq = max(8, min(seq, ctx))
        self.dev = resolve_device(device)
        n_params = sum(ckpt.source.info(n).numel for n in ckpt.source.names())
        self.threads = threads_for(n_params, self.dev)

    def lm(self) -> Any:
        return load_causal_lm(self.path, self.dev, error=FPVecError)


def heldout_perplexity(
    model: str | Path,
    max_chars: int = DEFAULT_CHARS,
    seq: int = 128,
    max_windows: int = DEFAULT_WINDOWS,
    device: str = "auto",
    stream: torch.Tensor | None = None,
) -> tuple[float, int, int]:
    """(perplexity, windows, window length) of a model on the held-out text, or on ``stream``
    (token ids) when given."""
    m = _Model(model, seq, device)
    if stream is None:
        stream = corpus_ids(D.load_tokenizer(m.path), max_chars)
        if stream is None:
            raise FPVecError(
                f"{m.path}: its tokenizer cannot spell the held-out text (over {MAX_UNKNOWN:.0%} <unk>); "
                "perplexity_change scores such a model on another model's samples"
            )
    with cpu_threads(m.threads):
        return _score(m, m.lm(), stream, max_windows)


def _score(m: _Model, lm: Any, stream: torch.Tensor, max_windows: int) -> tuple[float, int, int]:
    windows = min(max_windows, (stream.numel() - 1) // m.seq)
    return perplexity(lm, stream.to(m.dev), seq=m.seq, max_windows=max_windows), windows, m.seq


def perplexity_change(
    before: str | Path,
    after: str | Path,
    max_chars: int = DEFAULT_CHARS,
    seq: int = 128,
    max_windows: int = DEFAULT_WINDOWS,
    device: str = "auto",
) -> HarmReport:
    """Perplexity of ``after`` relative to ``before`` on the held-out text, or, where ``before``'s
    tokenizer cannot spell it, on samples ``before`` writes itself (the same ids for both)."""
    tok = D.load_tokenizer(Path(before))
    ids = corpus_ids(tok, max_chars)
    if ids is not None:  # each model reads the text with its own tokenizer; before's ids are at hand
        p0, w, s = heldout_perplexity(before, max_chars, seq, max_windows, device, stream=ids)
        p1, _, _ = heldout_perplexity(after, max_chars, seq, max_windows, device)
        return HarmReport(p0, p1, p1 / p0 - 1.0, w, s, CORPUS)
    if tok.get_vocab() != D.load_tokenizer(Path(after)).get_vocab():
        raise FPVecError(
            f"{before} and {after} have different tokenizers: scored on the first model's samples "
            "(its tokenizer cannot spell the held-out text), both must read the same token ids"
        )
    m = _Model(before, seq, device)
    with cpu_threads(m.threads):  # one load of the first model writes the samples and scores them
        lm = m.lm()
        samples = D.self_samples(lm, tok, max_windows, m.seq - 1, SAMPLE_SEED).reshape(-1)
        p0, w, s = _score(m, lm, samples, max_windows)
        del lm
    p1, _, _ = heldout_perplexity(after, max_chars, seq, max_windows, device, stream=samples)
    return HarmReport(p0, p1, p1 / p0 - 1.0, w, s, SAMPLES)
