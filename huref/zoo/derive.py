"""Derivations that change a model's function: the evidence huref must still trace.

Training-based ones (SFT, continued pretraining, LoRA) run through transformers models; the
structural ones (quantization, pruning, merges) edit role tensors through ``RoleState``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from huref.checkpoint import open_checkpoint
from huref.errors import ArchitectureError
from huref.zoo.rolestate import RoleState

LINEAR_LAYER_ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down")


def quantize_int8(s: RoleState) -> RoleState:
    """Symmetric per-output-row int8 quantize-dequantize of every matrix (embeddings included)."""
    for key, t in s.all_tensors().items():
        if t.dim() != 2:
            continue
        scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
        s.put(key, torch.round(t / scale).clamp(-127, 127) * scale)
    return s


def prune_magnitude(s: RoleState, sparsity: float = 0.3) -> RoleState:
    """Zero the smallest-magnitude fraction of every layer matrix (unstructured)."""
    for (role, layer), t in list(s.tensors.items()):
        if layer is None or role not in LINEAR_LAYER_ROLES:
            continue
        k = int(t.numel() * sparsity)
        if k == 0:
            continue
        thresh = t.abs().flatten().kthvalue(k).values
        s.tensors[(role, layer)] = torch.where(t.abs() <= thresh, torch.zeros_like(t), t)
    return s


def prune_depth(s: RoleState, drop: list[int]) -> list[int]:
    """Drop whole layers (ShortGPT-style); returns the original indices of the kept layers."""
    keep = [i for i in range(s.n_layers) if i not in drop]
    s.relayer(keep)
    return keep


def prune_width(s: RoleState, ffn_frac: float = 0.25, drop_kv_groups: int = 1, drop_dims: int = 8) -> dict:
    """Structured pruning: FFN neurons, one key/value group with its query heads, residual dims.

    Units with the smallest weight norms go first, as in magnitude-based structured pruning.
    """
    if s.experts:
        raise ArchitectureError(f"{s.source}: width pruning is written for dense models only")
    cfg = s.config
    H = cfg["num_attention_heads"]
    K = cfg.get("num_key_value_heads") or H
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    grp = H // K
    d = s.get("embed").shape[1]
    # residual dims: smallest embedding column norms
    dims_keep = torch.argsort(s.get("embed").norm(dim=0), descending=True)[: d - drop_dims].sort().values
    for layer in range(s.n_layers):
        gate, up, down = s.get("mlp_gate", layer), s.get("mlp_up", layer), s.get("mlp_down", layer)
        score = gate.norm(dim=1) * up.norm(dim=1) * down.norm(dim=0)
        f_keep = torch.argsort(score, descending=True)[: round(gate.shape[0] * (1 - ffn_frac))].sort().values
        s.set("mlp_gate", layer, gate[f_keep][:, dims_keep])
        s.set("mlp_up", layer, up[f_keep][:, dims_keep])
        s.set("mlp_down", layer, down[dims_keep][:, f_keep])
        k = s.get("attn_k", layer).reshape(K, hd, -1)
        kv_score = k.flatten(1).norm(dim=1)
        kv_keep = torch.argsort(kv_score, descending=True)[: K - drop_kv_groups].sort().values
        q_keep = torch.cat([torch.arange(int(g) * grp, (int(g) + 1) * grp) for g in kv_keep])
        q = s.get("attn_q", layer).reshape(H, hd, -1)[q_keep].reshape(-1, d)[:, dims_keep]
        k = k[kv_keep].reshape(-1, d)[:, dims_keep]
        v = s.get("attn_v", layer).reshape(K, hd, -1)[kv_keep].reshape(-1, d)[:, dims_keep]
        o = s.get("attn_o", layer).reshape(d, H, hd)[:, q_keep].reshape(d, -1)[dims_keep]
        s.set("attn_q", layer, q)
        s.set("attn_k", layer, k)
        s.set("attn_v", layer, v)
        s.set("attn_o", layer, o)
        for norm in ("attn_norm", "mlp_norm"):
            s.set(norm, layer, s.get(norm, layer)[dims_keep])
    s.set("final_norm", None, s.get("final_norm")[dims_keep])
    s.set("embed", None, s.get("embed")[:, dims_keep])
    if s.has("lm_head"):
        s.set("lm_head", None, s.get("lm_head")[:, dims_keep])
    new_k = K - drop_kv_groups
    cfg.update(
        hidden_size=d - drop_dims,
        intermediate_size=s.get("mlp_up", 0).shape[0],
        num_attention_heads=new_k * grp,
        num_key_value_heads=new_k,
        head_dim=hd,
    )
    return {
        "residual_dims_kept": len(dims_keep),
        "kv_groups_kept": new_k,
        "ffn_kept": cfg["intermediate_size"],
    }


def merge_linear(a: RoleState, b: RoleState, w: float = 0.5) -> RoleState:
    other = b.all_tensors()
    for key, t in a.all_tensors().items():
        a.put(key, w * t + (1 - w) * other[key])
    return a


def merge_ties(base: RoleState, models: list[RoleState], density: float = 0.2, lam: float = 1.0) -> RoleState:
    """TIES-merging (Yadav et al. 2023): trim each task vector to its top-|density| entries,
    elect a sign per entry by summed mass, average the entries that agree with it."""
    others = [m.all_tensors() for m in models]
    for key, b in base.all_tensors().items():
        taus = []
        for m in others:
            tau = m[key] - b
            if tau.numel() > 1:
                k = max(1, int(tau.numel() * density))
                thresh = tau.abs().flatten().topk(k).values[-1]
                tau = torch.where(tau.abs() >= thresh, tau, torch.zeros_like(tau))
            taus.append(tau)
        stack = torch.stack(taus)  # [models, ...]
        sign = torch.sign(stack.sum(0))
        agree = (torch.sign(stack) == sign) & (stack != 0)
        merged = (stack * agree).sum(0) / agree.sum(0).clamp_min(1)
        base.put(key, b + lam * merged)
    return base


def relative_change(a: Path, b: Path) -> float:
    """||theta_b - theta_a|| / ||theta_a|| over tensors matched by name and shape (streamed)."""
    ca, cb = open_checkpoint(a), open_checkpoint(b)
    names_b = set(cb.source.names())
    num = den = 0.0
    for name in ca.source.names():
        if name not in names_b or ca.source.info(name).shape != cb.source.info(name).shape:
            continue
        t, u = ca.source.read(name).double(), cb.source.read(name).double()
        num += float((u - t).pow(2).sum())
        den += float(t.pow(2).sum())
    return (num / max(den, 1e-30)) ** 0.5


# a dense FFN role -> the expert role that receives a copy of it
UPCYCLE_ROLES = {"expert_gate": "mlp_gate", "expert_up": "mlp_up", "expert_down": "mlp_down"}


def upcycle(dense: RoleState, moe: RoleState, g: torch.Generator, router_std: float = 0.02) -> RoleState:
    """Sparse upcycling (Komatsuzaki et al. 2023, as Qwen1.5-MoE and others were made): ``moe``
    (a freshly initialised MoE of the dense model's shape) takes the dense model's attention,
    norms, embeddings and head, every expert a copy of its layer's FFN, and a small random router.
    With identical experts and weights renormalised over the chosen ones, it computes the dense
    model's function until it is trained. The settings that shape attention and the norms
    (RoPE, norm epsilon) are taken from the dense model's config too."""
    for key in ("rms_norm_eps", "rope_parameters", "rope_theta", "rope_scaling", "head_dim"):
        if key in dense.config:
            moe.config[key] = dense.config[key]
    for (role, layer), t in list(moe.tensors.items()):
        if role == "moe_router":
            moe.set(role, layer, torch.randn(t.shape, generator=g) * router_std)
        elif not dense.has(role, layer) or dense.get(role, layer).shape != t.shape:
            raise ArchitectureError(f"{dense.source}: no {role} of shape {tuple(t.shape)} to upcycle from")
        else:
            moe.set(role, layer, dense.get(role, layer).clone())
    for role, layer, e in list(moe.experts):
        moe.set_expert(role, layer, e, dense.get(UPCYCLE_ROLES[role], layer).clone())
    return moe
