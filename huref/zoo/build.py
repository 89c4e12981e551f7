"""``huref zoo build DIR --preset tiny|demo``: bases, derivatives and attacks, with a manifest.

The build runs in phases whose jobs are independent and spread over worker processes (one
thread each: these models are far too small to gain from intra-op threads). Everything is written
into a temporary folder and renamed into place with ``zoo.json`` last, so an interrupted build
leaves nothing that looks like a zoo. A finished zoo is reused when its recipe matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from huref.checkpoint.atomic import atomic_dir
from huref.checkpoint.convert import export_hf
from huref.errors import UsageError
from huref.lm.corpus import corpus_text
from huref.lm.train import train_lm
from huref.zoo import attacks, calibration, derive
from huref.zoo.models import load_hf, new_model, same_function_error, save_hf
from huref.zoo.presets import PRESETS, Preset
from huref.zoo.rolestate import RoleState
from huref.zoo.tokenizer import id_named_tokenizer, save_tokenizer, train_tokenizer

log = logging.getLogger(__name__)
ZOO_VERSION = "1"
ATTACK_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Ctx:
    root: Path
    preset: Preset
    stories: Path | None


def _entry(
    name: str, arch: str, parent: str | list[str] | None, relation: str, root: str, **notes: Any
) -> dict:
    return {
        "name": name,
        "path": name,
        "arch": arch,
        "parent": parent,
        "relation": relation,
        "root": root,
        "notes": notes,
    }


def _streams(ctx: Ctx) -> dict[str, torch.Tensor]:
    return load_file(str(ctx.root / "_data" / "streams.safetensors"))


def _loss_notes(losses: list[float]) -> dict[str, float]:
    k = max(1, min(10, len(losses) // 5))
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k, "steps": len(losses)}


def _tok(ctx: Ctx) -> Path:
    return ctx.root / "_tokenizer"


# ------------------------------------------------------------------------------------------ jobs
def job_base(ctx: Ctx, arch: str, name: str, seed: int) -> list[dict]:
    t0 = time.time()
    p = ctx.preset
    s = _streams(ctx)
    model = new_model(arch, p, p.vocab, seed)
    losses = train_lm(model, s["pretrain"], p.base_steps, p.base_lr, seed, p.batch, p.seq)
    save_hf(model, ctx.root / name, _tok(ctx))
    return [
        _entry(
            name,
            arch,
            None,
            "base",
            name,
            seed=seed,
            seconds=round(time.time() - t0, 1),
            **_loss_notes(losses),
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
        _entry(
            "stories260k",
            "llama",
            None,
            "base",
            "stories260k",
            source="llama2.c stories260K (real, pretrained)",
        ),
        _entry(
            "stories260k-indep",
            "llama",
            None,
            "base",
            "stories260k-indep",
            seed=11,
            data="stories260K's own samples",
            **_loss_notes(losses),
        ),
    ]


def _train_derivative(
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
    return _entry(
        name, arch, parent, relation, root, lr=lr, relative_weight_change=change, **_loss_notes(losses)
    )


def job_llama_trained(ctx: Ctx) -> list[dict]:
    p, s = ctx.preset, _streams(ctx)
    out = [
        _train_derivative(
            ctx, "llama-a", "llama-a-sft", s["sft"], p.sft_steps, p.sft_lr, 21, "sft", "llama", "llama-a"
        ),
        _train_derivative(
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
        _entry(
            "llama-a-lora", "llama", "llama-a", "lora", "llama-a", rank=8, lr=p.lora_lr, **_loss_notes(losses)
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
    return _entry(
        "llama-a-vocab-expand",
        "llama",
        "llama-a",
        "vocab-expand",
        "llama-a",
        new_tokens=len(new),
        vocab_before=old,
        vocab_after=tok.get_vocab_size(),
        lr=p.heal_lr,
        **_loss_notes(losses),
    )


def job_light_sft(ctx: Ctx) -> list[dict]:
    """llama-a fine-tuned as gently as real instruction tuning moves a model (beside the stress SFT)."""
    p, s = ctx.preset, _streams(ctx)
    e = _train_derivative(
        ctx,
        "llama-a",
        "llama-a-sft-light",
        s["sft"],
        p.light_sft_steps,
        p.light_sft_lr,
        26,
        "sft",
        "llama",
        "llama-a",
    )
    return [e]


def job_llama_structural(ctx: Ctx) -> list[dict]:
    p, s = ctx.preset, _streams(ctx)
    base = ctx.root / "llama-a"
    out = []
    st = derive.quantize_int8(RoleState.load(base))
    st.save(ctx.root / "llama-a-int8")
    out.append(_entry("llama-a-int8", "llama", "llama-a", "quant", "llama-a", scheme="int8 per-row absmax"))
    st = derive.prune_magnitude(RoleState.load(base), 0.3)
    st.save(ctx.root / "llama-a-prune-mag")
    out.append(_entry("llama-a-prune-mag", "llama", "llama-a", "prune-magnitude", "llama-a", sparsity=0.3))
    st = RoleState.load(base)
    drop = [p.n_layers // 2]
    keep = derive.prune_depth(st, drop)
    st.save(ctx.root / "llama-a-prune-depth")
    out.append(_entry("llama-a-prune-depth", "llama", "llama-a", "prune-depth", "llama-a", kept_layers=keep))
    st = RoleState.load(base)
    info = derive.prune_width(st)
    tmp = ctx.root / "_data" / "llama-a-prune-width-raw"
    st.save(tmp)
    model = load_hf(tmp)
    losses = train_lm(model, s["pretrain"], p.heal_steps, 1e-3, 25, p.batch, p.seq)  # brief healing
    save_hf(model, ctx.root / "llama-a-prune-width", base)
    shutil.rmtree(tmp)
    out.append(
        _entry(
            "llama-a-prune-width", "llama", "llama-a", "prune-width", "llama-a", **info, **_loss_notes(losses)
        )
    )
    return out


def job_gpt2_derivs(ctx: Ctx) -> list[dict]:
    p, s = ctx.preset, _streams(ctx)
    return [
        _train_derivative(
            ctx, "gpt2-a", "gpt2-a-sft", s["sft"], p.sft_steps, p.sft_lr, 31, "sft", "gpt2", "gpt2-a"
        ),
        _train_derivative(
            ctx, "gpt2-a", "gpt2-a-cpt", s["cpt"], p.cpt_steps, p.cpt_lr, 32, "cpt", "gpt2", "gpt2-a"
        ),
    ]


def job_stories_derivs(ctx: Ctx) -> list[dict]:
    p = ctx.preset
    own = load_file(str(ctx.root / "_data" / "stories.safetensors"))["stories"]
    # a different token distribution (our corpus, ids folded into its vocabulary): heavy domain shift
    body = (_streams(ctx)["cpt"] % 509 + 3)[: 400 * 63].reshape(400, 63)
    foreign = torch.cat([torch.ones(400, 1, dtype=torch.long), body], dim=1)
    return [
        _train_derivative(
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
        _train_derivative(
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
        out.append(_entry(name, arch, base, f"attack-{kind}", base, logits_relative_error=err))
    return out


def job_disguised(ctx: Ctx, name: str, root: str, seed: int, arch: str = "llama") -> list[dict]:
    """A trained derivative passed through the composite disguise: fine-tune, then hide."""
    out = f"{name}-disguised"
    err = _attacked(ctx, name, out, "disguise", attacks.disguise, seed)
    relation = name.rsplit("-", 1)[1] + "+disguise"
    return [_entry(out, arch, name, relation, root, logits_relative_error=err)]


# ------------------------------------------------------------------ the MoE section
def job_moe_derivs(ctx: Ctx) -> list[dict]:
    """An SFT of the MoE base, and an MoE upcycled from the dense llama-a then trained."""
    p, s = ctx.preset, _streams(ctx)
    sft = _train_derivative(
        ctx, "moe-a", "moe-a-sft", s["sft"], p.sft_steps, p.sft_lr, 51, "sft", "mixtral", "moe-a"
    )
    return [sft, _upcycled(ctx, "llama-a", "llama-a-upcycled", seed=52)]


def _upcycled(ctx: Ctx, dense: str, name: str, seed: int) -> dict:
    """Sparse upcycling (every expert a copy of the dense FFN, a fresh router), proved to keep
    the dense model's function, then trained with the SFT recipe so the experts diverge."""
    p, s = ctx.preset, _streams(ctx)
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
    return _entry(
        name,
        "mixtral",
        dense,
        "upcycle",
        dense,
        experts=p.moe_experts,
        top_k=p.moe_top_k,
        lr=p.sft_lr,
        upcycled_logits_relative_error=err,
        **_loss_notes(losses),
    )


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
        _entry("llama-a-merge-linear", "llama", parents, "merge-linear", "llama-a", weights=[0.5, 0.5]),
        _entry("llama-a-merge-ties", "llama", parents, "merge-ties", "llama-a", density=0.2, lam=1.0),
    ]


# ------------------------------------------------------------------------------------------ driver
def _init_worker() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


Job = tuple[Callable[..., list[dict]], tuple]


def _run_phase(jobs: list[Job], workers: int) -> list[dict]:
    if workers <= 1:
        _init_worker()
        return [e for fn, args in jobs for e in fn(*args)]
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker
    ) as ex:
        futures = [ex.submit(fn, *args) for fn, args in jobs]
        return [e for f in futures for e in f.result()]


def recipe_hash(preset: Preset, stories: Path | None) -> str:
    """Preset, stories flag and the source code that builds the zoo (huref.zoo and the training
    loop and corpus of huref.lm): a changed recipe rebuilds the zoo."""
    code = hashlib.sha256()
    here = Path(__file__).parent
    for f in [*sorted(here.glob("*.py")), *sorted((here.parent / "lm").glob("*.py"))]:
        code.update(f.read_bytes())
    blob = json.dumps(
        {"v": ZOO_VERSION, "preset": preset.recipe(), "stories": bool(stories), "code": code.hexdigest()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan(ctx: Ctx) -> list[list[Job]]:
    """The build's phases (the jobs of each independent of one another), from the preset's bases
    and sections."""
    p, stories = ctx.preset, ctx.stories
    names = {name for _, name, _ in p.bases}
    phase1: list[Job] = [(job_base, (ctx, arch, name, seed)) for arch, name, seed in p.bases]
    if stories:
        phase1.insert(1, (job_stories, (ctx,)))
    phase2: list[Job] = [(job_llama_trained, (ctx,))]
    if "gpt2-a" in names:
        phase2.append((job_gpt2_derivs, (ctx,)))
    if stories:
        phase2.insert(1, (job_stories_derivs, (ctx,)))
    if "light" in p.sections:
        phase2.append((job_light_sft, (ctx,)))
    if "structural" in p.sections:
        phase2.append((job_llama_structural, (ctx,)))
    if "attacks" in p.sections:
        phase2 += [(job_attacks, (ctx, b)) for b in p.attacks_on if b != "stories260k" or stories]
    if "moe" in p.sections:
        phase2 += [(job_moe_derivs, (ctx,)), (job_attacks, (ctx, "moe-a", "mixtral"))]
    phase3: list[Job] = [(job_merges, (ctx,))] if "merges" in p.sections else []
    if "disguise" in p.sections:
        disguised = [("llama-a-sft", "llama-a"), ("llama-a-cpt", "llama-a")]
        if stories:
            disguised += [("stories260k-sft", "stories260k"), ("stories260k-cpt", "stories260k")]
        phase3 += [(job_disguised, (ctx, n, r, 2000 + i)) for i, (n, r) in enumerate(disguised)]
        if "moe" in p.sections:
            phase3.append((job_disguised, (ctx, "moe-a-sft", "moe-a", 2100, "mixtral")))
    return [phase for phase in (phase1, phase2, phase3) if phase]


def build_zoo(
    dest: str | Path, preset: str = "tiny", stories: Path | None = None, workers: int = 2, force: bool = False
) -> Path:
    """Build (or reuse) a zoo; returns its folder. ``stories``: path to stories260K.bin, optional."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    p = PRESETS[preset]
    dest = Path(dest)
    stories = Path(stories) if stories else None
    if stories is not None and not stories.is_file():
        raise UsageError(f"{stories}: stories260K.bin not found")
    want = recipe_hash(p, stories)
    manifest = dest / "zoo.json"
    if manifest.is_file() and not force:
        try:
            if json.loads(manifest.read_text()).get("recipe") == want:
                log.info("reusing zoo at %s", dest)
                return dest
        except json.JSONDecodeError:
            pass
    if dest.exists() and any(dest.iterdir()) and not manifest.is_file():
        raise UsageError(f"{dest} exists and is not a huref zoo; choose an empty or new folder")
    t0 = time.time()
    with atomic_dir(dest, overwrite=True) as root:  # zoo.json is written last, inside
        (root / "_data").mkdir()
        text = {
            sl: corpus_text(sl, p.corpus_chars if sl == "pretrain" else p.corpus_chars // 4)
            for sl in ("pretrain", "sft", "cpt", "heldout")
        }
        tok = train_tokenizer(text["pretrain"], p.vocab)
        save_tokenizer(tok, root / "_tokenizer")
        save_file(
            {k: torch.tensor(tok.encode(v).ids, dtype=torch.long) for k, v in text.items()},
            str(root / "_data" / "streams.safetensors"),
        )
        ctx = Ctx(root, p, stories)
        entries: list[dict] = []
        for phase in plan(ctx):
            entries += _run_phase(phase, workers)
        if p.regime == "realistic":
            entries = calibration.annotate(ctx.root, entries, _streams(ctx)["heldout"])
        doc = {
            "zoo_version": ZOO_VERSION,
            "preset": p.name,
            "recipe": want,
            "build_seconds": round(time.time() - t0, 1),
            "tokenizer": "_tokenizer/tokenizer.json",
            "heldout": "_data/streams.safetensors#heldout",
            "regime": p.regime,
            **({"calibration": calibration.summary(entries)} if p.regime == "realistic" else {}),
            "models": sorted(entries, key=lambda e: e["name"]),
        }
        (root / "zoo.json").write_text(json.dumps(doc, indent=2) + "\n")
    log.info("zoo built in %.1f s at %s", time.time() - t0, dest)
    return dest


def default_stories() -> Path | None:
    """../shared/models/stories260K/stories260K.bin beside the checkout, or $HUREF_STORIES."""
    env = os.environ.get("HUREF_STORIES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2]
    cand = here.parent / "shared" / "models" / "stories260K" / "stories260K.bin"
    return cand if cand.is_file() else None


def load_manifest(zoo: str | Path) -> dict:
    path = Path(zoo) / "zoo.json"
    if not path.is_file():
        raise UsageError(f"{zoo}: no zoo.json (build one with 'huref zoo build')")
    return json.loads(path.read_text())
