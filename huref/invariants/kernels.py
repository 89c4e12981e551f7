"""Pure kernels: the invariant terms of one layer, from token rows and role weights.

Conventions: weights are PyTorch ``Linear.weight`` ([out, in]); token rows are [n, d]. The paper
writes W = weight^T, so its X W_Q is ``x @ w_q.T`` here. Every product is formed as
(n x d) @ (d x k) first, so the cost is linear in d_ff and d and the n x n products come last.
"""

from __future__ import annotations

import torch


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
    return (v @ w_o.t()) @ xo.t()  # [n, d] @ [d, n]


def ffn_hidden(xf: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None) -> torch.Tensor:
    """Feature-space FFN response [n, d_ff]: (x W_gate) * (x W_up) for a gated FFN, x W_up else.

    Neuron permutations permute columns and up/down rescalings scale them; both cancel in
    ffn_out. Residual transforms never enter because x is already the layer's normalised input.
    """
    up = xf @ w_up.t()
    return up if w_gate is None else (xf @ w_gate.t()) * up


def ffn_out(h: torch.Tensor, w_down: torch.Tensor, xo: torch.Tensor) -> torch.Tensor:
    """H W_down xo^T -> [n, n]."""
    return (h @ w_down.t()) @ xo.t()


def hadamard_ffn(
    x: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None, w_down: torch.Tensor
) -> torch.Tensor:
    """The published M_f: X (W_gate ⊙ W_up) W_down X^T (⊙ of the weight matrices), or X W_1 W_2 X^T."""
    w_in = w_up if w_gate is None else w_gate * w_up  # [d_ff, d]
    return ((x @ w_in.t()) @ w_down.t()) @ x.t()


def standardise(m: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation over all entries (the published channel normalisation)."""
    m = m.to(torch.float32)
    sd = m.std()
    return (m - m.mean()) / (sd if float(sd) > 0 else 1.0)


def rms_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / rms(x) per row: the write-out side's normalisation, free of any global scale."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
