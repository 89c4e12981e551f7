"""DeepSeek-V2/V3 (Multi-head Latent Attention and group-limited routed experts) as data.

Each case is built tiny with transformers and saved; huref binds it both ways with its latent
attention roles, dense first layers and shared experts; huref's kernels over those roles give each
head's query, key and value, the value/output path, the routing weights and the whole sparse
block exactly as transformers computes them; and a missing or misshapen MLA tensor or a bad
routing config is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from archkit import MLA_FAMILIES, randomise_
from safetensors.torch import load_file, save_file
from transformers import AttentionInterface

from huref.arch import spec_for
from huref.arch.layers import LayerStream
from huref.arch.model import Model, load_model
from huref.arch.validate import declared_tensors, missing_roles, validate_checkpoint
from huref.errors import ArchitectureError
from huref.invariants.kernels import (
    MLAWeights,
    deepseek_route,
    mla_attn_qk,
    mla_attn_vo,
    mla_qk_heads,
    mla_values,
)

CASES = list(MLA_FAMILIES)
EXPERT = ("expert_gate", "expert_up", "expert_down")
SHARED = ("shared_gate", "shared_up", "shared_down")
MLA_KV = ("attn_kv_a", "attn_kv_a_norm", "attn_kv_b")
LOW_RANK_Q = ("attn_q_a", "attn_q_a_norm", "attn_q_b")

_CAPTURED: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


def _identity_attention(module, q, k, v, mask, **kw):  # type: ignore[no-untyped-def]
    """Records q, k, v ([b, H, s, hd]) and returns the values as the context, so the output
    projection reads each head's v: the module's output is then V W_O."""
    _CAPTURED.append((q.detach(), k.detach(), v.detach()))
    return v.transpose(1, 2).contiguous(), None


AttentionInterface.register("huref_mla_capture", _identity_attention)


def _build(case: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(MLA_FAMILIES[case]("silu")).eval()
    randomise_(model, seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # V3's selection bias is a buffer: randomise_ leaves it at zero
        for layer in model.model.layers:
            bias = getattr(getattr(layer.mlp, "gate", None), "e_score_correction_bias", None)
            if bias is not None:
                bias.copy_(0.5 * torch.randn(bias.shape, generator=g))
    return model


def _save(case: str, out: Path) -> tuple[torch.nn.Module, Path]:
    model = _build(case)
    model.save_pretrained(out)
    return model, out


def _mla(m: Model, layer: int) -> MLAWeights:
    """huref's MLA roles of ``layer`` as the kernels take them."""
    return MLAWeights(
        w_kv_a=m.tensor("attn_kv_a", layer),
        kv_a_norm=m.tensor("attn_kv_a_norm", layer),
        w_kv_b=m.tensor("attn_kv_b", layer),
        w_q=m.optional("attn_q", layer),
        w_q_a=m.optional("attn_q_a", layer),
        q_a_norm=m.optional("attn_q_a_norm", layer),
        w_q_b=m.optional("attn_q_b", layer),
        b_q_a=m.optional("attn_q_a_bias", layer),
        b_kv_a=m.optional("attn_kv_a_bias", layer),
    )


def _dims(m: Model) -> dict[str, int]:
    a = m.cfg.mla
    assert a is not None
    return dict(
        n_heads=m.cfg.n_heads,
        kv_lora_rank=a.kv_lora_rank,
        qk_nope=a.qk_nope_head_dim,
        v_head_dim=a.v_head_dim,
    )


def _route(m: Model, layer: int, logits: torch.Tensor, **change: object) -> torch.Tensor:
    moe = m.cfg.moe
    assert moe is not None
    opts = dict(
        scoring=moe.scoring,
        topk_method=moe.topk_method,
        n_group=moe.n_group,
        topk_group=moe.topk_group,
        renormalise=moe.renormalise,
        scale=moe.routed_scale,
    )
    bias = m.optional("moe_router_bias", layer)
    opts.update(change)
    if opts.pop("no_bias", False):
        bias = None
    return deepseek_route(logits, bias, moe.top_k, **opts)  # type: ignore[arg-type]


def _ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """A SiLU-gated FFN from huref's role tensors, [n, d] -> [n, d]."""
    return (F.silu(x @ gate.t()) * (x @ up.t())) @ down.t()


# ------------------------------------------------------------------ binding, both ways
@pytest.mark.parametrize("case", CASES)
def test_deepseek_model_binds_both_ways_with_latent_attention_roles_and_its_config(
    case: str, tmp_path: Path
) -> None:
    model, path = _save(case, tmp_path / case)
    hf = model.config
    m = load_model(path)
    mla, moe = m.cfg.mla, m.cfg.moe
    assert m.spec.name == "llama" and m.cfg.model_type == hf.model_type
    assert mla is not None and moe is not None
    assert (mla.q_lora_rank, mla.kv_lora_rank) == (hf.q_lora_rank, hf.kv_lora_rank)
    assert (mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim) == (6, 4, 5)
    assert m.cfg.head_dim == mla.qk_head_dim == 10 and m.cfg.n_heads == 4
    v3 = hf.model_type == "deepseek_v3"
    assert (moe.n_experts, moe.top_k, moe.d_expert, moe.d_shared) == (8, 3, 16, 32)
    assert moe.scoring == ("sigmoid" if v3 else "softmax") and moe.router_bias == v3
    assert moe.topk_method == ("noaux_tc" if v3 else hf.topk_method)
    assert moe.renormalise == (v3 and hf.norm_topk_prob)
    assert moe.routed_scale == hf.routed_scaling_factor and moe.n_group == (hf.n_group or 1)
    sparse = [hasattr(layer.mlp, "experts") for layer in model.model.layers]
    assert sparse == [False, True, True] and [m.is_sparse(L) for L in range(3)] == sparse
    names = set(m.ckpt.source.names())
    bound = {b.name for b in m._bind.values()} | {b.name for b in m._experts.values()}
    assert bound == names  # every stored tensor claimed, no buffer or ignored one needed
    assert bound <= set(declared_tensors(m.spec, m.cfg, m.prefix))
    assert missing_roles(m.cfg, m.has) == []
    for L in range(3):
        assert not m.has("attn_k", L) and not m.has("attn_v", L)
        assert all(m.has(r, L) for r in (*MLA_KV, "attn_o"))
        assert m.has("attn_q", L) == (hf.q_lora_rank is None)
        assert all(m.has(r, L) == (hf.q_lora_rank is not None) for r in LOW_RANK_Q)
        assert m.has("attn_q_a_bias", L) == m.has("attn_kv_a_bias", L) == m.has("attn_o_bias", L)
        assert m.has("attn_kv_a_bias", L) == bool(hf.attention_bias)
        assert m.has("mlp_gate", L) != sparse[L] and m.has("moe_router", L) == sparse[L]
        assert all(m.has(r, L) == sparse[L] for r in SHARED) and not m.has("shared_expert_gate", L)
        assert m.has("moe_router_bias", L) == (sparse[L] and v3)
        assert m.expert_roles(L) == (sorted(EXPERT) if sparse[L] else [])
    if v3:
        assert m.binding("moe_router_bias", 1).name == "model.layers.1.mlp.gate.e_score_correction_bias"
    assert m.binding("attn_kv_b", 2).name == "model.layers.2.self_attn.kv_b_proj.weight"
    result = validate_checkpoint(path)
    assert result.tensors == len(names) and result.summary()["config"]["mla"]["kv_lora_rank"] == 10
    assert (
        m.summary()["mla"] == dataclasses.asdict(mla)
        and m.summary()["moe"].get("scoring", "softmax") == moe.scoring
    )
    # the streaming reader yields the new roles like any other
    roles = [*MLA_KV, *LOW_RANK_Q, "attn_q", "moe_router_bias"]
    for L, weights in LayerStream(m, roles, layers=[1]):
        torch.testing.assert_close(weights["attn_kv_b"], m.tensor("attn_kv_b", L))
        assert ("moe_router_bias" in weights) == v3


def test_dense_and_other_moe_configs_keep_plain_attention_and_softmax_routing() -> None:
    from archkit import MOE_FAMILIES

    for make in MOE_FAMILIES.values():
        config = make("silu").to_dict()
        cfg = spec_for(config).read_config(config)
        assert cfg.mla is None and cfg.moe is not None
        assert (cfg.moe.scoring, cfg.moe.topk_method, cfg.moe.routed_scale, cfg.moe.router_bias) == (
            "softmax",
            "greedy",
            1.0,
            False,
        )


# ------------------------------------------------------------------ attention reproduces transformers
@pytest.mark.parametrize("case", CASES)
def test_mla_kernels_reproduce_transformers_queries_keys_values_and_output(case: str, tmp_path: Path) -> None:
    """At position 0 the rotary rotation is the identity, so what the attention function receives
    is each head's position-free q, k and v (V3's interleaved rotary code also moves the rope
    part's even dimensions before its odd ones, for q and k alike: their products are unchanged);
    with the values returned as the context the module's output is V W_O (+ the o bias)."""
    model, path = _save(case, tmp_path / case)
    m = load_model(path)
    dims = _dims(m)
    rope = m.cfg.mla.qk_rope_head_dim  # type: ignore[union-attr]
    model.set_attn_implementation("huref_mla_capture")  # public API; the function registered above
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for L, layer in enumerate(model.model.layers):
            x = torch.randn(9, m.cfg.d_model, generator=g)
            xa = x
            for nm in m.input_norms(L, "attn"):
                xa = nm.apply(xa)
            torch.testing.assert_close(xa, layer.input_layernorm(x[None])[0])
            pos = torch.zeros(1, x.shape[0], dtype=torch.long)
            pe = model.model.rotary_emb(xa[None], pos)
            _CAPTURED.clear()
            out_hf = layer.self_attn(hidden_states=xa[None], position_embeddings=pe, attention_mask=None)[0][
                0
            ]
            (q_hf, k_hf, v_hf), *_ = _CAPTURED
            q_hf, k_hf, v_hf = (t[0].transpose(0, 1) for t in (q_hf, k_hf, v_hf))  # [n, H, hd]
            w = _mla(m, L)
            q, k = mla_qk_heads(xa, w, qk_rope=rope, **dims)
            if getattr(model.config, "rope_interleave", False):
                nope = dims["qk_nope"]
                order = [*range(nope), *range(nope, nope + rope, 2), *range(nope + 1, nope + rope, 2)]
                q, k = q[..., order], k[..., order]
            torch.testing.assert_close(q, q_hf, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(k, k_hf, atol=1e-5, rtol=1e-4)
            want_qk = torch.einsum("ihc,jhc->ij", q_hf, k_hf)  # sum over heads of q_h k_h^T
            torch.testing.assert_close(
                mla_attn_qk(xa, w, qk_rope=rope, **dims), want_qk, atol=1e-4, rtol=1e-4
            )
            v = mla_values(xa, w, **dims)
            torch.testing.assert_close(v, v_hf, atol=1e-5, rtol=1e-4)
            vo = v.reshape(x.shape[0], -1) @ m.tensor("attn_o", L).t()
            b_o = m.optional("attn_o_bias", L)
            torch.testing.assert_close(vo + (0 if b_o is None else b_o), out_hf, atol=1e-5, rtol=1e-4)
            xo = torch.randn(9, m.cfg.d_model, generator=g)
            got = mla_attn_vo(xa, xo, w, m.tensor("attn_o", L), **dims)
            torch.testing.assert_close(got, vo @ xo.t(), atol=1e-4, rtol=1e-4)


def test_mla_terms_are_invariant_under_latent_reparametrisation_and_head_mixing(tmp_path: Path) -> None:
    """What an adversary may rewrite without changing the model leaves both terms unchanged: a
    permutation and positive rescaling of the query latent (the RMSNorm gain moved along), a
    permutation of the key/value latent, and per head an invertible mix of the k_nope rows
    against the query's nope rows and of the v rows against attn_o's columns. Changing a weight
    does change them."""
    _, path = _save("deepseek_v3", tmp_path / "m")
    m = load_model(path)
    dims, rope = _dims(m), 4
    H, n_, r, v_ = 4, 6, rope, 5
    w = _mla(m, 1)
    w_o = m.tensor("attn_o", 1)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(12, m.cfg.d_model, generator=g)
    qk, vo = mla_attn_qk(x, w, qk_rope=rope, **dims), mla_attn_vo(x, x, w, w_o, **dims)
    assert w.w_q_a is not None and w.q_a_norm is not None and w.w_q_b is not None
    pq, pkv = torch.randperm(12, generator=g), torch.randperm(10, generator=g)
    q_b = w.w_q_b[:, pq].reshape(H, n_ + r, 12).clone()
    kv_b = w.w_kv_b[:, pkv].reshape(H, n_ + v_, 10).clone()
    o = w_o.reshape(-1, H, v_).clone()
    for h in range(H):
        c = torch.randn(n_, n_, generator=g) + 3 * torch.eye(n_)
        q_b[h, :n_] = c @ q_b[h, :n_]
        kv_b[h, :n_] = torch.linalg.inv(c).t() @ kv_b[h, :n_]
        cv = torch.randn(v_, v_, generator=g) + 3 * torch.eye(v_)
        kv_b[h, n_:] = cv @ kv_b[h, n_:]
        o[:, h] = o[:, h] @ torch.linalg.inv(cv)
    kv_a = torch.cat([w.w_kv_a[:10][pkv], w.w_kv_a[10:]])
    rewritten = w._replace(
        w_q_a=3.0 * w.w_q_a[pq],
        q_a_norm=w.q_a_norm[pq],
        w_q_b=q_b.reshape(-1, 12),
        w_kv_a=kv_a,
        kv_a_norm=w.kv_a_norm[pkv],
        w_kv_b=kv_b.reshape(-1, 10),
    )
    w_o2 = o.reshape(w_o.shape)
    torch.testing.assert_close(mla_attn_qk(x, rewritten, qk_rope=rope, **dims), qk, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(mla_attn_vo(x, x, rewritten, w_o2, **dims), vo, atol=1e-3, rtol=1e-3)
    tampered = w._replace(w_kv_b=w.w_kv_b + 0.05 * torch.randn(w.w_kv_b.shape, generator=g))
    assert not torch.allclose(mla_attn_qk(x, tampered, qk_rope=rope, **dims), qk, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(mla_attn_vo(x, x, tampered, w_o, **dims), vo, atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------ routing and the sparse block
@pytest.mark.parametrize("case", CASES)
def test_deepseek_routing_weights_equal_transformers_router(case: str, tmp_path: Path) -> None:
    model, path = _save(case, tmp_path / case)
    m = load_model(path)
    moe = m.cfg.moe
    assert moe is not None
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for L in moe.sparse_layers:
            xf = torch.randn(64, m.cfg.d_model, generator=g)
            logits = xf @ m.tensor("moe_router", L).t()
            logits_hf, w_hf, idx_hf = model.model.layers[L].mlp.gate(xf)
            torch.testing.assert_close(logits, logits_hf, atol=1e-5, rtol=1e-4)
            want = torch.zeros(xf.shape[0], moe.n_experts).scatter_(1, idx_hf, w_hf)
            route = _route(m, L, logits)
            torch.testing.assert_close(route, want, atol=1e-6, rtol=1e-5)
            assert (route > 0).sum(-1).eq(moe.top_k).all()
            # each routing choice the config makes shows in these tokens' weights
            if moe.router_bias:
                assert not torch.allclose(_route(m, L, logits, no_bias=True), want)
            if moe.topk_method != "greedy" and moe.topk_group < moe.n_group:
                assert not torch.allclose(_route(m, L, logits, topk_method="greedy"), want)
            if moe.routed_scale != 1.0:
                assert not torch.allclose(_route(m, L, logits, scale=1.0), want)
            if moe.renormalise:
                torch.testing.assert_close(route.sum(-1), torch.full((64,), moe.routed_scale))


@pytest.mark.parametrize("case", CASES)
def test_deepseek_sparse_block_with_silu_equals_transformers_moe(case: str, tmp_path: Path) -> None:
    """huref's router, routing, experts and shared experts, with the SiLU applied, are the block;
    the dense first layer is the MLP of mlp_gate/up/down."""
    model, path = _save(case, tmp_path / case)
    m = load_model(path)
    moe = m.cfg.moe
    assert moe is not None
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for L, layer in enumerate(model.model.layers):
            x = torch.randn(24, m.cfg.d_model, generator=g)
            xf = x
            for nm in m.input_norms(L, "mlp"):
                xf = nm.apply(xf)
            torch.testing.assert_close(xf, layer.post_attention_layernorm(x[None])[0])
            y_hf = layer.mlp(xf[None])[0]
            if not m.is_sparse(L):
                want = _ffn(xf, *(m.tensor(r, L) for r in ("mlp_gate", "mlp_up", "mlp_down")))
                torch.testing.assert_close(want, y_hf, atol=1e-5, rtol=1e-4)
                continue
            route = _route(m, L, xf @ m.tensor("moe_router", L).t())
            want = _ffn(xf, *(m.tensor(r, L) for r in SHARED))
            for e in range(moe.n_experts):
                want = want + route[:, e, None] * _ffn(xf, *(m.tensor(r, L, e) for r in EXPERT))
            torch.testing.assert_close(want, y_hf, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ refusals
def _edit(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    sd = load_file(str(path / "model.safetensors"))
    fn(sd)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


A = "model.layers.1.self_attn."


@pytest.mark.parametrize(
    "edit,message",
    [
        (
            lambda sd: sd.pop(A + "kv_b_proj.weight"),
            r"missing tensors model\.layers\.1\.self_attn\.kv_b_proj",
        ),
        (
            lambda sd: sd.pop("model.layers.2.mlp.gate.e_score_correction_bias"),
            r"missing tensors model\.layers\.2\.mlp\.gate\.e_score_correction_bias",
        ),
        (
            lambda sd: sd.update({A + "q_a_proj.weight": sd[A + "q_a_proj.weight"][:8].clone()}),
            r"q_a_proj\.weight has shape \[8, 32\], but config\.json implies \[12, 32\]",
        ),
        (
            lambda sd: sd.update({A + "k_proj.weight": torch.zeros(40, 32)}),
            r"not claimed by the llama definition: model\.layers\.1\.self_attn\.k_proj",
        ),
    ],
    ids=["missing-kv_b", "missing-router-bias", "narrow-q_a", "stray-k_proj"],
)
def test_a_bad_mla_or_router_tensor_is_refused(edit, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, path = _save("deepseek_v3", tmp_path / "m")
    load_model(path)  # intact, it binds
    _edit(path, edit)
    with pytest.raises(ArchitectureError, match=message):
        load_model(path)


@pytest.mark.parametrize(
    "case,change,message",
    [
        ("deepseek_v3", {"n_group": 3}, "8 experts in 3 groups"),
        ("deepseek_v3", {"topk_group": 5}, "8 experts in 4 groups, 5 of them chosen"),
        ("deepseek_v3", {"n_group": 8, "topk_group": 4}, "two best experts"),
        ("deepseek_v2", {"num_experts_per_tok": 5}, "5 experts per token, but 2 groups of 2 hold 4"),
        ("deepseek_v2", {"topk_method": "noaux_tc"}, "'topk_method' must be 'greedy' or"),
        (
            "deepseek_v2",
            {"first_k_dense_replace": -1},
            "'first_k_dense_replace' must be a whole number from 0",
        ),
        ("deepseek_v3", {"kv_lora_rank": 2.5}, "'kv_lora_rank' must be a whole number"),
    ],
)
def test_a_bad_mla_or_routing_config_is_refused_naming_its_key(case: str, change: dict, message: str) -> None:
    config = {**MLA_FAMILIES[case]("silu").to_dict(), **change}
    with pytest.raises(ArchitectureError, match=message):
        spec_for(config).read_config(config)


def test_a_config_without_q_lora_rank_is_refused_and_null_means_a_full_rank_query() -> None:
    config = MLA_FAMILIES["deepseek_v3"]("silu").to_dict()
    cfg = spec_for({**config, "q_lora_rank": None}).read_config({**config, "q_lora_rank": None})
    assert cfg.mla is not None and cfg.mla.q_lora_rank is None
    config.pop("q_lora_rank")
    with pytest.raises(ArchitectureError, match="lacks 'q_lora_rank'"):
        spec_for(config).read_config(config)
