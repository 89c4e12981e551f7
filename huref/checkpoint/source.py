"""The tensor-source abstraction every checkpoint format implements.

A source answers inventory questions (names, shapes, dtypes) from headers alone and reads one
tensor, or a band of its rows, at a time. Peak memory of any reader is therefore bounded by the
largest tensor (or row band) asked for, never by the size of the model.
"""

from __future__ import annotations

import math
import mmap
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from huref.checkpoint.files import (  # re-exported: torch-free, in their own module
    MAX_CONFIG_DEPTH,
    MAX_JSON_BYTES,
    check_shard_name,
    nesting_depth_exceeds,
    open_regular,
    read_json,
    read_small_file,
    read_weight_map,
)
from huref.errors import CheckpointError
from huref.paths import shown

# safetensors dtype strings <-> torch dtypes; the inventory speaks safetensors' names.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
ITEMSIZE: dict[str, int] = {k: torch.empty(0, dtype=v).element_size() for k, v in DTYPES.items()}


# Tensors at least this large are allocated on transparent huge pages where the OS allows it.
HUGE_PAGE_MIN_BYTES = 16 * 2**20


def empty_tensor(shape: Sequence[int], dtype: torch.dtype, pool: BufferPool | None = None) -> torch.Tensor:
    """An uninitialised tensor to read or convert weights into (with ``pool``: one of its buffers).

    Fresh memory costs one page fault and one kernel zeroing per page on first touch; with 4 KiB
    pages that is ~25k faults per 100 MB tensor and halves the speed of a read from the page
    cache. Large tensors are therefore backed by a private anonymous mapping advised to use
    2 MiB pages (Linux; an advice, not a requirement). The mapping is owned by the tensor and
    unmapped when the tensor is freed, or, from a pool, handed out again after that.
    """
    numel = math.prod(shape)
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    if nbytes < HUGE_PAGE_MIN_BYTES or not sys.platform.startswith("linux"):
        return torch.empty(tuple(shape), dtype=dtype)
    mem = pool.take(nbytes) if pool is not None else _huge_mapping(nbytes)
    return torch.frombuffer(mem, dtype=dtype, count=numel).view(tuple(shape))


class BufferPool:
    """Large tensor buffers that are reused once nothing refers to them any more
    (``empty_tensor(shape, dtype, pool)``).

    A stream that reads every tensor of a model into fresh memory pays the kernel for zeroing each
    page it touches first (measured: 12% of a 7B stamp's CPU time). The pool keeps the mappings
    it handed out; one whose tensor (and every view of it) has been freed, which it sees from the
    mapping's reference count, is handed out again to the next request of the same size. A buffer
    is therefore never reused while any tensor, view or pending write still holds it, whatever the
    consumer's pipelining. Idle buffers beyond ``keep_bytes`` are released, oldest first. One
    thread takes buffers from a pool (any thread may hold and drop them).
    """

    def __init__(self, keep_bytes: int = 512 * 2**20) -> None:
        self.keep_bytes = keep_bytes
        self._lent: list[mmap.mmap] = []
        self._idle: list[mmap.mmap] = []  # oldest first
        self.reused = 0

    def take(self, nbytes: int) -> mmap.mmap:
        self._reclaim()
        mem = next((m for m in self._idle if len(m) == nbytes), None)
        if mem is not None:
            self._idle.remove(mem)
            self.reused += 1
        else:
            mem = _huge_mapping(nbytes)
        self._lent.append(mem)
        return mem

    def _reclaim(self) -> None:
        lent = self._lent
        self._lent = []
        for i in range(len(lent)):
            # held by the list and getrefcount's argument only (a tensor's storage holds one more)
            (self._idle if sys.getrefcount(lent[i]) <= 2 else self._lent).append(lent[i])
        while sum(len(m) for m in self._idle) > self.keep_bytes:
            self._idle.pop(0)  # unmapped when the last reference goes


def _huge_mapping(nbytes: int) -> mmap.mmap:
    mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    mem.madvise(mmap.MADV_HUGEPAGE)
    return mem


def all_finite(t: torch.Tensor) -> bool:
    """No NaN and no infinity anywhere in ``t``.

    A NaN or an infinity anywhere makes the sum NaN or infinite, so a finite sum proves the
    tensor finite at the cost of one streaming reduction (~20x faster than ``isfinite(t).all()``,
    which writes a boolean per element). Only a sum that overflows from finite values can
    mislead; a non-finite sum is therefore confirmed element by element.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if t.element_size() == 1:  # float8: torch has no reductions for it
        t = t.float()
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


@dataclass(frozen=True)
class TensorInfo:
    """Header-level facts about one stored tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors name, e.g. "BF16"; quantized GGUF tensors say e.g. "Q8_0"
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class TensorSource(Protocol):
    """Lazy access to the tensors of one checkpoint."""

    def names(self) -> list[str]: ...

    def info(self, name: str) -> TensorInfo: ...

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        """The whole tensor, in its stored dtype (quantized formats: dequantized float32).

        Always a tensor the caller owns: never a view of a file mapping or of a cache. With
        ``pool`` a large tensor may be placed in one of the pool's buffers (formats that store the
        bytes as read do; formats that convert them allocate their own).
        """
        ...

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        """Selected rows (first dimension) only; reads no more than those rows where it can."""
        ...

    def weight_files(self) -> list[Path]: ...

    def metadata(self) -> dict[str, str]: ...


def check_rows(rows: Sequence[int], shape: Sequence[int], name: str) -> None:
    """Every requested row exists in a tensor of ``shape`` (no negative indices from the end)."""
    n = shape[0] if shape else 0
    bad = next((r for r in rows if not 0 <= r < n), None)
    if bad is not None:
        raise CheckpointError(f"row {bad} outside tensor '{shown(name)}' ({n} rows)")


def gather_rows_by_runs(rows: Sequence[int], read_range: RangeReader) -> torch.Tensor:  # [len(rows), ...]
    """Read selected rows as few contiguous ranges, in the caller's order.

    Sorting the requested rows turns a scattered gather into sequential range reads; the result
    is put back into the order asked for.
    """
    order = sorted(range(len(rows)), key=lambda i: rows[i])
    srt = [rows[i] for i in order]
    pieces: list[torch.Tensor] = []
    start = 0
    while start < len(srt):
        end = start
        while end + 1 < len(srt) and srt[end + 1] <= srt[end] + 1:
            end += 1
        lo, hi = srt[start], srt[end] + 1
        block = read_range(lo, hi)  # [hi - lo, ...]
        pieces.append(block[torch.tensor(srt[start : end + 1]) - lo])
        start = end + 1
    stacked = torch.cat(pieces, dim=0)
    out = torch.empty_like(stacked)
    out[torch.tensor(order)] = stacked
    return out


class RangeReader(Protocol):
    def __call__(self, lo: int, hi: int) -> torch.Tensor: ...


__all__ = [
    "DTYPES",
    "DTYPE_NAMES",
    "ITEMSIZE",
    "MAX_CONFIG_DEPTH",
    "MAX_JSON_BYTES",
    "BufferPool",
    "RangeReader",
    "TensorInfo",
    "TensorSource",
    "all_finite",
    "check_rows",
    "check_shard_name",
    "empty_tensor",
    "gather_rows_by_runs",
    "nesting_depth_exceeds",
    "open_regular",
    "read_json",
    "read_small_file",
    "read_weight_map",
]
