"""GGUF files (llama.cpp), read through the ``gguf`` package.

A GGUF file is presented as the Hugging Face checkpoint it was converted from: llama.cpp's
tensor names are mapped back to Hugging Face names, a ``config.json`` is synthesised from the
GGUF metadata, quantized blocks are dequantized to float32, and for the LLaMA architecture the
query/key rows are put back from llama.cpp's interleaved rotary layout to Hugging Face's
half-split one (llama.cpp's converter reorders them for LLaMA-arch models only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from huref.checkpoint.llama2c import interleaved_to_half_split
from huref.checkpoint.source import BufferPool, TensorInfo
from huref.errors import CheckpointError

# Tensor types whose dequantization is supported and tested; anything else is refused by name.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")

# llama.cpp name -> Hugging Face name, per architecture that huref reads from GGUF.
_LLAMA_LIKE = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{L}.attn_norm.weight": "model.layers.{L}.input_layernorm.weight",
    "blk.{L}.attn_q.weight": "model.layers.{L}.self_attn.q_proj.weight",
    "blk.{L}.attn_k.weight": "model.layers.{L}.self_attn.k_proj.weight",
    "blk.{L}.attn_v.weight": "model.layers.{L}.self_attn.v_proj.weight",
    "blk.{L}.attn_q.bias": "model.layers.{L}.self_attn.q_proj.bias",  # Qwen2
    "blk.{L}.attn_k.bias": "model.layers.{L}.self_attn.k_proj.bias",  # Qwen2
    "blk.{L}.attn_v.bias": "model.layers.{L}.self_attn.v_proj.bias",  # Qwen2
    "blk.{L}.attn_output.weight": "model.layers.{L}.self_attn.o_proj.weight",
    "blk.{L}.ffn_norm.weight": "model.layers.{L}.post_attention_layernorm.weight",
    "blk.{L}.ffn_gate.weight": "model.layers.{L}.mlp.gate_proj.weight",
    "blk.{L}.ffn_up.weight": "model.layers.{L}.mlp.up_proj.weight",
    "blk.{L}.ffn_down.weight": "model.layers.{L}.mlp.down_proj.weight",
}
_ARCHS: dict[str, tuple[str, str, bool]] = {
    # gguf arch -> (HF model_type, HF architecture class, q/k rows interleaved by llama.cpp)
    "llama": ("llama", "LlamaForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
}
_IGNORED = ("rope_freqs.weight",)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


class GGUFSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            import gguf
        except ImportError:  # pragma: no cover - gguf is a declared extra
            raise CheckpointError("reading GGUF needs the 'gguf' package (pip install huref[gguf])") from None
        self._gguf = gguf
        try:
            reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError, KeyError, IndexError, TypeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(f"{self.path}: corrupt GGUF file ({msg})") from None
        arch = _field(reader, "general.architecture")
        if arch not in _ARCHS:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {arch!r} is not supported (supported: {', '.join(_ARCHS)})"
            )
        model_type, cls, interleaved = _ARCHS[arch]
        self._interleaved = interleaved

        def req(key: str) -> Any:
            v = _field(reader, f"{arch}.{key}")
            if v is None:
                raise CheckpointError(f"{self.path}: GGUF metadata lacks {arch}.{key}")
            return v

        n_layers = int(req("block_count"))
        dim = int(req("embedding_length"))
        n_heads = int(req("attention.head_count"))
        n_kv = int(_field(reader, f"{arch}.attention.head_count_kv", n_heads))
        self._n_heads, self._n_kv = n_heads, n_kv
        self.tokens: list[str] | None = _field(reader, "tokenizer.ggml.tokens")
        self.token_types: list[int] | None = _field(reader, "tokenizer.ggml.token_type")
        self._tensors: dict[str, Any] = {}
        templates = [(g, h) for g, h in _LLAMA_LIKE.items()]
        unknown = []
        for t in reader.tensors:
            name = t.name
            if name in _IGNORED:
                continue
            hf = None
            for g, h in templates:
                if "{L}" in g:
                    pre, post = g.split("{L}")
                    if name.startswith(pre) and name.endswith(post):
                        mid = name[len(pre) : len(name) - len(post)]
                        if mid.isdigit():
                            hf = h.replace("{L}", mid)
                            break
                elif name == g:
                    hf = h
                    break
            if hf is None:
                unknown.append(name)
                continue
            qtype = t.tensor_type.name
            if qtype not in SUPPORTED_TYPES:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has unsupported GGUF type {qtype} "
                    f"(supported: {', '.join(SUPPORTED_TYPES)})"
                )
            self._tensors[hf] = t
        if unknown:
            raise CheckpointError(f"{self.path}: GGUF tensors not understood: {', '.join(unknown[:5])}")
        vocab = (
            self._shape("model.embed_tokens.weight")[0] if "model.embed_tokens.weight" in self._tensors else 0
        )
        gate = "model.layers.0.mlp.gate_proj.weight"
        ffn = (
            self._shape(gate)[0] if n_layers and gate in self._tensors else 0
        )  # missing: named by the arch check
        self.config: dict[str, Any] = {
            "architectures": [cls],
            "model_type": model_type,
            "hidden_size": dim,
            "intermediate_size": int(_field(reader, f"{arch}.feed_forward_length", ffn)),
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv,
            "vocab_size": vocab,
            "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 2048)),
            "rms_norm_eps": float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
            "rope_theta": float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            "hidden_act": "silu",
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
        }
        self._reader = reader

    def _shape(self, name: str) -> tuple[int, ...]:
        t = self._tensors[name]
        return tuple(int(x) for x in reversed(list(t.shape)))  # GGUF lists dims fastest-first

    def names(self) -> list[str]:
        return list(self._tensors)

    def info(self, name: str) -> TensorInfo:
        if name not in self._tensors:
            raise CheckpointError(f"no tensor named {name!r} in this checkpoint")
        return TensorInfo(name, self._shape(name), self._tensors[name].tensor_type.name, self.path)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:  # dequantizes: no pool
        if name not in self._tensors:
            raise CheckpointError(f"no tensor named {name!r} in this checkpoint")
        t = self._tensors[name]
        try:
            arr = self._gguf.quants.dequantize(t.data, t.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{self.path}: cannot dequantize {t.name!r} ({e})") from None
        # F32 "dequantization" returns a view of the read-only file mapping: writing to a tensor
        # sharing it would crash the process, so such views are copied (fresh arrays are not).
        if arr.dtype != np.float32 or not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=np.float32, order="C")
        out = torch.from_numpy(arr).reshape(self._shape(name))
        if self._interleaved and name.endswith("q_proj.weight"):
            out = interleaved_to_half_split(out, self._n_heads)
        elif self._interleaved and name.endswith("k_proj.weight"):
            out = interleaved_to_half_split(out, self._n_kv)
        return out

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        return self.read(name)[torch.as_tensor(list(rows), dtype=torch.long)]

    def weight_files(self) -> list[Path]:
        return [self.path]

    def metadata(self) -> dict[str, str]:
        return {}
