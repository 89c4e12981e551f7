"""Evaluation harness: every (base, candidate) pair of a zoo manifest, and of
../shared/lineage_pairs.csv for the pairs whose models exist locally.

Prints one row per pair (relation, paper ICS, robust ICS, PCS, Z, p, verdict, correct) and then
AUC and TPR at 1% FPR for paper mode and robust mode side by side.

    python bench/lineage.py --zoo .zoo/tiny [--pairs ../shared/lineage_pairs.csv --models-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.errors import HurefError  # noqa: E402
from huref.invariants import Settings, compare_fingerprints, fingerprint_model  # noqa: E402
from huref.invariants.separation import auc, margin, tpr_at_fpr, zoo_pairs  # noqa: E402
from huref.invariants.stats import null_from_values  # noqa: E402
from huref.zoo.build import build_zoo, default_stories, load_manifest  # noqa: E402


def resolve_local(model_id: str, models_dir: Path | None) -> Path | None:
    """A local copy of a hub model: DIR/org/name, DIR/org--name, or the Hugging Face cache."""
    cands = []
    if models_dir:
        cands += [models_dir / model_id, models_dir / model_id.replace("/", "--")]
    hub = (
        Path.home()
        / ".cache"
        / "huggingface"
        / "hub"
        / ("models--" + model_id.replace("/", "--"))
        / "snapshots"
    )
    if hub.is_dir():
        cands += sorted(hub.iterdir())
    for c in cands:
        if c.is_dir() and (c / "config.json").is_file():
            return c
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "tiny")
    ap.add_argument("--pairs", type=Path, default=REPO.parent / "shared" / "lineage_pairs.csv")
    ap.add_argument("--models-dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=512)
    args = ap.parse_args()

    t0 = time.time()
    zoo = build_zoo(args.zoo, "tiny", stories=default_stories())
    manifest = load_manifest(zoo)
    settings = Settings(n=args.n)
    fps = {m["name"]: fingerprint_model(zoo / m["path"], settings) for m in manifest["models"]}
    rows = [(a, b, rel, y, fps[a], fps[b]) for a, b, rel, y in zoo_pairs(manifest)]

    skipped = 0
    if args.pairs.is_file():
        with open(args.pairs, newline="") as f:
            for r in csv.DictReader(f):
                pa, pb = (
                    resolve_local(r["model_a"], args.models_dir),
                    resolve_local(r["model_b"], args.models_dir),
                )
                if pa is None or pb is None:
                    skipped += 1
                    continue
                try:
                    fa, fb = fingerprint_model(pa, settings), fingerprint_model(pb, settings)
                except HurefError as e:
                    print(f"skip {r['model_a']} / {r['model_b']}: {e}")
                    continue
                rows.append((r["model_a"], r["model_b"], r["relation"], r["label"] == "derived", fa, fb))

    # Z against the null measured on this harness's own independent base pairs
    base_names = [m["name"] for m in manifest["models"] if m["relation"] == "base"]
    null_vals = []
    for a, b in itertools.combinations(base_names, 2):
        with contextlib.suppress(HurefError):
            null_vals.append(compare_fingerprints(fps[a], fps[b]).ics)
    null = null_from_values(null_vals, f"harness independent base pairs (n={len(null_vals)})")

    header = f"{'a':22s} {'b':40s} {'relation':26s} {'paper':>7s} {'robust':>7s} {'PCS':>7s} {'Z':>6s} {'log10p':>8s} {'verdict':13s} ok"
    print(header)
    print("-" * len(header))
    scores: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("paper", "robust", "robust_p")
    }
    correct = total = incomparable = 0
    from huref.arch import load_model
    from huref.invariants.pcs import parameter_cosine

    for a, b, rel, y, fa, fb in rows:
        try:
            c = compare_fingerprints(fa, fb, null)
        except HurefError:
            incomparable += 1
            continue
        pcs = None
        try:
            pcs = (
                parameter_cosine(load_model(zoo / a).ckpt, load_model(zoo / b).ckpt)
                if (zoo / a).is_dir()
                else None
            )
        except HurefError:
            pcs = None
        want = "derived" if y else "independent"
        ok = c.verdict == want
        correct += ok
        total += 1
        f = lambda v, w=7, d=1: ("n/a" if v is None else f"{v:.{d}f}").rjust(w)  # noqa: E731
        print(
            f"{a:22s} {b:40s} {rel:26s} {f(c.ics_paper)} {f(c.ics)} {f(pcs)} {f(c.z, 6)} {f(c.log10_p_value, 8)} {c.verdict:13s} {'yes' if ok else 'NO'}"
        )
        for key, v in (("paper", c.ics_paper), ("robust", c.ics), ("robust_p", -(c.log10_p_value or 0.0))):
            if v is not None:
                scores[key][0 if y else 1].append(v)
    print()
    print(
        f"pairs: {total} compared ({sum(1 for r in rows if r[3])} derived by ground truth), {incomparable} "
        f"incomparable (no shared vocabulary), {skipped} lineage_pairs.csv pairs skipped (models not local)"
    )
    print(
        f"verdict accuracy: {correct}/{total} = {correct / max(total, 1):.3f}   (Z null: {null.source}, "
        f"mean {null.mean:.2f}, std {null.std:.2f})"
    )
    print()
    print(f"{'score':34s} {'AUC':>7s} {'TPR@1%FPR':>10s} {'margin':>8s}")
    labels = {
        "paper": "paper mode ICS (published method)",
        "robust": "robust mode ICS",
        "robust_p": "robust mode -log10 p (neuron test)",
    }
    for key, (pos, neg) in scores.items():
        print(f"{labels[key]:34s} {auc(pos, neg):7.3f} {tpr_at_fpr(pos, neg):10.3f} {margin(pos, neg):8.2f}")
    print(
        "margin: (smallest derived score - largest independent score) / sd of the independent scores;"
        " above 0 the two sets are separated, and the larger the safer"
    )
    print(f"\n({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
