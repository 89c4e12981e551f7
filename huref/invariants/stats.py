"""Calibrated statistics: a neuron-matching independence test with an exact null, and Z-scores.

The test (in the spirit of Zhu et al., ICML 2025): FFN neurons of model A are matched to neurons
of model B twice, from two different views of the same neurons (gate and up responses of a
gated FFN; input responses and write-outs of a plain one), each time by a linear assignment on
the correlations of the responses over shared probe tokens. Neuron responses to the same token
rows are invariant to every residual-stream disguise, and a neuron permutation moves both views
together. **Null hypothesis**: the models were trained independently, so the second matching is a
uniformly random injection independent of the first; the number of neurons on which the two
matchings agree then has the fixed-point distribution computed exactly below. Layers are combined
with Fisher's method (independent layers under the null). p-values are kept as log10.

Within one model a neuron's two views are correlated (gate and up rows read similar features),
which makes the two matchings agree beyond chance even for independent models: on the tiny zoo's
independent pairs the per-layer agreement counts were over-dispersed against the exact null (3.1%
of layers below p = 0.01). The second view is therefore residualised against the first, per
neuron and within each model, before matching; that removes the shared linear component and
brings the counts back to the null (see docs/method.md, "The p-value and its calibration").

Models trained independently on the same data also share some neurons outright (convergent
learning): two GPT-2-style bases trained 3000 steps from different seeds on one corpus agree on 6-11
of 256 neurons per layer (2.3-4.3%), which the injection null alone puts at p = 1e-17 over four
layers. The null therefore allows a share ``CONVERGENT_SHARE`` of the matched neurons to agree by
convergence: of k agreements, floor(share * m) are granted, and the rest are tested as fixed points
of a random injection of the remaining neurons (``log10_agreement_p``). Derivation keeps far more:
the least-preserved derived layers in the zoos agree on 16-19% (stress CPT of a GPT-2 base),
most derived pairs on 100%.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from huref.invariants.calibration import (  # re-exported: torch-free, in their own module
    BUILTIN_NULL,
    LN10,
    NullModel,
    combine_log10,
    format_log10_p,
    format_p,
    null_from_values,
)
from huref.invariants.fingerprint import Array, Responses, as_numpy
from huref.invariants.similarity import shared_index

MAX_NEURONS = 512  # neurons of the smaller side matched per layer (bounds the assignment cost)
# share of matched neurons that independently trained models may agree on by convergent learning:
# twice the largest share on the pair it was chosen from (4.3%: realistic gpt2-a/gpt2-b); the five
# other GPT-2 pairs of one corpus, held out, reach 5.1%
CONVERGENT_SHARE = 0.08


def _lf(x: int) -> float:
    return math.lgamma(x + 1)


def log10_agreement_tail(k: int, m: int, n: int) -> float:
    """log10 P(K >= k): K = #{i : pi(i) = sigma(i)} for a fixed injection pi: [m] -> [n] and a
    uniformly random injection sigma (m <= n). Exact, by inclusion-exclusion:

        P(K >= k) = sum_{s>=k} (-1)^(s-k) C(s-1, k-1) S_s,   S_s = C(m, s) (n-s)! / n!

    The terms fall off like lambda^s / s! (lambda = m/n <= 1), so the series is summed after
    factoring out S_k, which keeps everything finite in log space for any k.
    """
    if k <= 0:
        return 0.0
    if k > m:
        return float("-inf")

    def log_s(s: int) -> float:
        return _lf(m) - _lf(s) - _lf(m - s) + _lf(n - s) - _lf(n)

    base = log_s(k)
    total = 0.0
    for s in range(k, m + 1):
        term = math.exp(math.lgamma(s) - math.lgamma(k) - math.lgamma(s - k + 1) + log_s(s) - base)
        total += term if (s - k) % 2 == 0 else -term
        if term < 1e-17 * max(abs(total), 1e-300) and s > k + 3:
            break
    return min(0.0, (base + math.log(max(total, 1e-300))) / LN10)


def convergent_allowance(m: int) -> int:
    """Agreements among m matched neurons that the null grants to convergent learning."""
    return math.floor(CONVERGENT_SHARE * m)


def log10_agreement_p(k: int, m: int, n: int) -> float:
    """log10 p of k agreements among m neurons matched into n under the null of independent
    training: ``convergent_allowance(m)`` of them may be shared features, the others fixed points
    of a random injection of the remaining m - j neurons into n - j (conservative: the bound holds
    whichever neurons converged)."""
    j = convergent_allowance(m)
    return log10_agreement_tail(k - j, m - j, n - j)


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of columns of a [n, fa] with columns of b [n, fb] -> [fa, fb]."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    a = (a - a.mean(0)) / np.maximum(a.std(0, ddof=1), 1e-12)
    b = (b - b.mean(0)) / np.maximum(b.std(0, ddof=1), 1e-12)
    return (a.T @ b) / (a.shape[0] - 1)


def residualise(first: Array, second: Array) -> np.ndarray:
    """second - beta * first per column (neuron), beta by least squares over the token rows."""
    a = as_numpy(first).astype(np.float64)
    b = as_numpy(second).astype(np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    beta = (a * b).sum(0) / np.maximum((a * a).sum(0), 1e-12)
    return b - beta * a


def _match(c: np.ndarray) -> np.ndarray:
    """pi[i] = column matched to row i by a maximum-weight assignment (rows <= columns)."""
    # imported here: scipy.optimize costs 0.7 s to import, which every CLI command that merely
    # loads cached results (a repeated ``huref scan``) would otherwise pay
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(c, maximize=True)
    out = np.empty(c.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


@dataclass(frozen=True)
class LayerTest:
    layer_a: int
    layer_b: int
    neurons: int  # m: neurons matched (smaller side, capped)
    candidates: int  # n: neurons on the larger side
    agreements: int
    log10_p: float


def _two_view_test(
    a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray, signed_b: bool
) -> tuple[int, int, int, float]:
    """(m, n, agreements, log10 p) of matching the smaller neuron set into the larger in each
    view separately: a neuron whose two matchings agree counts once."""
    if a1.shape[1] > b1.shape[1]:  # match the smaller neuron set into the larger
        a1, a2, b1, b2 = b1, b2, a1, a2
    a1, a2 = a1[:, :MAX_NEURONS], a2[:, :MAX_NEURONS]
    a2, b2 = residualise(a1, a2), residualise(b1, b2)
    c1 = _corr(a1, b1)  # first view is sign-sensitive (gate / input response)
    c2 = _corr(a2, b2)
    if not signed_b:
        c2 = np.abs(c2)  # the up branch can be negated together with the down row
    p1, p2 = _match(c1), _match(c2)
    k = int((p1 == p2).sum())
    m, n = c1.shape
    return m, n, k, log10_agreement_p(k, m, n)


Views = tuple[np.ndarray, np.ndarray]  # a layer's two neuron views on the shared tokens


def _aligned_views(
    ra: Responses, rb: Responses, pairs: list[tuple[int, int]]
) -> Iterator[tuple[int, int, Views, Views]]:
    """(layer of A, layer of B, A's two views, B's two views) on the probe tokens both hold, for
    each aligned pair present in both response sets; nothing when fewer than 8 tokens are shared."""
    ia, ib = shared_index(ra.token_strings, rb.token_strings)
    if len(ia) < 8:
        return
    ta, tb = np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)
    pos_a = {ly: i for i, ly in enumerate(ra.layers)}
    pos_b = {ly: i for i, ly in enumerate(rb.layers)}
    for la, lb in pairs:
        if la in pos_a and lb in pos_b:
            a, b = pos_a[la], pos_b[lb]
            yield (
                la,
                lb,
                (as_numpy(ra.a[a])[ta], as_numpy(ra.b[a])[ta]),  # [m_tokens, f]
                (as_numpy(rb.a[b])[tb], as_numpy(rb.b[b])[tb]),
            )


def neuron_test(
    ra: Responses, rb: Responses, pairs: list[tuple[int, int]], signed_b: bool
) -> list[LayerTest]:
    """One test per aligned layer pair present in both response sets."""
    out = []
    for la, lb, (a1, a2), (b1, b2) in _aligned_views(ra, rb, pairs):
        m, n, k, log10_p = _two_view_test(a1, a2, b1, b2, signed_b)
        out.append(LayerTest(la, lb, m, n, k, log10_p))
    return out


@dataclass(frozen=True)
class ExpertTest:
    """One expert of a sparse layer tested against the aligned dense layer's FFN neurons."""

    layer_dense: int
    layer_sparse: int
    expert: str  # "0", "1", ... or "shared"
    neurons: int
    agreements: int
    log10_p: float


def expert_origin(
    dense: Responses, sparse: Responses, pairs: list[tuple[int, int]], signed_b: bool
) -> list[ExpertTest]:
    """Which experts of an MoE came from a dense model's FFN: for each aligned (dense layer,
    sparse layer) pair, the neuron-matching test between the dense FFN and each expert alone. An
    expert upcycled from that FFN (a copy, then trained) matches it far beyond chance; an expert
    trained from scratch does not. ``pairs`` are (dense layer, sparse layer)."""
    out = []
    for ld, ls, (d1, d2), (s1, s2) in _aligned_views(dense, sparse, pairs):
        if ld in dense.groups or ls not in sparse.groups:
            continue
        for label, cols in _column_groups(sparse.groups[ls]):
            m, _, k, log10_p = _two_view_test(d1, d2, s1[:, cols], s2[:, cols], signed_b)
            out.append(ExpertTest(ld, ls, label, m, k, log10_p))
    return out


@dataclass(frozen=True)
class ExpertMatch:
    """An expert of model A's sparse layer matched to one of model B's."""

    layer_a: int
    layer_b: int
    expert_a: str
    expert_b: str
    neurons: int
    agreements: int
    log10_p: float


def _column_groups(groups: list[tuple[str, int]]) -> list[tuple[str, slice]]:
    out, start = [], 0
    for label, width in groups:
        out.append((label, slice(start, start + width)))
        start += width
    return out


def expert_matching(
    ra: Responses, rb: Responses, pairs: list[tuple[int, int]], signed_b: bool
) -> list[ExpertMatch]:
    """Experts of two MoEs matched per aligned sparse layer pair: every expert of A is tested
    against every expert of B with the neuron-matching test, and a linear assignment on the
    tests' log10 p picks the pairing (experts are interchangeable by construction: an adversary
    renumbers them with the router's rows, and this recovers the numbering)."""
    out = []
    for la, lb, (a1, a2), (b1, b2) in _aligned_views(ra, rb, pairs):
        if la not in ra.groups or lb not in rb.groups:
            continue
        ga, gb = _column_groups(ra.groups[la]), _column_groups(rb.groups[lb])
        tests = [
            [_two_view_test(a1[:, sa], a2[:, sa], b1[:, sb], b2[:, sb], signed_b) for _, sb in gb]
            for _, sa in ga
        ]
        score = np.array([[t[3] for t in row] for row in tests])
        rows, cols = _assign(score)
        for i, j in zip(rows, cols, strict=True):
            m, _, k, log10_p = tests[i][j]
            out.append(ExpertMatch(la, lb, ga[i][0], gb[j][0], m, k, log10_p))
    return out


def _assign(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the pairing with the smallest total (log10 p: the strongest evidence)."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(score)


__all__ = [
    "BUILTIN_NULL",
    "CONVERGENT_SHARE",
    "ExpertMatch",
    "ExpertTest",
    "LayerTest",
    "NullModel",
    "combine_log10",
    "convergent_allowance",
    "expert_matching",
    "expert_origin",
    "format_log10_p",
    "format_p",
    "log10_agreement_p",
    "log10_agreement_tail",
    "neuron_test",
    "null_from_values",
    "residualise",
]
