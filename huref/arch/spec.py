"""The vocabulary of architecture definitions: roles, tensor rules and resolved configs.

Inside huref a weight is named by its *role* and layer index: a member of the ``Role`` enum, or
``<role>_bias`` for its bias, checked whenever a rule or a GGUF table names one. Only this package
knows checkpoint names, fused layouts and transposes. Canonical orientation of every projection role is that of a
PyTorch ``Linear.weight``: [out_features, in_features].
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal, get_args

from huref.errors import ArchitectureError

if TYPE_CHECKING:
    from huref.arch.keys import ConfigKeys


class Role(str, Enum):
    """The checked vocabulary of roles; each member's ``shape`` is the canonical shape it takes
    (d = d_model, hd = head_dim, H = heads, K = kv heads) and ``per_layer`` says whether it
    occurs once per layer or once per model.

    A ``str`` enum whose values are the role names used everywhere (bindings, fingerprint files,
    caches), so adding the check changed no stored name. ``str(Role.attn_q)`` is ``"attn_q"``.
    """

    shape: str
    per_layer: bool

    def __new__(cls, value: str, shape: str, per_layer: bool) -> Role:
        member = str.__new__(cls, value)
        member._value_ = value
        member.shape = shape
        member.per_layer = per_layer
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
    Roles, storage and split are checked when the rule is made: a misspelt one is an error at
    import, not a tensor that silently binds to nothing.
    """

    template: str
    roles: tuple[str, ...]
    storage: Storage = "linear"
    split: Split = "none"
    optional: bool = False
    when: Predicate = always  # the rule exists only for configs where this holds

    def __post_init__(self) -> None:
        # stored as plain strings: the names bindings, fingerprints and caches hold are unchanged
        object.__setattr__(self, "roles", tuple(check_role(r) for r in self.roles))
        if self.storage not in get_args(Storage):
            raise ArchitectureError(f"rule {self.template!r}: unknown storage {self.storage!r}")
        if self.split not in get_args(Split):
            raise ArchitectureError(f"rule {self.template!r}: unknown split {self.split!r}")
        want = {"none": 1, "halves": 2, "qkv": 3}[self.split]
        if len(self.roles) != want:
            raise ArchitectureError(
                f"rule {self.template!r}: split {self.split!r} takes {want} role(s), not {len(self.roles)}"
            )

    @property
    def per_layer(self) -> bool:
        return "{L}" in self.template


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp ``general.architecture`` read as a member of a family."""

    name: str  # e.g. "qwen2"
    model_type: str  # the Hugging Face model_type it stands for
    hf_class: str  # the Hugging Face architecture class written into the synthesised config
    rotary_interleaved: bool  # llama.cpp's converter reorders q/k rows (LLaMA arch only)


@dataclass(frozen=True, eq=False)
class GGUFNames:
    """llama.cpp's names for a family, beside its definition (the gguf-py habit): which GGUF
    architectures it reads, and each GGUF tensor name (``{L}`` for the layer) with its role."""

    archs: tuple[GGUFArch, ...]
    tensors: Mapping[str, str]  # GGUF tensor name -> role
    ignored: tuple[str, ...] = ()  # GGUF tensors that hold nothing huref uses (rotary tables)

    def __post_init__(self) -> None:
        roles = list(self.tensors.values())
        if doubled := sorted({r for r in roles if roles.count(r) > 1}):
            raise ArchitectureError(f"GGUF names give the role(s) {', '.join(doubled)} twice")
        for name, role in self.tensors.items():
            check_role(role)
            if name.count("{L}") > 1:
                raise ArchitectureError(f"GGUF name {name!r} holds {{L}} more than once")


@dataclass(frozen=True)
class ArchSpec:
    """One architecture family as data."""

    name: str
    model_types: tuple[str, ...]
    prefixes: tuple[str, ...]  # name prefixes tried in order, e.g. ("model.", "")
    rules: tuple[Rule, ...]
    keys: ConfigKeys  # which config.json keys give each hyperparameter (huref.arch.keys)
    ignored: tuple[str, ...] = ()  # regexes of full names of parameters we do not use (e.g. a pooler)
    buffers: tuple[str, ...] = ()  # regexes of full names of stored buffers: masks, rotary tables, ids
    outside_prefix: tuple[Rule, ...] = ()  # rules whose template is a full name (e.g. lm_head)
    gguf: GGUFNames | None = None  # llama.cpp names, for families that GGUF files are read as
    notes: str = ""

    def __post_init__(self) -> None:
        if self.gguf is not None:
            self.gguf_names()  # every GGUF name must land on a tensor of the definition

    def read_config(self, config: dict[str, Any]) -> ArchConfig:
        """The config as an ``ArchConfig``; every value checked (huref.arch.keys)."""
        return self.keys.read(config, self.name)

    def roles(self) -> list[str]:
        """Every role some checkpoint of the family can provide, biases included."""
        return sorted({r for rule in (*self.rules, *self.outside_prefix) for r in rule.roles})

    def template_for(self, role: str) -> str:
        """The full checkpoint name (``{L}`` for the layer) of the first rule that stores ``role``
        alone: the family's plain layout, used to name tensors read from other formats."""
        for rule, prefix in [(r, self.prefixes[0]) for r in self.rules] + [
            (r, "") for r in self.outside_prefix
        ]:
            if rule.roles == (role,):
                return prefix + rule.template
        raise ArchitectureError(f"the {self.name} definition stores no tensor of role {role!r} alone")

    def gguf_names(self) -> dict[str, tuple[str, str]]:
        """GGUF tensor name -> (checkpoint name, role), both with ``{L}`` for the layer."""
        out: dict[str, tuple[str, str]] = {}
        for gguf_name, role in self.gguf.tensors.items() if self.gguf else ():
            name = self.template_for(role)
            if ("{L}" in name) != ("{L}" in gguf_name):
                raise ArchitectureError(f"GGUF name {gguf_name!r} and {name!r} disagree on {{L}}")
            out[gguf_name] = (name, role)
        return out
