"""Summary statistics of canonical stacks: what the synthetic generator is calibrated to match.

Each statistic is computed per channel (a [GRID, GRID] matrix) over its unmasked cells:
- ``kurtosis``: fourth standardised moment of the cell values (3 for a Gaussian);
- ``top1``: share of the squared Frobenius norm in the largest singular value (low-rank structure);
- ``erank``: entropy effective rank exp(H(sigma^2 / sum sigma^2));
- ``diag``: mean of the diagonal cells (they hold the a = b token pairs);
- ``sym``: correlation of the matrix with its transpose;
and per stack: ``slot_corr`` (correlation of slot 0 and slot 1 of the same term, i.e. between
shallow and deep layers) and ``term_corr`` (correlation between the three terms of one slot).
For pairs, ``pair_cosine`` is the cosine of two flattened stacks.
"""

from __future__ import annotations

import numpy as np
import torch

from huref.encoder.canonical import DEPTH_SLOTS, N_TERMS

CHANNEL_STATS = ("kurtosis", "top1", "erank", "diag", "sym")
STACK_STATS = ("slot_corr", "term_corr")


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten() - a.mean()
    b = b.flatten() - b.mean()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else 0.0


def channel_statistics(m: torch.Tensor) -> dict[str, float]:
    """Statistics of one standardised [S, S] channel."""
    m = m.to(torch.float64)
    v = m.flatten()
    v = v - v.mean()
    sd = float(v.pow(2).mean().sqrt())
    kurt = float(v.pow(4).mean()) / sd**4 if sd > 0 else 0.0
    s2 = torch.linalg.svdvals(m).pow(2)
    e = s2 / s2.sum().clamp(min=1e-30)
    ent = float(-(e * torch.log(e.clamp(min=1e-30))).sum())
    return {
        "kurtosis": kurt,
        "top1": float(e[0]),
        "erank": float(np.exp(ent)),
        "diag": float(m.diagonal().mean()),
        "sym": _corr(m, m.t()),
    }


def stack_statistics(stack: torch.Tensor | np.ndarray) -> dict[str, list[float]]:
    """Per-channel statistics (lists of CHANNELS values) and the cross-channel correlations."""
    stack = torch.as_tensor(stack)  # canonical.py gives numpy, synthetic.py torch
    out: dict[str, list[float]] = {k: [] for k in CHANNEL_STATS + STACK_STATS}
    for ch in stack:
        for k, v in channel_statistics(ch).items():
            out[k].append(v)
    grid = stack.reshape(DEPTH_SLOTS, N_TERMS, *stack.shape[-2:])
    for t in range(N_TERMS):
        for slot in range(1, DEPTH_SLOTS):
            out["slot_corr"].append(_corr(grid[0, t], grid[slot, t]))
    for slot in range(DEPTH_SLOTS):
        for i in range(N_TERMS):
            for j in range(i + 1, N_TERMS):
                out["term_corr"].append(_corr(grid[slot, i], grid[slot, j]))
    return out


def pair_cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Cosine of two flattened canonical stacks (both are zero-mean per channel)."""
    x, y = (torch.as_tensor(v).flatten().double() for v in (a, b))
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


def pooled(stats: list[dict[str, list[float]]]) -> dict[str, np.ndarray]:
    """Every statistic's values pooled over many stacks."""
    keys = [k for k in (stats[0] if stats else {}) if any(s[k] for s in stats)]  # slot_corr needs 2 slots
    return {k: np.concatenate([np.asarray(s[k], dtype=np.float64) for s in stats]) for k in keys}
