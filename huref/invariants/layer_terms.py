"""One layer's invariant terms from its streamed weights: the layer's matrices widened to float32
one at a time (``LayerWeights``), a sparse layer's routed experts read ahead in a helper thread
(``ExpertReader``), and the attention, dense FFN and sparse (MoE) FFN terms both modes are built
from. ``huref.invariants.extract`` walks the layers and stores the terms."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import torch

from huref.arch import Model
from huref.arch.layers import weight_key
from huref.arch.model import Norm
from huref.checkpoint.source import all_finite
from huref.errors import ArchitectureError
from huref.invariants import kernels as K
from huref.paths import shown


def _on(nm: Norm, dev: torch.device) -> Norm:
    """The norm with its gain and bias on ``dev`` (they are read onto the CPU with the layer)."""
    move = lambda t: None if t is None else t.to(dev)  # noqa: E731
    return replace(nm, weight=move(nm.weight), bias=move(nm.bias))


def apply_norms(norms: list[Norm], x: torch.Tensor) -> torch.Tensor:
    for nm in norms:
        # gains kept (they cancel against readers), biases dropped
        x = _on(nm, x.device).apply(x, with_bias=False)
    return x


class Clock:
    def __init__(self) -> None:
        self.read = 0.0
        self.compute = 0.0


class ExpertReader:
    """A sparse layer's routed experts, read in a helper thread one matrix ahead of their use.

    The matrices come in the order the kernels ask for them (each expert's up, gate, down) and
    the thread reads the next one only once the previous one has been taken, so at most two
    stored matrices exist at a time (the one in use and the one being read: 0.23 GB for
    Mixtral-8x7B in bf16, where a whole expert is 0.35 GB) and reading overlaps the products.
    Time spent waiting for a matrix is reading time (``clock.read``). Only this thread reads
    through the model while it runs: the layer's other weights come from its stream.
    """

    ROLES = ("expert_up", "expert_gate", "expert_down")

    def __init__(self, m: Model, layer: int, dev: torch.device, clock: Clock) -> None:
        self.order = [(e, r) for e in range(m.n_experts(layer)) for r in self.ROLES]
        self.clock = clock
        self.items: queue.Queue = queue.Queue()
        self.slot = threading.Semaphore(1)
        self.stop = threading.Event()

        def run() -> None:
            try:
                for e, r in self.order:
                    self.slot.acquire()
                    if self.stop.is_set():
                        return
                    self.items.put((e, r, m.expert_tensor(r, layer, e, dtype=None).to(dev)))
            except BaseException as exc:  # handed to the consumer, raised there
                self.items.put(exc)

        self.thread = threading.Thread(target=run, name="huref-experts", daemon=True)
        self.thread.start()

    def take(self, expert: int, role: str) -> torch.Tensor:
        t = time.perf_counter()
        item = self.items.get()
        self.clock.read += time.perf_counter() - t
        if isinstance(item, BaseException):
            raise item
        assert item[:2] == (expert, role), (item[:2], expert, role)
        self.slot.release()  # the thread may read the next matrix now
        return item[2]

    def close(self) -> None:
        self.stop.set()
        self.slot.release()
        self.thread.join()


class LayerWeights:
    """One streamed layer's stored matrices (role -> view of the read buffer), converted to
    float32 on ``dev`` one at a time, when a product needs them."""

    def __init__(
        self,
        m: Model,
        layer: int,
        raw: dict[str, torch.Tensor],
        dev: torch.device,
        clock: Clock | None = None,
    ) -> None:
        self.m, self.layer, self.raw, self.dev = m, layer, raw, dev
        self.clock = clock or Clock()

    def __contains__(self, role: str) -> bool:
        return role in self.raw

    def stored(self, role: str, expert: int | None = None) -> torch.Tensor:
        """A matrix as stored (bf16 stays bf16), checked finite, on the device: for the kernels
        that widen it block by block (``kernels.times_t``), so no float32 copy of it exists."""
        t = self.raw[weight_key(role, expert)]
        if not all_finite(t):  # bf16/fp16 -> fp32 widens: checking the stored values suffices
            name = self.m.binding(role, self.layer, expert).name
            raise ArchitectureError(
                f"{shown(self.m.ckpt.path)}: tensor {shown(name)} contains NaN or infinite values"
            )
        return t.to(self.dev)

    def f32(self, role: str, expert: int | None = None) -> torch.Tensor:
        """A float32 copy of a matrix (always a copy: the read buffer is reused for a later layer)."""
        t = self.stored(role, expert)
        return torch.empty(t.shape, dtype=torch.float32, device=self.dev).copy_(t)

    def hadamard_in(self) -> torch.Tensor:
        """W_gate * W_up (or W_1) in one float32 buffer; the products of bf16 values are exact."""
        w = self.f32("mlp_up")
        if "mlp_gate" in self:
            w.mul_(self.f32("mlp_gate"))
        return w

    def experts(self) -> Iterator[tuple[K.Weight, K.Weight, K.Weight]]:
        """(gate, up, down) of each routed expert of this sparse layer in turn, as functions that
        return the matrix in its stored dtype on the device (read ahead by an ``ExpertReader``;
        the kernels ask for up, gate, down in that order and widen them in blocks), so peak memory
        holds two stored matrices, not the layer's eight or sixty-four experts, nor a float32
        copy. Every expert must be consumed in order."""
        reader = ExpertReader(self.m, self.layer, self.dev, self.clock)
        try:
            for e in range(self.m.n_experts(self.layer)):
                yield tuple(  # type: ignore[misc]
                    (lambda e=e, r=r: reader.take(e, r)) for r in ("expert_gate", "expert_up", "expert_down")
                )
        finally:
            reader.close()

    def shared(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(gate, up, down) of the layer's shared expert, if it has one."""
        if "shared_up" not in self:
            return None
        return self.f32("shared_gate"), self.f32("shared_up"), self.f32("shared_down")


def attention(
    m: Model, w: LayerWeights, xa: torch.Tensor, xo: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention terms (query-key [n, n], value-output [n, n]) of one layer on rows ``xa``
    (written out against ``xo``). Latent attention (DeepSeek) forms them from the queries, keys and
    values the model computes through its low-rank paths and their RMSNorms, never from the
    factors, which an adversary could re-factor."""
    cfg = m.cfg
    if cfg.mla is None:
        H, KV, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qk = K.attn_qk(xa, xa, w.stored("attn_q"), w.stored("attn_k"), H, KV, hd)
        return qk, K.attn_vo(xa, xo, w.stored("attn_v"), w.stored("attn_o"), H, KV, hd)
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


def routing(m: Model, w: LayerWeights, xf: torch.Tensor) -> torch.Tensor:
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


def sparse_ffn(
    m: Model, w: LayerWeights, xf: torch.Tensor, n_r: int
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
    route = routing(m, w, xf)
    xs = xf[:n_r]
    y = torch.zeros(xf.shape[0], m.cfg.d_model, dtype=xf.dtype, device=xf.device)
    groups: list[tuple[str, int]] = []
    views_a, views_b = [], []
    for e, (gate, up, down) in enumerate(w.experts()):  # streamed, one matrix at a time
        # its routed rows and the response rows in one product per weight (one widening each)
        rows, out, va, vb = K.expert_response(xf, route[:, e], gate, up, down, probe=xs)
        y.index_add_(0, rows, out)
        assert va is not None and vb is not None  # experts are gated, and probe rows were given
        views_a.append(va)
        views_b.append(vb)
        groups.append((str(e), va.shape[1]))
        del out
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


def dense_ffn(
    w: LayerWeights, xf: torch.Tensor, xr: torch.Tensor, n_r: int, gated: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A dense layer's robust FFN term [n, n] and its neurons' two views on the first n_r rows
    (rows of the same products: the probe rows are the first rows of ``xf``). The weights stay
    as stored and are widened in blocks by the kernels."""
    if gated:
        h, va, vb = K.gated_hidden(xf, w.stored("mlp_up"), w.stored("mlp_gate"), n_r)
        return K.ffn_out(h, w.stored("mlp_down"), xr), va, vb
    h = K.ffn_hidden(xf, w.stored("mlp_up"), None)
    va = h[:n_r].clone()
    f = K.ffn_out(h, w.stored("mlp_down"), xr)
    del h
    return f, va, xr[:n_r] @ w.f32("mlp_down")


def sparse_paper(w: LayerWeights, x: torch.Tensor) -> torch.Tensor:
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
