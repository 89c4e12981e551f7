"""Similarity of invariant terms on shared tokens, per layer, with a monotone layer alignment."""

from __future__ import annotations

import torch

from huref.errors import FingerprintError
from huref.invariants.fingerprint import ModeTerms

MIN_SHARED_TOKENS = 16


def shared_index(a: list[str], b: list[str]) -> tuple[list[int], list[int]]:
    """Positions of the token strings both lists hold, in the order of ``a``."""
    where_b = {s: i for i, s in enumerate(b)}
    ia, ib = [], []
    for i, s in enumerate(a):
        j = where_b.get(s)
        if j is not None:
            ia.append(i)
            ib.append(j)
    return ia, ib


def restrict(mt: ModeTerms, idx: list[int]) -> torch.Tensor:
    """[L, 3, m, m] float64 sub-matrices on the given token positions, each re-standardised.

    Re-standardising a sub-matrix of a standardised matrix equals standardising the raw
    sub-matrix (standardisation is affine), so stored fingerprints lose nothing by this.
    """
    # float64 from here on: the cosines below sum millions of products, and float32 loses ~1e-4
    sub = mt.terms.to(torch.float64)
    if idx != list(range(sub.shape[-1])):  # skip the gather when every token is shared, in order
        ix = torch.tensor(idx, dtype=torch.long)
        sub = sub.index_select(2, ix).index_select(3, ix)  # [L, 3, m, m]
    flat = sub.flatten(2)
    flat = flat - flat.mean(-1, keepdim=True)
    sd = flat.norm(dim=-1, keepdim=True) / max(flat.shape[-1] - 1, 1) ** 0.5
    flat = flat / torch.where(sd > 0, sd, torch.ones_like(sd))
    return flat.reshape(sub.shape)


def shared_terms(a: ModeTerms, b: ModeTerms) -> tuple[torch.Tensor, torch.Tensor, int]:
    if a.key_digest != b.key_digest:
        raise FingerprintError(
            "the two fingerprints chose tokens with different keys; recompute one with the other's key"
        )
    ia, ib = shared_index(a.token_strings, b.token_strings)
    if len(ia) < MIN_SHARED_TOKENS:
        raise FingerprintError(
            f"the models share only {len(ia)} of their probe tokens (need {MIN_SHARED_TOKENS}); "
            "their vocabularies have too little text in common to compare"
        )
    return restrict(a, ia), restrict(b, ib), len(ia)


def layer_similarity(ta: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
    """S[i, j] = 100 x mean over the three terms of cosine(layer i of A, layer j of B). [La, Lb]

    Reductions run in float64: sums over millions of entries lose ~1e-4 in float32, which would
    blur the difference between 99.9 and 100.
    """
    La, Lb, T = ta.shape[0], tb.shape[0], ta.shape[1]
    s = torch.zeros(La, Lb, dtype=torch.float64)
    for t in range(T):
        fa = ta[:, t].flatten(1)  # [La, m*m]
        fb = tb[:, t].flatten(1)
        s += (fa @ fb.t()) / (fa.norm(dim=1)[:, None] * fb.norm(dim=1)[None, :]).clamp_min(1e-300)
    return (100.0 * s / T).to(torch.float32)


def monotone_alignment(s: torch.Tensor) -> list[tuple[int, int, float]]:
    """Best strictly increasing pairing of the shorter side's layers into the longer side's.

    A depth-pruned or layer-dropped model keeps a subsequence of its parent's layers in order,
    so the pairing is a subsequence alignment: maximise the summed similarity, by dynamic
    programming in O(La * Lb). Returned as (layer_a, layer_b, similarity).
    """
    if not bool(torch.isfinite(s).all()):
        # a NaN never wins the comparison below, so the trace-back would walk off the matrix
        raise FingerprintError("the layer similarities hold NaN or infinite values: no layer alignment")
    flip = s.shape[0] > s.shape[1]
    m = s.t() if flip else s  # rows: shorter side
    R, C = m.shape
    neg = float("-inf")
    best = torch.full((R + 1, C + 1), neg, dtype=torch.float64)
    best[0, :] = 0.0
    take = torch.zeros(R + 1, C + 1, dtype=torch.bool)
    mv = m.to(torch.float64)
    for i in range(1, R + 1):
        for j in range(i, C + 1):
            skip = best[i, j - 1]
            use = best[i - 1, j - 1] + mv[i - 1, j - 1]
            if use >= skip:
                best[i, j], take[i, j] = use, True
            else:
                best[i, j] = skip
    pairs = []
    i, j = R, C
    while i > 0:
        if take[i, j]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        else:
            j -= 1
    pairs.reverse()
    out = []
    for r, c in pairs:
        a, b = (c, r) if flip else (r, c)
        out.append((a, b, float(s[a, b])))
    return out


def paper_ics(ta: torch.Tensor, tb: torch.Tensor) -> float:
    """Cosine of the two flattened, per-matrix standardised [2, 3, n, n] stacks, x100."""
    la, lb = ta[-2:], tb[-2:]
    if la.shape[0] != lb.shape[0]:
        k = min(la.shape[0], lb.shape[0])
        la, lb = la[-k:], lb[-k:]
    fa, fb = la.flatten(), lb.flatten()
    return float(100.0 * torch.dot(fa, fb) / (fa.norm() * fb.norm()).clamp_min(1e-300))
