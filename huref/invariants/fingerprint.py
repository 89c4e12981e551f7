"""The fingerprint record: invariant terms of one model, in robust and/or paper mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FORMAT_VERSION = "huref-fingerprint/1"
TERM_NAMES = ("attn_qk", "attn_vo", "ffn")


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


@dataclass
class Responses:
    """Neuron responses for the independence test: two views per layer, [n_r, d_ff] each,
    columns standardised over the probe tokens (correlations are unchanged by that)."""

    views: tuple[str, str]  # e.g. ('gate', 'up') or ('in', 'out')
    token_strings: list[str]
    layers: list[int]
    a: list[torch.Tensor]  # per layer [n_r, d_ff]
    b: list[torch.Tensor]


@dataclass
class Fingerprint:
    meta: dict[str, Any]
    robust: ModeTerms | None = None
    paper: ModeTerms | None = None
    responses: Responses | None = None
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("model", {}).get("name", "?"))

    @property
    def n_layers(self) -> int:
        return int(self.meta.get("architecture", {}).get("n_layers", 0))
