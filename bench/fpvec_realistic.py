"""FP-Vec's acceptance table: fingerprint a base over several key seeds, stamp its derivatives,
verify every model.

    python bench/fpvec_realistic.py [--zoo .zoo/realistic] [--bases llama-a gpt2-a stories260k]
        [--seeds 5] [--work .bench/fpvec-realistic] [--json OUT]

For every base and key seed: ``make-keys``, ``train`` (its defaults), ``extract``, then ``stamp``
into each derivative of the base that the zoo holds (SFT, CPT, LoRA, merge, vocabulary expansion)
and greedy verification (FSR on the keys, FSR on the near-miss controls) of the fingerprinted
base, every stamped derivative, every unstamped derivative and an independent base. Also tau's
size relative to the base's weights and the perplexity change stamping costs each derivative (on
the root base's held-out data: huref.fpvec.harm).

Printed per base: one row per model, with FSR minimum and median over the seeds, the largest
near-miss FSR and the largest perplexity change. Run it on ``--zoo .zoo/realistic`` (derivatives
calibrated to real pairs: the acceptance table) and on ``--zoo .zoo/tiny`` (the stress
derivatives: the same table, reported beside it). Work is cached under ``--work`` per zoo, base
and seed, so a rerun only redoes what is missing. Each row also gives the smallest dog cosine to the
base (``huref.dogs``, the shipped encoder): seeds cached before it was measured get it by stamping
their kept vector again (into the base itself for the fingerprinted row: base + tau).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from huref.cli import main as cli  # noqa: E402
from huref.fpvec import perplexity_change, verify_model  # noqa: E402
from huref.zoo.build import load_manifest  # noqa: E402
from huref.zoo.derive import relative_change  # noqa: E402

# an independent base per base, the first of these the zoo holds (the tiny zoo has no gpt2-b)
INDEPENDENT = {
    "llama-a": ("llama-b",),
    "gpt2-a": ("gpt2-b", "llama-b"),
    "stories260k": ("stories260k-indep",),
}


def independent(zoo: Path, base: str) -> Path:
    return next(zoo / n for n in INDEPENDENT[base] if (zoo / n).is_dir())


STAMPED = ("sft", "cpt", "lora", "merge-linear", "vocab-expand")


def _run(argv: list[Any]) -> None:
    rc = cli([str(a) for a in argv])
    if rc != 0:
        raise SystemExit(f"huref {' '.join(map(str, argv))}: exit {rc}")


def _derivatives(zoo: Path, base: str) -> list[str]:
    models = {e["name"]: e for e in load_manifest(zoo)["models"]}
    return [f"{base}-{r}" for r in STAMPED if f"{base}-{r}" in models]


@functools.cache
def _base_dog(base: Path) -> Any:
    from huref.dogs import dog_vector, fingerprint_of

    return dog_vector(fingerprint_of(base))


def dog_cosine(base: Path, model: Path) -> float:
    """Cosine of the two models' dog vectors (the shipped encoder)."""
    import numpy as np

    from huref.dogs import dog_vector, fingerprint_of

    a, b = _base_dog(base), dog_vector(fingerprint_of(model))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def fill_dogs(zoo: Path, base: str, d: Path, fig: dict[str, Any]) -> dict[str, Any]:
    """Dog cosines for a seed cached without them: its kept vector stamped again into the base (the
    fingerprinted model, up to rounding) and into each derivative; unstamped models as they are."""
    if "refused" in fig or all("dog_cos" in r for r in fig["models"].values()):
        return fig
    vec, root = d / "tau.safetensors", zoo / base
    for kind, row in fig["models"].items():
        if kind == "independent":
            row["dog_cos"] = dog_cosine(root, independent(zoo, base))
        elif kind.startswith("unstamped "):
            row["dog_cos"] = dog_cosine(root, zoo / f"{base}-{kind.split(' ', 1)[1]}")
        else:
            target = root if kind == "fingerprinted" else zoo / f"{base}-{kind.split(' ', 1)[1]}"
            out = d / "dog-stamped"
            shutil.rmtree(out, ignore_errors=True)
            _run(["fpvec", "stamp", target, vec, "-o", out])
            row["dog_cos"] = dog_cosine(root, out)
            shutil.rmtree(out)
    (d / "figures.json").write_text(json.dumps(fig, indent=2) + "\n")
    return fig


def one_seed(zoo: Path, base: str, seed: int, work: Path) -> dict[str, Any]:
    d = work / f"{base}-seed{seed}"
    done = d / "figures.json"
    if done.is_file():
        return fill_dogs(zoo, base, d, json.loads(done.read_text()))
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    keys, fp, vec = d / "keys.json", d / "fp", d / "tau.safetensors"
    make = ["fpvec", "make-keys", "-o", keys, "--seed", seed]
    if base.startswith("stories"):
        make += ["--vocab", zoo / base]
    _run(make)
    t0 = time.time()
    try:
        _run(["fpvec", "train", zoo / base, "--keys", keys, "-o", fp, "--device", "cpu"])
    except SystemExit as e:  # train refuses a fingerprint that does not pass its check: a result too
        fig = {"train_seconds": round(time.time() - t0, 1), "refused": str(e), "models": {}}
        done.write_text(json.dumps(fig, indent=2) + "\n")
        return fig
    card = json.loads((fp / "huref_fpvec.json").read_text())
    fig: dict[str, Any] = {
        "train_seconds": round(time.time() - t0, 1),
        "steps": card["training"]["steps"],
        "tau_relative": relative_change(zoo / base, fp),
        "fp_harm": (card["training"].get("harm") or {}).get("relative_change"),
        "models": {},
    }
    _run(["fpvec", "extract", zoo / base, fp, "-o", vec])

    def verify(kind: str, path: Path, harm_against: Path | None = None) -> None:
        r = verify_model(path, keys, device="cpu")
        row = {"fsr": r.fsr, "near_miss": r.near_miss.fsr if r.near_miss else None}
        row["p"] = r.likelihood.p_value if r.likelihood else None
        if harm_against is not None:
            row["ppl_change"] = perplexity_change(harm_against, path, device="cpu").relative_change
        row["dog_cos"] = dog_cosine(zoo / base, path)
        fig["models"][kind] = row

    verify("fingerprinted", fp, harm_against=zoo / base)
    verify("independent", independent(zoo, base))
    for name in _derivatives(zoo, base):
        rel = name[len(base) + 1 :]
        out = d / f"{name}-stamped"
        _run(["fpvec", "stamp", zoo / name, vec, "-o", out])
        verify(f"stamped {rel}", out, harm_against=zoo / name)
        verify(f"unstamped {rel}", zoo / name)
        shutil.rmtree(out)
    shutil.rmtree(fp)
    done.write_text(json.dumps(fig, indent=2) + "\n")
    return fig


def table(base: str, all_figs: list[dict[str, Any]]) -> list[str]:
    figs = [f for f in all_figs if "refused" not in f]
    refused = len(all_figs) - len(figs)
    head = f"{base}: {len(all_figs)} key seeds, {refused} refused by train's check"
    if not figs:
        return [head]
    taus = [f["tau_relative"] for f in figs]
    lines = [
        f"{head}; tau / ||theta_base|| {min(taus):.3f}-{max(taus):.3f}; steps "
        f"{min(f['steps'] for f in figs)}-{max(f['steps'] for f in figs)}; "
        f"train {median(f['train_seconds'] for f in figs):.0f} s (median)",
        f"  {'model':<24} {'FSR min':>8} {'median':>7} {'near-miss max':>14} {'ppl change max':>15} "
        f"{'dog cos min':>12}",
    ]
    for kind in figs[0]["models"]:
        rows = [f["models"][kind] for f in figs if kind in f["models"]]
        fsr = [r["fsr"] for r in rows]
        nm = [r["near_miss"] for r in rows if r["near_miss"] is not None]
        ppl = [r["ppl_change"] for r in rows if "ppl_change" in r]
        dogs = [r["dog_cos"] for r in rows if "dog_cos" in r]
        lines.append(
            f"  {kind:<24} {min(fsr):>8.2f} {median(fsr):>7.2f} {max(nm) if nm else float('nan'):>14.2f} "
            + (f"{100 * max(ppl):>+14.2f}%" if ppl else f"{'':>15}")
            + (f" {min(dogs):>12.3f}" if dogs else "")
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=REPO / ".zoo" / "realistic")
    ap.add_argument("--bases", nargs="+", default=["llama-a", "gpt2-a", "stories260k"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    manifest = load_manifest(a.zoo)
    work = a.work or REPO / ".bench" / f"fpvec-{manifest['preset']}"
    print(f"zoo {a.zoo} (preset {manifest['preset']}, regime {manifest.get('regime', 'stress')})")
    out: dict[str, Any] = {}
    for base in a.bases:
        figs = [one_seed(a.zoo, base, s, work) for s in range(1, a.seeds + 1)]
        out[base] = figs
        print("\n".join(table(base, figs)), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
