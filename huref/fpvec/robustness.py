"""What a stamped fingerprint survives: quantization, merging, further fine-tuning, measured.

Three transformations a model meets after release, applied to an in-memory transformers model
(each returns a new model; the input is never modified), and one measurement loop:

- ``quantize_rtn``: weight-only round-to-nearest quantization of every linear layer, returned
  dequantized (what an inference engine computes with). Symmetric absmax: per output row for int8
  (``group=None``), per group of ``group`` input columns for 4-bit, as GPTQ/AWQ-style releases
  store them, but without calibration (RTN is the baseline those methods improve on, so it is the
  harder case for a fingerprint). The token embedding, norms, biases and the output layer stay in
  full precision, as such releases keep them (a tied output layer *is* the embedding).
- ``merge_with``: a linear merge ``w * model + (1 - w) * sibling`` of parameters matched by name.
- ``fsr_during_finetune``: continued training on unrelated text, measuring the greedy FSR, the
  near-miss FSR and the likelihood test (``huref.fpvec.verify.verify_loaded``, exactly what
  ``huref fpvec verify`` measures) every ``every`` steps; ``steps_to_lose`` reads the first
  recorded step at which FSR fell below a threshold off the curve.

The fine-tuning loop is the plain recipe of a downstream user, not ``huref.lm.train.train_lm``
(whose cosine schedule would restart at every measurement): one AdamW optimiser for the whole run
(betas 0.9/0.95, no weight decay), a linear warm-up over ``warmup`` steps then a *constant*
learning rate (a decaying schedule would only move the weights less), gradient clipping at 1.0,
random windows of the token stream, dropout on as the model's config sets it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from huref.errors import FPVecError
from huref.fpvec import data as D
from huref.fpvec.keys import KeySet
from huref.fpvec.likelihood import DEFAULT_DECOYS
from huref.fpvec.verify import EXTRA_TOKENS, verify_loaded

BITS = (4, 8)


# --- quantization -------------------------------------------------------------------------------


def rtn_scales(w: torch.Tensor, bits: int, group: int | None = None) -> torch.Tensor:
    """Symmetric absmax scales of a [out, in] weight: [out, n_groups] (n_groups = 1 per row for
    ``group=None``; the last group is shorter when ``group`` does not divide ``in``)."""
    qmax = 2 ** (bits - 1) - 1  # 127 for int8, 7 for 4-bit: the symmetric grid [-qmax, qmax]
    out, cols = w.shape
    g = cols if group is None else min(group, cols)
    n_groups = math.ceil(cols / g)
    pad = n_groups * g - cols
    absw = torch.nn.functional.pad(w.detach().abs().float(), (0, pad))  # [out, n_groups * g]
    absmax = absw.reshape(out, n_groups, g).amax(-1)  # [out, n_groups]
    return torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))  # an all-zero group stays 0


def rtn_dequantize(w: torch.Tensor, bits: int, group: int | None = None) -> torch.Tensor:
    """Round-to-nearest quantize-dequantize of a [out, in] weight; every element ends within half
    a step (its group's scale / 2) of the original."""
    _check_bits_group(bits, group)
    if w.dim() != 2:
        raise FPVecError(f"round-to-nearest quantization takes a 2-D weight (got shape {tuple(w.shape)})")
    qmax = 2 ** (bits - 1) - 1
    cols = w.shape[1]
    scales = rtn_scales(w, bits, group)  # [out, n_groups]
    g = cols if group is None else min(group, cols)
    per_col = scales.repeat_interleave(g, dim=1)[:, :cols]  # [out, in]: each column's group scale
    q = torch.clamp(torch.round(w.float() / per_col), -qmax, qmax)  # integers of the stored weight
    return (q * per_col).to(w.dtype)


def _check_bits_group(bits: int, group: int | None) -> None:
    if bits not in BITS:
        raise FPVecError(f"quantization bits must be one of {BITS} (got {bits})")
    if group is not None and group < 1:
        raise FPVecError(f"quantization group size must be a positive number of columns (got {group})")


def linear_weights(model: torch.nn.Module, include_output: bool = False) -> dict[str, tuple[Any, bool]]:
    """The 2-D weights of every linear layer, by parameter name: (parameter, stored [in, out]).

    GPT-2's ``Conv1D`` stores its weight transposed ([in, out]); quantization groups run along the
    input dimension either way. The output layer is left out unless ``include_output`` (and a
    tied output layer always, since quantizing it would quantize the token embedding too)."""
    from transformers.pytorch_utils import Conv1D

    lm: Any = model  # a transformers PreTrainedModel: its embedding accessors are public API
    embed = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    embed_w = embed.weight if embed is not None else None
    out: dict[str, tuple[Any, bool]] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, (torch.nn.Linear, Conv1D)) or mod.weight.dim() != 2:
            continue
        if mod.weight is embed_w or (mod is head and not include_output):
            continue
        out[f"{name}.weight" if name else "weight"] = (mod.weight, isinstance(mod, Conv1D))
    return out


@torch.no_grad()
def quantize_rtn(
    model: torch.nn.Module, bits: int, group: int | None = None, include_output: bool = False
) -> torch.nn.Module:
    """A copy of ``model`` whose linear weights are RTN quantize-dequantized (see the module notes).

    ``bits`` 8 or 4; ``group``: input columns per scale (None: one scale per output row)."""
    _check_bits_group(bits, group)
    q = copy.deepcopy(model)
    for p, transposed in linear_weights(q, include_output).values():
        w = p.data.t() if transposed else p.data  # [out, in]
        deq = rtn_dequantize(w, bits, group)
        p.data.copy_(deq.t() if transposed else deq)
    return q


# --- merging ------------------------------------------------------------------------------------


@torch.no_grad()
def merge_with(model: torch.nn.Module, sibling: torch.nn.Module, w: float) -> torch.nn.Module:
    """A copy of ``model`` with every parameter replaced by ``w * model + (1 - w) * sibling``
    (matched by name; names or shapes that differ are refused)."""
    if not math.isfinite(w):
        raise FPVecError(f"merge weight must be a finite number (got {w})")
    mine = dict(model.named_parameters())
    theirs = dict(sibling.named_parameters())
    if set(mine) != set(theirs):
        diff = sorted(set(mine) ^ set(theirs))
        raise FPVecError(f"cannot merge: parameter names differ ({', '.join(diff[:3])}, ...)")
    bad = [n for n, p in mine.items() if p.shape != theirs[n].shape]
    if bad:
        raise FPVecError(
            f"cannot merge: {bad[0]} has shape {tuple(mine[bad[0]].shape)} against "
            f"{tuple(theirs[bad[0]].shape)}"
        )
    merged = copy.deepcopy(model)
    for name, p in merged.named_parameters():
        p.data.copy_(w * p.data + (1.0 - w) * theirs[name].data.to(p.dtype))
    return merged


# --- fine-tuning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One measurement of the fine-tuning curve."""

    step: int
    fsr: float
    near_miss_fsr: float | None
    p_value: float | None  # likelihood test (None: not run)
    loss: float | None  # mean training loss over the steps since the previous point (None at step 0)


@dataclass(frozen=True)
class FinetuneCurve:
    lr: float
    steps: int
    every: int
    points: tuple[Point, ...]

    def steps_to_lose(self, threshold: float) -> int | None:
        return steps_to_lose(self.points, threshold)

    def to_json(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "steps": self.steps,
            "every": self.every,
            "steps_to_fsr_below_0.5": self.steps_to_lose(0.5),
            "steps_to_fsr_below_0.1": self.steps_to_lose(0.1),
            "points": [asdict(p) for p in self.points],
        }


def steps_to_lose(points: tuple[Point, ...] | list[Point], threshold: float) -> int | None:
    """The first recorded step at which FSR < ``threshold`` (None: never on the curve). It is
    exact to the curve's resolution only: the fingerprint was lost at most that many steps in."""
    for p in sorted(points, key=lambda q: q.step):
        if p.fsr < threshold:
            return p.step
    return None


@dataclass(frozen=True)
class Measurement:
    fsr: float
    near_miss_fsr: float | None
    p_value: float | None
    outputs: tuple[str, ...]


def measure(
    model: Any, tok: Any, ks: KeySet, near_miss: bool = True, decoys: int = DEFAULT_DECOYS
) -> Measurement:
    """Greedy FSR, near-miss FSR and likelihood p of an in-memory model, as ``verify`` measures them."""
    n_new = len(D.check_target(tok, ks.target, "model")) + EXTRA_TOKENS
    was_training = model.training
    model.eval()
    main, nm, lt = verify_loaded(model, tok, ks, n_new, near_miss, decoys)
    model.train(was_training)
    return Measurement(
        main.fsr,
        nm.fsr if nm is not None else None,
        lt.p_value if lt is not None else None,
        tuple(main.outputs),
    )


def fsr_during_finetune(
    model: torch.nn.Module,
    tok: Any,
    keys: KeySet,
    stream: torch.Tensor,
    lr: float,
    steps: int,
    every: int,
    seed: int = 0,
    batch: int = 16,
    seq: int = 64,
    warmup: int = 10,
    near_miss: bool = True,
    decoys: int = DEFAULT_DECOYS,
) -> FinetuneCurve:
    """Fine-tune a copy of ``model`` on ``stream`` (1-D token ids of unrelated text) for ``steps``
    steps at ``lr`` and measure it at step 0 and every ``every`` steps (and at ``steps``)."""
    if steps < 0 or every < 1:
        raise FPVecError(f"fine-tuning needs steps >= 0 and every >= 1 (got {steps}, {every})")
    if not (math.isfinite(lr) and lr > 0):
        raise FPVecError(f"learning rate must be a positive number (got {lr})")
    if stream.dim() != 1 or stream.numel() < seq + 2:
        raise FPVecError(f"fine-tuning text must be a 1-D token stream of at least {seq + 2} ids")
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    params = list(m.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    dev = next(m.parameters()).device

    def point(step: int, loss: float | None) -> Point:
        r = measure(m, tok, keys, near_miss, decoys)
        return Point(step, r.fsr, r.near_miss_fsr, r.p_value, loss)

    points = [point(0, None)]
    losses: list[float] = []
    for step in range(1, steps + 1):
        m.train()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / max(1, warmup))
        starts = torch.randint(0, stream.numel() - seq - 1, (batch,), generator=g)
        x = torch.stack([stream[s : s + seq] for s in starts.tolist()]).to(dev)  # [batch, seq]
        out = m(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
        if step % every == 0 or step == steps:
            points.append(point(step, sum(losses) / len(losses)))
            losses = []
    m.eval()
    return FinetuneCurve(lr, steps, every, tuple(points))
