"""Comparing two fingerprints: robust ICS with layer alignment, paper ICS, PCS, Z, p, verdict.

Verdict rule (documented in the report's method notes):
- ``derived``      if the neuron-matching test gives p < 1e-6; when no test is possible (no
                   shared FFN responses), if Z >= 6 against the independent-pairs null;
- ``independent``  if p >= 0.01 and Z < 3 (or, without a test, Z < 3);
- ``inconclusive`` otherwise (the two lines of evidence disagree, or sit between thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref.errors import FingerprintError
from huref.invariants.fingerprint import Fingerprint
from huref.invariants.similarity import layer_similarity, monotone_alignment, paper_ics, shared_terms
from huref.invariants.statistics import Pair, compute_all
from huref.invariants.stats import (
    BUILTIN_NULL,
    NullModel,
    combine_log10,
    expert_matching,
    expert_origin,
    neuron_test,
)
from huref.invariants.verdict import P_DERIVED, VERDICT_RULE, judge

if TYPE_CHECKING:
    from huref.checkpoint import Checkpoint


@dataclass(frozen=True)
class Comparison:
    """One comparison: the core fields every consumer reads by name, and ``stats``, the values of
    the registered statistics (``huref.invariants.statistics``), flattened into the JSON."""

    a: str
    b: str
    ics: float | None
    ics_paper: float | None
    pcs: float | None
    z: float | None
    p_value: float | None
    log10_p_value: float | None
    layer_alignment: list[list[Any]]
    verdict: str
    rule: str = VERDICT_RULE
    shared_tokens: int = 0
    shared_tokens_paper: int = 0
    layer_similarity: list[list[float]] = field(default_factory=list)
    layer_tests: list[dict[str, Any]] = field(default_factory=list)
    null: dict[str, Any] = field(default_factory=dict)
    # a dense model against an MoE: each expert's neuron test against the aligned dense FFN
    expert_origin: list[dict[str, Any]] = field(default_factory=list)
    # two MoEs: each aligned sparse layer's experts paired by their neuron tests
    expert_matches: list[dict[str, Any]] = field(default_factory=list)
    stats: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        stats = doc.pop("stats")  # registered statistics sit beside the core keys, after them
        return {**doc, **stats}


def compare_fingerprints(
    fa: Fingerprint,
    fb: Fingerprint,
    null: NullModel | None = None,
    ckpt_a: Checkpoint | None = None,
    ckpt_b: Checkpoint | None = None,
) -> Comparison:
    null = null or BUILTIN_NULL
    if (fa.robust is None) != (fb.robust is None) and (fa.paper is None) != (fb.paper is None):
        raise FingerprintError("mismatched modes: one fingerprint is robust-only and the other paper-only")
    if fa.robust is None and fa.paper is None:
        raise FingerprintError(f"{fa.name}: fingerprint holds no terms")
    for fp in (fa, fb):  # files are checked when read; this guards fingerprints built in Python
        where = fp.non_finite()
        if where is not None:
            raise FingerprintError(f"{fp.name}: NaN or infinite values in the {where}")
    ics = log10_p = None
    ta = tb = s = None
    pairs: list[tuple[int, int, float]] = []
    alignment: list[list[Any]] = []
    sim: list[list[float]] = []
    tests: list[dict[str, Any]] = []
    experts: list[dict[str, Any]] = []
    matches: list[dict[str, Any]] = []
    shared = shared_p = 0
    if fa.robust is not None and fb.robust is not None:
        ta, tb, shared = shared_terms(fa.robust, fb.robust)
        s = layer_similarity(ta, tb)
        pairs = monotone_alignment(s)
        ics = sum(p[2] for p in pairs) / len(pairs)
        alignment = [[a, b, round(v, 4)] for a, b, v in pairs]
        sim = [[round(float(v), 4) for v in row] for row in s]
        # like views only: no derivation turns a gated FFN into a plain one (or back), so a
        # gated/plain pair has no neuron correspondence to test and the verdict rests on Z
        if fa.responses is not None and fb.responses is not None and fa.responses.views == fb.responses.views:
            signed_b = fa.responses.views[1] == "out"
            lt = neuron_test(fa.responses, fb.responses, [(a, b) for a, b, _ in pairs], signed_b)
            tests = [asdict(t) for t in lt]
            if lt:
                log10_p = combine_log10([t.log10_p for t in lt])
            ra, rb = fa.responses, fb.responses
            if bool(ra.groups) != bool(rb.groups):  # one side dense, the other an MoE
                dense_first = not ra.groups
                et = expert_origin(
                    ra if dense_first else rb,
                    rb if dense_first else ra,
                    [(a, b) if dense_first else (b, a) for a, b, _ in pairs],
                    signed_b,
                )
                experts = [{**asdict(t), "from_dense": t.log10_p < math.log10(P_DERIVED)} for t in et]
            elif ra.groups:  # both MoEs
                em = expert_matching(ra, rb, [(a, b) for a, b, _ in pairs], signed_b)
                matches = [{**asdict(t), "related": t.log10_p < math.log10(P_DERIVED)} for t in em]
    ics_paper = None
    if fa.paper is not None and fb.paper is not None:
        pa, pb, shared_p = shared_terms(fa.paper, fb.paper)
        ics_paper = paper_ics(pa, pb)
    pcs = None
    if ckpt_a is not None and ckpt_b is not None:
        from huref.invariants.pcs import parameter_cosine  # reads weights: torch, checkpoints only

        pcs = parameter_cosine(ckpt_a, ckpt_b)
    z, verdict = judge(ics, log10_p, null)
    p_value = None if log10_p is None else 10.0**log10_p
    pair = Pair(fa, fb, null, ta, tb, s, tuple(pairs), ics, z, log10_p, shared)
    return Comparison(
        a=fa.name,
        b=fb.name,
        ics=ics,
        ics_paper=ics_paper,
        pcs=pcs,
        z=z,
        p_value=p_value,
        log10_p_value=log10_p,
        layer_alignment=alignment,
        verdict=verdict,
        shared_tokens=shared,
        shared_tokens_paper=shared_p,
        layer_similarity=sim,
        layer_tests=tests,
        expert_origin=experts,
        expert_matches=matches,
        null={"mean": null.mean, "std": null.std, "n_pairs": null.n_pairs, "source": null.source},
        stats=compute_all(pair),
    )


def load_any(path: str | Path, settings: Any = None) -> tuple[Fingerprint, Checkpoint | None]:
    """A fingerprint from a fingerprint file, or computed from a checkpoint (returned too)."""
    from huref.invariants.resolve import resolve_fingerprint

    r = resolve_fingerprint(path, settings)
    return r.fingerprint, None if r.model is None else r.model.ckpt


def compare_paths(
    a: str | Path, b: str | Path, settings: Any = None, null: NullModel | None = None, with_pcs: bool = True
) -> Comparison:
    fa, ca = load_any(a, settings)
    fb, cb = load_any(b, settings)
    return compare_fingerprints(fa, fb, null, ca if with_pcs else None, cb if with_pcs else None)


def expert_summary(rows: list[dict[str, Any]]) -> str:
    """'layer 0: 0, 1, 2, 3 of 4; layer 1: none of 4' from a comparison's expert_origin rows."""
    by_layer: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_layer.setdefault(int(r["layer_sparse"]), []).append(r)
    parts = []
    for layer, rs in sorted(by_layer.items()):
        hit = [str(r["expert"]) for r in rs if r["from_dense"]]
        parts.append(f"layer {layer}: {', '.join(hit) if hit else 'none'} of {len(rs)}")
    return "; ".join(parts)


def match_summary(rows: list[dict[str, Any]]) -> str:
    """'layer 0->0: 0->1, 1->0, 2->3, 3->2 (4 of 4 p < 1e-6); ...' from expert_matches rows."""
    by_pair: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_pair.setdefault((int(r["layer_a"]), int(r["layer_b"])), []).append(r)
    parts = []
    for (la, lb), rs in sorted(by_pair.items()):
        pairs = ", ".join(f"{r['expert_a']}->{r['expert_b']}" for r in rs)
        parts.append(f"layer {la}->{lb}: {pairs} ({sum(r['related'] for r in rs)} of {len(rs)} p < 1e-6)")
    return "; ".join(parts)
