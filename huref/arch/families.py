"""Architecture families as data: one definition each, registered by ``model_type``.

Each definition lists every tensor a checkpoint of the family holds, the role(s) it provides,
how it is stored (``conv1d`` = [in, out], as GPT-2's Conv1D) and how fused tensors split; which
``config.json`` keys give its hyperparameters, with the family defaults the config may omit and
the per-``model_type`` differences (read by the one reader of huref.arch.keys); and, for the
families GGUF files are read as, llama.cpp's names. Computed values are small named functions
referenced from the data. This module is a declared data table: it is long because there are
many families, not because it holds logic.
"""

from __future__ import annotations

from typing import Any

from huref.arch.config import ArchConfig, MLAConfig, MoEConfig
from huref.arch.keys import ConfigKeys, Derived, Ref, Values, count, describe, flag, four_widths, real, text
from huref.arch.spec import ArchSpec, GGUFArch, GGUFNames, MTPRules, Rule
from huref.errors import ArchitectureError
from huref.paths import shown
from huref.plugins import Registry

ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")


def _when(key: str, value: Any = True):
    return lambda c: c.extra.get(key) == value


def _not(key: str):
    return lambda c: not c.extra.get(key)


def _lm_head_rules(name: str = "lm_head.weight") -> tuple[Rule, ...]:
    return (
        Rule(name, ("lm_head",), when=lambda c: not c.tied),
        Rule(name, ("lm_head",), optional=True, when=lambda c: c.tied),
    )


def _norm_pair(template: str, role: str) -> tuple[Rule, Rule]:
    return (
        Rule(template + ".weight", (role,), "vector"),
        Rule(template + ".bias", (role + "_bias",), "vector"),
    )


def _linear_pair(template: str, role: str, storage: str = "linear", bias_when=None) -> tuple[Rule, ...]:
    w = Rule(template + ".weight", (role,), storage)  # type: ignore[arg-type]
    if bias_when is False:
        return (w,)
    b = Rule(template + ".bias", (role + "_bias",), "vector", when=bias_when or (lambda c: True))
    return (w, b)


# ---------------------------------------------------------------- LLaMA and its variants
def _sqrt_width(v: Values) -> float:
    """Gemma scales token embeddings by sqrt(d_model) before the first layer."""
    return float(v["d_model"] ** 0.5)


_LLAMA_KEYS: dict[str, Any] = {
    "d_model": count("hidden_size"),
    "n_heads": count("num_attention_heads"),
    "n_kv_heads": count("num_key_value_heads", default=Ref("n_heads")),
    "qkv_bias": flag("attention_bias", False),
    "o_bias": flag("attention_bias", False),
    "mlp_bias": flag("mlp_bias", False),
    "sandwich": False,  # Gemma-2 norms around each sub-layer's output as well as its input
    "qk_norm": False,  # per-head q/k norms
    "embed_scale": 1.0,
    "n_layers": count("num_hidden_layers"),
    "head_dim": count("head_dim", default=None),
    "d_ff": count("intermediate_size"),
    "vocab_size": count("vocab_size"),
    "norm": "rms",
    "norm_eps": real("rms_norm_eps", 1e-6),
    "norm_offset": 0.0,
    "gated": True,
    "activation": text("hidden_activation", "hidden_act", default="silu"),
    "tied": flag("tie_word_embeddings", False),
    "positions": "rope",
    "qkv_layout": "separate",
    "qk_norm_wide": False,  # q/k norms over the whole projection width (OLMoE)
    "moe_names": None,  # how sparse MoE blocks are named: "mixtral" or "mlp" (Qwen-MoE, OLMoE)
    "moe": None,  # a MoEConfig for the sparse MoE model types (_MOE_OVERRIDES)
    "mla": None,  # an MLAConfig for Multi-head Latent Attention (DeepSeek-V2/V3)
    "mla_bias": False,  # MLA's q_a and kv_a projections carry biases (attention_bias)
    "attn_sinks": False,  # a learned per-head sink logit in each attention softmax (GPT-OSS)
    "mtp_layers": 0,  # multi-token-prediction blocks after the main layers (DeepSeek-V3)
}
_LLAMA_EXTRA = (
    "qkv_bias",
    "o_bias",
    "mlp_bias",
    "sandwich",
    "qk_norm",
    "embed_scale",
    "qk_norm_wide",
    "moe_names",
    "mla_bias",
    "attn_sinks",
    "mtp_layers",
)
_GEMMA: dict[str, Any] = {
    "embed_scale": Derived(_sqrt_width),
    "norm_offset": 1.0,
    "tied": flag("tie_word_embeddings", True),
}


# ---------------------------------------------------------------- sparse Mixture-of-Experts variants
def _layer_list(v: Values, key: str) -> list[int]:
    """A config list of layer indices (Qwen-MoE's mlp_only_layers); null or absent is empty."""
    value = v.cfg.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        raise ArchitectureError(
            f"config.json: '{key}' must be a list of layer indices, not {describe(value)}"
        )
    return value


def _mixtral_moe(v: Values) -> MoEConfig:
    """Every layer sparse; experts as wide as intermediate_size; top-k weights renormalised."""
    return MoEConfig(
        n_experts=v.read(count("num_local_experts", "num_experts", default=8)),
        top_k=v.read(count("num_experts_per_tok", default=2)),
        d_expert=v["d_ff"],
        renormalise=True,
        sparse_layers=tuple(range(v["n_layers"])),
    )


def _olmoe_moe(v: Values) -> MoEConfig:
    """Every layer sparse; experts as wide as intermediate_size; norm_topk_prob renormalises."""
    return MoEConfig(
        n_experts=v.read(count("num_experts", "num_local_experts", default=64)),
        top_k=v.read(count("num_experts_per_tok", default=8)),
        d_expert=v["d_ff"],
        renormalise=v.read(flag("norm_topk_prob", False)),
        sparse_layers=tuple(range(v["n_layers"])),
    )


def _qwen_moe(v: Values, shared: bool, experts: int, top_k: int, width: int) -> MoEConfig | None:
    """transformers' rule (modeling_qwen2_moe / qwen3_moe): layer L is sparse unless listed in
    mlp_only_layers, and only if (L + 1) % decoder_sparse_step == 0; num_experts 0 is dense."""
    # transformers 5 writes Qwen3-MoE's num_experts as num_local_experts
    if 0 in (v.cfg.get("num_experts"), v.cfg.get("num_local_experts")):
        return None
    step = v.read(count("decoder_sparse_step", default=1))
    dense = set(_layer_list(v, "mlp_only_layers"))
    return MoEConfig(
        n_experts=v.read(count("num_experts", "num_local_experts", default=experts)),
        top_k=v.read(count("num_experts_per_tok", default=top_k)),
        d_expert=v.read(count("moe_intermediate_size", default=width)),
        renormalise=v.read(flag("norm_topk_prob", False)),
        d_shared=v.read(count("shared_expert_intermediate_size", default=5632)) if shared else None,
        shared_gated=shared,
        sparse_layers=tuple(L for L in range(v["n_layers"]) if L not in dense and (L + 1) % step == 0),
    )


def _qwen2_moe(v: Values) -> MoEConfig | None:
    return _qwen_moe(v, shared=True, experts=60, top_k=4, width=1408)


def _qwen3_moe(v: Values) -> MoEConfig | None:
    return _qwen_moe(v, shared=False, experts=128, top_k=8, width=768)


# ---------------------------------------------------------------- DeepSeek-V2/V3: MLA and routed MoE
def _mla(v: Values) -> MLAConfig:
    """transformers' DeepseekV2/V3Attention; q_lora_rank null is a full-rank q_proj."""
    if "q_lora_rank" not in v.cfg:
        raise ArchitectureError("config.json lacks 'q_lora_rank' (null for a full-rank query projection)")
    return MLAConfig(
        q_lora_rank=v.read(count("q_lora_rank", default=None)),
        kv_lora_rank=v.read(count("kv_lora_rank")),
        qk_nope_head_dim=v.read(count("qk_nope_head_dim")),
        qk_rope_head_dim=v.read(count("qk_rope_head_dim")),
        v_head_dim=v.read(count("v_head_dim")),
    )


def _mla_head_dim(v: Values) -> int:
    """A query/key head is qk_nope + qk_rope wide (config.json's head_dim is the rope part only)."""
    return int(v.read(count("qk_nope_head_dim")) + v.read(count("qk_rope_head_dim")))


def _deepseek_moe(v: Values, **routing: Any) -> MoEConfig:
    """Layers from first_k_dense_replace on are sparse; n_shared_experts experts' width of shared
    expert (none when 0); the routed weights scaled by routed_scaling_factor."""
    d_expert = v.read(count("moe_intermediate_size"))
    n_shared = v.read(count("n_shared_experts", default=routing.pop("n_shared"), low=0))
    first = v.read(count("first_k_dense_replace", default=routing.pop("first_dense"), low=0))
    top_k = routing.pop("top_k")
    top_k_key = count("num_experts_per_tok") if top_k is None else count("num_experts_per_tok", default=top_k)
    return MoEConfig(
        n_experts=v.read(count("n_routed_experts", "num_local_experts", "num_experts")),
        top_k=v.read(top_k_key),
        d_expert=d_expert,
        d_shared=n_shared * d_expert or None,
        sparse_layers=tuple(range(first, v["n_layers"])),
        routed_scale=v.read(real("routed_scaling_factor", routing.pop("scale"))),
        **routing,
    )


def _deepseek_v2_moe(v: Values) -> MoEConfig:
    """Softmax scores, top-k greedy or group-limited (best score per group); transformers' V2
    router never renormalises, whatever norm_topk_prob says."""
    method = v.read(text("topk_method", default="greedy"))
    if method not in ("greedy", "group_limited_greedy"):
        raise ArchitectureError(
            f"config.json: 'topk_method' must be 'greedy' or 'group_limited_greedy', not {describe(method)}"
        )
    return _deepseek_moe(
        v,
        n_shared=2,
        first_dense=0,
        top_k=None,  # required
        scale=1.0,
        renormalise=False,
        scoring="softmax",
        topk_method=method,
        n_group=v.read(count("n_group", default=1)),
        topk_group=v.read(count("topk_group", default=1)),
    )


def _deepseek_v3_moe(v: Values) -> MoEConfig:
    """Sigmoid scores; groups ranked by their two best bias-corrected scores ('noaux_tc', whatever
    topk_method says), experts chosen by bias-corrected score, weighted by the plain score."""
    return _deepseek_moe(
        v,
        n_shared=1,
        first_dense=3,
        top_k=8,
        scale=2.5,
        renormalise=v.read(flag("norm_topk_prob", True)),
        scoring="sigmoid",
        topk_method="noaux_tc",
        n_group=v.read(count("n_group", default=8)),
        topk_group=v.read(count("topk_group", default=4)),
        router_bias=True,
    )


def _gpt_oss_moe(v: Values) -> MoEConfig:
    """Every layer sparse; experts as wide as intermediate_size. transformers' GptOssTopKRouter:
    logits x @ W^T + b (the router's own Linear bias), top-k of them, softmax over those k, which
    is the renormalised softmax top-k."""
    return MoEConfig(
        n_experts=v.read(count("num_local_experts", default=128)),
        top_k=v.read(count("num_experts_per_tok", default=4)),
        d_expert=v["d_ff"],
        renormalise=True,
        sparse_layers=tuple(range(v["n_layers"])),
        router_logit_bias=True,
    )


# GPT-OSS: biased q/k/v/o, per-head attention sinks, a biased router and biased experts whose
# clamped SwiGLU (swiglu_alpha, swiglu_limit) huref's activation-free terms do not read;
# layer_types (sliding / full attention) change no weight
_GPT_OSS: dict[str, Any] = {
    "qkv_bias": flag("attention_bias", True),
    "o_bias": flag("attention_bias", True),
    "attn_sinks": True,
    "activation": "clamped_swiglu",
    "moe_names": "gpt_oss",
    "moe": Derived(_gpt_oss_moe),
}

_DEEPSEEK: dict[str, Any] = {
    "qkv_bias": False,  # attention_bias gives MLA's q_a / kv_a biases (mla_bias) and o_proj's
    "mla_bias": flag("attention_bias", False),
    "head_dim": Derived(_mla_head_dim),
    "moe_names": "deepseek",
    "mla": Derived(_mla),
}

_MOE_OVERRIDES: dict[str, dict[str, Any]] = {
    "mixtral": {"moe_names": "mixtral", "moe": Derived(_mixtral_moe)},
    # q, k, v carry biases unless the config's qkv_bias says otherwise
    "qwen2_moe": {"qkv_bias": flag("qkv_bias", True), "moe_names": "mlp", "moe": Derived(_qwen2_moe)},
    "qwen3_moe": {"qk_norm": True, "moe_names": "mlp", "moe": Derived(_qwen3_moe)},
    "olmoe": {"qk_norm_wide": True, "moe_names": "mlp", "moe": Derived(_olmoe_moe)},
    "deepseek_v2": {**_DEEPSEEK, "moe": Derived(_deepseek_v2_moe)},
    "deepseek_v3": {
        **_DEEPSEEK,
        "mlp_bias": False,
        "moe": Derived(_deepseek_v3_moe),
        "mtp_layers": count("num_nextn_predict_layers", default=0, low=0),
    },
    "gpt_oss": _GPT_OSS,
}
_LLAMA_OVERRIDES: dict[str, dict[str, Any]] = {
    "qwen2": {"qkv_bias": True},  # q, k, v carry biases whatever attention_bias says
    "qwen3": {"qk_norm": True},
    "gemma": _GEMMA,
    "gemma2": {**_GEMMA, "sandwich": True},
    "gemma3_text": {**_GEMMA, "sandwich": True, "qk_norm": True},
    **_MOE_OVERRIDES,
}


def _no_mla(c: ArchConfig) -> bool:
    return c.mla is None


def _full_rank_q(c: ArchConfig) -> bool:
    """One q_proj: every model but an MLA one with a low-rank (q_a, q_b) query."""
    return c.mla is None or c.mla.q_lora_rank is None


def _mla_attn(c: ArchConfig) -> bool:
    return c.mla is not None


def _low_rank_q(c: ArchConfig) -> bool:
    return c.mla is not None and c.mla.q_lora_rank is not None


def _mla_bias(low_rank_q: bool):
    return lambda c: c.extra.get("mla_bias") and (_low_rank_q(c) if low_rank_q else _mla_attn(c))


_LLAMA_ATTN = (
    Rule("layers.{L}.self_attn.q_proj.weight", ("attn_q",), when=_full_rank_q),
    Rule("layers.{L}.self_attn.k_proj.weight", ("attn_k",), when=_no_mla),
    Rule("layers.{L}.self_attn.v_proj.weight", ("attn_v",), when=_no_mla),
    Rule("layers.{L}.self_attn.q_proj.bias", ("attn_q_bias",), "vector", when=_when("qkv_bias")),
    Rule("layers.{L}.self_attn.k_proj.bias", ("attn_k_bias",), "vector", when=_when("qkv_bias")),
    Rule("layers.{L}.self_attn.v_proj.bias", ("attn_v_bias",), "vector", when=_when("qkv_bias")),
)
# Multi-head Latent Attention (DeepSeek-V2/V3) in place of k_proj and v_proj (and of q_proj
# when the query is low-rank)
_MLA_RULES = (
    Rule("layers.{L}.self_attn.q_a_proj.weight", ("attn_q_a",), when=_low_rank_q),
    Rule("layers.{L}.self_attn.q_a_proj.bias", ("attn_q_a_bias",), "vector", when=_mla_bias(True)),
    Rule("layers.{L}.self_attn.q_a_layernorm.weight", ("attn_q_a_norm",), "vector", when=_low_rank_q),
    Rule("layers.{L}.self_attn.q_b_proj.weight", ("attn_q_b",), when=_low_rank_q),
    Rule("layers.{L}.self_attn.kv_a_proj_with_mqa.weight", ("attn_kv_a",), when=_mla_attn),
    Rule(
        "layers.{L}.self_attn.kv_a_proj_with_mqa.bias", ("attn_kv_a_bias",), "vector", when=_mla_bias(False)
    ),
    Rule("layers.{L}.self_attn.kv_a_layernorm.weight", ("attn_kv_a_norm",), "vector", when=_mla_attn),
    Rule("layers.{L}.self_attn.kv_b_proj.weight", ("attn_kv_b",), when=_mla_attn),
)
_LLAMA_COMMON = (
    Rule("embed_tokens.weight", ("embed",)),
    Rule("norm.weight", ("final_norm",), "vector"),
    Rule("layers.{L}.self_attn.o_proj.weight", ("attn_o",)),
    Rule("layers.{L}.self_attn.o_proj.bias", ("attn_o_bias",), "vector", when=_when("o_bias")),
    Rule("layers.{L}.mlp.down_proj.weight", ("mlp_down",), layers="dense"),
    Rule(
        "layers.{L}.mlp.down_proj.bias", ("mlp_down_bias",), "vector", when=_when("mlp_bias"), layers="dense"
    ),
    Rule("layers.{L}.input_layernorm.weight", ("attn_norm",), "vector"),
    Rule("layers.{L}.post_attention_layernorm.weight", ("mlp_norm",), "vector", when=_not("sandwich")),
    # Gemma-2: 'post_attention_layernorm' normalises the attention *output*
    Rule("layers.{L}.post_attention_layernorm.weight", ("attn_out_norm",), "vector", when=_when("sandwich")),
    Rule("layers.{L}.pre_feedforward_layernorm.weight", ("mlp_norm",), "vector", when=_when("sandwich")),
    Rule("layers.{L}.post_feedforward_layernorm.weight", ("mlp_out_norm",), "vector", when=_when("sandwich")),
    Rule("layers.{L}.self_attn.q_norm.weight", ("attn_q_norm",), "vector", when=_when("qk_norm")),
    Rule("layers.{L}.self_attn.k_norm.weight", ("attn_k_norm",), "vector", when=_when("qk_norm")),
    Rule("layers.{L}.self_attn.q_norm.weight", ("attn_q_norm_wide",), "vector", when=_when("qk_norm_wide")),
    Rule("layers.{L}.self_attn.k_norm.weight", ("attn_k_norm_wide",), "vector", when=_when("qk_norm_wide")),
    Rule("layers.{L}.self_attn.sinks", ("attn_sinks",), "vector", when=_when("attn_sinks")),
)
_LLAMA_MLP = (
    Rule("layers.{L}.mlp.gate_proj.weight", ("mlp_gate",), layers="dense"),
    Rule("layers.{L}.mlp.up_proj.weight", ("mlp_up",), layers="dense"),
    Rule(
        "layers.{L}.mlp.gate_proj.bias", ("mlp_gate_bias",), "vector", when=_when("mlp_bias"), layers="dense"
    ),
    Rule("layers.{L}.mlp.up_proj.bias", ("mlp_up_bias",), "vector", when=_when("mlp_bias"), layers="dense"),
)
_MIXTRAL = _when("moe_names", "mixtral")


def _has_shared(c: ArchConfig) -> bool:
    return c.moe is not None and c.moe.d_shared is not None


def _mlp_moe(c: ArchConfig) -> bool:
    """The sparse block replaces mlp: Qwen-MoE, OLMoE ("mlp") and DeepSeek ("deepseek")."""
    return c.extra.get("moe_names") in ("mlp", "deepseek")


def _shared_named(names: str):
    return lambda c: _has_shared(c) and c.extra.get("moe_names") == names


_MLP_MOE = _mlp_moe
_GPT_OSS_MOE = _when("moe_names", "gpt_oss")
_MOE_RULES = (
    # Mixtral: block_sparse_moe with w1 (gate), w3 (up), w2 (down) per expert
    Rule("layers.{L}.block_sparse_moe.gate.weight", ("moe_router",), when=_MIXTRAL, layers="sparse"),
    Rule("layers.{L}.block_sparse_moe.experts.{E}.w1.weight", ("expert_gate",), when=_MIXTRAL),
    Rule("layers.{L}.block_sparse_moe.experts.{E}.w3.weight", ("expert_up",), when=_MIXTRAL),
    Rule("layers.{L}.block_sparse_moe.experts.{E}.w2.weight", ("expert_down",), when=_MIXTRAL),
    # Qwen2-MoE, Qwen3-MoE, OLMoE: the sparse block replaces mlp
    Rule("layers.{L}.mlp.gate.weight", ("moe_router",), when=_MLP_MOE, layers="sparse"),
    Rule("layers.{L}.mlp.experts.{E}.gate_proj.weight", ("expert_gate",), when=_MLP_MOE),
    Rule("layers.{L}.mlp.experts.{E}.up_proj.weight", ("expert_up",), when=_MLP_MOE),
    Rule("layers.{L}.mlp.experts.{E}.down_proj.weight", ("expert_down",), when=_MLP_MOE),
    # the same experts stacked in 3-D tensors (transformers' in-memory layout, written by some
    # tools): [E, 2F, d], each expert's gate rows then its up rows; [E, d, F]. Where present they
    # stand in for the per-expert tensors of their layer (huref.arch.model).
    Rule(
        "layers.{L}.mlp.experts.gate_up_proj",
        ("expert_gate", "expert_up"),
        split="expert_halves",
        optional=True,
        when=_MLP_MOE,
    ),
    Rule("layers.{L}.mlp.experts.down_proj", ("expert_down",), split="experts", optional=True, when=_MLP_MOE),
    # Qwen2-MoE's shared expert, its output scaled by sigmoid(x @ shared_expert_gate^T)
    Rule(
        "layers.{L}.mlp.shared_expert.gate_proj.weight",
        ("shared_gate",),
        when=_shared_named("mlp"),
        layers="sparse",
    ),
    Rule(
        "layers.{L}.mlp.shared_expert.up_proj.weight",
        ("shared_up",),
        when=_shared_named("mlp"),
        layers="sparse",
    ),
    Rule(
        "layers.{L}.mlp.shared_expert.down_proj.weight",
        ("shared_down",),
        when=_shared_named("mlp"),
        layers="sparse",
    ),
    Rule(
        "layers.{L}.mlp.shared_expert_gate.weight",
        ("shared_expert_gate",),
        when=lambda c: c.moe is not None and c.moe.shared_gated,
        layers="sparse",
    ),
    # DeepSeek: n_shared_experts always-on experts fused into one ungated MLP; V3's selection bias
    *(
        Rule(
            f"layers.{{L}}.mlp.shared_experts.{p}_proj.weight",
            (f"shared_{p}",),
            when=_shared_named("deepseek"),
            layers="sparse",
        )
        for p in ("gate", "up", "down")
    ),
    Rule(
        "layers.{L}.mlp.gate.e_score_correction_bias",
        ("moe_router_bias",),
        "vector",
        when=lambda c: c.moe is not None and c.moe.router_bias,
        layers="sparse",
    ),
    # GPT-OSS: a router with a Linear bias (in the logits: MoEConfig.router_logit_bias) and every
    # expert of a layer in in-features-first stacks: gate_up [E, d, 2F] with each expert's gate
    # and up columns interleaved (gate at even, up at odd indices, as modeling_gpt_oss slices
    # them), down [E, F, d]; their biases [E, 2F] (interleaved alike) and [E, d]
    Rule("layers.{L}.mlp.router.weight", ("moe_router",), when=_GPT_OSS_MOE, layers="sparse"),
    Rule("layers.{L}.mlp.router.bias", ("moe_router_bias",), "vector", when=_GPT_OSS_MOE, layers="sparse"),
    Rule(
        "layers.{L}.mlp.experts.gate_up_proj",
        ("expert_gate", "expert_up"),
        "conv1d",
        split="expert_interleaved",
        when=_GPT_OSS_MOE,
    ),
    Rule(
        "layers.{L}.mlp.experts.gate_up_proj_bias",
        ("expert_gate_bias", "expert_up_bias"),
        "vector",
        split="expert_interleaved",
        when=_GPT_OSS_MOE,
    ),
    Rule("layers.{L}.mlp.experts.down_proj", ("expert_down",), "conv1d", split="experts", when=_GPT_OSS_MOE),
    Rule(
        "layers.{L}.mlp.experts.down_proj_bias",
        ("expert_down_bias",),
        "vector",
        split="experts",
        when=_GPT_OSS_MOE,
    ),
)
_LLAMA_BUFFERS = (r"\.rotary_emb\.inv_freq$",)
# DeepSeek-V3's multi-token-prediction block (the release's weight documentation): layer
# n_layers + k holds a decoder layer like the last main one, two RMSNorms of the previous hidden
# state (hnorm) and of the next token's embedding (enorm), eh_proj [d, 2d] joining the two, and
# its own copies of the embedding and of the output head with its norm (shared_head)
_DEEPSEEK_MTP = MTPRules(
    count="mtp_layers",
    tensors=(
        ("layers.{L}.enorm.weight", ("d",)),
        ("layers.{L}.hnorm.weight", ("d",)),
        ("layers.{L}.eh_proj.weight", ("d", "2d")),
        ("layers.{L}.embed_tokens.weight", ("V", "d")),
        ("layers.{L}.shared_head.norm.weight", ("d",)),
        ("layers.{L}.shared_head.head.weight", ("V", "d")),
    ),
)
# llama.cpp's names (gguf-py's tensor mapping) for the tensors of this family that GGUF holds
_LLAMA_GGUF = GGUFNames(
    archs=(
        GGUFArch(
            "llama",
            "llama",
            "LlamaForCausalLM",
            rotary_interleaved=True,
            moe_model_type="mixtral",  # llama.cpp writes Mixtral as llama with an expert_count
            moe_hf_class="MixtralForCausalLM",
        ),
        GGUFArch("qwen2", "qwen2", "Qwen2ForCausalLM", rotary_interleaved=False),
        GGUFArch("qwen2moe", "qwen2_moe", "Qwen2MoeForCausalLM", rotary_interleaved=False),
        GGUFArch(
            "qwen3moe", "qwen3_moe", "Qwen3MoeForCausalLM", rotary_interleaved=False, moe_renormalise=True
        ),
    ),
    tensors={
        "token_embd.weight": "embed",
        "output_norm.weight": "final_norm",
        "output.weight": "lm_head",
        "blk.{L}.attn_norm.weight": "attn_norm",
        "blk.{L}.attn_q.weight": "attn_q",
        "blk.{L}.attn_k.weight": "attn_k",
        "blk.{L}.attn_v.weight": "attn_v",
        "blk.{L}.attn_q.bias": "attn_q_bias",  # Qwen2
        "blk.{L}.attn_k.bias": "attn_k_bias",  # Qwen2
        "blk.{L}.attn_v.bias": "attn_v_bias",  # Qwen2
        "blk.{L}.attn_output.weight": "attn_o",
        "blk.{L}.ffn_norm.weight": "mlp_norm",
        "blk.{L}.ffn_gate.weight": "mlp_gate",
        "blk.{L}.ffn_up.weight": "mlp_up",
        "blk.{L}.ffn_down.weight": "mlp_down",
        "blk.{L}.attn_q_norm.weight": "attn_q_norm",  # Qwen3-MoE: per-head q/k norms
        "blk.{L}.attn_k_norm.weight": "attn_k_norm",
        # sparse MoE layers: the router, every expert of the layer in one stack ([E, F, d] for
        # gate and up, [E, d, F] for down, in numpy order), Qwen2-MoE's shared expert and its gate
        "blk.{L}.ffn_gate_inp.weight": "moe_router",
        "blk.{L}.ffn_gate_exps.weight": "expert_gate",
        "blk.{L}.ffn_up_exps.weight": "expert_up",
        "blk.{L}.ffn_down_exps.weight": "expert_down",
        "blk.{L}.ffn_gate_shexp.weight": "shared_gate",
        "blk.{L}.ffn_up_shexp.weight": "shared_up",
        "blk.{L}.ffn_down_shexp.weight": "shared_down",
        "blk.{L}.ffn_gate_inp_shexp.weight": "shared_expert_gate",  # [d] or [1, d]
    },
    ignored=("rope_freqs.weight",),  # llama.cpp's rotary frequency table: a buffer
)

ARCHITECTURES.add(
    "llama",
    ArchSpec(
        name="llama",
        # LLaMA, Mistral, Qwen2/Qwen3 and Gemma share the layout, and so do the sparse MoE model
        # types but for their feed-forward blocks; differences are config fields
        model_types=(
            *("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
            *("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss"),
        ),
        prefixes=("model.", ""),
        rules=_LLAMA_COMMON + _LLAMA_ATTN + _MLA_RULES + _LLAMA_MLP + _MOE_RULES,
        outside_prefix=_lm_head_rules(),
        keys=ConfigKeys(_LLAMA_KEYS, _LLAMA_EXTRA, _LLAMA_OVERRIDES),
        gguf=_LLAMA_GGUF,
        buffers=_LLAMA_BUFFERS,
        mtp=_DEEPSEEK_MTP,
        notes="Gemma multiplies norm weights as (1 + w) and scales embeddings by sqrt(d). "
        "Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V2/V3 and GPT-OSS replace some or all MLPs by sparse MoE "
        "blocks; DeepSeek's Multi-head Latent Attention replaces q/k/v by low-rank latent projections.",
    ),
)

ARCHITECTURES.add(
    "phi3",
    ArchSpec(
        name="phi3",
        model_types=("phi3",),
        prefixes=("model.", ""),
        rules=(
            *_LLAMA_COMMON,
            # q | k | v concatenated along the output dimension
            Rule("layers.{L}.self_attn.qkv_proj.weight", ("attn_q", "attn_k", "attn_v"), split="qkv"),
            # gate | up concatenated along the output dimension
            Rule("layers.{L}.mlp.gate_up_proj.weight", ("mlp_gate", "mlp_up"), split="halves"),
        ),
        outside_prefix=_lm_head_rules(),
        keys=ConfigKeys({**_LLAMA_KEYS, "qkv_layout": "concat"}, _LLAMA_EXTRA),
        buffers=_LLAMA_BUFFERS,
    ),
)


# ---------------------------------------------------------------- GPT-2
_GPT2_KEYS = ConfigKeys(
    {
        "d_model": count("n_embd", "hidden_size"),
        "n_heads": count("n_head", "num_attention_heads"),
        "n_kv_heads": Ref("n_heads"),
        "n_layers": count("n_layer", "num_hidden_layers"),
        "head_dim": None,
        "d_ff": count("n_inner", default=Derived(four_widths)),
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": real("layer_norm_epsilon", 1e-5),
        "gated": False,
        "activation": text("activation_function", default="gelu_new"),
        "tied": flag("tie_word_embeddings", True),
        "positions": "learned",
        "qkv_layout": "concat",
    },
    model_type="gpt2",
)


ARCHITECTURES.add(
    "gpt2",
    ArchSpec(
        name="gpt2",
        model_types=("gpt2",),
        prefixes=("transformer.", ""),
        rules=(
            Rule("wte.weight", ("embed",)),
            Rule("wpe.weight", ("pos_embed",)),
            *_norm_pair("ln_f", "final_norm"),
            *_norm_pair("h.{L}.ln_1", "attn_norm"),
            *_norm_pair("h.{L}.ln_2", "mlp_norm"),
            # Conv1D stores [in, out]; q | k | v concatenated along out
            Rule("h.{L}.attn.c_attn.weight", ("attn_q", "attn_k", "attn_v"), "conv1d", "qkv"),
            Rule("h.{L}.attn.c_attn.bias", ("attn_q_bias", "attn_k_bias", "attn_v_bias"), "vector", "qkv"),
            *_linear_pair("h.{L}.attn.c_proj", "attn_o", "conv1d"),
            *_linear_pair("h.{L}.mlp.c_fc", "mlp_up", "conv1d"),
            *_linear_pair("h.{L}.mlp.c_proj", "mlp_down", "conv1d"),
        ),
        outside_prefix=_lm_head_rules(),
        keys=_GPT2_KEYS,
        buffers=(r"\.attn\.bias$", r"\.attn\.masked_bias$"),  # causal masks
    ),
)


# ---------------------------------------------------------------- GPT-NeoX
_NEOX_KEYS = ConfigKeys(
    {
        "d_model": count("hidden_size"),
        "n_heads": count("num_attention_heads"),
        "n_kv_heads": Ref("n_heads"),
        "n_layers": count("num_hidden_layers"),
        "head_dim": None,
        "d_ff": count("intermediate_size", default=Derived(four_widths)),
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": real("layer_norm_eps", 1e-5),
        "parallel": flag("use_parallel_residual", True),
        "gated": False,
        "activation": text("hidden_act", default="gelu"),
        "tied": flag("tie_word_embeddings", False),
        "qkv_layout": "per_head",
    },
    model_type="gpt_neox",
)


ARCHITECTURES.add(
    "gpt_neox",
    ArchSpec(
        name="gpt_neox",
        model_types=("gpt_neox",),
        prefixes=("gpt_neox.", ""),
        rules=(
            Rule("embed_in.weight", ("embed",)),
            *_norm_pair("final_layer_norm", "final_norm"),
            *_norm_pair("layers.{L}.input_layernorm", "attn_norm"),
            *_norm_pair("layers.{L}.post_attention_layernorm", "mlp_norm"),
            # fused per head: out dim is [heads, (q, k, v), head_dim]
            Rule("layers.{L}.attention.query_key_value.weight", ("attn_q", "attn_k", "attn_v"), split="qkv"),
            Rule(
                "layers.{L}.attention.query_key_value.bias",
                ("attn_q_bias", "attn_k_bias", "attn_v_bias"),
                "vector",
                "qkv",
            ),
            *_linear_pair("layers.{L}.attention.dense", "attn_o"),
            *_linear_pair("layers.{L}.mlp.dense_h_to_4h", "mlp_up"),
            *_linear_pair("layers.{L}.mlp.dense_4h_to_h", "mlp_down"),
        ),
        outside_prefix=_lm_head_rules("embed_out.weight"),
        keys=_NEOX_KEYS,
        buffers=(r"\.attention\.(bias|masked_bias)$", r"\.rotary_emb\.inv_freq$"),
    ),
)


# ---------------------------------------------------------------- OPT
def _opt_placement(v: Values) -> str:
    """do_layer_norm_before: false is OPT-350m's post-LN block."""
    return "pre" if v["_pre"] else "post"


def _opt_projected(v: Values) -> bool:
    """OPT-350m embeds tokens narrower than the residual stream, projected in and out."""
    return bool(v["d_embed"] != v["d_model"])


def _opt_final_norm(v: Values) -> bool:
    """Only a pre-LN OPT ends with a norm, unless its config removes it (the key is read then only)."""
    return bool(v["_pre"]) and not v.read(flag("_remove_final_layer_norm", False))


_OPT_KEYS = ConfigKeys(
    {
        "d_model": count("hidden_size"),
        "n_heads": count("num_attention_heads"),
        "n_kv_heads": Ref("n_heads"),
        "_pre": flag("do_layer_norm_before", True),
        "d_embed": count("word_embed_proj_dim", default=Ref("d_model")),
        "n_layers": count("num_hidden_layers"),
        "head_dim": None,
        "d_ff": count("ffn_dim"),
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": 1e-5,
        "placement": Derived(_opt_placement),
        "gated": False,
        "activation": text("activation_function", default="relu"),
        "tied": flag("tie_word_embeddings", True),
        "positions": "learned",
        "bias": flag("enable_bias", True),
        "proj": Derived(_opt_projected),
        "final_norm": Derived(_opt_final_norm),
    },
    extra=("bias", "proj", "final_norm", "d_embed"),
    model_type="opt",
)


ARCHITECTURES.add(
    "opt",
    ArchSpec(
        name="opt",
        model_types=("opt",),
        prefixes=("model.decoder.", "decoder."),
        rules=(
            Rule("embed_tokens.weight", ("embed",)),
            Rule("embed_positions.weight", ("pos_embed",)),
            Rule("final_layer_norm.weight", ("final_norm",), "vector", when=_when("final_norm")),
            Rule("final_layer_norm.bias", ("final_norm_bias",), "vector", when=_when("final_norm")),
            Rule("project_in.weight", ("embed_proj_in",), when=_when("proj")),
            Rule("project_out.weight", ("embed_proj_out",), when=_when("proj")),
            *_linear_pair("layers.{L}.self_attn.q_proj", "attn_q", bias_when=_when("bias")),
            *_linear_pair("layers.{L}.self_attn.k_proj", "attn_k", bias_when=_when("bias")),
            *_linear_pair("layers.{L}.self_attn.v_proj", "attn_v", bias_when=_when("bias")),
            *_linear_pair("layers.{L}.self_attn.out_proj", "attn_o", bias_when=_when("bias")),
            *_norm_pair("layers.{L}.self_attn_layer_norm", "attn_norm"),
            *_linear_pair("layers.{L}.fc1", "mlp_up", bias_when=_when("bias")),
            *_linear_pair("layers.{L}.fc2", "mlp_down", bias_when=_when("bias")),
            *_norm_pair("layers.{L}.final_layer_norm", "mlp_norm"),
        ),
        outside_prefix=_lm_head_rules(),
        keys=_OPT_KEYS,
    ),
)


# ---------------------------------------------------------------- BLOOM
_BLOOM_KEYS = ConfigKeys(
    {
        "d_model": count("hidden_size", "n_embed"),
        "n_heads": count("n_head", "num_attention_heads"),
        "n_kv_heads": Ref("n_heads"),
        "n_layers": count("n_layer", "num_hidden_layers"),
        "head_dim": None,
        "d_ff": Derived(four_widths),  # not configurable
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": real("layer_norm_epsilon", 1e-5),
        "gated": False,
        "activation": "gelu_new",  # BLOOM uses the tanh approximation of GELU
        "tied": flag("tie_word_embeddings", True),
        "positions": "alibi",
        "qkv_layout": "per_head",
    },
    model_type="bloom",
)


ARCHITECTURES.add(
    "bloom",
    ArchSpec(
        name="bloom",
        model_types=("bloom",),
        prefixes=("transformer.", ""),
        rules=(
            Rule("word_embeddings.weight", ("embed",)),
            *_norm_pair("word_embeddings_layernorm", "embed_norm"),
            *_norm_pair("ln_f", "final_norm"),
            *_norm_pair("h.{L}.input_layernorm", "attn_norm"),
            *_norm_pair("h.{L}.post_attention_layernorm", "mlp_norm"),
            # fused per head, like GPT-NeoX
            Rule("h.{L}.self_attention.query_key_value.weight", ("attn_q", "attn_k", "attn_v"), split="qkv"),
            Rule(
                "h.{L}.self_attention.query_key_value.bias",
                ("attn_q_bias", "attn_k_bias", "attn_v_bias"),
                "vector",
                "qkv",
            ),
            *_linear_pair("h.{L}.self_attention.dense", "attn_o"),
            *_linear_pair("h.{L}.mlp.dense_h_to_4h", "mlp_up"),
            *_linear_pair("h.{L}.mlp.dense_4h_to_h", "mlp_down"),
        ),
        outside_prefix=_lm_head_rules(),
        keys=_BLOOM_KEYS,
    ),
)


# ---------------------------------------------------------------- Falcon
def _falcon_kv_heads(v: Values) -> int:
    """The new architecture declares its key/value heads; the original has one (multi-query)
    or one per query head (num_kv_heads is read only for the new one)."""
    if v["_new"]:
        return int(v.read(count("num_kv_heads", default=Ref("n_heads"))))
    return 1 if v["_multi_query"] else int(v["n_heads"])


def _falcon_input_norms(v: Values) -> int:
    """Norms at a block's input: the new architecture may give attention and MLP one each."""
    return int(v.read(count("num_ln_in_parallel_attn", default=2))) if v["_new"] else 1


def _falcon_parallel(v: Values) -> bool:
    """Attention and MLP read the same stream; always so in the new architecture."""
    return v.read(flag("parallel_attn", True)) or bool(v["_new"])


def _falcon_positions(v: Values) -> str:
    return "alibi" if v.read(flag("alibi", False)) else "rope"


def _falcon_qkv_layout(v: Values) -> str:
    """The new architecture and multi-query group q heads with their k, v head; else per head."""
    return "per_kv_group" if (v["_new"] or v["_multi_query"]) else "per_head"


def _falcon_two_norms(v: Values) -> bool:
    return bool(v["_norms"] == 2)


def _falcon_post_ln(v: Values) -> bool:
    """A sequential block normalises the stream again before its MLP."""
    return not v["parallel"]


_FALCON_KEYS = ConfigKeys(
    {
        "d_model": count("hidden_size"),
        "n_heads": count("num_attention_heads", "n_head"),
        "_new": flag("new_decoder_architecture", False),
        "_multi_query": flag("multi_query", True),
        "n_kv_heads": Derived(_falcon_kv_heads),
        "_norms": Derived(_falcon_input_norms),
        "parallel": Derived(_falcon_parallel),
        "n_layers": count("num_hidden_layers", "n_layer"),
        "head_dim": None,
        "d_ff": count("ffn_hidden_size", default=Derived(four_widths)),
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": real("layer_norm_epsilon", 1e-5),
        "gated": False,
        "activation": text("activation", default="gelu"),
        "tied": flag("tie_word_embeddings", True),
        "positions": Derived(_falcon_positions),
        "qkv_layout": Derived(_falcon_qkv_layout),
        "bias": flag("bias", False),
        "two_ln": Derived(_falcon_two_norms),
        "post_ln": Derived(_falcon_post_ln),
    },
    extra=("bias", "two_ln", "post_ln"),
    model_type="falcon",
)


ARCHITECTURES.add(
    "falcon",
    ArchSpec(
        name="falcon",
        model_types=("falcon", "RefinedWeb", "RefinedWebModel"),
        prefixes=("transformer.", ""),
        rules=(
            Rule("word_embeddings.weight", ("embed",)),
            *_norm_pair("ln_f", "final_norm"),
            Rule("h.{L}.input_layernorm.weight", ("attn_norm",), "vector", when=_not("two_ln")),
            Rule("h.{L}.input_layernorm.bias", ("attn_norm_bias",), "vector", when=_not("two_ln")),
            Rule("h.{L}.ln_attn.weight", ("attn_norm",), "vector", when=_when("two_ln")),
            Rule("h.{L}.ln_attn.bias", ("attn_norm_bias",), "vector", when=_when("two_ln")),
            Rule("h.{L}.ln_mlp.weight", ("mlp_norm",), "vector", when=_when("two_ln")),
            Rule("h.{L}.ln_mlp.bias", ("mlp_norm_bias",), "vector", when=_when("two_ln")),
            Rule("h.{L}.post_attention_layernorm.weight", ("mlp_norm",), "vector", when=_when("post_ln")),
            Rule("h.{L}.post_attention_layernorm.bias", ("mlp_norm_bias",), "vector", when=_when("post_ln")),
            Rule("h.{L}.self_attention.query_key_value.weight", ("attn_q", "attn_k", "attn_v"), split="qkv"),
            Rule(
                "h.{L}.self_attention.query_key_value.bias",
                ("attn_q_bias", "attn_k_bias", "attn_v_bias"),
                "vector",
                "qkv",
                when=_when("bias"),
            ),
            *_linear_pair("h.{L}.self_attention.dense", "attn_o", bias_when=_when("bias")),
            *_linear_pair("h.{L}.mlp.dense_h_to_4h", "mlp_up", bias_when=_when("bias")),
            *_linear_pair("h.{L}.mlp.dense_4h_to_h", "mlp_down", bias_when=_when("bias")),
        ),
        outside_prefix=_lm_head_rules(),
        keys=_FALCON_KEYS,
    ),
)


# ---------------------------------------------------------------- Phi (phi-1, phi-1.5, phi-2)
_PHI_KEYS = ConfigKeys(
    {
        "d_model": count("hidden_size"),
        "n_heads": count("num_attention_heads"),
        "n_kv_heads": count("num_key_value_heads", default=Ref("n_heads")),
        "n_layers": count("num_hidden_layers"),
        "head_dim": None,
        "d_ff": count("intermediate_size"),
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": real("layer_norm_eps", 1e-5),
        "parallel": True,  # one input norm feeds attention and MLP
        "gated": False,
        "activation": text("hidden_act", default="gelu_new"),
        "tied": flag("tie_word_embeddings", False),
        "qk_layernorm": flag("qk_layernorm", False),
    },
    extra=("qk_layernorm",),
    model_type="phi",
)


ARCHITECTURES.add(
    "phi",
    ArchSpec(
        name="phi",
        model_types=("phi",),
        prefixes=("model.", ""),
        rules=(
            Rule("embed_tokens.weight", ("embed",)),
            *_norm_pair("final_layernorm", "final_norm"),
            *_norm_pair("layers.{L}.input_layernorm", "attn_norm"),
            *_linear_pair("layers.{L}.self_attn.q_proj", "attn_q"),
            *_linear_pair("layers.{L}.self_attn.k_proj", "attn_k"),
            *_linear_pair("layers.{L}.self_attn.v_proj", "attn_v"),
            *_linear_pair("layers.{L}.self_attn.dense", "attn_o"),
            Rule(
                "layers.{L}.self_attn.q_layernorm.weight",
                ("attn_q_norm",),
                "vector",
                when=_when("qk_layernorm"),
            ),
            Rule(
                "layers.{L}.self_attn.q_layernorm.bias",
                ("attn_q_norm_bias",),
                "vector",
                when=_when("qk_layernorm"),
            ),
            Rule(
                "layers.{L}.self_attn.k_layernorm.weight",
                ("attn_k_norm",),
                "vector",
                when=_when("qk_layernorm"),
            ),
            Rule(
                "layers.{L}.self_attn.k_layernorm.bias",
                ("attn_k_norm_bias",),
                "vector",
                when=_when("qk_layernorm"),
            ),
            *_linear_pair("layers.{L}.mlp.fc1", "mlp_up"),
            *_linear_pair("layers.{L}.mlp.fc2", "mlp_down"),
        ),
        outside_prefix=(
            *_lm_head_rules(),
            Rule("lm_head.bias", ("lm_head_bias",), "vector"),
        ),
        keys=_PHI_KEYS,
        buffers=(r"\.rotary_emb\.inv_freq$",),
    ),
)


# ---------------------------------------------------------------- BERT (post-LN encoder)
_BERT_KEYS = ConfigKeys(
    {
        "d_model": count("hidden_size"),
        "n_heads": count("num_attention_heads"),
        "n_kv_heads": Ref("n_heads"),
        "n_layers": count("num_hidden_layers"),
        "head_dim": None,
        "d_ff": count("intermediate_size"),
        "vocab_size": count("vocab_size"),
        "norm": "layer",
        "norm_eps": real("layer_norm_eps", 1e-12),
        "placement": "post",
        "gated": False,
        "activation": text("hidden_act", default="gelu"),
        "tied": True,
        "positions": "learned",
    }
)


ARCHITECTURES.add(
    "bert",
    ArchSpec(
        name="bert",
        model_types=("bert",),
        prefixes=("bert.", ""),
        rules=(
            Rule("embeddings.word_embeddings.weight", ("embed",)),
            Rule("embeddings.position_embeddings.weight", ("pos_embed",)),
            Rule("embeddings.token_type_embeddings.weight", ("type_embed",), optional=True),
            *_norm_pair("embeddings.LayerNorm", "embed_norm"),
            *_linear_pair("encoder.layer.{L}.attention.self.query", "attn_q"),
            *_linear_pair("encoder.layer.{L}.attention.self.key", "attn_k"),
            *_linear_pair("encoder.layer.{L}.attention.self.value", "attn_v"),
            *_linear_pair("encoder.layer.{L}.attention.output.dense", "attn_o"),
            *_norm_pair("encoder.layer.{L}.attention.output.LayerNorm", "attn_norm"),
            *_linear_pair("encoder.layer.{L}.intermediate.dense", "mlp_up"),
            *_linear_pair("encoder.layer.{L}.output.dense", "mlp_down"),
            *_norm_pair("encoder.layer.{L}.output.LayerNorm", "mlp_norm"),
        ),
        keys=_BERT_KEYS,
        # task heads (MLM / NSP / pooler) do not enter the invariants; named here, not dropped silently
        ignored=(r"^cls\.", r"(^|\.)pooler\."),
        buffers=(r"embeddings\.position_ids$",),
    ),
)


def spec_for(config: dict[str, Any]) -> ArchSpec:
    mt = config.get("model_type")
    if not mt:
        raise ArchitectureError("config.json has no 'model_type'; cannot tell the architecture")
    if not isinstance(mt, str):
        raise ArchitectureError(f"config.json: 'model_type' must be a string, not {describe(mt)}")
    for _, spec in ARCHITECTURES.items():
        if mt in spec.model_types:
            return spec
    known = sorted(t for _, s in ARCHITECTURES.items() for t in s.model_types)
    raise ArchitectureError(f"unknown architecture '{shown(mt)}' (known: {', '.join(known)})")


def gguf_archs() -> dict[str, tuple[ArchSpec, GGUFArch]]:
    """Every GGUF ``general.architecture`` huref reads, with the family it is read as."""
    return {a.name: (spec, a) for _, spec in ARCHITECTURES.items() if spec.gguf for a in spec.gguf.archs}
