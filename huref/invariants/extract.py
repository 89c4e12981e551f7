"""Computing a model's fingerprint layer by layer: one layer's weights in memory at a time.

The n x d token-row products (normalised rows, per-layer inputs) are formed once per layer and
reused by every term; bf16/fp16 weights are converted to float32 before any product.

Memory. Layers are streamed as stored (bf16 stays bf16) and each matrix is converted to float32
only for the products that read it, then dropped, so a whole float32 layer never exists. Peak
memory is bounded by:

- the stored bytes of one layer, twice in robust mode (the next layer is read while this one is
  used; paper mode reads its two layers without prefetch);
- float32 copies of at most two matrices of the layer at once (the FFN's gate and up; in paper
  mode W_gate * W_up is formed in place in one float32 buffer), plus the [n, d_ff] product;
- the n x d token rows and a few n x n float32 products, and the float16 result terms
  (layers x 3 x n x n).

For LLaMA-2-7B shapes that is about 0.8 GB + 0.4 GB + small in robust mode (n = 512) and
0.4 GB + 0.55 GB + 0.45 GB in paper mode (n = 4096), beside the interpreter and torch itself.
Converting bf16 to float32 is exact, so the products and the fingerprint are unchanged.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from huref import __version__
from huref.arch import Model, load_model
from huref.arch.layers import LayerStream, weight_key
from huref.arch.model import Norm
from huref.checkpoint import Checkpoint
from huref.checkpoint.source import all_finite
from huref.device import resolve_device
from huref.errors import ArchitectureError, FingerprintError
from huref.invariants import kernels as K
from huref.invariants.fingerprint import FORMAT_VERSION, TERM_NAMES, Fingerprint, ModeTerms, Responses
from huref.invariants.settings import Settings
from huref.invariants.tokens import (
    TokenSet,
    key_digest,
    read_frequency_list,
    select_least_frequent,
    select_tokens,
)
from huref.paths import shown

log = logging.getLogger(__name__)


def _on(nm: Norm, dev: torch.device) -> Norm:
    """The norm with its gain and bias on ``dev`` (they are read onto the CPU with the layer)."""
    move = lambda t: None if t is None else t.to(dev)  # noqa: E731
    return replace(nm, weight=move(nm.weight), bias=move(nm.bias))


def _apply(norms: list[Norm], x: torch.Tensor) -> torch.Tensor:
    for nm in norms:
        # gains kept (they cancel against readers), biases dropped
        x = _on(nm, x.device).apply(x, with_bias=False)
    return x


class _Clock:
    def __init__(self) -> None:
        self.read = 0.0
        self.compute = 0.0


class _Weights:
    """One streamed layer's stored matrices (role -> view of the read buffer), converted to
    float32 on ``dev`` one at a time, when a product needs them."""

    def __init__(self, m: Model, layer: int, raw: dict[str, torch.Tensor], dev: torch.device) -> None:
        self.m, self.layer, self.raw, self.dev = m, layer, raw, dev

    def __contains__(self, role: str) -> bool:
        return role in self.raw

    def f32(self, role: str, expert: int | None = None) -> torch.Tensor:
        t = self.raw[weight_key(role, expert)]
        if not all_finite(t):  # bf16/fp16 -> fp32 widens: checking the stored values suffices
            name = self.m.binding(role, self.layer, expert).name
            raise ArchitectureError(
                f"{shown(self.m.ckpt.path)}: tensor {shown(name)} contains NaN or infinite values"
            )
        out = torch.empty(t.shape, dtype=torch.float32, device=self.dev)
        return out.copy_(t)  # always a copy: the read buffer is reused for a later layer

    def hadamard_in(self) -> torch.Tensor:
        """W_gate * W_up (or W_1) in one float32 buffer; the products of bf16 values are exact."""
        w = self.f32("mlp_up")
        if "mlp_gate" in self:
            w.mul_(self.f32("mlp_gate"))
        return w

    def experts(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(gate, up, down) of each routed expert of this sparse layer in turn, in their stored
        dtype on the device, read when asked: the layer stream carries no experts and the kernels
        widen them in blocks, so peak memory holds one expert as stored (Mixtral-8x7B: 0.35 GB in
        bf16), not the layer's eight or sixty-four, nor a float32 copy."""
        for e in range(self.m.n_experts(self.layer)):
            yield tuple(  # type: ignore[misc]
                self.m.expert_tensor(r, self.layer, e, dtype=None).to(self.dev)
                for r in ("expert_gate", "expert_up", "expert_down")
            )

    def shared(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(gate, up, down) of the layer's shared expert, if it has one."""
        if "shared_up" not in self:
            return None
        return self.f32("shared_gate"), self.f32("shared_up"), self.f32("shared_down")


def _attention(
    m: Model, w: _Weights, xa: torch.Tensor, xo: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention terms (query-key [n, n], value-output [n, n]) of one layer on rows ``xa``
    (written out against ``xo``). Latent attention (DeepSeek) forms them from the queries, keys and
    values the model computes through its low-rank paths and their RMSNorms, never from the
    factors, which an adversary could re-factor."""
    cfg = m.cfg
    if cfg.mla is None:
        H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qk = K.attn_qk(xa, xa, w.f32("attn_q"), w.f32("attn_k"), H, KV, hd)
        return qk, K.attn_vo(xa, xo, w.f32("attn_v"), w.f32("attn_o"), H, KV, hd)
    a = cfg.mla
    opt = lambda role: w.f32(role) if role in w else None  # noqa: E731
    mw = K.MLAWeights(
        w.f32("attn_kv_a"),
        w.f32("attn_kv_a_norm"),
        w.f32("attn_kv_b"),
        w_q=opt("attn_q"),
        w_q_a=opt("attn_q_a"),
        q_a_norm=opt("attn_q_a_norm"),
        w_q_b=opt("attn_q_b"),
        b_q_a=opt("attn_q_a_bias"),
        b_kv_a=opt("attn_kv_a_bias"),
    )
    dims = (cfg.n_heads, a.kv_lora_rank, a.qk_nope_head_dim)
    qk = K.mla_attn_qk(xa, mw, *dims, a.qk_rope_head_dim, a.v_head_dim, a.norm_eps)
    vo = K.mla_attn_vo(xa, xo, mw, w.f32("attn_o"), *dims, a.v_head_dim, a.norm_eps)
    return qk, vo


def _route(m: Model, w: _Weights, xf: torch.Tensor) -> torch.Tensor:
    """Routing weights [n, E] of a sparse layer, as the model computes them. A router Linear's
    bias (GPT-OSS: ``router_logit_bias``) is part of the logits; DeepSeek's moe_router_bias
    (``router_bias``) steers selection only, inside deepseek_route."""
    moe = m.cfg.moe
    assert moe is not None
    logits = xf @ w.f32("moe_router").t()
    if moe.router_logit_bias:
        logits.add_(w.f32("moe_router_bias"))  # permuted with the router rows: columns permute
    return K.deepseek_route(
        logits,
        w.f32("moe_router_bias") if moe.router_bias else None,
        moe.top_k,
        scoring=moe.scoring,
        topk_method=moe.topk_method,
        n_group=moe.n_group,
        topk_group=moe.topk_group,
        renormalise=moe.renormalise,
        scale=moe.routed_scale,
    )


def _sparse_ffn(
    m: Model, w: _Weights, xf: torch.Tensor, n_r: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[str, int]]]:
    """A sparse (MoE) layer's FFN output on the probe rows [n, d] and its neurons' two views.

    The output is the layer's own mixture, in the dense term's feature space: the router's top-k
    experts weighted as the model weights them (its real routing), each expert's response taken
    as (x W_gate ⊙ x W_up) W_down without the activation, exactly as the dense FFN term is, plus
    the shared expert (through its sigmoid gate where it has one). Expert biases (GPT-OSS) are
    left out, as the dense term leaves out MLP biases. An expert permutation (with the
    router's rows), neuron permutations inside experts and a dead expert no token is routed to
    leave it unchanged, and for an MoE upcycled from a dense model with still-identical experts it
    equals the dense FFN's term input when the routing weights sum to 1. The views
    (gate and up responses of the first ``n_r`` rows) hold every expert's neurons side by side,
    so the neuron-matching test sees an expert permutation as the neuron permutation it is.
    """
    route = _route(m, w, xf)
    xs = xf[:n_r]
    y = torch.zeros(xf.shape[0], m.cfg.d_model, dtype=xf.dtype, device=xf.device)
    groups: list[tuple[str, int]] = []
    views_a, views_b = [], []
    for e, (gate, up, down) in enumerate(w.experts()):  # one expert in memory at a time
        # its routed rows and the response rows in one product per weight (one widening each)
        rows, out, va, vb = K.expert_response(xf, route[:, e], gate, up, down, probe=xs)
        y.index_add_(0, rows, out)
        assert va is not None and vb is not None  # experts are gated, and probe rows were given
        views_a.append(va)
        views_b.append(vb)
        groups.append((str(e), gate.shape[0]))
        del gate, up, down, out
    shared = w.shared()
    if shared is not None:
        s_gate, s_up, s_down = shared
        ys = K.ffn_hidden(xf, s_up, s_gate) @ s_down.t()
        if "shared_expert_gate" in w:
            ys.mul_(torch.sigmoid(xf @ w.f32("shared_expert_gate").t()))
        y.add_(ys)
        views_a.append(xs @ s_gate.t())
        views_b.append(xs @ s_up.t())
        groups.append(("shared", s_gate.shape[0]))
    return y, torch.cat(views_a, dim=1), torch.cat(views_b, dim=1), groups


def _dense_ffn(
    w: _Weights, xf: torch.Tensor, xr: torch.Tensor, n_r: int, gated: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dense layer's robust FFN term [n, n] and its neurons' two views on the first n_r rows."""
    gate = w.f32("mlp_gate") if gated else None
    up = w.f32("mlp_up")
    h = K.ffn_hidden(xf, up, gate)
    xs = xf[:n_r]
    if gate is not None:
        va, vb = xs @ gate.t(), xs @ up.t()
    del gate, up
    f = K.ffn_out(h, w.f32("mlp_down"), xr)
    del h
    if not gated:
        va, vb = xs @ w.f32("mlp_up").t(), xr[:n_r] @ w.f32("mlp_down")
    return f, va, vb


def _sparse_paper(w: _Weights, x: torch.Tensor) -> torch.Tensor:
    """Paper mode's M_f for a sparse layer: the published X (W_gate ⊙ W_up) W_down X^T summed over
    the routed and shared experts (the published method defines no MoE term; this one is not
    robust to an adversary's dead expert, as paper mode is not robust to other attacks)."""
    shared = w.shared()
    total = None
    for gate, up, down in itertools.chain(w.experts(), [shared] if shared is not None else []):
        t = K.expert_hadamard(x, up, gate, down)
        total = t if total is None else total.add_(t)
    assert total is not None
    return total


def _tokens(m: Model, n: int, settings: Settings, mode: str) -> TokenSet:
    rows = m.cfg.vocab_size
    if mode == "paper" and settings.frequency_list is not None:
        return select_least_frequent(m.ckpt.vocab, rows, n, read_frequency_list(settings.frequency_list))
    return select_tokens(m.ckpt.vocab, rows, n, settings.key)


def _stream_rows(m: Model, ids: list[int], dev: torch.device) -> torch.Tensor:
    x = m.embed_rows(ids).to(dev)
    en = m.norm("embed_norm")
    return _apply([en], x) if en is not None and m.cfg.placement == "pre" else x


def fingerprint_model(
    model: str | Path | Checkpoint | Model, settings: Settings | None = None
) -> Fingerprint:
    s = settings or Settings()
    m = model if isinstance(model, Model) else load_model(model)
    dev = resolve_device(s.device)
    cfg = m.cfg
    clock = _Clock()
    t_start = time.perf_counter()
    robust = paper = responses = None
    roles = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"]
    if cfg.moe is not None:  # sparse layers: router, routed experts, shared expert and its gate
        roles += ["moe_router"]  # experts are read one at a time, not with the layer
        roles += ["shared_gate", "shared_up", "shared_down", "shared_expert_gate", "moe_router_bias"]
    if cfg.mla is not None:  # latent attention: low-rank query and key/value paths
        roles += ["attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a", "attn_kv_a_norm", "attn_kv_b"]
        roles += ["attn_q_a_bias", "attn_kv_a_bias"]

    if "robust" in s.modes:
        tok = _tokens(m, s.n, s, "robust")
        t = time.perf_counter()
        x = _stream_rows(m, list(tok.ids), dev)  # [n, d]
        clock.read += time.perf_counter() - t
        xr = K.rms_rows(x)
        n_r = min(s.n_responses, len(tok.ids))
        terms = torch.empty(cfg.n_layers, 3, len(tok.ids), len(tok.ids), dtype=torch.float16)
        views_a, views_b = [], []
        groups: dict[int, list[tuple[str, int]]] = {}
        stream = LayerStream(m, roles, dtype=None, prefetch=s.prefetch)
        for layer, raw in stream:
            w = _Weights(m, layer, raw, dev)
            t = time.perf_counter()
            xa = _apply(m.input_norms(layer, "attn"), x)
            xf = _apply(m.input_norms(layer, "mlp"), x)
            a, b = _attention(m, w, xa, xr)
            sparse = m.is_sparse(layer)
            gated = sparse or "mlp_gate" in w
            if sparse:
                y, va, vb, groups[layer] = _sparse_ffn(m, w, xf, n_r)
                f = y @ xr.t()
                del y
            else:
                f, va, vb = _dense_ffn(w, xf, xr, n_r, gated)
            for i, term in enumerate((a, b, f)):
                terms[layer, i] = K.standardise(term).to("cpu", torch.float16)
                _check_finite(m, terms[layer, i], f"robust {TERM_NAMES[i]} term", layer)
            va, vb = _colstd(va), _colstd(vb)
            views_a.append(va)
            views_b.append(vb)
            for view, resp in zip(("gate", "up") if gated else ("in", "out"), (va, vb), strict=True):
                _check_finite(m, resp, f"{view} responses", layer)
            clock.compute += time.perf_counter() - t
            del w, raw
        clock.read += stream.read_seconds
        robust = ModeTerms(
            "robust",
            list(range(cfg.n_layers)),
            list(tok.ids),
            list(tok.strings),
            tok.source,
            terms,
            key_digest(s.key),
        )
        responses = Responses(
            ("gate", "up") if cfg.gated or cfg.moe is not None else ("in", "out"),
            list(tok.strings[:n_r]),
            list(range(cfg.n_layers)),
            views_a,
            views_b,
            groups,
        )

    if "paper" in s.modes:
        tok = _tokens(m, s.paper_n, s, "paper")
        t = time.perf_counter()
        x = m.embed_rows(list(tok.ids)).to(dev)  # raw rows, as published
        clock.read += time.perf_counter() - t
        layers = list(range(max(0, cfg.n_layers - 2), cfg.n_layers))
        terms = torch.empty(len(layers), 3, len(tok.ids), len(tok.ids), dtype=torch.float16)
        # two layers: overlapping their reads saves little and would hold a second layer
        stream = LayerStream(m, roles, dtype=None, layers=layers, prefetch=False)
        for j, (layer, raw) in enumerate(stream):
            w = _Weights(m, layer, raw, dev)
            t = time.perf_counter()
            qk, vo = _attention(m, w, x, x)
            terms[j, 0] = K.standardise(qk).cpu().half()
            terms[j, 1] = K.standardise(vo).cpu().half()
            if m.is_sparse(layer):
                ff = _sparse_paper(w, x)
            else:
                ff = K.hadamard_ffn(x, w.hadamard_in(), None, w.f32("mlp_down"))
            terms[j, 2] = K.standardise(ff).cpu().half()
            del qk, vo, ff
            for i, name in enumerate(TERM_NAMES):
                _check_finite(m, terms[j, i], f"paper {name} term", layer)
            clock.compute += time.perf_counter() - t
            assert layer == layers[j]
            del w, raw
        clock.read += stream.read_seconds
        paper = ModeTerms(
            "paper", layers, list(tok.ids), list(tok.strings), tok.source, terms, key_digest(s.key)
        )

    meta = {
        "format": FORMAT_VERSION,
        "tool_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": m.ckpt.name,
            "path": str(m.ckpt.path),
            "format": m.ckpt.format,
            "sha256": m.ckpt.sha256s(),
        },
        "architecture": m.summary(),
        "settings": {
            "n": s.n,
            "paper_n": s.paper_n,
            "n_responses": s.n_responses,
            "modes": list(s.modes),
            "frequency_list": str(s.frequency_list) if s.frequency_list else None,
        },
    }
    timing = {"total_s": time.perf_counter() - t_start, "read_s": clock.read, "compute_s": clock.compute}
    return Fingerprint(meta, robust, paper, responses, timing)


def _colstd(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(0, keepdim=True)
    sd = v.std(0, keepdim=True)
    return (v / torch.where(sd > 0, sd, torch.ones_like(sd))).to("cpu", torch.float16)


def _check_finite(m: Model, t: torch.Tensor, what: str, layer: int) -> None:
    """Finite weights can still overflow in the products (float32 tops out near 3.4e38, float16
    near 65504): such a layer has no invariants, and a NaN would poison every comparison."""
    if not all_finite(t):
        raise FingerprintError(
            f"{m.ckpt.path}: layer {layer} overflows in its {what} (NaN or infinite values): "
            "the weights are too large to fingerprint"
        )
