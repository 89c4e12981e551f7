"""What a fingerprint is computed with: probe-token counts, modes, token key, device.

A module of its own, free of torch, so that commands answered from caches can name the settings
of their scans without importing the extraction code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huref.invariants.tokens import DEFAULT_KEY

FORMAT_VERSION = "huref-fingerprint/1"  # of fingerprint files; part of every cache key
TERM_NAMES = ("attn_qk", "attn_vo", "ffn")

# robust mode: the tiny-zoo separation is the same from n=128 to 1024 (docs/method.md, "Choosing n")
DEFAULT_N = 512
PAPER_N = 4096  # the published choice
DEFAULT_N_RESPONSES = 128


@dataclass(frozen=True)
class Settings:
    n: int = DEFAULT_N
    paper_n: int = PAPER_N
    n_responses: int = DEFAULT_N_RESPONSES
    modes: tuple[str, ...] = ("robust", "paper")
    key: bytes = DEFAULT_KEY
    frequency_list: Path | None = None
    device: str = "cpu"
    # read the next layer while this one is computed (faster; holds one more layer's weights)
    prefetch: bool = True
