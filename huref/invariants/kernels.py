"""Pure kernels: the invariant terms of one layer, from token rows and role weights.

Conventions: weights are PyTorch ``Linear.weight`` ([out, in]); token rows are [n, d]. The paper
writes W = weight^T, so its X W_Q is ``x @ w_q.T`` here. Every product is formed as
(n x d) @ (d x k) first, so the cost is linear in d_ff and d and the n x n products come last.

Memory. No kernel modifies its arguments. Intermediates are freed as soon as the next product
no longer needs them, and elementwise steps work in place on buffers the kernel itself made.
``hadamard_ffn`` takes its weights in any stored dtype (bf16, fp16, fp32; widening is exact) and
forms W_gate * W_up ``FFN_BLOCK`` rows of d_ff at a time, straight into X (W_gate * W_up)^T, so no
whole float32 W_gate, W_up or their product exists. Its peak is the [n, d_ff] float32 product
plus a float32 copy of W_down (d x d_ff) plus the [n, d] product (LLaMA-2-7B shapes, n = 4096:
180 + 180 + 64 MB, then 64 + 64 MB for the last product), where the unblocked formula with
float32 weights held W_gate, W_up, their product, W_down and the [n, d_ff] product (900 MB). Each
block computes its output columns over the same full reduction over d; on CPU the result was
``torch.equal`` to the unblocked formula at LLaMA-2-7B shapes (blocking W_down's output columns was
not, at some block sizes, so W_down is used whole).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FFN_BLOCK = 1024
"""Rows of an FFN weight matrix widened to float32 at a time by ``hadamard_ffn``."""


def _like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` in ``x``'s dtype and on its device (``t`` itself when it already is)."""
    return t.to(device=x.device, dtype=x.dtype)


def expand_kv(t: torch.Tensor, n_heads: int, n_kv: int, head_dim: int) -> torch.Tensor:
    """[n, K*hd] -> [n, H*hd]: query head h reads key/value head h // (H / K), as repeat_kv does."""
    if n_heads == n_kv:
        return t
    n = t.shape[0]
    return (
        t.reshape(n, n_kv, head_dim).repeat_interleave(n_heads // n_kv, dim=1).reshape(n, n_heads * head_dim)
    )


def attn_qk(
    xq: torch.Tensor,
    xk: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int,
) -> torch.Tensor:
    """sum over heads of (xq W_Q,h)(xk W_K,g(h))^T  ->  [n, n]. Summing heads removes any
    per-head mixing C with W_Q C, W_K C^-T and any head permutation within a KV group."""
    q = xq @ w_q.t()  # [n, H*hd]
    k = expand_kv(xk @ w_k.t(), n_heads, n_kv, head_dim)  # [n, H*hd]
    return q @ k.t()


def attn_vo(
    xv: torch.Tensor,
    xo: torch.Tensor,
    w_v: torch.Tensor,
    w_o: torch.Tensor,
    n_heads: int,
    n_kv: int,
    head_dim: int,
) -> torch.Tensor:
    """(xv W_V W_O) xo^T with GQA expansion of V heads -> [n, n]; V/O mixing per head cancels."""
    v = expand_kv(xv @ w_v.t(), n_heads, n_kv, head_dim)  # [n, H*hd]
    vo = v @ w_o.t()  # [n, d]
    del v
    return vo @ xo.t()  # [n, d] @ [d, n]


def ffn_hidden(xf: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None) -> torch.Tensor:
    """Feature-space FFN response [n, d_ff]: (x W_gate) * (x W_up) for a gated FFN, x W_up else.

    Neuron permutations permute columns and up/down rescalings scale them; both cancel in
    ffn_out. Residual transforms never enter because x is already the layer's normalised input.
    """
    up = xf @ w_up.t()
    if w_gate is None:
        return up
    return (xf @ w_gate.t()).mul_(up)  # in place on the fresh gate product: one [n, d_ff] fewer


def ffn_out(h: torch.Tensor, w_down: torch.Tensor, xo: torch.Tensor) -> torch.Tensor:
    """H W_down xo^T -> [n, n]."""
    return (h @ w_down.t()) @ xo.t()


def hadamard_ffn(
    x: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None, w_down: torch.Tensor
) -> torch.Tensor:
    """The published M_f: X (W_gate ⊙ W_up) W_down X^T (⊙ of the weight matrices), or X W_1 W_2 X^T.

    The products are in ``x``'s dtype (float32 in extraction); the weights may be stored in a
    narrower one (bf16/fp16) and on the CPU, widened and moved block by block. Blocked over
    ``FFN_BLOCK`` weight rows (see the module docstring); the values equal the unblocked formula.
    """
    n, d_ff = x.shape[0], w_up.shape[0]
    h = torch.empty(n, d_ff, dtype=x.dtype, device=x.device)  # X (W_gate ⊙ W_up)^T
    for s in range(0, d_ff, FFN_BLOCK):
        e = min(s + FFN_BLOCK, d_ff)
        w_in = _like(w_up[s:e], x) if w_gate is None else _like(w_gate[s:e], x) * _like(w_up[s:e], x)
        h[:, s:e] = x @ w_in.t()
        del w_in
    # W_down whole: blocking its output columns changed float32 roundings at 7B shapes
    y = h @ _like(w_down, x).t()  # [n, d]
    del h
    return y @ x.t()


def standardise(m: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation over all entries (the published channel normalisation)."""
    m = m.to(torch.float32)
    sd = m.std()
    return (m - m.mean()).div_(sd if float(sd) > 0 else 1.0)  # in place on the fresh difference


def rms_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / rms(x) per row: the write-out side's normalisation, free of any global scale."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def moe_route(logits: torch.Tensor, top_k: int, renormalise: bool) -> torch.Tensor:
    """Routing weights [n, E] of a sparse MoE layer: softmax over the router logits, the ``top_k``
    largest kept per row (the rest zero), renormalised to sum 1 when ``renormalise`` (Mixtral,
    Qwen3-MoE; Qwen2-MoE and OLMoE by their ``norm_topk_prob``). Permuting the experts together
    with the router's rows permutes the columns, so any sum over experts is unchanged."""
    p = torch.softmax(logits.to(torch.float32), dim=-1)
    top, idx = torch.topk(p, top_k, dim=-1)
    if renormalise:
        top = top / top.sum(-1, keepdim=True)
    return torch.zeros_like(p).scatter_(-1, idx, top)


def moe_out(
    xf: torch.Tensor,
    route: torch.Tensor,
    experts: Sequence[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The routed experts' feature-space output [n, d]: sum_e route[:, e] * h_e W_down,e with
    h_e = ``ffn_hidden`` (x W_gate ⊙ x W_up, no activation, as the dense FFN term; gate None: a
    non-gated expert). Tokens an expert is not routed to add nothing, so an expert no probe token
    reaches (an adversary's dead expert) leaves the result unchanged."""
    y = torch.zeros(xf.shape[0], experts[0][2].shape[0], dtype=xf.dtype, device=xf.device)
    for e, (gate, up, down) in enumerate(experts):
        rows = route[:, e].nonzero().flatten()
        if rows.numel() == 0:
            continue
        h = ffn_hidden(xf[rows], up, gate)
        y.index_add_(0, rows, (h @ down.t()) * route[rows, e, None].to(xf.dtype))
    return y
