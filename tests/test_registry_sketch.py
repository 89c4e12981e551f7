"""Per-base sketches and indexed scans: the sketch rules bases out only where the full comparison
would not call the pair derived, and an indexed scan gives the exhaustive scan's verdicts."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from huref.invariants import Settings, compare_fingerprints, fingerprint_model
from huref.invariants.calibration import BUILTIN_NULL
from huref.registry import sketch as sk
from huref.registry import sketch_rule as rule
from huref.registry.enroll import add_base
from huref.registry.store import Store
from huref.scan import ScanConfig, run_scan

ROBUST = Settings(modes=("robust",))


def _bases(manifest: dict) -> list[str]:
    return [m["name"] for m in manifest["models"] if m["relation"] == "base"]


SKETCHED = (
    "gpt2-a",
    "llama-a",
    "llama-a-sft",
    "llama-a-attack-vocab-perm",
    "llama-a-attack-vocab-expand",
    "llama-b",
    "llama-c",
    "stories260k",
    "stories260k-cpt",
)


@pytest.fixture(scope="module")
def robust_fps(tiny_zoo: Path) -> dict[str, Any]:
    return {name: fingerprint_model(tiny_zoo / name, ROBUST) for name in SKETCHED}


@pytest.fixture(scope="module")
def sketches(robust_fps: dict[str, Any]) -> dict[str, sk.Sketch]:
    return {n: sk.compute_sketch(fp) for n, fp in robust_fps.items()}


def test_sketch_estimates_the_layer_similarities_of_the_full_comparison(
    robust_fps: dict, sketches: dict
) -> None:
    from huref.invariants.similarity import layer_similarity, shared_terms

    for a, b in (("llama-a-sft", "llama-a"), ("llama-b", "llama-c"), ("stories260k-cpt", "stories260k")):
        ta, tb, _ = shared_terms(robust_fps[a].robust, robust_fps[b].robust)
        exact = layer_similarity(ta, tb)  # [La, Lb] numpy
        est, _ = rule.estimates(sketches[a], sketches[b])
        assert abs(est - exact).max() < rule.EST_MARGIN / 1.5, (a, b)


def test_a_vocabulary_expansion_is_bounded_on_the_shared_tokens_and_unrelated_bases_are_ruled_out(
    robust_fps: dict, sketches: dict
) -> None:
    # the permutation keeps the token strings: the sketch (keyed by string) is the base's own
    perm, base = sketches["llama-a-attack-vocab-perm"], sketches["llama-a"]
    assert perm.tokens == base.tokens and abs(perm.terms - base.terms).max() < 1e-9
    # the expansion brings new strings among the probes: the bound is taken on the shared tokens,
    # it holds the exact ICS (which is computed on them), the root is kept and unrelated bases go
    exp = sketches["llama-a-attack-vocab-expand"]
    assert exp.tokens != base.tokens and len(exp.tokens & base.tokens) < len(exp.tokens)
    for other in ("llama-a", "llama-b", "llama-c", "gpt2-a"):
        ics_b, _, why = rule.bounds(exp, sketches[other])
        exact = compare_fingerprints(robust_fps["llama-a-attack-vocab-expand"], robust_fps[other]).ics
        assert ics_b is not None and ics_b >= exact, (other, ics_b, exact, why)
    assert not rule.rule_out(exp, base, BUILTIN_NULL).ruled_out
    assert rule.rule_out(exp, sketches["llama-b"], BUILTIN_NULL).ruled_out
    assert rule.rule_out(exp, sketches["gpt2-a"], BUILTIN_NULL).ruled_out


def test_the_restricted_bound_holds_the_cosine_of_the_shared_sub_matrices() -> None:
    """Random pairs of matrices whose token sets differ by a few tokens, from unrelated to nearly
    equal: the bound from the whole matrices' sketches and energy shares is at least the cosine
    the full comparison computes on the shared tokens (re-centred), and gives up (None) when most
    of a matrix lies outside them."""
    import numpy as np

    from huref.registry.sketch import _buckets, _sketch_matrix

    rng = np.random.default_rng(0)
    m, extra, k = 96, 6, sk.BUCKETS
    names = [f"tok{i}" for i in range(m + extra)]
    a_names, b_names = names[:m], names[extra:]  # 90 shared tokens
    shared = list(range(extra, m))
    worst = np.inf
    for mix in (0.0, 0.3, 0.7, 0.95, 1.0):
        for _ in range(8):
            base = rng.standard_normal((m + extra, m + extra))
            other = rng.standard_normal((m + extra, m + extra))
            a = base[:m, :m]
            b = (mix * base + (1 - mix) * other)[extra:, extra:]
            sa, ea = _sketch_matrix(a, _buckets(a_names, 1, k), k)
            sb, eb = _sketch_matrix(b, _buckets(b_names, 1, k), k)
            sa_out = ea[:extra].sum()
            sb_out = eb[m - extra :].sum()
            bound = rule.restricted_bound(np.array(sa @ sb), sa_out, sb_out, m, m, len(shared))
            assert bound is not None
            ra = a[extra:, extra:] - a[extra:, extra:].mean()
            rb = b[: m - extra, : m - extra] - b[: m - extra, : m - extra].mean()
            exact = 100 * float((ra * rb).sum() / np.linalg.norm(ra) / np.linalg.norm(rb))
            worst = min(worst, float(bound) - exact)
    assert worst > 0, worst
    # a matrix whose energy sits on the tokens the other lacks: no bound
    a = np.zeros((m, m))
    a[:extra] = rng.standard_normal((extra, m))
    _, ea = _sketch_matrix(a, _buckets(a_names, 1, k), k)
    assert rule.restricted_bound(np.array(0.0), ea[:extra].sum(), 0.0, m, m, len(shared)) is None


def test_a_pair_sharing_too_few_tokens_gets_the_error_of_the_full_comparison(
    robust_fps: dict, sketches: dict
) -> None:
    from huref.errors import FingerprintError

    k = rule.shared_too_few(sketches["gpt2-a"], sketches["stories260k"])
    assert k is not None
    with pytest.raises(FingerprintError) as e:
        compare_fingerprints(robust_fps["gpt2-a"], robust_fps["stories260k"])
    assert str(e.value) == rule.too_few_message(k)


def test_sketch_round_trips_through_bytes_and_refuses_damage(sketches: dict) -> None:
    s = sketches["llama-a"]
    data = sk.to_bytes(s)
    back = sk.from_bytes(data)
    assert back is not None and back.token_order == s.token_order and back.views == s.views
    assert back.response_order == s.response_order
    assert abs(back.terms - s.terms).max() < 1e-3  # stored as float16
    assert abs(back.energy - s.energy).max() < 1e-6 and back.energy.shape == s.energy.shape
    assert sk.from_bytes(data[:-7]) is None and sk.from_bytes(b"\x00\x01") is None


def _scan(zoo: Path, out: Path, home: Path, **kw: Any) -> Any:
    return run_scan(ScanConfig(zoo, out, home=home, progress=False, workers=2, **kw))


@pytest.fixture(scope="module")
def both_scans(
    tiny_zoo: Path, zoo_manifest: dict, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any, Any]:
    """The whole tiny zoo scanned indexed, then exhaustively with the same fingerprints (a copy of
    the registry whose comparison cache is emptied: every comparison is made afresh)."""
    root = tmp_path_factory.mktemp("sketch-scans")
    home = root / "indexed"
    with Store(home) as s:
        for name in _bases(zoo_manifest):
            add_base(s, tiny_zoo / name, name, family=name, settings=ROBUST)
    indexed = _scan(tiny_zoo, root / "i", home)
    shutil.copytree(home, root / "exhaustive")
    with Store(root / "exhaustive") as s, s.transaction():
        s.conn.execute("DELETE FROM comparisons")
    full = _scan(tiny_zoo, root / "e", root / "exhaustive", exhaustive=True)
    return home, indexed, full


def test_indexed_scan_gives_the_exhaustive_verdicts_for_every_zoo_model(
    both_scans: tuple, zoo_manifest: dict
) -> None:
    _, indexed, full = both_scans
    by_name = {m["name"]: m for m in full.models}
    assert len(indexed.models) == len(zoo_manifest["models"]) == len(by_name)
    n_bases = len(_bases(zoo_manifest))
    for m in indexed.models:
        f = by_name[m["name"]]
        assert m["verdict"] == f["verdict"], m["name"]
        if f["verdict"] != "independent":  # an independent model's nearest base may be ruled out
            assert (m["best_base"], m["ics"]) == (f["best_base"], pytest.approx(f["ics"])), m["name"]
        own = 1 if m["registered_as"] else 0
        assert m["bases_compared"] + m["bases_ruled_out"] + own == n_bases, m["name"]
        assert f["bases_ruled_out"] == 0 and f["bases_compared"] + own == n_bases


def test_every_base_the_sketch_rules_out_is_not_derived_and_every_derived_pair_is_compared(
    both_scans: tuple,
) -> None:
    _, indexed, full = both_scans
    by_name = {m["name"]: m for m in full.models}
    ruled = derived = 0
    for m in indexed.models:
        exact = {r["base"]: r for r in by_name[m["name"]]["comparisons"]}
        kept = {r["base"] for r in m["comparisons"]}
        for name, row in exact.items():
            if name not in kept:  # ruled out by the sketch: the full comparison agrees it is not derived
                ruled += 1
                assert row.get("verdict") == "independent" and row["z"] < 3, (m["name"], name, row)
            if row.get("verdict") == "derived":
                derived += 1
                assert name in kept, (m["name"], name)
    assert ruled == indexed.stats["ruled_out_by_sketch"] >= 40 and derived >= 40
    assert indexed.stats["compared_exactly"] < full.stats["compared_exactly"]


def test_a_rescan_answers_rule_outs_from_the_cache_without_reading_sketches(
    both_scans: tuple, tiny_zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, indexed, _ = both_scans
    copy = tmp_path / "home"
    shutil.copytree(home, copy)

    def forbidden(*a: Any, **k: Any) -> None:
        raise AssertionError("sketches were read for a zoo the caches answer")

    monkeypatch.setattr(Store, "base_sketches", forbidden)
    again = _scan(tiny_zoo, tmp_path / "out", copy)
    assert again.stats["from_cache"] == len(again.models)
    assert again.stats["ruled_out_by_sketch"] == indexed.stats["ruled_out_by_sketch"]
    assert [m["verdict"] for m in again.models] == [m["verdict"] for m in indexed.models]
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert doc["scan"]["indexed"] is True
    assert all("bases_compared" in m and "bases_ruled_out" in m for m in doc["models"])


def test_a_registry_from_before_sketches_gets_them_lazily(both_scans: tuple, tmp_path: Path) -> None:
    home = tmp_path / "old"
    shutil.copytree(both_scans[0], home)
    with sqlite3.connect(home / "registry.sqlite") as c:  # as a registry written before sketches
        c.execute("DROP TABLE sketches")
    with Store(home) as s:  # opens without a migration, and computes sketches on demand
        assert s.sketch_rows([b.fingerprint for b in s.bases()]) == {}
        got = s.base_sketches(s.bases())
        assert set(got) == {b.fingerprint for b in s.bases()}
        assert len(s.sketch_rows(got)) == len(got)
