"""Tiny random models of every supported family, built with transformers, for the tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as T


@dataclass(frozen=True)
class Family:
    name: str
    make: Callable[[bool], tuple[Any, type]]  # tie -> (config, model class)
    ties: tuple[bool, ...]
    # how the test sees q/k/v: "interface" records them through a registered attention function
    # (transformers' public AttentionInterface); "alibi" recomputes the attention context from
    # huref's q/k/v and compares it with what the output projection reads (BLOOM computes its
    # ALiBi attention inline, with no interface to register)
    capture: str = "interface"


def _llama(tie: bool) -> tuple[Any, type]:
    return T.LlamaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.LlamaForCausalLM


def _mistral(tie: bool) -> tuple[Any, type]:
    return T.MistralConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.MistralForCausalLM


def _qwen2(tie: bool) -> tuple[Any, type]:
    return T.Qwen2Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.Qwen2ForCausalLM


def _gemma(tie: bool) -> tuple[Any, type]:
    return T.GemmaConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.GemmaForCausalLM


def _gemma2(tie: bool) -> tuple[Any, type]:
    return T.Gemma2Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.Gemma2ForCausalLM


def _gpt2(tie: bool) -> tuple[Any, type]:
    return T.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=96, n_positions=64, tie_word_embeddings=tie
    ), T.GPT2LMHeadModel


def _neox(tie: bool) -> tuple[Any, type]:
    return T.GPTNeoXConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.GPTNeoXForCausalLM


def _opt(tie: bool, proj: int = 32, pre_ln: bool = True) -> tuple[Any, type]:
    return T.OPTConfig(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=96,
        word_embed_proj_dim=proj,
        do_layer_norm_before=pre_ln,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    ), T.OPTForCausalLM


def _opt_proj(tie: bool) -> tuple[Any, type]:
    """OPT-350m's layout: token embeddings narrower than the residual stream (project_in/out),
    post-LN; position embeddings are as wide as the residual stream."""
    return _opt(tie, proj=16, pre_ln=False)


def _bloom(tie: bool) -> tuple[Any, type]:
    return T.BloomConfig(
        hidden_size=32, n_layer=2, n_head=4, vocab_size=96, tie_word_embeddings=tie
    ), T.BloomForCausalLM


def _falcon_new(tie: bool) -> tuple[Any, type]:
    return T.FalconConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_kv_heads=2,
        new_decoder_architecture=True,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.FalconForCausalLM


def _falcon_mq(tie: bool) -> tuple[Any, type]:
    return T.FalconConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        multi_query=True,
        parallel_attn=True,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.FalconForCausalLM


def _phi(tie: bool) -> tuple[Any, type]:
    return T.PhiConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=96,
        tie_word_embeddings=tie,
    ), T.PhiForCausalLM


def _phi3(tie: bool) -> tuple[Any, type]:
    return T.Phi3Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        pad_token_id=0,
        tie_word_embeddings=tie,
    ), T.Phi3ForCausalLM


def _bert(tie: bool) -> tuple[Any, type]:
    return T.BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=96,
        max_position_embeddings=64,
    ), T.BertForMaskedLM


FAMILIES = [
    Family("llama", _llama, (False, True)),
    Family("mistral", _mistral, (False,)),
    Family("qwen2", _qwen2, (False, True)),
    Family("gemma", _gemma, (True,)),
    Family("gemma2", _gemma2, (True,)),
    Family("gpt2", _gpt2, (True, False)),
    Family("gpt_neox", _neox, (False, True)),
    Family("opt", _opt, (True,)),
    Family("opt-proj", _opt_proj, (True,)),
    Family("bloom", _bloom, (True,), capture="alibi"),
    Family("falcon-new", _falcon_new, (True,)),
    Family("falcon-mq", _falcon_mq, (True,)),
    Family("phi", _phi, (False,)),
    Family("phi3", _phi3, (False,)),
    Family("bert", _bert, (True,)),
]


def randomise_(model: torch.nn.Module, seed: int = 0) -> None:
    """Give norms and biases non-trivial values so every path of a layout shows up in a test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# ---------------------------------------------------------------- sparse Mixture-of-Experts models
# Members of the llama family (huref.arch.families), kept out of FAMILIES: their sparse layers
# hold a router and experts instead of mlp_gate/up/down, which tests/test_arch_moe.py checks.
def _moe_sizes(act: str) -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        hidden_act=act,
        tie_word_embeddings=False,
    )


def _mixtral(act: str) -> Any:
    return T.AutoConfig.for_model("mixtral", **_moe_sizes(act), num_hidden_layers=2, num_local_experts=4)


def _qwen2_moe(act: str) -> Any:
    """Layers 1 and 3 are sparse by decoder_sparse_step 2; layer 3 is made dense by mlp_only_layers."""
    return T.AutoConfig.for_model(
        "qwen2_moe",
        **_moe_sizes(act),
        num_hidden_layers=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        decoder_sparse_step=2,
        mlp_only_layers=[3],
    )


def _qwen3_moe(act: str) -> Any:
    """Layer 0 dense by mlp_only_layers; top-k weights renormalised; head_dim wider than d / H."""
    return T.AutoConfig.for_model(
        "qwen3_moe",
        **_moe_sizes(act),
        num_hidden_layers=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=24,
        head_dim=16,
        mlp_only_layers=[0],
        norm_topk_prob=True,
    )


def _olmoe(act: str) -> Any:
    return T.AutoConfig.for_model(
        "olmoe", **_moe_sizes(act), num_hidden_layers=2, num_experts=4, num_experts_per_tok=2
    )


# model_type -> (activation name -> config); built with AutoModelForCausalLM.from_config
MOE_FAMILIES: dict[str, Callable[[str], Any]] = {
    "mixtral": _mixtral,
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": _olmoe,
}


# ---------------------------------------------------------------- DeepSeek-V2/V3 (MLA + routed MoE)
# Members of the llama family too; tests/test_arch_mla.py checks their latent attention and their
# group-limited routing. Eight experts in four groups, two groups kept: the group limit matters.
def _deepseek_sizes(act: str) -> dict[str, Any]:
    return dict(
        hidden_size=32,
        intermediate_size=48,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        kv_lora_rank=10,
        qk_nope_head_dim=6,
        qk_rope_head_dim=4,
        v_head_dim=5,
        n_routed_experts=8,
        num_experts_per_tok=3,
        n_shared_experts=2,
        vocab_size=96,
        hidden_act=act,
        tie_word_embeddings=False,
    )


def _deepseek_v3(act: str) -> Any:
    """Low-rank query, sigmoid scores, bias-corrected group-limited selection, renormalised."""
    return T.AutoConfig.for_model(
        "deepseek_v3", **_deepseek_sizes(act), q_lora_rank=12, n_group=4, topk_group=2, norm_topk_prob=True
    )


def _deepseek_v3_bias(act: str) -> Any:
    """attention_bias (q_a, kv_a and o biases), weights not renormalised, one group."""
    return T.AutoConfig.for_model(
        "deepseek_v3",
        **_deepseek_sizes(act),
        q_lora_rank=12,
        n_group=1,
        topk_group=1,
        norm_topk_prob=False,
        attention_bias=True,
    )


def _deepseek_v2(act: str) -> Any:
    """Full-rank query (q_lora_rank null), softmax scores, group-limited greedy, scaled weights."""
    return T.AutoConfig.for_model(
        "deepseek_v2",
        **_deepseek_sizes(act),
        q_lora_rank=None,
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.5,
    )


def _deepseek_v2_greedy(act: str) -> Any:
    """Low-rank query, plain greedy top-k."""
    return T.AutoConfig.for_model("deepseek_v2", **_deepseek_sizes(act), q_lora_rank=12, topk_method="greedy")


# case name -> (activation name -> config); built with AutoModelForCausalLM.from_config
MLA_FAMILIES: dict[str, Callable[[str], Any]] = {
    "deepseek_v3": _deepseek_v3,
    "deepseek_v3-bias": _deepseek_v3_bias,
    "deepseek_v2": _deepseek_v2,
    "deepseek_v2-greedy": _deepseek_v2_greedy,
}


# ---------------------------------------------------------------- GPT-OSS (biased router and experts)
# A member of the llama family too; tests/test_gpt_oss.py checks its in-features-first,
# gate/up-interleaved expert stacks, its router's Linear bias and its attention sinks.
def gpt_oss_config(**change: Any) -> Any:
    """Four experts, two per token, every layer sparse; one sliding and one full attention layer."""
    sizes: dict[str, Any] = dict(
        hidden_size=32,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=1024,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.0,
    )
    return T.AutoConfig.for_model("gpt_oss", **{**sizes, **change})
