"""GGUF files (llama.cpp), read through the ``gguf`` package.

A GGUF file is presented as the Hugging Face checkpoint it was converted from: llama.cpp's
tensor names are mapped back to Hugging Face names (the names are declared beside each family's
definition, huref.arch.families), a ``config.json`` is synthesised from the
GGUF metadata, quantized blocks are dequantized to float32, and for the LLaMA architecture the
query/key rows are put back from llama.cpp's interleaved rotary layout to Hugging Face's
half-split one (llama.cpp's converter reorders them for LLaMA-arch models only).

The header is checked for bounds first (huref.checkpoint.gguf_layout); the typed metadata reads
and the config keys worked out from them are in huref.checkpoint.gguf_config.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from huref.arch.families import gguf_archs
from huref.checkpoint.gguf_config import Meta, gguf_shapes, moe_config, numpy_shape
from huref.checkpoint.gguf_layout import check_layout
from huref.checkpoint.llama2c import interleaved_to_half_split
from huref.checkpoint.source import BufferPool, TensorInfo, check_rows, open_regular
from huref.errors import ArchitectureError, CheckpointError
from huref.paths import shown

# Tensor types whose dequantization is supported and tested; anything else is refused by name.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


def _hf_name(name: str, table: dict[str, tuple[str, str]]) -> tuple[str, str] | None:
    """(Hugging Face name, role) of a llama.cpp tensor name, or None when it names no known tensor.

    ``table`` is the family's GGUF names (``ArchSpec.gguf_names``), both sides with ``{L}``."""
    for g, (h, role) in table.items():
        if "{L}" in g:
            pre, post = g.split("{L}")
            if name.startswith(pre) and name.endswith(post) and len(name) > len(pre) + len(post):
                mid = name[len(pre) : len(name) - len(post)]
                if mid.isascii() and mid.isdigit():
                    return h.replace("{L}", mid), role
        elif name == g:
            return h, role
    return None


class GGUFSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            import gguf
        except ImportError:  # pragma: no cover - gguf is a declared extra
            raise CheckpointError("reading GGUF needs the 'gguf' package (pip install huref[gguf])") from None
        self._gguf = gguf
        reader = self._open()
        meta = Meta(self.path, reader)
        arch = meta.text("general.architecture")
        archs = gguf_archs()  # declared beside each family's definition (huref.arch.families)
        if arch not in archs:
            raise CheckpointError(
                f"{shown(self.path)}: GGUF architecture '{shown(arch)}' is not supported "
                f"(supported: {', '.join(archs)})"
            )
        spec, declared = archs[arch]
        self._interleaved = interleaved = declared.rotary_interleaved
        self._ignored = spec.gguf.ignored if spec.gguf else ()
        n_layers = meta.count(f"{arch}.block_count")
        dim = meta.count(f"{arch}.embedding_length")
        n_heads = meta.count(f"{arch}.attention.head_count")
        n_kv = meta.count(f"{arch}.attention.head_count_kv", n_heads)
        self._n_heads, self._n_kv = n_heads, n_kv
        self.tokens: list[str] | None = meta.strings("tokenizer.ggml.tokens")
        self.token_types: list[int] | None = meta.integers("tokenizer.ggml.token_type")
        shapes, sparse = gguf_shapes(reader, spec.gguf.tensors if spec.gguf else {}, n_layers)
        vocab = shapes["embed"][0] if "embed" in shapes else 0
        ffn = shapes["mlp_gate"][0] if "mlp_gate" in shapes else 0  # missing: named by the arch check
        experts = meta.count(f"{arch}.expert_count", 0, low=0)
        moe = experts > 0 and (declared.moe_model_type is not None or declared.model_type.endswith("_moe"))
        model_type = (declared.moe_model_type or declared.model_type) if moe else declared.model_type
        hf_class = (declared.moe_hf_class or declared.hf_class) if moe else declared.hf_class
        if moe and not ffn and "expert_gate" in shapes:
            ffn = shapes["expert_gate"][1]  # Mixtral: no dense layer, experts as wide as d_ff
        # the config in LLaMA-family keys: every GGUF architecture declared so far is of that family
        self.config: dict[str, Any] = {
            "architectures": [hf_class],
            "model_type": model_type,
            "hidden_size": dim,
            "intermediate_size": meta.count(f"{arch}.feed_forward_length", ffn, low=0),
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv,
            "vocab_size": vocab,
            "max_position_embeddings": meta.count(f"{arch}.context_length", 2048),
            "rms_norm_eps": meta.real(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5, 0.0, math.inf),
            "rope_theta": meta.real(f"{arch}.rope.freq_base", 10000.0, 1e-30, math.inf),
            "hidden_act": "silu",
            "tie_word_embeddings": "lm_head" not in shapes,
        }
        if key_length := meta.count(f"{arch}.attention.key_length", 0, low=0):
            self.config["head_dim"] = key_length  # Qwen3-MoE's heads are wider than d / heads
        if moe:
            self.config.update(moe_config(meta, arch, declared, experts, shapes, sparse))
        try:  # the names of this model_type's layout (Mixtral's router is named apart from Qwen's)
            cfg = spec.read_config(self.config)
        except ArchitectureError:
            cfg = None  # every name the family knows; the config is refused when the model binds
        names = spec.gguf_names(cfg)
        self._names = names  # GGUF name -> (Hugging Face name, role)
        self._expert: dict[str, int] = {}  # Hugging Face name of one expert -> its index in the stack
        self._n_experts = experts if moe else 0
        self._tensors: dict[str, Any] = self._map_names(reader)
        if interleaved:
            self._check_rotary_rows()
        self._reader = reader

    def _open(self) -> Any:
        """gguf's reader over a file whose layout was checked first, through one descriptor."""
        fd, size = open_regular(self.path, "GGUF file")
        with os.fdopen(fd, "rb") as f:
            if size < 24:
                raise CheckpointError(f"{shown(self.path)}: corrupt GGUF file (shorter than its header)")
            try:
                mapped = np.memmap(f, dtype=np.uint8, mode="r", shape=(size,))
            except (ValueError, OSError) as e:  # e.g. the file shrank since it was opened
                raise CheckpointError(f"{shown(self.path)}: cannot map the file ({shown(e)})") from None
            sizes = {int(t): v for t, v in self._gguf.GGML_QUANT_SIZES.items()}
            check_layout(self.path, memoryview(cast(Any, mapped)), sizes)
            try:
                return self._gguf.GGUFReader(cast(Any, f))  # np.memmap takes the open file
            except (ValueError, OSError, KeyError, IndexError, TypeError, OverflowError, RecursionError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise CheckpointError(f"{shown(self.path)}: corrupt GGUF file ({shown(msg)})") from None

    def _map_names(self, reader: Any) -> dict[str, Any]:
        """Hugging Face name -> GGUF tensor, for every tensor of the file (unknown ones refused)."""
        tensors: dict[str, Any] = {}
        self._roles: dict[str, str] = {}  # Hugging Face name -> role
        unknown = []
        for t in reader.tensors:
            if t.name in self._ignored:
                continue
            found = _hf_name(t.name, self._names)
            if found is None:
                unknown.append(shown(t.name))
                continue
            hf, role = found
            qtype = t.tensor_type.name
            if qtype not in SUPPORTED_TYPES:
                raise CheckpointError(
                    f"{shown(self.path)}: tensor '{shown(t.name)}' has unsupported GGUF type {qtype} "
                    f"(supported: {', '.join(SUPPORTED_TYPES)})"
                )
            if "{E}" not in hf:
                tensors[hf], self._roles[hf] = t, role
                continue
            stacked = int(t.shape[-1]) if len(t.shape) == 3 else None  # GGUF lists E last
            if stacked != self._n_experts:
                raise CheckpointError(
                    f"{shown(self.path)}: GGUF tensor '{shown(t.name)}' of shape {list(numpy_shape(t))} is "
                    f"not a stack of the {self._n_experts} experts its metadata declares"
                )
            for e in range(stacked):
                name = hf.replace("{E}", str(e))
                tensors[name], self._roles[name], self._expert[name] = t, role, e
        if unknown:
            raise CheckpointError(
                f"{shown(self.path)}: GGUF tensors not understood: {', '.join(unknown[:5])}"
            )
        return tensors

    def _check_rotary_rows(self) -> None:
        """q/k rows that llama.cpp interleaved must split into whole heads of rotary pairs."""
        for name in self._tensors:
            heads = self._n_heads if self._roles[name] == "attn_q" else self._n_kv
            if self._roles[name] in ("attn_q", "attn_k"):
                shape = self._shape(name)
                if len(shape) != 2 or shape[0] % heads or (shape[0] // heads) % 2:
                    raise CheckpointError(
                        f"{shown(self.path)}: tensor {shown(name)} of shape {list(shape)} does not split "
                        f"into {heads} heads of rotary pairs"
                    )

    def _shape(self, name: str) -> tuple[int, ...]:
        shape = numpy_shape(self._tensor(name))
        if name in self._expert:
            return shape[1:]  # one expert of an [E, out, in] stack
        if self._roles[name] == "shared_expert_gate" and len(shape) == 1:
            return (1, *shape)  # llama.cpp may store Qwen2-MoE's [1, d] gate as [d]
        return shape

    def names(self) -> list[str]:
        return list(self._tensors)

    def _tensor(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            raise CheckpointError(f"no tensor named '{shown(name)}' in this checkpoint") from None

    def info(self, name: str) -> TensorInfo:
        return TensorInfo(name, self._shape(name), self._tensor(name).tensor_type.name, self.path)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:  # dequantizes: no pool
        t = self._tensor(name)
        if name in self._expert:  # one expert's rows of the [E, out, in] stack, dequantized alone
            return self._dequantize(t, t.data[self._expert[name]]).reshape(self._shape(name))
        out = self._dequantize(t, t.data).reshape(self._shape(name))
        if self._interleaved and self._roles[name] == "attn_q":
            out = interleaved_to_half_split(out, self._n_heads)
        elif self._interleaved and self._roles[name] == "attn_k":
            out = interleaved_to_half_split(out, self._n_kv)
        return out

    def _dequantize(self, t: Any, data: Any) -> torch.Tensor:
        """``data`` (GGUF tensor ``t``'s stored values or some of its rows) as float32 (callers
        reshape)."""
        try:
            arr = self._gguf.quants.dequantize(data, t.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(
                f"{shown(self.path)}: cannot dequantize '{shown(t.name)}' ({shown(e)})"
            ) from None
        # F32 "dequantization" returns a view of the read-only file mapping: writing to a tensor
        # sharing it would crash the process, so such views are copied (fresh arrays are not).
        if arr.dtype != np.float32 or not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=np.float32, order="C")
        return torch.from_numpy(arr)

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        check_rows(rows, self._shape(name), name)
        return self.read(name)[torch.as_tensor(list(rows), dtype=torch.long)]

    def weight_files(self) -> list[Path]:
        return [self.path]

    def metadata(self) -> dict[str, str]:
        return {}
