"""Verdicts on the tiny zoo, calibration of the p-values, and layer alignment of pruned models."""

from __future__ import annotations

import itertools
import math

import pytest

from huref.errors import FingerprintError
from huref.invariants import compare_fingerprints


def _derivatives(manifest: dict) -> list[dict]:
    return [m for m in manifest["models"] if m["root"] != m["name"]]


def test_every_derivative_is_derived_with_tiny_p(zoo_manifest: dict, zoo_fingerprints: dict) -> None:
    rows = []
    for m in _derivatives(zoo_manifest):
        c = compare_fingerprints(zoo_fingerprints[m["root"]], zoo_fingerprints[m["name"]])
        rows.append((m["name"], c.verdict, c.log10_p_value, c.ics))
        assert c.verdict == "derived", (
            f"{m['name']}: {c.verdict} (ICS {c.ics:.1f}, log10 p {c.log10_p_value})"
        )
        assert c.log10_p_value is not None and c.log10_p_value < -6
    assert len(rows) >= 30


def test_independent_bases_are_independent(zoo_manifest: dict, zoo_fingerprints: dict) -> None:
    bases = [m["name"] for m in zoo_manifest["models"] if m["relation"] == "base"]
    checked = 0
    for a, b in itertools.combinations(bases, 2):
        try:
            c = compare_fingerprints(zoo_fingerprints[a], zoo_fingerprints[b])
        except FingerprintError as e:  # no shared vocabulary: not comparable, and said so
            assert "share only" in str(e)
            continue
        checked += 1
        assert c.verdict == "independent", (
            f"{a} vs {b}: {c.verdict} (ICS {c.ics:.1f}, p 1e{c.log10_p_value:.2f})"
        )
        # a gated/plain pair has no neuron test (p is None); every other pair must stay above 0.01
        assert c.log10_p_value is None or c.log10_p_value >= -2.0, f"{a} vs {b}: p below 0.01"
    assert checked >= 10


def test_depth_pruned_alignment_recovers_kept_layers(zoo_manifest: dict, zoo_fingerprints: dict) -> None:
    m = next(x for x in zoo_manifest["models"] if x["relation"] == "prune-depth")
    c = compare_fingerprints(zoo_fingerprints["llama-a"], zoo_fingerprints[m["name"]])
    kept = m["notes"]["kept_layers"]
    assert [a for a, _, _ in c.layer_alignment] == kept
    assert [b for _, b, _ in c.layer_alignment] == list(range(len(kept)))


def test_compare_is_symmetric_in_verdict_and_alignment(zoo_fingerprints: dict) -> None:
    ab = compare_fingerprints(zoo_fingerprints["llama-a"], zoo_fingerprints["llama-a-prune-depth"])
    ba = compare_fingerprints(zoo_fingerprints["llama-a-prune-depth"], zoo_fingerprints["llama-a"])
    assert ab.verdict == ba.verdict
    assert [(a, b) for a, b, _ in ab.layer_alignment] == [(b, a) for a, b, _ in ba.layer_alignment]
    assert math.isclose(ab.ics, ba.ics, rel_tol=1e-6)


@pytest.mark.parametrize("pair", [("llama-a", "llama-b"), ("llama-a", "llama-c"), ("gpt2-a", "neox-a")])
def test_independent_p_values_are_not_small_per_layer(pair: tuple[str, str], zoo_fingerprints: dict) -> None:
    """The null's per-layer agreement counts stay near their expectation (about one neuron)."""
    c = compare_fingerprints(zoo_fingerprints[pair[0]], zoo_fingerprints[pair[1]])
    assert c.layer_tests
    for t in c.layer_tests:
        assert t["agreements"] <= 6, t


@pytest.mark.parametrize("other", ["gpt2-a", "neox-a", "gpt2-a-cpt"])
def test_gated_and_plain_ffn_pairs_get_no_neuron_test(other: str, zoo_fingerprints: dict) -> None:
    """Gate/up views and input/write-out views are different things: no test, the verdict rests on Z."""
    c = compare_fingerprints(zoo_fingerprints["llama-a"], zoo_fingerprints[other])
    assert c.layer_tests == [] and c.log10_p_value is None
    assert c.z is not None and c.verdict == "independent"


def test_robust_mode_beats_paper_mode_on_the_zoo_harness(zoo_manifest: dict, zoo_fingerprints: dict) -> None:
    """bench/lineage.py's separation figures, on the zoo pairs: the disguised derivatives (fine-tune,
    then function-preserving disguise) fall among the independent pairs in paper mode only."""
    from huref.invariants.separation import auc, tpr_at_fpr, zoo_pairs

    if "stories260k" not in zoo_fingerprints:  # its disguised SFT and CPT are the pairs paper mode loses
        pytest.skip("stories260K is not available outside this project's CI")
    scores: dict[str, tuple[list[float], list[float]]] = {"paper": ([], []), "robust": ([], [])}
    for a, b, _, derived in zoo_pairs(zoo_manifest):
        try:
            c = compare_fingerprints(zoo_fingerprints[a], zoo_fingerprints[b])
        except FingerprintError:
            continue
        assert c.ics is not None and c.ics_paper is not None
        scores["paper"][0 if derived else 1].append(c.ics_paper)
        scores["robust"][0 if derived else 1].append(c.ics)
    pos, neg = scores["robust"]
    assert len(pos) >= 36 and len(neg) >= 100
    assert auc(pos, neg) == 1.0 and tpr_at_fpr(pos, neg) == 1.0
    assert auc(*scores["paper"]) < 1.0 and tpr_at_fpr(*scores["paper"]) < 1.0


def test_separation_scores_on_known_sets() -> None:
    from huref.invariants.separation import auc, margin, tpr_at_fpr

    assert auc([3, 4], [1, 2]) == 1.0 and auc([1], [1]) == 0.5 and auc([0], [1, 2]) == 0.0
    neg = list(range(100))  # at 1% FPR one negative (99) may score above the threshold (98)
    assert tpr_at_fpr([98.5, 99.5, 50], neg) == 2 / 3
    assert margin([10, 12], [0, 2]) == pytest.approx(8 / 2**0.5)
    assert margin([10, 12], [0, 0, 0]) == float("inf") and margin([0], [0, 0]) == 0.0
