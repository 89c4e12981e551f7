"""The fingerprint record: invariant terms of one model, in robust and/or paper mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from huref.checkpoint.source import all_finite
from huref.invariants.settings import FORMAT_VERSION, TERM_NAMES

__all__ = ["FORMAT_VERSION", "TERM_NAMES", "Fingerprint", "ModeTerms", "Responses"]


@dataclass
class ModeTerms:
    """Terms of one mode: [layers, 3, n, n], each matrix standardised, on the listed tokens."""

    mode: str  # 'robust' | 'paper'
    layers: list[int]
    token_ids: list[int]
    token_strings: list[str]
    token_source: str
    terms: torch.Tensor  # [L, 3, n, n] float (stored as float16)
    key_digest: str

    @property
    def n(self) -> int:
        return len(self.token_ids)

    def non_finite(self) -> str | None:
        """Where the first NaN or infinity sits ('robust ffn term of layer 1'), or None."""
        for i, layer in enumerate(self.layers):
            for t, term in enumerate(TERM_NAMES):
                if i < self.terms.shape[0] and not all_finite(self.terms[i, t]):
                    return f"{self.mode} {term} term of layer {layer}"
        return None


@dataclass
class Responses:
    """Neuron responses for the independence test: two views per layer, [n_r, d_ff] each,
    columns standardised over the probe tokens (correlations are unchanged by that)."""

    views: tuple[str, str]  # e.g. ('gate', 'up') or ('in', 'out')
    token_strings: list[str]
    layers: list[int]
    a: list[torch.Tensor]  # per layer [n_r, d_ff]
    b: list[torch.Tensor]
    # sparse (MoE) layers only: the expert each run of columns belongs to, in column order
    # ([("0", 24), ("1", 24), ..., ("shared", 40)]); a dense layer has no entry
    groups: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    def non_finite(self) -> str | None:
        """Where the first NaN or infinity sits ('gate responses of layer 2'), or None."""
        for layer, a, b in zip(self.layers, self.a, self.b, strict=False):
            for view, t in zip(self.views, (a, b), strict=True):
                if not all_finite(t):
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
