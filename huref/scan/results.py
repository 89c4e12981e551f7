"""From cached comparisons to the scan's verdicts: one entry per model, and results.json.

Per model and base, Z comes from the registry's current null and the verdict from
``huref.invariants.verdict.judge`` (the rule of ``huref compare``). The model's reported
base is the best-matching comparable one: the strongest verdict (derived > inconclusive >
independent), then the highest robust ICS. Its verdict is the verdict against that base, so a
model is ``derived`` as soon as one registered base says so.

Decisions worth knowing:
- **No comparable base** (every base shares fewer than 16 probe token strings with the model):
  verdict ``independent``, ``best_base`` null, and a ``note`` saying so. The invariants compare
  what layers do to shared tokens; a model that shares no vocabulary with any registered base
  cannot have been fine-tuned, pruned, merged or disguised from one of them short of replacing its
  whole vocabulary, which the method cannot see (the note says that too).
- **A registered base found in the zoo** (same name as a registered base *and* identical weight
  files) is that base: it is reported with ``registered_as`` and compared with the other bases
  only, so a zoo that holds its own bases does not flag each as derived from itself. A copy under
  another name is not excused: it is ``derived`` with ICS 100.
- **Names and paths are shown escaped** (``huref.paths.shown``): a zoo folder's name need not be
  UTF-8, and results.json and index.html are UTF-8 text.
- results.json carries ``"schema": "huref-scan/1"`` and index.html a generator tag: the marks
  by which a later scan knows the files it may replace (``huref.scan.outdir``).
- **Indexed scans** (``huref.scan.index``): a base the sketch rules out has no row in
  ``comparisons``; ``bases_compared`` counts the bases compared exactly (their rows) and
  ``bases_ruled_out`` those ruled out. A model whose every comparable base was ruled out is
  ``independent``, with a note saying so.
- ``report_path`` is ``reports/<name>.html`` (relative to the output folder) when that file exists
  at render time, else null; ``huref audit`` fills that folder, and ``write_outputs`` re-renders.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huref.checkpoint.card import read_claims, weigh_claims
from huref.invariants.calibration import NullModel
from huref.invariants.statistics import scan_values
from huref.invariants.verdict import VERDICT_RULE, judge
from huref.paths import shown
from huref.registry.store import Base
from huref.scan.cache import Cmp
from huref.scan.discover import Candidate
from huref.scan.outdir import INDEX_NAME, RESULTS_NAME, SCHEMA

VERDICTS = ("derived", "independent", "inconclusive")
_RANK = {"derived": 2, "inconclusive": 1, "independent": 0}
RULED_OUT_NOTE = (
    "the sketch ruled out every comparable base ({n}): robust ICS bound below the margin, and no "
    "neuron correspondence possible (huref.registry.sketch; 'huref scan --exhaustive' compares all)"
)
REQUIRED_FIELDS = ("name", "path", "best_base", "ics", "z", "p_value", "verdict", "error")
NO_BASE_NOTE = (
    "comparable to none of the {n} registered bases (no shared probe tokens): it cannot derive from "
    "any of them unless its whole vocabulary was replaced, which the invariants cannot see"
)


@dataclass
class ModelResult:
    """What the scan knows about one candidate at the end."""

    candidate: Candidate
    error: str | None = None
    fingerprint: str | None = None
    format: str | None = None
    weights: str | None = None
    comparisons: dict[str, Cmp] | None = None  # base fingerprint hash -> comparison
    fpvec: list[dict[str, Any]] | None = None
    ruled_out: dict[str, float] | None = None  # base fingerprint hash -> ICS bound (indexed scans)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _self_note(name: str) -> str:
    return f"this is the registered base {name!r} (same name, identical weights)"


def report_relpath(name: str) -> str:
    """Where ``huref audit`` puts a model's report, relative to the scan's output folder."""
    return f"reports/{name}.html"


def _comparison_row(base: str, cmp: Any, null: NullModel) -> dict[str, Any]:
    """One base's row of a model's results: the comparison's figures and the verdict of
    ``huref compare``'s rule, or the reason there is none."""
    if cmp is None:  # cannot happen after a completed scan; guarded so a report never lies
        return {"base": base, "error": "not compared"}
    if cmp.error is not None or cmp.ics is None:
        return {"base": base, "error": cmp.error or "no robust ICS"}
    z, verdict = judge(cmp.ics, cmp.log10_p, null)  # the rule of huref compare
    return {
        "base": base,
        "ics": _finite(cmp.ics),
        "z": _finite(z),
        "log10_p_value": _finite(cmp.log10_p),
        "p_value": None if cmp.log10_p is None else 10.0**cmp.log10_p,
        "verdict": verdict,
        "shared_tokens": cmp.shared_tokens,
        **scan_values((cmp.detail or {}).get("stats")),  # registered statistics kept by the scan
    }


def _no_verdict_note(ruled_out: int, registered_as: str | None, n_rows: int) -> str:
    """Why a model with no usable comparison is called independent."""
    if ruled_out:
        return RULED_OUT_NOTE.format(n=ruled_out)
    if not registered_as:
        return NO_BASE_NOTE.format(n=n_rows)
    if not n_rows:
        return f"{_self_note(registered_as)}; no other base is registered to compare it with"
    return f"{_self_note(registered_as)}; " + NO_BASE_NOTE.format(n=f"{n_rows} other")


def model_entry(
    r: ModelResult, bases: Sequence[Base], null: NullModel, out_dir: Path | None = None
) -> dict[str, Any]:
    c = r.candidate
    e: dict[str, Any] = {
        "name": c.name,  # already shown escaped (discover)
        "path": shown(c.path),
        "best_base": None,
        "ics": None,
        "z": None,
        "p_value": None,
        "verdict": None,
        "error": r.error,
        "log10_p_value": None,
        "format": r.format,
        "fingerprint": r.fingerprint,
        "registered_as": None,
        "note": None,
        "comparisons": [],
        "report_path": None,
        "claim": None,  # the model card's claimed base against the comparisons (huref.checkpoint.card)
        "bases_compared": 0,  # bases compared exactly (indexed scans: huref.scan.index)
        "bases_ruled_out": 0,  # bases the sketch ruled out
        **scan_values(None),  # registered statistics kept by the scan: the best base's, else null
    }
    if r.fpvec is not None:
        e["fpvec"] = r.fpvec
    if out_dir is not None and (out_dir / report_relpath(c.name)).is_file():
        e["report_path"] = report_relpath(c.name)
    if r.error is not None or r.comparisons is None:
        return e
    rows: list[dict[str, Any]] = []
    ruled = r.ruled_out or {}
    ruled_rows: list[dict[str, Any]] = []
    for b in bases:
        if b.name == c.name and b.weights and b.weights == r.weights:
            e["registered_as"] = b.name
            continue
        cmp = r.comparisons.get(b.fingerprint)
        if cmp is None and b.fingerprint in ruled:  # the sketch rules it out (huref.scan.index)
            e["bases_ruled_out"] += 1
            # the scan counts a ruled-out base as independent (its verdict below); so does the claim
            ruled_rows.append({"base": b.name, "verdict": "independent", "ruled_out_by_sketch": True})
            continue
        rows.append(_comparison_row(b.name, cmp, null))
    e["comparisons"] = rows
    e["claim"] = weigh_claims(read_claims(c.path), rows + ruled_rows)
    e["bases_compared"] = sum(1 for x in rows if x.get("error") != "not compared")
    usable = [x for x in rows if "verdict" in x]
    if not usable:
        e["verdict"] = "independent"
        e["note"] = _no_verdict_note(e["bases_ruled_out"], e["registered_as"], len(rows))
        return e
    best = max(usable, key=lambda x: (_RANK[x["verdict"]], x["ics"]))
    e.update(
        best_base=best["base"],
        ics=best["ics"],
        z=best["z"],
        p_value=best["p_value"],
        log10_p_value=best["log10_p_value"],
        verdict=best["verdict"],
        **{k: best[k] for k in scan_values(None)},  # the best base's registered statistics
    )
    if e["registered_as"]:
        e["note"] = f"{_self_note(e['registered_as'])}; compared with the others"
    return e


def results_doc(
    entries: list[dict[str, Any]],
    bases: Sequence[Base],
    null: NullModel,
    zoo: Path,
    home: Path,
    settings: dict[str, Any],
    scan: dict[str, Any],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "zoo": shown(zoo),
        "registry": shown(home),
        "bases": [{"name": b.name, "family": b.family, "fingerprint": b.fingerprint} for b in bases],
        "null": {"mean": null.mean, "std": null.std, "n_pairs": null.n_pairs, "source": null.source},
        "verdict_rule": VERDICT_RULE,
        "settings": settings,
        "scan": scan,
        "models": entries,
    }


def write_outputs(out_dir: Path, doc: dict[str, Any], thumbnails: dict[str, str] | None = None) -> None:
    """results.json then index.html, each written to a temporary name and renamed into place.

    Callable again later (e.g. by ``huref audit`` once it has written ``reports/``): report links
    are refreshed from the files present.
    """
    from huref.checkpoint.atomic import atomic_file
    from huref.scan.html import render_index

    out_dir.mkdir(parents=True, exist_ok=True)
    for m in doc["models"]:
        m["report_path"] = (
            report_relpath(m["name"]) if (out_dir / report_relpath(m["name"])).is_file() else None
        )
    with atomic_file(out_dir / RESULTS_NAME) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    html = render_index(doc, thumbnails)
    with atomic_file(out_dir / INDEX_NAME) as tmp:
        tmp.write_text(html, encoding="utf-8")
