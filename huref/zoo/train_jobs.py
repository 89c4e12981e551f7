"""The zoo's training jobs: bases trained from scratch, stories260K imported with an independent
twin, and the derivatives made by training (SFT, continued pretraining, LoRA, vocabulary
expansion, sparse upcycling).

Random draws follow seeds fixed in each job (``new_model`` and ``train_lm`` reset torch's
generator), so a job's weights do not depend on the worker process that runs it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from huref.checkpoint.convert import export_hf
from huref.lm.corpus import corpus_text
from huref.lm.train import train_lm
from huref.zoo import derive
from huref.zoo.jobctx import ATTACK_TOLERANCE, Ctx, entry, loss_notes
from huref.zoo.models import load_hf, new_model, same_function_error, save_hf
from huref.zoo.rolestate import RoleState
from huref.zoo.tokenizer import id_named_tokenizer, save_tokenizer


def job_base(ctx: Ctx, arch: str, name: str, seed: int, steps: int | None = None) -> list[dict]:
    """A base trained from scratch (``steps``: the preset's base budget unless given)."""
    t0 = time.time()
    p = ctx.preset
    s = ctx.streams()
    model = new_model(arch, p, p.vocab, seed)
    losses = train_lm(model, s["pretrain"], steps or p.base_steps, p.base_lr, seed, p.batch, p.seq)
    save_hf(model, ctx.root / name, ctx.tokenizer_dir)
    return [
        entry(
            name,
            arch,
            None,
            "base",
            name,
            seed=seed,
            seconds=round(time.time() - t0, 1),
            **loss_notes(losses),
        )
    ]


def _stories_samples(model: Any, n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    bos = torch.full((n, 1), 1, dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=bos,
            attention_mask=torch.ones_like(bos),
            do_sample=True,
            temperature=1.0,
            max_new_tokens=127,
            pad_token_id=0,
            eos_token_id=None,
        )
    return out  # [n, 128], each row starting with BOS


def job_stories(ctx: Ctx) -> list[dict]:
    """Import the real stories260K model and train an independent model of its exact shape on its
    own generations (the hardest honest null: same shape, same data distribution, new init)."""
    assert ctx.stories is not None
    dest = ctx.root / "stories260k"
    export_hf(ctx.stories, dest)
    cfg = json.loads((dest / "config.json").read_text())
    tok = id_named_tokenizer(cfg["vocab_size"])
    tok.save(str(dest / "tokenizer.json"))
    hf = load_hf(dest)
    data = _stories_samples(hf, 96, seed=7)
    save_file({"stories": data.contiguous()}, str(ctx.root / "_data" / "stories.safetensors"))
    import transformers as T

    torch.manual_seed(11)
    indep = T.LlamaForCausalLM(
        T.LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
    ).eval()
    losses = train_lm(indep, data, 300, 3e-3, 11, 16, 64)
    save_hf(indep, ctx.root / "stories260k-indep", dest)
    return [
        entry(
            "stories260k",
            "llama",
            None,
            "base",
            "stories260k",
            source="llama2.c stories260K (real, pretrained)",
        ),
        entry(
            "stories260k-indep",
            "llama",
            None,
            "base",
            "stories260k-indep",
            seed=11,
            data="stories260K's own samples",
            **loss_notes(losses),
        ),
    ]


def train_derivative(
    ctx: Ctx,
    parent: str,
    name: str,
    stream: torch.Tensor,
    steps: int,
    lr: float,
    seed: int,
    relation: str,
    arch: str,
    root: str,
    tok_dir: Path | None = None,
) -> dict:
    model = load_hf(ctx.root / parent)
    losses = train_lm(model, stream, steps, lr, seed, ctx.preset.batch, ctx.preset.seq)
    save_hf(model, ctx.root / name, tok_dir or (ctx.root / parent))
    change = derive.relative_change(ctx.root / parent, ctx.root / name)
    return entry(
        name, arch, parent, relation, root, lr=lr, relative_weight_change=change, **loss_notes(losses)
    )


def job_llama_trained(ctx: Ctx) -> list[dict]:
    p, s = ctx.preset, ctx.streams()
    out = [
        train_derivative(
            ctx, "llama-a", "llama-a-sft", s["sft"], p.sft_steps, p.sft_lr, 21, "sft", "llama", "llama-a"
        ),
        train_derivative(
            ctx, "llama-a", "llama-a-cpt", s["cpt"], p.cpt_steps, p.cpt_lr, 22, "cpt", "llama", "llama-a"
        ),
    ]
    # LoRA fine-tune, merged back into dense weights
    from peft import LoraConfig, get_peft_model

    model = load_hf(ctx.root / "llama-a")
    lcfg = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    pm = get_peft_model(model, lcfg)
    losses = train_lm(pm, s["sft"], p.lora_steps, p.lora_lr, 23, p.batch, p.seq)
    merged = pm.merge_and_unload()
    save_hf(merged, ctx.root / "llama-a-lora", ctx.root / "llama-a")
    out.append(
        entry(
            "llama-a-lora", "llama", "llama-a", "lora", "llama-a", rank=8, lr=p.lora_lr, **loss_notes(losses)
        )
    )
    out.append(_vocab_expand_trained(ctx))
    return out


def _vocab_expand_trained(ctx: Ctx) -> dict:
    """Add frequent words as new tokens (rows appended), then train so the new rows are used."""
    import re
    from collections import Counter

    from tokenizers import AddedToken

    from huref.zoo.tokenizer import load_tokenizer

    p = ctx.preset
    tok = load_tokenizer(ctx.root / "llama-a")
    text = corpus_text("sft", 400_000)
    words = Counter(re.findall(r"[A-Za-z_]{6,}", text))
    new = [w for w, _ in words.most_common(400) if len(tok.encode(w).ids) >= 2][:32]
    tok.add_tokens([AddedToken(w, single_word=False, normalized=False) for w in new])
    tmp_tok = ctx.root / "_data" / "vocab_expand_tok"
    save_tokenizer(tok, tmp_tok)
    model = load_hf(ctx.root / "llama-a")
    old = model.config.vocab_size
    model.resize_token_embeddings(tok.get_vocab_size(), mean_resizing=True)
    stream = torch.tensor(tok.encode(text).ids)
    losses = train_lm(model, stream, p.heal_steps + 20, p.heal_lr, 24, p.batch, p.seq)
    save_hf(model, ctx.root / "llama-a-vocab-expand", tmp_tok)
    return entry(
        "llama-a-vocab-expand",
        "llama",
        "llama-a",
        "vocab-expand",
        "llama-a",
        new_tokens=len(new),
        vocab_before=old,
        vocab_after=tok.get_vocab_size(),
        lr=p.heal_lr,
        **loss_notes(losses),
    )


def job_light_sft(ctx: Ctx) -> list[dict]:
    """The plateau base fine-tuned as gently as real instruction tuning moves a model."""
    p, s = ctx.preset, ctx.streams()
    arch, base, _ = p.plateau_base
    e = train_derivative(
        ctx, base, f"{base}-sft", s["sft"], p.light_sft_steps, p.light_sft_lr, 26, "sft", arch, base
    )
    return [e]


def job_gpt2_derivs(ctx: Ctx) -> list[dict]:
    p, s = ctx.preset, ctx.streams()
    return [
        train_derivative(
            ctx, "gpt2-a", "gpt2-a-sft", s["sft"], p.sft_steps, p.sft_lr, 31, "sft", "gpt2", "gpt2-a"
        ),
        train_derivative(
            ctx, "gpt2-a", "gpt2-a-cpt", s["cpt"], p.cpt_steps, p.cpt_lr, 32, "cpt", "gpt2", "gpt2-a"
        ),
    ]


def job_stories_derivs(ctx: Ctx) -> list[dict]:
    p = ctx.preset
    own = load_file(str(ctx.root / "_data" / "stories.safetensors"))["stories"]
    # a different token distribution (our corpus, ids folded into its vocabulary): heavy domain shift
    body = (ctx.streams()["cpt"] % 509 + 3)[: 400 * 63].reshape(400, 63)
    foreign = torch.cat([torch.ones(400, 1, dtype=torch.long), body], dim=1)
    return [
        train_derivative(
            ctx,
            "stories260k",
            "stories260k-sft",
            own,
            p.sft_steps,
            p.stories_sft_lr,
            41,
            "sft",
            "llama",
            "stories260k",
        ),
        train_derivative(
            ctx,
            "stories260k",
            "stories260k-cpt",
            foreign,
            p.cpt_steps,
            p.stories_cpt_lr,
            42,
            "cpt",
            "llama",
            "stories260k",
        ),
    ]


# ------------------------------------------------------------------ the MoE section
def job_moe_derivs(ctx: Ctx) -> list[dict]:
    """An SFT of the MoE base, and an MoE upcycled from the dense llama-a then trained."""
    p, s = ctx.preset, ctx.streams()
    sft = train_derivative(
        ctx, "moe-a", "moe-a-sft", s["sft"], p.sft_steps, p.sft_lr, 51, "sft", "mixtral", "moe-a"
    )
    return [sft, _upcycled(ctx, "llama-a", "llama-a-upcycled", seed=52)]


def _upcycled(ctx: Ctx, dense: str, name: str, seed: int) -> dict:
    """Sparse upcycling (every expert a copy of the dense FFN, a fresh router), proved to keep
    the dense model's function, then trained with the SFT recipe so the experts diverge."""
    p, s = ctx.preset, ctx.streams()
    init, raw = ctx.root / "_data" / f"{name}-init", ctx.root / "_data" / f"{name}-raw"
    save_hf(new_model("mixtral", p, p.vocab, seed), init, None)
    g = torch.Generator().manual_seed(seed)
    st = derive.upcycle(RoleState.load(ctx.root / dense), RoleState.load(init), g)
    st.save(raw, tokenizer_from=ctx.root / dense)
    err = same_function_error(ctx.root / dense, raw)
    if not err < ATTACK_TOLERANCE:
        raise RuntimeError(f"upcycling {dense} changed its function (relative error {err:.2e})")
    model = load_hf(raw)
    losses = train_lm(model, s["sft"], p.sft_steps, p.sft_lr, seed + 1, p.batch, p.seq)
    save_hf(model, ctx.root / name, ctx.root / dense)
    shutil.rmtree(init)
    shutil.rmtree(raw)
    return entry(
        name,
        "mixtral",
        dense,
        "upcycle",
        dense,
        experts=p.moe_experts,
        top_k=p.moe_top_k,
        lr=p.sft_lr,
        upcycled_logits_relative_error=err,
        **loss_notes(losses),
    )
