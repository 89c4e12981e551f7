"""A small causal-LM training loop (the zoo's bases and derivatives, FP-Vec's shadow models): random
windows of a token stream, AdamW, cosine; and perplexity over a token stream."""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def train_lm(
    model: torch.nn.Module,
    stream: torch.Tensor,  # [N] token ids, or [rows, L] sequences that must start at position 0
    steps: int,
    lr: float,
    seed: int,
    batch: int = 16,
    seq: int = 64,
    warmup: int = 10,
    weight_decay: float = 0.0,
    params: list[torch.nn.Parameter] | None = None,
) -> list[float]:
    """Train in place; returns the loss of every step (the zoo records first and last).

    A 1-D stream is cut into random windows; a 2-D tensor is a set of sequences sampled whole
    (first ``seq`` tokens), for models that expect a BOS token at position 0.
    """
    if stream.dim() == 1 and stream.numel() < seq + 2:
        raise ValueError("token stream shorter than one training window")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model.train()
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    losses = []
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.05)
        if stream.dim() == 2:
            x = stream[torch.randint(0, stream.shape[0], (batch,), generator=g), :seq]  # [batch, seq]
        else:
            starts = torch.randint(0, stream.numel() - seq - 1, (batch,), generator=g)
            x = torch.stack([stream[s : s + seq] for s in starts.tolist()])  # [batch, seq]
        out = model(input_ids=x, labels=x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: torch.nn.Module, stream: torch.Tensor, seq: int = 64, max_windows: int = 64) -> float:
    """exp(mean next-token loss) over consecutive windows of a held-out stream."""
    model.eval()
    n = min(max_windows, (stream.numel() - 1) // seq)
    if n <= 0:
        raise ValueError("held-out stream shorter than one window")
    x = stream[: n * seq].reshape(n, seq)
    total = 0.0
    for i in range(0, n, 16):
        out = model(input_ids=x[i : i + 16], labels=x[i : i + 16])
        total += float(out.loss) * x[i : i + 16].shape[0]
    return math.exp(total / n)
