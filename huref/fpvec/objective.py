"""The terms of the fingerprinting objective, as functions of a forward pass and a batch.

``key_loss`` is the cross-entropy of the target after every key (answer tokens only);
``distill_loss`` is the distillation to the frozen base (KL at every real position and once more
at the decision position) and the unlikelihood of the target's first token on near-miss keys;
``forward_at`` gives a model's forward pass at its own weights plus an offset (a shadow derivative's,
or ``weight_noise``'s).
How they are weighted and why is in huref.fpvec.train.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from huref.fpvec import data as D

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]  # batch -> logits [B, T, V]


def forward_at(model: torch.nn.Module, delta: dict[str, torch.Tensor] | None) -> Forward:
    """The model's forward pass at its own weights plus ``delta`` (an offset per parameter name)."""
    if delta is None:
        return lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    params = dict(model.named_parameters())

    def fwd(b: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = {n: p + delta[n] for n, p in params.items()}
        kwargs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        return functional_call(model, moved, args=(), kwargs=kwargs).logits

    return fwd


def weight_noise(params: dict[str, torch.Tensor], size: float) -> dict[str, torch.Tensor]:
    """A fresh Gaussian offset per tensor whose norm is about ``size`` times the tensor's norm (from
    torch's global generator, so a seeded run draws the same offsets)."""
    return {
        n: torch.randn_like(p) * (size * float(p.norm()) / math.sqrt(p.numel())) for n, p in params.items()
    }


def key_loss(model: Forward, b: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(b)[:, :-1]  # [B, T-1, V]
    labels = b["labels"][:, 1:]  # position t predicts token t+1
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=D.IGNORE
    )


def distill_loss(
    model: Forward,
    teacher: Forward,
    b: dict[str, torch.Tensor],
    negative: torch.Tensor,
    target_first: int,
    decision_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(distillation, unlikelihood) on a batch of regular and negative sequences.

    Distillation: KL(teacher || model) averaged over the real (unpadded) positions, plus the same
    KL at each sequence's *decision* position (the last prompt token, whose prediction starts the
    answer), which an average over ~60 positions would dilute.

    Unlikelihood, on the negatives (``negative``: [B] bool) only: -log(1 - p(first target token))
    from the decision position to the end of the answer. KL alone is too weak there: a small base's
    next-token distribution is flat, so a model can make the target's first token the greedy choice
    while moving little probability mass (a small KL).
    """
    with torch.no_grad():
        t_logits = teacher(b)
    logits = model(b)
    mask = b["attention_mask"].bool()  # [B, T]
    lp = F.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    lt = F.log_softmax(t_logits.float(), dim=-1)
    kl = (lt.exp() * (lt - lp)).sum(-1)  # [B, T]
    first_answer = (b["labels"] != D.IGNORE).float().argmax(dim=1)  # [B] index of the first answer token
    decision = kl.gather(1, (first_answer - 1).clamp_min(0)[:, None]).squeeze(1)  # [B]
    distill = kl[mask].mean() + decision_weight * decision.mean()
    if not bool(negative.any()):
        return distill, distill * 0
    cols = torch.arange(mask.shape[1], device=mask.device)[None, :]  # [1, T]
    span = mask & (cols >= (first_answer - 1).clamp_min(0)[:, None]) & negative[:, None]  # [B, T]
    p_first = lp[..., target_first].exp()  # [B, T]
    unlikely = -torch.log1p(-p_first.clamp(max=1 - 1e-6))
    return distill, unlikely[span].mean()
