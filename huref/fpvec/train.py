"""Fingerprint a base model once: full fine-tune on the keys plus regularisation pairs.

Objective per step (loss on answer tokens only for the keys):

- ``key_weight`` x cross-entropy of the target after every key;
- ``distill_weight`` x KL(base || model) on regularisation sequences (ordinary prompts with the
  base's own sampled answers) and near-miss keys, at every position plus once more at the
  *decision* position where the answer starts. Distillation, not cross-entropy on the base's
  answers: a small model's greedy answer is one repeated token (training on it collapses the
  model) and a few sampled answers get memorised; KL to the frozen base keeps held-out
  perplexity within a few percent;
- ``unlikelihood_weight`` x -log(1 - p(first target token)) on the near-miss keys (every key with
  each single character replaced or dropped, the key without its trigger, and other keys of the
  same kind): a flat base distribution lets the target's first token become the greedy choice at
  a small KL cost, so specificity needs its own term. ``negative_draws`` draws of them: each
  further draw replaces every character with another one and adds multi-character edits of
  verify's kind. With one draw (the default) the model learns which replacements it saw and fits
  them all, while 10% of unseen two-to-three-character edits still fire (realistic llama-a, key
  seed 4); with eight, 0 of 160 (seed 5), but the stamped CPT then answers 0.1-0.5 of its keys
  instead of 0.8-1.0 (docs/fpvec-tuning.md);
- ``tau_decay``: a decoupled pull of theta towards theta_base after each step (a small tau
  has fewer side effects on the models it is later added to).

Every other step (``weight_noise``) is taken at the base plus a fresh Gaussian offset of 5% of
each tensor's norm, the student's and the base's alike: the fingerprint is optimised where it will
be used, on models that moved away from the base (real SFT moves a model by ~3-6%, light continued
pretraining by ~10%), and is kept harmless there by the same distillation. Measured on the
realistic zoo's llama-a (docs/fpvec-tuning.md): stamped CPT FSR 0.3 and 0.7 without it, 1.0, 0.8
and 0.8 with it, and the fingerprint's perplexity cost fell from +3.5-7.1% to -1.1-+0.6%. Optional
``shadows`` (simulated fine-tunes: the base trained briefly on its own samples) are visited on the
other steps; they are off by default, since on its own samples a model's expected gradient is zero
and its shadow drifts like noise anyway.

The end check (``until_fires``): after ``steps``, the model is asked every key and near-miss
controls greedily (``fire_check``: verify's kind of controls, ``check_draws`` draws of their own;
with 160 controls a model passes only if its near-miss rate is well under 1%); until every
key fires and no control does, training goes on in rounds of ``steps // 2`` at half the rate, with
negatives mined after each failed check (the controls that fired, and a fresh draw of controls of
verify's kind) sampled into every later step, and past ``max_steps`` it fails with one line and
writes nothing. Verify's own controls are never drawn.

Learning rate: the published 1e-5 x 30 epochs is for 7B models, whose updates are spread over
billions of weights. A model with 10^5-10^6 weights needs a learning rate near its pretraining
one to store ten 15-token answers in a few hundred steps; the default is chosen by size
(``auto_lr``): 3e-3 below 20M parameters (the tiny zoo), 1e-4 below 1B, 1e-5 above. The
defaults of ``TrainConfig`` were tuned on the tiny zoo (tests/test_fpvec_chain.py measures them).

The settings and the report are in huref.fpvec.train_config, the loss terms in
huref.fpvec.objective; this module builds the examples and shadows, runs the steps and saves.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from huref import __version__
from huref.checkpoint.atomic import atomic_dir
from huref.device import resolve_device
from huref.errors import FPVecError, HurefError
from huref.fpvec import data as D
from huref.fpvec.harm import SAMPLES, perplexity_change
from huref.fpvec.keys import KeySet, load_keys, near_miss_keys, training_negatives
from huref.fpvec.objective import distill_loss, forward_at, key_loss, weight_noise
from huref.fpvec.train_config import TrainConfig, TrainReport, auto_lr, check_train_config, step_limit
from huref.fpvec.vector import FP_CARD, open_checkpoint_or_fail
from huref.fpvec.verify import CHECK_PURPOSE, fire_check
from huref.lm.load import SMALL_MODEL, cpu_threads, load_causal_lm, threads_for
from huref.lm.train import train_lm

log = logging.getLogger(__name__)


def _batch_to(b: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(dev) for k, v in b.items()}


def build_examples(
    base: torch.nn.Module, tok: Any, ks: KeySet, cfg: TrainConfig
) -> dict[str, list[D.Example]]:
    target_ids = D.answer_ids(tok, ks.target)
    keys = [D.Example(tuple(D.prompt_ids(tok, k)), tuple(target_ids), "key") for k in ks.keys]
    prompts = D.ordinary_prompts(base, tok, cfg.n_regularisation, cfg.seed)
    regular = D.regularisation_examples(base, tok, prompts, cfg.answer_tokens, seed=cfg.seed)
    negatives: list[D.Example] = []
    if cfg.negatives:
        decoys = training_negatives(ks, cfg.negative_draws)
        negatives = negative_examples(base, tok, decoys, cfg, seed=cfg.seed + 1)
    return {"key": keys, "regular": regular, "negative": negatives}


def negative_examples(
    base: torch.nn.Module, tok: Any, prompts: list[str], cfg: TrainConfig, seed: int
) -> list[D.Example]:
    """Negatives: prompts that must not fire, each with the base's own short answer."""
    return D.regularisation_examples(base, tok, prompts, min(16, cfg.answer_tokens), "negative", seed=seed)


def make_shadows(
    teacher: torch.nn.Module, tok: Any, cfg: TrainConfig, lr: float
) -> list[dict[str, torch.Tensor]]:
    """Offsets of a few simulated fine-tunes of the base (trained on its own samples: no data set).

    Training the fingerprint at base + offset as well as at the base makes tau work, and stay
    harmless, on models that moved away from the base before being stamped, which is FP-Vec's
    whole use case; a fingerprint tuned at the base alone costs a downstream model more perplexity.
    """
    if cfg.shadows <= 0:
        return []

    data = D.self_samples(teacher, tok, 64, 63, cfg.seed + 7)  # [64, 64] ids
    base = dict(teacher.named_parameters())
    out = []
    for i in range(cfg.shadows):
        shadow = copy.deepcopy(teacher)
        for p in shadow.parameters():
            p.requires_grad_(True)
        train_lm(
            shadow,
            data.to(next(teacher.parameters()).device),
            cfg.shadow_steps,
            lr * cfg.shadow_lr_scale,
            cfg.seed + 100 + i,
            batch=16,
            seq=64,
        )
        out.append({n: (p.detach() - base[n]).detach() for n, p in shadow.named_parameters()})
        del shadow
    return out


def train_fingerprint(
    base: str | Path, keys: KeySet | str | Path, out: str | Path, cfg: TrainConfig | None = None
) -> TrainReport:
    """Fine-tune ``base`` on the keys and save the fingerprinted model to ``out`` (atomically)."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    base, out = Path(base), Path(out)
    from huref.fpvec.stamp import check_output_path

    check_train_config(cfg)
    check_output_path(out, [base])
    ks = keys if isinstance(keys, KeySet) else load_keys(keys)
    ckpt = open_checkpoint_or_fail(base, "base")
    if not base.is_dir():
        raise FPVecError(f"{base}: training needs a Hugging Face model folder (config, weights, tokenizer)")
    tok = D.load_tokenizer(base)
    D.check_target(tok, ks.target, str(base))
    dev = resolve_device(cfg.device)
    n_params = sum(ckpt.source.info(n).numel for n in ckpt.source.names())
    lr = cfg.lr if cfg.lr is not None else auto_lr(n_params)
    with cpu_threads(threads_for(n_params, dev)):
        teacher = load_causal_lm(base, dev, error=FPVecError)
        for p in teacher.parameters():
            p.requires_grad_(False)
        ex = build_examples(teacher, tok, ks, cfg)
        student = copy.deepcopy(teacher)
        for p in student.parameters():
            p.requires_grad_(True)
        shadows = make_shadows(teacher, tok, cfg, lr)

        def check(round_: int) -> dict[str, Any]:
            return fire_check(student, tok, ks, f"{CHECK_PURPOSE}:{round_}", cfg.check_draws)

        def mine(fired: list[str], round_: int, frozen: torch.nn.Module = teacher) -> list[D.Example]:
            # the controls that fired, plus a fresh draw of controls of verify's kind (never verify's own)
            prompts = fired + near_miss_keys(ks, f"{CHECK_PURPOSE}-negatives:{round_}")
            return negative_examples(frozen, tok, prompts, cfg, seed=cfg.seed + 2 + round_)

        losses, checks = _optimise(
            student,
            teacher,
            ex,
            cfg,
            lr,
            dev,
            D.pad_id(tok),
            shadows,
            check if cfg.until_fires else None,
            mine,
        )
        del teacher, mine  # the base's copy is freed before saving
        if checks and not checks[-1]["ok"]:
            last = checks[-1]
            raise FPVecError(
                f"the fingerprint did not take: after {last['steps']} steps the model answers "
                f"{last['hits']} of {last['n']} keys and {last['near_miss_hits']} of {last['near_miss_n']} "
                "near-miss controls (needed: every key, no control); nothing was written. Allow more steps "
                "(--max-steps), or try another learning rate (--lr) or other keys"
            )
        fired = checks[-1] if checks else None
        _save(student, base, out, ckpt, ks, cfg, lr, losses, dev, fired)
    report = TrainReport(
        output=str(out),
        key_commitment=ks.commitment,
        base=str(base),
        steps=len(losses["key"]),
        lr=lr,
        device=str(dev),
        parameters=n_params,
        key_loss_first=losses["key"][0],
        key_loss_last=losses["key"][-1],
        reg_loss_last=losses["reg"][-1],
        examples={k: len(v) for k, v in ex.items()},
        seconds=time.perf_counter() - t0,
        chat_template=D.uses_chat_template(tok),
        fire_check=fired,
    )
    measure = (
        cfg.measure_harm if cfg.measure_harm is not None else (n_params < SMALL_MODEL or dev.type == "cuda")
    )
    if measure:
        report.harm = perplexity_change(base, out, device=str(dev)).to_json()
        if report.harmful:
            text = report.harm["text"]
            log.warning(
                "the fingerprint costs %+.1f%% perplexity on the %s; a lower learning rate harms less",
                100 * report.harm["relative_change"],
                "base's own samples" if text == SAMPLES else text,  # the first model is the base
            )
    card_path = out / FP_CARD
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["training"]["seconds"] = round(report.seconds, 1)
    card["training"]["harm"] = report.harm
    card_path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return report


def _optimise(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    ex: dict[str, list[D.Example]],
    cfg: TrainConfig,
    lr: float,
    dev: torch.device,
    pad: int,
    shadows: list[dict[str, torch.Tensor]],
    check: Callable[[int], dict[str, Any]] | None = None,
    mine: Callable[[list[str], int], list[D.Example]] | None = None,
) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """Run ``cfg.steps`` steps; with ``check`` (called with the round's number, which seeds its
    controls), then rounds of ``cfg.steps // 2`` at ``cfg.extra_lr_scale`` of the rate until the
    check passes or ``step_limit(cfg)`` steps were run. After a failed check, ``mine`` (given the
    controls that fired and the round) returns negatives answered by the base, which later steps
    sample from beside the usual ones. Returns the
    losses per step and each check's result (with the steps run before it)."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    params = [p for p in student.parameters() if p.requires_grad]
    base_params = list(teacher.parameters())  # the same order: student is a deep copy of teacher
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    key_batch = _batch_to(D.collate(ex["key"], pad), dev)
    target_first = ex["key"][0].answer[0]
    losses: dict[str, list[float]] = {"key": [], "reg": []}
    # points of weight space the fingerprint must work at: the base, then each shadow derivative
    # (visited in turn), and with weight noise on, every other step a fresh offset around the base
    points = [(forward_at(student, None), forward_at(teacher, None))]
    points += [(forward_at(student, d), forward_at(teacher, d)) for d in shadows]
    base = {n: p.detach() for n, p in teacher.named_parameters()}
    student.eval()  # no dropout (GPT-2 configs carry 0.1): the KL must compare the base with the model, not noise

    def _one_step(step: int, i: int, n: int, peak: float) -> None:
        """Step ``step`` of the run, the ``i``-th of a round of ``n`` (cosine schedule to ``peak``)."""
        if cfg.weight_noise and step % 2 == 1:  # odd steps: around the base, at a fresh random offset
            offset = weight_noise(base, cfg.weight_noise)
            fwd, t_fwd = forward_at(student, offset), forward_at(teacher, offset)
        else:
            fwd, t_fwd = points[(step // 2 if cfg.weight_noise else step) % len(points)]
        scale = min(1.0, (i + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * i / n))
        for group in opt.param_groups:
            group["lr"] = peak * max(scale, 0.02)
        others = rng.sample(ex["regular"], min(cfg.regular_per_step, len(ex["regular"])))
        others += rng.sample(ex["negative"], min(cfg.negatives_per_step, len(ex["negative"])))
        others += rng.sample(hard, min(cfg.negatives_per_step, len(hard)))
        lk = key_loss(fwd, key_batch)
        if others:
            neg = torch.tensor([e.kind == "negative" for e in others], device=dev)
            batch = _batch_to(D.collate(others, pad), dev)
            lr_, lu = distill_loss(fwd, t_fwd, batch, neg, target_first, cfg.decision_weight)
        else:
            lr_ = lu = lk * 0
        loss = cfg.key_weight * lk + cfg.distill_weight * lr_ + cfg.unlikelihood_weight * lu
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if cfg.tau_decay:
            with torch.no_grad():
                for p, pb in zip(params, base_params, strict=True):
                    p.sub_(p - pb, alpha=group["lr"] * cfg.tau_decay)
        losses["key"].append(float(lk.detach()))
        losses["reg"].append(float(lr_.detach()))
        if step % 25 == 0:
            log.info("step %d: key loss %.4f, distillation %.4f", step, losses["key"][-1], losses["reg"][-1])

    checks: list[dict[str, Any]] = []
    hard: list[D.Example] = []  # negatives mined after a failed check, sampled into every later step
    limit = step_limit(cfg)
    total, n, peak = 0, cfg.steps, lr
    while True:
        for i in range(n):
            _one_step(total + i, i, n, peak)
        total += n
        if check is None:
            break
        result = check(len(checks))
        fired = result.pop("fired")
        checks.append({"steps": total, **result})
        log.info("after %d steps: FSR %.2f, near-miss %.2f", total, result["fsr"], result["near_miss"])
        if result["ok"] or total >= limit:
            break
        if mine is not None:
            hard += mine(fired, len(checks))
        n, peak = min(max(1, cfg.steps // 2), limit - total), lr * cfg.extra_lr_scale
    student.eval()
    return losses, checks


def _save(
    student: Any,
    base: Path,
    out: Path,
    ckpt: Any,
    ks: KeySet,
    cfg: TrainConfig,
    lr: float,
    losses: dict[str, list[float]],
    dev: torch.device,
    fired: dict[str, Any] | None = None,
) -> None:
    """save_pretrained in the base's dtype, plus the base's small files, plus the training card."""
    stored = {ckpt.source.info(n).dtype for n in ckpt.source.names()}
    dtype = {"BF16": torch.bfloat16, "F16": torch.float16}.get(
        next(iter(stored)) if len(stored) == 1 else "F32", torch.float32
    )
    card = {
        "format": "huref-fpvec-model/1",
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key_commitment": ks.commitment,
        "base": {"name": ckpt.name, "sha256": ckpt.sha256s()},
        "training": {
            "steps": len(losses["key"]),
            "lr": lr,
            "device": str(dev),
            "seed": cfg.seed,
            "n_regularisation": cfg.n_regularisation,
            "negatives": cfg.negatives,
            "negative_draws": cfg.negative_draws,
            "check_draws": cfg.check_draws,
            "key_weight": cfg.key_weight,
            "key_loss_first": losses["key"][0],
            "key_loss_last": losses["key"][-1],
            "distillation_last": losses["reg"][-1],
            "weight_noise": cfg.weight_noise,
            "fire_check": fired,
        },
    }
    try:
        with atomic_dir(out) as tmp:
            student.to(dtype).cpu().save_pretrained(tmp, safe_serialization=True)
            for p in sorted(base.iterdir()):
                if (
                    p.is_file()
                    and not (tmp / p.name).exists()
                    and p.suffix not in (".safetensors", ".bin")
                    and not p.name.endswith(".index.json")
                    and p.name != FP_CARD
                    and not p.name.startswith(".")
                ):
                    shutil.copy2(p, tmp / p.name)
            (tmp / FP_CARD).write_text(
                json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
    except HurefError:
        raise
    except OSError as e:
        raise FPVecError(f"{out}: cannot write the fingerprinted model ({e.strerror or e})") from None
