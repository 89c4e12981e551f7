"""What a config implies for stored tensors: every role's shape, how fused tensors split into
roles, and the check that a checkpoint's headers agree (no tensor data is read)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from huref.arch.config import ArchConfig, MoEConfig
from huref.arch.spec import Rule
from huref.checkpoint import Checkpoint
from huref.errors import ArchitectureError
from huref.paths import shown


def expected_shapes(cfg: ArchConfig) -> dict[str, tuple[int, ...]]:
    d, hd, H, K, f = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff
    shapes: dict[str, tuple[int, ...]] = {
        "attn_q": (H * hd, d),
        "attn_k": (K * hd, d),
        "attn_v": (K * hd, d),
        "attn_o": (d, H * hd),
        "mlp_gate": (f, d),
        "mlp_up": (f, d),
        "mlp_down": (d, f),
        "attn_q_norm": (hd,),
        "attn_k_norm": (hd,),
        "attn_q_norm_bias": (hd,),
        "attn_k_norm_bias": (hd,),
        "lm_head": (cfg.vocab_size, d),
        "lm_head_bias": (cfg.vocab_size,),
    }
    for role in ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"):
        shapes[role + "_bias"] = (shapes[role][0],)
    for role in ("attn_norm", "mlp_norm", "attn_out_norm", "mlp_out_norm", "final_norm", "embed_norm"):
        shapes[role] = (d,)
        shapes[role + "_bias"] = (d,)
    d_embed = int(cfg.extra.get("d_embed", d))
    shapes["embed"] = (cfg.vocab_size, d_embed)
    shapes["embed_proj_in"] = (d, d_embed)
    shapes["embed_proj_out"] = (d_embed, d)
    shapes["attn_q_norm_wide"] = (H * hd,)
    shapes["attn_k_norm_wide"] = (K * hd,)
    shapes["attn_sinks"] = (H,)
    if cfg.mla is not None:  # Multi-head Latent Attention: hd is qk_nope + qk_rope
        a = cfg.mla
        rq, rkv, r, v = a.q_lora_rank, a.kv_lora_rank, a.qk_rope_head_dim, a.v_head_dim
        shapes.update(attn_o=(d, H * v), attn_o_bias=(d,), attn_kv_a=(rkv + r, d), attn_kv_a_bias=(rkv + r,))
        shapes.update(attn_kv_a_norm=(rkv,), attn_kv_b=(H * (a.qk_nope_head_dim + v), rkv))
        if rq is not None:
            shapes.update(attn_q_a=(rq, d), attn_q_a_bias=(rq,), attn_q_a_norm=(rq,), attn_q_b=(H * hd, rq))
    if cfg.moe is not None:
        F, E = cfg.moe.d_expert, cfg.moe.n_experts
        shapes.update(moe_router=(E, d), expert_gate=(F, d), expert_up=(F, d), expert_down=(d, F))
        shapes["moe_router_bias"] = (E,)
        shapes.update(expert_gate_bias=(F,), expert_up_bias=(F,), expert_down_bias=(d,))
        shapes["shared_expert_gate"] = (1, d)
        if cfg.moe.d_shared is not None:
            Fs = cfg.moe.d_shared
            shapes.update(shared_gate=(Fs, d), shared_up=(Fs, d), shared_down=(d, Fs))
    return shapes


def _split_sizes(rule: Rule, cfg: ArchConfig) -> list[int] | None:
    if rule.split == "halves":
        return None
    if cfg.qkv_layout == "concat":
        return [cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim]
    return None


def split_fused(t: torch.Tensor, rule: Rule, cfg: ArchConfig) -> list[torch.Tensor]:
    """Split a fused [out, ...] tensor into its roles along the output dimension (one expert's
    [2F, in] slice of an 'expert_halves' stack: gate rows, then up rows; of an
    'expert_interleaved' one: gate rows at even, up rows at odd indices)."""
    rest = t.shape[1:]
    if rule.split == "expert_interleaved":
        return [t[0::2], t[1::2]]  # strided views; convert() copies them contiguous
    if rule.split in ("halves", "expert_halves"):
        return list(t.chunk(2, dim=0))
    H, K, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    layout = cfg.qkv_layout
    if layout == "concat":
        return list(torch.split(t, _split_sizes(rule, cfg) or [], dim=0))
    if layout == "per_head":
        v = t.reshape(H, 3, hd, *rest)  # [heads, (q,k,v), hd, in]
        return [v[:, i].reshape(H * hd, *rest) for i in range(3)]
    if layout == "per_kv_group":
        g = H // K
        v = t.reshape(K, g + 2, hd, *rest)  # [kv heads, (q x group, k, v), hd, in]
        q = v[:, :g].reshape(H * hd, *rest)
        return [q, v[:, g].reshape(K * hd, *rest), v[:, g + 1].reshape(K * hd, *rest)]
    raise ArchitectureError(f"fused tensor with unknown layout {layout!r}")


def stored_order(shape: tuple[int, ...], rule: Rule) -> tuple[int, ...]:
    """A stored shape in canonical order, or back: conv1d's [in, out] reversed (of each expert of
    a stack: [E, in, out] <-> [E, out, in])."""
    if rule.storage != "conv1d":
        return tuple(shape)
    return (shape[0], *shape[1:][::-1]) if rule.expert_stack else tuple(shape[::-1])


def fused_total(rule: Rule, cfg: ArchConfig, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    parts = [shapes[r] for r in rule.roles]
    total = (sum(p[0] for p in parts), *parts[0][1:])
    return (cfg.moe.n_experts, *total) if rule.expert_stack and cfg.moe is not None else total


def check_shapes(ckpt: Checkpoint, cfg: ArchConfig, bound: Sequence[tuple[str, str, Rule]]) -> None:
    """Every bound tensor (role, stored name, rule) has the shape the config implies, from its
    header alone; a fused or stacked tensor is checked once, against its roles' total."""
    shapes = expected_shapes(cfg)
    seen: set[str] = set()
    for role, name, rule in bound:
        if name in seen:
            continue
        seen.add(name)
        info = ckpt.source.info(name)
        got = stored_order(tuple(info.shape), rule)
        if len(rule.roles) > 1 or rule.expert_stack:
            want = fused_total(rule, cfg, shapes)
        else:
            want = shapes.get(role, got)
        if role in ("pos_embed", "type_embed"):  # added to the residual stream: width d_model
            want = (got[0], cfg.d_model) if got else got  # (OPT-350m: embed is narrower)
        if tuple(got) != tuple(want):
            raise ArchitectureError(
                f"{shown(ckpt.path)}: tensor {shown(name)} has shape {list(info.shape)}, but config.json "
                f"implies {list(stored_order(tuple(want), rule))}"
            )


def moe_summary(moe: MoEConfig) -> dict[str, object]:
    """The sparse MoE part of an architecture, as recorded in fingerprints and reports."""
    return {
        "experts": moe.n_experts,
        "top_k": moe.top_k,
        "d_expert": moe.d_expert,
        "renormalise": moe.renormalise,
        "d_shared": moe.d_shared,
        "shared_gated": moe.shared_gated,
        "sparse_layers": list(moe.sparse_layers),
        **(
            {}
            if moe.topk_method == "greedy" and moe.scoring == "softmax" and moe.routed_scale == 1.0
            else {
                "scoring": moe.scoring,
                "topk_method": moe.topk_method,
                "n_group": moe.n_group,
                "topk_group": moe.topk_group,
                "routed_scale": moe.routed_scale,
                "router_bias": moe.router_bias,
            }
        ),
        # GPT-OSS only: older fingerprints' summaries stay as they were
        **({"router_logit_bias": True} if moe.router_logit_bias else {}),
    }
