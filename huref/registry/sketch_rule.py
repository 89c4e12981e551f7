"""The rule: when a base's sketch may rule it out of a model's scan (``rule_out``), and the
bounds it rests on. The sketches themselves are ``huref.registry.sketch``.

**Why an estimate and not a Cauchy-Schwarz bound.** For unit vectors a, b of dimension D and an
orthonormal k-dim projection P, ``cos(a, b) <= Pa.Pb + |Ra||Rb|`` is exact, but for terms that
are not concentrated in a basis shared by all models (the invariant terms of independent models
are near-orthogonal, and no fixed small basis holds most of their energy) ``|Ra||Rb|`` is about
``1 - k/D``: the bound is close to 1 and rules nothing out. The sketch therefore estimates, and the rule below adds a margin to the
estimate that covers its error with room to spare, and a second guard for the neuron test.

**The rule** (``rule_out``): a base is ruled out for a model only when *all* of these hold;
otherwise it is compared exactly.

1. the sketch versions and the token keys agree, and no probe-token string repeats;
2. the **ICS bound** is below the ICS margin: per layer pair the estimated similarity plus
   ``EST_MARGIN`` (100 x cosine units), aligned by the same monotone alignment as ``huref
   compare``; the margin is the smaller of ``ICS_CEILING`` and the ICS at which Z reaches
   ``Z_INDEPENDENT`` (3) under the scan's null, so a ruled-out base can be neither derived nor
   inconclusive by Z. When the two probe-token *sets* differ (a vocabulary expansion whose new
   strings rank among the probes), the full comparison works on the shared tokens' sub-matrices,
   re-centred; the sketch then bounds each term's cosine there from the whole matrices' estimate
   and each token's share of the matrix energy (``restricted_bound``: cells of unshared tokens
   have signs independent of the other sketch, so the estimate sees the shared cells only; the
   re-centring shift and the shared part's norm are bounded by the energy outside), and gives up
   when either matrix keeps less than half its energy (``RESTRICT_FLOOR``) on the shared tokens;
3. the **neuron guard**: when both fingerprints hold responses of the same views on at least 8
   shared response tokens (a neuron test would run), the largest estimated response-Gram cosine
   over all layer pairs, plus ``EST_MARGIN`` (through ``restricted_bound`` when the response-token
   sets differ), is below ``RESPONSE_CEILING``. The neuron
   test's p-value has no monotone relation to the ICS, and no sketch bounds it exactly: this guard
   is the stated conservative substitute (derived pairs have response Grams far above the ceiling,
   see docs/registry-and-scans.md).

A pair whose probe tokens share fewer than 16 strings is not ruled out either: its exact
comparison is known without the base's file (``shared_too_few``), and is recorded as the error
``compare_fingerprints`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from huref.invariants.calibration import NullModel
from huref.invariants.verdict import Z_INDEPENDENT

if TYPE_CHECKING:
    import numpy as np

    from huref.registry.sketch import Sketch

EST_MARGIN = 10.0  # added to every estimated similarity (100 x cosine units): ~5 standard errors
ICS_CEILING = 30.0  # a base is never ruled out at an ICS bound of this or more
RESPONSE_CEILING = 70.0  # nor at a response-Gram bound of this or more (100 x cosine units)
MIN_SHARED_TOKENS = 16  # as huref.invariants.similarity (kept here to stay free of torch)
MIN_SHARED_RESPONSE_TOKENS = 8  # the neuron test runs on at least this many (huref.invariants.stats)
RESTRICT_FLOOR = 0.5  # a differing token set may leave out at most half of a matrix's norm^2


@dataclass(frozen=True)
class Decision:
    """What the sketch says about one (model, base) pair."""

    ruled_out: bool
    ics_bound: float | None  # None when the sketch could not bound the ICS
    response_bound: float | None
    why: str  # the first condition of the rule that failed, or 'ruled out'


def best_alignment_mean(s: np.ndarray) -> float:
    """Mean similarity of the best strictly increasing pairing of the shorter side's layers into
    the longer side's: the value ``monotone_alignment`` reaches (the same dynamic programme),
    here on bounds, so the result bounds the ICS whenever every entry bounds its layer pair."""
    m = s if s.shape[0] <= s.shape[1] else s.T
    rows, cols = m.shape
    prev = [0.0] * (cols + 1)  # best[i-1][j]
    for i in range(1, rows + 1):
        cur = [float("-inf")] * (cols + 1)
        for j in range(i, cols + 1):
            cur[j] = max(cur[j - 1], prev[j - 1] + float(m[i - 1, j - 1]))
        prev = cur
    return prev[cols] / rows


def ics_margin(null: NullModel) -> float:
    """The ICS below which a bound lets a base be ruled out: never where Z could reach 3."""
    return min(ICS_CEILING, null.mean + Z_INDEPENDENT * max(null.std, 1e-6))


def shared_too_few(model: Sketch, base: Sketch) -> int | None:
    """The number of shared probe tokens when it is below 16 (the pair is not comparable), else None."""
    if model.key_digest != base.key_digest:
        return None
    k = len(model.tokens & base.tokens)
    return k if k < MIN_SHARED_TOKENS else None


def too_few_message(k: int) -> str:
    """What ``compare_fingerprints`` says of a pair sharing ``k`` < 16 probe tokens."""
    return (
        f"the models share only {k} of their probe tokens (need {MIN_SHARED_TOKENS}); "
        "their vocabularies have too little text in common to compare"
    )


def runs_neuron_test(model: Sketch, base: Sketch) -> bool:
    """Whether the full comparison would run the neuron test: both hold responses of like views
    on at least ``MIN_SHARED_RESPONSE_TOKENS`` shared response tokens."""
    return (
        bool(model.views)
        and model.views == base.views
        and len(model.response_tokens & base.response_tokens) >= MIN_SHARED_RESPONSE_TOKENS
    )


def estimates(model: Sketch, base: Sketch) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated layer similarities [La, Lb] and response-Gram cosines [La_r, Lb_r] (x100)."""
    s = 100.0 * (model.terms[:, None] * base.terms[None, :]).sum(-1).mean(-1)
    r = None
    if len(model.responses) and len(base.responses):
        r = 100.0 * model.responses @ base.responses.T
    return s, r


def _outside(order: tuple[int, ...], energy: np.ndarray, shared: frozenset[int]) -> np.ndarray:
    """The share of each matrix's energy in cells whose row or column token is not shared (an
    upper bound: a cell of two such tokens counts twice), padded for storage rounding."""
    import numpy as np

    out = np.array([h not in shared for h in order], dtype=bool)
    return energy[..., out].sum(-1) * (1 + 1e-3)


def restricted_bound(
    est: np.ndarray, e_a: np.ndarray, e_b: np.ndarray, m_a: int, m_b: int, shared: int
) -> np.ndarray | None:
    """Bounds (x100) on the cosines the full comparison computes between two matrices restricted
    to their ``shared`` tokens and re-centred, from ``est``, the sketch estimate of the cosine of
    the whole centred matrices (m_a and m_b tokens), and the energy shares ``e_a``, ``e_b``
    outside the shared tokens (arrays broadcasting with ``est``); None when too much of either
    matrix lies outside them (``RESTRICT_FLOOR``).

    With a, b the whole centred matrices as unit vectors and S the shared cells (shared^2 of them):
    cells outside S have signs independent of every cell of the other sketch, so ``est`` estimates
    <a_S, b_S> alone; re-centring on S subtracts shared^2 mean_S(a) mean_S(b), and as a sums to 0,
    |sum_S a| = |sum_outside a| <= sqrt(n_a e_a) (Cauchy-Schwarz over the n_a = m_a^2 - shared^2
    outside cells), so the shift is at most sqrt(n_a e_a n_b e_b) / shared^2; the re-centred norm
    is at least rho_a = sqrt(1 - e_a (1 + n_a / shared^2)). The bound is
    (est + EST_MARGIN + shift) / (rho_a rho_b), or the numerator itself where it is negative."""
    import numpy as np

    n_a, n_b, s2 = m_a * m_a - shared * shared, m_b * m_b - shared * shared, float(shared * shared)
    rho2_a, rho2_b = 1 - e_a * (1 + n_a / s2), 1 - e_b * (1 + n_b / s2)
    if (rho2_a < RESTRICT_FLOOR).any() or (rho2_b < RESTRICT_FLOOR).any():
        return None
    u = est + EST_MARGIN / 100 + np.sqrt(n_a * e_a * n_b * e_b) / s2
    return 100.0 * np.where(u > 0, u / np.sqrt(rho2_a * rho2_b), u)


def _distinct(order: tuple[int, ...]) -> bool:
    return len(set(order)) == len(order)


def _restricted_ics(model: Sketch, base: Sketch) -> float | None:
    """The ICS bound of a pair whose probe-token sets differ (``restricted_bound`` per term)."""
    shared = model.tokens & base.tokens
    e_a = _outside(model.token_order, model.energy, shared)  # [La, 3]
    e_b = _outside(base.token_order, base.energy, shared)  # [Lb, 3]
    est = (model.terms[:, None] * base.terms[None, :]).sum(-1)  # [La, Lb, 3]
    b = restricted_bound(
        est, e_a[:, None], e_b[None, :], len(model.token_order), len(base.token_order), len(shared)
    )
    return None if b is None else best_alignment_mean(b.mean(-1))


def _response_bound(model: Sketch, base: Sketch) -> float | None:
    """The largest response-Gram cosine bound over layer pairs (x100), margin included."""
    if not (len(model.responses) and len(base.responses)):
        return None
    if model.response_tokens == base.response_tokens:
        _, r = estimates(model, base)
        return None if r is None else float(r.max()) + EST_MARGIN
    shared = model.response_tokens & base.response_tokens
    e_a = _outside(model.response_order, model.response_energy, shared)  # [La_r]
    e_b = _outside(base.response_order, base.response_energy, shared)
    b = restricted_bound(
        model.responses @ base.responses.T,
        e_a[:, None],
        e_b[None, :],
        len(model.response_order),
        len(base.response_order),
        len(shared),
    )
    return None if b is None else float(b.max())


def bounds(model: Sketch, base: Sketch) -> tuple[float | None, float | None, str]:
    """(ICS bound, response bound, why not) for a pair; a bound is None where the sketch cannot
    stand for the full comparison, and ``why`` then says which condition failed."""
    if model.version != base.version:
        return None, None, "sketch versions differ"
    if model.key_digest != base.key_digest:
        return None, None, "token keys differ"
    if not all(_distinct(o) for o in (model.token_order, base.token_order)):
        return None, None, "repeated probe-token strings"
    if model.tokens == base.tokens:
        s, _ = estimates(model, base)
        ics_b: float | None = best_alignment_mean(s + EST_MARGIN)
    else:
        ics_b = _restricted_ics(model, base)
        if ics_b is None:
            return None, None, "probe-token sets differ too much"
    if not runs_neuron_test(model, base):
        return ics_b, None, ""  # no neuron test would run: the verdict rests on Z alone
    if not all(_distinct(o) for o in (model.response_order, base.response_order)):
        return ics_b, None, "repeated response-token strings"
    resp_b = _response_bound(model, base)
    return ics_b, resp_b, "" if resp_b is not None else "no response bound"


def rule_out(model: Sketch, base: Sketch, null: NullModel) -> Decision:
    ics_b, resp_b, why = bounds(model, base)
    return decide(ics_b, resp_b, why, runs_neuron_test(model, base), null)


def decide(
    ics_b: float | None, resp_b: float | None, why: str, needs_response: bool, null: NullModel
) -> Decision:
    """The rule on stored bounds (a scan re-applies it with its current null)."""
    if ics_b is None:
        return Decision(False, None, None, why)
    if ics_b >= ics_margin(null):
        return Decision(False, ics_b, resp_b, f"ICS bound {ics_b:.1f} >= margin {ics_margin(null):.1f}")
    if needs_response:
        if resp_b is None:
            return Decision(False, ics_b, None, why or "no response bound")
        if resp_b >= RESPONSE_CEILING:
            return Decision(False, ics_b, resp_b, f"response bound {resp_b:.1f} >= {RESPONSE_CEILING:.0f}")
    return Decision(True, ics_b, resp_b, "ruled out")


__all__ = [
    "EST_MARGIN",
    "ICS_CEILING",
    "MIN_SHARED_RESPONSE_TOKENS",
    "MIN_SHARED_TOKENS",
    "RESPONSE_CEILING",
    "RESTRICT_FLOOR",
    "Decision",
    "best_alignment_mean",
    "bounds",
    "decide",
    "estimates",
    "ics_margin",
    "restricted_bound",
    "rule_out",
    "runs_neuron_test",
    "shared_too_few",
    "too_few_message",
]
