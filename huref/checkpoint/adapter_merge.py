"""The merge an adapter stands for, done when a tensor is read: ``Patch`` and ``AdapterSource``.

A ``Patch`` says how one base tensor becomes its merged self (a low-rank update in the base's
storage orientation, a DoRA magnitude, or an adapter tensor that replaces it whole);
``AdapterSource`` applies the patches tensor by tensor, and row by row for ``read_rows`` (a DoRA
norm that spans rows is computed once per tensor and kept, one vector), so peak memory stays one
tensor as for any source. The formulas are in huref.checkpoint.adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.source import BufferPool, TensorInfo, TensorSource, check_rows


@dataclass(frozen=True)
class Patch:
    """How one base tensor becomes its merged self.

    ``u`` [rows, r] and ``v`` [r, cols] are adapter tensor names whose product, times ``scale``,
    is the update in the base's storage orientation (``u_t``/``v_t``: transpose the stored
    factor first). ``norm_axis`` is where DoRA's norm runs: 1 = across each row (one magnitude
    per stored row), 0 = down each column (one per stored column).
    """

    u: str | None = None
    v: str | None = None
    u_t: bool = False
    v_t: bool = False
    scale: float = 1.0
    magnitude: str | None = None
    norm_axis: int = 1
    replaced_by: str | None = None  # an adapter tensor that stands in for the base tensor


class AdapterSource:
    """A base TensorSource with an adapter merged into it, one tensor at a time when read."""

    def __init__(self, base: TensorSource, adapter: SafetensorsSource, patches: dict[str, Patch]) -> None:
        self.base = base
        self.adapter = adapter
        self.patches = patches
        self._norms: dict[str, torch.Tensor] = {}  # DoRA column norms of row-read tensors

    def names(self) -> list[str]:
        return self.base.names()

    def info(self, name: str) -> TensorInfo:
        p = self.patches.get(name)
        if p is not None and p.replaced_by is not None and p.u is None:
            return self.adapter.info(p.replaced_by)
        return self.base.info(name)

    def _factor(self, name: str, transpose: bool) -> torch.Tensor:
        t = self.adapter.read(name).float()
        return t.T if transpose else t

    def _weight(self, name: str, p: Patch, pool: BufferPool | None = None) -> torch.Tensor:
        return self.adapter.read(p.replaced_by) if p.replaced_by else self.base.read(name, pool)

    def read(self, name: str, pool: BufferPool | None = None) -> torch.Tensor:
        p = self.patches.get(name)
        if p is None:
            return self.base.read(name, pool)
        w = self._weight(name, p)
        if p.u is None or p.v is None:
            return w
        assert p.u is not None and p.v is not None
        merged = w.float() + p.scale * (self._factor(p.u, p.u_t) @ self._factor(p.v, p.v_t))  # [rows, cols]
        if p.magnitude is not None:
            merged = merged * self._dora_factor(p, merged)
        return merged.to(w.dtype)

    def _dora_factor(self, p: Patch, merged: torch.Tensor, rows: Sequence[int] | None = None) -> torch.Tensor:
        """m / ||W + s B A||, shaped to broadcast over the stored tensor (or those of its ``rows``)."""
        assert p.magnitude is not None
        m = self.adapter.read(p.magnitude).float()
        if rows is not None:
            m = m[list(rows)]
        norm = torch.linalg.vector_norm(merged, dim=p.norm_axis)
        f = m / norm
        return f[:, None] if p.norm_axis == 1 else f[None, :]

    def read_rows(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        p = self.patches.get(name)
        if p is None:
            return self.base.read_rows(name, rows)
        w = self.adapter.read_rows(p.replaced_by, rows) if p.replaced_by else self.base.read_rows(name, rows)
        if p.u is None or p.v is None:
            return w
        check_rows(rows, self.info(name).shape, name)
        u = self._factor(p.u, p.u_t)[list(rows)]  # [len(rows), r]
        merged = w.float() + p.scale * (u @ self._factor(p.v, p.v_t))
        if p.magnitude is not None:
            if p.norm_axis == 1:  # one norm per row: the rows asked for carry their own
                merged = merged * self._dora_factor(p, merged, rows)
            else:  # norms down whole columns: computed once from the full tensor, then kept
                if name not in self._norms:
                    full = self._weight(name, p).float() + p.scale * (
                        self._factor(p.u, p.u_t) @ self._factor(p.v, p.v_t)
                    )
                    self._norms[name] = torch.linalg.vector_norm(full, dim=0)
                m = self.adapter.read(p.magnitude).float()
                merged = merged * (m / self._norms[name])[None, :]
        return merged.to(w.dtype)

    def weight_files(self) -> list[Path]:
        return [*self.adapter.weight_files(), *self.base.weight_files()]

    def metadata(self) -> dict[str, str]:
        return self.base.metadata()
