"""How well a score separates derived pairs from independent ones: AUC, TPR at a fixed FPR, margin.

Used by ``bench/lineage.py`` (paper mode and robust mode side by side) and by the tests that hold
robust mode to beating paper mode on the tiny zoo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if not pos or not neg:
        return float("nan")
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((p > n).mean() + 0.5 * (p == n).mean())


def tpr_at_fpr(pos: Sequence[float], neg: Sequence[float], fpr: float = 0.01) -> float:
    """Fraction of positives strictly above the score that at most ``fpr`` of negatives exceed."""
    if not pos or not neg:
        return float("nan")
    neg_sorted = np.sort(np.asarray(neg))[::-1]
    allowed = math.floor(fpr * len(neg_sorted))
    thresh = neg_sorted[allowed] if allowed < len(neg_sorted) else -np.inf
    return float((np.asarray(pos) > thresh).mean())


def margin(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Gap between the weakest derived pair and the strongest independent one, in null sds; +-inf
    when the independent scores do not spread at all (every neuron-test p at 1, say)."""
    if not pos or len(neg) < 2:
        return float("nan")
    gap, sd = min(pos) - max(neg), float(np.std(neg, ddof=1))
    if sd < 1e-9:
        return math.copysign(math.inf, gap) if gap else 0.0
    return float(gap / sd)


def zoo_pairs(manifest: dict) -> list[tuple[str, str, str, bool]]:
    """(a, b, relation, derived?) of a zoo manifest: each derivative with its root; each base with
    every model of another root (independent by construction)."""
    models = manifest["models"]
    pairs = [(m["root"], m["name"], m["relation"], True) for m in models if m["root"] != m["name"]]
    bases = [m["name"] for m in models if m["relation"] == "base"]
    for b in bases:
        for m in models:
            if m["root"] != b and ((m["relation"] == "base" and m["name"] > b) or m["relation"] != "base"):
                pairs.append((b, m["name"], "independent", False))
    return pairs
