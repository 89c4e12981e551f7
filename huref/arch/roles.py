"""The checked vocabulary of roles: what a weight is called inside huref.

Inside huref a weight is named by its *role* and layer index: a member of the ``Role`` enum, or
``<role>_bias`` for its bias, checked whenever a rule or a GGUF table names one (``check_role``).
Each role carries the canonical shape it takes; the canonical orientation of every projection
role is that of a PyTorch ``Linear.weight``: [out_features, in_features].
"""

from __future__ import annotations

import difflib
from enum import Enum

from huref.errors import ArchitectureError


class Role(str, Enum):
    """The checked vocabulary of roles; each member's ``shape`` is the canonical shape it takes
    (d = d_model, hd = head_dim, H = heads, K = kv heads, E = experts, F = an expert's width,
    Fs = the shared expert's width), ``per_layer`` says whether it occurs once per layer or once
    per model, and ``per_expert`` whether it occurs once per expert of a sparse (MoE) layer.

    A ``str`` enum whose values are the role names used everywhere (bindings, fingerprint files,
    caches), so adding the check changed no stored name. ``str(Role.attn_q)`` is ``"attn_q"``.
    """

    shape: str
    per_layer: bool
    per_expert: bool

    def __new__(cls, value: str, shape: str, per_layer: bool, per_expert: bool = False) -> Role:
        member = str.__new__(cls, value)
        member._value_ = value
        member.shape = shape
        member.per_layer = per_layer
        member.per_expert = per_expert
        return member

    def __str__(self) -> str:
        return str(self.value)

    attn_q = "attn_q", "[H*hd, d]", True
    attn_k = "attn_k", "[K*hd, d]", True
    attn_v = "attn_v", "[K*hd, d]", True
    attn_o = "attn_o", "[d, H*hd]", True
    mlp_gate = "mlp_gate", "[d_ff, d]", True
    mlp_up = "mlp_up", "[d_ff, d]", True  # the only input projection of a non-gated MLP
    mlp_down = "mlp_down", "[d, d_ff]", True
    attn_norm = "attn_norm", "[d]", True  # pre-LN: before attention; post-LN: after attention + residual
    mlp_norm = "mlp_norm", "[d]", True  # pre-LN: before the MLP; post-LN: after MLP + residual
    attn_out_norm = "attn_out_norm", "[d]", True  # Gemma-2 style norm of the attention output
    mlp_out_norm = "mlp_out_norm", "[d]", True  # Gemma-2 style norm of the MLP output
    attn_q_norm = "attn_q_norm", "[hd]", True  # per-head query norm (Qwen3 style)
    attn_k_norm = "attn_k_norm", "[hd]", True
    attn_q_norm_wide = "attn_q_norm_wide", "[H*hd]", True  # query norm over all heads at once (OLMoE)
    attn_k_norm_wide = "attn_k_norm_wide", "[K*hd]", True
    # GPT-OSS's per-head attention sink: a learned logit beside each head's keys in the softmax.
    # It enters neither the position-free q.k nor the V.W_O term: claimed, not fingerprinted
    attn_sinks = "attn_sinks", "[H]", True
    # sparse Mixture-of-Experts layers (MoEConfig): a router, E routed experts, an optional shared one
    moe_router = "moe_router", "[E, d]", True  # router logits x @ W^T
    expert_gate = "expert_gate", "[F, d]", True, True
    expert_up = "expert_up", "[F, d]", True, True
    expert_down = "expert_down", "[d, F]", True, True
    shared_gate = "shared_gate", "[Fs, d]", True  # Qwen2-MoE's always-on shared expert
    shared_up = "shared_up", "[Fs, d]", True
    shared_down = "shared_down", "[d, Fs]", True
    shared_expert_gate = "shared_expert_gate", "[1, d]", True  # shared output * sigmoid(x @ W^T)
    # Two meanings, told apart by the MoEConfig: DeepSeek-V3's e_score_correction_bias
    # (``router_bias``) is added to the router scores to *select* experts only, neither the logits
    # nor the routing weights include it; GPT-OSS's router.bias (``router_logit_bias``) is the
    # router Linear's own bias, in the logits and so in the selection and the weights alike
    moe_router_bias = "moe_router_bias", "[E]", True
    # Multi-head Latent Attention (MLAConfig; DeepSeek-V2/V3): rq = q_lora_rank, rkv = kv_lora_rank,
    # n / r / v = qk_nope / qk_rope / v head dims; hd = n + r there, and attn_o is [d, H*v]
    attn_q_a = "attn_q_a", "[rq, d]", True  # query down-projection to the latent
    attn_q_a_norm = "attn_q_a_norm", "[rq]", True  # RMSNorm of the query latent
    attn_q_b = "attn_q_b", "[H*(n+r), rq]", True  # query up-projection, per head nope then rope
    attn_kv_a = "attn_kv_a", "[rkv+r, d]", True  # key/value latent, then the rope key all heads share
    attn_kv_a_norm = "attn_kv_a_norm", "[rkv]", True  # RMSNorm of the key/value latent
    attn_kv_b = "attn_kv_b", "[H*(n+v), rkv]", True  # latent -> per head k_nope then v
    embed = "embed", "[V, d]", False
    pos_embed = "pos_embed", "[P, d]", False
    type_embed = "type_embed", "[T, d]", False
    embed_norm = "embed_norm", "[d]", False  # BLOOM word_embeddings_layernorm, BERT embeddings.LayerNorm
    embed_proj_in = "embed_proj_in", "[d, d_embed]", False  # OPT-350m style projection after the embedding
    embed_proj_out = "embed_proj_out", "[d_embed, d]", False
    final_norm = "final_norm", "[d]", False
    lm_head = "lm_head", "[V, d]", False


# Roles with the canonical shape each takes, by name (the shape doc of the members above).
LAYER_ROLES = {r.value: r.shape for r in Role if r.per_layer}
GLOBAL_ROLES = {r.value: r.shape for r in Role if not r.per_layer}
# an expert role's bias (GPT-OSS's expert biases) is stored per expert as the role is
EXPERT_ROLES = frozenset(n for r in Role if r.per_expert for n in (r.value, r.value + "_bias"))
BIAS_SUFFIX = "_bias"  # role "attn_q_bias" is the bias of "attn_q"; "attn_norm_bias" of a norm


def check_role(name: str) -> str:
    """``name`` as a plain string if it is a role or the bias of one, else an ArchitectureError
    with the closest role: a misspelt role in a definition would otherwise bind nothing, silently."""
    base = name[: -len(BIAS_SUFFIX)] if isinstance(name, str) and name.endswith(BIAS_SUFFIX) else name
    if isinstance(base, str) and base in Role._value2member_map_:
        return str(name)
    known = [r.value for r in Role] + [r.value + BIAS_SUFFIX for r in Role]
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ArchitectureError(f"unknown role {name!r}{hint}")
