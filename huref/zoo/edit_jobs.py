"""The zoo's derivation jobs that edit weights rather than train them: int8 quantization, pruning
(magnitude, depth, width with a brief healing), function-preserving attacks, the disguise of a
trained derivative, and merges (linear, TIES).

Every function-preserving edit is proved to keep the function (logits within
``ATTACK_TOLERANCE``) before its entry is written.
"""

from __future__ import annotations

import shutil

import torch

from huref.lm.train import train_lm
from huref.zoo import attacks, derive
from huref.zoo.jobctx import ATTACK_TOLERANCE, Ctx, entry, loss_notes
from huref.zoo.models import load_hf, same_function_error, save_hf
from huref.zoo.rolestate import RoleState


def job_llama_structural(ctx: Ctx) -> list[dict]:
    p, s = ctx.preset, ctx.streams()
    base = ctx.root / "llama-a"
    out = []
    st = derive.quantize_int8(RoleState.load(base))
    st.save(ctx.root / "llama-a-int8")
    out.append(entry("llama-a-int8", "llama", "llama-a", "quant", "llama-a", scheme="int8 per-row absmax"))
    st = derive.prune_magnitude(RoleState.load(base), 0.3)
    st.save(ctx.root / "llama-a-prune-mag")
    out.append(entry("llama-a-prune-mag", "llama", "llama-a", "prune-magnitude", "llama-a", sparsity=0.3))
    st = RoleState.load(base)
    drop = [p.n_layers // 2]
    keep = derive.prune_depth(st, drop)
    st.save(ctx.root / "llama-a-prune-depth")
    out.append(entry("llama-a-prune-depth", "llama", "llama-a", "prune-depth", "llama-a", kept_layers=keep))
    st = RoleState.load(base)
    info = derive.prune_width(st)
    tmp = ctx.root / "_data" / "llama-a-prune-width-raw"
    st.save(tmp)
    model = load_hf(tmp)
    losses = train_lm(model, s["pretrain"], p.heal_steps, 1e-3, 25, p.batch, p.seq)  # brief healing
    save_hf(model, ctx.root / "llama-a-prune-width", base)
    shutil.rmtree(tmp)
    out.append(
        entry(
            "llama-a-prune-width", "llama", "llama-a", "prune-width", "llama-a", **info, **loss_notes(losses)
        )
    )
    return out


def _attacked(ctx: Ctx, src: str, out: str, kind: str, fn: attacks.Attack, seed: int) -> float:
    """Apply a function-preserving attack to ``src``, save it as ``out`` and prove the function
    unchanged; returns the logits' relative error."""
    res = fn(RoleState.load(ctx.root / src), torch.Generator().manual_seed(seed))
    res.state.save(ctx.root / out, tokenizer_json=res.tokenizer_json)
    err = same_function_error(ctx.root / src, ctx.root / out, res.id_map, res.old_vocab)
    if not err < ATTACK_TOLERANCE:
        raise RuntimeError(f"attack {kind} on {src} changed the function (relative error {err:.2e})")
    return err


def job_attacks(ctx: Ctx, base: str, arch: str = "llama") -> list[dict]:
    table = attacks.MOE_ATTACKS if arch == "mixtral" else attacks.ATTACKS
    out = []
    for i, (kind, fn) in enumerate(table.items()):
        name = f"{base}-attack-{kind}"
        err = _attacked(ctx, base, name, kind, fn, 1000 + i)
        out.append(entry(name, arch, base, f"attack-{kind}", base, logits_relative_error=err))
    return out


def job_disguised(ctx: Ctx, name: str, root: str, seed: int, arch: str = "llama") -> list[dict]:
    """A trained derivative passed through the composite disguise: fine-tune, then hide."""
    out = f"{name}-disguised"
    err = _attacked(ctx, name, out, "disguise", attacks.disguise, seed)
    relation = name.rsplit("-", 1)[1] + "+disguise"
    return [entry(out, arch, name, relation, root, logits_relative_error=err)]


def job_merges(ctx: Ctx) -> list[dict]:
    a, b = ctx.root / "llama-a-sft", ctx.root / "llama-a-lora"
    lin = derive.merge_linear(RoleState.load(a), RoleState.load(b), 0.5)
    lin.save(ctx.root / "llama-a-merge-linear")
    ties = derive.merge_ties(
        RoleState.load(ctx.root / "llama-a"), [RoleState.load(a), RoleState.load(b)], 0.2, 1.0
    )
    ties.save(ctx.root / "llama-a-merge-ties")
    parents = ["llama-a-sft", "llama-a-lora"]
    return [
        entry("llama-a-merge-linear", "llama", parents, "merge-linear", "llama-a", weights=[0.5, 0.5]),
        entry("llama-a-merge-ties", "llama", parents, "merge-ties", "llama-a", density=0.2, lam=1.0),
    ]
