"""Robust ICS >= 99.9 under every function-preserving attack, on a zoo base, on the real
stories260K import and on the zoo's MoE base (its attacks reach into the experts and the router);
and paper mode breaks exactly where the analysis says it does."""

from __future__ import annotations

import pytest

from huref.invariants import compare_fingerprints
from huref.zoo.attacks import ATTACKS, MOE_ATTACKS

BASES = ("llama-a", "stories260k")
CASES = [(b, k) for b in BASES for k in ATTACKS] + [("moe-a", k) for k in MOE_ATTACKS]

# DESIGN.md §2: rescaled norm gains, sign flips (gated M_f) and gain-folded rotations change the
# published terms; permutations, head/neuron mixing, global scaling and id changes do not. The
# composite disguise chains the breaking ones.
PAPER_BREAKS = {"norm-gain", "residual-signed-perm", "residual-rotation", "disguise"}


@pytest.mark.parametrize("base,kind", CASES, ids=[f"{b}-{k}" for b, k in CASES])
def test_robust_ics_survives_attack(base: str, kind: str, zoo_fingerprints: dict) -> None:
    if base not in zoo_fingerprints:
        pytest.skip("stories260K is not available outside this project's CI")
    c = compare_fingerprints(zoo_fingerprints[base], zoo_fingerprints[f"{base}-attack-{kind}"])
    assert c.ics is not None and c.ics >= 99.9, f"{kind}: robust ICS {c.ics:.3f}"
    assert c.verdict == "derived"
    assert c.log10_p_value is not None and c.log10_p_value < -6
    assert [a for a, b, _ in c.layer_alignment] == [b for a, b, _ in c.layer_alignment]
    if base == "moe-a":  # every expert paired with one of the original's, renumbered or not
        assert len(c.expert_matches) == 4 * len(c.layer_alignment)
        assert all(r["related"] for r in c.expert_matches), c.expert_matches


@pytest.mark.parametrize("base,kind", CASES, ids=[f"{b}-{k}" for b, k in CASES])
def test_paper_mode_breaks_where_analysis_says(base: str, kind: str, zoo_fingerprints: dict) -> None:
    if base not in zoo_fingerprints:
        pytest.skip("stories260K is not available outside this project's CI")
    c = compare_fingerprints(zoo_fingerprints[base], zoo_fingerprints[f"{base}-attack-{kind}"])
    assert c.ics_paper is not None
    if kind in PAPER_BREAKS:
        assert c.ics_paper < 90.0, f"{kind} should break paper mode, got {c.ics_paper:.2f}"
    else:
        assert c.ics_paper > 99.9, f"{kind} should not change paper mode, got {c.ics_paper:.2f}"
