"""The TensorSource over a quantized checkpoint, shared by every quantized format.

A format is a *codec*: it recognises, from the stored names and headers alone, each quantized
linear (the float name it stands for, its [out, in] shape and the stored tensors it is made of)
and turns those stored tensors back into float32. The source hides the stored parts, shows each
linear under its float name and dequantizes it only when it is read, so peak memory is that of the
largest tensor read, as for a float checkpoint. Tensors no codec claims stay visible, so the
architecture's unclaimed-tensor check still refuses anything unexpected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from huref.checkpoint.source import BufferPool, TensorInfo, TensorSource, all_finite, check_rows
from huref.errors import CheckpointError
from huref.paths import shown


@dataclass(frozen=True)
class QLinear:
    """One quantized linear: its float name, [out, in] shape and stored parts (part -> name)."""

    weight_name: str
    shape: tuple[int, int]
    parts: dict[str, str]
    detail: object = None  # what the codec learnt from the headers (a per-layer scheme, a state)


class Headers(Protocol):
    """What a codec may look at while recognising: names, headers and small tensors."""

    def names(self) -> list[str]: ...
    def info(self, name: str) -> TensorInfo: ...
    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor: ...


class Codec(Protocol):
    method: str

    def recognise(self, name: str, have: set[str], src: Headers) -> QLinear | None:
        """The quantized linear that stored tensor ``name`` anchors, else None."""
        ...

    def dequantize(self, q: QLinear, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Float32 [out, in] from the stored parts (already read)."""
        ...

    def describe(self) -> str: ...


def stored_shape(src: Headers, name: str, *dtypes: str) -> tuple[int, ...]:
    """The shape of stored tensor ``name``, refusing any dtype but ``dtypes`` (when given)."""
    info = src.info(name)
    if dtypes and info.dtype not in dtypes:
        raise CheckpointError(
            f"quantized tensor '{shown(name)}' is {info.dtype}, expected {' or '.join(dtypes)}"
        )
    return info.shape


def finite_scales(name: str, *scales: torch.Tensor) -> None:
    if not all(all_finite(s) for s in scales):
        raise CheckpointError(f"quantized linear '{shown(name)}' has non-finite scales")


def expand_groups(scale: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Per-group values [..., ceil(n/size)] repeated to [..., n] (group g covers size*g .. size*g+size-1)."""
    return scale.repeat_interleave(size, dim=-1)[..., :n]


def expand_blocks(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Per-block values [ceil(out/bo), ceil(in/bi)] repeated to ``shape``."""
    s = scale.repeat_interleave(block[0], dim=0)[: shape[0]]
    return s.repeat_interleave(block[1], dim=1)[:, : shape[1]]


class QuantizedSource:
    """A TensorSource over a quantized checkpoint, presenting float weights (see module docstring)."""

    def __init__(self, base: TensorSource, codec: Codec) -> None:
        self.base = base
        self.codec = codec
        self._linears: dict[str, QLinear] = {}
        names = base.names()
        have = set(names)
        hidden: set[str] = set()
        for n in names:
            q = codec.recognise(n, have, base)
            if q is not None:
                if q.weight_name in self._linears:
                    raise CheckpointError(f"quantized linear '{shown(q.weight_name)}' is stored twice")
                self._linears[q.weight_name] = q
                hidden.update(q.parts.values())
        if not self._linears:
            raise CheckpointError(
                f"config.json declares {codec.method} quantization, but no {codec.method}-quantized tensors were found"
            )
        self._names = [n for n in names if n not in hidden]
        for n in self._linears:
            if n not in self._names:
                self._names.append(n)

    # TensorSource protocol

    def names(self) -> list[str]:
        return list(self._names)

    def info(self, name: str) -> TensorInfo:
        q = self._linears.get(name)
        if q is None:
            return self.base.info(name)
        file = self.base.info(next(iter(q.parts.values()))).file
        return TensorInfo(name, q.shape, "F32", file)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        q = self._linears.get(name)
        if q is None:
            if name not in self._names:
                raise CheckpointError(f"no tensor named '{shown(name)}' in this checkpoint")
            return self.base.read(name, pool)
        w = self.codec.dequantize(q, {r: self.base.read(n) for r, n in q.parts.items()})
        if tuple(w.shape) != q.shape:  # a codec's own consistency check, never expected to fire
            raise CheckpointError(f"quantized linear '{shown(name)}' dequantized to {list(w.shape)}")
        return w

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        if name not in self._linears:
            return self.base.read_rows(name, rows)
        check_rows(rows, self._linears[name].shape, name)
        return self.read(name)[list(rows)]

    def weight_files(self) -> list[Path]:
        return self.base.weight_files()

    def metadata(self) -> dict[str, str]:
        return self.base.metadata()

    def describe(self) -> str:
        return self.codec.describe()


CodecFactory = Callable[[dict], Codec]
