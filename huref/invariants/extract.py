"""Computing a model's fingerprint layer by layer: one layer's weights in memory at a time.

Both modes are one loop (``_walk``) over a pass that says which layers and token rows it uses and
how a layer's three terms are formed (``_RobustPass``, ``_PaperPass``); the terms themselves come
from ``huref.invariants.layer_terms``. The n x d token-row products (normalised rows, per-layer
inputs) are formed once per layer and reused by every term; bf16/fp16 weights are converted to
float32 before any product.

Memory. Layers are streamed as stored (bf16 stays bf16) and each matrix is converted to float32
only for the products that read it, then dropped, so a whole float32 layer never exists. Peak
memory is bounded by:

- the stored bytes of one layer, twice in robust mode (the next layer is read while this one is
  used; paper mode reads its two layers without prefetch);
- float32 copies of at most two matrices of the layer at once (the FFN's gate and up; in paper
  mode W_gate * W_up is formed in place in one float32 buffer), plus the [n, d_ff] product;
- the n x d token rows and a few n x n float32 products, and the float16 result terms
  (layers x 3 x n x n);
- in a sparse (MoE) layer, whose routed experts are not in the stream: two stored expert
  matrices (the one in use and the next, read ahead in a helper thread), one float32 block of
  ``kernels.WIDEN_BYTES``, and the expert's [rows, d_expert] products.

For LLaMA-2-7B shapes that is about 0.8 GB + 0.4 GB + small in robust mode (n = 512) and
0.4 GB + 0.55 GB + 0.45 GB in paper mode (n = 4096), beside the interpreter and torch itself.
Converting bf16 to float32 is exact, so the products and the fingerprint are unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

from huref import __version__
from huref.arch import ArchConfig, Model, load_model
from huref.arch.layers import LayerStream
from huref.checkpoint import Checkpoint
from huref.checkpoint.source import all_finite
from huref.device import resolve_device
from huref.errors import FingerprintError
from huref.invariants import kernels as K
from huref.invariants.fingerprint import FORMAT_VERSION, TERM_NAMES, Fingerprint, ModeTerms, Responses
from huref.invariants.layer_terms import (
    Clock,
    LayerWeights,
    apply_norms,
    attention,
    dense_ffn,
    sparse_ffn,
    sparse_paper,
)
from huref.invariants.settings import Settings
from huref.invariants.tokens import (
    TokenSet,
    key_digest,
    read_frequency_list,
    select_least_frequent,
    select_tokens,
)

log = logging.getLogger(__name__)


def _tokens(m: Model, n: int, settings: Settings, mode: str) -> TokenSet:
    rows = m.cfg.vocab_size
    if mode == "paper" and settings.frequency_list is not None:
        return select_least_frequent(m.ckpt.vocab, rows, n, read_frequency_list(settings.frequency_list))
    return select_tokens(m.ckpt.vocab, rows, n, settings.key)


def _stream_rows(m: Model, ids: list[int], dev: torch.device) -> torch.Tensor:
    x = m.embed_rows(ids).to(dev)
    en = m.norm("embed_norm")
    return apply_norms([en], x) if en is not None and m.cfg.placement == "pre" else x


class _RobustPass:
    """Robust mode: every layer, on the keyed probe rows normalised as each sub-layer sees them;
    three terms per layer, and the neurons' two views for the independence test."""

    mode = "robust"

    def __init__(self, m: Model, s: Settings, dev: torch.device, clock: Clock) -> None:
        self.tok = _tokens(m, s.n, s, "robust")
        t = time.perf_counter()
        self.x = _stream_rows(m, list(self.tok.ids), dev)  # [n, d]
        clock.read += time.perf_counter() - t
        self.xr = K.rms_rows(self.x)
        self.n_r = min(s.n_responses, len(self.tok.ids))
        self.layers = list(range(m.cfg.n_layers))
        self.prefetch = s.prefetch
        self.views_a: list[torch.Tensor] = []
        self.views_b: list[torch.Tensor] = []
        self.groups: dict[int, list[tuple[str, int]]] = {}

    def terms(self, m: Model, w: LayerWeights, layer: int) -> Iterator[torch.Tensor]:
        xa = apply_norms(m.input_norms(layer, "attn"), self.x)
        xf = apply_norms(m.input_norms(layer, "mlp"), self.x)
        a, b = attention(m, w, xa, self.xr)
        sparse = m.is_sparse(layer)
        gated = sparse or "mlp_gate" in w
        if sparse:
            y, va, vb, self.groups[layer] = sparse_ffn(m, w, xf, self.n_r)
            f = y @ self.xr.t()
            del y
        else:
            f, va, vb = dense_ffn(w, xf, self.xr, self.n_r, gated)
        yield from (a, b, f)
        va, vb = _colstd(va), _colstd(vb)
        self.views_a.append(va)
        self.views_b.append(vb)
        for view, resp in zip(("gate", "up") if gated else ("in", "out"), (va, vb), strict=True):
            _check_finite(m, resp, f"{view} responses", layer)

    def responses(self, m: Model) -> Responses:
        cfg = m.cfg
        return Responses(
            ("gate", "up") if cfg.gated or cfg.moe is not None else ("in", "out"),
            list(self.tok.strings[: self.n_r]),
            list(range(cfg.n_layers)),
            self.views_a,
            self.views_b,
            self.groups,
        )


class _PaperPass:
    """Paper mode, as published: the last two layers, on raw embedding rows of the least frequent
    tokens (or keyed ones); no responses."""

    mode = "paper"
    prefetch = False  # two layers: overlapping their reads saves little and would hold a second

    def __init__(self, m: Model, s: Settings, dev: torch.device, clock: Clock) -> None:
        self.tok = _tokens(m, s.paper_n, s, "paper")
        t = time.perf_counter()
        self.x = m.embed_rows(list(self.tok.ids)).to(dev)  # raw rows, as published
        clock.read += time.perf_counter() - t
        self.layers = list(range(max(0, m.cfg.n_layers - 2), m.cfg.n_layers))

    def terms(self, m: Model, w: LayerWeights, layer: int) -> Iterator[torch.Tensor]:
        yield from attention(m, w, self.x, self.x)
        if m.is_sparse(layer):
            yield sparse_paper(w, self.x)
        else:
            yield K.hadamard_ffn(self.x, w.hadamard_in(), None, w.f32("mlp_down"))


_Pass = _RobustPass | _PaperPass
_PASSES: dict[str, type[_RobustPass] | type[_PaperPass]] = {"robust": _RobustPass, "paper": _PaperPass}


def _walk(m: Model, roles: list[str], p: _Pass, dev: torch.device, clock: Clock, key: bytes) -> ModeTerms:
    """One layer-streaming loop for either mode: each layer's three terms, standardised, stored
    as float16 and checked finite as they come (only one layer's weights in memory)."""
    n = len(p.tok.ids)
    terms = torch.empty(len(p.layers), 3, n, n, dtype=torch.float16)
    stream = LayerStream(m, roles, dtype=None, layers=p.layers, prefetch=p.prefetch)
    for j, (layer, raw) in enumerate(stream):
        assert layer == p.layers[j]
        w = LayerWeights(m, layer, raw, dev, clock)
        t, read0 = time.perf_counter(), clock.read
        for i, term in enumerate(p.terms(m, w, layer)):
            terms[j, i] = K.standardise(term).to("cpu", torch.float16)
            del term
            _check_finite(m, terms[j, i], f"{p.mode} {TERM_NAMES[i]} term", layer)
        clock.compute += time.perf_counter() - t - (clock.read - read0)  # expert reads: reading
        del w, raw
    clock.read += stream.read_seconds
    return ModeTerms(
        p.mode, p.layers, list(p.tok.ids), list(p.tok.strings), p.tok.source, terms, key_digest(key)
    )


def _roles(cfg: ArchConfig) -> list[str]:
    """The roles a layer stream carries (routed experts are read one at a time, not with it)."""
    roles = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"]
    if cfg.moe is not None:  # sparse layers: router, shared expert and its gate
        roles += [
            "moe_router",
            "shared_gate",
            "shared_up",
            "shared_down",
            "shared_expert_gate",
            "moe_router_bias",
        ]
    if cfg.mla is not None:  # latent attention: low-rank query and key/value paths
        roles += ["attn_q_a", "attn_q_a_norm", "attn_q_b", "attn_kv_a", "attn_kv_a_norm", "attn_kv_b"]
        roles += ["attn_q_a_bias", "attn_kv_a_bias"]
    return roles


def fingerprint_model(
    model: str | Path | Checkpoint | Model, settings: Settings | None = None
) -> Fingerprint:
    """The fingerprint of a model: each mode in ``settings.modes`` is one pass of ``_walk``."""
    s = settings or Settings()
    m = model if isinstance(model, Model) else load_model(model)
    dev = resolve_device(s.device)
    clock = Clock()
    t_start = time.perf_counter()
    done: dict[str, ModeTerms] = {}
    responses = None
    for mode in ("robust", "paper"):
        if mode in s.modes:
            p = _PASSES[mode](m, s, dev, clock)
            done[mode] = _walk(m, _roles(m.cfg), p, dev, clock, s.key)
            if isinstance(p, _RobustPass):
                responses = p.responses(m)
            del p
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
    return Fingerprint(meta, done.get("robust"), done.get("paper"), responses, timing)


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
