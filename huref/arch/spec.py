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


Storage = Literal["linear", "conv1d", "vector"]
Split = Literal["none", "qkv", "halves", "expert_halves", "expert_interleaved", "experts"]
EXPERT_STACKS = ("experts", "expert_halves", "expert_interleaved")
Layers = Literal["all", "dense", "sparse"]


Scoring = Literal["softmax", "sigmoid"]
TopkMethod = Literal["greedy", "group_limited_greedy", "noaux_tc"]


@dataclass(frozen=True)
class MoEConfig:
    """The sparse Mixture-of-Experts part of a config.

    Each token is routed to the ``top_k`` experts with the largest softmax router probabilities,
    weighted by them (renormalised to sum 1 over the chosen ones when ``renormalise``); a shared
    expert, when ``d_shared`` is set, sees every token (scaled by sigmoid(x @ w^T) when
    ``shared_gated``). Layers not in ``sparse_layers`` are dense: mlp_gate/up/down of width d_ff.

    DeepSeek's routing (huref.invariants.kernels.deepseek_route) is the other fields: scores are
    the softmax or the ``scoring`` sigmoid of the logits; ``topk_method`` 'group_limited_greedy'
    (V2) keeps the ``topk_group`` of ``n_group`` expert groups with the largest best score,
    'noaux_tc' (V3) those with the largest sum of their two best scores + the router bias
    (``router_bias``: moe_router_bias, used for selection only); the weights are the chosen
    scores, renormalised if ``renormalise``, times ``routed_scale``. The defaults are Mixtral's,
    Qwen's and OLMoE's plain softmax top-k. GPT-OSS's is that too, with ``router_logit_bias``:
    its moe_router_bias is a true Linear bias of the router, added to the logits before the
    softmax top-k (top-k of the logits, softmax over the chosen k: the same weights).
    """

    n_experts: int
    top_k: int
    d_expert: int  # F: each routed expert's hidden width
    renormalise: bool
    d_shared: int | None = None  # Fs: the shared expert's hidden width
    shared_gated: bool = False
    sparse_layers: tuple[int, ...] = ()
    scoring: Scoring = "softmax"
    topk_method: TopkMethod = "greedy"
    n_group: int = 1  # experts split into n_group equal groups, in index order
    topk_group: int = 1  # groups a token may choose experts from (group-limited methods)
    routed_scale: float = 1.0  # routed_scaling_factor: the routed experts' weights times this
    router_bias: bool = False  # a moe_router_bias (e_score_correction_bias) steers selection
    # moe_router_bias is the router Linear's bias (GPT-OSS): logits are x @ W^T + b
    router_logit_bias: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.n_experts:
            raise ArchitectureError(
                f"config.json: {self.top_k} experts per token, but the model has {self.n_experts}"
            )
        if self.router_bias and self.router_logit_bias:
            raise ArchitectureError(
                "config.json: moe_router_bias is a selection bias or a logit bias, not both"
            )
        if self.shared_gated and self.d_shared is None:
            raise ArchitectureError("config.json: a gated shared expert with no shared expert width")
        if self.scoring not in get_args(Scoring) or self.topk_method not in get_args(TopkMethod):
            raise ArchitectureError(
                f"config.json: unknown expert routing {self.scoring!r} / {self.topk_method!r}"
            )
        if self.topk_method != "greedy":
            if self.n_experts % self.n_group or not 1 <= self.topk_group <= self.n_group:
                raise ArchitectureError(
                    f"config.json: {self.n_experts} experts in {self.n_group} groups, "
                    f"{self.topk_group} of them chosen: the groups must be equal and enough"
                )
            per_group = self.n_experts // self.n_group
            if self.top_k > self.topk_group * per_group:
                raise ArchitectureError(
                    f"config.json: {self.top_k} experts per token, but {self.topk_group} groups "
                    f"of {per_group} hold {self.topk_group * per_group}"
                )
            if self.topk_method == "noaux_tc" and per_group < 2:
                raise ArchitectureError(
                    "config.json: 'noaux_tc' routing scores groups by their two best experts"
                )


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head Latent Attention (DeepSeek-V2/V3): per layer, the query is
    q_b(RMSNorm(q_a(x))) (or one attn_q when ``q_lora_rank`` is None), the keys and values come
    from one latent c = RMSNorm(kv_a(x)[:rkv]) through kv_b (per head k_nope, then v), and every
    head's key ends with the same rope part kv_a(x)[rkv:]. Head h's query is its k_nope + rope
    (``qk_nope_head_dim`` + ``qk_rope_head_dim``) rows of q; its value ``v_head_dim`` wide.
    """

    q_lora_rank: int | None  # rq; None: a full-rank attn_q
    kv_lora_rank: int  # rkv
    qk_nope_head_dim: int  # n
    qk_rope_head_dim: int  # r
    v_head_dim: int  # v
    norm_eps: float = 1e-6  # of the latent RMSNorms (transformers fixes it, whatever rms_norm_eps)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


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
    moe: MoEConfig | None = None  # None: a dense model
    mla: MLAConfig | None = None  # Multi-head Latent Attention in place of attn_q/k/v
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> int:
        """Query heads per key/value head (GQA); head h uses KV head h // group."""
        return self.n_heads // self.n_kv_heads

    def is_sparse(self, layer: int) -> bool:
        """Whether ``layer``'s feed-forward block is a sparse MoE block (else a dense MLP)."""
        return self.moe is not None and layer in self.moe.sparse_layers


Predicate = Callable[[ArchConfig], bool]


def always(_: ArchConfig) -> bool:
    return True


@dataclass(frozen=True)
class Rule:
    """One checkpoint tensor and the role or roles it provides.

    ``template`` is relative to the family's name prefix, with ``{L}`` for the layer index and
    ``{E}`` for the expert index (expert roles only; such a rule exists in sparse layers only).
    ``layers`` limits a per-layer rule to the dense or the sparse layers of an MoE config (a
    dense config has dense layers only).
    A fused tensor lists several roles and says how to split them (``split``): 'qkv' follows
    ``ArchConfig.qkv_layout``; 'halves' cuts the output dimension in two (Phi-3 gate_up).
    Two splits hold every expert of a layer in one 3-D tensor: 'experts' ([E, out, in], one
    role) and 'expert_halves' ([E, 2F, in], gate rows then up rows of each expert); a third,
    'expert_interleaved', alternates them (GPT-OSS: gate rows 0, 2, 4, ..., up rows 1, 3, 5, ...).
    With ``storage`` 'conv1d' a stack is [E, in, out] (in-features first), each expert transposed;
    with 'vector' it holds the experts' biases ([E, out]).
    Roles, storage and split are checked when the rule is made: a misspelt one is an error at
    import, not a tensor that silently binds to nothing.
    """

    template: str
    roles: tuple[str, ...]
    storage: Storage = "linear"
    split: Split = "none"
    optional: bool = False
    when: Predicate = always  # the rule exists only for configs where this holds
    layers: Layers = "all"

    def __post_init__(self) -> None:
        # stored as plain strings: the names bindings, fingerprints and caches hold are unchanged
        object.__setattr__(self, "roles", tuple(check_role(r) for r in self.roles))
        if self.storage not in get_args(Storage):
            raise ArchitectureError(f"rule {self.template!r}: unknown storage {self.storage!r}")
        if self.split not in get_args(Split):
            raise ArchitectureError(f"rule {self.template!r}: unknown split {self.split!r}")
        n_roles = {
            "none": 1,
            "halves": 2,
            "qkv": 3,
            "experts": 1,
            "expert_halves": 2,
            "expert_interleaved": 2,
        }
        want = n_roles[self.split]
        if len(self.roles) != want:
            raise ArchitectureError(
                f"rule {self.template!r}: split {self.split!r} takes {want} role(s), not {len(self.roles)}"
            )
        if self.layers not in get_args(Layers):
            raise ArchitectureError(f"rule {self.template!r}: unknown layers {self.layers!r}")
        experts = self.per_expert or self.expert_stack
        if experts != all(r in EXPERT_ROLES for r in self.roles) or (experts and not self.per_layer):
            raise ArchitectureError(
                f"rule {self.template!r}: expert roles need a per-layer template with {{E}} or an expert split"
            )
        if self.per_expert and self.split != "none":
            raise ArchitectureError(f"rule {self.template!r}: a per-expert tensor cannot be split")
        if self.layers != "all" and not self.per_layer:
            raise ArchitectureError(f"rule {self.template!r}: only a per-layer rule can be dense or sparse")

    @property
    def per_layer(self) -> bool:
        return "{L}" in self.template

    @property
    def per_expert(self) -> bool:
        return "{E}" in self.template

    @property
    def expert_stack(self) -> bool:
        """One tensor holding every expert of a layer ([E, ...])."""
        return self.split in EXPERT_STACKS

    def applies(self, cfg: ArchConfig, layer: int | None) -> bool:
        """Whether the rule declares a tensor for ``cfg`` (in ``layer``, for a per-layer rule)."""
        if not self.when(cfg):
            return False
        if layer is None:
            return True
        sparse = self.layers == "sparse" or self.per_expert or self.expert_stack
        if sparse:
            return cfg.is_sparse(layer)
        return self.layers == "all" or not cfg.is_sparse(layer)

    def name(self, prefix: str, layer: int | None = None, expert: int | None = None) -> str:
        """The full checkpoint name of the rule's tensor in ``layer`` (and ``expert``)."""
        out = prefix + self.template
        if layer is not None:
            out = out.replace("{L}", str(layer))
        return out if expert is None else out.replace("{E}", str(expert))


# the sizes an MTP block's own tensors are declared in (MTPRules.tensors)
MTP_SIZES: dict[str, Callable[[ArchConfig], int]] = {
    "d": lambda c: c.d_model,
    "2d": lambda c: 2 * c.d_model,
    "V": lambda c: c.vocab_size,
}


@dataclass(frozen=True)
class MTPRules:
    """The multi-token-prediction (MTP) blocks a release may store after its main layers
    (DeepSeek-V3's ``num_nextn_predict_layers``): block k is layer ``n_layers + k``.

    A block holds a decoder layer built like the last main layer (the family's per-layer rules,
    under the block's index) and its own tensors, listed here as templates relative to the
    family's prefix, ``{L}`` for the block's layer, with their canonical shapes in ``MTP_SIZES``
    names. The block predicts a token further ahead from the main model's last hidden state; the
    next-token function never reads it, so huref claims its tensors and fingerprints none.
    ``count`` names the ``ArchConfig.extra`` entry holding the configured number of blocks.
    """

    count: str
    tensors: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        for template, shape in self.tensors:
            if template.count("{L}") != 1 or "{E}" in template:
                raise ArchitectureError(f"MTP tensor {template!r} must hold {{L}} once and no {{E}}")
            if unknown := [s for s in shape if s not in MTP_SIZES]:
                raise ArchitectureError(f"MTP tensor {template!r}: unknown size(s) {', '.join(unknown)}")

    def blocks(self, cfg: ArchConfig) -> int:
        """The configured number of MTP blocks (0 for a config without them)."""
        return int(cfg.extra.get(self.count) or 0)

    def own_shapes(self, cfg: ArchConfig) -> list[tuple[str, tuple[int, ...]]]:
        """(template, shape config.json implies) of each of a block's own tensors."""
        return [(t, tuple(MTP_SIZES[s](cfg) for s in shape)) for t, shape in self.tensors]


@dataclass(frozen=True)
class GGUFArch:
    """One llama.cpp ``general.architecture`` read as a member of a family."""

    name: str  # e.g. "qwen2"
    model_type: str  # the Hugging Face model_type it stands for
    hf_class: str  # the Hugging Face architecture class written into the synthesised config
    rotary_interleaved: bool  # llama.cpp's converter reorders q/k rows (LLaMA arch only)
    # the model_type and class a file of this architecture with an ``expert_count`` stands for
    # (llama.cpp writes Mixtral as arch "llama" with experts)
    moe_model_type: str | None = None
    moe_hf_class: str | None = None
    # whether llama.cpp renormalises the chosen experts' weights when the file does not say
    # (``expert_weights_norm``): its Qwen3-MoE graph does, its Qwen2-MoE graph does not
    moe_renormalise: bool = False


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
    mtp: MTPRules | None = None  # multi-token-prediction blocks stored after the main layers
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

    def template_for(self, role: str, cfg: ArchConfig | None = None) -> str:
        """The full checkpoint name (``{L}`` for the layer, ``{E}`` for the expert) of the first
        rule that stores ``role`` alone (one expert's tensor, not a stack), among those that apply
        to ``cfg`` when given: the family's plain layout, used to name tensors read from other
        formats (Mixtral's and Qwen-MoE's routers are named apart)."""
        for rule, prefix in [(r, self.prefixes[0]) for r in self.rules] + [
            (r, "") for r in self.outside_prefix
        ]:
            if rule.roles == (role,) and not rule.expert_stack and (cfg is None or rule.when(cfg)):
                return prefix + rule.template
        raise ArchitectureError(f"the {self.name} definition stores no tensor of role {role!r} alone")

    def gguf_names(self, cfg: ArchConfig | None = None) -> dict[str, tuple[str, str]]:
        """GGUF tensor name -> (checkpoint name, role), both with ``{L}`` for the layer (and the
        checkpoint name of an expert role with ``{E}``: GGUF stacks a layer's experts). With
        ``cfg``, only the roles some rule stores for it: a GGUF tensor of any other role is then
        not understood, and refused."""
        out: dict[str, tuple[str, str]] = {}
        for gguf_name, role in self.gguf.tensors.items() if self.gguf else ():
            try:
                name = self.template_for(role, cfg)
            except ArchitectureError:
                if cfg is None:
                    raise
                continue
            if ("{L}" in name) != ("{L}" in gguf_name):
                raise ArchitectureError(f"GGUF name {gguf_name!r} and {name!r} disagree on {{L}}")
            out[gguf_name] = (name, role)
        return out
