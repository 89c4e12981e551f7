"""Gathering the evidence of one audit into a JSON-ready record (report.json).

The HTML report is rendered from this record alone, so the JSON file and the page can never
disagree. The record's core (the suspect's identity, the settings, the overall verdict) is
built here; every other part is a registered report section (``huref.report.sections``: passive
comparisons, dog images, active FP-Vec checks, the model card's claims), which decides from the
audit's inputs whether it has anything to show.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huref import __version__
from huref.arch import Model, load_model
from huref.errors import ReportError
from huref.invariants import Fingerprint, Settings, fingerprint_model
from huref.invariants.calibration import BUILTIN_NULL, NullModel, format_log10_p, format_p
from huref.invariants.verdict import P_DERIVED, P_INDEPENDENT, VERDICT_RULE
from huref.report.sections import AuditInputs, gather_all

if TYPE_CHECKING:
    from huref.checkpoint import Checkpoint

SCHEMA_ID = "huref-report/1"


@dataclass
class Candidate:
    """A base to compare against: its name, where it came from, its fingerprint."""

    name: str
    source: str  # a path, or 'registry'
    fingerprint: Fingerprint
    model: Model | None = None


def _identity(m: Model) -> dict[str, Any]:
    files = m.ckpt.weight_files()
    sums = m.ckpt.sha256s()
    return {
        "name": m.ckpt.name,
        "path": str(m.ckpt.path),
        "format": m.ckpt.format,
        "adapter": None if m.ckpt.adapter is None else m.ckpt.adapter.to_json(),  # with its base
        "architecture": m.summary(),
        "config_strings": {k: str(v) for k, v in sorted(m.ckpt.config.items()) if isinstance(v, str)},
        "parameters": m.parameter_count(),
        "tokenizer": None
        if m.ckpt.vocab is None
        else {"size": len(m.ckpt.vocab), "style": m.ckpt.vocab.style},
        "files": [{"name": p.name, "bytes": p.stat().st_size, "sha256": sums[p.name]} for p in files],
    }


def candidate_from_path(path: str | Path, settings: Settings) -> Candidate:
    from huref.invariants.resolve import resolve_fingerprint

    r = resolve_fingerprint(path, settings)
    return Candidate(r.name, str(path), r.fingerprint, r.model)


def _greedy_fires(a: dict[str, Any]) -> bool:
    return bool(a.get("fsr", 0) >= 0.9 and a.get("near_miss_fsr", 0) == 0)


def _likelihood_p(a: dict[str, Any]) -> float:
    """The active row's likelihood-test p-value (1.0 where the test was not run)."""
    lt = a.get("likelihood")
    return float(lt["p_value"]) if lt else 1.0


def overall_verdict(passive: list[dict[str, Any]], active: list[dict[str, Any]]) -> dict[str, Any]:
    """Derived if any base is derived passively (smallest p wins) or any vector verifies (FSR >=
    0.9 with a clean near-miss control, or the likelihood rank test below the passive threshold
    P_DERIVED); independent if every base is independent and no vector shows anything (FSR 0 and
    a likelihood p-value not below P_INDEPENDENT); inconclusive otherwise."""
    derived = [p for p in passive if p.get("verdict") == "derived"]
    fired = [a for a in active if _greedy_fires(a) or _likelihood_p(a) < P_DERIVED]
    if derived or fired:
        best = (
            min(
                derived,
                key=lambda p: (
                    p["log10_p_value"] if p["log10_p_value"] is not None else 0.0,
                    -(p["ics"] or 0),
                ),
            )
            if derived
            else None
        )
        why = []
        if best:
            why.append(
                f"passive: derived from {best['base']} (robust ICS {best['ics']:.1f}, "
                f"p {format_log10_p(best['log10_p_value'])})"
                if best["log10_p_value"] is not None
                else f"passive: derived from {best['base']} (robust ICS {best['ics']:.1f})"
            )
        for a in fired:
            why.append(
                f"active: fingerprint vector {a['vector_name']} answers {a['hits']}/{a['n']} keys"
                + (f", key likelihood p {format_p(_likelihood_p(a))}" if a.get("likelihood") else "")
            )
        return {"verdict": "derived", "base": best["base"] if best else fired[0].get("base"), "because": why}
    all_independent = bool(passive) and all(p.get("verdict") == "independent" for p in passive)
    if all_independent and all(a.get("fsr", 0) == 0 and _likelihood_p(a) >= P_INDEPENDENT for a in active):
        return {
            "verdict": "independent",
            "base": None,
            "because": [f"independent of all {len(passive)} candidate base(s); no fingerprint vector fires"],
        }
    return {
        "verdict": "inconclusive",
        "base": None,
        "because": ["the evidence does not reach either threshold (see the per-base rows)"],
    }


def gather(
    suspect: str | Path | Checkpoint,
    candidates: list[Candidate],
    settings: Settings | None = None,
    null: NullModel | None = None,
    vectors: list[tuple[Path, Path]] | None = None,
    argv: list[str] | None = None,
    with_pcs: bool = True,
    with_dogs: bool = True,
) -> dict[str, Any]:
    """The whole evidence record of one audit: the core (identity, settings, verdict) and the
    value of every registered report section (``huref.report.sections``).

    ``vectors``: FP-Vec (vector file, key file) pairs, already checked to belong together."""
    settings = settings or Settings()
    started = datetime.now(timezone.utc)
    if not candidates and not vectors:
        raise ReportError("nothing to compare the suspect with: give --base, --registry or --fpvec")
    sm = load_model(suspect)
    sfp = fingerprint_model(sm, settings)
    null = null or BUILTIN_NULL
    inputs = AuditInputs(
        subject=suspect,
        suspect=sm,
        fingerprint=sfp,
        candidates=tuple(candidates),
        settings=settings,
        null=null,
        vectors=tuple(vectors or ()),
        with_pcs=with_pcs,
        with_dogs=with_dogs,
        gathered={},
    )
    values = gather_all(inputs)
    evidence, notes = values["evidence"], values["verdict"]
    # the verdict's rule reads these two sections by name; a section added later does not change it
    comparable = [p for p in evidence["passive"] if p["comparable"]]
    return {
        "schema": SCHEMA_ID,
        "huref_version": __version__,
        "created": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": list(argv if argv is not None else sys.argv),
        "settings": {
            "n": settings.n,
            "paper_n": settings.paper_n,
            "n_responses": settings.n_responses,
            "device": settings.device,
            "null": {"mean": null.mean, "std": null.std, "n_pairs": null.n_pairs, "source": null.source},
        },
        "suspect": {**_identity(sm), "n_layers": sm.cfg.n_layers},
        "verdict": {**overall_verdict(comparable, evidence["active"]), "rule": VERDICT_RULE, **notes},
        **evidence,
    }
