"""Dog encoder on real models: derived near their base, independents apart (plus data statistics).

    python bench/encoder_eval.py                    # zoo table (builds/reuses .zoo/tiny)
    python bench/encoder_eval.py --stats            # + real vs synthetic stack statistics
    python bench/encoder_eval.py --heldout 2000     # + Gaussianity of z on held-out synthetic stacks
    python bench/encoder_eval.py --sheet reports/zoo-contact-sheet.png   # + the zoo's dogs

Table columns: canonical cosine (the stacks themselves) and z cosine (the dog vectors) between
each zoo model and its root base, and between every pair of independent bases. Exit status 1
when an acceptance threshold fails (huref.encoder.evaluate).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _zoo(path: Path | None) -> tuple[Path, list[dict]]:
    from huref.zoo.build import existing_or_built

    zoo = existing_or_built(path or REPO / ".zoo" / "tiny")  # a zoo already there is read as it is
    return zoo, json.loads((zoo / "zoo.json").read_text())["models"]


SHEET = [  # (model, caption): a base, its attacks and derivatives, then the independent bases
    ("llama-a", "BASE"),
    ("llama-a-attack-residual-rotation", "rotation attack"),
    ("llama-a-attack-norm-gain", "norm-gain attack"),
    ("llama-a-attack-vocab-expand", "vocab attack"),
    ("llama-a-int8", "int8"),
    ("llama-a-prune-mag", "magnitude pruned"),
    ("llama-a-sft", "SFT"),
    ("llama-a-lora", "LoRA merged"),
    ("llama-a-merge-linear", "linear merge"),
    ("llama-a-merge-ties", "TIES merge"),
    ("llama-a-prune-width", "width pruned"),
    ("llama-a-prune-depth", "depth pruned"),
    ("llama-a-vocab-expand", "vocab expanded"),
    ("llama-a-cpt", "heavy CPT"),
    ("stories260k", "BASE (real)"),
    ("stories260k-attack-residual-rotation", "rotation attack"),
    ("stories260k-sft", "SFT"),
    ("stories260k-cpt", "CPT"),
    ("llama-b", "independent"),
    ("llama-c", "independent"),
    ("gpt2-a", "independent"),
    ("neox-a", "independent"),
    ("stories260k-indep", "independent"),
]


def contact_sheet(zoo_dir: Path | None, encoder: Path | None, out: Path, cell: int = 160) -> None:
    """The zoo's dogs side by side, each captioned with its cosine to its root base's dog."""
    from huref.dogs import dog_sheet
    from huref.encoder.evaluate import cosine, encode_fingerprints
    from huref.encoder.weights import load_encoder
    from huref.invariants import Settings, fingerprint_model
    from huref.render.sheet import save_png_atomic

    zoo, manifest = _zoo(zoo_dir)
    roots = {m["name"]: m["root"] for m in manifest}
    names = [n for n, _ in SHEET if n in roots]
    fps = {n: fingerprint_model(zoo / n, Settings(modes=("robust",))) for n in names}
    _, z = encode_fingerprints(fps, load_encoder(encoder))
    items = []
    for name, caption in SHEET:
        if name not in z:
            continue
        root = roots[name] if roots[name] in z else name
        sim = "" if root == name else f" cos {cosine(z[root], z[name]):.2f}"
        items.append((f"{name}\n{caption}{sim}", z[name]))
    header = [
        "huref dog images of the tiny zoo (sketch renderer, shipped encoder). Rows 1-3: llama-a, its attacks and",
        "derivatives, then stories260K (real) and its own; row 4: independent bases. cos = cosine of the dog",
        "vector to its base's (>= 0.9 claimed alike; CPT, vocab expansion and pruning are not claimed).",
    ]
    img = dog_sheet(items, "sketch", columns=6, cell=cell, caption_lines=header)
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save_png_atomic(img, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {img.size[0]} x {img.size[1]})")


def zoo_table(zoo_dir: Path | None, encoder: Path | None) -> int:
    from huref.encoder.closeness import closeness
    from huref.encoder.evaluate import (
        DERIVED_MIN,
        INDEPENDENT_MAX,
        KNOWN_NEAR_MISSES,
        UNDETECTABLE,
        failures,
        zoo_rows,
    )
    from huref.encoder.weights import load_encoder
    from huref.invariants import Settings, fingerprint_model

    zoo, manifest = _zoo(zoo_dir)
    t0 = time.perf_counter()
    fps = {m["name"]: fingerprint_model(zoo / m["path"], Settings(modes=("robust",))) for m in manifest}
    t1 = time.perf_counter()
    rows = zoo_rows(fps, manifest, load_encoder(encoder))
    t2 = time.perf_counter()
    print(f"{len(fps)} zoo models fingerprinted in {t1 - t0:.1f} s, encoded in {t2 - t1:.2f} s\n")
    print(
        f"{'model':40s} {'relation':28s} {'vs':18s} {'canon':>7s} {'z cos':>7s} {'caption band':>14s}  claim"
    )
    for r in rows:
        if r.relation == "independent":
            claim = f"|z| <= {INDEPENDENT_MAX}"
        elif r.claimed:
            claim = f">= {DERIVED_MIN}"
        else:
            claim = "not claimed (undetectable by the dog)"
        mark = (
            "ok"
            if r.ok
            else "FAIL" + (" (known near miss)" if (r.root, r.model) in KNOWN_NEAR_MISSES else "")
        )
        print(
            f"{r.model:40s} {r.relation:28s} {r.root:18s} {r.canonical_cos:7.3f} {r.z_cos:7.3f} "
            f"{closeness(r.z_cos).band:>14s}  {claim} {mark}"
        )
    derived = [r for r in rows if r.relation != "independent" and r.claimed]
    indep = [r for r in rows if r.relation == "independent"]
    print(
        f"\nclaimed derived/attacked: min z cos {min(r.z_cos for r in derived):.3f} over {len(derived)} models"
    )
    print(f"independent pairs: max |z cos| {max(abs(r.z_cos) for r in indep):.3f} over {len(indep)} pairs")
    for rel, why in UNDETECTABLE.items():
        vals = [r.z_cos for r in rows if r.relation == rel]
        if vals:
            print(f"not claimed: {rel}: z cos {', '.join(f'{v:.3f}' for v in vals)} ({why})")
    bad = failures(rows)
    print("acceptance:", "PASS" if not bad else f"FAIL ({', '.join(r.model for r in bad)})")
    return 1 if bad else 0


def stats_table(zoo_dir: Path | None, n_synthetic: int = 512) -> None:
    from huref.encoder import synthetic as syn
    from huref.encoder.canonical import canonical_stack
    from huref.encoder.stackstats import pair_cosine, pooled, stack_statistics
    from huref.encoder.train import DEFAULT_SEED, _generator
    from huref.invariants import Settings, fingerprint_model

    zoo, manifest = _zoo(zoo_dir)
    bases = [m for m in manifest if m["relation"] == "base"]
    real = pooled(
        [
            stack_statistics(canonical_stack(fingerprint_model(zoo / m["path"], Settings(modes=("robust",)))))
            for m in bases
        ]
    )
    stacks, pos = [], []
    for i in range(n_synthetic // 32):
        g = _generator(DEFAULT_SEED, "stats", i)
        base = syn.draw_models(g, 8, 4)
        a = syn.stacks(g, base)
        b = syn.stacks(g, syn.derive(g, base, 0.7 * torch.rand(base.batch, generator=g)))
        stacks += list(a)
        pos += [pair_cosine(x, y) for x, y in zip(a, b, strict=True)]
    synth = pooled([stack_statistics(s) for s in stacks])
    q = lambda v, p: float(np.quantile(v, p))  # noqa: E731
    print(f"\ncanonical stack statistics: {len(bases)} real zoo bases vs {len(stacks)} synthetic models")
    print(
        f"{'statistic':10s} {'real min':>9s} {'median':>7s} {'max':>7s} | {'syn q01':>8s} {'q10':>7s} {'median':>7s} {'q90':>7s} {'q99':>7s}"
    )
    for k in real:
        r, s = real[k], synth[k]
        print(
            f"{k:10s} {r.min():9.3f} {np.median(r):7.3f} {r.max():7.3f} | {q(s, 0.01):8.3f} {q(s, 0.1):7.3f} "
            f"{q(s, 0.5):7.3f} {q(s, 0.9):7.3f} {q(s, 0.99):7.3f}"
        )
    p = np.asarray(pos)
    print(
        f"synthetic positives (severity U(0, 0.7)): canonical cosine q05 {q(p, 0.05):.3f} median {q(p, 0.5):.3f} "
        f"q95 {q(p, 0.95):.3f}"
    )


def heldout_table(n: int, encoder: Path | None) -> None:
    from huref.encoder.train import DEFAULT_SEED, heldout_metrics
    from huref.encoder.weights import load_encoder

    t0 = time.perf_counter()
    h = heldout_metrics(load_encoder(encoder), DEFAULT_SEED, n)
    print(f"\nheld-out synthetic stacks: {h['n']} in {time.perf_counter() - t0:.1f} s")
    print(
        f"per-coordinate mean {h['mean_min']:+.3f} .. {h['mean_max']:+.3f}; std {h['std_min']:.3f} .. {h['std_max']:.3f}"
    )
    print(
        f"KS of the {h['n'] * 512} pooled values vs N(0, 1): D {h['ks_statistic']:.5f}, p {h['ks_pvalue']:.3g}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", type=Path, help="zoo folder (default: .zoo/tiny, built if absent)")
    ap.add_argument("--encoder", type=Path, help="encoder weights (default: the shipped file)")
    ap.add_argument("--stats", action="store_true", help="also print real vs synthetic stack statistics")
    ap.add_argument(
        "--heldout", type=int, default=0, help="also test Gaussianity on this many held-out stacks"
    )
    ap.add_argument("--sheet", type=Path, help="also write the zoo contact sheet to this PNG")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    code = zoo_table(args.zoo, args.encoder)
    if args.stats:
        stats_table(args.zoo)
    if args.heldout:
        heldout_table(args.heldout, args.encoder)
    if args.sheet:
        contact_sheet(args.zoo, args.encoder, args.sheet)
    return code


if __name__ == "__main__":
    sys.exit(main())
