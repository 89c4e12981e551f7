"""A synthetic checkpoint with the exact tensor shapes of LLaMA-2-7B, for benchmarks.

32 layers, d_model 4096, 32 heads (no GQA), d_ff 11008, vocab 32000, untied lm_head, bfloat16:
6.74e9 parameters, 13.5 GB, written as three ~5 GB safetensors shards with an index and a
config.json through huref's own writer. Values are Gaussian (std 0.02 for matrices, 1 +/- 0.02
for norm gains) from a generator seeded per tensor name, so every build is bit-identical, and are
generated in float32 chunks so that building needs about one tensor of memory.

``build_synthetic_7b(dest)`` writes once and reuses what is there on later calls.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.writer import TensorPlan, write_checkpoint
from huref.errors import UsageError

log = logging.getLogger(__name__)

LLAMA2_7B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
# Mixtral-8x7B's shapes (GQA with 8 KV heads, 8 experts of width 14336, top-2), of which only the
# first MIXTRAL_LAYERS of its 32 layers are written: the whole model is 93 GB, and peak memory is
# a per-layer matter (layers stream one at a time), so a few layers measure it.
MIXTRAL_LAYERS = 4
MIXTRAL_8X7B_CONFIG: dict[str, Any] = {
    "architectures": ["MixtralForCausalLM"],
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": MIXTRAL_LAYERS,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1e6,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
SHARD_BYTES = 5 * 10**9
CHUNK = 1 << 24  # values generated per float32 chunk (64 MB)
MARKER = "huref.synthetic"  # safetensors metadata key naming what built the file


def _attention(p: str, d: int, kv: int, dtype: torch.dtype) -> list[TensorPlan]:
    """One layer's q, k, v, o projections (kv: the key/value width, GQA-aware)."""
    return [
        TensorPlan(p + "self_attn.q_proj.weight", (d, d), dtype),
        TensorPlan(p + "self_attn.k_proj.weight", (kv, d), dtype),
        TensorPlan(p + "self_attn.v_proj.weight", (kv, d), dtype),
        TensorPlan(p + "self_attn.o_proj.weight", (d, d), dtype),
    ]


def plan_7b(cfg: dict[str, Any] = LLAMA2_7B_CONFIG, dtype: torch.dtype = torch.bfloat16) -> list[TensorPlan]:
    """Every tensor of the model in the order Hugging Face's LLaMA lists them (embed, layers, norm, head)."""
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    plan = [TensorPlan("model.embed_tokens.weight", (v, d), dtype)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        plan += [
            *_attention(p, d, kv, dtype),
            TensorPlan(p + "mlp.gate_proj.weight", (f, d), dtype),
            TensorPlan(p + "mlp.up_proj.weight", (f, d), dtype),
            TensorPlan(p + "mlp.down_proj.weight", (d, f), dtype),
            TensorPlan(p + "input_layernorm.weight", (d,), dtype),
            TensorPlan(p + "post_attention_layernorm.weight", (d,), dtype),
        ]
    plan += [TensorPlan("model.norm.weight", (d,), dtype), TensorPlan("lm_head.weight", (v, d), dtype)]
    return plan


def plan_mixtral(
    cfg: dict[str, Any] = MIXTRAL_8X7B_CONFIG, dtype: torch.dtype = torch.bfloat16
) -> list[TensorPlan]:
    """Every tensor of a Mixtral checkpoint as transformers saves it (experts one by one)."""
    d, f, v, e = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_local_experts"]
    kv = cfg["head_dim"] * cfg["num_key_value_heads"]
    plan = [TensorPlan("model.embed_tokens.weight", (v, d), dtype)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        plan += [*_attention(p, d, kv, dtype), TensorPlan(p + "block_sparse_moe.gate.weight", (e, d), dtype)]
        for x in range(e):
            q = f"{p}block_sparse_moe.experts.{x}."
            plan += [
                TensorPlan(q + "w1.weight", (f, d), dtype),
                TensorPlan(q + "w2.weight", (d, f), dtype),
                TensorPlan(q + "w3.weight", (f, d), dtype),
            ]
        plan += [
            TensorPlan(p + "input_layernorm.weight", (d,), dtype),
            TensorPlan(p + "post_attention_layernorm.weight", (d,), dtype),
        ]
    plan += [TensorPlan("model.norm.weight", (d,), dtype), TensorPlan("lm_head.weight", (v, d), dtype)]
    return plan


def random_tensor(p: TensorPlan, seed: int = 0) -> torch.Tensor:
    """Deterministic Gaussian values for one planned tensor, generated a chunk at a time."""
    g = torch.Generator().manual_seed(seed * 2**32 + zlib.crc32(p.name.encode()))
    out = torch.empty(p.shape, dtype=p.dtype)
    flat = out.view(-1)
    n = flat.numel()
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        chunk = torch.randn(hi - lo, generator=g).mul_(0.02)  # [hi - lo] float32
        if len(p.shape) == 1:
            chunk.add_(1.0)  # norm gains sit around 1
        flat[lo:hi] = chunk  # cast to the stored dtype
    return out


def _matches(dest: Path, plan: list[TensorPlan]) -> bool:
    """Headers only: the folder holds exactly the planned tensors, shapes and dtypes."""
    index = dest / "model.safetensors.index.json"
    if not index.is_file() or not (dest / "config.json").is_file():
        return False
    src = SafetensorsSource.from_index(index)
    want = {p.name: (p.shape, p.dtype) for p in plan}
    got = {n: (src.info(n).shape, src.info(n).dtype) for n in src.names()}
    return set(got) == set(want) and all(got[n][0] == want[n][0] for n in want)


def build_synthetic_7b(dest: Path, seed: int = 0, max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the synthetic LLaMA-2-7B checkpoint to ``dest`` unless it is already there."""
    return _build(dest, plan_7b(), LLAMA2_7B_CONFIG, "llama-2-7b", seed, max_shard_bytes)


def build_synthetic_mixtral(dest: Path, seed: int = 0, max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Write the synthetic Mixtral-8x7B-shaped checkpoint (MIXTRAL_LAYERS layers) unless it is there."""
    return _build(dest, plan_mixtral(), MIXTRAL_8X7B_CONFIG, "mixtral-8x7b", seed, max_shard_bytes)


def _build(
    dest: Path, plan: list[TensorPlan], config: dict[str, Any], shapes: str, seed: int, max_shard_bytes: int
) -> Path:
    dest = Path(dest)
    if dest.exists():
        if _matches(dest, plan):
            return dest
        raise UsageError(f"{dest} exists but is not the synthetic {shapes} checkpoint; remove it first")
    total = sum(p.nbytes for p in plan)
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if free < total + 2 * 10**9:
        raise UsageError(f"building {dest} needs {total / 1e9:.1f} GB, only {free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    done = [0]

    def produce(p: TensorPlan) -> torch.Tensor:
        done[0] += p.nbytes
        if p.name.endswith("post_attention_layernorm.weight"):  # once per layer
            log.info("synthetic %s: %.1f / %.1f GB", shapes, done[0] / 1e9, total / 1e9)
        return random_tensor(p, seed)

    write_checkpoint(
        dest,
        plan,
        produce,
        config=config,
        metadata={MARKER: json.dumps({"shapes": shapes, "seed": seed})},
        max_shard_bytes=max_shard_bytes,
    )
    log.info("synthetic %s written to %s in %.0f s", shapes, dest, time.perf_counter() - t0)
    return dest


if __name__ == "__main__":  # python bench/synthetic.py [DEST]
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repo = Path(__file__).resolve().parents[1]
    print(
        build_synthetic_7b(
            Path(sys.argv[1]) if len(sys.argv) > 1 else repo / ".bench" / "llama2-7b-synthetic"
        )
    )
