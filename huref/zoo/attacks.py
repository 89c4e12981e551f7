"""Function-preserving transforms of a LLaMA-style checkpoint (DESIGN.md §3).

Each attack returns a model that computes exactly the same function as its input (checked by
the zoo at build time against logits), while changing the weights in ways an adversary could use
to hide a model's origin. Conventions: Linear weights are [out, in]; the residual stream is a row
vector x, so a read-in weight W sees x @ W.T. Transforming the stream x -> x Q (Q invertible)
therefore maps read-in weights W -> W Q^-T ... here every Q used is orthogonal or diagonal, and
the formulas are written out per attack.

Sparse (MoE) layers are edited with the same formulas: the router, every routed expert and the
shared expert read the FFN norm's output like a dense FFN's gate and up do, and the experts'
down projections write into the stream; ``expert_permutation`` renumbers experts with the router.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from huref.zoo.rolestate import ExpertKey, Key, RoleState

FFN_READERS: tuple[str, ...] = ("mlp_gate", "mlp_up", "moe_router", "expert_gate", "expert_up")
FFN_READERS += ("shared_gate", "shared_up", "shared_expert_gate")
NORM_READERS = {"attn_norm": ("attn_q", "attn_k", "attn_v"), "mlp_norm": FFN_READERS}
READ_ROLES = NORM_READERS["attn_norm"] + FFN_READERS  # read the residual stream
WRITE_ROLES = ("attn_o", "mlp_down", "shared_down", "expert_down")  # write into the residual stream
# the FFNs of a layer, as (gate, up, down): SwiGLU's hidden units can be permuted and rescaled
FFN_UNITS = (("mlp_gate", "mlp_up", "mlp_down"), ("shared_gate", "shared_up", "shared_down"))
EXPERT_UNIT = ("expert_gate", "expert_up", "expert_down")


@dataclass
class AttackResult:
    state: RoleState
    tokenizer_json: dict[str, Any] | None = None  # rewritten tokenizer, for vocabulary attacks
    id_map: torch.Tensor | None = None  # new id of each old id (vocabulary attacks)
    old_vocab: int | None = None  # compare logits on this many original ids (expansion)


def _layers(s: RoleState) -> range:
    return range(s.n_layers)


def _keys(s: RoleState, layer: int, roles: tuple[str, ...]) -> list[Key | ExpertKey]:
    """The keys of ``roles`` present in ``layer``: layer roles, then every expert's."""
    out: list[Key | ExpertKey] = [(r, layer) for r in roles if s.has(r, layer)]
    out += sorted(k for k in s.experts if k[1] == layer and k[0] in roles)
    return out


def _ffn_units(s: RoleState, layer: int) -> list[tuple[Key | ExpertKey, ...]]:
    """(gate, up, down) keys of each FFN in ``layer``: the dense or shared one, every expert."""
    units: list[tuple[Key | ExpertKey, ...]] = [
        tuple((r, layer) for r in unit) for unit in FFN_UNITS if s.has(unit[1], layer)
    ]
    units += [tuple((r, layer, e) for r in EXPERT_UNIT) for e in range(s.n_experts(layer))]
    return units


def _stream_linear(s: RoleState, q: torch.Tensor) -> None:
    """Residual stream x -> x @ q with q orthogonal (permutation, signed permutation, rotation).

    Requires unit norm gains (or gains that commute with q: plain permutations move them).
    Read-in W -> W @ q (x q q^T W^T = x W^T); write-out W -> q^T @ W; embed and lm_head columns
    -> @ q. RMSNorm commutes with orthogonal q because it preserves the row norm.
    """
    s.set("embed", None, s.get("embed") @ q)
    s.set("lm_head", None, s.get("lm_head") @ q)
    for layer in _layers(s):
        for k in _keys(s, layer, READ_ROLES):
            s.put(k, s.at(k) @ q)
        for k in _keys(s, layer, WRITE_ROLES):
            s.put(k, q.t() @ s.at(k))


def _fold_gains(s: RoleState) -> None:
    """Move every RMSNorm gain into the weights that read the norm's output; gains become 1."""
    for layer in _layers(s):
        for norm, readers in NORM_READERS.items():
            g = s.get(norm, layer)
            for k in _keys(s, layer, readers):
                s.put(k, s.at(k) * g)  # scales input columns
            s.set(norm, layer, torch.ones_like(g))
    g = s.get("final_norm")
    s.set("lm_head", None, s.get("lm_head") * g)
    s.set("final_norm", None, torch.ones_like(g))


def residual_permutation(s: RoleState, g: torch.Generator, signed: bool = False) -> AttackResult:
    """x -> x P (optionally P with random signs). Gains are permuted with the stream; signs need
    no gain change because RMSNorm commutes with sign flips and gains are per-coordinate."""
    s.untie()
    d = s.get("embed").shape[1]
    perm = torch.randperm(d, generator=g)
    q = torch.eye(d)[:, perm]  # x @ q permutes columns
    if signed:
        q = q * torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    _stream_linear(s, q)
    for layer in _layers(s):
        for norm in NORM_READERS:
            s.set(norm, layer, s.get(norm, layer)[perm])
    s.set("final_norm", None, s.get("final_norm")[perm])
    return AttackResult(s)


def residual_rotation(s: RoleState, g: torch.Generator) -> AttackResult:
    """Fold gains into readers, then rotate the stream by a random orthogonal matrix (QuaRot-style)."""
    s.untie()
    _fold_gains(s)
    d = s.get("embed").shape[1]
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    q = (q * torch.sign(torch.diagonal(r))).to(torch.float32)
    _stream_linear(s, q)
    return AttackResult(s)


def norm_gain_rescaling(s: RoleState, g: torch.Generator, spread: float = 0.7) -> AttackResult:
    """gamma -> gamma * c, readers W -> W / c (per input column); log c ~ N(0, spread^2)."""
    s.untie()
    d = s.get("embed").shape[1]
    for layer in _layers(s):
        for norm, readers in NORM_READERS.items():
            c = torch.exp(torch.randn(d, generator=g) * spread)
            s.set(norm, layer, s.get(norm, layer) * c)
            for k in _keys(s, layer, readers):
                s.put(k, s.at(k) / c)
    c = torch.exp(torch.randn(d, generator=g) * spread)
    s.set("final_norm", None, s.get("final_norm") * c)
    s.set("lm_head", None, s.get("lm_head") / c)
    return AttackResult(s)


def _heads(t: torch.Tensor, hd: int) -> torch.Tensor:
    return t.reshape(-1, hd, t.shape[-1])  # [heads * hd, d] -> [heads, hd, d]


def qk_mixing(s: RoleState, g: torch.Generator) -> AttackResult:
    """Per KV group, a scaled rotation inside each rotary plane (dims i and i + hd/2 in the
    half-split layout) applied to q rows and inverse-transposed to k rows: it commutes with RoPE,
    so q.k is unchanged at every position. Query heads are also permuted within their group."""
    cfg = s.config
    H, K = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    grp = H // K
    for layer in _layers(s):
        q = _heads(s.get("attn_q", layer), hd).clone()  # [H, hd, d]
        k = _heads(s.get("attn_k", layer), hd).clone()  # [K, hd, d]
        o = s.get("attn_o", layer).reshape(-1, H, hd).clone()  # [d, H, hd]
        for kv in range(K):
            half = hd // 2
            theta = torch.rand(half, generator=g) * 6.283
            a = torch.exp(torch.randn(half, generator=g) * 0.5)
            c, sn = torch.cos(theta), torch.sin(theta)
            m = torch.zeros(hd, hd)  # acts on rows of a head: new = m @ old
            idx = torch.arange(half)
            m[idx, idx], m[idx, idx + half] = a * c, -a * sn
            m[idx + half, idx], m[idx + half, idx + half] = a * sn, a * c
            m_k = torch.linalg.inv(m).t()  # (m q) . (m^-T k) = q . k
            for h in range(kv * grp, (kv + 1) * grp):
                q[h] = m @ q[h]
            k[kv] = m_k @ k[kv]
            perm = torch.randperm(grp, generator=g) + kv * grp
            q[kv * grp : (kv + 1) * grp] = q[perm].clone()
            o[:, kv * grp : (kv + 1) * grp] = o[:, perm].clone()
        s.set("attn_q", layer, q.reshape(H * hd, -1))
        s.set("attn_k", layer, k.reshape(K * hd, -1))
        s.set("attn_o", layer, o.reshape(o.shape[0], H * hd))
    return AttackResult(s)


def vo_mixing(s: RoleState, g: torch.Generator) -> AttackResult:
    """Per KV head an invertible m: v rows -> m @ v, and every o column block of the query heads
    that read it -> o_h @ m^-1 (the head output a_h becomes a_h m^T)."""
    cfg = s.config
    H, K = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    grp = H // K
    for layer in _layers(s):
        v = _heads(s.get("attn_v", layer), hd).clone()
        o = s.get("attn_o", layer).reshape(-1, H, hd).clone()  # [d, H, hd]
        for kv in range(K):
            # orthogonal times positive diagonal: a generic invertible map that stays well conditioned
            rot, _ = torch.linalg.qr(torch.randn(hd, hd, generator=g))
            m = rot * torch.exp(0.3 * torch.randn(hd, generator=g))
            v[kv] = m @ v[kv]
            inv = torch.linalg.inv(m)
            for h in range(kv * grp, (kv + 1) * grp):
                o[:, h] = o[:, h] @ inv
        s.set("attn_v", layer, v.reshape(K * hd, -1))
        s.set("attn_o", layer, o.reshape(o.shape[0], H * hd))
    return AttackResult(s)


def ffn_permutation(s: RoleState, g: torch.Generator) -> AttackResult:
    """Hidden units of every FFN reordered (each expert with its own permutation)."""
    for layer in _layers(s):
        for gate, up, down in _ffn_units(s, layer):
            p = torch.randperm(s.at(up).shape[0], generator=g)
            s.put(gate, s.at(gate)[p])
            s.put(up, s.at(up)[p])
            s.put(down, s.at(down)[:, p])
    return AttackResult(s)


def updown_rescaling(s: RoleState, g: torch.Generator) -> AttackResult:
    """SwiGLU is linear in the up branch: up row j * c_j, down column j / c_j (every FFN)."""
    for layer in _layers(s):
        for _, up, down in _ffn_units(s, layer):
            c = torch.exp(torch.randn(s.at(up).shape[0], generator=g))
            s.put(up, s.at(up) * c[:, None])
            s.put(down, s.at(down) / c[None, :])
    return AttackResult(s)


def expert_permutation(s: RoleState, g: torch.Generator) -> AttackResult:
    """Each sparse layer's experts renumbered, the router's rows (and its selection bias) with
    them: every token still reaches the same experts with the same weights."""
    for layer in _layers(s):
        n = s.n_experts(layer)
        if n == 0:
            continue
        p = torch.randperm(n, generator=g)  # new expert i is old expert p[i]
        old = {k: t for k, t in s.experts.items() if k[1] == layer}
        for (role, _, e), t in old.items():
            s.set_expert(role, layer, int(torch.nonzero(p == e)), t)
        for r in ("moe_router", "moe_router_bias"):
            if s.has(r, layer):
                s.set(r, layer, s.get(r, layer)[p])
    return AttackResult(s)


def global_scaling(s: RoleState, g: torch.Generator) -> AttackResult:
    """x -> c x everywhere: embeddings and writers times c; RMSNorm removes c (eps scaled by c^2)."""
    c = 7.5
    s.untie()
    s.set("embed", None, s.get("embed") * c)
    for layer in _layers(s):
        for k in _keys(s, layer, WRITE_ROLES):
            s.put(k, s.at(k) * c)
    s.config["rms_norm_eps"] = float(s.config.get("rms_norm_eps", 1e-6)) * c * c
    return AttackResult(s)


def _tokenizer_json(s: RoleState) -> dict[str, Any]:
    import json

    return json.loads((s.source / "tokenizer.json").read_text(encoding="utf-8"))


def vocab_permutation(s: RoleState, g: torch.Generator) -> AttackResult:
    """Token ids shuffled: embedding and classifier rows, and the tokenizer's id map, together."""
    s.untie()
    V = s.get("embed").shape[0]
    new_of_old = torch.randperm(V, generator=g)
    old_of_new = torch.argsort(new_of_old)
    s.set("embed", None, s.get("embed")[old_of_new])
    s.set("lm_head", None, s.get("lm_head")[old_of_new])
    tok = _tokenizer_json(s)
    vocab = tok["model"]["vocab"]
    tok["model"]["vocab"] = {t: int(new_of_old[i]) for t, i in vocab.items()}
    for a in tok.get("added_tokens") or []:
        a["id"] = int(new_of_old[a["id"]])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(s.config.get(key), int):
            s.config[key] = int(new_of_old[s.config[key]])
    return AttackResult(s, tokenizer_json=tok, id_map=new_of_old)


def vocab_expansion(s: RoleState, g: torch.Generator, n_new: int = 48) -> AttackResult:
    """New tokens appended (rows after the old vocabulary); old ids keep their meaning."""
    s.untie()
    e, h = s.get("embed"), s.get("lm_head")
    V = e.shape[0]
    s.set("embed", None, torch.cat([e, e.mean(0) + e.std(0) * torch.randn(n_new, e.shape[1], generator=g)]))
    s.set("lm_head", None, torch.cat([h, h.mean(0) + h.std(0) * torch.randn(n_new, h.shape[1], generator=g)]))
    s.config["vocab_size"] = V + n_new
    tok = _tokenizer_json(s)
    added = tok.setdefault("added_tokens", [])
    for i in range(n_new):
        added.append(
            {
                "id": V + i,
                "content": f"<|new_{i}|>",
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": False,
            }
        )
    return AttackResult(s, tokenizer_json=tok, old_vocab=V)


# the gain spread of the composite disguise: gains over about two orders of magnitude either way
DISGUISE_GAIN_SPREAD = 2.0


def disguise(s: RoleState, g: torch.Generator) -> AttackResult:
    """What an adversary hiding a model's origin would chain: a gain-folded rotation of the
    residual stream, wide norm-gain rescaling, q/k and v/o mixing, FFN permutation and up/down
    rescaling, one after the other. Each step preserves the function, so the chain does too."""
    residual_rotation(s, g)
    norm_gain_rescaling(s, g, DISGUISE_GAIN_SPREAD)
    for step in (qk_mixing, vo_mixing, ffn_permutation, updown_rescaling):
        step(s, g)
    return AttackResult(s)


Attack = Callable[[RoleState, torch.Generator], AttackResult]

ATTACKS: dict[str, Attack] = {
    "residual-perm": residual_permutation,
    "residual-signed-perm": lambda s, g: residual_permutation(s, g, signed=True),
    "residual-rotation": residual_rotation,
    "norm-gain": norm_gain_rescaling,
    "qk-mix": qk_mixing,
    "vo-mix": vo_mixing,
    "ffn-perm": ffn_permutation,
    "updown-scale": updown_rescaling,
    "global-scale": global_scaling,
    "vocab-perm": vocab_permutation,
    "vocab-expand": vocab_expansion,
    "disguise": disguise,
}
# attacks the zoo applies to its MoE base: those that reach into sparse layers, and the chain
MOE_ATTACKS: dict[str, Attack] = {
    "expert-perm": expert_permutation,
    "ffn-perm": ffn_permutation,
    "norm-gain": norm_gain_rescaling,
    "residual-rotation": residual_rotation,
    "updown-scale": updown_rescaling,
    "disguise": disguise,
}
