"""Computing a model's fingerprint layer by layer: one layer's weights in memory at a time.

The n x d token-row products (normalised rows, per-layer inputs) are formed once per layer and
reused by every term; bf16/fp16 weights are converted to float32 before any product.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from huref import __version__
from huref.arch import Model, load_model
from huref.arch.layers import LayerStream
from huref.arch.model import Norm
from huref.checkpoint import Checkpoint
from huref.checkpoint.source import all_finite
from huref.device import resolve_device
from huref.errors import FingerprintError
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
    H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    clock = _Clock()
    t_start = time.perf_counter()
    robust = paper = responses = None
    roles = ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"]

    if "robust" in s.modes:
        tok = _tokens(m, s.n, s, "robust")
        t = time.perf_counter()
        x = _stream_rows(m, list(tok.ids), dev)  # [n, d]
        clock.read += time.perf_counter() - t
        xr = K.rms_rows(x)
        n_r = min(s.n_responses, len(tok.ids))
        terms = torch.empty(cfg.n_layers, 3, len(tok.ids), len(tok.ids), dtype=torch.float16)
        views_a, views_b = [], []
        stream = LayerStream(m, roles, prefetch=s.prefetch)
        for layer, w in stream:
            w = {r: t.to(dev) for r, t in w.items()}
            t = time.perf_counter()
            xa = _apply(m.input_norms(layer, "attn"), x)
            xf = _apply(m.input_norms(layer, "mlp"), x)
            a = K.attn_qk(xa, xa, w["attn_q"], w["attn_k"], H, KV, hd)
            b = K.attn_vo(xa, xr, w["attn_v"], w["attn_o"], H, KV, hd)
            gate = w.get("mlp_gate")
            h = K.ffn_hidden(xf, w["mlp_up"], gate)
            f = K.ffn_out(h, w["mlp_down"], xr)
            for i, term in enumerate((a, b, f)):
                terms[layer, i] = K.standardise(term).to("cpu", torch.float16)
                _check_finite(m, terms[layer, i], f"robust {TERM_NAMES[i]} term", layer)
            # two views of the same neurons on the first n_r probe tokens
            xs = xf[:n_r]
            if gate is not None:
                va, vb = xs @ gate.t(), xs @ w["mlp_up"].t()
            else:
                va, vb = xs @ w["mlp_up"].t(), xr[:n_r] @ w["mlp_down"]
            va, vb = _colstd(va), _colstd(vb)
            views_a.append(va)
            views_b.append(vb)
            for view, resp in zip(
                ("gate", "up") if gate is not None else ("in", "out"), (va, vb), strict=True
            ):
                _check_finite(m, resp, f"{view} responses", layer)
            clock.compute += time.perf_counter() - t
            del w
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
            ("gate", "up") if cfg.gated else ("in", "out"),
            list(tok.strings[:n_r]),
            list(range(cfg.n_layers)),
            views_a,
            views_b,
        )

    if "paper" in s.modes:
        tok = _tokens(m, s.paper_n, s, "paper")
        t = time.perf_counter()
        x = m.embed_rows(list(tok.ids)).to(dev)  # raw rows, as published
        clock.read += time.perf_counter() - t
        layers = list(range(max(0, cfg.n_layers - 2), cfg.n_layers))
        terms = torch.empty(len(layers), 3, len(tok.ids), len(tok.ids), dtype=torch.float16)
        stream = LayerStream(m, roles, layers=layers, prefetch=s.prefetch)
        for j, (layer, w) in enumerate(stream):
            w = {r: t.to(dev) for r, t in w.items()}
            t = time.perf_counter()
            terms[j, 0] = K.standardise(K.attn_qk(x, x, w["attn_q"], w["attn_k"], H, KV, hd)).cpu().half()
            terms[j, 1] = K.standardise(K.attn_vo(x, x, w["attn_v"], w["attn_o"], H, KV, hd)).cpu().half()
            terms[j, 2] = (
                K.standardise(K.hadamard_ffn(x, w["mlp_up"], w.get("mlp_gate"), w["mlp_down"])).cpu().half()
            )
            for i, name in enumerate(TERM_NAMES):
                _check_finite(m, terms[j, i], f"paper {name} term", layer)
            clock.compute += time.perf_counter() - t
            assert layer == layers[j]
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
