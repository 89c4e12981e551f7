"""Similarity of invariant terms on shared tokens, per layer, with a monotone layer alignment.

numpy only: two fingerprints (read from files or just extracted) are compared without torch."""

from __future__ import annotations

import numpy as np

from huref.errors import FingerprintError
from huref.invariants.fingerprint import ModeTerms, as_numpy

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


def restrict(mt: ModeTerms, idx: list[int]) -> np.ndarray:
    """[L, 3, m, m] float64 sub-matrices on the given token positions, each re-standardised.

    Re-standardising a sub-matrix of a standardised matrix equals standardising the raw
    sub-matrix (standardisation is affine), so stored fingerprints lose nothing by this.
    """
    # float64 from here on: the cosines below sum millions of products, and float32 loses ~1e-4
    sub = as_numpy(mt.terms).astype(np.float64)
    if idx != list(range(sub.shape[-1])):  # skip the gather when every token is shared, in order
        ix = np.asarray(idx, dtype=np.int64)
        sub = sub[:, :, ix][:, :, :, ix]  # [L, 3, m, m]
    flat = sub.reshape(*sub.shape[:2], -1)  # [L, 3, m*m]
    flat = flat - flat.mean(-1, keepdims=True)
    sd = np.linalg.norm(flat, axis=-1, keepdims=True) / max(flat.shape[-1] - 1, 1) ** 0.5
    flat = flat / np.where(sd > 0, sd, 1.0)
    return flat.reshape(sub.shape)


def shared_terms(a: ModeTerms, b: ModeTerms) -> tuple[np.ndarray, np.ndarray, int]:
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


def layer_similarity(ta: np.ndarray, tb: np.ndarray) -> np.ndarray:
    """S[i, j] = 100 x mean over the three terms of cosine(layer i of A, layer j of B). [La, Lb]

    Reductions run in float64: sums over millions of entries lose ~1e-4 in float32, which would
    blur the difference between 99.9 and 100. The result is float32.
    """
    La, Lb, T = ta.shape[0], tb.shape[0], ta.shape[1]
    s = np.zeros((La, Lb), dtype=np.float64)
    for t in range(T):
        fa = ta[:, t].reshape(La, -1)  # [La, m*m]
        fb = tb[:, t].reshape(Lb, -1)
        norms = np.linalg.norm(fa, axis=1)[:, None] * np.linalg.norm(fb, axis=1)[None, :]
        s += (fa @ fb.T) / np.maximum(norms, 1e-300)
    return (100.0 * s / T).astype(np.float32)


def monotone_alignment(s: object) -> list[tuple[int, int, float]]:
    """Best strictly increasing pairing of the shorter side's layers into the longer side's.

    A depth-pruned or layer-dropped model keeps a subsequence of its parent's layers in order,
    so the pairing is a subsequence alignment: maximise the summed similarity, by dynamic
    programming in O(La * Lb). ``s`` is [La, Lb] (any array numpy reads). Returned as
    (layer_a, layer_b, similarity).
    """
    sim = as_numpy(s)
    if not bool(np.isfinite(sim).all()):
        # a NaN never wins the comparison below, so the trace-back would walk off the matrix
        raise FingerprintError("the layer similarities hold NaN or infinite values: no layer alignment")
    flip = sim.shape[0] > sim.shape[1]
    mv = (sim.T if flip else sim).astype(np.float64).tolist()  # rows: shorter side
    R, C = len(mv), sim.shape[0] if flip else sim.shape[1]
    neg = float("-inf")
    best = [[0.0] * (C + 1)] + [[neg] * (C + 1) for _ in range(R)]
    take = [[False] * (C + 1) for _ in range(R + 1)]
    for i in range(1, R + 1):
        for j in range(i, C + 1):
            skip = best[i][j - 1]
            use = best[i - 1][j - 1] + mv[i - 1][j - 1]
            if use >= skip:
                best[i][j], take[i][j] = use, True
            else:
                best[i][j] = skip
    pairs = []
    i, j = R, C
    while i > 0:
        if take[i][j]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        else:
            j -= 1
    pairs.reverse()
    out = []
    for r, c in pairs:
        a, b = (c, r) if flip else (r, c)
        out.append((a, b, float(sim[a, b])))
    return out


def paper_ics(ta: np.ndarray, tb: np.ndarray) -> float:
    """Cosine of the two flattened, per-matrix standardised [2, 3, n, n] stacks, x100."""
    la, lb = ta[-2:], tb[-2:]
    if la.shape[0] != lb.shape[0]:
        k = min(la.shape[0], lb.shape[0])
        la, lb = la[-k:], lb[-k:]
    fa, fb = la.ravel(), lb.ravel()
    return float(100.0 * np.dot(fa, fb) / max(float(np.linalg.norm(fa) * np.linalg.norm(fb)), 1e-300))
