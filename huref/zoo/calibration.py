"""How far the realistic preset's derivatives move from their base, against real pairs.

Targets are relative weight changes ||theta_d - theta_b|| / ||theta_b|| over the tensors the two
models share by name and shape. They come from the published lineage pairs of
``lineage_pairs.csv`` (the model-tracing project's L2 distances between 7B LLaMA-family weights):
independent pairs of the same shape sit at L2 134-156, so one model's norm is about
L2 / sqrt(2) ~ 95-110 (two unrelated weight vectors are nearly orthogonal), and

- instruction tuning (Llama-2-7B -> Vicuna-7B-v1.5, L2 4.19; -> Orca-2-7B, 5.71) moves the weights by
  ~4-6% of their norm;
- continued pretraining on hundreds of billions of tokens (Llama-2 -> CodeLlama, 93.2; CodeLlama ->
  Llemma, 49.6) moves them by ~50-90%: the regime of the tiny and demo zoos' *stress* CPT.

The realistic preset's CPT is *light* continued pretraining (domain adaptation on a budget): more
than SFT, far less than CodeLlama's 500B tokens. LoRA, merges of siblings and vocabulary expansion
with brief training sit at or below SFT. PCS (the cosine of the two flattened parameter vectors,
HuRef's baseline statistic) follows: 1 - r^2 / 2 for a change r that is orthogonal to the weights.

The build records, for every derivative, the relative change and PCS against its root base and the
perplexity of both on the root's own held-out data, and whether the change lies in its target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from huref.checkpoint import open_checkpoint
from huref.lm.train import perplexity
from huref.zoo.models import load_hf

# relation -> (low, high) relative weight change against the root base
TARGETS: dict[str, tuple[float, float]] = {
    "sft": (0.01, 0.08),
    "lora": (0.002, 0.08),
    "vocab-expand": (0.002, 0.08),
    "merge-linear": (0.002, 0.15),
    "merge-ties": (0.002, 0.15),
    "cpt": (0.04, 0.25),
}
SOURCES = (
    "lineage_pairs.csv L2 distances (model-tracing, 7B LLaMA family): independent 134-156 -> "
    "norm ~95-110; SFT Vicuna-7B-v1.5 4.19, Orca-2-7B 5.71 (~4-6%); heavy CPT CodeLlama 93.2, "
    "Llemma 49.6 (~50-90%, the stress zoos' regime)"
)


def weight_change(a: Path, b: Path) -> tuple[float, float]:
    """(relative change ||b - a|| / ||a||, cosine of the flattened weights) over tensors matched by
    name and shape, streamed one tensor at a time."""
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    names_b = set(cb.source.names())
    diff = aa = bb = ab = 0.0
    for name in ca.source.names():
        if name not in names_b or ca.source.info(name).shape != cb.source.info(name).shape:
            continue
        t, u = ca.source.read(name).double(), cb.source.read(name).double()
        diff += float((u - t).pow(2).sum())
        aa += float(t.pow(2).sum())
        bb += float(u.pow(2).sum())
        ab += float((t * u).sum())
    return math.sqrt(diff / max(aa, 1e-30)), ab / max(math.sqrt(aa * bb), 1e-30)


def _root_data(root: Path, name: str, heldout: torch.Tensor) -> torch.Tensor:
    """The root base's own data: the corpus's held-out slice, or stories260K's own samples."""
    if name.startswith("stories260k"):
        return load_file(str(root / "_data" / "stories.safetensors"))["stories"].flatten()
    return heldout


def annotate(root: Path, entries: list[dict], heldout: torch.Tensor) -> list[dict]:
    """Add ``calibration`` to every derivative with a target: change, PCS, perplexities, in target."""
    ppl: dict[str, float] = {}

    def ppl_of(name: str, data: torch.Tensor) -> float:
        if name not in ppl:
            ppl[name] = perplexity(load_hf(root / name), data)
        return ppl[name]

    for e in entries:
        lo_hi = TARGETS.get(e["relation"])
        if lo_hi is None:
            continue
        data = _root_data(root, e["root"], heldout)
        rel, pcs = weight_change(root / e["root"], root / e["name"])
        p0, p1 = ppl_of(e["root"], data), ppl_of(e["name"], data)
        e["notes"]["calibration"] = {
            "relative_change": rel,
            "pcs": pcs,
            "target": list(lo_hi),
            "within_target": lo_hi[0] <= rel <= lo_hi[1],
            "root_data_ppl": {"root": p0, "derivative": p1, "relative_change": p1 / p0 - 1},
        }
    return entries


def summary(entries: list[dict]) -> dict[str, Any]:
    """The targets, their sources, and per relation the changes reached (zoo.json's record)."""
    reached: dict[str, list[float]] = {}
    for e in entries:
        cal = e["notes"].get("calibration")
        if cal:
            reached.setdefault(e["relation"], []).append(round(cal["relative_change"], 4))
    return {
        "quantity": "relative weight change against the root base (tensors matched by name and shape)",
        "targets": {k: list(v) for k, v in TARGETS.items()},
        "sources": SOURCES,
        "reached": reached,
        "all_within_target": all(
            e["notes"]["calibration"]["within_target"] for e in entries if "calibration" in e["notes"]
        ),
    }
