"""llama2.c "legacy" exports (``.bin``): a 7-int32 header, then float32 arrays.

The file is presented as the Hugging Face LLaMA checkpoint it is equivalent to: the same tensor
names, a synthesised ``config.json``, and the query/key rows reordered from llama2.c's
interleaved rotary pairs (x0, x1), (x2, x3)... to Hugging Face's half-split layout, so that a
``LlamaForCausalLM`` built from it generates the same tokens.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from huref.checkpoint.source import BufferPool, TensorInfo, check_rows, open_regular
from huref.errors import CheckpointError
from huref.paths import shown

HEADER = struct.Struct("<7i")


def _check_heads(w: torch.Tensor, n_heads: int) -> None:
    # the rows must split into whole heads of whole rotary pairs; a file's header or metadata
    # that says otherwise is corrupt, not a reason for a reshape error
    if w.dim() != 2 or n_heads < 1 or w.shape[0] % n_heads or (w.shape[0] // n_heads) % 2:
        raise CheckpointError(
            f"query/key weights of shape {list(w.shape)} do not split into {n_heads} heads of rotary pairs"
        )


def interleaved_to_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k rows per head from rotary pairs (2i, 2i+1) to (i, i + head_dim/2)."""
    _check_heads(w, n_heads)
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    # [heads, hd/2 pairs, 2, in] -> [heads, 2, hd/2, in]: evens first, then odds
    return w.reshape(n_heads, hd // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def half_split_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    _check_heads(w, n_heads)
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _layout(header: bytes) -> tuple[list[tuple[str, tuple[int, ...]]], int, tuple[int, ...]] | None:
    """(arrays in file order, the file size they imply, header values), or None for a header no
    llama2.c export has (non-positive sizes, heads that do not divide, an odd head size)."""
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = HEADER.unpack(header)
    shared = vocab > 0
    vocab = abs(vocab)
    if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) <= 0 or dim % n_heads or n_heads % n_kv:
        return None
    hd = dim // n_heads
    if hd % 2:  # rotary pairs
        return None
    kv_dim = hd * n_kv
    L = n_layers
    # (name, shape) in file order; per-layer arrays are stored stacked over layers.
    layout: list[tuple[str, tuple[int, ...]]] = [
        ("tok", (vocab, dim)),
        ("rms_att", (L, dim)),
        ("wq", (L, dim, dim)),
        ("wk", (L, kv_dim, dim)),
        ("wv", (L, kv_dim, dim)),
        ("wo", (L, dim, dim)),
        ("rms_ffn", (L, dim)),
        ("w1", (L, hidden, dim)),
        ("w2", (L, dim, hidden)),
        ("w3", (L, hidden, dim)),
        ("rms_final", (dim,)),
        ("freq_real", (seq_len, hd // 2)),
        ("freq_imag", (seq_len, hd // 2)),
    ]
    if not shared:
        layout.append(("cls", (vocab, dim)))
    need = HEADER.size + 4 * sum(math.prod(s) for _, s in layout)  # Python integers: no overflow
    return layout, need, (dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len)


def looks_like_llama2c(path: Path) -> bool:
    """A plausible header whose arrays fill the file exactly (a torch pickle or zip never does:
    its first bytes would have to spell such a header *and* its size); or, of another size, a
    plausible header that does not open like a zip or a pickle (a damaged export: its reader then
    says what is wrong). A dim of 128 mod 256 makes the first byte 0x80, a pickle's first opcode:
    that is why the size decides first."""
    try:
        head, size = _read_head(path)
    except (CheckpointError, OSError):
        return False  # not a readable regular file: whoever opens it next says why
    if len(head) < HEADER.size:
        return False
    lay = _layout(head)
    if lay is None:
        return False
    if lay[1] == size:
        return True
    return not (head[:2] == b"PK" or (head[0] == 0x80 and 2 <= head[1] <= 5))


def _read_head(path: Path) -> tuple[bytes, int]:
    """(the first bytes of a regular file, its size when opened); special files are refused."""
    fd, size = open_regular(path, "llama2.c export")
    with os.fdopen(fd, "rb") as f:
        return f.read(HEADER.size), size


class Llama2cSource:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        fd, size = open_regular(self.path, "llama2.c export")
        with os.fdopen(fd, "rb") as f:  # one descriptor for the header and the mapping
            try:
                head = f.read(HEADER.size)
            except OSError as e:
                raise CheckpointError(f"{shown(self.path)}: cannot read ({e.strerror})") from None
            self._open(f, head, size)

    def _open(self, f: BinaryIO, head: bytes, size: int) -> None:
        """Check the header against the file's size, map the arrays, name them as Hugging Face does."""
        if len(head) < HEADER.size:
            raise CheckpointError(f"{shown(self.path)}: not a llama2.c export (file too short)")
        lay = _layout(head)
        if lay is None:
            raise CheckpointError(f"{shown(self.path)}: not a llama2.c export (implausible header)")
        layout, need, (dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) = lay
        shared = not any(name == "cls" for name, _ in layout)
        if size < need:
            raise CheckpointError(
                f"{shown(self.path)}: truncated llama2.c export ({size} bytes, header implies {need})"
            )
        if size > need:
            raise CheckpointError(
                f"{shown(self.path)}: {size - need} unexpected trailing bytes after the llama2.c arrays"
            )
        # mapped no further than the size checked above, whatever the file becomes later
        try:
            self._mm = np.memmap(
                f, dtype="<f4", mode="r", offset=HEADER.size, shape=((need - HEADER.size) // 4,)
            )
        except (ValueError, OSError) as e:  # e.g. the file shrank since it was opened
            raise CheckpointError(f"{shown(self.path)}: cannot map the file ({shown(e)})") from None
        self._arrays: dict[str, np.ndarray] = {}
        off = 0
        for name, shape in layout:
            n = math.prod(shape)
            self._arrays[name] = self._mm[off : off + n].reshape(shape)
            off += n
        self.config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": dim,
            "intermediate_size": hidden,
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": n_kv,
            "vocab_size": vocab,
            "max_position_embeddings": seq_len,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": shared,
            "attention_bias": False,
            "mlp_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32",
        }
        self._n_heads, self._n_kv = n_heads, n_kv
        self._map: dict[str, tuple[str, int | None]] = {
            "model.embed_tokens.weight": ("tok", None),
            "model.norm.weight": ("rms_final", None),
        }
        if not shared:
            self._map["lm_head.weight"] = ("cls", None)
        per_layer = {
            "input_layernorm.weight": "rms_att",
            "self_attn.q_proj.weight": "wq",
            "self_attn.k_proj.weight": "wk",
            "self_attn.v_proj.weight": "wv",
            "self_attn.o_proj.weight": "wo",
            "post_attention_layernorm.weight": "rms_ffn",
            "mlp.gate_proj.weight": "w1",
            "mlp.down_proj.weight": "w2",
            "mlp.up_proj.weight": "w3",
        }
        for i in range(n_layers):
            for suffix, arr in per_layer.items():
                self._map[f"model.layers.{i}.{suffix}"] = (arr, i)

    def names(self) -> list[str]:
        return list(self._map)

    def _array(self, name: str) -> np.ndarray:
        try:
            arr, layer = self._map[name]
        except KeyError:
            raise CheckpointError(f"no tensor named '{shown(name)}' in this checkpoint") from None
        a = self._arrays[arr]
        return a[layer] if layer is not None else a

    def info(self, name: str) -> TensorInfo:
        return TensorInfo(name, tuple(self._array(name).shape), "F32", self.path)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:  # converts: no pool
        t = torch.from_numpy(np.array(self._array(name), dtype=np.float32))
        if name.endswith("q_proj.weight"):
            t = interleaved_to_half_split(t, self._n_heads)
        elif name.endswith("k_proj.weight"):
            t = interleaved_to_half_split(t, self._n_kv)
        return t

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        check_rows(rows, self._array(name).shape, name)
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            return self.read(name)[torch.as_tensor(list(rows), dtype=torch.long)]
        a = self._array(name)
        return torch.from_numpy(np.array(a[np.asarray(rows, dtype=np.int64)], dtype=np.float32))

    def weight_files(self) -> list[Path]:
        return [self.path]

    def metadata(self) -> dict[str, str]:
        return {}
