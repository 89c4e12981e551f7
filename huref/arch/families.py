"""Architecture families as data: one definition each, registered by ``model_type``.

Each definition lists every tensor a checkpoint of the family holds, the role(s) it provides,
how it is stored (``conv1d`` = [in, out], as GPT-2's Conv1D) and how fused tensors split. The
config readers turn a Hugging Face ``config.json`` into an ``ArchConfig``; family defaults that
the config may omit are written out here, next to the family they belong to.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypedDict

from huref.arch.spec import ArchConfig, ArchSpec, Rule
from huref.errors import ArchitectureError
from huref.paths import shown
from huref.plugins import Registry

ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")


# Every value a config reader uses is checked for its JSON type and range here, where its meaning
# is known: a mistyped value (true for a count, "false" for a flag, 2.5 layers, NaN, 1e400) is one
# error naming the key, never a silent coercion or an exception where it is used.
MAX_SIZE = 2**31 - 1  # sizes and counts: frameworks index them with 32-bit integers
_REQUIRED: Any = object()


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string '{shown(value[:40])}'"
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)  # true, 2.5, NaN, Infinity
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def _lookup(cfg: dict[str, Any], keys: tuple[str, ...], default: Any) -> tuple[str, Any]:
    """(the first of ``keys`` that is set, its value); null counts as unset."""
    for k in keys:
        if cfg.get(k) is not None:
            return k, cfg[k]
    if default is _REQUIRED:
        raise ArchitectureError(f"config.json lacks '{keys[0]}'")
    return keys[0], default


def _count(cfg: dict[str, Any], *keys: str, default: Any = _REQUIRED, low: int = 1) -> int:
    """A size or count: a whole number (1000 or 1e3, not 2.5, true or "2") in low..MAX_SIZE."""
    key, value = _lookup(cfg, keys, default)
    whole = isinstance(value, int) or (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    )
    if isinstance(value, bool) or not whole or not low <= value <= MAX_SIZE:
        raise ArchitectureError(
            f"config.json: '{key}' must be a whole number from {low} to {MAX_SIZE}, not {_describe(value)}"
        )
    return int(value)


def _optional_count(cfg: dict[str, Any], key: str) -> int | None:
    return None if cfg.get(key) is None else _count(cfg, key)


def _real(cfg: dict[str, Any], key: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
    """A finite number in low..high (an epsilon: NaN or Infinity would poison every norm; no upper
    bound, since rescaling a model's residual stream by c legitimately scales its epsilon by c**2)."""
    _, value = _lookup(cfg, (key,), default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ArchitectureError(f"config.json: '{key}' must be a finite number, not {_describe(value)}")
    if not low <= value <= high:
        raise ArchitectureError(f"config.json: '{key}' must be between {low} and {high}, not {value}")
    return float(value)


def _flag(cfg: dict[str, Any], key: str, default: bool) -> bool:
    """A JSON boolean; the string "false" is not one (bool("false") would be True)."""
    _, value = _lookup(cfg, (key,), default)
    if not isinstance(value, bool):
        raise ArchitectureError(f"config.json: '{key}' must be true or false, not {_describe(value)}")
    return value


def _text(cfg: dict[str, Any], *keys: str, default: str) -> str:
    key, value = _lookup(cfg, keys, default)
    if not isinstance(value, str):
        raise ArchitectureError(f"config.json: '{key}' must be a string, not {_describe(value)}")
    return value


class _Heads(TypedDict):
    n_heads: int
    n_kv_heads: int
    head_dim: int


def _heads(d: int, h: int, kv: int, hd: int | None = None) -> _Heads:
    if h % kv:
        raise ArchitectureError(f"config.json: {h} attention heads do not divide into {kv} key/value heads")
    hd = hd or d // h
    if hd < 1:
        raise ArchitectureError(f"config.json: {h} attention heads for a hidden size of {d}")
    return {"n_heads": h, "n_kv_heads": kv, "head_dim": hd}


def _when(key: str, value: Any = True):
    return lambda c: c.extra.get(key) == value


def _not(key: str):
    return lambda c: not c.extra.get(key)


# ---------------------------------------------------------------- LLaMA and its variants
def _read_llama_like(cfg: dict[str, Any], family: str) -> ArchConfig:
    d = _count(cfg, "hidden_size")
    h = _count(cfg, "num_attention_heads")
    kv = _count(cfg, "num_key_value_heads", default=h)
    mt = _text(cfg, "model_type", default=family)
    gemma = mt.startswith("gemma")
    extra = {
        "qkv_bias": _flag(cfg, "attention_bias", False) or mt == "qwen2",
        "o_bias": _flag(cfg, "attention_bias", False),
        "mlp_bias": _flag(cfg, "mlp_bias", False),
        "sandwich": mt in ("gemma2", "gemma3_text"),
        "qk_norm": mt in ("qwen3", "gemma3_text"),
        "embed_scale": d**0.5 if gemma else 1.0,
    }
    return ArchConfig(
        family=family,
        model_type=mt,
        n_layers=_count(cfg, "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, kv, _optional_count(cfg, "head_dim")),
        d_ff=_count(cfg, "intermediate_size"),
        vocab_size=_count(cfg, "vocab_size"),
        norm="rms",
        norm_eps=_real(cfg, "rms_norm_eps", 1e-6),
        norm_offset=1.0 if gemma else 0.0,
        gated=True,
        activation=_text(cfg, "hidden_activation", "hidden_act", default="silu"),
        tied=_flag(cfg, "tie_word_embeddings", gemma),
        positions="rope",
        qkv_layout="concat" if mt == "phi3" else "separate",
        extra=extra,
    )


def _lm_head_rules(name: str = "lm_head.weight") -> tuple[Rule, ...]:
    return (
        Rule(name, ("lm_head",), when=lambda c: not c.tied),
        Rule(name, ("lm_head",), optional=True, when=lambda c: c.tied),
    )


_LLAMA_ATTN = (
    Rule("layers.{L}.self_attn.q_proj.weight", ("attn_q",)),
    Rule("layers.{L}.self_attn.k_proj.weight", ("attn_k",)),
    Rule("layers.{L}.self_attn.v_proj.weight", ("attn_v",)),
    Rule("layers.{L}.self_attn.q_proj.bias", ("attn_q_bias",), "vector", when=_when("qkv_bias")),
    Rule("layers.{L}.self_attn.k_proj.bias", ("attn_k_bias",), "vector", when=_when("qkv_bias")),
    Rule("layers.{L}.self_attn.v_proj.bias", ("attn_v_bias",), "vector", when=_when("qkv_bias")),
)
_LLAMA_COMMON = (
    Rule("embed_tokens.weight", ("embed",)),
    Rule("norm.weight", ("final_norm",), "vector"),
    Rule("layers.{L}.self_attn.o_proj.weight", ("attn_o",)),
    Rule("layers.{L}.self_attn.o_proj.bias", ("attn_o_bias",), "vector", when=_when("o_bias")),
    Rule("layers.{L}.mlp.down_proj.weight", ("mlp_down",)),
    Rule("layers.{L}.mlp.down_proj.bias", ("mlp_down_bias",), "vector", when=_when("mlp_bias")),
    Rule("layers.{L}.input_layernorm.weight", ("attn_norm",), "vector"),
    Rule("layers.{L}.post_attention_layernorm.weight", ("mlp_norm",), "vector", when=_not("sandwich")),
    # Gemma-2: 'post_attention_layernorm' normalises the attention *output*
    Rule("layers.{L}.post_attention_layernorm.weight", ("attn_out_norm",), "vector", when=_when("sandwich")),
    Rule("layers.{L}.pre_feedforward_layernorm.weight", ("mlp_norm",), "vector", when=_when("sandwich")),
    Rule("layers.{L}.post_feedforward_layernorm.weight", ("mlp_out_norm",), "vector", when=_when("sandwich")),
    Rule("layers.{L}.self_attn.q_norm.weight", ("attn_q_norm",), "vector", when=_when("qk_norm")),
    Rule("layers.{L}.self_attn.k_norm.weight", ("attn_k_norm",), "vector", when=_when("qk_norm")),
)
_LLAMA_MLP = (
    Rule("layers.{L}.mlp.gate_proj.weight", ("mlp_gate",)),
    Rule("layers.{L}.mlp.up_proj.weight", ("mlp_up",)),
    Rule("layers.{L}.mlp.gate_proj.bias", ("mlp_gate_bias",), "vector", when=_when("mlp_bias")),
    Rule("layers.{L}.mlp.up_proj.bias", ("mlp_up_bias",), "vector", when=_when("mlp_bias")),
)
_LLAMA_BUFFERS = (r"\.rotary_emb\.inv_freq$",)

ARCHITECTURES.add(
    "llama",
    ArchSpec(
        name="llama",
        # LLaMA, Mistral, Qwen2/Qwen3 and Gemma share the layout; differences are config fields
        model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
        prefixes=("model.", ""),
        rules=_LLAMA_COMMON + _LLAMA_ATTN + _LLAMA_MLP,
        outside_prefix=_lm_head_rules(),
        read_config=lambda c: _read_llama_like(c, "llama"),
        buffers=_LLAMA_BUFFERS,
        notes="Gemma multiplies norm weights as (1 + w) and scales embeddings by sqrt(d).",
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
        read_config=lambda c: _read_llama_like(c, "phi3"),
        buffers=_LLAMA_BUFFERS,
    ),
)


# ---------------------------------------------------------------- GPT-2
def _read_gpt2(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "n_embd", "hidden_size")
    h = _count(cfg, "n_head", "num_attention_heads")
    return ArchConfig(
        family="gpt2",
        model_type="gpt2",
        n_layers=_count(cfg, "n_layer", "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, h),
        d_ff=_count(cfg, "n_inner", default=4 * d),
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=_real(cfg, "layer_norm_epsilon", 1e-5),
        gated=False,
        activation=_text(cfg, "activation_function", default="gelu_new"),
        tied=_flag(cfg, "tie_word_embeddings", True),
        positions="learned",
        qkv_layout="concat",
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
        read_config=_read_gpt2,
        buffers=(r"\.attn\.bias$", r"\.attn\.masked_bias$"),  # causal masks
    ),
)


# ---------------------------------------------------------------- GPT-NeoX
def _read_neox(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "hidden_size")
    h = _count(cfg, "num_attention_heads")
    return ArchConfig(
        family="gpt_neox",
        model_type="gpt_neox",
        n_layers=_count(cfg, "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, h),
        d_ff=_count(cfg, "intermediate_size", default=4 * d),
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=_real(cfg, "layer_norm_eps", 1e-5),
        parallel=_flag(cfg, "use_parallel_residual", True),
        gated=False,
        activation=_text(cfg, "hidden_act", default="gelu"),
        tied=_flag(cfg, "tie_word_embeddings", False),
        qkv_layout="per_head",
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
        read_config=_read_neox,
        buffers=(r"\.attention\.(bias|masked_bias)$", r"\.rotary_emb\.inv_freq$"),
    ),
)


# ---------------------------------------------------------------- OPT
def _read_opt(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "hidden_size")
    h = _count(cfg, "num_attention_heads")
    pre = _flag(cfg, "do_layer_norm_before", True)
    d_embed = _count(cfg, "word_embed_proj_dim", default=d)
    return ArchConfig(
        family="opt",
        model_type="opt",
        n_layers=_count(cfg, "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, h),
        d_ff=_count(cfg, "ffn_dim"),
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=1e-5,
        placement="pre" if pre else "post",
        gated=False,
        activation=_text(cfg, "activation_function", default="relu"),
        tied=_flag(cfg, "tie_word_embeddings", True),
        positions="learned",
        extra={
            "bias": _flag(cfg, "enable_bias", True),
            "proj": d_embed != d,
            "final_norm": pre and not _flag(cfg, "_remove_final_layer_norm", False),
            "d_embed": d_embed,
        },
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
        read_config=_read_opt,
    ),
)


# ---------------------------------------------------------------- BLOOM
def _read_bloom(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "hidden_size", "n_embed")
    h = _count(cfg, "n_head", "num_attention_heads")
    return ArchConfig(
        family="bloom",
        model_type="bloom",
        n_layers=_count(cfg, "n_layer", "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, h),
        d_ff=4 * d,
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=_real(cfg, "layer_norm_epsilon", 1e-5),
        gated=False,
        activation="gelu_new",  # BLOOM uses the tanh approximation of GELU
        tied=_flag(cfg, "tie_word_embeddings", True),
        positions="alibi",
        qkv_layout="per_head",
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
        read_config=_read_bloom,
    ),
)


# ---------------------------------------------------------------- Falcon
def _read_falcon(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "hidden_size")
    h = _count(cfg, "num_attention_heads", "n_head")
    new = _flag(cfg, "new_decoder_architecture", False)
    mq = _flag(cfg, "multi_query", True)
    kv = _count(cfg, "num_kv_heads", default=h) if new else (1 if mq else h)
    n_ln = _count(cfg, "num_ln_in_parallel_attn", default=2) if new else 1
    parallel = _flag(cfg, "parallel_attn", True) or new
    return ArchConfig(
        family="falcon",
        model_type="falcon",
        n_layers=_count(cfg, "num_hidden_layers", "n_layer"),
        d_model=d,
        **_heads(d, h, kv),
        d_ff=_count(cfg, "ffn_hidden_size", default=4 * d),
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=_real(cfg, "layer_norm_epsilon", 1e-5),
        parallel=parallel,
        gated=False,
        activation=_text(cfg, "activation", default="gelu"),
        tied=_flag(cfg, "tie_word_embeddings", True),
        positions="alibi" if _flag(cfg, "alibi", False) else "rope",
        # new architecture and multi-query group q heads with their k, v head; else per head
        qkv_layout="per_kv_group" if (new or mq) else "per_head",
        extra={"bias": _flag(cfg, "bias", False), "two_ln": n_ln == 2, "post_ln": not parallel},
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
        read_config=_read_falcon,
    ),
)


# ---------------------------------------------------------------- Phi (phi-1, phi-1.5, phi-2)
def _read_phi(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "hidden_size")
    h = _count(cfg, "num_attention_heads")
    kv = _count(cfg, "num_key_value_heads", default=h)
    return ArchConfig(
        family="phi",
        model_type="phi",
        n_layers=_count(cfg, "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, kv),
        d_ff=_count(cfg, "intermediate_size"),
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=_real(cfg, "layer_norm_eps", 1e-5),
        parallel=True,  # one input norm feeds attention and MLP
        gated=False,
        activation=_text(cfg, "hidden_act", default="gelu_new"),
        tied=_flag(cfg, "tie_word_embeddings", False),
        extra={"qk_layernorm": _flag(cfg, "qk_layernorm", False)},
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
        read_config=_read_phi,
        buffers=(r"\.rotary_emb\.inv_freq$",),
    ),
)


# ---------------------------------------------------------------- BERT (post-LN encoder)
def _read_bert(cfg: dict[str, Any]) -> ArchConfig:
    d = _count(cfg, "hidden_size")
    h = _count(cfg, "num_attention_heads")
    return ArchConfig(
        family="bert",
        model_type=_text(cfg, "model_type", default="bert"),
        n_layers=_count(cfg, "num_hidden_layers"),
        d_model=d,
        **_heads(d, h, h),
        d_ff=_count(cfg, "intermediate_size"),
        vocab_size=_count(cfg, "vocab_size"),
        norm="layer",
        norm_eps=_real(cfg, "layer_norm_eps", 1e-12),
        placement="post",
        gated=False,
        activation=_text(cfg, "hidden_act", default="gelu"),
        tied=True,
        positions="learned",
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
        read_config=_read_bert,
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
        raise ArchitectureError(f"config.json: 'model_type' must be a string, not {_describe(mt)}")
    for _, spec in ARCHITECTURES.items():
        if mt in spec.model_types:
            return spec
    known = sorted(t for _, s in ARCHITECTURES.items() for t in s.model_types)
    raise ArchitectureError(f"unknown architecture '{shown(mt)}' (known: {', '.join(known)})")
