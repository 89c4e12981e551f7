"""Writers for the non-Hugging-Face formats huref reads, used by the format and bad-input tests.

GGUF files are written the way llama.cpp's converter writes them: llama.cpp tensor names,
``{arch}.*`` metadata, and for the LLaMA architecture the query/key rows permuted from Hugging
Face's half-split rotary layout to llama.cpp's interleaved one (Qwen2 is written unpermuted).
llama2.c exports follow ``export.py``'s legacy layout: a 7-int32 header, then float32 arrays.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import transformers as T
from archkit import randomise_

from huref.checkpoint.llama2c import half_split_to_interleaved

# Hugging Face name -> llama.cpp name (LLaMA-like families)
_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_PER_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def tiny_llama(tie: bool = False, d_ff: int = 64, seed: int = 0) -> tuple[Any, dict[str, torch.Tensor]]:
    """A 2-layer LLaMA (d 32, 4 heads, 2 KV heads, vocab 96); every matrix width divides by 32,
    the block size of GGUF's legacy quantizations."""
    cfg = T.LlamaConfig(
        hidden_size=32,
        intermediate_size=d_ff,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        tie_word_embeddings=tie,
    )
    torch.manual_seed(seed)
    model = T.LlamaForCausalLM(cfg).eval()
    randomise_(model, seed)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if tie:
        sd.pop("lm_head.weight", None)
    return model, sd


def tiny_qwen2(seed: int = 0) -> tuple[Any, dict[str, torch.Tensor]]:
    cfg = T.Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=96,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = T.Qwen2ForCausalLM(cfg).eval()
    randomise_(model, seed)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def gguf_name(hf: str) -> str:
    if hf in _GLOBAL:
        return _GLOBAL[hf]
    layer, rest = hf.removeprefix("model.layers.").split(".", 1)
    return f"blk.{layer}.{_PER_LAYER[rest]}"


def write_gguf(
    path: Path,
    sd: dict[str, torch.Tensor],
    config: Any,
    arch: str = "llama",
    qtype: str = "F32",
    tokens: list[str] | None = None,
) -> Path:
    """Write ``sd`` as llama.cpp's converter would; matrices in ``qtype``, vectors in F32."""
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(config.num_hidden_layers)
    w.add_embedding_length(config.hidden_size)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_context_length(config.max_position_embeddings)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(float(getattr(config, "rope_theta", None) or 10000.0))
    if tokens is not None:
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_types(
            [
                3
                if t.startswith("<") and t.endswith(">") and not t.startswith("<0x")
                else 6
                if t.startswith("<0x")
                else 1
                for t in tokens
            ]
        )
    for name, t in sd.items():
        t = t.float()
        if arch == "llama" and name.endswith("q_proj.weight"):
            t = half_split_to_interleaved(t, n_heads)  # llama.cpp's converter permutes LLaMA q/k rows
        elif arch == "llama" and name.endswith("k_proj.weight"):
            t = half_split_to_interleaved(t, n_kv)
        a = t.numpy()
        q = gguf.GGMLQuantizationType[qtype] if a.ndim == 2 else gguf.GGMLQuantizationType.F32
        if q == gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(name), a)
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(a, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_llama2c(path: Path, sd: dict[str, torch.Tensor], config: Any) -> Path:
    """llama2.c's legacy export: header, then stacked float32 arrays (q/k rows interleaved)."""
    L, d = config.num_hidden_layers, config.hidden_size
    H, K = config.num_attention_heads, config.num_key_value_heads
    hd = d // H
    seq = config.max_position_embeddings
    shared = "lm_head.weight" not in sd
    vocab = config.vocab_size if shared else -config.vocab_size

    def stack(suffix: str, heads: int | None = None) -> torch.Tensor:
        ts = [sd[f"model.layers.{i}.{suffix}"].float() for i in range(L)]
        if heads is not None:
            ts = [half_split_to_interleaved(t, heads) for t in ts]
        return torch.stack(ts)

    freqs = torch.arange(seq, dtype=torch.float32)[:, None] * torch.ones(hd // 2)  # [seq, hd/2], unused
    arrays = [
        sd["model.embed_tokens.weight"],
        stack("input_layernorm.weight"),
        stack("self_attn.q_proj.weight", H),
        stack("self_attn.k_proj.weight", K),
        stack("self_attn.v_proj.weight"),
        stack("self_attn.o_proj.weight"),
        stack("post_attention_layernorm.weight"),
        stack("mlp.gate_proj.weight"),
        stack("mlp.down_proj.weight"),
        stack("mlp.up_proj.weight"),
        sd["model.norm.weight"],
        torch.cos(freqs),
        torch.sin(freqs),
    ]
    if not shared:
        arrays.append(sd["lm_head.weight"])
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", d, config.intermediate_size, L, H, K, vocab, seq))
        for a in arrays:
            f.write(np.ascontiguousarray(a.float().numpy(), dtype="<f4").tobytes())
    return path
