"""The fingerprint record: invariant terms of one model, in robust and/or paper mode.

Its arrays are torch tensors when the fingerprint was just extracted from weights, and numpy
arrays when it was read from a fingerprint file: reading and comparing fingerprints needs no
tensor library (``huref compare a.fp b.fp`` never imports torch). Code that reads the numbers
takes either through ``as_numpy``; numpy itself is imported only there, so that commands
answered from caches can name this record without importing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from huref.invariants.settings import FORMAT_VERSION, TERM_NAMES

if TYPE_CHECKING:
    import numpy as np

__all__ = ["FORMAT_VERSION", "TERM_NAMES", "Array", "Fingerprint", "ModeTerms", "Responses", "as_numpy"]

# a torch.Tensor (extracted from weights) or a numpy.ndarray (read from a file): see the docstring above
Array = Any


def as_numpy(x: Array) -> np.ndarray:
    """A fingerprint array as numpy, without copying where it can: an ndarray as it is, a torch
    tensor through its own ``numpy()`` (detached, on the CPU; torch itself is not imported)."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _finite(x: Array) -> bool:
    """No NaN and no infinity anywhere in ``x``."""
    import numpy as np

    a = as_numpy(x)
    if a.dtype.kind != "f" or a.size == 0:
        return True
    # a float64 sum is finite exactly when every element is (float16/32 values cannot overflow it);
    # the element-wise check is the fallback for float64 arrays whose sum overflows
    return bool(np.isfinite(a.sum(dtype=np.float64))) or bool(np.isfinite(a).all())


@dataclass
class ModeTerms:
    """Terms of one mode: [layers, 3, n, n], each matrix standardised, on the listed tokens."""

    mode: str  # 'robust' | 'paper'
    layers: list[int]
    token_ids: list[int]
    token_strings: list[str]
    token_source: str
    terms: Array  # [L, 3, n, n] float (stored as float16)
    key_digest: str

    @property
    def n(self) -> int:
        return len(self.token_ids)

    def non_finite(self) -> str | None:
        """Where the first NaN or infinity sits ('robust ffn term of layer 1'), or None."""
        for i, layer in enumerate(self.layers):
            for t, term in enumerate(TERM_NAMES):
                if i < self.terms.shape[0] and not _finite(self.terms[i, t]):
                    return f"{self.mode} {term} term of layer {layer}"
        return None


@dataclass
class Responses:
    """Neuron responses for the independence test: two views per layer, [n_r, d_ff] each,
    columns standardised over the probe tokens (correlations are unchanged by that)."""

    views: tuple[str, str]  # e.g. ('gate', 'up') or ('in', 'out')
    token_strings: list[str]
    layers: list[int]
    a: list[Array]  # per layer [n_r, d_ff]
    b: list[Array]
    # sparse (MoE) layers only: the expert each run of columns belongs to, in column order
    # ([("0", 24), ("1", 24), ..., ("shared", 40)]); a dense layer has no entry
    groups: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    def non_finite(self) -> str | None:
        """Where the first NaN or infinity sits ('gate responses of layer 2'), or None."""
        for layer, a, b in zip(self.layers, self.a, self.b, strict=False):
            for view, t in zip(self.views, (a, b), strict=True):
                if not _finite(t):
                    return f"{view} responses of layer {layer}"
        return None


@dataclass
class Fingerprint:
    meta: dict[str, Any]
    robust: ModeTerms | None = None
    paper: ModeTerms | None = None
    responses: Responses | None = None
    timing: dict[str, float] = field(default_factory=dict)

    def non_finite(self) -> str | None:
        """Where the first NaN or infinity of the terms or responses sits, or None: a fingerprint
        holding one has no similarity, alignment or p-value to give."""
        for part in (self.robust, self.paper, self.responses):
            where = part.non_finite() if part is not None else None
            if where is not None:
                return where
        return None

    @property
    def name(self) -> str:
        return str(self.meta.get("model", {}).get("name", "?"))

    @property
    def n_layers(self) -> int:
        return int(self.meta.get("architecture", {}).get("n_layers", 0))
