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

from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeAlias

import torch

FFN_BLOCK = 1024
"""Rows of an FFN weight matrix widened to float32 at a time by ``hadamard_ffn``."""

WIDEN_BYTES = 64 << 20
"""``times_t`` widens as many weight rows at a time as fit this many float32 bytes (at least
``FFN_BLOCK``): taller blocks make fewer, larger products (Mixtral-8x7B's experts: 4096 rows of
W_gate / W_up, 1170 of W_down)."""

Weight: TypeAlias = "torch.Tensor | Callable[[], torch.Tensor]"
"""A weight matrix, or a function returning it when a kernel first needs it (so a caller can
stream an expert's weights one at a time; the kernel drops each as soon as it is used)."""


def _take(w: Weight) -> torch.Tensor:
    return w if isinstance(w, torch.Tensor) else w()


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
    q = times_t(xq, w_q)  # [n, H*hd]
    k = expand_kv(times_t(xk, w_k), n_heads, n_kv, head_dim)  # [n, H*hd]
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
    v = expand_kv(times_t(xv, w_v), n_heads, n_kv, head_dim)  # [n, H*hd]
    vo = times_t(v, w_o)  # [n, d]
    del v
    return vo @ xo.t()  # [n, d] @ [d, n]


def ffn_hidden(xf: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None) -> torch.Tensor:
    """Feature-space FFN response [n, d_ff]: (x W_gate) * (x W_up) for a gated FFN, x W_up else.

    Neuron permutations permute columns and up/down rescalings scale them; both cancel in
    ffn_out. Residual transforms never enter because x is already the layer's normalised input.
    """
    up = times_t(xf, w_up)
    if w_gate is None:
        return up
    return times_t(xf, w_gate).mul_(up)  # in place on the fresh gate product: one [n, d_ff] fewer


def gated_hidden(
    xf: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor, n_probe: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ffn_hidden`` of a gated FFN, with the first ``n_probe`` rows of x W_gate and x W_up (the
    neurons' two views) taken from the same products: each weight is widened once."""
    up = times_t(xf, w_up)
    gate = times_t(xf, w_gate)
    va, vb = gate[:n_probe].clone(), up[:n_probe].clone()
    return gate.mul_(up), va, vb


def ffn_out(h: torch.Tensor, w_down: torch.Tensor, xo: torch.Tensor) -> torch.Tensor:
    """H W_down xo^T -> [n, n]."""
    return times_t(h, w_down) @ xo.t()


def hadamard_ffn(
    x: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None, w_down: torch.Tensor
) -> torch.Tensor:
    """The published M_f: X (W_gate ⊙ W_up) W_down X^T (⊙ of the weight matrices), or X W_1 W_2 X^T.

    The products are in ``x``'s dtype (float32 in extraction); the weights may be stored in a
    narrower one (bf16/fp16) and on the CPU, widened and moved block by block. Blocked over
    ``FFN_BLOCK`` weight rows (see the module docstring); the values equal the unblocked formula.
    """
    h = hadamard_hidden(x, w_up, w_gate)  # X (W_gate ⊙ W_up)^T
    # W_down whole: blocking its output columns changed float32 roundings at 7B shapes
    y = h @ _like(w_down, x).t()  # [n, d]
    del h
    return y @ x.t()


def hadamard_hidden(x: torch.Tensor, w_up: torch.Tensor, w_gate: torch.Tensor | None) -> torch.Tensor:
    """X (W_gate ⊙ W_up)^T [n, d_ff], the weights widened ``FFN_BLOCK`` rows at a time."""
    n, d_ff = x.shape[0], w_up.shape[0]
    h = torch.empty(n, d_ff, dtype=x.dtype, device=x.device)
    for s in range(0, d_ff, FFN_BLOCK):
        e = min(s + FFN_BLOCK, d_ff)
        w_in = _like(w_up[s:e], x) if w_gate is None else _like(w_gate[s:e], x) * _like(w_up[s:e], x)
        h[:, s:e] = x @ w_in.t()
        del w_in
    return h


def times_t(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T in ``x``'s dtype with ``w`` in any stored dtype, widened block by block into one
    reused buffer (``WIDEN_BYTES``): no float32 copy of a whole weight matrix (experts are read in
    their stored bf16). Each block's columns come from the same full reduction, so the values do
    not depend on the block height (checked against 1024-row blocks at Mixtral-8x7B shapes)."""
    out = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype, device=x.device)
    rows = max(FFN_BLOCK, WIDEN_BYTES // max(1, w.shape[1] * x.element_size()))
    same = w.dtype == x.dtype and w.device == x.device  # nothing to widen: views of w
    buf = None if same else torch.empty(min(rows, w.shape[0]), w.shape[1], dtype=x.dtype, device=x.device)
    for s in range(0, w.shape[0], rows):
        blk = w[s : s + rows] if buf is None else buf[: min(rows, w.shape[0] - s)].copy_(w[s : s + rows])
        out[:, s : s + blk.shape[0]] = x @ blk.t()
    return out


def expert_hadamard(x: torch.Tensor, w_up: Weight, w_gate: Weight | None, w_down: Weight) -> torch.Tensor:
    """``hadamard_ffn`` for one expert, with W_down widened in blocks too (its values may differ
    from hadamard_ffn's in the last float32 bits; memory: no float32 copy of any weight). Weights
    given as functions are asked for in the order up, gate, down."""
    h = hadamard_hidden(x, _take(w_up), None if w_gate is None else _take(w_gate))
    return times_t(h, _take(w_down)) @ x.t()


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
    with the router's rows permutes the columns, so any sum over experts is unchanged. The plain
    case of ``deepseek_route``, which every routing goes through."""
    return deepseek_route(logits, None, top_k, renormalise=renormalise)


def expert_response(
    xf: torch.Tensor,
    weight: torch.Tensor,
    gate: Weight | None,
    up: Weight,
    down: Weight,
    probe: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One expert on the rows routed to it: (their indices, weight * h W_down on them [r, d]) with
    h = x W_gate ⊙ x W_up (no activation, as the dense FFN term; gate None: a non-gated expert),
    ``weight`` the routing weights of every row [n]. With ``probe`` rows [p, d], also their
    x W_gate and x W_up responses (else None): routed and probe rows go through each weight in one
    product, so a weight in its stored dtype is widened once (``times_t``). Weights given as
    functions are asked for in the order up, gate, down, and each is dropped after its product,
    so a streamed expert holds one matrix at a time."""
    rows = weight.nonzero().flatten()
    x = xf[rows] if probe is None else torch.cat([probe, xf[rows]])
    k = 0 if probe is None else probe.shape[0]
    u = times_t(x, _take(up))
    g = None if gate is None else times_t(x, _take(gate))
    h = u[k:] if g is None else g[k:] * u[k:]
    out = times_t(h, _take(down)).mul_(weight[rows, None].to(xf.dtype))
    if probe is None:
        return rows, out, None, None
    return rows, out, None if g is None else g[:k], u[:k]


def moe_out(
    xf: torch.Tensor,
    route: torch.Tensor,
    experts: Sequence[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """The routed experts' feature-space output [n, d]: sum_e route[:, e] * h_e W_down,e
    (``expert_response`` of each). Tokens an expert is not routed to add nothing, so an expert no
    probe token reaches (an adversary's dead expert) leaves the result unchanged. Weights may be
    in their stored dtype (``times_t`` widens them in blocks)."""
    y = torch.zeros(xf.shape[0], experts[0][2].shape[0], dtype=xf.dtype, device=xf.device)
    for e, (gate, up, down) in enumerate(experts):
        rows, out, _, _ = expert_response(xf, route[:, e], gate, up, down)
        y.index_add_(0, rows, out)
    return y


# ---------------------------------------------------------------- Multi-head Latent Attention (MLA)
class MLAWeights(NamedTuple):
    """One layer's Multi-head Latent Attention weights (DeepSeek-V2/V3), huref roles in brackets.
    The query is ``w_q`` (a full-rank attn_q) or ``w_q_b`` RMSNorm(``w_q_a`` x) with the
    ``q_a_norm`` gain; the rest is always there. Biases are those of ``attention_bias`` configs."""

    w_kv_a: torch.Tensor  # [rkv + r, d] attn_kv_a: the latent, then the rope key shared by all heads
    kv_a_norm: torch.Tensor  # [rkv] attn_kv_a_norm
    w_kv_b: torch.Tensor  # [H*(n+v), rkv] attn_kv_b: per head, k_nope rows then v rows
    w_q: torch.Tensor | None = None  # [H*(n+r), d] attn_q
    w_q_a: torch.Tensor | None = None  # [rq, d] attn_q_a
    q_a_norm: torch.Tensor | None = None  # [rq] attn_q_a_norm
    w_q_b: torch.Tensor | None = None  # [H*(n+r), rq] attn_q_b
    b_q_a: torch.Tensor | None = None  # [rq] attn_q_a_bias
    b_kv_a: torch.Tensor | None = None  # [rkv + r] attn_kv_a_bias


def _rms_gain(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the rows of ``x`` with ``gain``, as the model's latent norms compute it."""
    return rms_rows(x, eps) * _like(gain, x)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    y = x @ _like(w, x).t()
    return y if b is None else y + _like(b, x)


def mla_latent(
    x: torch.Tensor, w: MLAWeights, kv_lora_rank: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised key/value latent [n, rkv], rope key [n, r]) of the rows ``x`` [n, d]."""
    kv = _linear(x, w.w_kv_a, w.b_kv_a)  # [n, rkv + r]
    return _rms_gain(kv[:, :kv_lora_rank], w.kv_a_norm, eps), kv[:, kv_lora_rank:]


def mla_qk_heads(
    x: torch.Tensor,
    w: MLAWeights,
    n_heads: int,
    kv_lora_rank: int,
    qk_nope: int,
    qk_rope: int,
    v_head_dim: int,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's query and key [n, H, n+r] for the rows ``x`` [n, d] (already through the
    layer's input norm), as the model forms them before the rotary rotation: q is q_b(RMSNorm(
    q_a x)) (or attn_q x), split per head into its nope then rope part; k_h is head h's k_nope
    rows of kv_b(RMSNorm(latent)), then the rope key every head shares. ``eps`` is the latent
    norms' (transformers fixes it at 1e-6)."""
    n = x.shape[0]
    if w.w_q is not None:
        q = _linear(x, w.w_q)  # [n, H*(n+r)]
    else:
        assert w.w_q_a is not None and w.q_a_norm is not None and w.w_q_b is not None
        q = _linear(_rms_gain(_linear(x, w.w_q_a, w.b_q_a), w.q_a_norm, eps), w.w_q_b)
    q = q.reshape(n, n_heads, qk_nope + qk_rope)
    c, k_rope = mla_latent(x, w, kv_lora_rank, eps)
    kv = _linear(c, w.w_kv_b).reshape(n, n_heads, qk_nope + v_head_dim)  # per head: k_nope | v
    k = torch.cat([kv[..., :qk_nope], k_rope[:, None, :].expand(n, n_heads, qk_rope)], dim=-1)
    return q, k  # each [n, H, n+r]


def mla_attn_qk(
    x: torch.Tensor,
    w: MLAWeights,
    n_heads: int,
    kv_lora_rank: int,
    qk_nope: int,
    qk_rope: int,
    v_head_dim: int,
    eps: float = 1e-6,
) -> torch.Tensor:
    """sum over heads of q_h k_h^T -> [n, n]: MLA's counterpart of ``attn_qk``, nope and rope
    parts both, no rotation (position-free, as the dense term is).

    What is invariant: the low-rank factors themselves are not. An adversary may rewrite
    q_b -> q_b C^-1, q_a -> C q_a only where the RMSNorm between them allows it (C a signed
    permutation times a scale the norm removes, with the gain moved along), likewise kv_a's latent
    rows against kv_b's columns, and may mix each head's k_nope/q_nope rows by any invertible
    C_h with C_h^-T, and permute heads. Each changes the factors but not q_h k_h^T summed over
    heads, which is what this returns: the composed products are what is compared."""
    q, k = mla_qk_heads(x, w, n_heads, kv_lora_rank, qk_nope, qk_rope, v_head_dim, eps)
    n = x.shape[0]
    return q.reshape(n, -1) @ k.reshape(n, -1).t()  # [n, H*(n+r)] @ [H*(n+r), n]


def mla_values(
    x: torch.Tensor,
    w: MLAWeights,
    n_heads: int,
    kv_lora_rank: int,
    qk_nope: int,
    v_head_dim: int,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Each head's value [n, H, v]: head h's v rows of kv_b(RMSNorm(latent of x))."""
    c, _ = mla_latent(x, w, kv_lora_rank, eps)
    kv = _linear(c, w.w_kv_b).reshape(x.shape[0], n_heads, qk_nope + v_head_dim)
    return kv[..., qk_nope:]


def mla_attn_vo(
    xv: torch.Tensor,
    xo: torch.Tensor,
    w: MLAWeights,
    w_o: torch.Tensor,
    n_heads: int,
    kv_lora_rank: int,
    qk_nope: int,
    v_head_dim: int,
    eps: float = 1e-6,
) -> torch.Tensor:
    """(V W_O) xo^T -> [n, n], as ``attn_vo``: V the heads' values of ``xv`` side by side
    [n, H*v], W_O = ``w_o`` [d, H*v]. Mixing a head's value rows in kv_b by C_h and its columns
    of w_o by C_h^-1, or the latent as in ``mla_attn_qk``, cancels in V W_O."""
    v = mla_values(xv, w, n_heads, kv_lora_rank, qk_nope, v_head_dim, eps).reshape(xv.shape[0], -1)
    vo = v @ _like(w_o, v).t()  # [n, d]
    del v
    return vo @ xo.t()


# ---------------------------------------------------------------- DeepSeek routing
def deepseek_route(
    logits: torch.Tensor,
    bias: torch.Tensor | None,
    top_k: int,
    *,
    scoring: str = "softmax",
    topk_method: str = "greedy",
    n_group: int = 1,
    topk_group: int = 1,
    renormalise: bool = False,
    scale: float = 1.0,
) -> torch.Tensor:
    """Routing weights [n, E] of any sparse layer from its router logits [n, E], as the model
    computes them, DeepSeek's choices included (huref.arch.config.MoEConfig names them; the
    defaults are plain softmax top-k, ``moe_route``).

    Scores are softmax (V2) or sigmoid (V3) of the logits. 'greedy' takes the ``top_k`` best
    scores; 'group_limited_greedy' (V2) first keeps the ``topk_group`` of the ``n_group``
    consecutive expert groups with the best single score; 'noaux_tc' (V3) ranks groups by the sum
    of their two best scores + ``bias`` (the selection-only moe_router_bias) and then takes the
    ``top_k`` best biased scores among the kept groups. The weights are the chosen *unbiased*
    scores, divided by their sum (+1e-20) when ``renormalise``, times ``scale``. Permuting
    experts together with the router rows and the bias permutes columns only when it keeps the
    groups (a permutation within groups, or of whole groups): group limits make the grouping
    part of the function."""
    logits = logits.to(torch.float32)
    n, E = logits.shape
    scores = torch.sigmoid(logits) if scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    choice = scores if bias is None else scores + _like(bias, scores)
    if topk_method != "greedy":
        grouped = choice.view(n, n_group, E // n_group)
        if topk_method == "noaux_tc":
            group_scores = grouped.topk(2, dim=-1)[0].sum(-1)  # [n, n_group]
        else:
            group_scores = grouped.max(dim=-1).values
        keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(topk_group, dim=-1)[1], 1.0)
        keep_e = keep.bool()[:, :, None].expand(n, n_group, E // n_group).reshape(n, E)
        # V3 excludes the other groups at -inf; V2 zeroes their (non-negative) scores
        choice = choice.masked_fill(~keep_e, float("-inf") if topk_method == "noaux_tc" else 0.0)
    idx = choice.topk(top_k, dim=-1)[1]
    top = scores.gather(1, idx)
    if renormalise:
        top = top / (top.sum(-1, keepdim=True) + 1e-20)
    return torch.zeros_like(scores).scatter_(-1, idx, top * scale)
