"""What a stamped FP-Vec fingerprint survives: quantization, merging, further fine-tuning.

For each base (default llama-a): fingerprint it (or reuse ``--work``), extract tau, stamp BASE-sft,
then measure FSR, near-miss FSR, the likelihood p-value and held-out perplexity of

- the fingerprinted base, the stamped SFT derivative and the unstamped one (control);
- the stamped SFT after RTN int8 (per row) and RTN 4-bit (groups of 32 and of 128 input columns;
  a group never spans more than one row, so 128 on a 64-wide layer is per row);
- the stamped SFT merged 0.5/0.5 with the unstamped BASE-sft (its own sibling) and with BASE-cpt;
- the stamped SFT fine-tuned further on the held-out corpus slice (text no zoo model was trained
  on) at each ``--lr``, measured every ``--every`` steps up to ``--steps``: the steps to lose it.

    python bench/fpvec_robustness.py [--zoo .zoo/tiny] [--bases llama-a gpt2-a] [--work DIR]
                                     [--json OUT]

Seeds are fixed (keys ``--keys-seed``, training seed 0, fine-tuning seed 0); one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from huref.fpvec import data as D
from huref.fpvec.harm import corpus_ids
from huref.fpvec.keys import KeySet, load_keys, make_keys, save_keys
from huref.fpvec.robustness import fsr_during_finetune, measure, merge_with, quantize_rtn
from huref.fpvec.stamp import stamp_model
from huref.fpvec.train import train_fingerprint
from huref.fpvec.train_config import TrainConfig
from huref.fpvec.vector import extract_vector
from huref.lm.load import load_causal_lm
from huref.lm.train import perplexity

CPU = torch.device("cpu")


def prepare(
    zoo: Path, base: str, work: Path, ks: KeySet, keys_path: Path, fire_check: bool = True
) -> dict[str, Path]:
    """The fingerprinted base, its vector and the stamped SFT derivative (reused when present)."""
    tag = f"{base}-k{ks.commitment[:8]}"  # a work folder may hold several key sets
    fp, vec, stamped = work / f"{tag}-fp", work / f"{tag}.fpvec.safetensors", work / f"{tag}-sft-stamped"
    t0 = time.perf_counter()
    if not fp.exists():
        # train's defaults, its end check included (--no-fire-check: one run of --steps, for zoos
        # whose stress bases the check may refuse)
        cfg = TrainConfig(device="cpu", measure_harm=False, until_fires=fire_check)
        train_fingerprint(zoo / base, keys_path, fp, cfg)
        print(f"[{base}] fingerprinted in {time.perf_counter() - t0:.0f} s", flush=True)
    if not vec.exists():
        extract_vector(zoo / base, fp, vec)
    if not stamped.exists():
        stamp_model(zoo / f"{base}-sft", vec, stamped)
    return {"fp": fp, "stamped": stamped}


def row(name: str, lm: Any, tok: Any, ks: KeySet, heldout: torch.Tensor) -> dict[str, Any]:
    m = measure(lm, tok, ks)
    ppl = perplexity(lm, heldout, seq=128, max_windows=64)
    return {"model": name, "fsr": m.fsr, "near_miss_fsr": m.near_miss_fsr, "p_value": m.p_value, "ppl": ppl}


def bench_base(
    zoo: Path,
    base: str,
    work: Path,
    ks: KeySet,
    keys_path: Path,
    lrs: list[float],
    steps: int,
    every: int,
    fire_check: bool = True,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    paths = prepare(zoo, base, work, ks, keys_path, fire_check)
    tok = D.load_tokenizer(zoo / base)
    stream = corpus_ids(tok)
    if stream is None:
        raise SystemExit(f"{base}: its tokenizer cannot spell the held-out corpus")
    lm = {k: load_causal_lm(p, CPU) for k, p in paths.items()}
    sft, cpt = load_causal_lm(zoo / f"{base}-sft", CPU), load_causal_lm(zoo / f"{base}-cpt", CPU)
    st = lm["stamped"]
    # group sizes are capped at the row length: report what each layer got
    widths = sorted({p.shape[-1] for n, p in st.named_parameters() if p.dim() == 2})
    rows = [
        row(f"{base} fingerprinted", lm["fp"], tok, ks, stream),
        row(f"{base}-sft (control, no stamp)", sft, tok, ks, stream),
        row(f"{base}-sft stamped", st, tok, ks, stream),
        row("  + int8 RTN (per row)", quantize_rtn(st, 8), tok, ks, stream),
        row("  + 4-bit RTN g32", quantize_rtn(st, 4, 32), tok, ks, stream),
        row("  + 4-bit RTN g128", quantize_rtn(st, 4, 128), tok, ks, stream),
        row(f"  + 0.5 merge with {base}-sft", merge_with(st, sft, 0.5), tok, ks, stream),
        row(f"  + 0.5 merge with {base}-cpt", merge_with(st, cpt, 0.5), tok, ks, stream),
    ]
    curves = []
    for lr in lrs:
        c = fsr_during_finetune(st, tok, ks, stream, lr, steps, every, seed=0)
        curves.append(c.to_json())
    return {
        "base": base,
        "zoo": str(zoo),
        "layer_input_widths": widths,
        "rows": rows,
        "finetune": curves,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.1e}"


def print_tables(res: dict[str, Any]) -> None:
    print(f"\n## {res['base']} ({res['zoo']}; layer input widths {res['layer_input_widths']})\n")
    print("| model | FSR | near-miss FSR | likelihood p | held-out ppl |")
    print("|---|---|---|---|---|")
    for r in res["rows"]:
        print(
            f"| {r['model']} | {r['fsr']:.1f} | {r['near_miss_fsr']:.3f} | {_p(r['p_value'])} | {r['ppl']:.2f} |"
        )
    for c in res["finetune"]:
        print(
            f"\nfurther fine-tuning of {res['base']}-sft stamped on held-out text, lr {c['lr']:g} "
            f"(constant after warm-up): FSR < 0.5 at step {c['steps_to_fsr_below_0.5']}, "
            f"< 0.1 at step {c['steps_to_fsr_below_0.1']}\n"
        )
        print("| step | FSR | near-miss FSR | likelihood p | train loss |")
        print("|---|---|---|---|---|")
        for p in c["points"]:
            loss = "-" if p["loss"] is None else f"{p['loss']:.2f}"
            print(
                f"| {p['step']} | {p['fsr']:.1f} | {p['near_miss_fsr']:.3f} | {_p(p['p_value'])} | {loss} |"
            )
    print(f"\n({res['seconds']} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path(".zoo/tiny"))
    ap.add_argument("--bases", nargs="+", default=["llama-a"])
    ap.add_argument("--work", type=Path, default=Path(".bench/fpvec_robustness"))
    ap.add_argument("--keys-seed", type=int, default=11)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-4, 1e-3])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-fire-check", action="store_true", help="train once, without train's end check")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    a.work.mkdir(parents=True, exist_ok=True)
    keys_path = a.work / f"keys-seed{a.keys_seed}.json"
    if not keys_path.exists():
        save_keys(make_keys(seed=a.keys_seed), keys_path)
    ks = load_keys(keys_path)
    results = []
    for base in a.bases:
        res = bench_base(a.zoo, base, a.work, ks, keys_path, a.lr, a.steps, a.every, not a.no_fire_check)
        print_tables(res)
        results.append(res)
    if a.json is not None:
        a.json.write_text(json.dumps({"keys_seed": a.keys_seed, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
