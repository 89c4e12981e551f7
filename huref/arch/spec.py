"""The vocabulary of architecture definitions: roles, tensor rules and resolved configs.

Inside huref a weight is named by its *role* and layer index. Only this package knows checkpoint
names, fused layouts and transposes. Canonical orientation of every projection role is that of a
PyTorch ``Linear.weight``: [out_features, in_features].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# Roles with the canonical shape each takes (d = d_model, hd = head_dim, H = heads, K = kv heads).
LAYER_ROLES = {
    "attn_q": "[H*hd, d]",
    "attn_k": "[K*hd, d]",
    "attn_v": "[K*hd, d]",
    "attn_o": "[d, H*hd]",
    "mlp_gate": "[d_ff, d]",
    "mlp_up": "[d_ff, d]",  # the only input projection of a non-gated MLP
    "mlp_down": "[d, d_ff]",
    "attn_norm": "[d]",  # pre-LN: before attention; post-LN: after attention + residual
    "mlp_norm": "[d]",  # pre-LN: before the MLP; post-LN: after MLP + residual
    "attn_out_norm": "[d]",  # Gemma-2 style norm of the attention output
    "mlp_out_norm": "[d]",  # Gemma-2 style norm of the MLP output
    "attn_q_norm": "[hd]",  # per-head query norm (Qwen3 style)
    "attn_k_norm": "[hd]",
}
GLOBAL_ROLES = {
    "embed": "[V, d]",
    "pos_embed": "[P, d]",
    "type_embed": "[T, d]",
    "embed_norm": "[d]",  # BLOOM word_embeddings_layernorm, BERT embeddings.LayerNorm
    "embed_proj_in": "[d, d_embed]",  # OPT-350m style projection after the embedding
    "embed_proj_out": "[d_embed, d]",
    "final_norm": "[d]",
    "lm_head": "[V, d]",
}
BIAS_SUFFIX = "_bias"  # role "attn_q_bias" is the bias of "attn_q"; "attn_norm_bias" of a norm

Storage = Literal["linear", "conv1d", "vector"]
Split = Literal["none", "qkv", "halves"]


@dataclass(frozen=True)
class ArchConfig:
    """Hyperparameters resolved from a checkpoint's config, in role terms."""

    family: str
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    norm: Literal["rms", "layer"]
    norm_eps: float
    norm_offset: float = 0.0  # Gemma stores w and multiplies by (1 + w)
    placement: Literal["pre", "post"] = "pre"
    parallel: bool = False  # attention and MLP read the same residual stream
    gated: bool = True
    activation: str = "silu"
    tied: bool = False
    positions: Literal["rope", "learned", "alibi", "none"] = "rope"
    qkv_layout: Literal["separate", "concat", "per_head", "per_kv_group"] = "separate"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> int:
        """Query heads per key/value head (GQA); head h uses KV head h // group."""
        return self.n_heads // self.n_kv_heads


Predicate = Callable[[ArchConfig], bool]


def always(_: ArchConfig) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor and the role or roles it provides.

    ``template`` is relative to the family's name prefix, with ``{L}`` for the layer index.
    A fused tensor lists several roles and says how to split them (``split``): 'qkv' follows
    ``ArchConfig.qkv_layout``; 'halves' cuts the output dimension in two (Phi-3 gate_up).
    """

    template: str
    roles: tuple[str, ...]
    storage: Storage = "linear"
    split: Split = "none"
    optional: bool = False
    when: Predicate = always  # the rule exists only for configs where this holds

    @property
    def per_layer(self) -> bool:
        return "{L}" in self.template


@dataclass(frozen=True)
class ArchSpec:
    """One architecture family as data."""

    name: str
    model_types: tuple[str, ...]
    prefixes: tuple[str, ...]  # name prefixes tried in order, e.g. ("model.", "")
    rules: tuple[Rule, ...]
    read_config: Callable[[dict[str, Any]], ArchConfig]
    ignored: tuple[str, ...] = ()  # regexes of full names of parameters we do not use (e.g. a pooler)
    buffers: tuple[str, ...] = ()  # regexes of full names of stored buffers: masks, rotary tables, ids
    outside_prefix: tuple[Rule, ...] = ()  # rules whose template is a full name (e.g. lm_head)
    notes: str = ""
