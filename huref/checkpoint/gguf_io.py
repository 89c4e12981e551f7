"""GGUF files (llama.cpp), read through the ``gguf`` package.

A GGUF file is presented as the Hugging Face checkpoint it was converted from: llama.cpp's
tensor names are mapped back to Hugging Face names (the names are declared beside each family's
definition, huref.arch.families), a ``config.json`` is synthesised from the
GGUF metadata, quantized blocks are dequantized to float32, and for the LLaMA architecture the
query/key rows are put back from llama.cpp's interleaved rotary layout to Hugging Face's
half-split one (llama.cpp's converter reorders them for LLaMA-arch models only).
"""

from __future__ import annotations

import math
import os
import struct
import sys
from collections.abc import Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from huref.arch.families import gguf_archs
from huref.checkpoint.llama2c import interleaved_to_half_split
from huref.checkpoint.source import BufferPool, TensorInfo, check_rows, open_regular
from huref.errors import ArchitectureError, CheckpointError
from huref.paths import shown

# Tensor types whose dequantization is supported and tested; anything else is refused by name.
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")


class _V(IntEnum):
    """GGUF metadata value types, as numbered in the file format."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_BYTES: dict[int, int] = {
    **dict.fromkeys((_V.UINT8, _V.INT8, _V.BOOL), 1),
    **dict.fromkeys((_V.UINT16, _V.INT16), 2),
    **dict.fromkeys((_V.UINT32, _V.INT32, _V.FLOAT32), 4),
    **dict.fromkeys((_V.UINT64, _V.INT64, _V.FLOAT64), 8),
}
_STRING, _ARRAY, _UINT32 = _V.STRING, _V.ARRAY, _V.UINT32
_INTEGER_TYPES = (_V.UINT8, _V.INT8, _V.UINT16, _V.INT16, _V.UINT32, _V.INT32, _V.UINT64, _V.INT64)
_MAX_COUNT = 2**31 - 1  # sizes and counts of a model: every framework indexes them with int32


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


# Bounds of the metadata walk. gguf's reader keeps a numpy object per array element, so the
# elements of all arrays together are bounded (~1 GB of those objects at most); real files hold
# under 1.5M (a 256k vocabulary with its scores and types, or 128k tokens and 280k merges).
MAX_ARRAY_ITEMS = 1 << 22
MAX_ARRAY_NESTING = 8  # arrays of arrays; llama.cpp writes flat ones
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_DIM = 2**63 - 1  # torch and numpy index with signed 64-bit integers


class _Walk:
    """A bounds-checked walk over a GGUF file's header: every length and count is checked against
    the bytes left before it is used. gguf's own reader reads past the end of a short file as
    empty arrays, so a corrupt count or length there becomes an endless loop or a huge allocation
    rather than an error; this walk refuses such a file first."""

    def __init__(
        self, path: Path, buf: memoryview, order: str, quant_sizes: dict[int, tuple[int, int]]
    ) -> None:
        self.path, self.buf, self.order, self.pos = path, buf, order, 0
        self.quant_sizes = quant_sizes  # tensor type -> (values per block, bytes per block)
        self.items = 0
        self.alignment = 32  # GGUF's default, unless general.alignment says otherwise

    def fail(self, why: str) -> CheckpointError:
        return CheckpointError(f"{shown(self.path)}: corrupt GGUF file ({why})")

    def take(self, n: int, what: str) -> int:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file")
        start, self.pos = self.pos, self.pos + n
        return start

    def uint(self, size: int, what: str) -> int:
        fmt = self.order + {4: "I", 8: "Q"}[size]
        return int(struct.unpack_from(fmt, self.buf, self.take(size, what))[0])

    def text(self, what: str) -> str:
        n = self.uint(8, f"length of {what}")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start : start + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {start} is not UTF-8") from None

    def value(self, vtype: int, label: str, depth: int = 0) -> None:
        """Step over one metadata value of type ``vtype``; ``label`` names its key for errors."""
        if vtype in _SCALAR_BYTES:
            self.take(_SCALAR_BYTES[vtype], f"value of {label}")
        elif vtype == _STRING:
            n = self.uint(8, f"length of {label}")
            self.take(n, f"value of {label}")
        elif vtype == _ARRAY:
            self.array(label, depth)
        else:
            raise self.fail(f"metadata {label} has unknown value type {vtype}")

    def array(self, label: str, depth: int) -> None:
        if depth >= MAX_ARRAY_NESTING:
            raise self.fail(f"metadata {label} nests arrays deeper than {MAX_ARRAY_NESTING} levels")
        item = self.uint(4, f"item type of {label}")
        count = self.uint(8, f"length of {label}")
        smallest = _SCALAR_BYTES.get(item, 8 if item == _STRING else 12)  # an array: type and length
        if count * smallest > len(self.buf) - self.pos:
            raise self.fail(
                f"array {label} of {count} elements at byte {self.pos} runs past the end of the file"
            )
        self.items += count
        if self.items > MAX_ARRAY_ITEMS:
            raise self.fail(f"metadata arrays hold more than {MAX_ARRAY_ITEMS} elements in all")
        if item in _SCALAR_BYTES:
            self.take(count * _SCALAR_BYTES[item], f"array {label}")
            return
        for _ in range(count):
            self.value(item, label, depth + 1)

    def metadata(self, count: int) -> None:
        keys: set[str] = set()
        for _ in range(count):
            key = self.text("metadata key")
            label = f"'{shown(key)}'"
            if key in keys:
                raise self.fail(f"metadata key {label} appears twice")
            keys.add(key)
            vtype = self.uint(4, f"type of {label}")
            start = self.pos
            self.value(vtype, label)
            if key == "general.alignment":
                self.alignment = self._alignment(vtype, start)

    def _alignment(self, vtype: int, start: int) -> int:
        value = struct.unpack_from(self.order + "I", self.buf, start)[0] if vtype == _UINT32 else 0
        if value <= 0 or value & (value - 1):
            raise self.fail("general.alignment must be a power of two stored as UINT32")
        return int(value)

    def tensor_infos(self, count: int) -> list[tuple[str, int, int]]:
        """(name, offset in the data section, bytes) of every tensor, each checked."""
        out: list[tuple[str, int, int]] = []
        names: set[str] = set()
        for _ in range(count):
            name = self.text("tensor name")
            where = f"tensor '{shown(name)}'"
            if name in names:
                raise self.fail(f"{where} appears twice")
            names.add(name)
            n_dims = self.uint(4, f"dimension count of {where}")
            if not 1 <= n_dims <= MAX_TENSOR_DIMS:
                raise self.fail(f"{where} has {n_dims} dimensions (1 to {MAX_TENSOR_DIMS})")
            dims = [self.uint(8, f"dimensions of {where}") for _ in range(n_dims)]
            if not all(1 <= d <= MAX_DIM for d in dims):
                raise self.fail(f"{where} has a dimension of 0 or beyond 2**63-1: {dims}")
            offset, nbytes = self._tensor_bytes(where, dims)
            out.append((name, offset, nbytes))
        return out

    def _tensor_bytes(self, where: str, dims: list[int]) -> tuple[int, int]:
        raw_type = self.uint(4, f"type of {where}")
        offset = self.uint(8, f"offset of {where}")
        sizes = self.quant_sizes.get(raw_type)
        if sizes is None:
            raise self.fail(f"{where} has unknown tensor type {raw_type}")
        block, type_size = sizes
        if dims[0] % block:
            raise self.fail(f"{where}: rows of {dims[0]} values are not whole blocks of {block}")
        return offset, math.prod(dims) // block * type_size


def _check_layout(path: Path, buf: memoryview, quant_sizes: dict[int, tuple[int, int]]) -> None:
    """Refuse a GGUF file whose header does not describe data inside the file."""
    if len(buf) < 24 or bytes(buf[:4]) != b"GGUF":
        raise CheckpointError(f"{shown(path)}: corrupt GGUF file (no GGUF magic)")
    native, swapped = ("<", ">") if sys.byteorder == "little" else (">", "<")
    version = struct.unpack_from(native + "I", buf, 4)[0]
    order = swapped if version & 0xFFFF == 0 else native  # how gguf's reader tells the byte order
    walk = _Walk(path, buf, order, quant_sizes)
    walk.take(4, "magic")
    version = walk.uint(4, "version")
    if version not in (2, 3):
        raise walk.fail(f"version {version}; versions 2 and 3 are read")
    n_tensors = walk.uint(8, "tensor count")
    n_kv = walk.uint(8, "metadata count")
    walk.metadata(n_kv)
    infos = walk.tensor_infos(n_tensors)
    data_start = -(-walk.pos // walk.alignment) * walk.alignment
    for name, offset, nbytes in infos:
        if data_start + offset + nbytes > len(buf):
            raise walk.fail(
                f"tensor '{shown(name)}' ends at byte {data_start + offset + nbytes}, past the end of "
                f"the file ({len(buf)} bytes)"
            )


class _Meta:
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
        return self._typed(key, ((_V.STRING,),), "a string")

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
        v = self._typed(key, ((_V.FLOAT32,), (_V.FLOAT64,)), "a floating-point number")
        if v is None:
            return default
        if not (math.isfinite(v) and low <= v <= high):
            raise CheckpointError(
                f"{shown(self.path)}: GGUF metadata {shown(key)} = {v} is not a finite number >= {low}"
            )
        return float(v)

    def strings(self, key: str) -> list[str] | None:
        return self._typed(key, ((_V.ARRAY, _V.STRING),), "an array of strings")

    def integers(self, key: str) -> list[int] | None:
        return self._typed(key, tuple((_V.ARRAY, t) for t in _INTEGER_TYPES), "an array of integers")


def _numpy_shape(t: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(list(t.shape)))  # GGUF lists dims fastest-first


def _gguf_shapes(reader: Any, table: Any, n_layers: int) -> tuple[dict[str, tuple[int, ...]], list[int]]:
    """(role -> the numpy-order shape of its first GGUF tensor (of the first layer holding one),
    the layers holding a router), read from the tensor infos before any name is mapped."""
    by_name = {t.name: t for t in reader.tensors}
    out: dict[str, tuple[int, ...]] = {}
    for gname, role in table.items():
        for layer in range(n_layers) if "{L}" in gname else [0]:
            t = by_name.get(gname.replace("{L}", str(layer)))
            if t is not None:
                out[role] = _numpy_shape(t)
                break
    return out, [layer for layer in range(n_layers) if f"blk.{layer}.ffn_gate_inp.weight" in by_name]


def _moe_config(
    meta: _Meta, arch: str, declared: Any, experts: int, shapes: dict[str, tuple[int, ...]], sparse: list[int]
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
    norm = meta._typed(f"{arch}.expert_weights_norm", ((_V.BOOL,),), "true or false")
    out["norm_topk_prob"] = declared.moe_renormalise if norm is None else bool(norm)
    if "shared_gate" in shapes:
        shared = shapes["shared_gate"][0]
        out["shared_expert_intermediate_size"] = meta.count(
            f"{arch}.expert_shared_feed_forward_length", shared
        )
    return out


class GGUFSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            import gguf
        except ImportError:  # pragma: no cover - gguf is a declared extra
            raise CheckpointError("reading GGUF needs the 'gguf' package (pip install huref[gguf])") from None
        self._gguf = gguf
        reader = self._open()
        meta = _Meta(self.path, reader)
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
        shapes, sparse = _gguf_shapes(reader, spec.gguf.tensors if spec.gguf else {}, n_layers)
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
            self.config.update(_moe_config(meta, arch, declared, experts, shapes, sparse))
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
            _check_layout(self.path, memoryview(cast(Any, mapped)), sizes)
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
                    f"{shown(self.path)}: GGUF tensor '{shown(t.name)}' of shape {list(_numpy_shape(t))} is "
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
        shape = _numpy_shape(self._tensor(name))
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
