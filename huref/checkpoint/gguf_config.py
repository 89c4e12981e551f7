"""What a GGUF file's metadata says, read with types checked, and the Hugging Face config keys
derived from it.

A metadata value of the wrong type, or a number that is not finite or out of range, is one error
naming its key. Tensor shapes are given in numpy order (GGUF lists dimensions fastest-first), and
the sparse mixture-of-experts keys of the synthesised ``config.json`` are worked out from
llama.cpp's ``{arch}.expert_*`` metadata and from which layers hold a router.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from huref.checkpoint.gguf_layout import ValueType
from huref.errors import CheckpointError
from huref.paths import shown

_INTEGER_TYPES = (
    ValueType.UINT8,
    ValueType.INT8,
    ValueType.UINT16,
    ValueType.INT16,
    ValueType.UINT32,
    ValueType.INT32,
    ValueType.UINT64,
    ValueType.INT64,
)
_MAX_COUNT = 2**31 - 1  # sizes and counts of a model: every framework indexes them with int32


class Meta:
    """Typed reads of a GGUF file's metadata: a value of the wrong type, or a number that is not
    finite or out of range, is one error naming the key, not an exception where it is used."""

    def __init__(self, path: Path, reader: Any) -> None:
        self.path, self.reader = path, reader

    def _typed(self, key: str, types: tuple[Any, ...], what: str) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return None
        if tuple(f.types) not in types:
            raise CheckpointError(f"{shown(self.path)}: GGUF metadata {shown(key)} must be {what}")
        try:
            return f.contents()
        except (UnicodeDecodeError, ValueError, IndexError):
            raise CheckpointError(f"{shown(self.path)}: GGUF metadata {shown(key)} is unreadable") from None

    def text(self, key: str) -> str | None:
        return self._typed(key, ((ValueType.STRING,),), "a string")

    def count(self, key: str, default: int | None = None, low: int = 1) -> int:
        v = self._typed(key, tuple((t,) for t in _INTEGER_TYPES), "an integer")
        if v is None:
            if default is None:
                raise CheckpointError(f"{shown(self.path)}: GGUF metadata lacks {shown(key)}")
            return default
        if not low <= v <= _MAX_COUNT:
            raise CheckpointError(
                f"{shown(self.path)}: GGUF metadata {shown(key)} = {v} is outside {low}..{_MAX_COUNT}"
            )
        return int(v)

    def real(self, key: str, default: float, low: float, high: float) -> float:
        v = self._typed(key, ((ValueType.FLOAT32,), (ValueType.FLOAT64,)), "a floating-point number")
        if v is None:
            return default
        if not (math.isfinite(v) and low <= v <= high):
            raise CheckpointError(
                f"{shown(self.path)}: GGUF metadata {shown(key)} = {v} is not a finite number >= {low}"
            )
        return float(v)

    def strings(self, key: str) -> list[str] | None:
        return self._typed(key, ((ValueType.ARRAY, ValueType.STRING),), "an array of strings")

    def integers(self, key: str) -> list[int] | None:
        return self._typed(key, tuple((ValueType.ARRAY, t) for t in _INTEGER_TYPES), "an array of integers")


def numpy_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(list(t.shape)))  # GGUF lists dims fastest-first


def gguf_shapes(reader: Any, table: Any, n_layers: int) -> tuple[dict[str, tuple[int, ...]], list[int]]:
    """(role -> the numpy-order shape of its first GGUF tensor (of the first layer holding one),
    the layers holding a router), read from the tensor infos before any name is mapped."""
    by_name = {t.name: t for t in reader.tensors}
    out: dict[str, tuple[int, ...]] = {}
    for gname, role in table.items():
        for layer in range(n_layers) if "{L}" in gname else [0]:
            t = by_name.get(gname.replace("{L}", str(layer)))
            if t is not None:
                out[role] = numpy_shape(t)
                break
    return out, [layer for layer in range(n_layers) if f"blk.{layer}.ffn_gate_inp.weight" in by_name]


def moe_config(
    meta: Meta, arch: str, declared: Any, experts: int, shapes: dict[str, tuple[int, ...]], sparse: list[int]
) -> dict[str, Any]:
    """The sparse MoE keys of the synthesised config, from llama.cpp's ``{arch}.expert_*``
    metadata. GGUF keeps no sparse-step or dense-layer list: a layer is sparse when it holds a
    router (ffn_gate_inp), dense otherwise."""
    used = meta.count(f"{arch}.expert_used_count")
    out: dict[str, Any] = {"num_local_experts": experts, "num_experts": experts, "num_experts_per_tok": used}
    if declared.moe_model_type is not None:  # Mixtral: every layer sparse, experts d_ff wide
        return out
    width = shapes["expert_gate"][1] if "expert_gate" in shapes else 0
    out["moe_intermediate_size"] = meta.count(f"{arch}.expert_feed_forward_length", width)
    out["decoder_sparse_step"] = 1
    n_layers = meta.count(f"{arch}.block_count")
    out["mlp_only_layers"] = [layer for layer in range(n_layers) if layer not in sparse]
    norm = meta._typed(f"{arch}.expert_weights_norm", ((ValueType.BOOL,),), "true or false")
    out["norm_topk_prob"] = declared.moe_renormalise if norm is None else bool(norm)
    if "shared_gate" in shapes:
        shared = shapes["shared_gate"][0]
        out["shared_expert_intermediate_size"] = meta.count(
            f"{arch}.expert_shared_feed_forward_length", shared
        )
    return out
